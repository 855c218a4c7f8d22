"""The numpy kernels are the reference every other engine is compared with, so they are checked
against independent references: window ops against naive loops (and scipy), the rest against their
formulas, and every op's VJP against central finite differences in float64."""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import signal

from attribx.engines.base import Kernel
from attribx.engines.numpy_kernels import KERNELS, unbroadcast
from attribx.errors import GraphError
from attribx.ops import BUILTIN_OPS, op_table

from engine_cases import gen_resize, gen_roll

OPS = op_table(BUILTIN_OPS)
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Case:
    """One op application: attributes as a user gives them, inputs, params, which inputs are batched."""

    name: str
    attrs: dict
    inputs: list
    params: dict = field(default_factory=dict)
    batched: list | None = None
    seed: int = 0

    @property
    def full_attrs(self):
        return OPS[self.name].resolve_attrs("t", self.attrs)

    def forward(self, inputs=None, params=None):
        return KERNELS[self.name].forward(self.full_attrs, list(self.inputs if inputs is None else inputs),
                                          self.params if params is None else params)


# ----------------------------------------------------------------------------------------------
# independent references (written from the definitions, not from the kernels)


def per_dim(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def expand_pads(padding, sizes, kernel, stride, dilation):
    """(lo, hi) per spatial dim; 'same' puts the odd extra after (TF / ONNX SAME_UPPER)."""
    nd = len(kernel)
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "same":
        pads = []
        for n, k, s, d in zip(sizes, kernel, stride, dilation):
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def out_sizes(sizes, kernel, stride, dilation, pads):
    return [(n + lo + hi - (k - 1) * d - 1) // s + 1
            for n, k, s, d, (lo, hi) in zip(sizes, kernel, stride, dilation, pads)]


def naive_conv(x, w, b, stride, pads, dilation, groups):
    """Direct loop over output positions, channels and taps; out-of-range taps read zero."""
    N, C = x.shape[:2]
    O, Cg = w.shape[:2]
    K = w.shape[2:]
    sizes = x.shape[2:]
    outs = out_sizes(sizes, K, stride, dilation, pads)
    y = np.zeros((N, O, *outs))
    Og = O // groups
    for o in range(O):
        grp = o // Og
        for pos in itertools.product(*map(range, outs)):
            acc = np.zeros(N) if b is None else np.full(N, float(b[o]))
            for c in range(Cg):
                for k in itertools.product(*map(range, K)):
                    idx = tuple(pos[i] * stride[i] - pads[i][0] + k[i] * dilation[i] for i in range(len(K)))
                    if all(0 <= idx[i] < sizes[i] for i in range(len(K))):
                        acc = acc + w[(o, c) + k] * x[(slice(None), grp * Cg + c) + idx]
            y[(slice(None), o) + pos] = acc
    return y


def naive_pool(x, kind, kernel, stride, pads, dilation=None, count_include_pad=True):
    nd = len(kernel)
    dilation = dilation or (1,) * nd
    sizes = x.shape[2:]
    outs = out_sizes(sizes, kernel, stride, dilation, pads)
    y = np.zeros(x.shape[:2] + tuple(outs))
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for pos in itertools.product(*map(range, outs)):
            vals = []
            for k in itertools.product(*map(range, kernel)):
                idx = tuple(pos[i] * stride[i] - pads[i][0] + k[i] * dilation[i] for i in range(nd))
                if all(0 <= idx[i] < sizes[i] for i in range(nd)):
                    vals.append(x[(n, c) + idx])
            if kind == "max":
                y[(n, c) + pos] = max(vals)
            else:
                y[(n, c) + pos] = sum(vals) / (math.prod(kernel) if count_include_pad else len(vals))
    return y


# ----------------------------------------------------------------------------------------------
# strategies: each draws the structure with hypothesis and the values from a seeded generator


def distinct(rng, shape):
    """Distinct values in (-1, 1), at least 1/n from each other and from 0: no ties and no kinks
    (relu, max) within reach of a finite-difference step."""
    n = math.prod(shape)
    return ((rng.permutation(n) - n / 2 + 0.25) * (2 / max(n, 1))).reshape(shape)


seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 3)


def per_dim_or_int(elements, nd):
    return st.one_of(elements, st.lists(elements, min_size=nd, max_size=nd).map(tuple))


@st.composite
def shapes(draw, min_rank=2, max_rank=4, max_side=4):
    rank = draw(st.integers(min_rank, max_rank))
    return (draw(st.integers(1, 2)),) + tuple(draw(st.integers(1, max_side)) for _ in range(rank - 1))


@st.composite
def conv_cases(draw, nd=None):
    nd = draw(st.sampled_from([1, 2])) if nd is None else nd
    groups, cg, og = draw(small), draw(small), draw(small)
    kernel = tuple(draw(small) for _ in range(nd))
    stride = draw(per_dim_or_int(small, nd))
    dilation = draw(per_dim_or_int(st.integers(1, 2), nd))
    pair = st.tuples(st.integers(0, 2), st.integers(0, 2))
    padding = draw(st.one_of(st.sampled_from(["valid", "same"]), st.integers(0, 2),
                             st.lists(st.one_of(st.integers(0, 2), pair), min_size=nd, max_size=nd)))
    dil = per_dim(dilation, nd)
    sizes = tuple((k - 1) * d + 1 + draw(st.integers(0, 3)) for k, d in zip(kernel, dil))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(draw(st.integers(1, 2)), groups * cg) + sizes)
    params = {"weight": rng.normal(size=(groups * og, cg) + kernel)}
    if draw(st.booleans()):
        params["bias"] = rng.normal(size=groups * og)
    attrs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return Case("conv", attrs, [x], params, seed=seed)


