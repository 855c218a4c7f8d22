"""The framework-free ONNX models of tests/backend_onnx/test_onnx_resnet_lenet.py on the other engines: the trained
LeNet-5 of ``../shared/data/mnist-lenet5`` (skipped when absent) and the ResNet18 written with onnx.helper.
Every LRP method's relevance on the torch and TensorFlow engines (where installed) equals the numpy
engine's (the rule of tests/matrix/common.py), and the forward pass equals onnxruntime on every engine.
With torchvision installed, the onnx.helper ResNet18 is also checked against ``torchvision.models.resnet18``
loaded with the same weights: same output, and the same relevance on the numpy engine.
"""
from __future__ import annotations

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

import attribx  # noqa: E402

from .common import (FORWARD_TOL, Lazy, assert_cell, has_module, lrp_methods, reference,  # noqa: E402
                     relevance, triton_after_tensorflow)
from .onnx_models import OnnxResNet, load_lenet, ort_forward  # noqa: E402
from .zoo import engines  # noqa: E402
from attribx.testing import relative_error  # noqa: E402

OTHER_ENGINES = [e for e in engines() if e != "numpy"]
LENET_DIGITS = 20


@pytest.fixture(scope="module")
def lenet():
    net = load_lenet()
    x, y = net.images[:LENET_DIGITS], net.labels[:LENET_DIGITS]
    net.ref = Lazy(lambda method: reference(net.graph, x, method, target=y))
    return net


@pytest.fixture(scope="module")
def resnet():
    net = OnnxResNet()
    net.ref = Lazy(lambda method: reference(net.graph, net.x, method))
    return net


@pytest.mark.parametrize("engine", engines())
def test_forward_equals_onnxruntime_on_every_engine(lenet, resnet, engine):
    x = lenet.images[:LENET_DIGITS]
    assert relative_error(attribx.forward(lenet.graph, x, engine=engine), ort_forward(lenet.path, x)) <= FORWARD_TOL
    got = attribx.forward(resnet.graph, resnet.x2, engine=engine)
    assert relative_error(got, ort_forward(resnet.bytes, resnet.x2)) <= FORWARD_TOL


@pytest.mark.parametrize("method", lrp_methods())
@pytest.mark.parametrize("engine", OTHER_ENGINES)
def test_lenet_relevance_equals_numpy(lenet, engine, method):
    x, y = lenet.images[:LENET_DIGITS], lenet.labels[:LENET_DIGITS]
    assert_cell(lenet.ref(method), lambda dt: relevance(lenet.graph, x, method, engine, dt, target=y),
                f"lenet5 {engine} {method}")


@pytest.mark.extended     # ResNet18 exported by torch.onnx on every engine and method: test_matrix_torchvision.py
@pytest.mark.parametrize("method", lrp_methods())
@pytest.mark.parametrize("engine", OTHER_ENGINES)
def test_resnet_relevance_equals_numpy(resnet, engine, method):
    assert_cell(resnet.ref(method), lambda dt: relevance(resnet.graph, resnet.x, method, engine, dt),
                f"onnx resnet18 {engine} {method}")


@pytest.fixture(scope="module")
def torchvision_resnet(resnet):
    if not (has_module("torchvision") and has_module("attribx_torch")):
        pytest.skip("needs torchvision and attribx-torch")
    if triton_after_tensorflow():
        pytest.skip("importing torchvision (triton) after TensorFlow would crash; see tests/matrix/conftest.py")
    import torch
    import torchvision

    from .onnx_resnet import torch_state_dict
    m = torchvision.models.resnet18(weights=None)
    m.load_state_dict(torch_state_dict(seed=0))
    m.eval()
    with torch.no_grad():
        out = m(torch.from_numpy(resnet.x2)).numpy()
    return m, attribx.translate(m, input_shape=resnet.x.shape[1:]), out


def test_resnet_is_torchvisions_resnet18(resnet, torchvision_resnet):
    m, g, out = torchvision_resnet
    assert relative_error(ort_forward(resnet.bytes, resnet.x2), out) <= FORWARD_TOL
    assert relative_error(attribx.forward(g, resnet.x2, engine="numpy"), out) <= FORWARD_TOL


@pytest.mark.parametrize("method", lrp_methods())
def test_resnet_relevance_equals_torchvisions(resnet, torchvision_resnet, method):
    _, g, _ = torchvision_resnet
    assert_cell(resnet.ref(method), lambda dt: relevance(g, resnet.x, method, "numpy", dt),
                f"torchvision resnet18 (same weights) numpy {method}")
