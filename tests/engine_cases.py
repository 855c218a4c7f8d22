"""Cases shared by the engine tests (torch, TensorFlow, ...): hypothesis strategies that build a case
for every built-in op, small hand-built graphs that use every op, and the comparison helpers.

Every engine is checked against the numpy reference with these same cases, so this module imports no
framework: tensors from any engine are compared through ``numpy.asarray`` (or ``.detach()`` for torch).
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

import attribx
from attribx import GraphBuilder
from attribx.errors import GraphError

REGISTRY = attribx.plugins.registry()
OPS = REGISTRY.ops
#: the engines a core test runs on: numpy, and each framework's whose plugin is installed (tox's `all` env keeps
#: each run to one framework with ``--engines``)
ENGINES = ["numpy"] + [e for e in ("torch", "tensorflow") if e in REGISTRY.engines]
BOUNDED = {"lrp.z_box", "lrp.epsilon_gamma_box"}   # methods that need the input bounds

def settings_for(n):
    return settings(max_examples=n, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])



# ----------------------------------------------------------------------------------------------
# op cases: (attrs as a user writes them, inputs, params, batched flags), structure from hypothesis,
# values from a seeded generator


seeds = st.integers(0, 2**32 - 1)


def one_or_per_dim(draw, elements, nd):
    return draw(elements) if draw(st.booleans()) else tuple(draw(elements) for _ in range(nd))


def draw_shape(draw, min_rank=2, max_rank=4, side=4):
    return (draw(st.integers(1, 2)),) + tuple(draw(st.integers(1, side))
                                             for _ in range(draw(st.integers(min_rank, max_rank)) - 1))


def values(rng, shape, kinks=()):
    """Normal values; some replaced by the points where a derivative switches (ties and kinks)."""
    x = rng.normal(size=shape) * 2
    for k in kinks:
        x[rng.random(shape) < 0.15] = k
    return x


def gen_linear(draw, rng):
    n_in, n_out = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    lead = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 1))))
    params = {"weight": rng.normal(size=(n_out, n_in))}
    if draw(st.booleans()):
        params["bias"] = rng.normal(size=n_out)
    return {}, [rng.normal(size=(draw(st.integers(1, 2)),) + lead + (n_in,))], params


def draw_padding(draw, nd, limit):
    pair = st.tuples(st.integers(0, limit), st.integers(0, limit))
    return draw(st.one_of(st.sampled_from(["valid", "same"]), st.integers(0, limit),
                          st.lists(st.one_of(st.integers(0, limit), pair), min_size=nd, max_size=nd)))


def gen_conv(draw, rng):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    groups, cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = one_or_per_dim(draw, st.integers(1, 2), nd)
    dil = (dilation,) * nd if isinstance(dilation, int) else dilation
    sizes = tuple((k - 1) * d + 1 + draw(st.integers(0, 3 if nd < 3 else 1)) for k, d in zip(kernel, dil))
    attrs = {"stride": one_or_per_dim(draw, st.integers(1, 3), nd), "padding": draw_padding(draw, nd, 3),
             "dilation": dilation, "groups": groups}
    params = {"weight": rng.normal(size=(groups * og, cg) + kernel)}
    if draw(st.booleans()):
        params["bias"] = rng.normal(size=groups * og)
    return attrs, [rng.normal(size=(draw(st.integers(1, 2)), groups * cg) + sizes)], params


def gen_pool(draw, rng, name):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd)) if name == "max_pool" else (1,) * nd
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    # up to a window less one of padding: more than torch's own pooling takes (it takes half a window)
    padding = draw(st.one_of(
        st.sampled_from(["valid", "same"]), st.integers(0, min(eff) - 1),
        st.tuples(*[st.tuples(st.integers(0, e - 1), st.integers(0, e - 1)) for e in eff]).map(list)))
    sizes = tuple(e + draw(st.integers(0, 3 if nd < 3 else 1)) for e in eff)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) + sizes
    # ties (integer values, the first maximum wins) and all-negative windows (padding must not win)
    x = rng.integers(-3, 1, size=shape).astype(float) if draw(st.booleans()) else rng.normal(size=shape) - 1
    attrs = {"kernel_size": kernel if draw(st.booleans()) or len(set(kernel)) > 1 else kernel[0],
             "stride": draw(st.one_of(st.none(), st.integers(1, 3),
                                      st.lists(st.integers(1, 3), min_size=nd, max_size=nd))),
             "padding": padding}
    if name == "max_pool":
        attrs["dilation"] = dil if draw(st.booleans()) else dil[0] if len(set(dil)) == 1 else dil
    else:
        attrs["count_include_pad"] = draw(st.booleans())
    return attrs, [x], {}


def gen_global_avg_pool(draw, rng):
    return {"keepdims": draw(st.booleans())}, [rng.normal(size=draw_shape(draw, 3, 5, 3))], {}


def gen_batch_norm(draw, rng):
    shape = draw_shape(draw)
    axis = draw(st.integers(1, len(shape) - 1))
    c = shape[axis]
    params = {"mean": rng.normal(size=c), "var": rng.uniform(0.2, 2, size=c)}
    for key in ("scale", "bias"):
        if draw(st.booleans()):
            params[key] = rng.normal(size=c)
    attrs = {"axis": axis - len(shape) if draw(st.booleans()) else axis, "eps": draw(st.sampled_from([1e-5, 0.1]))}
    return attrs, [rng.normal(size=shape)], params


def unary(name, kinks=(0.0,), **attr_strategies):
    def gen(draw, rng):
        attrs = {k: draw(v) for k, v in attr_strategies.items()}
        ks = tuple(kinks) + tuple(v for k, v in attrs.items() if k in ("min", "max") and v is not None)
        return attrs, [values(rng, draw_shape(draw), ks)], {}
    return gen


def gen_softmax(draw, rng):
    shape = draw_shape(draw)
    axis = draw(st.integers(1, len(shape) - 1))
    return {"axis": axis - len(shape) if draw(st.booleans()) else axis}, [rng.normal(size=shape) * 3], {}


def gen_broadcast(draw, rng, n):
    base = draw_shape(draw)
    inputs, batched = [], []
    for i in range(n):
        kind = "full" if i == 0 else draw(st.sampled_from(["full", "ones", "constant"]))
        if kind == "constant":   # no batch axis: some trailing axes, some of them 1
            keep = draw(st.integers(0, len(base) - 1))
            shape = tuple(d if draw(st.booleans()) else 1 for d in base[len(base) - keep:])
        elif kind == "ones":
            shape = (base[0],) + tuple(d if draw(st.booleans()) else 1 for d in base[1:])
        else:
            shape = base
        inputs.append(rng.normal(size=shape))
        batched.append(kind != "constant")
    order = draw(st.permutations(range(n)))
    return {}, [inputs[i] for i in order], {}, [batched[i] for i in order]


def gen_div(draw, rng):
    attrs, inputs, params, batched = gen_broadcast(draw, rng, 2)
    b = inputs[1]
    inputs[1] = np.sign(b) * (np.abs(b) + 0.5) + (b == 0)   # divisors kept away from zero
    return attrs, inputs, params, batched


def gen_conv_transpose(draw, rng):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    groups, cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    extra = tuple(draw(st.integers(0, s - 1)) for s in stride)
    pair = st.tuples(st.integers(0, 2), st.integers(0, 2))
    padding = draw(st.one_of(st.integers(0, 2), st.lists(st.one_of(st.integers(0, 2), pair), min_size=nd,
                                                         max_size=nd)))
    attrs = {"stride": stride if draw(st.booleans()) or len(set(stride)) > 1 else stride[0],
             "padding": padding, "output_padding": extra, "groups": groups,
             "dilation": one_or_per_dim(draw, st.integers(1, 2), nd)}
    params = {"weight": rng.normal(size=(groups * cg, og) + kernel)}
    if draw(st.booleans()):
        params["bias"] = rng.normal(size=groups * og)
    sizes = tuple(draw(st.integers(1, 4 if nd < 3 else 2)) for _ in range(nd))
    return attrs, [rng.normal(size=(draw(st.integers(1, 2)), groups * cg) + sizes)], params


def gen_embedding(draw, rng):
    vocab, features = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    shape = draw_shape(draw, 1, 3)
    return {}, [rng.integers(0, vocab, size=shape)], {"weight": rng.normal(size=(vocab, features))}


def gen_concat(draw, rng):
    base = list(draw_shape(draw))
    axis = draw(st.integers(1, len(base) - 1))
    inputs = []
    for _ in range(draw(st.integers(1, 3))):
        base[axis] = draw(st.integers(1, 3))
        inputs.append(rng.normal(size=tuple(base)))
    return {"axis": axis - len(base) if draw(st.booleans()) else axis}, inputs, {}


def gen_reshape(draw, rng):
    shape = draw_shape(draw)
    size, target = math.prod(shape[1:]), []
    for _ in range(draw(st.integers(0, 2))):
        d = draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
        target.append(d)
        size //= d
    target = list(draw(st.permutations(target + [size])))
    if draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return {"shape": tuple(target)}, [rng.normal(size=shape)], {}


def gen_flatten(draw, rng):
    shape = draw_shape(draw, 2, 5, 3)
    nd = len(shape)
    start = draw(st.integers(1, nd - 1))
    end = draw(st.integers(start, nd - 1))
    return ({"start_dim": start - nd if draw(st.booleans()) else start,
             "end_dim": end - nd if draw(st.booleans()) else end}, [rng.normal(size=shape)], {})


def gen_transpose(draw, rng):
    shape = draw_shape(draw, 2, 5, 3)
    nd = len(shape)
    perm = [0] + list(draw(st.permutations(range(1, nd))))
    return {"perm": [p - nd if draw(st.booleans()) else p for p in perm]}, [rng.normal(size=shape)], {}


def gen_slice(draw, rng):
    shape = draw_shape(draw, side=6)
    axis = draw(st.integers(1, len(shape) - 1))
    bound = st.one_of(st.none(), st.integers(-7, 7))
    attrs = {"axis": axis - len(shape) if draw(st.booleans()) else axis, "start": draw(bound),
             "stop": draw(bound), "step": draw(st.one_of(st.none(), st.integers(1, 3)))}
    return attrs, [rng.normal(size=shape)], {}


def gen_pad(draw, rng):
    shape = draw_shape(draw)
    pads = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(draw(st.integers(0, len(shape) - 1)))]
    return {"pads": pads, "value": draw(st.sampled_from([0.0, -1.5, 2.0]))}, [rng.normal(size=shape)], {}


def gen_reduce(draw, rng):
    shape = draw_shape(draw, 2, 5, 3)
    nd = len(shape)
    axes = draw(st.one_of(st.none(), st.integers(1, nd - 1),
                          st.lists(st.integers(1, nd - 1), min_size=1, max_size=nd - 1, unique=True)))
    if isinstance(axes, list) and draw(st.booleans()):
        axes = [a - nd for a in axes]
    return {"axes": axes, "keepdims": draw(st.booleans())}, [rng.normal(size=shape)], {}


def gen_constant(draw, rng):
    return {}, [], {"value": rng.normal(size=tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 3)))))}


def gen_fill(draw, rng):
    x = rng.normal(size=(draw(st.integers(1, 3)), draw(st.integers(1, 4))))
    return {}, [x], {"value": rng.normal(size=tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))))}


def gen_where(draw, rng):
    attrs, inputs, params, batched = gen_broadcast(draw, rng, 3)
    inputs[0] = (inputs[0] > 0).astype(np.float64)      # the condition is a 0/1 mask
    return attrs, inputs, params, batched


def gen_mask(draw, rng):
    shape = draw_shape(draw)
    value = draw(st.sampled_from([0.0, 1.0, -2.5]))
    x = values(rng, shape, kinks=(value,))
    rank = len(shape)
    axes = draw(st.one_of(st.none(), st.lists(st.integers(1, rank - 1), min_size=1, max_size=rank - 1,
                                              unique=True))) if rank > 1 else None
    return {"value": value, "axes": axes}, [x], {}


def gen_length_mask(draw, rng):
    steps = draw(st.integers(1, 5))
    return {"steps": steps}, [rng.integers(0, steps + 2, size=draw(st.integers(1, 4))).astype(np.float64)], {}


def gen_norm(draw, rng, name):
    shape = draw_shape(draw)
    ndim = len(shape)
    chosen = draw(st.lists(st.integers(1, ndim - 1), min_size=1, max_size=ndim - 1, unique=True))
    params = {}
    for key in ("scale",) + (("bias",) if name == "layer_norm" else ()):
        if draw(st.booleans()):
            params[key] = rng.normal(size=tuple(shape[a] for a in sorted(chosen)))
    attrs = {"axes": tuple(a - ndim if draw(st.booleans()) else a for a in chosen),
             "eps": draw(st.sampled_from([1e-5, 0.1]))}
    return attrs, [rng.normal(size=shape) * 2 + 0.5], params


def gen_matmul(draw, rng):
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    lead = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2))))
    batch = draw(st.integers(1, 2))
    kind = draw(st.sampled_from(["signals", "const_right", "const_left", "rows"]))
    if kind == "rows":
        shapes, batched = [(batch, k), (k, m)], [True, False]
    elif kind == "signals":
        other = tuple(d if draw(st.booleans()) else 1 for d in lead)
        shapes, batched = [(batch,) + lead + (n, k), (draw(st.sampled_from([1, batch])),) + other + (k, m)], [True, True]
    elif kind == "const_right":
        shapes, batched = [(batch,) + lead + (n, k), lead[len(lead) - draw(st.integers(0, len(lead))):] + (k, m)], \
            [True, False]
    else:
        shapes, batched = [(n, k), (batch,) + lead + (k, m)], [False, True]
    return {}, [rng.normal(size=s) for s in shapes], {}, batched


def gen_roll(draw, rng):
    shape = draw_shape(draw, 2, 4, 5)
    axes = draw(st.lists(st.integers(1, len(shape) - 1), min_size=1, max_size=len(shape) - 1, unique=True))
    shifts = [draw(st.integers(-6, 6)) for _ in axes]
    if len(axes) == 1 and draw(st.booleans()):
        return {"shifts": shifts[0], "axes": axes[0] - len(shape)}, [rng.normal(size=shape)], {}
    return {"shifts": shifts, "axes": axes}, [rng.normal(size=shape)], {}


def resize_attrs(draw, spatial):
    """size, mode, align_corners and (sometimes) torch's scales from a scale_factor: out = floor(in * f)."""
    mode = draw(st.sampled_from(["nearest", "linear"]))
    attrs = {"mode": mode, "align_corners": mode == "linear" and draw(st.booleans())}
    if not attrs["align_corners"] and draw(st.booleans()):
        factors = [draw(st.sampled_from([0.5, 1.5, 2.0, 3.0])) for _ in spatial]
        attrs["size"] = tuple(max(int(math.floor(n * f)), 1) for n, f in zip(spatial, factors))
        attrs["scales"] = tuple(1 / f for f in factors)
    else:
        attrs["size"] = tuple(draw(st.integers(1, 6)) for _ in spatial)
    return attrs