@st.composite
def pool_cases(draw, name):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    kernel = tuple(draw(small) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd)) if name == "max_pool" else (1,) * nd
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    stride = draw(st.one_of(st.none(), st.integers(1, 3), st.lists(small, min_size=nd, max_size=nd)))
    # like torch, at most half an (effective) window of padding, so every window sees the input
    padding = draw(st.one_of(
        st.sampled_from(["valid", "same"]),
        st.integers(0, min(eff) // 2),
        st.tuples(*[st.tuples(st.integers(0, e // 2), st.integers(0, e // 2)) for e in eff]).map(list),
    ))
    sizes = tuple(e + draw(st.integers(0, 3 if nd < 3 else 1)) for e in eff)
    seed = draw(seeds)
    x = distinct(np.random.default_rng(seed), (draw(st.integers(1, 2)), draw(st.integers(1, 2))) + sizes)
    attrs = {"kernel_size": kernel if draw(st.booleans()) or len(set(kernel)) > 1 else kernel[0],
             "stride": stride, "padding": padding}
    if name == "max_pool":
        attrs["dilation"] = dil
    else:
        attrs["count_include_pad"] = draw(st.booleans())
    return Case(name, attrs, [x], seed=seed)


@st.composite
def linear_cases(draw):
    lead = draw(st.lists(st.integers(1, 3), min_size=0, max_size=1))
    n_in, n_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    params = {"weight": rng.normal(size=(n_out, n_in))}
    if draw(st.booleans()):
        params["bias"] = rng.normal(size=n_out)
    return Case("linear", {}, [rng.normal(size=(draw(st.integers(1, 2)), *lead, n_in))], params, seed=seed)


@st.composite
def unary_cases(draw, name, values="normal", **attr_strategies):
    shape = draw(shapes())
    attrs = {k: draw(v) for k, v in attr_strategies.items()}
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    x = distinct(rng, shape) if values == "distinct" else rng.normal(size=shape) * 2
    return Case(name, attrs, [x], seed=seed)


@st.composite
def axis_cases(draw, name, batch_axis=False, **extra):
    shape = draw(shapes())
    ndim = len(shape)
    axis = draw(st.integers(0 if batch_axis else 1, ndim - 1))
    if draw(st.booleans()):
        axis -= ndim
    seed = draw(seeds)
    attrs = {"axis": axis, **{k: draw(v) for k, v in extra.items()}}
    return Case(name, attrs, [np.random.default_rng(seed).normal(size=shape) * 2], seed=seed)


@st.composite
def batch_norm_cases(draw):
    case = draw(axis_cases("batch_norm", eps=st.sampled_from([1e-5, 1e-3, 0.5])))
    x = case.inputs[0]
    c = x.shape[case.attrs["axis"]]
    rng = np.random.default_rng(case.seed + 1)
    case.params = {"mean": rng.normal(size=c), "var": rng.uniform(0.2, 2, size=c)}
    for key in ("scale", "bias"):
        if draw(st.booleans()):
            case.params[key] = rng.normal(size=c)
    return case


@st.composite
def broadcast_cases(draw, name):
    base = draw(shapes())
    n = {"mul": 2, "where": 3}.get(name) or draw(st.integers(2, 3))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    inputs, batched = [], []
    for i in range(n):
        kind = "full" if i == 0 else draw(st.sampled_from(["full", "ones", "constant"]))
        if kind == "constant":  # no batch axis: some trailing axes, some of them 1
            keep = draw(st.integers(0, len(base) - 1))
            shape = tuple(d if draw(st.booleans()) else 1 for d in base[len(base) - keep:])
        elif kind == "ones":
            shape = (base[0],) + tuple(d if draw(st.booleans()) else 1 for d in base[1:])
        else:
            shape = base
        inputs.append(rng.normal(size=shape))
        batched.append(kind != "constant")
    if draw(st.booleans()):  # the batched input need not come first
        inputs, batched = inputs[::-1], batched[::-1]
    return Case(name, {}, inputs, batched=batched, seed=seed)


@st.composite
def concat_cases(draw):
    base = list(draw(shapes()))
    axis = draw(st.integers(1, len(base) - 1))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    inputs = []
    for _ in range(draw(st.integers(1, 3))):
        base[axis] = draw(st.integers(1, 3))
        inputs.append(rng.normal(size=tuple(base)))
    given = axis - len(base) if draw(st.booleans()) else axis
    return Case("concat", {"axis": given}, inputs, seed=seed)


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def reshape_cases(draw):
    shape = draw(shapes())
    size, target = math.prod(shape[1:]), []
    for _ in range(draw(st.integers(0, 2))):
        d = draw(st.sampled_from(divisors(size)))
        target.append(d)
        size //= d
    target.append(size)
    target = draw(st.permutations(target))
    if draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    seed = draw(seeds)
    return Case("reshape", {"shape": tuple(target)}, [np.random.default_rng(seed).normal(size=shape)], seed=seed)


@st.composite
def flatten_cases(draw):
    shape = draw(shapes(max_rank=5, max_side=3))
    ndim = len(shape)
    start = draw(st.integers(1, ndim - 1))
    end = draw(st.integers(start, ndim - 1))
    attrs = {"start_dim": start - ndim if draw(st.booleans()) else start,
             "end_dim": end - ndim if draw(st.booleans()) else end}
    seed = draw(seeds)
    return Case("flatten", attrs, [np.random.default_rng(seed).normal(size=shape)], seed=seed)


@st.composite
def transpose_cases(draw):
    shape = draw(shapes(max_rank=5, max_side=3))
    ndim = len(shape)
    perm = [0] + list(draw(st.permutations(range(1, ndim))))
    perm = [p - ndim if draw(st.booleans()) else p for p in perm]
    seed = draw(seeds)
    return Case("transpose", {"perm": perm}, [np.random.default_rng(seed).normal(size=shape)], seed=seed)


@st.composite
def slice_cases(draw):
    shape = draw(shapes(max_side=6))
    axis = draw(st.integers(1, len(shape) - 1))
    bound = st.one_of(st.none(), st.integers(-7, 7))
    attrs = {"axis": axis, "start": draw(bound), "stop": draw(bound),
             "step": draw(st.one_of(st.none(), st.integers(1, 3)))}
    if not range(shape[axis])[slice(attrs["start"], attrs["stop"], attrs["step"])]:
        attrs["start"], attrs["stop"] = None, None
    seed = draw(seeds)
    return Case("slice", attrs, [np.random.default_rng(seed).normal(size=shape)], seed=seed)


@st.composite
def pad_cases(draw):
    shape = draw(shapes())
    n = draw(st.integers(0, len(shape) - 1))
    pads = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(n)]
    seed = draw(seeds)
    attrs = {"pads": pads, "value": draw(st.sampled_from([0.0, -1.5, 2.0]))}
    return Case("pad", attrs, [np.random.default_rng(seed).normal(size=shape)], seed=seed)


@st.composite
def reduce_cases(draw, name):
    shape = draw(shapes(max_rank=4))
    ndim = len(shape)
    chosen = draw(st.lists(st.integers(1, ndim - 1), min_size=1, max_size=ndim - 1, unique=True))
    chosen = [a - ndim if draw(st.booleans()) else a for a in chosen]
    axes = draw(st.sampled_from([None, chosen[0], tuple(chosen)]))
    seed = draw(seeds)
    attrs = {"axes": axes, "keepdims": draw(st.booleans())}
    return Case(name, attrs, [np.random.default_rng(seed).normal(size=shape)], seed=seed)


@st.composite
def global_pool_cases(draw):
    shape = draw(shapes(min_rank=3, max_rank=5, max_side=3))
    seed = draw(seeds)
    return Case("global_avg_pool", {"keepdims": draw(st.booleans())},
                [np.random.default_rng(seed).normal(size=shape)], seed=seed)


@st.composite
def constant_cases(draw):
    seed = draw(seeds)
    shape = tuple(draw(st.lists(small, max_size=3)))
    return Case("constant", {}, [], {"value": np.random.default_rng(seed).normal(size=shape)}, seed=seed)


@st.composite
def fill_cases(draw):
    """A per-sample copy of a value: the input gives only the batch size."""
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(draw(small), draw(small)))
    return Case("fill", {}, [x], {"value": rng.normal(size=tuple(draw(st.lists(small, max_size=2))))}, seed=seed)


@st.composite
def conv_transpose_cases(draw, nd=None):
    nd = draw(st.sampled_from([1, 2])) if nd is None else nd
    groups, cg, og = draw(small), draw(small), draw(small)
    kernel = tuple(draw(small) for _ in range(nd))
    stride = tuple(draw(small) for _ in range(nd))
    extra = tuple(draw(st.integers(0, s - 1)) for s in stride)
    dilation = draw(per_dim_or_int(st.integers(1, 2), nd))
    pair = st.tuples(st.integers(0, 2), st.integers(0, 2))
    padding = draw(st.one_of(st.integers(0, 2), st.lists(st.one_of(st.integers(0, 2), pair), min_size=nd,
                                                         max_size=nd)))
    sizes = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    params = {"weight": rng.normal(size=(groups * cg, og) + kernel)}
    if draw(st.booleans()):
        params["bias"] = rng.normal(size=groups * og)
    attrs = {"stride": stride, "padding": padding, "output_padding": extra, "dilation": dilation,
             "groups": groups}
    case = Case("conv_transpose", attrs, [rng.normal(size=(draw(st.integers(1, 2)), groups * cg) + sizes)],
                params, seed=seed)
    try:
        inferred_shape(case)
    except GraphError:
        assume(False)      # padding crops the whole output
    return case


@st.composite
def div_cases(draw):
    case = draw(broadcast_cases("mul"))
    b = case.inputs[1]
    case.inputs[1] = np.sign(b) * (np.abs(b) + 0.5) + (b == 0)   # divisors away from zero
    return Case("div", {}, case.inputs, batched=case.batched, seed=case.seed)


@st.composite
def embedding_cases(draw):
    vocab, features = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    shape = draw(shapes(min_rank=1, max_rank=3))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    return Case("embedding", {}, [rng.integers(0, vocab, size=shape)],
                {"weight": rng.normal(size=(vocab, features))}, seed=seed)


@st.composite
def where_cases(draw):
    case = draw(broadcast_cases("where"))
    case.inputs[0] = (case.inputs[0] > 0).astype(np.float64)    # the condition is a 0/1 mask
    return case


@st.composite
def mask_cases(draw):
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    shape = draw(shapes(min_rank=2, max_rank=4))
    value = draw(st.sampled_from([0.0, 1.5]))
    x = rng.normal(size=shape)
    x[rng.random(shape) < 0.5] = value
    axes = draw(st.sampled_from([None, len(shape) - 1, tuple(range(1, len(shape)))]))
    return Case("mask", {"value": value, "axes": axes}, [x], seed=seed)


@st.composite
def length_mask_cases(draw):
    seed = draw(seeds)
    steps = draw(small)
    lengths = np.random.default_rng(seed).integers(0, steps + 2, size=draw(small)).astype(np.float64)
    return Case("length_mask", {"steps": steps}, [lengths], seed=seed)


@st.composite
def norm_cases(draw, name):
    """layer_norm / rms_norm over a non-empty set of non-batch axes (negative or not), with or without affine."""
    shape = draw(shapes(max_rank=4))
    ndim = len(shape)
    chosen = draw(st.lists(st.integers(1, ndim - 1), min_size=1, max_size=ndim - 1, unique=True))
    axes = tuple(a - ndim if draw(st.booleans()) else a for a in chosen)
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    params = {}
    for key in ("scale",) + (("bias",) if name == "layer_norm" else ()):
        if draw(st.booleans()):
            params[key] = rng.normal(size=tuple(shape[a] for a in sorted(set(chosen))))
    attrs = {"axes": axes if draw(st.booleans()) or len(axes) > 1 else axes[0],
             "eps": draw(st.sampled_from([1e-5, 0.1]))}
    return Case(name, attrs, [rng.normal(size=shape) * 2 + 0.5], params, seed=seed)


@st.composite
def matmul_cases(draw):
    """Both factors signals (leading axes broadcast), or one of them a constant without batch axis."""
    n, k, m = draw(small), draw(small), draw(small)
    lead = tuple(draw(st.lists(small, max_size=2)))
    batch = draw(st.integers(1, 2))
    kind = draw(st.sampled_from(["signals", "const_right", "const_left", "rows"]))
    seed = draw(seeds)
    rng = np.random.default_rng(seed)
    if kind == "rows":             # (N, k) @ (k, m): the batch axis is the rows, as a linear layer
        shapes_, batched = [(batch, k), (k, m)], [True, False]
    elif kind == "signals":
        other = tuple(d if draw(st.booleans()) else 1 for d in lead)
        shapes_, batched = [(batch,) + lead + (n, k), (draw(st.sampled_from([1, batch])),) + other + (k, m)], [True, True]
    elif kind == "const_right":
        shapes_, batched = [(batch,) + lead + (n, k), lead[len(lead) - draw(st.integers(0, len(lead))):] + (k, m)], [True, False]
    else:
        shapes_, batched = [(n, k), (batch,) + lead + (k, m)], [False, True]
    return Case("matmul", {}, [rng.normal(size=s) for s in shapes_], batched=batched, seed=seed)


@st.composite
def roll_cases(draw):
    seed = draw(seeds)
    attrs, inputs, _ = gen_roll(draw, np.random.default_rng(seed))
    return Case("roll", attrs, inputs, seed=seed)


@st.composite
def resize_cases(draw):
    seed = draw(seeds)
    attrs, inputs, _ = gen_resize(draw, np.random.default_rng(seed))
    return Case("resize", attrs, inputs, seed=seed)


CASES = {
    "linear": linear_cases(),
    "layer_norm": norm_cases("layer_norm"),
    "rms_norm": norm_cases("rms_norm"),
    "matmul": matmul_cases(),
    "conv_transpose": conv_transpose_cases(),
    "div": div_cases(),
    "embedding": embedding_cases(),
    "conv": conv_cases(),
    "max_pool": pool_cases("max_pool"),
    "avg_pool": pool_cases("avg_pool"),
    "global_avg_pool": global_pool_cases(),
    "batch_norm": batch_norm_cases(),
    "relu": unary_cases("relu", values="distinct"),
    "leaky_relu": unary_cases("leaky_relu", values="distinct", negative_slope=st.sampled_from([0.01, 0.2, 1.5])),
    "tanh": unary_cases("tanh"),
    "clip": unary_cases("clip", values="distinct", min=st.sampled_from([None, -1.05, 0.0]),
                        max=st.sampled_from([None, 0.5573, 6.0])),
    "elu": unary_cases("elu", values="distinct", alpha=st.sampled_from([1.0, 0.3])),
    "gelu": unary_cases("gelu", approximate=st.sampled_from(["none", "tanh"])),
    "silu": unary_cases("silu"),
    "erf": unary_cases("erf"),
    "hard_sigmoid": unary_cases("hard_sigmoid"),
    "hard_swish": unary_cases("hard_swish"),
    "roll": roll_cases(),
    "resize": resize_cases(),
    "sigmoid": unary_cases("sigmoid"),
    "softmax": axis_cases("softmax"),
    "add": broadcast_cases("add"),
    "mul": broadcast_cases("mul"),
    "concat": concat_cases(),
    "reshape": reshape_cases(),
    "flatten": flatten_cases(),
    "transpose": transpose_cases(),
    "slice": slice_cases(),
    "pad": pad_cases(),
    "identity": unary_cases("identity"),
    "reduce_sum": reduce_cases("reduce_sum"),
    "reduce_mean": reduce_cases("reduce_mean"),
    "constant": constant_cases(),
    "fill": fill_cases(),
    "mask": mask_cases(),
    "length_mask": length_mask_cases(),
    "where": where_cases(),
}


# ----------------------------------------------------------------------------------------------
# coverage and generic properties


def test_every_builtin_op_has_a_kernel():
    assert set(CASES) == set(OPS)
    assert set(OPS) <= set(KERNELS)
    assert all(isinstance(k, Kernel) for k in KERNELS.values())


def inferred_shape(case):
    batched = case.batched or [True] * len(case.inputs)
    shapes_ = [(None,) + x.shape[1:] if b else x.shape for x, b in zip(case.inputs, batched)]
    shape = OPS[case.name].infer(case.full_attrs, shapes_, case.params, "t")
    n = next((x.shape[0] for x, b in zip(case.inputs, batched) if b), None)
    return tuple(n if d is None else d for d in shape)


#: ops whose inputs are real-valued (an embedding's are indices; masks are piecewise constant: below)
DIFFERENTIABLE = sorted(set(CASES) - {"embedding", "mask", "length_mask"})


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_vjp_matches_finite_differences(name, data):
    """<vjp(g), v> equals the directional derivative <g, (f(x + hv) - f(x - hv)) / 2h>."""
    case = data.draw(CASES[name])
    kernel, attrs = KERNELS[name], case.full_attrs
    y = case.forward()
    assert y.shape == inferred_shape(case)
    rng = np.random.default_rng(case.seed + 7)
    g = rng.normal(size=y.shape)
    grads = kernel.vjp(attrs, list(case.inputs), case.params, None, g)
    with_output = kernel.vjp(attrs, list(case.inputs), case.params, y, g)
    assert len(grads) == len(with_output) == len(case.inputs)
    for gx, gy, x in zip(grads, with_output, case.inputs):
        assert gx.shape == x.shape
        np.testing.assert_allclose(gx, gy, rtol=1e-12, atol=1e-12)
    if not case.inputs:
        return
    h = 1e-6
    for _ in range(2):
        vs = [rng.normal(size=x.shape) for x in case.inputs]
        plus = case.forward([x + h * v for x, v in zip(case.inputs, vs)])
        minus = case.forward([x - h * v for x, v in zip(case.inputs, vs)])
        numeric = float(np.sum(g * (plus - minus))) / (2 * h)
        analytic = sum(float(np.sum(gx * v)) for gx, v in zip(grads, vs))
        scale = sum(float(np.sum(np.abs(gx * v))) for gx, v in zip(grads, vs)) + abs(numeric)
        assert abs(analytic - numeric) <= 1e-6 * scale + 1e-9, (analytic, numeric)


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@settings(max_examples=8, **SETTINGS)
@given(data=st.data())
def test_float32_stays_float32(name, data):
    case = data.draw(CASES[name])
    inputs = [x.astype(np.float32) for x in case.inputs]
    params = {k: v.astype(np.float32) for k, v in case.params.items()}
    y = case.forward(inputs, params)
    assert y.dtype == np.float32
    grads = KERNELS[name].vjp(case.full_attrs, inputs, params, None, np.ones_like(y))
    assert all(gx.dtype == np.float32 for gx in grads)
    np.testing.assert_allclose(y, case.forward(), rtol=1e-4, atol=1e-4)


def test_unbroadcast_sums_over_broadcast_axes():
    g = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(unbroadcast(g, (3, 1)), g.sum(axis=(0, 2))[:, None])
    np.testing.assert_array_equal(unbroadcast(g, (2, 1, 4)), g.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(unbroadcast(g, ()), g.sum())
    np.testing.assert_array_equal(unbroadcast(g, (2, 3, 4)), g)


# ----------------------------------------------------------------------------------------------
# conv


def conv_reference(case):
    x, w = case.inputs[0], case.params["weight"]
    nd = w.ndim - 2
    a = case.full_attrs
    stride, dilation = per_dim(a["stride"], nd), per_dim(a["dilation"], nd)
    pads = expand_pads(a["padding"], x.shape[2:], w.shape[2:], stride, dilation)
    return naive_conv(x, w, case.params.get("bias"), stride, pads, dilation, a["groups"])


@settings(max_examples=80, **SETTINGS)
@given(case=conv_cases())
def test_conv_matches_direct_loop(case):
    np.testing.assert_allclose(case.forward(), conv_reference(case), rtol=1e-10, atol=1e-10)


@settings(max_examples=6, **SETTINGS)
@given(case=conv_cases(nd=3))
def test_conv3d_matches_direct_loop(case):
    np.testing.assert_allclose(case.forward(), conv_reference(case), rtol=1e-10, atol=1e-10)


@settings(max_examples=40, **SETTINGS)
@given(nd=st.integers(1, 2), data=st.data())
def test_conv_same_padding_gives_ceil_in_over_stride(nd, data):
    sizes = tuple(data.draw(st.integers(1, 9)) for _ in range(nd))
    kernel = tuple(data.draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(nd))
    rng = np.random.default_rng(data.draw(seeds))
    case = Case("conv", {"padding": "same", "stride": stride, "dilation": dilation},
                [rng.normal(size=(1, 2) + sizes)], {"weight": rng.normal(size=(3, 2) + kernel)})
    y = case.forward()
    assert y.shape[2:] == tuple(math.ceil(n / s) for n, s in zip(sizes, stride))
    np.testing.assert_allclose(y, conv_reference(case), rtol=1e-10, atol=1e-10)


def conv_transpose_reference(case):
    """The definition, one multiply-add at a time: input position i and kernel offset k write to output
    position i·stride + k·dilation − pad_before; positions past the cropped range are dropped."""
    (x,) = case.inputs
    w, b = case.params["weight"], case.params.get("bias")
    a = case.full_attrs
    nd = x.ndim - 2
    stride, dilation = per_dim(a["stride"], nd), per_dim(a["dilation"], nd)
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in
            ([a["padding"]] * nd if isinstance(a["padding"], int) else a["padding"])]
    out_shape = inferred_shape(case)
    out = np.zeros(out_shape)
    g = a["groups"]
    cg, og = w.shape[0] // g, w.shape[1]
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        grp = c // cg
        for i in itertools.product(*(range(s) for s in x.shape[2:])):
            for k in itertools.product(*(range(s) for s in w.shape[2:])):
                pos = tuple(ii * s + kk * d - p[0] for ii, kk, s, d, p in zip(i, k, stride, dilation, pads))
                if all(0 <= q < size for q, size in zip(pos, out_shape[2:])):
                    for o in range(og):
                        out[(n, grp * og + o) + pos] += x[(n, c) + i] * w[(c, o) + k]
    if b is not None:
        out += b.reshape((1, -1) + (1,) * nd)
    return out


@settings(max_examples=60, **SETTINGS)
@given(case=conv_transpose_cases())
def test_conv_transpose_matches_direct_loop(case):
    np.testing.assert_allclose(case.forward(), conv_transpose_reference(case), rtol=1e-10, atol=1e-10)


def test_conv_transpose_output_size_is_torchs_formula():
    """(in − 1)·stride − 2·pad + dilation·(k − 1) + output_padding + 1 (torch.nn.ConvTranspose2d's docs)."""
    x = np.zeros((1, 2, 5, 7))
    case = Case("conv_transpose", {"stride": 2, "padding": 1, "output_padding": 1, "dilation": (1, 2)},
                [x], {"weight": np.zeros((2, 3, 3, 4))})
    assert inferred_shape(case) == (1, 3, (5 - 1) * 2 - 2 + 1 * 2 + 1 + 1, (7 - 1) * 2 - 2 + 2 * 3 + 1 + 1)


@settings(max_examples=30, **SETTINGS)
@given(case=embedding_cases())
def test_embedding_looks_up_rows_and_sums_back_over_features(case):
    (idx,) = case.inputs
    w = case.params["weight"]
    y = case.forward()
    assert y.shape == idx.shape + (w.shape[1],)
    for pos in itertools.product(*(range(s) for s in idx.shape)):
        np.testing.assert_array_equal(y[pos], w[idx[pos]])
    g = np.random.default_rng(case.seed).normal(size=y.shape)
    (back,) = KERNELS["embedding"].vjp(case.full_attrs, [idx], case.params, y, g)
    np.testing.assert_allclose(back, g.sum(axis=-1), rtol=1e-12)
    y32 = KERNELS["embedding"].forward(case.full_attrs, [idx], {"weight": w.astype(np.float32)})
    assert y32.dtype == np.float32


def test_div_formula():
    a, b = np.array([[1.0, -6.0, 3.0]]), np.array([2.0, 3.0, -0.5])
    case = Case("div", {}, [a, b], batched=[True, False])
    np.testing.assert_array_equal(case.forward(), [[0.5, -2.0, -6.0]])


def test_conv2d_matches_scipy_correlate():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 7, 6))
    w = rng.normal(size=(4, 3, 3, 2))
    b = rng.normal(size=4)
    y = KERNELS["conv"].forward(OPS["conv"].resolve_attrs("t", {}), [x], {"weight": w, "bias": b})
    ref = np.stack([
        np.stack([signal.correlate(x[n], w[o], mode="valid")[0] + b[o] for o in range(4)]) for n in range(2)
    ])
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


def test_conv_is_fast_enough():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 32, 32)).astype(np.float32)
    params = {"weight": rng.normal(size=(16, 3, 3, 3)).astype(np.float32),
              "bias": rng.normal(size=16).astype(np.float32)}
    attrs = OPS["conv"].resolve_attrs("t", {"padding": 1})
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        y = KERNELS["conv"].forward(attrs, [x], params)
        KERNELS["conv"].vjp(attrs, [x], params, y, y)
        best = min(best, time.perf_counter() - t)
    assert best < 0.1


