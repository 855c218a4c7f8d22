"""Each rule's optimisations (``fast_*``) give the general formula's numbers: γ's forms for non-negative
inputs (one branch when nothing arrives where z ≤ 0, both branches otherwise, as on a conv feeding a residual
sum) and for inputs of both signs (through |x| and |W|), z-box with bounds folded into the weights and αβ on
x ≥ 0, each against the same rule with ``optimise = False`` on random layers and inputs."""
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
    contributions may all have one sign (a depthwise conv's nine) or do, and for z⁺ (β = 0) after a ReLU (its
    general form is one forward and one transposed op); z⁺ on signed inputs takes the |x|, |W| form."""
    from attribx.rules import AlphaBeta
    rng = np.random.default_rng(11 if act == "relu" else 13)
    graph, x = signed_layer(rng, kind, bias, act) if kind == "depthwise" else wide_layer(rng, kind, bias, act)
    R = rng.normal(size=layer_output(graph, x).shape)
    params = {"alpha": alpha, "beta": beta, "stabilizer": 1e-6, "zero_bias": zero_bias}
    general: list = []
    got = explain(graph, x, spied(AlphaBeta, "general", general, **params), R, engine)
    assert bool(general) == (kind in ("depthwise", "one-sided") or (beta == 0 and act == "relu")), general
    want = explain(graph, x, spied(AlphaBeta, "general", [], optimise=False, **params), R, engine)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


#: a ResNet block's last conv (batch norm folded in: a bias) shaped three ways: (channels, size, kernel, stride)
RESIDUAL_SHAPES = {
    "3x3, many positions": (4, 8, 3, 1),          # more output positions than inputs per unit (stacked on torch)
    "3x3, last stage": (16, 2, 3, 1),             # few positions, many inputs per unit (two transposed ops)
    "1x1 stride 2 (downsample)": (4, 8, 1, 2),
}


def residual_block(rng, shape: str):
    """x -> relu -> conv (+ bias) -> + relu(x) (average-pooled where the conv strides) -> relu: the conv's
    relevance arrives through the residual sum, so also where its own output z ≤ 0 (γ's two branches)."""
    ch, size, k, stride = RESIDUAL_SHAPES[shape]
    b = GraphBuilder("residual")
    h = b.relu(b.input("x", (ch, size, size), dtype="float64"))
    c = b.conv(h, rng.normal(size=(ch, ch, k, k)) / k, rng.normal(size=ch), stride=stride, padding=k // 2,
               name="layer")
    skip = h if stride == 1 else b.avg_pool(h, stride)
    b.relu(b.add(c, skip))
    return b.build(), rng.normal(size=(2, ch, size, size))


@pytest.mark.filterwarnings("ignore::attribx.errors.ConservationWarning")    # random relevance of both signs
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", list(RESIDUAL_SHAPES))
@pytest.mark.parametrize("sign", ["R > 0", "R of both signs"])
def test_gamma_on_a_conv_feeding_a_residual_sum_equals_the_general_formula(engine, shape, sign):
    """Both branches after a ReLU (stacked into one transposed op on torch where the activations outweigh the
    weights): float64 to 1e-12 of the general formula, and in float32 as close to float64's general formula
    as the general formula run in float32."""
    rng = np.random.default_rng(23)
    graph, x = residual_block(rng, shape)
    z_out = layer_output(graph, x)
    R = rng.normal(size=z_out.shape)
    R = np.abs(R) if sign == "R > 0" else R
    params = {"gamma": 0.25, "stabilizer": 1e-6}
    calls: list = []
    got = explain(graph, x, spied(Gamma, "fast_nonnegative", calls, **params), R, engine)
    assert calls
    want = explain(graph, x, spied(Gamma, "fast_nonnegative", [], optimise=False, **params), R, engine)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-12 * scale       # measured: ≤ 3·10⁻¹⁶
    x32, R32 = x.astype(np.float32), R.astype(np.float32)
    fast32 = explain(graph, x32, spied(Gamma, "fast_nonnegative", [], **params), R32, engine)
    general32 = explain(graph, x32, spied(Gamma, "fast_nonnegative", [], optimise=False, **params), R32, engine)
    assert fast32.dtype == np.float32
    err_fast, err_general = (np.abs(v.astype(np.float64) - want).max() / scale for v in (fast32, general32))
    assert err_fast <= max(4 * err_general, 1e-6), (err_fast, err_general)
