"""Two whole ONNX models explained with numpy alone (the tox env ``onnx``: onnx and onnxruntime, no torch,
no TensorFlow):

* the trained LeNet-5 of ``../shared/data/mnist-lenet5`` (skipped when the folder is absent): attribx's
  forward equals onnxruntime on 20 digits, the accuracy on the 2000 digits is the README's 98.75%, and
  every LRP method gives finite relevance;
* torchvision's ResNet18 written with onnx.helper (tests/matrix/onnx_resnet.py, random weights, seed 0):
  forward equals onnxruntime, every LRP method gives finite relevance on the numpy engine.

The same models on the torch and TensorFlow engines (relevance equal to the numpy engine's) are in
tests/matrix/test_matrix_onnx_models.py, which runs where those engines are installed.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402

from matrix.common import FORWARD_TOL, lrp_methods, relevance  # noqa: E402
from matrix.onnx_models import LENET_ACCURACY, OnnxResNet, load_lenet, ort_forward  # noqa: E402


@pytest.fixture(scope="module")
def lenet():
    return load_lenet()


@pytest.fixture(scope="module")
def resnet():
    return OnnxResNet()


def test_lenet_forward_equals_onnxruntime(lenet):
    x = lenet.images[:20]
    assert relative_error(attribx.forward(lenet.graph, x, engine="numpy"), ort_forward(lenet.path, x)) <= FORWARD_TOL


def test_lenet_accuracy_is_the_readmes(lenet):
    logits = attribx.forward(lenet.graph, lenet.images, engine="numpy")
    accuracy = float(np.mean(np.argmax(logits, axis=1) == lenet.labels))
    assert len(lenet.labels) == 2000
    assert accuracy == pytest.approx(LENET_ACCURACY, abs=1e-9)


@pytest.mark.parametrize("method", lrp_methods())
def test_lenet_lrp_is_finite(lenet, method):
    x, y = lenet.images[:8], lenet.labels[:8]
    r = relevance(lenet.graph, x, method, "numpy", target=y)
    assert r.shape == x.shape and np.all(np.isfinite(r)) and np.abs(r).max() > 0


def test_resnet_is_torchvisions_architecture(resnet):
    g = resnet.graph
    convs = [n for n in g.nodes if n.op == "conv"]
    assert len(convs) == 20                                  # 1 + 4 stages × 2 blocks × 2 + 3 downsamples
    assert not [n for n in g.nodes if n.op == "batch_norm"]  # every batch norm folded into its conv
    assert g.shape_of("layer4.1.relu_1")[1:] == (512, 2, 2)
    assert g.shape_of(g.output)[1:] == (1000,)


def test_resnet_forward_equals_onnxruntime(resnet):
    for x in (resnet.x, resnet.x2):
        got = attribx.forward(resnet.graph, x, engine="numpy")
        assert relative_error(got, ort_forward(resnet.bytes, x)) <= FORWARD_TOL


@pytest.mark.parametrize("method", lrp_methods())
def test_resnet_lrp_is_finite(resnet, method):
    r = relevance(resnet.graph, resnet.x, method, "numpy")
    assert r.shape == resnet.x.shape and np.all(np.isfinite(r)) and np.abs(r).max() > 0