# ----------------------------------------------------------------------------------------------
# pooling


def pool_reference(case):
    x = case.inputs[0]
    a = case.full_attrs
    nd = x.ndim - 2
    kernel = per_dim(a["kernel_size"], nd)
    stride = kernel if a["stride"] is None else per_dim(a["stride"], nd)
    dilation = per_dim(a.get("dilation", 1), nd)
    pads = expand_pads(a["padding"], x.shape[2:], kernel, stride, dilation)
    if case.name == "max_pool":
        return naive_pool(x, "max", kernel, stride, pads, dilation)
    return naive_pool(x, "avg", kernel, stride, pads, count_include_pad=a["count_include_pad"])


@pytest.mark.parametrize("name", ["max_pool", "avg_pool"])
@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_pool_matches_direct_loop(name, data):
    case = data.draw(pool_cases(name))
    np.testing.assert_allclose(case.forward(), pool_reference(case), rtol=1e-12, atol=1e-12)


def test_max_pool_padding_never_wins():
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    case = Case("max_pool", {"kernel_size": 3, "stride": 1, "padding": 1}, [x])
    y = case.forward()
    assert (y < 0).all()
    assert y[0, 0, 0, 0] == -1.0 and y[0, 0, 2, 2] == -5.0


def test_max_pool_ties_go_to_the_first_position_and_overlaps_accumulate():
    x = np.ones((1, 1, 4))
    attrs = OPS["max_pool"].resolve_attrs("t", {"kernel_size": 2, "stride": 1})
    (gx,) = KERNELS["max_pool"].vjp(attrs, [x], {}, None, np.ones((1, 1, 3)))
    np.testing.assert_array_equal(gx, [[[1.0, 1.0, 1.0, 0.0]]])
    x = np.array([[[[0.0, 5.0], [5.0, 0.0]]]])  # tie between (0, 1) and (1, 0): row-major first wins
    attrs = OPS["max_pool"].resolve_attrs("t", {"kernel_size": 2})
    (gx,) = KERNELS["max_pool"].vjp(attrs, [x], {}, None, np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(gx, [[[[0.0, 1.0], [0.0, 0.0]]]])


def test_avg_pool_count_include_pad():
    x = np.ones((1, 1, 3, 3))
    attrs = {"kernel_size": 3, "stride": 1, "padding": 1}
    y_in = Case("avg_pool", attrs, [x]).forward()
    y_ex = Case("avg_pool", {**attrs, "count_include_pad": False}, [x]).forward()
    np.testing.assert_allclose(y_in[0, 0], [[4 / 9, 6 / 9, 4 / 9], [6 / 9, 1, 6 / 9], [4 / 9, 6 / 9, 4 / 9]])
    np.testing.assert_allclose(y_ex, np.ones_like(x))


@settings(max_examples=15, **SETTINGS)
@given(case=global_pool_cases())
def test_global_avg_pool_is_spatial_mean(case):
    x = case.inputs[0]
    ref = x.reshape(x.shape[:2] + (-1,)).mean(axis=-1)
    if case.attrs["keepdims"]:
        ref = ref.reshape(x.shape[:2] + (1,) * (x.ndim - 2))
    np.testing.assert_allclose(case.forward(), ref, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# formulas


@settings(max_examples=20, **SETTINGS)
@given(case=batch_norm_cases())
def test_batch_norm_formula(case):
    x, p = case.inputs[0], case.params
    axis = case.attrs["axis"] % x.ndim
    y = case.forward()
    for c in range(x.shape[axis]):
        xc = np.take(x, c, axis=axis)
        ref = (xc - p["mean"][c]) / math.sqrt(p["var"][c] + case.attrs["eps"])
        ref = ref * p["scale"][c] if "scale" in p else ref
        ref = ref + p["bias"][c] if "bias" in p else ref
        np.testing.assert_allclose(np.take(y, c, axis=axis), ref, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, **SETTINGS)
@given(case=axis_cases("softmax"), shift=st.sampled_from([0.0, 800.0, -800.0]))
def test_softmax_formula_and_stability(case, shift):
    x = case.inputs[0]
    axis = case.attrs["axis"]
    ref = np.exp(x) / np.exp(x).sum(axis=axis, keepdims=True)
    y = case.forward([x + shift])  # softmax is shift-invariant; a naive exp would overflow
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, **SETTINGS)
@given(case=norm_cases("layer_norm"))
def test_layer_norm_formula(case):
    x = case.inputs[0]
    axes = tuple(sorted({a % x.ndim for a in np.atleast_1d(case.attrs["axes"])}))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    want = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + case.attrs["eps"])
    want = want * case.params.get("scale", np.ones(1)).reshape(shape if "scale" in case.params else [1])
    want = want + case.params.get("bias", np.zeros(1)).reshape(shape if "bias" in case.params else [1])
    np.testing.assert_allclose(case.forward(), want, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, **SETTINGS)
