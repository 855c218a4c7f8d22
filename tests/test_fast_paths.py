"""Each rule's optimisations (``fast_*``) give the general formula's numbers: γ's forms for non-negative
inputs (one branch when nothing arrives where z ≤ 0; both branches merged otherwise) and for inputs of both
signs (through |x| and |W|), z-box with bounds folded into the weights and αβ on x ≥ 0, each against the
same rule with ``optimise = False`` on random layers and inputs."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx import composite as C
from attribx.rules import Gamma, ZBox

ENGINES = ["numpy"] + [e for e in ("torch",) if importlib.util.find_spec(e)]


def spied(cls, fast: str, calls: list, optimise: bool = True, **params):
    """An instance of ``cls`` that records calls of its fast path ``fast`` (or never takes one)."""
    rule = type(f"Spied{cls.__name__}", (cls,), {
        fast: lambda self, *a: calls.append(fast) or getattr(cls, fast)(self, *a),
        "optimise": optimise})(**params)
    return rule


def explain(graph, x, rule, R, engine):
    comp = C.Composite([(C.category("layer"), rule)], name="fast-path")
    return np.asarray(attribx.explain(graph, x, comp, output_init=R, engine=engine).values)


def assert_fast_equals_general(graph, x, R, engine, cls, fast: str, **params):
    """The rule with its fast path ``fast`` (which must run) gives the numbers of ``optimise = False``."""
    calls: list = []
    got = explain(graph, x, spied(cls, fast, calls, **params), R, engine)
    assert calls, "the fast path did not run"
    general = explain(graph, x, spied(cls, fast, calls := [], optimise=False, **params), R, engine)
    assert not calls
    np.testing.assert_allclose(got, general, rtol=1e-9, atol=1e-12 * np.abs(general).max())


def relu_layer(rng, kind: str, bias: bool):
    """x -> relu -> layer: the layer's input is known to be non-negative (γ's fast path applies)."""
    b = GraphBuilder("relu_" + kind)
    if kind == "linear":
        h = b.relu(b.input("x", (7,), dtype="float64"))
        b.linear(h, rng.normal(size=(5, 7)), rng.normal(size=5) if bias else None, name="layer")
        return b.build(), rng.normal(size=(4, 7))
    h = b.relu(b.input("x", (3, 6, 6), dtype="float64"))
    b.conv(h, rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4) if bias else None, padding=1, name="layer")
    return b.build(), rng.normal(size=(2, 3, 6, 6))


def layer_output(graph, x):
    return np.asarray(attribx.forward(graph, x, engine="numpy"))


def signed_layer(rng, kind: str, bias: bool, act: str = "silu"):
    """x -> silu -> layer: the layer's input has both signs (EfficientNet's convs; γ's signed form applies).
    Some inputs are exactly 0, so that some outputs are z = 0 (no branch: no relevance passes there)."""
    b = GraphBuilder("silu_" + kind)
    if kind == "linear":
        h = b.silu(b.input("x", (7,), dtype="float64"))
        b.linear(h, rng.normal(size=(5, 7)), rng.normal(size=5) if bias else None, name="layer")
        x = rng.normal(size=(4, 7))
        x[0] = 0.0
        return b.build(), x
    groups, cin = (1, 3) if kind == "conv" else (4, 4)     # "depthwise": one filter per channel
    h = getattr(b, act)(b.input("x", (cin, 6, 6), dtype="float64"))
    b.conv(h, rng.normal(size=(4, cin // groups, 3, 3)), rng.normal(size=4) if bias else None, padding=1,
           groups=groups, name="layer")
    x = rng.normal(size=(2, cin, 6, 6))
    x[0, :, :3, :3] = 0.0
    return b.build(), x


#: (layer maker, seed, γ's fast path): after a ReLU (x ≥ 0) or a SiLU (both signs)
GAMMA_INPUTS = {"relu": (relu_layer, 7, "fast_nonnegative"), "silu": (signed_layer, 5, "fast_signed")}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("inputs,kind", [("relu", "linear"), ("relu", "conv"),
                                         ("silu", "linear"), ("silu", "conv"), ("silu", "depthwise")])
@pytest.mark.parametrize("bias,zero_bias", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("arrives", ["where z > 0", "everywhere"])
def test_gamma_forms_equal_the_general_formula(engine, inputs, kind, bias, zero_bias, arrives):
    """x ≥ 0: one branch or both merged; both signs: one forward with |x| and |W|, two transposed ops."""
    make, seed, fast = GAMMA_INPUTS[inputs]
    rng = np.random.default_rng(seed)
    graph, x = make(rng, kind, bias)
    z = layer_output(graph, x)
    if inputs == "silu" and not bias:
        assert (z == 0).any()
    R = rng.normal(size=z.shape)
    if arrives == "where z > 0":        # a ReLU after the layer: the one-branch form
        R = np.where(z > 0, np.abs(R), 0.0)
    params = {"gamma": 0.37, "stabilizer": 1e-6, "zero_bias": zero_bias}
    assert_fast_equals_general(graph, x, R, engine, Gamma, fast, **params)


def box_layer(rng, kind: str):
    """The input layer (a box rule's place): inputs anywhere in [low, high]."""
    b = GraphBuilder("box_" + kind)
    if kind == "linear":
        b.linear(b.input("x", (6,), dtype="float64"), rng.normal(size=(4, 6)), rng.normal(size=4), name="layer")
        return b.build(), rng.uniform(-2, 2, size=(3, 6)), (6,)
    b.conv(b.input("x", (3, 7, 7), dtype="float64"), rng.normal(size=(5, 3, 3, 3)), rng.normal(size=5),
           stride=2, padding=1, name="layer")
    return b.build(), rng.uniform(-2, 2, size=(2, 3, 7, 7)), (3, 1, 1)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("bounds", ["scalar", "per channel"])
def test_z_box_folded_equals_unfolded(engine, kind, bounds):
    rng = np.random.default_rng(11)
    graph, x, channel_shape = box_layer(rng, kind)
    if bounds == "scalar":
        low, high = -2.0, 2.0
    else:
        low = -2.0 - rng.uniform(size=channel_shape)
        high = 2.0 + rng.uniform(size=channel_shape)
    R = rng.normal(size=layer_output(graph, x).shape)
    assert_fast_equals_general(graph, x, R, engine, ZBox, "fast_folded", low=low, high=high)


def test_z_box_bounds_that_vary_over_positions_take_the_general_formula():
    rng = np.random.default_rng(3)
    graph, x, _ = box_layer(rng, "conv")
    calls: list = []
    low = -2.0 - rng.uniform(size=(3, 7, 7))
    explain(graph, x, spied(ZBox, "fast_folded", calls, low=low, high=2.0), rng.normal(size=(2, 5, 4, 4)),
            "numpy")
    assert not calls


def wide_layer(rng, kind: str, bias: bool, act: str = "silu"):
    """x -> act -> a layer with many inputs per unit (64 or 72): contributions of both signs at every unit."""
    b = GraphBuilder("wide_" + kind)
    if kind in ("linear", "one-sided"):     # one-sided: unit 0's contributions are all positive
        h = getattr(b, act)(b.input("x", (64,), dtype="float64"))
        w, x = rng.normal(size=(5, 64)), rng.normal(size=(4, 64))
        if kind == "one-sided":
            w[0], x = np.abs(w[0]), np.abs(x) + 0.1
        b.linear(h, w, rng.normal(size=5) if bias else None, name="layer")
        return b.build(), x
    h = getattr(b, act)(b.input("x", (8, 5, 5), dtype="float64"))
    b.conv(h, rng.normal(size=(4, 8, 3, 3)), rng.normal(size=4) if bias else None, padding=1, name="layer")
    return b.build(), rng.normal(size=(2, 8, 5, 5))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("kind", ["linear", "conv", "depthwise", "one-sided"])
@pytest.mark.parametrize("bias,zero_bias", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("alpha,beta", [(2.0, 1.0), (1.5, 0.5), (1.0, 0.0)])
def test_alpha_beta_forms_equal_the_general_formula(engine, act, kind, bias, zero_bias, alpha, beta):
    """αβ on x ≥ 0 (F(x; W⁻) from the forward's output, the two transposed ops merged) and on inputs of both
    signs (the |x|, |W| form), on layers with many inputs per unit; the general form where a unit's
    contributions may all have one sign (a depthwise conv's nine) or do, and for z⁺ (β = 0)."""
    from attribx.rules.lrp import AlphaBeta
    rng = np.random.default_rng(11 if act == "relu" else 13)
    graph, x = signed_layer(rng, kind, bias, act) if kind == "depthwise" else wide_layer(rng, kind, bias, act)
    R = rng.normal(size=layer_output(graph, x).shape)
    params = {"alpha": alpha, "beta": beta, "stabilizer": 1e-6, "zero_bias": zero_bias}
    general: list = []
    got = explain(graph, x, spied(AlphaBeta, "general", general, **params), R, engine)
    assert bool(general) == (kind in ("depthwise", "one-sided") or beta == 0), general
    want = explain(graph, x, spied(AlphaBeta, "general", [], optimise=False, **params), R, engine)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
