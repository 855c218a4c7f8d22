"""Every LRP rule against a plain-numpy re-implementation in matrix form (tests/reference_lrp.py).

One layer is the whole graph (linear, or conv followed by flatten), the relevance at its output is
given as an array (``output_init``), and the relevance at the input must equal the reference on every
engine. Data has negative inputs and outputs, exact zeros in inputs, weights, biases and relevance,
and pre-activations that are exactly zero (sign(0) = +1 in the stabilisers, the [Z>0]/[Z<0] masks
of the generalised γ-rule, LRP-0's 0/0 -> 0). Convolutions are turned into dense matrices by a direct
loop, independent of attribx's kernels, and cover stride, padding, dilation and groups.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx import composite as C

import reference_lrp as ref
from engine_cases import ENGINES

RTOL = 1e-9


def assert_close(got, want, rtol=RTOL, atol_rel=1e-10):
    """rtol, plus an atol relative to the largest reference value (for exact zeros and cancellations)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_rel * scale)


# -- data ------------------------------------------------------------------------------------------------
N_LIN, IN_LIN, OUT_LIN = 6, 7, 6


def _sprinkle_zeros(rng, a, frac=0.2):
    a = a.copy()
    a[rng.random(a.shape) < frac] = 0.0
    return a


def linear_data(kind: str, seed: int = 1):
    """(x (N, in), torch weight (out, in), bias (out,), R (N, out)).

    Unit 0 has zero weights and zero bias (Z = 0 for every sample, no contributions); unit 1 has
    weights (0.5, -0.5, 0, ...) and zero bias, and sample 0 has x_0 = x_1 = 1 (Z = 0 exactly, but
    non-zero contributions: tests sign(0) = +1 and the γ masks); bias of unit 2 is 0.
    ``kind="dyadic"``: small multiples of 1/4 everywhere, so sums are exact and many Z are exactly 0.
    """
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = _sprinkle_zeros(rng, rng.normal(size=(N_LIN, IN_LIN)))
        w = _sprinkle_zeros(rng, rng.normal(size=(OUT_LIN, IN_LIN)))
        b = rng.normal(size=OUT_LIN) * 0.5
        R = _sprinkle_zeros(rng, rng.normal(size=(N_LIN, OUT_LIN)))
    elif kind == "dyadic":
        x = rng.integers(-2, 3, size=(N_LIN, IN_LIN)).astype(np.float64)
        w = rng.integers(-4, 5, size=(OUT_LIN, IN_LIN)) / 4.0
        b = rng.integers(-2, 3, size=OUT_LIN) / 4.0
        R = rng.integers(-3, 4, size=(N_LIN, OUT_LIN)) / 2.0
    else:
        raise ValueError(kind)
    w[0] = 0.0
    b[0] = 0.0
    w[1] = 0.0
    w[1, 0], w[1, 1] = 0.5, -0.5
    b[1] = 0.0
    b[2] = 0.0
    x[0, 0] = x[0, 1] = 1.0
    R[0, 1] = 1.5          # the exactly-zero unit with contributions carries relevance
    R[1, 0] = -1.0
    R[2, 3] = 0.0
    b[3] = -abs(b[3]) - 0.25   # both bias signs
    b[4] = abs(b[4]) + 0.25
    return x, w, b, R


def linear_graph(w, b):
    g = GraphBuilder("one_linear")
    h = g.input("x", (w.shape[1],), dtype="float64")
    g.linear(h, w, b, name="layer")
    return g.build()


CONV_CONFIGS = {
    "k3_pad1": dict(C=3, H=5, W=5, O=4, k=(3, 3), stride=1, padding=1, dilation=1, groups=1),
    "k3x2_stride2": dict(C=2, H=6, W=5, O=3, k=(3, 2), stride=2, padding=0, dilation=1, groups=1),
    "dilation2_asym_pad": dict(C=2, H=6, W=6, O=3, k=(2, 3), stride=(1, 2), padding=((1, 0), (2, 1)),
                               dilation=2, groups=1),
    "groups2": dict(C=4, H=5, W=4, O=4, k=(2, 2), stride=(2, 1), padding=1, dilation=1, groups=2),
    "depthwise": dict(C=3, H=4, W=4, O=6, k=(3, 3), stride=1, padding=(1, 2), dilation=(1, 2), groups=3),
}
N_CONV = 3


def _conv_kwargs(cfg):
    return {k: cfg[k] for k in ("stride", "padding", "dilation", "groups")}


