"""Models that read ``x.shape[-2:]`` translate on every Python the project supports (3.11+; CI runs the oldest, 3.11).

Slices became hashable only in Python 3.12; the translator looked the index of ``x.shape[-2:]`` up in a set,
so on 3.11 every such model (torchvision's FCN and DeepLabV3 among them) stopped with
``TypeError: unhashable type: 'slice'`` instead of translating or naming the op it lacks.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import torch.nn as nn  # noqa: E402

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402


class SpatialReshape(nn.Module):
    """Reads the spatial size from the input's shape by a slice and uses it in a reshape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        h, w = x.shape[-2:]
        y = self.conv(x)
        return y.reshape(y.shape[0], 3 * h * w)


class SliceOfShapeTuple(nn.Module):
    """A slice of the shape whose first item is the (batch-dependent) batch size: x.shape[:2]."""

    def forward(self, x):
        n, c = x.shape[:2]
        return x.reshape(n, c, -1).sum(-1)


@pytest.mark.parametrize("cls", [SpatialReshape, SliceOfShapeTuple])
def test_shape_slice_translates_and_is_faithful(cls):
    torch.manual_seed(0)
    model = cls().eval()
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 5)).astype(np.float32)
    graph = attribx.translate(model, input_shape=x.shape[1:])
    with torch.no_grad():
        want = model(torch.as_tensor(x)).numpy()
    assert relative_error(attribx.forward(graph, x, engine="numpy"), want) <= 1e-5
    assert np.isfinite(attribx.explain(model, x, method="gradient", target=0).values).all()


def test_torchvision_fcn_gets_past_the_shape_slice():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=False).eval()
    # past the shape slice, FCN upsamples with F.interpolate: a resize node since issue 19 (its forward and a
    # pixel's relevance against torch: tests/backend_torch/test_torchvision_models.py)
    graph = attribx.translate(model, input_shape=(3, 32, 32))
    assert [n.op for n in graph.nodes].count("resize") == 1
