"""Token models: integer indices into an embedding, relevance per token summed over the embedding axis.

The reference is the same network cut after the lookup and fed the looked-up vectors: its relevance (or
gradient, by finite differences) summed over the embedding axis is what each token must get.
"""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder

R = np.random.default_rng(3)
VOCAB, DIM, T = 11, 4, 5
W = R.normal(size=(VOCAB, DIM))
CONV = R.normal(size=(6, DIM, 3)) * 0.5
BIAS = R.normal(size=6) * 0.1
HEAD = R.normal(size=(3, 6))


def tail(b, e):
    """Everything after the lookup: (N, T, D) -> conv over tokens -> ReLU -> mean -> linear."""
    h = b.transpose(e, (0, 2, 1))
    h = b.relu(b.conv(h, CONV, BIAS, padding=1))
    return b.linear(b.reduce_mean(h, axes=2), HEAD, name="head")


def token_graph():
    b = GraphBuilder("tokens")
    ids = b.input("ids", (T,), layout="NT", dtype="int64")
    tail(b, b.add_node("embedding", ids, name="emb", params={"weight": W}))
    return b.build()


def embedded_graph():
    b = GraphBuilder("embedded")
    tail(b, b.input("e", (T, DIM), layout="NTE", dtype="float64"))
    return b.build()


IDS = R.integers(0, VOCAB, size=(3, T))


def test_forward_is_the_lookup_then_the_network():
    np.testing.assert_allclose(attribx.forward(token_graph(), IDS), attribx.forward(embedded_graph(), W[IDS]),
                               rtol=1e-12)


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.z_plus", "lrp.epsilon_plus_flat", "gradient",
                                    "guided_backprop"])
def test_token_relevance_is_the_embedded_relevance_summed_over_features(method):
    target = np.array([0, 1, 2])
    ours = attribx.explain(token_graph(), IDS, method, target=target)
    ref = attribx.explain(embedded_graph(), W[IDS], method, target=target)
    assert ours.dims == ("sample", "token")
    np.testing.assert_allclose(ours.values, ref.values.sum(axis=-1), rtol=1e-10, atol=1e-12)


def test_gradient_per_token_is_the_summed_finite_difference_gradient():
    g, e, h = embedded_graph(), W[IDS], 1e-6
    num = np.zeros_like(e)
    for idx in np.ndindex(*e.shape[1:]):
        ep, em = e.copy(), e.copy()
        ep[(slice(None),) + idx] += h
        em[(slice(None),) + idx] -= h
        num[(slice(None),) + idx] = (attribx.forward(g, ep)[:, 1] - attribx.forward(g, em)[:, 1]) / (2 * h)
    ours = attribx.explain(token_graph(), IDS, "gradient", target=1)
    np.testing.assert_allclose(ours.values, num.sum(axis=-1), rtol=1e-6, atol=1e-9)


def test_lrp_conserves_the_score_down_to_the_tokens():
    ds = attribx.explain(token_graph(), IDS, "lrp.zero", conservation=True, layers=["emb"])
    np.testing.assert_allclose(ds["relevance"].sum("token"), ds["emb"].sum(["emb:1", "emb:2"]), rtol=1e-10)


def test_bad_indices_and_methods_that_need_real_inputs_are_refused():
    g = token_graph()
    with pytest.raises(attribx.InputError, match=r"\[0, 11\)"):
        attribx.explain(g, IDS + VOCAB, "lrp.epsilon")
    with pytest.raises(attribx.InputError, match=r"\[0, 11\)"):
        attribx.explain(g, -IDS - 1, "lrp.epsilon")
    with pytest.raises(attribx.InputError, match="non-integer"):
        attribx.explain(g, IDS + 0.5, "lrp.epsilon")
    for method in ("gradient_x_input", "smoothgrad", "integrated_gradients"):
        with pytest.raises(attribx.MethodError, match="indices"):
            attribx.explain(g, IDS, method)
    # integral floats are indices too
    np.testing.assert_array_equal(attribx.explain(g, IDS.astype(float), "lrp.epsilon"),
                                  attribx.explain(g, IDS, "lrp.epsilon"))
