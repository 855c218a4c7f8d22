"""LRP for LSTMs against Arras et al. (2017) (tests/arras_reference.py, written from their equations), on
the trained SST bidirectional LSTM of ``../shared/data/sst-bilstm`` (skipped when absent) and on small
random ones; the graph is built by hand from :func:`attribx.recurrent.unroll_lstm`."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx.recurrent import unroll_lstm

from arras_reference import arras_lrp, random_net, sst_net  # noqa: E402


def bilstm_graph(net, steps):
    """The network as attribx graph ops: two unrolled directions, the last states concatenated, a linear."""
    e = net["Wxh_Left"].shape[1]
    b = GraphBuilder("bilstm")
    x = b.input("x", (steps, e), layout="NTE")
    lasts = []
    for side, reverse in (("Left", False), ("Right", True)):
        _, h, _ = unroll_lstm(b, x, steps, w_ih=net[f"Wxh_{side}"], w_hh=net[f"Whh_{side}"],
                              b_ih=net[f"bxh_{side}"], b_hh=net[f"bhh_{side}"], order="arras", reverse=reverse,
                              name=side.lower())
        lasts.append(h)
    w = np.hstack([net["Why_Left"], net["Why_Right"]])
    return b.build(b.linear(b.concat(*lasts, axis=1), w, name="out"))


def initial_state_relevance(graph, x, method, target, **params):
    names = [n.name for n in graph.nodes if n.op == "fill"]
    rel = attribx.explain(graph, x, method, target=target, layers=names, **params)
    return rel, names


@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
@pytest.mark.parametrize("steps", [1, 4, 9])
def test_lrp_epsilon_equals_arras_on_the_sst_bilstm(steps, bias_factor):
    net = sst_net()
    rng = np.random.default_rng(steps)
    x = rng.normal(size=(3, steps, 60)) * 0.3
    graph = bilstm_graph(net, steps)
    targets = [0, 2, 4]
    ours = attribx.explain(graph, x, "lrp.epsilon", target=targets, epsilon=0.001, bias_factor=bias_factor)
    for k, target in enumerate(targets):
        want, _, _ = arras_lrp(x[k], net, target, 0.001, bias_factor)
        err = np.abs(ours.values[k] - want).max() / np.abs(want).max()
        assert err <= 1e-4, f"sample {k}: relative error {err:.1e}"


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_lrp_epsilon_equals_arras_on_random_bilstms(steps):
    rng = np.random.default_rng(10 + steps)
    net = random_net(rng)
    x = rng.normal(size=(2, steps, 5))
    graph = bilstm_graph(net, steps)
    for bf in (0.0, 1.0):
        ours = attribx.explain(graph, x, "lrp.epsilon", target=[1, 2], epsilon=0.01, bias_factor=bf)
        for k, target in enumerate([1, 2]):
            want, _, _ = arras_lrp(x[k], net, target, 0.01, bf)
            np.testing.assert_allclose(ours.values[k], want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
def test_relevance_kept_by_the_initial_states_is_arras(bias_factor):
    rng = np.random.default_rng(3)
    net = random_net(rng)
    x = rng.normal(size=(1, 4, 5))
    graph = bilstm_graph(net, 4)
    rel, names = initial_state_relevance(graph, x, "lrp.epsilon", [1], epsilon=0.01, bias_factor=bias_factor)
    assert sorted(names) == ["left/c0", "left/h0", "right/c0", "right/h0"]
    kept = sum(float(rel[n].values.sum()) for n in names)
    _, want, _ = arras_lrp(x[0], net, 1, 0.01, bias_factor)
    assert kept == pytest.approx(want, rel=1e-9, abs=1e-15)
    if bias_factor == 0.0:
        assert kept == 0.0


def test_bias_factor_one_conserves_the_score():
    """Input relevance plus what the initial states keep equals the explained score (float64, 1e-6)."""
    for seed, (steps, eps) in enumerate([(1, 0.001), (5, 0.001), (7, 0.1)]):
        rng = np.random.default_rng(seed)
        net = random_net(rng, e=6, d=5, classes=4)
        x = rng.normal(size=(3, steps, 6))
        graph = bilstm_graph(net, steps)
        rel, names = initial_state_relevance(graph, x, "lrp.epsilon", [0, 1, 3], epsilon=eps, bias_factor=1.0)
        scores = attribx.forward(graph, x)[np.arange(3), [0, 1, 3]]
        total = rel["relevance"].values.reshape(3, -1).sum(axis=1) + sum(rel[n].values.sum(axis=1) for n in names)
        np.testing.assert_allclose(total, scores, rtol=1e-6)
        plain = attribx.explain(graph, x, "lrp.epsilon", target=[0, 1, 3], epsilon=eps)
        assert np.abs(plain.values.reshape(3, -1).sum(axis=1) - scores).max() > 1e-9   # ε absorbs without it


def test_bias_factor_on_a_dense_layer_spreads_the_absorbed_share_evenly():
    """Hand-derived: one linear layer, R_i = x_i w_i / (z + ε) · R + (b + ε)/(z + ε) · R / n."""
    w, bias, x = np.array([[1.0, -2.0, 0.5]]), np.array([0.3]), np.array([[0.4, 0.1, 2.0]])
    b = GraphBuilder("dense")
    g = b.build(b.linear(b.input("x", (3,)), w, bias))
    z = float((x @ w.T + bias)[0, 0])
    eps = 0.1
    got = attribx.explain(g, x, "lrp.epsilon", target=0, epsilon=eps, bias_factor=1.0).values[0]
    want = x[0] * w[0] / (z + eps) * z + (bias[0] + eps) / (z + eps) * z / 3
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.sum() == pytest.approx(z, rel=1e-12)


def test_the_cell_update_takes_epsilon_and_other_sums_keep_norm():
    from attribx import composite as C
    from attribx.rules import Epsilon, Norm
    rng = np.random.default_rng(0)
    graph = bilstm_graph(random_net(rng), 3)
    rules = attribx.plugins.registry().method("lrp.epsilon").composite(epsilon=0.25, zero_bias=False,
                                                                      bias_factor=1.0).assign(graph)
    cells = [n.name for n in graph.nodes if n.op == "add"]
    assert cells and all(isinstance(rules[n], Epsilon) and rules[n].epsilon == 0.25 for n in cells)
    pos = C.GraphPositions.of(graph, attribx.plugins.registry().ops)
    assert set(cells) == pos.gated_sums
    b = GraphBuilder("residual")
    x = b.input("x", (3,))
    h = b.linear(x, rng.normal(size=(3, 3)), name="fc")
    g = b.build(b.add(h, x, name="skip"))
    rules = attribx.plugins.registry().method("lrp.epsilon").composite(epsilon=0.25, zero_bias=False,
                                                                      bias_factor=0.0).assign(g)
    assert isinstance(rules["skip"], Norm)
