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
from attribx.recurrent import GATE_ORDERS, reorder_gates, unroll_gru, unroll_lstm

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
    with pytest.raises(GraphError, match="unknown lstm gate order"):
        reorder_gates(a, "jax")
    with pytest.raises(GraphError, match="4 equal blocks"):
        reorder_gates(a[:7], "torch")
    g = np.arange(6 * 2).reshape(6, 2)
    rzn = {k: g[2 * i:2 * i + 2] for i, k in enumerate("rzn")}        # torch's GRU order
    for source in ("keras", "onnx"):
        np.testing.assert_array_equal(reorder_gates(g, "torch", source, cell="gru"),
                                      np.concatenate([rzn[k] for k in "zrn"]))
        np.testing.assert_array_equal(reorder_gates(reorder_gates(g, "torch", source, cell="gru"), source,
                                                    cell="gru"), g)
    with pytest.raises(GraphError, match="unknown gru gate order"):
        reorder_gates(g, "arras", cell="gru")


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


# ----------------------------------------------------------------------------------------------
# GRU


def gru_reference(x, w_ih, w_hh, b_ih, b_hh, reset_after=True, reverse=False, h0=None):
    """The GRU equations in torch's gate order (r, z, n); reset_after=False is Keras's/ONNX's other form."""
    n, steps, _ = x.shape
    d = w_hh.shape[1]
    h = np.zeros((n, d)) if h0 is None else np.broadcast_to(h0, (n, d))
    out = np.zeros((n, steps, d))
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        gx, gh = x[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r = sigmoid(gx[:, :d] + gh[:, :d])
        z = sigmoid(gx[:, d:2 * d] + gh[:, d:2 * d])
        if reset_after:
            cand = np.tanh(gx[:, 2 * d:] + r * gh[:, 2 * d:])
        else:
            cand = np.tanh(gx[:, 2 * d:] + (r * h) @ w_hh[2 * d:].T + b_hh[2 * d:])
        h = (1 - z) * cand + z * h
        out[:, t] = h
    return out, h


def random_gru(e, d, scale=0.5):
    return {"w_ih": R.normal(size=(3 * d, e)) * scale, "w_hh": R.normal(size=(3 * d, d)) * scale,
            "b_ih": R.normal(size=3 * d) * 0.2, "b_hh": R.normal(size=3 * d) * 0.2}


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_unrolled_gru_equals_the_equations(reset_after, reverse):
    e, d, steps = 3, 4, 5
    w = random_gru(e, d)
    h0 = R.normal(size=d)
    b = GraphBuilder("gru")
    x = b.input("x", (steps, e), layout="NTE")
    keras = {k: reorder_gates(v, "torch", "keras", cell="gru") for k, v in w.items()}
    out, h = unroll_gru(b, x, steps, **keras, order="keras", reset_after=reset_after, reverse=reverse, h0=h0)
    graph = b.build(out, h)
    xs = R.normal(size=(3, steps, e))
    want_out, want_h = gru_reference(xs, **w, reset_after=reset_after, reverse=reverse, h0=h0)
    acts = attribx.propagation.run_forward(graph, attribx.get_engine("numpy"), xs)
    np.testing.assert_allclose(acts[out], want_out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(acts[h], want_h, rtol=1e-12, atol=1e-14)


def test_gru_weights_must_stack_three_gates():
    b = GraphBuilder("gru")
    x = b.input("x", (2, 3), layout="NTE")
    w = random_gru(3, 4)
    with pytest.raises(GraphError, match="3 gates of 4"):
        unroll_gru(b, x, 2, w_ih=w["w_ih"], w_hh=w["w_hh"][:9])


# ----------------------------------------------------------------------------------------------
# sequences of different lengths in one batch


def masked_net(kind, steps, e, d, weights, bidirectional):
    """Embedded sequences padded with zero vectors; the mask is computed from the input (Keras Masking)."""
    b = GraphBuilder(f"masked_{kind}")
    x = b.input("x", (steps, e), layout="NTE")
    mask = None if weights["masked"] is False else b.add_node("mask", x, value=0.0, axes=[-1], name="mask")
    unroll = unroll_lstm if kind == "lstm" else unroll_gru
    lasts, seqs = [], []
    for k, w in enumerate(weights["dirs"][:1 + bidirectional]):
        res = unroll(b, x, steps, **w, reverse=bool(k), name=f"d{k}", mask=mask)
        seqs.append(res[0])
        lasts.append(res[1])
    h = lasts[0] if len(lasts) == 1 else b.concat(*lasts, axis=1, name="h_both")
    seq = seqs[0] if len(seqs) == 1 else b.concat(*seqs, axis=2, name="seq")
    graph = b.build(b.linear(h, weights["head"], name="out"))
    return graph, seq


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_padded_batch_equals_each_sequence_alone(kind, bidirectional):
    """Masked steps keep the state: forward, outputs (zeros at padding) and relevance of every sample of a
    right-padded batch equal those of the sequence run alone; padding gets exactly no relevance."""
    e, d, steps = 3, 4, 6
    make = random_weights if kind == "lstm" else random_gru
    weights = {"dirs": [make(e, d), make(e, d)], "head": R.normal(size=(3, d * (1 + bidirectional)))}
    lengths = [6, 1, 3, 4]
    xs = R.normal(size=(len(lengths), steps, e))
    for k, n in enumerate(lengths):
        xs[k, n:] = 0.0
    numpy = attribx.get_engine("numpy")
    padded, seq_name = masked_net(kind, steps, e, d, {**weights, "masked": True}, bidirectional)
    acts = attribx.propagation.run_forward(padded, numpy, xs)
    scores, seq = acts["out"], acts[seq_name]
    rel = attribx.explain(padded, xs, "lrp.epsilon", target=[0, 1, 2, 0], epsilon=0.01, bias_factor=1.0)
    grad = attribx.explain(padded, xs, "gradient", target=[0, 1, 2, 0])
    for k, n in enumerate(lengths):
        alone, alone_seq = masked_net(kind, n, e, d, {**weights, "masked": False}, bidirectional)
        one = xs[k:k + 1, :n]
        want_acts = attribx.propagation.run_forward(alone, numpy, one)
        np.testing.assert_allclose(scores[k], want_acts["out"][0], rtol=1e-12)
        np.testing.assert_allclose(seq[k, :n], want_acts[alone_seq][0], rtol=1e-12)
        assert not seq[k, n:].any()
        target = [0, 1, 2, 0][k]
        want = attribx.explain(alone, one, "lrp.epsilon", target=target, epsilon=0.01, bias_factor=1.0)
        np.testing.assert_allclose(rel.values[k, :n], want.values[0], rtol=1e-10, atol=1e-14)
        assert not rel.values[k, n:].any()
        np.testing.assert_allclose(grad.values[k, :n],
                                   attribx.explain(alone, one, "gradient", target=target).values[0], rtol=1e-10)
        assert not grad.values[k, n:].any()