@given(case=norm_cases("rms_norm"))
def test_rms_norm_formula(case):
    x = case.inputs[0]
    axes = tuple(sorted({a % x.ndim for a in np.atleast_1d(case.attrs["axes"])}))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    want = x / np.sqrt((x ** 2).mean(axis=axes, keepdims=True) + case.attrs["eps"])
    if "scale" in case.params:
        want = want * case.params["scale"].reshape(shape)
    np.testing.assert_allclose(case.forward(), want, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, **SETTINGS)
@given(case=matmul_cases())
def test_matmul_is_numpys_and_the_shape_rule_agrees(case):
    a, b = case.inputs
    y = case.forward()
    assert y.shape == inferred_shape(case)
    want = np.einsum("...ij,...jk->...ik", a, b) if a.ndim == b.ndim else a @ b
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


def test_matmul_refuses_products_along_the_batch_axis():
    for a, b in [((None, 3), (None, 3, 2)), ((None, 3, 4), (None, 2)), ((None, 3, 4), (None, 5, 2))]:
        with pytest.raises(GraphError):
            OPS["matmul"].infer({}, [a, b], {}, "t")
    with pytest.raises(GraphError, match="non-batch"):
        OPS["layer_norm"].infer({"axes": (0,), "eps": 1e-5}, [(None, 3)], {}, "t")


