"""Several signal inputs on a hand-built graph (numpy engine): a tuple or a dict in, mask inputs mixed in, one
relevance per signal input out; against central differences of the graph's own forward pass and conservation."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import composite as C
from attribx.builder import GraphBuilder
from attribx.errors import InputError
from attribx.rules import Epsilon

RNG = np.random.default_rng(0)
WA, WC, WO = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 2)), RNG.normal(size=(3, 4))


def graph():
    """relu(where(mask(m), A a + C c, 0)) then a linear head; ``m`` a mask input between the two signals."""
    b = GraphBuilder("two_and_a_mask")
    a, m, c = b.input("a", (3,)), b.input("m", (4,)), b.input("c", (2,))
    s = b.add(b.linear(a, WA), b.linear(c, WC))
    gated = b.add_node("where", [b.add_node("mask", [m], value=0.0), s, b.constant(np.zeros(4))])
    g = b.build(b.linear(b.relu(gated), WO, name="out"))
    g.meta["mask_inputs"] = ["m"]
    return g


def data(n=5):
    g = np.random.default_rng(1)
    m = np.ones((n, 4))
    m[:, 1] = 0
    return g.normal(size=(n, 3)), m, g.normal(size=(n, 2))


def numeric_gradient(g, xs, mask, k, target, h=1e-6):
    """d logit / d input k by central differences of the graph's forward pass."""
    out = np.zeros_like(xs[k])
    for idx in np.ndindex(xs[k].shape[1:]):
        for sign in (1, -1):
            moved = [x.copy() for x in xs]
            moved[k][(slice(None), *idx)] += sign * h
            y = attribx.forward(g, {"a": moved[0], "c": moved[1], "m": mask})[:, target]
            out[(slice(None), *idx)] += sign * y / (2 * h)
    return out


def test_signal_inputs_and_the_one_input_error():
    g = graph()
    assert [v.name for v in g.signal_inputs] == ["a", "c"] and [v.name for v in g.mask_inputs] == ["m"]
    with pytest.raises(attribx.GraphError, match=r"2 signal inputs \('a', 'c'\)"):
        g.input


def test_gradient_equals_central_differences_and_the_input_forms_agree():
    g, (a, m, c) = graph(), data()
    ra, rc = attribx.explain(g, (a, m, c), "gradient", target=2)       # positionally, in the graph's order
    for k, r in enumerate((ra, rc)):
        np.testing.assert_allclose(r.values, numeric_gradient(g, [a, c], m, k, 2), rtol=1e-6, atol=1e-8)
    by_name = attribx.explain(g, {"c": c, "m": m, "a": a}, "gradient", target=2)
    assert list(by_name) == ["a", "c"]
    np.testing.assert_array_equal(by_name["a"].values, ra.values)
    # a mask left out runs as all ones
    ones = attribx.explain(g, {"a": a, "c": c}, "gradient", target=2)
    np.testing.assert_array_equal(ones["c"].values, attribx.explain(g, (a, np.ones_like(m), c), "gradient",
                                                                    target=2)[1].values)


def test_epsilon_conserves_over_both_inputs():
    g, (a, m, c) = graph(), data()
    eps = C.Composite([(C.category("layer"), Epsilon(epsilon=1e-12))], defaults=C.lrp_defaults(1e-12, 1e-12))
    ra, rc = attribx.explain(g, (a, m, c), eps, target=0)
    logit = attribx.forward(g, (a, m, c))[:, 0]
    np.testing.assert_allclose(ra.values.sum(1) + rc.values.sum(1), logit, rtol=1e-9, atol=1e-12)


def test_integrated_gradients_completeness_with_a_baseline_per_input():
    g, (a, m, c) = graph(), data()
    base_a, base_c = np.full(3, 0.3), -0.2
    ra, rc = attribx.explain(g, (a, m, c), "integrated_gradients", target=1, baseline=(base_a, base_c), steps=400)
    f = attribx.forward(g, (a, m, c))[:, 1] - attribx.forward(g, (np.broadcast_to(base_a, a.shape), m,
                                                                   np.full_like(c, base_c)))[:, 1]
    np.testing.assert_allclose(ra.values.sum(1) + rc.values.sum(1), f, atol=0.05 * np.abs(f).max())
    with pytest.raises(InputError, match="3 baselines for 2 inputs"):
        attribx.explain(g, (a, m, c), "integrated_gradients", baseline=(0.0, 0.0, 0.0))


def test_bad_inputs_name_themselves():
    g, (a, m, c) = graph(), data()
    with pytest.raises(InputError, match="missing: 'c'"):
        attribx.explain(g, a, "gradient")
    with pytest.raises(InputError, match="mask input 'm' has shape"):
        attribx.explain(g, (a, m[:, :2], c), "gradient")
    with pytest.raises(InputError, match="4 inputs given"):
        attribx.explain(g, (a, m, c, c), "gradient")
    with pytest.raises(InputError, match="per_token"):
        attribx.explain(g, (a, m, c), "gradient", per_token=True)
