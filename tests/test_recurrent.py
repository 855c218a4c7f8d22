"""Recurrent layers unrolled into graph ops: gate orders, and the unrolled LSTM's forward pass against
the LSTM equations written out in numpy (and torch.nn.LSTM where torch is installed)."""
from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx.errors import GraphError
from attribx.recurrent import GATE_ORDERS, reorder_gates, unroll_lstm

R = np.random.default_rng(0)


def test_gate_orders_round_trip_and_match_the_documented_permutations():
    a = np.arange(8 * 3).reshape(8, 3)
    for s, t in itertools.product(GATE_ORDERS, repeat=2):
        np.testing.assert_array_equal(reorder_gates(reorder_gates(a, s, t), t, s), a)
    blocks = {g: a[2 * k:2 * k + 2] for k, g in enumerate("igfo")}      # Arras's order
    np.testing.assert_array_equal(reorder_gates(a, "arras", "torch"), np.concatenate([blocks[g] for g in "ifgo"]))
    np.testing.assert_array_equal(reorder_gates(a, "arras", "onnx"), np.concatenate([blocks[g] for g in "iofg"]))
    np.testing.assert_array_equal(reorder_gates(a.T, "arras", "keras", axis=1).T,
                                  np.concatenate([blocks[g] for g in "ifgo"]))
    with pytest.raises(GraphError, match="unknown gate order"):
        reorder_gates(a, "jax")
    with pytest.raises(GraphError, match="4 equal blocks"):
        reorder_gates(a[:7], "torch")


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def lstm_reference(x, w_ih, w_hh, bias, reverse=False):
    """The LSTM equations, torch gate order (i, f, g, o), zero initial states; outputs in time order."""
    n, steps, _ = x.shape
    d = w_hh.shape[1]
    h, c = np.zeros((n, d)), np.zeros((n, d))
    out = np.zeros((n, steps, d))
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        z = x[:, t] @ w_ih.T + h @ w_hh.T + bias
        i, f, g, o = sigmoid(z[:, :d]), sigmoid(z[:, d:2 * d]), np.tanh(z[:, 2 * d:3 * d]), sigmoid(z[:, 3 * d:])
        c = f * c + i * g
        h = o * np.tanh(c)
        out[:, t] = h
    return out, h, c


def lstm_graph(steps, e, d, weights, bidirectional=False):
    b = GraphBuilder("lstm")
    x = b.input("x", (steps, e), layout="NTF")
    out, h, _ = unroll_lstm(b, x, steps, **weights[0], name="fwd")
    outs = [out]
    if bidirectional:
        out_r, h_r, _ = unroll_lstm(b, x, steps, **weights[1], reverse=True, name="bwd")
        outs.append(out_r)
        h = b.concat(h, h_r, axis=1, name="h_both")
    seq = outs[0] if len(outs) == 1 else b.concat(*outs, axis=2, name="seq")
    return b.build(seq, h)


def random_weights(e, d, scale=0.4):
    return {"w_ih": R.normal(size=(4 * d, e)) * scale, "w_hh": R.normal(size=(4 * d, d)) * scale,
            "b_ih": R.normal(size=4 * d) * 0.1, "b_hh": R.normal(size=4 * d) * 0.1}


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_unrolled_lstm_equals_the_equations(steps):
    e, d = 3, 4
    ws = [random_weights(e, d), random_weights(e, d)]
    graph = lstm_graph(steps, e, d, ws, bidirectional=True)
    x = R.normal(size=(2, steps, e))
    acts = attribx.propagation.run_forward(graph, attribx.get_engine("numpy"), x)
    fwd = lstm_reference(x, ws[0]["w_ih"], ws[0]["w_hh"], ws[0]["b_ih"] + ws[0]["b_hh"])
    bwd = lstm_reference(x, ws[1]["w_ih"], ws[1]["w_hh"], ws[1]["b_ih"] + ws[1]["b_hh"], reverse=True)
    np.testing.assert_allclose(acts[graph.outputs[0]], np.concatenate([fwd[0], bwd[0]], axis=2), rtol=1e-12)
    np.testing.assert_allclose(acts["h_both"], np.concatenate([fwd[1], bwd[1]], axis=1), rtol=1e-12)


def test_gates_take_no_relevance_and_lrp_zero_conserves_without_biases():
    e, d, steps = 3, 4, 4
    ws = [{**random_weights(e, d), "b_ih": None, "b_hh": None}]
    b = GraphBuilder("lstm_head")
    x = b.input("x", (steps, e), layout="NTF")
    _, h, _ = unroll_lstm(b, x, steps, **ws[0], name="lstm")
    graph = b.build(b.linear(h, R.normal(size=(2, d)), name="out"))
    xs = R.normal(size=(3, steps, e))
    gates = [f"lstm/t{t}/{g}" for t in range(steps) for g in "ifo"]
    ds = attribx.explain(graph, xs, "lrp.zero", layers=gates, conservation=True, target=0)
    for g in gates:
        assert not np.any(ds[g].values), g
    # no biases, exact division: the score is conserved down to the input
    np.testing.assert_allclose(ds["relevance"].sum(["token", "feature"]), ds["score"], rtol=1e-10)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None
                    or importlib.util.find_spec("torch").origin is None, reason="needs torch")
def test_unrolled_lstm_equals_torch_lstm():
    import torch
    torch.manual_seed(0)
    e, d, steps = 3, 5, 6
    lstm = torch.nn.LSTM(e, d, batch_first=True, bidirectional=True).double()
    p = {k: v.detach().numpy() for k, v in lstm.named_parameters()}
    ws = [{"w_ih": p[f"weight_ih_l0{s}"], "w_hh": p[f"weight_hh_l0{s}"], "b_ih": p[f"bias_ih_l0{s}"],
           "b_hh": p[f"bias_hh_l0{s}"]} for s in ("", "_reverse")]
    graph = lstm_graph(steps, e, d, ws, bidirectional=True)
    x = R.normal(size=(2, steps, e))
    want, (hn, _) = lstm(torch.from_numpy(x))
    got = attribx.forward(graph, x, output=graph.outputs[0])
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(attribx.forward(graph, x, output="h_both"),
                               torch.cat([hn[0], hn[1]], 1).detach().numpy(), rtol=1e-10, atol=1e-12)
