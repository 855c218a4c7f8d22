"""Explaining one position of a language model's (sample, token, vocabulary) output (``position=``).

The cut to the position moves up past the ops that act on each position alone (the head, the final norm,
activations), so they run on one position. The reference is the same graph explained without the cut, with
the logit of the target at that position as the output's initial relevance (an array), which is what the cut
means; the two must agree for every method."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx.builder import GraphBuilder
from attribx.positions import at_position

T, E, V = 6, 5, 7


def lm_graph(seed=0):
    """embedded tokens -> linear -> gelu -> residual -> layer norm (ln_f) -> linear head (vocabulary)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("lm")
    x = b.input("x", (T, E), layout=("sample", "token", "embedding"))
    h = b.gelu(b.linear(x, rng.normal(size=(E, E)), rng.normal(size=E) * 0.1, name="mlp"), name="act")
    h = b.add(x, h, name="res")
    h = b.add_node("layer_norm", h, "ln_f", {"scale": rng.uniform(0.5, 1.5, E), "bias": rng.normal(size=E) * 0.1},
                   axes=(2,), eps=1e-5)
    return b.build(b.linear(h, rng.normal(size=(V, E)), None, name="head")), rng.normal(size=(3, T, E))


def test_the_per_position_tail_runs_on_one_position():
    g, _ = lm_graph()
    cut = at_position(g, -1)
    assert cut["head"].shape == (None, 1, V) and cut["ln_f"].shape == (None, 1, E)
    assert cut["res"].shape == (None, T, E)            # the residual add reads every position: not moved
    assert cut.shape_of(cut.output) == (None, V)


def test_a_layer_asked_for_keeps_its_positions():
    g, _ = lm_graph()
    assert at_position(g, 2, keep={"ln_f"})["ln_f"].shape == (None, T, E)


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.attn", "lrp.cp", "gradient", "gradient_x_input"])
@pytest.mark.parametrize("position", [-1, 2])
def test_relevance_at_a_position_equals_the_uncut_graph_started_at_that_logit(method, position):
    g, x = lm_graph()
    target = 3
    logits = attribx.forward(g, x)
    init = np.zeros_like(logits)
    p = position % T
    init[:, p, target] = 1.0 if method in ("gradient", "gradient_x_input") else logits[:, p, target]
    ours = attribx.explain(g, x, method, target=target, position=position, layers=["res"])
    ref = attribx.explain(g, x, method, output_init=init, layers=["res"])
    np.testing.assert_allclose(ours["relevance"].values, ref["relevance"].values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours["res"].values, ref["res"].values, rtol=1e-10, atol=1e-12)
