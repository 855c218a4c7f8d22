"""`import attribx` pulls in no framework (design brief: each backend needs only its own framework)."""
from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("torch", "tensorflow", "keras", "onnx", "onnxruntime", "jax")


def test_import_attribx_imports_no_framework():
    code = ("import sys, attribx, attribx.cli, attribx.storage; "
            f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_explaining_a_graph_imports_no_framework():
    code = ("import sys, numpy as np, attribx\n"
            "b = attribx.GraphBuilder(); x = b.input('x', (3,)); g = b.build(b.linear(x, np.eye(3)))\n"
            "attribx.explain(g, np.ones((1, 3)), 'lrp.epsilon')\n"
            f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
