"""Activations released after the forward pass (:mod:`attribx.liveness`): values the relevance pass reads only
for their shape and LRP-0's zero test (attention scores before a softmax) become shape stubs on the torch
engine. The reference is the same pass with nothing released (``RELEASE = False``), and a hand-derived case for
a score that is exactly 0, which must stay (its unit passes nothing)."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import liveness, propagation

from engine_cases import attention_graph

pytest.importorskip("attribx_torch")
torch = pytest.importorskip("torch")


def _explain_both(monkeypatch, *args, **kw):
    """(released, kept) explanations, and the values each pass released (by name)."""
    seen, out = [], []
    plain = liveness.released_values

    def spy(*a, **k):
        names = plain(*a, **k)
        seen.append(set(names))
        return names
    monkeypatch.setattr(propagation, "released_values", spy)
    for on in (True, False):
        monkeypatch.setattr(propagation, "RELEASE", on)
        out.append(attribx.explain(*args, engine="torch", progress_bar=False, **kw))
    return out[0], out[1], seen[0]


def _stubs(monkeypatch):
    """Count the shape stubs the torch engine hands out."""
    from attribx_torch.engine import TorchEngine
    made = []
    plain = TorchEngine.shape_stub

    def counted(self, x):
        stub = plain(self, x)
        made.append(stub)
        return stub
    monkeypatch.setattr(TorchEngine, "shape_stub", counted)
    return made


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("method", ["lrp.attn", "lrp.cp"])
def test_released_scores_give_the_same_relevance(monkeypatch, gated, method):
    graph, x = attention_graph(gated=gated)
    made = _stubs(monkeypatch)
    on, off, released = _explain_both(monkeypatch, graph, x, method, target=1, epsilon=0.0)
    assert {"scores", "scaled"} <= released and len(made) >= 2 and all(t.is_meta for t in made)
    np.testing.assert_array_equal(on.values, off.values)


def test_nothing_is_released_with_a_positive_epsilon_or_latent_relevance(monkeypatch):
    """ε > 0 reads z's values (its stabiliser); ``layers=`` must report relevance at the kept node."""
    graph, x = attention_graph()
    *_, released = _explain_both(monkeypatch, graph, x, "lrp.attn", target=1, epsilon=1e-6)
    assert not released & {"scores", "scaled"}
    on, off, released = _explain_both(monkeypatch, graph, x, "lrp.attn", target=1, epsilon=0.0, layers=["scaled"])
    assert "scaled" not in released
    np.testing.assert_array_equal(on["scaled"].values, off["scaled"].values)


def test_a_score_that_is_exactly_zero_keeps_its_value(monkeypatch):
    """Hand-derived. Two tokens, q = k = x (identity projections), scores = x xᵀ. Token 0 is (1, 0), token 1 is
    (0, 1): the off-diagonal scores are exactly 0, so LRP-0 passes nothing through them; the released pass
    must find that at forward time and keep the scores (the same numbers as the kept pass)."""
    b = attribx.GraphBuilder("zero_score")
    x = b.input("x", (2, 2))
    eye = np.eye(2)
    q, k = b.linear(x, eye, name="q"), b.linear(x, eye, name="k")
    scores = b.add_node("matmul", (q, b.transpose(k, (0, 2, 1), name="kt")), "scores")
    att = b.softmax(b.mul(scores, b.constant(np.array(0.5), name="c"), name="scaled"), name="att")
    ctx = b.add_node("matmul", (att, b.linear(x, eye, name="v")), "context")
    graph = b.build(b.linear(b.flatten(ctx), np.array([[1.0, 2.0, 3.0, 4.0]]), name="out"))
    made = _stubs(monkeypatch)
    inputs = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    on, off, released = _explain_both(monkeypatch, graph, inputs, "lrp.attn", target=0, epsilon=0.0)
    assert {"scores", "scaled"} <= released          # planned, but the forward test keeps both
    assert made == []
    np.testing.assert_allclose(on.values, off.values, rtol=0, atol=1e-15)
    assert np.isfinite(on.values).all() and np.abs(on.values).sum() > 0


def test_a_language_model_releases_its_scores(monkeypatch):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tr.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100)
    cfg._attn_implementation = "eager"
    model = tr.LlamaForCausalLM(cfg).eval().double()
    ids = np.random.default_rng(0).integers(0, 100, size=(2, 10))
    graph = attribx.translate(model, input_shape=(10,))
    made = _stubs(monkeypatch)
    for method in ("lrp.attn", "lrp.cp"):
        on, off, released = _explain_both(monkeypatch, graph, ids, method, target=3, position=-1, epsilon=0.0)
        np.testing.assert_array_equal(on.values, off.values)
    # per layer: the scores, the scaled scores and the masked scores (shaped batch, heads, tokens, tokens)
    big = [t for t in made if tuple(t.shape[1:]) == (4, 10, 10)]
    assert len(big) >= 2 * 3
