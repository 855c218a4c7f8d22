"""torchvision's ViT explained by LXT 2.1's CP-LRP patches (Achtibat et al. 2024; the numerical reference, run
in a child process because LXT patches torch's and torchvision's classes) and by attribx's ``lrp.cp`` with
epsilon=0 through the fx translator: the same pixel relevance, to relative ≤1e-4 (max abs difference over max
abs value) in float64, for several images and targets. LXT's conventions are in tests/anchors/lxt_reference.py:
LRP-0 on linears and the patch convolution, GELU passing relevance (identity rule), LayerNorm with its
standard deviation constant, attention weights constant (query and key detached): exactly the rules of
``lrp.cp`` with epsilon=0. A small VisionTransformer runs by default, vit_b_16 at 224² is slow.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("attribx_torch")
if importlib.util.find_spec("lxt") is None:
    pytest.skip("LXT 2.1 is not installed (the tox env 'all' installs it with --no-deps)", allow_module_level=True)

import attribx  # noqa: E402

from random_weights import randomized  # noqa: E402

ANCHORS = Path(__file__).resolve().parents[1] / "anchors"

#: the child: builds the ViT, loads the weights, runs LXT's CP-LRP (tests/anchors/lxt_reference.py)
CHILD = """
import json, sys
import numpy as np, torch, torchvision
sys.path.insert(0, sys.argv[1])
from lxt_reference import vit_relevance
spec = json.loads(sys.argv[2])
model = (torchvision.models.vit_b_16(weights=None) if spec["name"] == "vit_b_16"
         else torchvision.models.VisionTransformer(**spec["kwargs"])).double()
model.load_state_dict(torch.load(sys.argv[3]))
x = torch.from_numpy(np.load(sys.argv[4]))
out = {}
for target in spec["targets"]:
    r, logits = vit_relevance(model, x, target, "cp_LRP")
    out[f"r{target}"], out[f"logit{target}"] = r, logits
np.savez(sys.argv[5], **out)
"""


def lxt_cp(model, spec, x, targets, folder):
    """LXT's pixel relevance for each target, computed in a child process."""
    torch.save(model.state_dict(), folder / "vit.pt")
    np.save(folder / "x.npy", x)
    spec = dict(spec, targets=list(targets))
    subprocess.run([sys.executable, "-c", CHILD, str(ANCHORS), json.dumps(spec), str(folder / "vit.pt"),
                    str(folder / "x.npy"), str(folder / "lxt.npz")], check=True, capture_output=True, timeout=1200)
    return np.load(folder / "lxt.npz")


def compare(model, spec, shape, tmp_path, n=2, targets=(0, 3)):
    x = np.random.default_rng(5).normal(size=(n,) + shape)
    ref = lxt_cp(model, spec, x, targets, tmp_path)
    graph = attribx.translate(model, input_shape=shape)
    for target in targets:
        ours = attribx.explain(graph, x, "lrp.cp", target=target, epsilon=0.0, engine="torch").values
        want = ref[f"r{target}"]
        err = np.abs(ours - want).max() / np.abs(want).max()
        assert err <= 1e-4, (target, err)
        # the relevance is not trivial: LXT's sum is near the logit (biases and the class token keep the rest)
        assert np.abs(want).max() > 0


def test_small_vit_cp_lrp_equals_lxt(tmp_path):
    kwargs = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5)
    model = randomized(torchvision.models.VisionTransformer(**kwargs))
    compare(model, {"name": "small", "kwargs": kwargs}, (3, 32, 32), tmp_path, n=3, targets=(0, 2, 4))


@pytest.mark.slow
def test_vit_b_16_cp_lrp_equals_lxt(tmp_path):
    model = randomized(torchvision.models.vit_b_16(weights=None))
    compare(model, {"name": "vit_b_16"}, (3, 224, 224), tmp_path, n=2, targets=(0, 7))
