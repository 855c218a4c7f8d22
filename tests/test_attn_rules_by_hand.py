"""AttnLRP's norm and softmax rules on every engine, against references derived by hand in numpy.

Kept apart from tests/test_transformer_rules.py, whose reference model needs torch at import: these need no
framework, so tox's `all` env runs their torch cases with the torch suite and their TensorFlow cases with the
TensorFlow suite (``--engines``), and the core env their numpy cases.
"""
from __future__ import annotations

import numpy as np
import pytest

import attribx

from engine_cases import ENGINES


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_constant_std_is_epsilon_lrp_of_the_linear_map_with_sigma_fixed(op, engine):
    """Reference: per sample the Jacobian J of y(x) with σ held fixed, written out as a matrix (over two
    normalised axes here), and ε-LRP R_x = x ⊙ Jᵀ(R / stab(y, ε))."""
    rng = np.random.default_rng(3)
    eps = 0.05
    params = {"scale": rng.normal(size=(3, 4))}
    if op == "layer_norm":
        params["bias"] = rng.normal(size=(3, 4)) * 0.3
    b = attribx.GraphBuilder("norm")
    h = b.add_node(op, b.input("x", (2, 3, 4)), "n", params, axes=(-2, 3), eps=1e-3)
    graph = b.build(b.linear(b.flatten(h), rng.normal(size=(3, 24)), name="fc"))
    x = rng.normal(size=(2, 2, 3, 4))
    res = attribx.explain(graph, x, "lrp.attn", target=1, epsilon=eps, layers=["n"], engine=engine)
    want = np.zeros_like(x)
    for i in range(len(x)):
        for k in range(2):
            v = x[i, k].ravel()
            c = v - v.mean() if op == "layer_norm" else v
            sigma = np.sqrt((c * c).mean() + 1e-3)
            centre = np.eye(12) - (1 / 12 if op == "layer_norm" else 0)
            jac = np.diag(params["scale"].ravel() / sigma) @ centre
            y = jac @ v + (params["bias"].ravel() if "bias" in params else 0)
            s = res["n"].values[i, k].ravel() / (y + eps * np.where(y >= 0, 1, -1))
            want[i, k] = (v * (jac.T @ s)).reshape(3, 4)
    np.testing.assert_allclose(res["relevance"].values, want, rtol=1e-9, atol=1e-12)



@pytest.mark.parametrize("engine", ENGINES)
def test_softmax_rule_gives_nothing_to_inputs_masked_with_minus_infinity(engine):
    rng = np.random.default_rng(2)
    b = attribx.GraphBuilder("causal")
    mask = np.triu(np.full((4, 4), -np.inf), k=1)
    s = b.softmax(b.add(b.input("x", (4, 4)), b.constant(mask), name="masked"), axis=-1, name="s")
    graph = b.build(b.linear(b.flatten(s), rng.normal(size=(2, 16)), name="fc"))
    res = attribx.explain(graph, rng.normal(size=(2, 4, 4)), "lrp.attn", target=0, epsilon=0.0, engine=engine)
    assert np.isfinite(res.values).all()
    assert (res.values[:, mask == -np.inf] == 0).all() and np.abs(res.values).sum() > 0
