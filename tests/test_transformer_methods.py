"""Every method runs on a transformer block (issue 19: "every existing method works on transformers too").

The LRP composites' shared defaults give a softmax inside the network the rule gradient × input implies and a
product of two signals the uniform rule, so that ``lrp.epsilon`` and the other composites explain attention;
where they coincide with a method whose numbers are known, they are checked against it."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx.methods import BUILTIN_METHODS

from engine_cases import attention_graph

METHODS = sorted(m.name for m in BUILTIN_METHODS)


@pytest.mark.parametrize("gated", [False, True], ids=["gelu_layer_norm", "gated_rms_norm"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_finite_relevance_on_attention(method, gated):
    graph, x = attention_graph(3, gated=gated)
    params = {"low": float(x.min()), "high": float(x.max())} if "box" in method else {}
    rel = attribx.explain(graph, x, method, target=1, **params)
    assert rel.shape == x.shape
    assert np.isfinite(rel.values).all()
    assert np.abs(rel.values).max() > 0


def test_lrp_epsilon_on_attention_is_attn_lrp_with_norms_passed_through():
    """ε-LRP applies on attention what AttnLRP applies to products and softmax; it differs from
    ``lrp.attn`` only at the norms (passed through unchanged, where AttnLRP holds σ constant and keeps the
    centring). AttnLRP's composite with the norms passed gives the same numbers through a different assembly."""
    from attribx import composite as C
    from attribx.transformer import attn_lrp_composite

    graph, x = attention_graph(3, gated=False)
    eps = 1e-3
    ours = attribx.explain(graph, x, C.Composite([(C.category("layer"), ("epsilon", {"epsilon": eps}))],
                                                  defaults=C.lrp_defaults(eps), name="epsilon"), target=0)
    passed = attn_lrp_composite(epsilon=eps, entries=[(C.category("norm"), "pass")])
    ref = attribx.explain(graph, x, passed, target=0)
    np.testing.assert_allclose(ours.values, ref.values, rtol=1e-9, atol=1e-12)
    differs = attribx.explain(graph, x, "lrp.attn", target=0, epsilon=eps)
    assert not np.allclose(differs.values, ours.values)        # the norms' rule matters


def test_a_constant_without_a_sample_axis_is_refused_as_a_layer():
    """The attention scale is one number for every sample: no relevance per sample to return (it was a
    numpy concatenate error of zero-dimensional arrays)."""
    from attribx.errors import MethodError
    graph, x = attention_graph()
    with pytest.raises(MethodError, match=r"'c' is a constant without a sample axis"):
        attribx.explain(graph, x, "lrp.attn", target=1, layers=["c"])
