"""A plugin's converter for one custom Keras layer: without it the layer has no translation, with it the
model translates (graph forward equals Keras's) and explains (gradient x input equals TensorFlow's), the
built-in converters stay untouched, and a plugin's mistake names the plugin."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import attribx  # noqa: E402
from attribx import UnsupportedError  # noqa: E402
from attribx.plugins import register, unregister  # noqa: E402
from attribx.translation import converter  # noqa: E402

L = keras.layers


@keras.saving.register_keras_serializable(package="attribx_tests")
class ScaledTanh(keras.layers.Layer):
    """tanh(x) * scale, one trained scale per feature: a layer attribx has no converter for."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return keras.ops.tanh(x) * self.scale


class ScaledTanhChild(ScaledTanh):
    """A subclass: found through its base class's converter."""


@converter("keras", ScaledTanh)
def scaled_tanh(ctx, layer, inputs):
    """Existing graph ops: tanh, then a mul by the weight (a constant over the last Keras axis)."""
    (x,) = inputs
    x = ctx.keras_order(x)
    h = ctx.emit("tanh", [x], name=ctx.sub("tanh"), order=x.order)
    return ctx.emit("mul", [h, ctx.constant(layer.scale.numpy(), "scale")], order=x.order)


class _Plugin:
    """A third-party plugin, as it would be registered through its entry point."""

    def __init__(self, *fns):
        self.fns = list(fns)

    @attribx.hookimpl
    def attribx_converters(self):
        return self.fns


def _model(layer_cls=ScaledTanh, seed=0):
    keras.utils.set_random_seed(seed)
    i = keras.Input((6,))
    h = L.Dense(5, name="fc1")(i)
    h = layer_cls(name="scaled")(h)
    model = keras.Model(i, L.Dense(3, name="fc2")(h))
    model.get_layer("scaled").scale.assign(np.linspace(0.5, 2.0, 5).astype("float32"))
    return model


def test_custom_layer_has_no_translation_without_a_converter():
    with pytest.raises(UnsupportedError, match="'scaled' .*has no keras translation") as err:
        attribx.translate(_model())
    msg = str(err.value)
    assert "ScaledTanh" in msg and "attribx_converters" in msg and "docs/plugins.md" in msg


@pytest.mark.parametrize("layer_cls", [ScaledTanh, ScaledTanhChild])
def test_a_plugin_converter_translates_and_explains_the_custom_layer(layer_cls):
    model = _model(layer_cls)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    name = register(_Plugin(scaled_tanh), "test-keras-converter")
    try:
        graph = attribx.translate(model)
        assert [n.name for n in graph.nodes if n.name.startswith("scaled")] == ["scaled:tanh", "scaled:scale",
                                                                                 "scaled"]
        y = np.asarray(attribx.forward(graph, x, engine="numpy"))
        np.testing.assert_allclose(y, model(x).numpy(), rtol=1e-5, atol=1e-6)
        rel = attribx.explain(model, x, "gradient_x_input", target=1, engine="numpy")
    finally:
        unregister(name)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = model(xt)[:, 1]
    want = (tape.gradient(score, xt) * xt).numpy()
    np.testing.assert_allclose(np.asarray(rel), want, rtol=1e-5, atol=1e-7)
    with pytest.raises(UnsupportedError, match="has no keras translation"):
        attribx.translate(model)             # unregistered: the built-in table never held it


def test_a_plugin_converter_replaces_a_builtin_for_its_translation_only():
    calls = []

    @converter("keras", L.Dense)
    def dense(ctx, layer, inputs):
        calls.append(layer.name)
        (x,) = inputs
        w, b = layer.kernel.numpy(), layer.bias.numpy()
        return ctx.emit("linear", [x], params={"weight": w.T.copy(), "bias": b}, order=x.order)

    model = keras.Sequential([keras.Input((4,)), L.Dense(2, name="fc")])
    x = np.ones((1, 4), "float32")
    name = register(_Plugin(dense), "test-keras-dense")
    try:
        y = attribx.forward(attribx.translate(model), x, engine="numpy")
    finally:
        unregister(name)
    assert calls == ["fc"]
    np.testing.assert_allclose(np.asarray(y), model(x).numpy(), rtol=1e-5)
    attribx.translate(model)
    assert calls == ["fc"]


def test_a_converter_that_returns_no_value_names_the_plugin():
    @converter("keras", ScaledTanh)
    def broken(ctx, layer, inputs):
        return None

    name = register(_Plugin(broken), "test-keras-broken")
    try:
        with pytest.raises(UnsupportedError, match="test_keras_converters.*broken.*returned None"):
            attribx.translate(_model())
    finally:
        unregister(name)