def conv_data(name: str, kind: str, seed: int = 2):
    """(x (N, C, H, W), weight, bias, R (N, O*Ho*Wo)); output channel 0 has zero weights and bias."""
    cfg = CONV_CONFIGS[name]
    rng = np.random.default_rng(seed)
    wshape = (cfg["O"], cfg["C"] // cfg["groups"], *cfg["k"])
    xshape = (N_CONV, cfg["C"], cfg["H"], cfg["W"])
    if kind == "random":
        x = _sprinkle_zeros(rng, rng.normal(size=xshape))
        w = _sprinkle_zeros(rng, rng.normal(size=wshape))
        b = rng.normal(size=cfg["O"]) * 0.5
    else:
        x = rng.integers(-2, 3, size=xshape).astype(np.float64)
        w = rng.integers(-4, 5, size=wshape) / 4.0
        b = rng.integers(-2, 3, size=cfg["O"]) / 4.0
    w[0] = 0.0
    b[0] = 0.0
    b[1] = -abs(b[1]) - 0.25
    if cfg["O"] > 2:
        b[2] = abs(b[2]) + 0.25
    _, out_shape = conv_dense(name, w)
    n_out = int(np.prod(out_shape))
    if kind == "random":
        R = _sprinkle_zeros(rng, rng.normal(size=(N_CONV, n_out)))
    else:
        R = rng.integers(-3, 4, size=(N_CONV, n_out)) / 2.0
    return x, w, b, R


@functools.lru_cache(maxsize=None)
def _conv_dense_cached(name, wbytes, wshape):
    cfg = CONV_CONFIGS[name]
    w = np.frombuffer(wbytes, dtype=np.float64).reshape(wshape)
    return ref.conv_matrix(w, (cfg["C"], cfg["H"], cfg["W"]), **_conv_kwargs(cfg))


def conv_dense(name, w):
    """(dense matrix (C*H*W, O*Ho*Wo), (O, Ho, Wo)) of config ``name`` with weight ``w``."""
    w = np.ascontiguousarray(w, dtype=np.float64)
    return _conv_dense_cached(name, w.tobytes(), w.shape)


def conv_ones(name):
    cfg = CONV_CONFIGS[name]
    return conv_dense(name, np.ones((cfg["O"], cfg["C"] // cfg["groups"], *cfg["k"])))[0]


def conv_graph(name, w, b):
    cfg = CONV_CONFIGS[name]
    g = GraphBuilder("one_conv")
    h = g.input("x", (cfg["C"], cfg["H"], cfg["W"]), dtype="float64")
    h = g.conv(h, w, b, name="layer", **_conv_kwargs(cfg))
    g.flatten(h, name="flat")
    return g.build()


# -- rules and their references --------------------------------------------------------------------------
def reference(rule, params, x, W, b, R, ones, low=None, high=None):
    """The reference relevance for ``rule`` on flattened x (N, in), matrix W (in, out), bias vector b."""
    p = dict(params)
    if rule == "zero":
        return ref.lrp_zero(x, W, b, R, **p)
    if rule == "epsilon":
        return ref.lrp_epsilon(x, W, b, R, **p)
    if rule == "alpha_beta":
        return ref.lrp_alpha_beta(x, W, b, R, **p)
    if rule == "z_plus":
        return ref.lrp_z_plus(x, W, b, R, **p)
    if rule == "gamma":
        return ref.lrp_gamma(x, W, b, R, **p)
    if rule == "flat":
        return np.broadcast_to(ref.lrp_flat(ones, R, **p), x.shape)
    if rule == "w_square":
        return np.broadcast_to(ref.lrp_w_square(W, b, R, **p), x.shape)
    if rule == "z_box":
        return ref.lrp_z_box(x, W, b, R, low, high, stabilizer=p.get("stabilizer", 1e-6))
    raise ValueError(rule)


RULE_CASES = [
    ("zero", {}),
    ("zero", {"zero_bias": True}),
    ("epsilon", {"epsilon": 1e-6}),
    ("epsilon", {"epsilon": 0.25}),
    ("epsilon", {"epsilon": 0.25, "zero_bias": True}),
    ("alpha_beta", {"alpha": 1.0, "beta": 0.0}),
    ("alpha_beta", {"alpha": 2.0, "beta": 1.0}),
    ("alpha_beta", {"alpha": 3.0, "beta": 2.0}),
    ("alpha_beta", {"alpha": 2.0, "beta": 1.0, "zero_bias": True}),
    ("alpha_beta", {"alpha": 1.0, "beta": 0.0, "stabilizer": 0.5}),
    ("z_plus", {}),
    ("z_plus", {"zero_bias": True}),
    ("gamma", {"gamma": 0.1}),
    ("gamma", {"gamma": 0.25}),
    ("gamma", {"gamma": 1.0}),
    ("gamma", {"gamma": 0.25, "zero_bias": True}),
    ("gamma", {"gamma": 1.0, "zero_bias": True, "stabilizer": 0.5}),
    ("flat", {}),
    ("flat", {"stabilizer": 0.5}),
    ("w_square", {}),
    ("w_square", {"zero_bias": True}),
    ("w_square", {"stabilizer": 0.5}),
]
RULE_IDS = [f"{r}-" + "-".join(f"{k}={v}" for k, v in p.items()) if p else r for r, p in RULE_CASES]


def explain_layer(graph, x, R, spec, engine):
    comp = C.Composite([(C.category("layer"), spec)], name="test")
    rel = attribx.explain(graph, x, method=comp, output_init=R, engine=engine)
    return np.asarray(rel.values)


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


# -- reference self-checks (no attribx rule involved) -------------------------------------------------
@pytest.mark.parametrize("name", list(CONV_CONFIGS))
def test_reference_conv_matrix_is_the_conv(name):
    x, w, b, _ = conv_data(name, "random")
    cfg = CONV_CONFIGS[name]
    M, out_shape = conv_dense(name, w)
    direct = ref.conv_direct(x, w, b, **_conv_kwargs(cfg))
    assert direct.shape[1:] == out_shape
    dense = x.reshape(len(x), -1) @ M + ref.conv_bias_vector(b, out_shape)
    assert_close(dense, direct.reshape(len(x), -1), rtol=1e-12)
    # and attribx's op means the same thing (forward pass only)
    got = attribx.forward(conv_graph(name, w, b), x)
    assert_close(got, direct.reshape(len(x), -1), rtol=1e-12)
    # flat's connectivity: each output reads (in-bounds positions) x (channels per group) inputs
    ones = conv_ones(name)
    assert set(np.unique(ones)) <= {0.0, 1.0}
    assert ones.sum(axis=0).max() <= (cfg["C"] // cfg["groups"]) * np.prod(cfg["k"])
    if cfg["padding"] == 0:
        np.testing.assert_array_equal(ones.sum(axis=0), (cfg["C"] // cfg["groups"]) * np.prod(cfg["k"]))


def test_reference_identities():
    """Identities between the reference rules, derived by hand, so the references check each other."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 6))
    W = rng.normal(size=(6, 5))
    b = rng.normal(size=5) * 0.3
    R = rng.normal(size=(8, 5))
    xp = np.abs(x)
    s = 1e-6
    # αβ with α=1, β=0 is z+; on non-negative inputs both are the classic z+ rule
    classic_zplus = xp * ((R / ref.stab(xp @ ref.pos(W) + ref.pos(b), s)) @ ref.pos(W).T)
    assert_close(ref.lrp_z_plus(xp, W, b, R), classic_zplus, rtol=1e-12)
    assert_close(ref.lrp_alpha_beta(xp, W, b, R, 1.0, 0.0), classic_zplus, rtol=1e-12)
    # classic αβ on non-negative inputs
    classic_ab = xp * (2 * (R / ref.stab(xp @ ref.pos(W) + ref.pos(b), s)) @ ref.pos(W).T
                       - 1 * (R / ref.stab(xp @ ref.neg(W) + ref.neg(b), s)) @ ref.neg(W).T)
    assert_close(ref.lrp_alpha_beta(xp, W, b, R, 2.0, 1.0), classic_ab, rtol=1e-10)
    # γ = 0 is ε with ε = the stabiliser (no Z is 0 here), with and without bias (then on masked R)
    Z = x @ W + b
    assert np.all(Z != 0)
    assert_close(ref.lrp_gamma(x, W, b, R, gamma=0.0, stabilizer=0.1), ref.lrp_epsilon(x, W, b, R, 0.1),
                 rtol=1e-12)
    assert_close(ref.lrp_gamma(x, W, b, R, gamma=0.0, stabilizer=0.1, zero_bias=True),
                 ref.lrp_epsilon(x, W, b, R, 0.1, zero_bias=True), rtol=1e-12)
    # and ≈ LRP-0 for a tiny stabiliser
    assert_close(ref.lrp_gamma(x, W, b, R, gamma=0.0, stabilizer=1e-13), ref.lrp_zero(x, W, b, R), rtol=1e-8)
    # on non-negative inputs, for units with Z > 0, the generalised γ-rule is the original one
    Zp = xp @ W + b
    Rm = np.where(Zp > 0, R, 0.0)
    Wg = W + 0.25 * ref.pos(W)
    original = xp * ((Rm / ref.stab(xp @ Wg + b + 0.25 * ref.pos(b), s)) @ Wg.T)
    assert_close(ref.lrp_gamma(xp, W, b, Rm, gamma=0.25), original, rtol=1e-10)
    # z-box with l = h = 0 is ε (= stabiliser) without bias
    assert_close(ref.lrp_z_box(x, W, b, R, 0.0, 0.0, stabilizer=0.1),
                 ref.lrp_epsilon(x, W, b, R, 0.1, zero_bias=True), rtol=1e-12)
    # flat is w² with all-ones weights and no bias
    ones = np.ones_like(W)
    assert_close(ref.lrp_flat(ones, R), ref.lrp_w_square(ones, None, R, zero_bias=True), rtol=1e-12)
    # the zero-bias ε on the unit with a zero column gives no relevance, whatever the sign convention
    W0 = W.copy()
    W0[:, 0] = 0.0
    assert np.all(ref.lrp_epsilon(x, W0, np.r_[0.0, b[1:]], np.eye(5)[[0] * 8]) == 0)
    # sign(0) = +1 (also for -0.0)
    np.testing.assert_array_equal(ref.stab(np.array([0.0, -0.0, -2.0, 3.0]), 0.5), [0.5, 0.5, -2.5, 3.5])


# -- the rules on a linear layer --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["random", "dyadic"])
@pytest.mark.parametrize("rule, params", RULE_CASES, ids=RULE_IDS)
def test_rule_on_linear_equals_reference(engine, kind, rule, params):
    x, w, b, R = linear_data(kind)
    got = explain_layer(linear_graph(w, b), x, R, (rule, params), engine)
    want = reference(rule, params, x, w.T, b, R, np.ones((IN_LIN, OUT_LIN)))
    assert_close(got, want)
    assert got.dtype == np.float64


def test_zero_pre_activation_conventions(engine):
    """Unit 1 of sample 0 has Z = 0 exactly with contributions ±0.5·R: ε uses sign(0) = +1, LRP-0 and γ
    pass nothing, αβ splits it into Zp = 0.5 and Zn = -0.5."""
    x, w, b, _ = linear_data("random")
    R = np.zeros((N_LIN, OUT_LIN))
    R[0, 1] = 2.0
    graph = linear_graph(w, b)
    eps = explain_layer(graph, x, R, ("epsilon", {"epsilon": 0.25}), engine)
    expected = np.zeros_like(x)
    expected[0, 0], expected[0, 1] = 0.5 * 2.0 / 0.25, -0.5 * 2.0 / 0.25
    assert_close(eps, expected, rtol=1e-12)
    assert np.all(explain_layer(graph, x, R, ("zero", {}), engine) == 0)
    assert np.all(explain_layer(graph, x, R, ("gamma", {"gamma": 0.25}), engine) == 0)
    ab = explain_layer(graph, x, R, ("alpha_beta", {"alpha": 2.0, "beta": 1.0}), engine)
    expected = np.zeros_like(x)
    expected[0, 0] = 2 * 0.5 * 2.0 / (0.5 + 1e-6)       # α · share of Zp
    expected[0, 1] = -1 * (-0.5) * 2.0 / (-0.5 - 1e-6)  # −β · share of Zn
    assert_close(ab, expected, rtol=1e-12)


@pytest.mark.parametrize("low, high", [(-3.0, 3.0), (-2.0, 0.5), ("array", "array")])
@pytest.mark.parametrize("kind", ["random", "dyadic"])
def test_z_box_on_linear_equals_reference(engine, kind, low, high):
    x, w, b, R = linear_data(kind)
    if isinstance(low, str):
        rng = np.random.default_rng(3)
        low = -np.abs(rng.normal(size=IN_LIN)) - 1.0
        high = np.abs(rng.normal(size=IN_LIN)) + 1.0
        low[2] = 0.0     # a zero bound
    for params in ({"low": low, "high": high}, {"low": low, "high": high, "stabilizer": 0.5}):
        got = explain_layer(linear_graph(w, b), x, R, ("z_box", params), engine)
        want = reference("z_box", params, x, w.T, b, R, None, low, high)
        assert_close(got, want)


def test_rule_instances_equal_rule_names(engine):
    from attribx.rules import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, Zero, ZPlus
    x, w, b, R = linear_data("random")
    graph = linear_graph(w, b)
    pairs = [(Zero(), ("zero", {})), (Epsilon(epsilon=0.25), ("epsilon", {"epsilon": 0.25})),
             (AlphaBeta(alpha=2.0, beta=1.0), ("alpha_beta", {"alpha": 2.0, "beta": 1.0})),
             (ZPlus(), ("z_plus", {})), (Gamma(gamma=0.25), ("gamma", {"gamma": 0.25})),
             (Flat(), ("flat", {})), (WSquare(), ("w_square", {})),
             (ZBox(low=-3.0, high=3.0), ("z_box", {"low": -3.0, "high": 3.0}))]
    for inst, spec in pairs:
        np.testing.assert_array_equal(explain_layer(graph, x, R, inst, engine),
                                      explain_layer(graph, x, R, spec, engine))
    # a bare name uses the rule's defaults
    np.testing.assert_array_equal(explain_layer(graph, x, R, "gamma", engine),
                                  explain_layer(graph, x, R, ("gamma", {"gamma": 0.25}), engine))


# -- the rules on conv layers --------------------------------------------------------------------------
CONV_RULE_CASES = [c for c in RULE_CASES if c[1].get("stabilizer") is None or c[0] == "flat"]
CONV_RULE_IDS = [i for c, i in zip(RULE_CASES, RULE_IDS) if c in CONV_RULE_CASES]


@pytest.mark.parametrize("kind", ["random", "dyadic"])
@pytest.mark.parametrize("name", list(CONV_CONFIGS))
@pytest.mark.parametrize("rule, params", CONV_RULE_CASES, ids=CONV_RULE_IDS)
def test_rule_on_conv_equals_reference(engine, name, kind, rule, params):
    x, w, b, R = conv_data(name, kind)
    M, out_shape = conv_dense(name, w)
    got = explain_layer(conv_graph(name, w, b), x, R, (rule, params), engine)
    want = reference(rule, params, x.reshape(len(x), -1), M, ref.conv_bias_vector(b, out_shape), R,
                     conv_ones(name))
    assert_close(got, want.reshape(x.shape))


# -- the rules on a transposed conv: its dense matrix is the transpose of the adjoint conv's -----------------
CT = dict(C=4, H=3, W=4, O=6, k=(3, 2), stride=(2, 1), padding=((1, 0), (0, 1)), output_padding=(1, 0),
          dilation=(1, 2), groups=2)


def conv_transpose_case(kind, seed=5):
    """(graph, x, dense matrix (C*H*W, O*Ho*Wo), bias vector, R, ones matrix)."""
    rng = np.random.default_rng(seed)
    g = CT["groups"]
    wshape = (CT["C"], CT["O"] // g, *CT["k"])
    xshape = (N_CONV, CT["C"], CT["H"], CT["W"])
    if kind == "random":
        x, w = _sprinkle_zeros(rng, rng.normal(size=xshape)), _sprinkle_zeros(rng, rng.normal(size=wshape))
        b = rng.normal(size=CT["O"]) * 0.5
    else:
        x = rng.integers(-2, 3, size=xshape).astype(np.float64)
        w, b = rng.integers(-4, 5, size=wshape) / 4.0, rng.integers(-2, 3, size=CT["O"]) / 4.0
    out = [(n - 1) * s + (k - 1) * d + 1 - lo - hi + e for n, s, k, d, (lo, hi), e in
           zip((CT["H"], CT["W"]), CT["stride"], CT["k"], CT["dilation"], CT["padding"], CT["output_padding"])]
    conv = dict(stride=CT["stride"], padding=CT["padding"], dilation=CT["dilation"], groups=g)

    def dense(weight):     # the conv from (O, Ho, Wo) to (C, H, W) with this weight, transposed
        M, shape = ref.conv_matrix(weight, (CT["O"], *out), **conv)
        assert shape == (CT["C"], CT["H"], CT["W"])
        return M.T
    b_vec = np.repeat(b, int(np.prod(out)))
    R = _sprinkle_zeros(rng, rng.normal(size=(N_CONV, CT["O"] * int(np.prod(out)))))
    gb = GraphBuilder("one_conv_transpose")
    h = gb.input("x", xshape[1:], dtype="float64")
    h = gb.add_node("conv_transpose", h, name="layer", params={"weight": w, "bias": b},
                    output_padding=CT["output_padding"], **conv)
    gb.flatten(h, name="flat")
    return gb.build(), x, dense(w), b_vec, R, dense(np.ones_like(w))


@pytest.mark.parametrize("kind", ["random", "dyadic"])
def test_reference_matrix_is_the_transposed_conv(kind):
    graph, x, M, b_vec, _, _ = conv_transpose_case(kind)
    assert_close(attribx.forward(graph, x), x.reshape(len(x), -1) @ M + b_vec, rtol=1e-12)


@pytest.mark.parametrize("kind", ["random", "dyadic"])
@pytest.mark.parametrize("rule, params", CONV_RULE_CASES, ids=CONV_RULE_IDS)
def test_rule_on_conv_transpose_equals_reference(engine, kind, rule, params):
    graph, x, M, b_vec, R, ones = conv_transpose_case(kind)
    got = explain_layer(graph, x, R, (rule, params), engine)
    want = reference(rule, params, x.reshape(len(x), -1), M, b_vec, R, ones)
    assert_close(got, want.reshape(x.shape))


@pytest.mark.parametrize("bounds", ["scalar", "per_channel", "per_pixel"])
@pytest.mark.parametrize("name", ["k3_pad1", "groups2", "dilation2_asym_pad"])
def test_z_box_on_conv_equals_reference(engine, name, bounds):
    """Scalar and per-channel bounds fold into the weights (groups=1); per-pixel ones cannot."""
    x, w, b, R = conv_data(name, "random")
    cfg = CONV_CONFIGS[name]
    if bounds == "scalar":
        low, high = -2.5, 2.0
    elif bounds == "per_pixel":
        rng = np.random.default_rng(5)
        low = -np.abs(rng.normal(size=(cfg["C"], cfg["H"], cfg["W"]))) - 1.0
        high = np.abs(rng.normal(size=(1, cfg["H"], cfg["W"]))) + 1.0
    else:
        rng = np.random.default_rng(4)
        low = (-np.abs(rng.normal(size=(cfg["C"], 1, 1))) - 1.0)
        high = np.abs(rng.normal(size=(cfg["C"], 1, 1))) + 1.0
        high[0] = 0.0
    M, out_shape = conv_dense(name, w)
    got = explain_layer(conv_graph(name, w, b), x, R, ("z_box", {"low": low, "high": high}), engine)
    shape = (cfg["C"], cfg["H"], cfg["W"])
    lf = np.broadcast_to(low, shape).reshape(-1)
    hf = np.broadcast_to(high, shape).reshape(-1)
    want = ref.lrp_z_box(x.reshape(len(x), -1), M, ref.conv_bias_vector(b, out_shape), R, lf, hf)
    assert_close(got, want.reshape(x.shape))


# -- norm on sum ops -----------------------------------------------------------------------------------
@pytest.mark.parametrize("epsilon", [1e-6, 0.25, 0.0])
def test_norm_on_add_equals_reference(engine, epsilon):
    rng = np.random.default_rng(6)
    g = GraphBuilder("add")
    h = g.input("x", (2, 6), dtype="float64")
    a = g.slice(h, axis=1, start=0, stop=1)
    c = g.slice(h, axis=1, start=1, stop=2)
    g.flatten(g.add(a, c, name="sum"))
    graph = g.build()
    x = _sprinkle_zeros(rng, rng.normal(size=(5, 2, 6)))
    x[:, 0, 0], x[:, 1, 0] = 1.5, -1.5      # a + b = 0 exactly, with contributions
    x[:, 0, 1] = x[:, 1, 1] = 0.0           # a + b = 0, no contributions
    R = _sprinkle_zeros(rng, rng.normal(size=(5, 6)))
    R[:, :2] = 1.0
    comp = C.Composite([(C.op("add"), ("norm", {"epsilon": epsilon}))])
    got = np.asarray(attribx.explain(graph, x, method=comp, output_init=R, engine=engine).values)
    ra, rb = ref.lrp_norm_sum([x[:, 0], x[:, 1]], R, epsilon)
    assert_close(got, np.stack([ra, rb], axis=1))


@pytest.mark.parametrize("epsilon", [1e-6, 0.25, 0.0])
@pytest.mark.parametrize("pool", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                  dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
                                  dict(kernel_size=(2, 3), stride=(1, 2))],
                         ids=["k2", "k3s2p1", "k3s2p1_exclude_pad", "k2x3"])
def test_norm_on_avg_pool_equals_reference(engine, pool, epsilon):
    rng = np.random.default_rng(7)
    shape = (2, 5, 6)
    g = GraphBuilder("pool")
    h = g.input("x", shape, dtype="float64")
    g.flatten(g.avg_pool(h, **pool, name="pool"))
    graph = g.build()
    x = _sprinkle_zeros(rng, rng.normal(size=(3, *shape)))
    x[0, 0, :3, :3] = 0.0                                # windows of zeros: z = 0
    x[1, 1, :2, :2] = [[1.0, -1.0], [0.5, -0.5]]         # a window summing to 0 exactly
    M, out_shape = ref.avg_pool_matrix(shape, pool["kernel_size"], pool.get("stride"), pool.get("padding", 0),
                                       pool.get("count_include_pad", True))
    R = _sprinkle_zeros(rng, rng.normal(size=(3, int(np.prod(out_shape)))))
    assert_close(attribx.forward(graph, x), x.reshape(3, -1) @ M, rtol=1e-12)
    comp = C.Composite([(C.op("avg_pool"), ("norm", {"epsilon": epsilon}))])
    got = np.asarray(attribx.explain(graph, x, method=comp, output_init=R, engine=engine).values)
    want = ref.lrp_norm_linear(x.reshape(3, -1), M, R, epsilon).reshape(x.shape)
    assert_close(got, want)


# -- conservation ------------------------------------------------------------------------------------------
CONSERVING = [
    ("zero", {"zero_bias": True}, "any"),
    ("zero", {}, "no_bias"),
    ("z_plus", {"zero_bias": True, "stabilizer": 1e-12}, "nonneg"),
    ("alpha_beta", {"alpha": 1.0, "beta": 0.0, "zero_bias": True, "stabilizer": 1e-12}, "nonneg"),
    ("alpha_beta", {"alpha": 2.0, "beta": 1.0, "zero_bias": True, "stabilizer": 1e-12}, "nonneg"),
    ("alpha_beta", {"alpha": 3.0, "beta": 2.0, "zero_bias": True, "stabilizer": 1e-12}, "nonneg"),
    ("alpha_beta", {"alpha": 2.0, "beta": 1.0, "zero_bias": True, "stabilizer": 1e-12}, "any"),
    ("gamma", {"gamma": 0.25, "zero_bias": True, "stabilizer": 1e-12}, "any"),
    ("flat", {"stabilizer": 1e-12}, "any"),
    ("w_square", {"zero_bias": True, "stabilizer": 1e-12}, "any"),
]


def _conserving_linear(rng, inputs):
    x = rng.normal(size=(6, 16))     # wide enough that no Zp or Zn is 0
    x[rng.random(x.shape) < 0.1] = 0.0
    if inputs == "nonneg":
        x = np.abs(x)
    w = rng.normal(size=(5, 16))
    b = None if inputs == "no_bias" else rng.normal(size=5)
    return x, w, b


@pytest.mark.parametrize("layer", ["linear", "conv"])
@pytest.mark.parametrize("rule, params, inputs", CONSERVING,
                         ids=[f"{r}-{i}-" + "-".join(f"{k}={v}" for k, v in p.items()) for r, p, i in CONSERVING])
def test_conservation(engine, layer, rule, params, inputs):
    rng = np.random.default_rng(8)
    if layer == "linear":
        x, w, b = _conserving_linear(rng, inputs)
        graph = linear_graph(w, b)
        R = rng.normal(size=(len(x), w.shape[0]))
        Z = x @ w.T
    else:
        name = "k3_pad1"
        cfg = CONV_CONFIGS[name]
        x = rng.normal(size=(3, cfg["C"], cfg["H"], cfg["W"]))
        x[rng.random(x.shape) < 0.1] = 0.0
        if inputs == "nonneg":
            x = np.abs(x)
        w = rng.normal(size=(cfg["O"], cfg["C"], *cfg["k"]))
        b = None if inputs == "no_bias" else rng.normal(size=cfg["O"])
        graph = conv_graph(name, w, b)
        M, _ = conv_dense(name, w)
        Z = x.reshape(len(x), -1) @ M
        R = rng.normal(size=(len(x), M.shape[1]))
    W = w.T if layer == "linear" else M
    xf = x.reshape(len(x), -1)
    xp, xn = ref.pos(xf), ref.neg(xf)
    dens = [Z]
    if rule in ("alpha_beta", "z_plus"):
        dens += [xp @ ref.pos(W) + xn @ ref.neg(W), xp @ ref.neg(W) + xn @ ref.pos(W)]
    if rule == "gamma":
        g = params["gamma"]
        dens += [xp @ (W + g * ref.pos(W)) + xn @ (W + g * ref.neg(W)),
                 xp @ (W + g * ref.neg(W)) + xn @ (W + g * ref.pos(W))]
    if rule in ("zero", "alpha_beta", "z_plus", "gamma"):
        assert min(np.abs(d).min() for d in dens) > 1e-6    # no zero denominators: the data is fit
    got = explain_layer(graph, x, R, (rule, params), engine)
    total = got.reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(total, R.sum(axis=1), rtol=1e-6, atol=1e-9 * np.abs(R).sum())


def test_lrp_zero_with_bias_does_not_conserve(engine):
    x, w, b, R = linear_data("random")
    got = explain_layer(linear_graph(w, b + 2.0), x, R, ("zero", {}), engine)
    assert not np.allclose(got.sum(axis=1), R.sum(axis=1), rtol=1e-3)


# -- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha, beta", [(2.0, 2.0), (1.0, 1.0), (3.0, 1.0), (0.5, 0.0)])
def test_alpha_minus_beta_must_be_one(alpha, beta):
    x, w, b, R = linear_data("random")
    with pytest.raises(attribx.MethodError, match="alpha"):
        explain_layer(linear_graph(w, b), x, R, ("alpha_beta", {"alpha": alpha, "beta": beta}), "numpy")
    from attribx.rules import AlphaBeta
    with pytest.raises(attribx.MethodError):
        AlphaBeta(alpha=alpha, beta=beta)


@pytest.mark.parametrize("rule", ["zero", "epsilon", "alpha_beta", "z_plus", "gamma", "flat", "w_square",
                                  "z_box", "norm"])
def test_unknown_rule_parameter_is_an_error(rule):
    x, w, b, R = linear_data("random")
    with pytest.raises(attribx.MethodError, match="bogus"):
        explain_layer(linear_graph(w, b), x, R, (rule, {"bogus": 1.0}), "numpy")


def test_z_plus_rejects_alpha():
    with pytest.raises(attribx.MethodError):
        C.Composite([(C.category("layer"), ("z_plus", {"alpha": 2.0}))])


@pytest.mark.parametrize("rule", ["gamma", "alpha_beta", "z_plus", "flat", "w_square", "epsilon", "zero"])
def test_rule_on_an_op_it_does_not_apply_to(rule):
    x, w, b, R = linear_data("random")
    g = GraphBuilder("relu")
    h = g.input("x", (IN_LIN,), dtype="float64")
    g.relu(g.linear(h, w, b, name="layer"), name="act")
    graph = g.build()
    comp = C.Composite([(C.op("relu"), rule), (C.category("layer"), ("epsilon", {}))])
    with pytest.raises(attribx.UnsupportedError, match=rf"(?s)act.*{rule}.*relu"):
        attribx.explain(graph, x, method=comp, output_init=R)


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_epsilon_zero_passes_nothing_through_a_unit_whose_z_is_exactly_zero(engine):
    """LRP-0 (ε = 0): a hidden unit with z = 0 receives R = 0 (its activation is 0) and 0/0 must count as 0,
    not NaN (GPT-2 at 512 tokens has such a unit in float32). Hand-derived: z₁ = x·[1, 1] = 0 for x = (1, -1),
    z₂ = 2; out = 3·z₁ + z₂ = 2; R_in = x ⊙ W₁ᵀ (R_h / z_h) = (1, -1) ⊙ (2, 0) = (2, 0), conserving 2."""
    if engine == "torch":
        pytest.importorskip("attribx_torch")
    b = GraphBuilder("zero_unit")
    h = b.linear(b.input("x", (2,)), np.array([[1.0, 1.0], [2.0, 0.0]]), None, name="hidden")
    g = b.build(b.linear(h, np.array([[3.0, 1.0]]), None, name="out"))
    rel = attribx.explain(g, np.array([[1.0, -1.0]]), "lrp.epsilon", target=0, epsilon=0.0, engine=engine)
    np.testing.assert_allclose(rel.values, [[2.0, 0.0]], atol=1e-12)
