"""LRP through an unrolled GRU, derived by hand from the rules' definitions: the gates take no relevance,
the update h = (1 − z)·n + z·h₀ is a gated sum (ε rule), the candidate's pre-activation sum W_in x + b_in
+ r·(W_hn h₀ + b_hn) splits by the sums' rule, the linear layers take ε."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx.recurrent import unroll_gru

STAB = 1e-6     # the sums' stabiliser in every LRP composite


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def stab(v, e):
    return v + e * np.where(v >= 0, 1.0, -1.0)


def one_step_graph(w, h0):
    b = GraphBuilder("gru1")
    x = b.input("x", (1, 1), layout="NTE")
    _, h = unroll_gru(b, x, 1, **w, h0=h0, name="gru")
    return b.build(b.linear(h, np.ones((1, 1)), name="out"))


@pytest.mark.parametrize("h0", [0.0, 0.7])
@pytest.mark.parametrize("x", [1.3, -0.4])
def test_one_step_gru_relevance_by_hand(x, h0):
    eps = 0.01
    # torch order r, z, n; one input, one hidden unit
    w_ih, w_hh = np.array([[0.5], [-0.8], [1.2]]), np.array([[0.3], [0.6], [-0.9]])
    b_ih, b_hh = np.array([0.1, 0.2, -0.3]), np.array([-0.05, 0.15, 0.25])
    r = sigmoid(w_ih[0, 0] * x + b_ih[0] + w_hh[0, 0] * h0 + b_hh[0])
    z = sigmoid(w_ih[1, 0] * x + b_ih[1] + w_hh[1, 0] * h0 + b_hh[1])
    nx = w_ih[2, 0] * x + b_ih[2]
    nh = w_hh[2, 0] * h0 + b_hh[2]
    npre = nx + r * nh
    new, old = (1 - z) * np.tanh(npre), z * h0
    h = new + old
    r_h = h * h / stab(h, eps)                     # output layer: ε rule, weight 1, no bias
    r_new, r_old = new * r_h / stab(h, eps), old * r_h / stab(h, eps)   # gated sum: ε
    r_nx = nx * r_new / stab(npre, STAB)           # tanh passes; the sum splits by its terms
    r_rnh = r * nh * r_new / stab(npre, STAB)      # r·nh: the gate r takes none, nh all
    r_x = w_ih[2, 0] * x * r_nx / stab(nx, eps)    # ε on W_in x + b_in
    r_h0 = w_hh[2, 0] * h0 * r_rnh / stab(nh, eps) + r_old    # ε on W_hn h0 + b_hn, and z·h0's share

    graph = one_step_graph({"w_ih": w_ih, "w_hh": w_hh, "b_ih": b_ih, "b_hh": b_hh}, np.array([h0]))
    ds = attribx.explain(graph, np.array([[[x]]]), "lrp.epsilon", target=0, epsilon=eps, layers=["gru/h0"],
                        conservation=True)
    assert ds["score"].item() == pytest.approx(h, rel=1e-12)
    assert ds["relevance"].values.item() == pytest.approx(r_x, rel=1e-10)
    assert ds["gru/h0"].values.item() == pytest.approx(r_h0, rel=1e-10, abs=1e-15)


def test_gru_conserves_with_bias_factor_one():
    """bias_factor=1 spreads what biases and ε absorb: the input and the initial state keep the score up
    to the sums' stabiliser."""
    rng = np.random.default_rng(3)
    e, d, steps = 4, 5, 6
    b = GraphBuilder("gru")
    x = b.input("x", (steps, e), layout="NTE")
    w = {"w_ih": rng.normal(size=(3 * d, e)) * 0.5, "w_hh": rng.normal(size=(3 * d, d)) * 0.5,
         "b_ih": rng.normal(size=3 * d) * 0.3, "b_hh": rng.normal(size=3 * d) * 0.3}
    for reset_after in (True, False):
        b = GraphBuilder("gru")
        x = b.input("x", (steps, e), layout="NTE")
        _, h = unroll_gru(b, x, steps, **w, reset_after=reset_after, h0=rng.normal(size=d), name="gru")
        graph = b.build(b.linear(h, rng.normal(size=(3, d)), name="out"))
        xs = rng.normal(size=(4, steps, e))
        ds = attribx.explain(graph, xs, "lrp.epsilon", target=[0, 1, 2, 0], epsilon=0.01, bias_factor=1.0,
                             layers=["gru/h0"], conservation=True)
        total = ds["relevance"].sum(["token", "embedding"]) + ds["gru/h0"].sum(ds["gru/h0"].dims[1:])
        np.testing.assert_allclose(total, ds["score"], rtol=1e-4)
        # the gates take nothing: the same total with the method's ε changed only moves shares around
        assert np.all(np.isfinite(ds["relevance"].values))