def gen_resize(draw, rng):
    spatial = tuple(draw(st.integers(1, 4)) for _ in range(draw(st.sampled_from([1, 2, 2, 3]))))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) + spatial
    return resize_attrs(draw, spatial), [rng.normal(size=shape)], {}


GENERATORS = {
    "linear": gen_linear,
    "layer_norm": lambda d, r: gen_norm(d, r, "layer_norm"),
    "rms_norm": lambda d, r: gen_norm(d, r, "rms_norm"),
    "matmul": gen_matmul,
    "conv": gen_conv,
    "conv_transpose": gen_conv_transpose,
    "embedding": gen_embedding,
    "max_pool": lambda d, r: gen_pool(d, r, "max_pool"),
    "avg_pool": lambda d, r: gen_pool(d, r, "avg_pool"),
    "global_avg_pool": gen_global_avg_pool,
    "batch_norm": gen_batch_norm,
    "relu": unary("relu"),
    "leaky_relu": unary("leaky_relu", negative_slope=st.sampled_from([0.01, 0.2, -0.5])),
    "clip": unary("clip", min=st.sampled_from([None, -1.0, 0.0]), max=st.sampled_from([None, 0.5, 6.0])),
    "elu": unary("elu", alpha=st.sampled_from([1.0, 0.3])),
    "gelu": unary("gelu", approximate=st.sampled_from(["none", "tanh"])),
    "silu": unary("silu"),
    "erf": unary("erf"),
    "hard_sigmoid": unary("hard_sigmoid", kinks=(-3.0, 3.0, 0.0)),
    "hard_swish": unary("hard_swish", kinks=(-3.0, 3.0, 0.0)),
    "roll": gen_roll,
    "resize": gen_resize,
    "tanh": unary("tanh"),
    "sigmoid": unary("sigmoid"),
    "softmax": gen_softmax,
    "add": lambda d, r: gen_broadcast(d, r, d(st.integers(1, 3))),
    "mul": lambda d, r: gen_broadcast(d, r, 2),
    "div": gen_div,
    "concat": gen_concat,
    "reshape": gen_reshape,
    "flatten": gen_flatten,
    "transpose": gen_transpose,
    "slice": gen_slice,
    "pad": gen_pad,
    "identity": unary("identity"),
    "reduce_sum": gen_reduce,
    "reduce_mean": gen_reduce,
    "constant": gen_constant,
    "fill": gen_fill,
    "mask": gen_mask,
    "length_mask": gen_length_mask,
    "where": gen_where,
}
EXAMPLES = {"matmul": 40, "layer_norm": 40, "conv": 120, "conv_transpose": 80, "max_pool": 120, "avg_pool": 120, "add": 60, "mul": 60, "slice": 40, "pad": 40,
            "batch_norm": 40}


