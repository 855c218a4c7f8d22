"""Each backend needs only its own framework: attribx never tries to import a framework it is not using.

Every check runs in a fresh interpreter with an import hook that refuses (and records) any import of
the blocked frameworks, so even an import inside ``try/except ImportError`` is caught. The core
workflow (plugin discovery, the CLI's plugin listing, explaining a hand-built graph on the numpy
engine) blocks every framework; each installed backend's workflow blocks the other frameworks. In an
environment that lacks a framework, this is the proof that it is never imported.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

FRAMEWORKS = {
    "torch": ("torch", "torchvision"),
    "tensorflow": ("tensorflow", "keras", "tf_keras", "tensorboard"),
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "jax": ("jax", "jaxlib"),
}
PLUGINS = {"torch": "attribx_torch", "tensorflow": "attribx_tf", "onnx": "attribx_onnx"}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


INSTALLED = {name for name, mods in FRAMEWORKS.items() if installed(mods[0])}

BLOCKER = """
import sys, importlib.abc
BLOCKED = {blocked!r}
ATTEMPTS = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            ATTEMPTS.append(name)
            raise ImportError(f"blocked by the isolation test: {{name}}")
        return None
sys.meta_path.insert(0, Block())
"""

CORE = """
import io, contextlib, numpy as np, attribx
from attribx import cli
from attribx.plugins import registry
reg = registry()
_ = (reg.engines, reg.ops, reg.rules, reg.methods, reg.passes, reg.formats, reg.kernels("numpy"))
with contextlib.redirect_stdout(io.StringIO()):
    cli.main(["plugins"])
b = attribx.GraphBuilder(); x = b.input("x", (1, 6, 6))
h = b.relu(b.conv(x, np.random.default_rng(0).normal(size=(2, 1, 3, 3)), padding=1))
g = b.build(b.linear(b.flatten(h), np.random.default_rng(1).normal(size=(3, 72))))
for method in ("lrp.epsilon_plus_flat", "gradient", "smoothgrad"):
    attribx.explain(g, np.random.default_rng(2).normal(size=(2, 1, 6, 6)), method, engine="numpy")
"""

WORKFLOWS = {
    "torch": """
import torch, attribx
model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32, 3))
attribx.explain(model, torch.randn(2, 1, 6, 6), "lrp.epsilon_gamma_box", low=-3.0, high=3.0)
attribx.explain(model, torch.randn(2, 1, 6, 6), "lrp.epsilon", engine="numpy")
""",
    "tensorflow": """
import numpy as np, keras, attribx
model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(3)])
x = np.random.default_rng(0).normal(size=(2, 6, 6, 1)).astype("float32")
attribx.explain(model, x, "lrp.epsilon_plus")
attribx.explain(model, x, "lrp.epsilon", engine="numpy")
""",
    "onnx": """
import numpy as np, onnx, attribx
from onnx import helper, numpy_helper, TensorProto
rng = np.random.default_rng(0)
w = numpy_helper.from_array(rng.normal(size=(3, 4)).astype("float32"), "w")
b = numpy_helper.from_array(rng.normal(size=(3,)).astype("float32"), "b")
graph = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, b])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
attribx.explain(model, rng.normal(size=(2, 4)).astype("float32"), "lrp.epsilon", engine="numpy")
""",
}


def run_blocked(code: str, blocked: set[str]) -> None:
    mods = sorted({m for name in blocked for m in FRAMEWORKS[name]})
    script = BLOCKER.format(blocked=mods) + textwrap.dedent(code) + "\nprint('ATTEMPTS', ATTEMPTS)\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "ATTEMPTS []", out.stdout[-2000:]


def test_core_workflow_imports_no_framework():
    run_blocked(CORE, set(FRAMEWORKS))


@pytest.mark.parametrize("backend", sorted(WORKFLOWS))
def test_backend_workflow_imports_only_its_framework(backend):
    if backend not in INSTALLED or not installed(PLUGINS[backend]):
        pytest.skip(f"{backend} or attribx's {backend} plugin is not installed in this environment")
    # the other backends' frameworks (a framework may probe jax itself: that is not attribx's doing)
    run_blocked(WORKFLOWS[backend], set(WORKFLOWS) - {backend})


def test_blocker_catches_an_import():
    """The hook itself works: a guarded import of a blocked framework is recorded."""
    code = "try:\n    import torch\nexcept ImportError:\n    pass\n"
    mods = sorted(FRAMEWORKS["torch"])
    script = BLOCKER.format(blocked=mods) + code + "print('ATTEMPTS', ATTEMPTS)\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ATTEMPTS ['torch']"
