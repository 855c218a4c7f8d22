"""Tests of the template plugin, written with the fixtures and checks attribx ships for plugin authors
(``attribx.pytest_plugin``, loaded by pytest through its entry point), plus hand-derived numbers."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx.pytest_plugin import (check_conservation, check_engines_agree, check_registered, rule_method,
                                   small_graphs)

PLUGIN = "example_rule"            # the entry-point name in pyproject.toml
METHODS = ["example.epsilon_rms", "example.gamma_epsilon_rms"]


def test_registered_and_listed_by_the_cli():
    check_registered(PLUGIN, rules=["epsilon_rms"], methods=METHODS)


# -- conservation where it must hold: no bias, nothing absorbed (δ = 0) ------------------------------
def test_conserves_without_bias_and_delta(attribx_bias_free_graph):
    check_conservation("example.epsilon_rms", attribx_bias_free_graph, delta=0.0, stabilizer=0.0)
    check_conservation(rule_method("epsilon_rms", delta=0.0, stabilizer=0.0), attribx_bias_free_graph)


def test_absorbs_relevance_with_delta(attribx_bias_free_graph):
    """δ > 0 takes relevance away (the point of ε): the check must notice."""
    with pytest.raises(AssertionError, match="does not conserve"):
        check_conservation("example.epsilon_rms", attribx_bias_free_graph, delta=0.5)


def test_delta_zero_is_lrp_zero(attribx_graph):
    ours = attribx.explain(attribx_graph.graph, attribx_graph.x, "example.epsilon_rms", delta=0.0, stabilizer=0.0)
    ref = attribx.explain(attribx_graph.graph, attribx_graph.x, "lrp.zero")
    np.testing.assert_allclose(ours.values, ref.values, rtol=1e-12, atol=1e-12)


# -- every installed engine gives numpy's numbers ------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_engines_agree(method, attribx_graph, attribx_engine):
    check_engines_agree(method, attribx_graph, attribx_engine)


# -- the rule's numbers, derived by hand ---------------------------------------------------------------
def one_layer(weight, bias=None):
    b = attribx.GraphBuilder("one")
    b.input("x", (np.shape(weight)[1],))
    return b.build(b.linear("x", np.asarray(weight, float), bias, name="fc"))


def test_one_layer_by_hand():
    """x = (1, 2), W = [[1, 1], [3, -1]]: z = (3, 1), RMS(z) = √5, ε = δ√5; the target unit 0 starts with
    R = z_0 = 3, so R_i = x_i w_0i · 3 / (3 + δ√5)."""
    graph = one_layer([[1.0, 1.0], [3.0, -1.0]])
    rel = attribx.explain(graph, np.array([[1.0, 2.0]]), "example.epsilon_rms", target=0, delta=0.25,
                          stabilizer=0.0)
    eps = 0.25 * np.sqrt(5.0)
    np.testing.assert_allclose(rel.values, [[1 * 3 / (3 + eps), 2 * 3 / (3 + eps)]], rtol=1e-12)


def test_negative_output_and_bias_by_hand():
    """x = (2, 2), W = [[−1, −0.5], [1, 1]], b = (1, 0): z = (−2, 4), ε = δ·√((4 + 16)/2); the target unit 0
    starts with R = z_0 = −2 and its denominator is z_0 − ε (sign(z_0) = −1)."""
    graph = one_layer([[-1.0, -0.5], [1.0, 1.0]], bias=[1.0, 0.0])
    z0, eps = -2.0, 0.5 * np.sqrt(10.0)
    rel = attribx.explain(graph, np.array([[2.0, 2.0]]), "example.epsilon_rms", target=0, delta=0.5,
                          stabilizer=0.0)
    np.testing.assert_allclose(rel.values, [[-2.0 * z0 / (z0 - eps), -1.0 * z0 / (z0 - eps)]], rtol=1e-12)


def test_epsilon_is_per_sample_not_per_batch():
    """A sample's ε comes from its own outputs: its relevance is the same alone and in a batch."""
    g = small_graphs()["cnn"]
    x = np.concatenate([g.x, g.x[:1] * 100.0])
    batch = attribx.explain(g.graph, x, "example.epsilon_rms", target=1)
    for i in range(len(x)):
        alone = attribx.explain(g.graph, x[i:i + 1], "example.epsilon_rms", target=1)
        np.testing.assert_allclose(batch.values[i], alone.values[0], rtol=1e-12)


def test_scale_free_on_bias_free_nets():
    """Without biases z, ε and the start relevance all scale with the input, so R(c·x) = c·R(x); with a
    fixed ε (lrp.epsilon) that fails: this is what "ε relative to the layer" buys."""
    g = small_graphs(bias=False)["cnn"]
    for c in (1e-3, 50.0):
        r1 = attribx.explain(g.graph, g.x, "example.epsilon_rms", target=0, stabilizer=0.0).values
        rc = attribx.explain(g.graph, c * g.x, "example.epsilon_rms", target=0, stabilizer=0.0).values
        np.testing.assert_allclose(rc, c * r1, rtol=1e-10, atol=1e-12 * c * np.abs(r1).max())
    f1 = attribx.explain(g.graph, g.x, "lrp.epsilon", target=0, epsilon=0.25).values
    fc = attribx.explain(g.graph, 1e-3 * g.x, "lrp.epsilon", target=0, epsilon=0.25).values
    assert not np.allclose(fc, 1e-3 * f1, rtol=1e-3)


def tutorial_lrp(ws, bs, x, target, delta):
    """The heatmapping.org tutorial's LRP for a dense ReLU net (one sample, numpy), with its
    ``incr(z) = z + 1e-9 + δ·((z**2).mean()**.5)`` replaced by the sign-stabilised form
    z + (δ·RMS(z))·sign(z): an independent implementation of the same rule."""
    acts = [x]
    for k, (w, b) in enumerate(zip(ws, bs)):
        z = acts[-1] @ w.T + b
        acts.append(np.maximum(z, 0) if k < len(ws) - 1 else z)
    R = np.zeros_like(acts[-1])
    R[target] = acts[-1][target]
    for k in reversed(range(len(ws))):
        a, w, b = acts[k], ws[k], bs[k]
        z = a @ w.T + b
        den = z + delta * np.sqrt((z ** 2).mean()) * np.where(z >= 0, 1.0, -1.0)
        s = R / den
        R = a * (s @ w)
    return R


def test_equals_an_independent_implementation():
    rng = np.random.default_rng(3)
    sizes = [5, 7, 6, 3]
    ws = [rng.normal(size=(o, i)) for i, o in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(size=o) * 0.5 for o in sizes[1:]]
    b = attribx.GraphBuilder("mlp")
    h = b.input("x", (5,))
    for k, (w, bias) in enumerate(zip(ws, bs)):
        h = b.linear(h, w, bias, name=f"fc{k}")
        if k < len(ws) - 1:
            h = b.relu(h)
    graph = b.build()
    x = rng.normal(size=(3, 5))
    rel = attribx.explain(graph, x, "example.epsilon_rms", target=2, delta=0.3, stabilizer=0.0)
    for i in range(len(x)):
        np.testing.assert_allclose(rel.values[i], tutorial_lrp(ws, bs, x[i], 2, 0.3), rtol=1e-10)


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(attribx.MethodError, match="epsilon"):
        attribx.explain(small_graphs()["mlp"].graph, small_graphs()["mlp"].x, "example.epsilon_rms", epsilon=0.1)