@st.composite
def op_cases(draw, name):
    rng = np.random.default_rng(draw(seeds))
    case = GENERATORS[name](draw, rng)
    attrs, inputs, params = case[:3]
    batched = case[3] if len(case) > 3 else [True] * len(inputs)
    try:   # the op's own validation: the case must be a graph attribx accepts
        full = OPS[name].resolve_attrs("t", attrs)
        shapes = [(None,) + x.shape[1:] if b else x.shape for x, b in zip(inputs, batched)]
        OPS[name].infer(full, shapes, params, "t")
    except GraphError:
        assume(False)
    return full, inputs, params, rng


def as_float64(x):
    """Any engine's array as a float64 numpy array (torch tensors through detach, others np.asarray)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def close(ours, ref, rtol, what):
    """``ours`` equals ``ref`` relative to ``rtol``, with an absolute floor of rtol times ref's scale."""
    assert ours is not None and ref is not None, what
    ours, ref = as_float64(ours), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1.0)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


# ----------------------------------------------------------------------------------------------
# whole graphs: small hand-built networks that together use every op


def cnn_graph(seed=0):
    rng = np.random.default_rng(seed)
    b = GraphBuilder("cnn")
    x = b.input("x", (3, 10, 10))
    c1 = b.relu(b.conv(x, rng.normal(size=(6, 3, 3, 3)) * 0.4, rng.normal(size=6) * 0.1, padding=1, name="c1"))
    bn = b.batch_norm(c1, rng.normal(size=6) * 0.1, rng.uniform(0.5, 1.5, 6), rng.uniform(0.5, 1.5, 6),
                      rng.normal(size=6) * 0.1, name="bn")
    p = b.max_pool(bn, 2, name="mp")
    c2 = b.relu(b.conv(p, rng.normal(size=(6, 3, 3, 3)) * 0.4, None, padding="same", groups=2, name="c2"))
    res = b.add(p, c2, name="res")
    ap = b.avg_pool(c1, 3, stride=2, padding=[(0, 1), (1, 0)], name="ap")
    c3 = b.relu(b.conv(res, rng.normal(size=(4, 6, 2, 2)) * 0.4, rng.normal(size=4) * 0.1,
                       padding=[(1, 0), (0, 1)], name="c3"))
    cat = b.concat(ap, b.slice(c3, axis=1, start=1), name="cat")
    f = b.flatten(cat, name="flat")
    h = b.relu(b.linear(f, rng.normal(size=(12, 9 * 25)) * 0.2, rng.normal(size=12) * 0.1, name="fc1"))
    out = b.linear(h, rng.normal(size=(5, 12)) * 0.4, rng.normal(size=5) * 0.1, name="fc2")
    return b.build(out), rng.normal(size=(3, 3, 10, 10))