def test_elementwise_activations():
    x = np.array([[-3.0, -0.5, 0.0, 0.5, 3.0]])
    run = lambda name, **a: KERNELS[name].forward(OPS[name].resolve_attrs("t", a), [x], {})  # noqa: E731
    np.testing.assert_array_equal(run("relu"), [[0, 0, 0, 0.5, 3]])
    np.testing.assert_allclose(run("leaky_relu", negative_slope=0.1), [[-0.3, -0.05, 0, 0.5, 3]])
    np.testing.assert_allclose(run("sigmoid"), 1 / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(run("tanh"), np.tanh(x))
    np.testing.assert_allclose(run("clip", min=0.0, max=0.5), np.clip(x, 0, 0.5))
    np.testing.assert_allclose(run("elu", alpha=0.5), np.where(x > 0, x, 0.5 * (np.exp(x) - 1)), rtol=1e-14)
    from scipy.stats import norm
    np.testing.assert_allclose(run("gelu"), x * norm.cdf(x), rtol=1e-12)
    np.testing.assert_allclose(run("gelu", approximate="tanh"),
                               0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))), rtol=1e-12)
    np.testing.assert_allclose(run("silu"), x / (1 + np.exp(-x)), rtol=1e-14)
    np.testing.assert_allclose(run("erf"), [[math.erf(v) for v in x[0]]], rtol=1e-14)
    big = np.array([[-1000.0, 1000.0]])
    s = KERNELS["sigmoid"].forward({}, [big], {})
    np.testing.assert_array_equal(s, [[0.0, 1.0]])


