"""Plugin converters for ONNX ops: an op without a translation is refused, naming the hook; a plugin that
registers a converter through the public API (attribx.translation.converter + 'attribx_converters') makes
the same model translate, with a forward pass equal to onnxruntime's (or numpy's for a custom domain)."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

from onnx import helper  # noqa: E402

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from attribx.translation import converter  # noqa: E402
from onnx_builders import assert_matches, model, weights  # noqa: E402

node = helper.make_node


@converter("onnx", "Softsign")
def softsign(ctx, node, attrs):
    """x / (1 + |x|) from existing graph ops: |x| = relu(x) + relu(-x)."""
    x = ctx.value(node.input[0])
    pos = ctx.emit("relu", [x], name=ctx.sub("pos"))
    neg = ctx.emit("mul", [x, ctx.constant(-1.0, "minus_one")], name=ctx.sub("neg"))
    den = ctx.emit("add", [pos, ctx.emit("relu", [neg], name=ctx.sub("neg_pos")), ctx.constant(1.0, "one")],
                   name=ctx.sub("denominator"))
    return ctx.emit("div", [x, den])


@converter("onnx", "org.attribx.tests:ScaledTanh")
def scaled_tanh(ctx, node, attrs):
    """A custom-domain op with an attribute: scale * tanh(x)."""
    t = ctx.emit("tanh", [ctx.value(node.input[0])], name=ctx.sub("tanh"))
    return ctx.emit("mul", [t, ctx.constant(float(attrs.get("scale", 1.0)), "scale")])


class ConverterPlugin:
    """What a third-party plugin module holds: its converters, returned from the hook."""

    @attribx.hookimpl
    def attribx_converters(self):
        return [softsign, scaled_tanh]


def softsign_model(rng):
    nodes = [node("Gemm", ["x", "w"], ["h"], name="fc"), node("Softsign", ["h"], ["y"], name="soft")]
    return model(nodes, [("w", weights(rng, 4, 3, scale=2.0))], (4,))


def scaled_tanh_model(rng, scale=2.5):
    nodes = [node("Gemm", ["x", "w"], ["h"], name="fc"),
             node("ScaledTanh", ["h"], ["y"], name="scaled", domain="org.attribx.tests", scale=scale)]
    w = weights(rng, 4, 3)
    m = model(nodes, [("w", w)], (4,))
    m.opset_import.append(helper.make_opsetid("org.attribx.tests", 1))
    return m, w


@pytest.fixture
def plugin():
    name = attribx.plugins.register(ConverterPlugin(), "test-onnx-converters")
    try:
        yield name
    finally:
        attribx.plugins.unregister(name)


def test_an_op_without_translation_names_the_converter_hook(rng):
    with pytest.raises(attribx.UnsupportedError, match=r"'soft' \(Softsign, opset 13\) has no onnx translation") \
            as err:
        attribx.translate(softsign_model(rng))
    msg = str(err.value)
    assert "'Softsign'" in msg and "attribx_converters" in msg and "attribx.translation.converter" in msg
    assert "\n" not in msg


def test_a_plugin_converter_translates_an_op_without_translation(rng):
    m = softsign_model(rng)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    name = attribx.plugins.register(ConverterPlugin(), "test-onnx-converters")
    try:
        graph = assert_matches(m, x)                    # forward equal to onnxruntime's, rtol 1e-5
        soft = graph["soft"]
        assert soft.op == "div" and soft.source == "Softsign"
        assert {n.name for n in graph.nodes} >= {"soft:pos", "soft:neg", "soft:neg_pos", "soft:denominator"}
        rel = attribx.explain(m, x, "gradient_x_input", target=1)
        assert rel.shape == x.shape and np.isfinite(rel.values).all()
    finally:
        attribx.plugins.unregister(name)
    with pytest.raises(attribx.UnsupportedError, match="Softsign"):   # the built-in table is unchanged
        attribx.translate(m)


def test_a_custom_domain_op_translates_through_its_plugin_converter(rng, plugin):
    m, w = scaled_tanh_model(rng)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    graph = attribx.translate(m)
    want = 2.5 * np.tanh(x.astype(np.float64) @ w.astype(np.float64))
    assert relative_error(np.asarray(attribx.forward(graph, x, engine="numpy"), np.float64), want) <= 1e-5
    assert graph["scaled"].op == "mul"


def test_a_custom_domain_op_without_converter_is_refused(rng):
    m, _ = scaled_tanh_model(rng)
    with pytest.raises(attribx.UnsupportedError, match=r"'scaled' \(ScaledTanh, opset 13\): operator domain "
                                                       r"'org.attribx.tests' has no onnx translation") as err:
        attribx.translate(m)
    assert "'org.attribx.tests:ScaledTanh'" in str(err.value) and "attribx_converters" in str(err.value)