def mlp_graph(seed=1):
    rng = np.random.default_rng(seed)
    b = GraphBuilder("mlp")
    h = b.input("x", (6,))
    for k, (i, o) in enumerate([(6, 8), (8, 7), (7, 4)]):
        h = b.linear(h, rng.normal(size=(o, i)) * 0.6, rng.normal(size=o) * 0.2, name=f"fc{k + 1}")
        if k < 2:
            h = b.relu(h, name=f"relu{k + 1}")
    b.softmax(h, name="prob")   # relevance starts at the logits before it
    return b.build(), rng.normal(size=(4, 6))


def zoo_graph(seed=2):
    """Ops beyond the CNN's: activations, 1d windows, shape ops, reductions, constants."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("zoo")
    x = b.input("x", (4, 9))
    h = b.leaky_relu(b.conv(x, rng.normal(size=(6, 4, 3)) * 0.5, rng.normal(size=6) * 0.1, dilation=2,
                            padding="same", name="c1"), 0.1)
    h = b.max_pool(b.pad(h, [(1, 2)], value=-0.5), 3, stride=2, padding=2, name="mp")
    h = b.avg_pool(h, 2, stride=1, padding=[(1, 0)], count_include_pad=False, name="ap")
    h = b.elu(b.gelu(h, "tanh"), 0.7, name="act")
    h = b.mul(h, b.constant(rng.uniform(0.5, 1.5, size=(6, 1))), name="scale")
    h = b.add(h, b.constant(rng.normal(size=(7,)) * 0.1), name="shift")
    h = b.transpose(b.silu(h), (0, 2, 1), name="tr")
    g = b.global_avg_pool(b.transpose(h, (0, 2, 1)), keepdims=False, name="gap")
    s = b.reduce_mean(b.tanh(h), axes=1, name="rm")
    r = b.reshape(b.clip(b.sigmoid(b.concat(g, s, axis=1)), 0.1, 0.9), (3, 4), name="rs")
    r = b.reduce_sum(b.identity(r), axes=-1, keepdims=True, name="rsum")
    out = b.linear(b.flatten(r), rng.normal(size=(3, 3)), name="fc")
    return b.build(b.softmax(out, name="sm")), rng.normal(size=(2, 4, 9))


def attention_graph(seed=3, bias=True, gated=False, tokens=5, width=6, hidden=8, classes=4):
    """A one-head self-attention block: layer_norm -> linear q, k, v -> q @ k^T -> scale -> softmax -> @ v
    -> linear -> residual add -> layer_norm (RMS norm when ``gated``) -> MLP (linear-gelu-linear, or Llama's
    silu(gate) * up -> down when ``gated``) -> residual add -> first token -> linear head. ``weights`` (in
    ``graph.meta``) lets a test rebuild it in another framework."""
    rng = np.random.default_rng(seed)
    w = {k: rng.normal(size=shape) / np.sqrt(shape[-1])
         for k, shape in [("q", (width, width)), ("k", (width, width)), ("v", (width, width)), ("o", (width, width)),
                          ("up", (hidden, width)), ("gate", (hidden, width)), ("down", (width, hidden)),
                          ("head", (classes, width))]}
    bias_of = {k: (rng.normal(size=v.shape[0]) * 0.1 if bias else None) for k, v in w.items()}
    w["ln1_scale"], w["ln2_scale"] = rng.uniform(0.5, 1.5, width), rng.uniform(0.5, 1.5, width)
    w["ln1_bias"] = rng.normal(size=width) * 0.1 if bias else None
    w["ln2_bias"] = rng.normal(size=width) * 0.1 if bias and not gated else None
    b = GraphBuilder("attention")
    x = b.input("x", (tokens, width), layout=("sample", "token", "feature"))

    def lin(h, key):
        return b.linear(h, w[key], bias_of[key], name=key)

    a = b.add_node("layer_norm", x, "ln1", {"scale": w["ln1_scale"], "bias": w["ln1_bias"]}, axes=(-1,), eps=1e-5)
    q, k, v = lin(a, "q"), lin(a, "k"), lin(a, "v")
    scores = b.add_node("matmul", (q, b.transpose(k, (0, 2, 1), name="kt")), "scores")
    att = b.softmax(b.mul(scores, b.constant(np.array(1 / np.sqrt(width)), name="c"), name="scaled"), name="att")
    h = b.add(x, lin(b.add_node("matmul", (att, v), "context"), "o"), name="res1")
    if gated:
        m = b.add_node("rms_norm", h, "ln2", {"scale": w["ln2_scale"]}, axes=(2,), eps=1e-6)
        f = lin(b.mul(b.silu(lin(m, "gate"), name="act"), lin(m, "up"), name="glu"), "down")
    else:
        m = b.add_node("layer_norm", h, "ln2", {"scale": w["ln2_scale"], "bias": w["ln2_bias"]}, axes=(-1,),
                       eps=1e-5)
        f = lin(b.gelu(lin(m, "up"), name="act"), "down")
    cls = b.flatten(b.slice(b.add(h, f, name="res2"), axis=1, start=0, stop=1, name="cls"), name="flat")
    graph = b.build(lin(cls, "head"))
    graph.meta["weights"] = {**w, **{f"{k}_bias": v for k, v in bias_of.items() if k not in ("ln1", "ln2")}}
    return graph, rng.normal(size=(3, tokens, width))


GRAPHS = {"cnn": cnn_graph, "mlp": mlp_graph, "zoo": zoo_graph, "attention": attention_graph,
          "attention_gated": lambda: attention_graph(4, gated=True)}


def method_params(method):
    params = {"low": -3.0, "high": 3.0} if method in BOUNDED else {}
    if method == "smoothgrad":
        params["samples"] = 3
    if method == "integrated_gradients":
        params["steps"] = 4
    return params


def explain_pair(graph, x, method, engine, **kw):
    """(result on ``engine``, result on numpy), or (None, None) when both raise the same kind of error."""
    results = []
    for eng in (engine, "numpy"):
        try:
            results.append(attribx.explain(graph, x, method, engine=eng, **kw))
        except Exception as err:   # noqa: BLE001 - both engines must fail alike
            results.append(err)
    ours, ref = results
    if isinstance(ref, Exception) or isinstance(ours, Exception):
        assert type(ours) is type(ref), f"{method}: {engine} gave {ours!r}, numpy gave {ref!r}"
        return None, None
    return ours, ref