def test_relu_gradient_is_zero_at_zero_and_leaky_slope_below_zero():
    x = np.array([[-1.0, 0.0, 1.0]])
    g = np.ones_like(x)
    (gr,) = KERNELS["relu"].vjp({}, [x], {}, None, g)
    np.testing.assert_array_equal(gr, [[0, 0, 1]])
    (gl,) = KERNELS["leaky_relu"].vjp({"negative_slope": 0.1}, [x], {}, None, g)
    np.testing.assert_array_equal(gl, [[0.1, 1, 1]])


def test_linear_formula_and_constant():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(2, 3)), rng.normal(size=(4, 3)), rng.normal(size=4)
    np.testing.assert_allclose(KERNELS["linear"].forward({}, [x], {"weight": w, "bias": b}), x @ w.T + b)
    np.testing.assert_allclose(KERNELS["linear"].forward({}, [x], {"weight": w}), x @ w.T)
    v = rng.normal(size=(3, 1))
    np.testing.assert_array_equal(KERNELS["constant"].forward({}, [], {"value": v}), v)
    assert list(KERNELS["constant"].vjp({}, [], {"value": v}, v, np.ones_like(v))) == []


@pytest.mark.parametrize("name", ["concat", "reshape", "flatten", "transpose", "slice", "pad", "reduce_sum",
                                  "reduce_mean", "add", "mul", "identity"])
