"""The template's converters: its own layer ``ScaledTanh`` (scale · tanh(x)) in a torch model, a Keras model
and an ONNX model (a custom-domain op) translates through the converters the plugin registers, with the
framework's forward pass, and explains with the numbers of an independent computation.

Each framework's part is skipped when that framework (or attribx's backend for it) is not installed."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx.pytest_plugin import check_registered

PLUGIN = "example_rule"
CONVERTERS = ["torch:attribx_example_rule.torch_layers.ScaledTanh",
              "keras:attribx_example_rule.keras_layers.ScaledTanh", "onnx:com.example:ScaledTanh"]
SCALE = np.array([0.5, 1.5, -2.0, 3.0])


def test_converters_registered_and_listed():
    check_registered(PLUGIN, converters=CONVERTERS)


def test_torch_module():
    torch = pytest.importorskip("torch")
    pytest.importorskip("attribx_torch")
    from attribx_example_rule.torch_layers import ScaledTanh

    torch.manual_seed(0)
    layer = ScaledTanh(4)
    with torch.no_grad():
        layer.scale.copy_(torch.as_tensor(SCALE))
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), layer, torch.nn.Linear(4, 2)).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    graph = attribx.translate(model, input_shape=(3,))
    assert "1:tanh" in graph and "1" in graph            # the converter's nodes, named after the module
    np.testing.assert_allclose(attribx.forward(graph, x.numpy()), model(x).detach().numpy(), rtol=1e-12)
    # gradient x input of the graph = torch autograd's on the original module (einsum and all)
    xr = x.clone().requires_grad_(True)
    model(xr)[:, 1].sum().backward()
    rel = attribx.explain(model, x.numpy(), "gradient_x_input", target=1)
    np.testing.assert_allclose(rel.values, (xr.grad * x).numpy(), rtol=1e-10, atol=1e-14)


def test_keras_layer():
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("attribx_tf")
    from attribx_example_rule.keras_layers import ScaledTanh

    keras.utils.set_random_seed(0)
    inp = keras.Input((3,))
    scaled = ScaledTanh(name="scaled")
    out = keras.layers.Dense(2, name="out")(scaled(keras.layers.Dense(4, name="fc")(inp)))
    model = keras.Model(inp, out)
    scaled.scale.assign(SCALE.astype("float32"))
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(attribx.forward(model, x), model(x).numpy(), rtol=1e-5, atol=1e-6)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = tf.reduce_sum(model(xt)[:, 0])
    want = (tape.gradient(score, xt) * xt).numpy()
    rel = attribx.explain(model, x, "gradient_x_input", target=0)
    np.testing.assert_allclose(rel.values, want, rtol=1e-4, atol=1e-6)


def test_onnx_custom_op():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("attribx_onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("ScaledTanh", ["h", "scale"], ["y"], name="scaled", domain="com.example")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(SCALE.astype(np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    x = rng.normal(size=(5, 3)).astype(np.float32)
    want = SCALE * np.tanh(x @ w)                      # onnxruntime cannot run a custom op: numpy is the reference
    np.testing.assert_allclose(attribx.forward(model, x), want, rtol=1e-5, atol=1e-6)
    # ε-LRP through tanh (passes) and the scale (a constant factor passes) is LRP-ε of the MatMul:
    # R_i = x_i w_i2 / (z_2 + ε sign z_2) · (scale_2 tanh z_2), computed by hand here
    rel = attribx.explain(model, x, "lrp.epsilon", target=2, epsilon=1e-9)
    z = x @ w[:, 2]
    np.testing.assert_allclose(rel.values, x * w[:, 2] / z[:, None] * (SCALE[2] * np.tanh(z))[:, None],
                               rtol=1e-4, atol=1e-6)
