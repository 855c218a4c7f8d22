"""The relevance pass against formulas computed independently in the tests."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder

from conftest import build_mlp, mlp_weights


def lrp_epsilon_reference(xs, ws, bs, target, eps):
    """LRP-ε as the seeds write it, vectorised: Z = XW + b, S = R / (Z + ε sign Z), R_in = X ⊙ (S Wᵀ)."""
    acts = [xs]
    for k, (w, b) in enumerate(zip(ws, bs)):
        z = acts[-1] @ w + b
        acts.append(np.maximum(z, 0) if k < len(ws) - 1 else z)
    out = acts[-1]
    r = np.zeros_like(out)
    r[np.arange(len(xs)), target] = out[np.arange(len(xs)), target]
    for k in reversed(range(len(ws))):
        x, w, b = acts[k], ws[k], bs[k]
        z = x @ w + b
        s = r / (z + eps * np.where(z >= 0, 1.0, -1.0))
        r = x * (s @ w.T)
    return r


@pytest.mark.parametrize("eps", [1e-6, 0.25, 3.0])
def test_lrp_epsilon_equals_vectorised_formula(rng, eps):
    ws, bs = mlp_weights(rng)
    # an exact zero pre-activation: a unit with zero weights and bias (sign(0) = +1 branch)
    ws[1][:, 2] = 0.0
    bs[1][2] = 0.0
    graph = build_mlp(ws, bs)
    x = rng.normal(size=(7, 6))
    x[0, :3] = 0.0
    target = rng.integers(0, 3, size=7)
    rel = attribx.explain(graph, x, "lrp.epsilon", target=target, epsilon=eps)
    expected = lrp_epsilon_reference(x, ws, bs, target, eps)
    np.testing.assert_allclose(rel.values, expected, rtol=1e-10, atol=1e-12)
    assert rel.dims == ("sample", "feature")
    assert list(rel.target.values) == list(target)


def test_predicted_target_and_coords(mlp, rng):
    graph, ws, bs = mlp
    x = rng.normal(size=(5, 6))
    rel = attribx.explain(graph, x, "lrp.epsilon")
    logits = attribx.forward(graph, x)
    np.testing.assert_array_equal(rel.prediction.values, logits.argmax(1))
    np.testing.assert_array_equal(rel.target.values, logits.argmax(1))
    assert rel.name == "relevance"
    assert rel.attrs["method"] == "lrp.epsilon"
    assert rel.attrs["parameters"] == {"epsilon": 1e-6, "zero_bias": False, "bias_factor": 0.0}
    assert rel.attrs["engine"] == "numpy"
    assert rel.attrs["model_fingerprint"] == graph.fingerprint()
    assert rel.attrs["attribx_version"] == attribx.__version__


def conserving_net(rng):
    """Bias-free ReLU net of linear, conv, average pool and add nodes (a residual branch)."""
    b = GraphBuilder("residual")
    x = b.input("x", (2, 8, 8))
    h1 = b.relu(b.conv(x, rng.normal(size=(4, 2, 3, 3)), padding=1, name="conv1"))
    h2 = b.relu(b.conv(h1, rng.normal(size=(4, 4, 3, 3)) * 0.5, padding=1, name="conv2"))
    s = b.add(h1, h2, name="skip")
    p = b.avg_pool(s, 2, name="pool")
    f = b.flatten(p)
    h3 = b.relu(b.linear(f, rng.normal(size=(16, 64)) * 0.3, name="fc1"))
    b.linear(h3, rng.normal(size=(5, 16)), name="fc2")
    return b.build()


def test_lrp_zero_conserves_relevance(rng):
    graph = conserving_net(rng)
    x = rng.normal(size=(6, 2, 8, 8))
    ds = attribx.explain(graph, x, "lrp.zero", target=np.arange(6) % 5, conservation=True)
    score = ds["score"].values
    total = ds["relevance"].sum(("channel", "height", "width")).values
    assert np.all(np.abs(score) > 1e-3)
    np.testing.assert_allclose(total, score, rtol=1e-6)
    # every node that all paths pass carries the same total (conservation per layer); the residual
    # branch conv2 carries only its share
    cons = ds["conservation"]
    for node in ["conv1", "skip", "pool", "fc1", "fc2", "x"]:
        np.testing.assert_allclose(cons.sel(node=node).values, score, rtol=1e-6)
    assert not np.allclose(cons.sel(node="conv2").values, score, rtol=1e-3)
    logits = attribx.forward(graph, x)
    np.testing.assert_allclose(score, logits[np.arange(6), np.arange(6) % 5], rtol=1e-12)


def test_conservation_breaks_with_bias(rng):
    """The report can show a loss: the same net with biases does not conserve under LRP-0."""
    ws, bs = mlp_weights(rng)
    bs = [b + 3.0 for b in bs]
    graph = build_mlp(ws, bs)
    ds = attribx.explain(graph, rng.normal(size=(4, 6)), "lrp.zero", conservation=True)
    assert not np.allclose(ds["conservation"].sel(node="x").values, ds["score"].values, rtol=1e-3)


def test_branches_accumulate(rng):
    """A value read by two nodes receives the sum of both relevances (LRP-0 on y = W1 x + W2 x)."""
    w1, w2 = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    b = GraphBuilder()
    x = b.input("x", (4,))
    graph = b.build(b.add(b.linear(x, w1, name="a"), b.linear(x, w2, name="b"), name="sum"))
    xs = rng.normal(size=(5, 4))
    rel = attribx.explain(graph, xs, "lrp.zero", target=1)
    # reference: LRP-0 through the add (each branch by its share) then each linear
    za, zb = xs @ w1.T, xs @ w2.T
    r = (za + zb)[:, 1]
    ra = r * za[:, 1] / (za + zb)[:, 1]
    rb = r * zb[:, 1] / (za + zb)[:, 1]
    expected = xs * w1[1] * (ra / za[:, 1])[:, None] + xs * w2[1] * (rb / zb[:, 1])[:, None]
    np.testing.assert_allclose(rel.values, expected, rtol=1e-10)


def test_layers_return_inner_relevance(rng):
    graph = conserving_net(rng)
    x = rng.normal(size=(3, 2, 8, 8))
    ds = attribx.explain(graph, x, "lrp.zero", layers=["conv2", "fc1"])
    assert set(ds.data_vars) == {"relevance", "conv2", "fc1"}
    assert ds["conv2"].shape == (3, 4, 8, 8)
    np.testing.assert_allclose(ds["fc1"].sum("fc1:1").values, ds["relevance"].sum(("channel", "height", "width")).values,
                               rtol=1e-5)


def test_gradient_x_input_is_gradient_times_input(mlp, rng):
    graph, _, _ = mlp
    x = rng.normal(size=(4, 6))
    g = attribx.explain(graph, x, "gradient", target=2)
    gx = attribx.explain(graph, x, "gradient_x_input", target=2)
    np.testing.assert_allclose(gx.values, g.values * x, rtol=1e-12)


def test_softmax_output_lrp_starts_at_logits(rng):
    ws, bs = mlp_weights(rng)
    plain = build_mlp(ws, bs)
    b = GraphBuilder()
    h = b.input("x", (6,))
    for k, (w, bias) in enumerate(zip(ws, bs)):
        h = b.linear(h, w.T, bias, name=f"fc{k + 1}")
        if k < len(ws) - 1:
            h = b.relu(h)
    with_softmax = b.build(b.softmax(h, name="prob"))
    x = rng.normal(size=(3, 6))
    a = attribx.explain(plain, x, "lrp.epsilon", target=1)
    c = attribx.explain(with_softmax, x, "lrp.epsilon", target=1)
    np.testing.assert_allclose(a.values, c.values, rtol=1e-12)
    assert c.attrs["explained_output"] == "fc3"


def test_batches_equal_one_pass(mlp, rng):
    graph, _, _ = mlp
    x = rng.normal(size=(10, 6))
    t = rng.integers(0, 3, 10)
    whole = attribx.explain(graph, x, "lrp.epsilon", target=t)
    parts = attribx.explain(graph, x, "lrp.epsilon", target=t, batch_size=3)
    np.testing.assert_allclose(whole.values, parts.values, rtol=1e-12)
    np.testing.assert_array_equal(whole.target.values, parts.target.values)


def test_float32_stays_float32(mlp, rng):
    graph, _, _ = mlp
    rel = attribx.explain(graph, rng.normal(size=(2, 6)).astype(np.float32), "lrp.epsilon")
    assert rel.dtype == np.float32


@pytest.mark.parametrize("bad, message", [
    (dict(method="lrp.nope"), "unknown method 'lrp.nope'"),
    (dict(method="lrp.epsilon", gamma=0.25), "unknown parameter(s) gamma"),
    (dict(method="gradient", target=7), "out of range"),
    (dict(method="gradient", target="best"), "use an int"),
    (dict(method="gradient", layers=["nope"]), "no node named 'nope'"),
])
def test_bad_arguments_are_clear(mlp, rng, bad, message):
    graph, _, _ = mlp
    with pytest.raises(attribx.AttribxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        attribx.explain(graph, rng.normal(size=(2, 6)), **bad)


def test_bad_inputs_are_clear(mlp, rng):
    graph, _, _ = mlp
    with pytest.raises(attribx.InputError, match=r"shape \(6,\).*\(N, 6\).*batch axis"):
        attribx.explain(graph, rng.normal(size=6))
    x = rng.normal(size=(3, 6))
    x[1, 2] = np.nan
    with pytest.raises(attribx.InputError, match="NaN"):
        attribx.explain(graph, x)
    with pytest.raises(attribx.InputError, match=r"\(3, 5\)"):
        attribx.explain(graph, rng.normal(size=(3, 5)))