@settings(max_examples=10, **SETTINGS)
@given(data=st.data())
def test_routing_ops_match_numpy(name, data):
    case = data.draw(CASES[name])
    a, xs = case.full_attrs, case.inputs
    x = xs[0]
    if name == "concat":
        ref = np.concatenate(xs, axis=a["axis"])
    elif name == "reshape":
        ref = x.reshape((x.shape[0],) + tuple(a["shape"]))
    elif name == "flatten":
        s, e = a["start_dim"] % x.ndim, a["end_dim"] % x.ndim
        ref = x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:])
    elif name == "transpose":
        ref = np.transpose(x, [p % x.ndim for p in a["perm"]])
    elif name == "slice":
        ref = np.swapaxes(np.swapaxes(x, 0, a["axis"])[a["start"]:a["stop"]:a["step"]], 0, a["axis"])
    elif name == "pad":
        widths = [(0, 0)] * (x.ndim - len(a["pads"])) + list(a["pads"])
        ref = np.pad(x, widths, constant_values=a["value"])
    elif name in ("reduce_sum", "reduce_mean"):
        axes = tuple(range(1, x.ndim)) if a["axes"] is None else a["axes"]
        ref = getattr(np, name[7:])(x, axis=axes, keepdims=a["keepdims"])
    elif name == "add":
        ref = sum(xs)
    elif name == "mul":
        ref = xs[0] * xs[1]
    else:
        ref = x
    np.testing.assert_allclose(case.forward(), ref, rtol=1e-12, atol=1e-12)


def test_fill_copies_its_value_for_every_sample():
    v = np.arange(6.0).reshape(2, 3)
    y = KERNELS["fill"].forward({}, [np.full((4, 5), np.nan)], {"value": v})
    assert y.shape == (4, 2, 3) and np.all(y == v)


# ----------------------------------------------------------------------------------------------
# masks and selection


def test_mask_marks_what_differs_from_the_padding_value():
    ids = np.array([[3, 0, 5, 0], [0, 0, 0, 0]])
    m = KERNELS["mask"].forward({"value": 0, "axes": None}, [ids], {})
    assert m.dtype == np.float32 and m.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0]]
    x = np.zeros((2, 3, 2))
    x[0, 0, 1] = x[1, 2, 0] = 7.0      # Keras Masking: a step is kept when any feature differs
    m = KERNELS["mask"].forward({"value": 0.0, "axes": [-1]}, [x], {})
    assert m.dtype == np.float64 and m.tolist() == [[1, 0, 0], [0, 0, 1]]
    grads = KERNELS["mask"].vjp({"value": 0.0, "axes": [-1]}, [x], {}, m, np.ones((2, 3)))
    assert grads[0].shape == x.shape and not grads[0].any()


def test_length_mask_keeps_the_first_length_steps():
    m = KERNELS["length_mask"].forward({"steps": 3}, [np.array([0, 2, 3, 5])], {})
    assert m.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 1]]
    with pytest.raises(GraphError, match="one length per sample"):
        OPS["length_mask"].infer({"steps": 3}, [(None, 2)], {}, "lm")


def test_where_routes_the_gradient_to_the_selected_input():
    cond = np.array([[1.0], [0.0]])
    a, b = np.arange(6.0).reshape(2, 3), -np.ones(3)
    y = KERNELS["where"].forward({}, [cond, a, b], {})
    assert y.tolist() == [[0, 1, 2], [-1, -1, -1]]
    gc, ga, gb = KERNELS["where"].vjp({}, [cond, a, b], {}, y, np.full((2, 3), 2.0))
    assert not gc.any() and gc.shape == (2, 1)
    assert ga.tolist() == [[2, 2, 2], [0, 0, 0]] and gb.tolist() == [2, 2, 2]
