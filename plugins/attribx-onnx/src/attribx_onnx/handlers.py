"""One handler per ONNX op type: ``handler(ctx, node, attrs)`` emits attribx nodes for one ONNX node.

A handler returns what each ONNX output became: a graph value name, a :class:`~attribx_onnx.fold.Const`
(``Shape``), a :class:`~attribx_onnx.translate.BatchAt` (a value whose ONNX tensor has its batch on another
axis than 0), or None for an output with no translation (an error only if something reads it).

The batch axis: graph values are always batch-first, but the ONNX tensors around an LSTM or GRU node are
sequence-first (X (T, N, E) with ``layout=0``, Y (T, dirs, N, H), Y_h (dirs, N, H)). The translation keeps,
per ONNX tensor, which of its axes is the batch (``ctx.batch_axis``), and stores the value with that axis
moved to the front. Handlers marked :func:`batch_aware` map ONNX axes to the value's axes
(``ctx.axis_of``) and say where their outputs' batch axis is; the walk refuses, naming the tensor, any other
handler reading such a tensor. Nodes whose
inputs are all constants never get here: :mod:`attribx_onnx.fold` evaluates them. A handler raises
:class:`~attribx_onnx.translate.Unsupported` with the reason; the walk adds the node, op type and opset.
"""
from __future__ import annotations

import math

import numpy as np

from attribx.ops import resolve_padding

from .fold import BATCH_A, BATCH_B, Const
from .recurrent import HANDLERS as RECURRENT_HANDLERS
from .translate import Unsupported, batch_aware, stored_axis
from .translate import at_batch as _at

SQRT2 = math.sqrt(2.0)


def _x(ctx, node) -> str:
    return ctx.value(node.input[0])


def _rank(ctx, value) -> int:
    return len(ctx.shape(value))


def _scalar(arr, what: str) -> float:
    arr = np.asarray(arr)
    if arr.size != 1:
        raise Unsupported(f"{what} must be a single number, got shape {arr.shape}")
    return float(arr.reshape(()))


def _ints(values) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


def _axes_input_or_attr(ctx, node, attrs, since: int, index: int = 1):
    """Axes as an input (opset >= ``since``) or as the ``axes`` attribute (older), or None."""
    if ctx.opset >= since:
        axes = ctx.optional_const(node, index, "axes")
    else:
        axes = attrs.get("axes")
    return None if axes is None else _ints(axes)


def _close(a: float, b: float, rtol: float = 1e-5) -> bool:
    return abs(a - b) <= rtol * abs(b)


# ----------------------------------------------------------------------------------------------
# activations


def _unary(op: str):
    def handler(ctx, node, attrs):
        return _at(ctx.emit(op, [_x(ctx, node)]), ctx.batch_axis(node.input[0]))
    handler.__doc__ = f"ONNX op with the same meaning as the graph's {op!r} (elementwise: any batch axis)."
    return batch_aware(handler)


def _leaky_relu(ctx, node, attrs):
    return ctx.emit("leaky_relu", [_x(ctx, node)], {"negative_slope": float(attrs.get("alpha", 0.01))})


def _prelu(ctx, node, attrs):
    """PRelu with one constant slope is a leaky ReLU; per-channel slopes have no op."""
    slope = ctx.const(node.input[1], "slope")
    if np.asarray(slope).size != 1:
        raise Unsupported(f"a slope per channel (shape {np.shape(slope)}) has no op in the graph; one slope "
                          f"translates")
    return ctx.emit("leaky_relu", [_x(ctx, node)], {"negative_slope": _scalar(slope, "slope")})


def _elu(ctx, node, attrs):
    return ctx.emit("elu", [_x(ctx, node)], {"alpha": float(attrs.get("alpha", 1.0))})


def _gelu(ctx, node, attrs):
    approx = attrs.get("approximate", "none")
    if approx not in ("none", "tanh"):
        raise Unsupported(f"approximate={approx!r}")
    return ctx.emit("gelu", [_x(ctx, node)], {"approximate": approx})


def _clip(ctx, node, attrs):
    """Clip's bounds are optional constant inputs (opset >= 11); a left-out bound is no bound."""
    lo = ctx.optional_const(node, 1, "min")
    hi = ctx.optional_const(node, 2, "max")
    return ctx.emit("clip", [_x(ctx, node)], {"min": None if lo is None else _scalar(lo, "min"),
                                            "max": None if hi is None else _scalar(hi, "max")})


def _softmax(ctx, node, attrs):
    """Opset 13 semantics (one axis, default -1); older models are converted before translation."""
    return ctx.emit("softmax", [_x(ctx, node)], {"axis": int(attrs.get("axis", -1))})


def _only_consumer(ctx, tensor):
    """The one node reading ``tensor`` (None if several, none, or it is a model output)."""
    readers = ctx.consumers.get(tensor, [])
    if len(readers) != 1 or tensor in ctx.graph_outputs:
        return None
    return readers[0]


def _other(node, tensor):
    a, b = node.input[:2]
    return b if a == tensor else a if b == tensor else None


def _const_near(ctx, tensor, value) -> bool:
    c = None if tensor is None else ctx.peek_const(tensor)
    return c is not None and not c.batch_dependent and c.a.size == 1 and _close(float(c.a.reshape(())), value)


def _gelu_pattern(ctx, erf):
    """The exporters' GELU around ``erf``: x * 0.5 * (1 + erf(x / sqrt 2)) in its usual orders.

    Returns (x, last node, nodes it covers) or None.
    """
    pre = ctx.producers.get(erf.input[0])
    if pre is None or pre.op_type not in ("Div", "Mul") or _only_consumer(ctx, erf.input[0]) is not erf:
        return None
    x, c = pre.input[:2]
    if ctx.is_const(x) or not _const_near(ctx, c, SQRT2 if pre.op_type == "Div" else 1 / SQRT2):
        return None
    add = _only_consumer(ctx, erf.output[0])
    if add is None or add.op_type != "Add" or not _const_near(ctx, _other(add, erf.output[0]), 1.0):
        return None
    m1 = _only_consumer(ctx, add.output[0])
    if m1 is None or m1.op_type != "Mul":
        return None
    other = _other(m1, add.output[0])
    half = ctx.producers.get(other)
    if half is not None and half.op_type == "Mul" and x in half.input[:2] \
            and _const_near(ctx, _other(half, x), 0.5):
        return x, m1, [add, m1]                       # (x * 0.5) * (1 + erf)
    if other != x and not _const_near(ctx, other, 0.5):
        return None
    m2 = _only_consumer(ctx, m1.output[0])
    if m2 is None or m2.op_type != "Mul":
        return None
    last_other = _other(m2, m1.output[0])
    if (other == x and _const_near(ctx, last_other, 0.5)) or (other != x and last_other == x):
        return x, m2, [add, m1, m2]                   # (x * (1 + erf)) * 0.5, or x * ((1 + erf) * 0.5)
    return None


def _erf(ctx, node, attrs):
    """Erf has no op of its own; inside the exporters' GELU pattern the whole pattern becomes ``gelu``."""
    found = _gelu_pattern(ctx, node)
    if found is None:
        raise Unsupported("Erf has no op in the graph (the exporters' GELU, x * 0.5 * (1 + erf(x / sqrt(2))), "
                          "translates as a whole)")
    x, last, covered = found
    y = ctx.emit("gelu", [ctx.value(x)], {"approximate": "none"}, name=ctx.unique(last.name or last.output[0]))
    for n in covered:
        ctx.skip.add(id(n))
    ctx.bind_tensor(last.output[0], y)
    return [None]


# ----------------------------------------------------------------------------------------------
# arithmetic


def _add(ctx, node, attrs):
    """(A bias Add after a MatMul or Conv is folded by the graph pass ``fold_bias_add``.)"""
    a, b = node.input[:2]
    return ctx.emit("add", [ctx.operand(a), ctx.operand(b)])


def _sum(ctx, node, attrs):
    ins = [i for i in node.input if i]
    if len(ins) == 1:
        return ctx.value(ins[0])
    return ctx.emit("add", [ctx.operand(i, f"const{k}") for k, i in enumerate(ins)])


def _sub(ctx, node, attrs):
    """a - b as add(a, -b): a negated constant, or b times -1."""
    a, b = node.input[:2]
    if ctx.is_const(b):
        neg = ctx.const_node(-np.asarray(ctx.const(b, "subtrahend"), dtype=np.float64), "negated")
        return ctx.emit("add", [ctx.value(a), neg])
    neg = ctx.emit("mul", [ctx.value(b), ctx.const_node(-1.0, "minus_one")], name=ctx.sub("neg"))
    return ctx.emit("add", [ctx.operand(a), neg])


def _neg(ctx, node, attrs):
    return ctx.emit("mul", [_x(ctx, node), ctx.const_node(-1.0, "minus_one")])


def _silu(ctx, node, x: str, s: str):
    """x * sigmoid(x) (the exporters' SiLU) as one ``silu`` node; the sigmoid is left unused."""
    sig = ctx.producers.get(s)
    if sig is None or sig.op_type != "Sigmoid" or sig.input[0] != x or _only_consumer(ctx, s) is not node:
        return None
    if x not in ctx.values:
        return None
    return ctx.emit("silu", [ctx.value(x)])


def _mul(ctx, node, attrs):
    a, b = node.input[:2]
    silu = _silu(ctx, node, a, b) or _silu(ctx, node, b, a)
    if silu is not None:
        return silu
    return ctx.emit("mul", [ctx.operand(a), ctx.operand(b)])


def _div(ctx, node, attrs):
    """Division by a constant is a product with its reciprocal; by a tensor, the graph's ``div``."""
    a, b = node.input[:2]
    if ctx.is_const(b):
        c = np.asarray(ctx.const(b, "divisor"), dtype=np.float64)
        if not np.all(c != 0):
            raise Unsupported("divides by a constant that holds zeros")
        return ctx.emit("mul", [ctx.value(a), ctx.const_node(1.0 / c, "reciprocal")])
    return ctx.emit("div", [ctx.operand(a), ctx.value(b)])


# ----------------------------------------------------------------------------------------------
# weighted layers


def _gemm(ctx, node, attrs):
    """alpha * A @ op(B) + beta * C with A the batch: a linear with weight alpha * op(B) (out, in)."""
    if int(attrs.get("transA", 0)):
        raise Unsupported("transA=1 puts the batch axis second")
    x = _x(ctx, node)
    if _rank(ctx, x) != 2:
        raise Unsupported(f"A has rank {_rank(ctx, x)}, Gemm needs rank 2")
    w = np.asarray(ctx.const(node.input[1], "B"), dtype=np.float64) * float(attrs.get("alpha", 1.0))
    if not int(attrs.get("transB", 0)):
        w = w.T
    bias = ctx.optional_const(node, 2, "C")
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64) * float(attrs.get("beta", 1.0))
        try:
            bias = np.broadcast_to(bias, (1, w.shape[0]))[0]
        except ValueError:
            raise Unsupported(f"C of shape {bias.shape} is not one bias per output") from None
    return ctx.emit("linear", [x], params={"weight": ctx.float_param(w),
                                          "bias": None if bias is None else ctx.float_param(bias)})


def _matmul(ctx, node, attrs):
    """x @ W with a constant (K, M) weight: a linear over the last axis (a following bias Add folds in)."""
    a, b = node.input[:2]
    if ctx.is_const(a):
        raise Unsupported("the constant is the left operand (x @ W translates, W @ x does not)")
    x = ctx.value(a)
    if not ctx.is_const(b):
        raise Unsupported("multiplies two tensors computed from the input; the graph has no such op")
    w = ctx.const(b, "weight")
    if w.ndim != 2 or _rank(ctx, x) < 2:
        raise Unsupported(f"only (N, ..., K) @ (K, M) translates, got a weight of shape {w.shape}")
    return ctx.emit("linear", [x], params={"weight": ctx.float_param(w.T)})


def _check_kernel(attrs, kernel):
    if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != tuple(kernel):
        raise Unsupported(f"kernel_shape {attrs['kernel_shape']} does not match the weight's {tuple(kernel)}")


def _padding(attrs, spatial, kernel, strides, dilations, same_string=False):
    """ONNX auto_pad/pads as (before, after) pairs ('same' for SAME_UPPER when ``same_string``)."""
    n = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = _ints(attrs.get("pads", [0] * 2 * n))
        if len(pads) != 2 * n:
            raise Unsupported(f"pads {pads} need {2 * n} entries")
        return [(pads[i], pads[i + n]) for i in range(n)]
    if auto == "VALID":
        return [(0, 0)] * n
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if auto == "SAME_UPPER" and same_string:
            return "same"
        pairs = resolve_padding("same", spatial, kernel, strides, dilations)
        return pairs if auto == "SAME_UPPER" else [(hi, lo) for lo, hi in pairs]
    raise Unsupported(f"auto_pad={auto!r}")


def _window(attrs, n, key, default=1):
    return tuple(_ints(attrs.get(key, [default] * n)))


def _conv_operands(ctx, node, attrs):
    """(x, weight, bias, n, strides, dilations) of a Conv or ConvTranspose node."""
    x = _x(ctx, node)
    w = ctx.const(node.input[1], "weight")
    bias = ctx.optional_const(node, 2, "bias")
    n = w.ndim - 2
    _check_kernel(attrs, w.shape[2:])
    return x, w, bias, n, _window(attrs, n, "strides"), _window(attrs, n, "dilations")


def _conv(ctx, node, attrs):
    x, w, bias, n, strides, dilations = _conv_operands(ctx, node, attrs)
    padding = _padding(attrs, ctx.shape(x)[2:], w.shape[2:], strides, dilations, same_string=True)
    return ctx.emit("conv", [x], {"stride": strides, "padding": padding, "dilation": dilations,
                                  "groups": int(attrs.get("group", 1))},
                    {"weight": ctx.float_param(w), "bias": None if bias is None else ctx.float_param(bias)})


def _conv_transpose_pads(attrs, spatial, kernel, strides, dilations, out_pad):
    """Pads removed from the full transposed output: given, or derived from output_shape / SAME."""
    n = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    full = [s * (i - 1) + op + (k - 1) * d + 1 for s, i, op, k, d in zip(strides, spatial, out_pad, kernel, dilations)]
    if "output_shape" in attrs:
        target = _ints(attrs["output_shape"])[-n:]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        target = [i * s for i, s in zip(spatial, strides)]
    elif auto == "VALID":
        return [(0, 0)] * n
    elif auto == "NOTSET":
        return _padding(attrs, spatial, kernel, strides, dilations)
    else:
        raise Unsupported(f"auto_pad={auto!r}")
    pairs = []
    for f, t in zip(full, target):
        total = f - t
        if total < 0:
            raise Unsupported(f"output size {t} is larger than the full transposed output {f}")
        half = total // 2
        pairs.append((half, total - half) if auto == "SAME_UPPER" else (total - half, half))
    return pairs


def _conv_transpose(ctx, node, attrs):
    x, w, bias, n, strides, dilations = _conv_operands(ctx, node, attrs)
    out_pad = _window(attrs, n, "output_padding", 0)
    pads = _conv_transpose_pads(attrs, ctx.shape(x)[2:], w.shape[2:], strides, dilations, out_pad)
    return ctx.emit("conv_transpose", [x], {"stride": strides, "padding": [tuple(p) for p in pads],
                                            "output_padding": out_pad, "dilation": dilations,
                                            "groups": int(attrs.get("group", 1))},
                    {"weight": ctx.float_param(w), "bias": None if bias is None else ctx.float_param(bias)})


def _batch_norm(ctx, node, attrs):
    """Inference batch norm over axis 1 with ONNX's epsilon (its float32 value, as runtimes use it)."""
    if int(attrs.get("training_mode", 0)):
        raise Unsupported("training_mode=1 normalises with the batch's statistics")
    x = _x(ctx, node)
    scale, bias, mean, var = (ctx.const(node.input[i], what) for i, what in
                              ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")))
    y = ctx.emit("batch_norm", [x], {"eps": float(np.float32(attrs.get("epsilon", 1e-5))), "axis": 1},
                 {k: ctx.float_param(v) for k, v in
                  (("mean", mean), ("var", var), ("scale", scale), ("bias", bias))})
    return [y] + [None] * (len(node.output) - 1)


# ----------------------------------------------------------------------------------------------
# pooling


def _pool_pads(attrs, spatial, kernel, strides, dilations):
    """Pads as pairs; ceil_mode=1 becomes extra after-padding where it adds an output position.

    Returns (pairs, whether extra padding was added). As in the runtimes, a last window that would start
    in the right padding is dropped.
    """
    pairs = list(_padding(attrs, spatial, kernel, strides, dilations))
    extra_any = False
    if not int(attrs.get("ceil_mode", 0)):
        return pairs, extra_any
    for i, (size, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations)):
        lo, hi = pairs[i]
        eff = (k - 1) * d + 1
        span = size + lo + hi - eff
        out = -(-span // s) + 1
        if (out - 1) * s >= size + lo:
            out -= 1
        extra = (out - 1) * s + eff - (size + lo + hi)
        if extra > 0:
            pairs[i] = (lo, hi + extra)
            extra_any = True
    return pairs, extra_any


def _pool_geometry(ctx, x, attrs):
    n = _rank(ctx, x) - 2
    if n < 1:
        raise Unsupported(f"pooling needs an input of rank >= 3, got {ctx.shape(x)}")
    kernel = tuple(_ints(attrs["kernel_shape"]))
    strides, dilations = _window(attrs, n, "strides"), _window(attrs, n, "dilations")
    pads, extra = _pool_pads(attrs, ctx.shape(x)[2:], kernel, strides, dilations)
    return kernel, strides, dilations, pads, extra


def _max_pool(ctx, node, attrs):
    x = _x(ctx, node)
    kernel, strides, dilations, pads, _ = _pool_geometry(ctx, x, attrs)
    y = ctx.emit("max_pool", [x], {"kernel_size": kernel, "stride": strides, "padding": pads,
                                   "dilation": dilations})
    return [y] + [None] * (len(node.output) - 1)      # Indices: an error if anything reads them


def _avg_pool(ctx, node, attrs):
    x = _x(ctx, node)
    kernel, strides, dilations, pads, extra = _pool_geometry(ctx, x, attrs)
    if any(d != 1 for d in dilations):
        raise Unsupported(f"dilations {dilations}: the graph's avg_pool has no dilation")
    include = bool(int(attrs.get("count_include_pad", 0)))
    if extra and include:
        raise Unsupported("ceil_mode=1 with count_include_pad=1 adds windows whose divisor counts padding "
                          "the graph's avg_pool cannot express (export with ceil_mode=0 or count_include_pad=0)")
    return ctx.emit("avg_pool", [x], {"kernel_size": kernel, "stride": strides, "padding": pads,
                                      "count_include_pad": include})


def _global_avg_pool(ctx, node, attrs):
    return ctx.emit("global_avg_pool", [_x(ctx, node)], {"keepdims": True})


def _global_max_pool(ctx, node, attrs):
    x = _x(ctx, node)
    spatial = tuple(ctx.shape(x)[2:])
    return ctx.emit("max_pool", [x], {"kernel_size": spatial, "stride": 1, "padding": 0})


# ----------------------------------------------------------------------------------------------
# shapes and routing


@batch_aware
def _passthrough(ctx, node, attrs):
    """Identity: the output is the input; the node's name resolves through the aliases."""
    return _at(ctx.value(node.input[0], allow_int=True), ctx.batch_axis(node.input[0]))


@batch_aware
def _dropout(ctx, node, attrs):
    mode = ctx.optional_const(node, 2, "training_mode")
    if mode is not None and bool(np.asarray(mode).reshape(-1)[0]):
        raise Unsupported("training_mode=True: dropout is random")
    out = _at(ctx.value(node.input[0]), ctx.batch_axis(node.input[0]))
    return [out] + [None] * (len(node.output) - 1)   # the mask: an error if read


@batch_aware
def _cast(ctx, node, attrs):
    """A cast to the type a tensor already has is nothing; others would change the graph's dtype, except
    casts of masks and of the counts computed from them (a sequence length), which hold whole numbers."""
    from onnx import helper
    tensor = node.input[0]
    to = int(attrs["to"])
    target = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if tensor in ctx.complement:               # a boolean held as its negation (Equal): 1 - mask
        if target.kind not in "iuf":
            raise Unsupported(f"a cast of a boolean to {target}")
        m = ctx.values[tensor]
        neg = ctx.emit("mul", [m, ctx.const_node(-1.0, "minus_one")], name=ctx.sub("neg"))
        out = ctx.emit("add", [neg, ctx.const_node(1.0, "one")])
        ctx.counts.add(out)
        return _at(out, ctx.batch_axis(tensor))
    v = ctx.value(tensor, allow_int=True)
    out = _at(v, ctx.batch_axis(tensor))
    if v in ctx.int_values and target.kind in "iu":
        return out
    if v in ctx.counts and target.kind in "iuf":
        return out
    if v not in ctx.int_values and target == np.dtype(ctx.dtype):
        return out
    raise Unsupported(f"a cast to {target} changes the type of a tensor computed from the input "
                      f"(the graph computes in {np.dtype(ctx.dtype)})")


def _equal(ctx, node, attrs):
    """Equal to a constant number: the graph's ``mask`` (1 where different), held as the boolean's negation
    until a Not or a Cast reads it: how a model computes sequence lengths from padding (ids != pad)."""
    a, b = node.input[:2]
    tensor, other = (a, b) if ctx.is_const(b) else (b, a)
    if ctx.is_const(tensor):
        raise Unsupported("compares two tensors computed from the input")
    value = _scalar(ctx.const(other, "the compared value"), "the compared value")
    m = ctx.emit("mask", [ctx.value(tensor, allow_int=True)], {"value": value, "axes": None})
    ctx.counts.add(m)
    ctx.complement.add(node.output[0])
    return m


def _not(ctx, node, attrs):
    tensor = node.input[0]
    if tensor not in ctx.complement and ctx.values.get(tensor) not in ctx.counts:
        raise Unsupported("only the negation of a comparison (Not(Equal(x, c))) translates")
    if tensor not in ctx.complement:
        ctx.complement.add(node.output[0])
    return ctx.values[tensor]


@batch_aware
def _shape(ctx, node, attrs):
    """The shape of a tensor with a known per-sample shape: a constant pair (batch size A, B)."""
    tensor = node.input[0]
    ctx.value(tensor, allow_int=True)
    dims = ctx.onnx_shape(tensor)
    batch = ctx.batch_axis(tensor)
    sl = slice(int(attrs.get("start", 0)), attrs.get("end"))
    full = [np.array([BATCH if i == batch else d for i, d in enumerate(dims)], np.int64)[sl]
            for BATCH in (BATCH_A, BATCH_B)]
    return Const.pair(*full)


@batch_aware
def _size(ctx, node, attrs):
    v = ctx.value(node.input[0], allow_int=True)
    n = math.prod(ctx.shape(v)[1:])
    return Const.pair(np.array(BATCH_A * n, np.int64), np.array(BATCH_B * n, np.int64))


@batch_aware
def _concat(ctx, node, attrs):
    ins = [i for i in node.input if i]
    if any(ctx.is_const(i) for i in ins):
        raise Unsupported("concatenates constants with tensors computed from the input (a constant has no "
                          "batch axis)")
    batch = {ctx.batch_axis(i) for i in ins}
    if len(batch) > 1:
        raise Unsupported(f"concatenates tensors whose batch axes differ ({sorted(batch)})")
    values = [ctx.value(i) for i in ins]
    return _at(ctx.emit("concat", values, {"axis": ctx.axis_of(ins[0], int(attrs["axis"]))}), batch.pop())


def _split_sizes(ctx, node, attrs, dim: int) -> list[int]:
    sizes = ctx.optional_const(node, 1, "split")
    if sizes is None:
        sizes = attrs.get("split")
    n = len(node.output)
    if sizes is not None:
        return _ints(sizes)
    if "num_outputs" in attrs:
        n = int(attrs["num_outputs"])
        chunk = -(-dim // n)
        return [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    if dim % n:
        raise Unsupported(f"an axis of size {dim} does not split evenly into {n} outputs")
    return [dim // n] * n


@batch_aware
def _split(ctx, node, attrs):
    """Each output is a ``slice`` node named ``<node>:<output index>``."""
    x = _x(ctx, node)
    shape = ctx.shape(x)
    batch = ctx.batch_axis(node.input[0])
    axis = ctx.axis_of(node.input[0], int(attrs.get("axis", 0)))
    if axis == 0:
        raise Unsupported("splits the batch axis")
    sizes = _split_sizes(ctx, node, attrs, shape[axis])
    if sum(sizes) != shape[axis] or len(sizes) != len(node.output):
        raise Unsupported(f"split sizes {sizes} do not cover an axis of size {shape[axis]} with "
                          f"{len(node.output)} outputs")
    outs, start = [], 0
    for i, size in enumerate(sizes):
        outs.append(_at(ctx.emit("slice", [x], {"axis": axis, "start": start, "stop": start + size, "step": None},
                                 name=ctx.sub(str(i))), batch))
        start += size
    return outs


def _clamp(index: int, dim: int) -> int:
    """ONNX Slice bounds for positive steps: negative counts from the end, then clamp to [0, dim]."""
    if index < 0:
        index += dim
    return min(max(index, 0), dim)


#: An end at or beyond this selects up to the end of the batch axis (exporters write INT64_MAX).
_TO_END = 2 ** 31 - 1


@batch_aware
def _slice(ctx, node, attrs):
    """One ``slice`` node per sliced axis (the last one carries the ONNX node's name)."""
    x = _x(ctx, node)
    shape = ctx.shape(x)
    starts = _ints(ctx.const(node.input[1], "starts"))
    ends = _ints(ctx.const(node.input[2], "ends"))
    axes = ctx.optional_const(node, 3, "axes")
    steps = ctx.optional_const(node, 4, "steps")
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    axes = [ctx.axis_of(node.input[0], a) for a in axes]          # the graph value's axes
    steps = [1] * len(starts) if steps is None else _ints(steps)
    plan = []
    for axis, s, e, st in zip(axes, starts, ends, steps):
        if st <= 0:
            raise Unsupported(f"step {st} on axis {axis}: only positive steps translate")
        if axis == 0:
            if s in (0,) or s <= -_TO_END:
                if e >= _TO_END and st == 1:
                    continue
            raise Unsupported("slices the batch axis")
        dim = shape[axis]
        start, stop = _clamp(s, dim), _clamp(e, dim)
        if (start, stop, st) != (0, dim, 1):
            plan.append((axis, start, stop, st))
    batch = ctx.batch_axis(node.input[0])
    if not plan:
        return _at(x, batch)
    for j, (axis, start, stop, st) in enumerate(plan):
        name = None if j == len(plan) - 1 else ctx.sub(f"axis{axis}")
        x = ctx.emit("slice", [x], {"axis": axis, "start": start, "stop": stop,
                                    "step": None if st == 1 else st}, name=name)
    return _at(x, batch)


def _flatten(ctx, node, attrs):
    x = _x(ctx, node)
    rank = _rank(ctx, x)
    axis = int(attrs.get("axis", 1))
    if (axis + rank if axis < 0 else axis) != 1:
        raise Unsupported(f"axis={axis} mixes the batch axis with others (axis=1 keeps samples apart)")
    if rank == 2:
        return x
    return ctx.emit("flatten", [x], {"start_dim": 1, "end_dim": -1})


def _reshape_target(ctx, pair: Const, in_shape: tuple, in_batch: int, allowzero: bool) -> tuple[int, tuple]:
    """A Reshape target as (the output's batch axis, one sample's shape: the target without that axis).

    ``in_shape`` is the input's ONNX shape (None at its batch axis ``in_batch``). The batch entry of the
    target is the one that depends on the batch size (``Shape(x)[k]``), a 0 that copies the input's batch
    axis, a -1 when the other entries hold exactly one sample, or the model's declared fixed batch size.
    The data before the batch axis must stay before it, so that no data moves between samples."""
    a, b = _ints(pair.a), _ints(pair.b)
    if len(a) != len(b):
        raise Unsupported("the target shape's length depends on the batch size")
    if not a:
        raise Unsupported("reshapes to a scalar")
    size = math.prod(d for i, d in enumerate(in_shape) if i != in_batch)
    dims = []                     # the target's entries with copies resolved; None: the batch size
    for i, (u, v) in enumerate(zip(a, b)):
        if u != v:
            if (u, v) != (BATCH_A, BATCH_B):
                raise Unsupported(f"entry {i} of the target shape depends on the batch size but is not the batch "
                                  f"size (it would move data between samples)")
            dims.append(None)
        elif u == 0:
            if allowzero:
                raise Unsupported("allowzero=1 with a zero in the target shape")
            if i >= len(in_shape):
                raise Unsupported(f"target entry {i} is 0 (copy), but the input has rank {len(in_shape)}")
            dims.append(in_shape[i])
        else:
            dims.append(u)
    shown = a if a == b else (a, b)
    batch = [i for i, d in enumerate(dims) if d is None]
    if len(batch) > 1:
        raise Unsupported(f"target shape {shown} holds the batch size twice")
    if not batch:
        known = math.prod(d for d in dims if d != -1)
        if dims.count(-1) == 1 and known == size:                  # -1 stands for the batch size
            batch = [dims.index(-1)]
        elif ctx.declared_batch and ctx.declared_batch in dims:   # exported with a fixed batch size
            batch = [in_batch if dims[in_batch:in_batch + 1] == [ctx.declared_batch] else
                     dims.index(ctx.declared_batch)]
    if not batch:
        raise Unsupported(f"target shape {shown} does not keep the batch axis (it would move data between samples)")
    j = batch[0]
    rest = [d for i, d in enumerate(dims) if i != j]
    if rest.count(-1) > 1:
        raise Unsupported(f"target shape {shown} has more than one -1")
    if -1 in rest:
        known = math.prod(d for d in rest if d != -1)
        if not known or size % known:
            raise Unsupported(f"target shape {shown} does not fit one sample of size {size}")
        rest[rest.index(-1)] = size // known
    if math.prod(rest) != size or math.prod(in_shape[:in_batch]) != math.prod(rest[:j]):
        raise Unsupported(f"target shape {shown} does not keep the batch axis (it would move data between samples)")
    return j, tuple(rest)


@batch_aware
def _reshape(ctx, node, attrs):
    x = _x(ctx, node)
    if not ctx.is_const(node.input[1]):
        raise Unsupported("the target shape is computed from the input's values")
    tensor = node.input[0]
    batch, target = _reshape_target(ctx, ctx.const_pair(node.input[1]), ctx.onnx_shape(tensor),
                                    ctx.batch_axis(tensor), bool(attrs.get("allowzero", 0)))
    if tuple(target) == tuple(ctx.shape(x)[1:]):
        return _at(x, batch)
    return _at(ctx.emit("reshape", [x], {"shape": target}), batch)


@batch_aware
def _transpose(ctx, node, attrs):
    """Any perm: the batch axis goes where perm sends it; the graph value transposes its other axes."""
    x = _x(ctx, node)
    rank = _rank(ctx, x)
    batch = ctx.batch_axis(node.input[0])
    perm = [p % rank for p in attrs.get("perm", list(range(rank))[::-1])]
    if sorted(perm) != list(range(rank)):
        raise Unsupported(f"perm {perm} is not a permutation of {rank} axes")
    out_batch = perm.index(batch)
    order = [out_batch] + [o for o in range(rank) if o != out_batch]
    stored = tuple(stored_axis(perm[o], batch) for o in order)
    if stored == tuple(range(rank)):
        return _at(x, out_batch)
    return _at(ctx.emit("transpose", [x], {"perm": stored}), out_batch)


def _batch_first(shape: list, batch: int) -> tuple:
    """One sample's shape of a graph value holding an ONNX tensor of ``shape`` (batch axis ``batch``)."""
    return tuple(d for i, d in enumerate(shape) if i != batch)


@batch_aware
def _squeeze(ctx, node, attrs):
    x = _x(ctx, node)
    tensor = node.input[0]
    shape = ctx.onnx_shape(tensor)
    batch = ctx.batch_axis(tensor)
    axes = _axes_input_or_attr(ctx, node, attrs, 13)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = sorted({a % len(shape) for a in axes})
    if batch in axes:
        raise Unsupported("squeezes the batch axis")
    if any(shape[a] != 1 for a in axes):
        raise Unsupported(f"axes {axes} of shape {shape} are not all of size 1")
    new = [d for i, d in enumerate(shape) if i not in axes]
    out_batch = batch - sum(a < batch for a in axes)
    if len(new) == len(shape):
        return _at(x, batch)
    return _at(ctx.emit("reshape", [x], {"shape": _batch_first(new, out_batch)}), out_batch)


@batch_aware
def _unsqueeze(ctx, node, attrs):
    """Size-1 axes anywhere, before the batch axis too (the batch axis then moves)."""
    x = _x(ctx, node)
    shape = list(ctx.onnx_shape(node.input[0]))
    axes = _axes_input_or_attr(ctx, node, attrs, 13)
    if not axes:
        raise Unsupported("no axes given")
    out_rank = len(shape) + len(axes)
    for a in sorted(a % out_rank for a in axes):
        shape.insert(a, 1)
    out_batch = shape.index(None)
    return _at(ctx.emit("reshape", [x], {"shape": _batch_first(shape, out_batch)}), out_batch)


def _pad(ctx, node, attrs):
    """Constant padding only; pads (and axes, opset 18) are constant inputs."""
    mode = attrs.get("mode", "constant")
    if mode != "constant":
        raise Unsupported(f"mode={mode!r}: only constant padding translates")
    x = _x(ctx, node)
    rank = _rank(ctx, x)
    pads = _ints(ctx.const(node.input[1], "pads"))
    value = ctx.optional_const(node, 2, "constant_value")
    axes = ctx.optional_const(node, 3, "axes")
    axes = list(range(rank)) if axes is None else [a % rank for a in _ints(axes)]
    n = len(axes)
    if len(pads) != 2 * n:
        raise Unsupported(f"pads {pads} need {2 * n} entries")
    widths = [(0, 0)] * rank
    for i, axis in enumerate(axes):
        widths[axis] = (pads[i], pads[i + n])
    if widths[0] != (0, 0):
        raise Unsupported("pads the batch axis")
    if any(lo < 0 or hi < 0 for lo, hi in widths):
        raise Unsupported(f"negative pads {pads} (cropping) do not translate")
    if all(w == (0, 0) for w in widths):
        return x
    return ctx.emit("pad", [x], {"pads": widths[1:], "value": 0.0 if value is None else _scalar(value, "value")})


def _reduce(op: str, axes_input_since: int):
    def handler(ctx, node, attrs):
        x = _x(ctx, node)
        rank = _rank(ctx, x)
        axes = _axes_input_or_attr(ctx, node, attrs, axes_input_since)
        if not axes:
            if int(attrs.get("noop_with_empty_axes", 0)):
                return x
            raise Unsupported("reduces over all axes, the batch axis included")
        axes = tuple(sorted({a % rank for a in axes}))
        if 0 in axes:
            raise Unsupported("reduces over the batch axis")
        out = ctx.emit(op, [x], {"axes": axes, "keepdims": bool(int(attrs.get("keepdims", 1)))})
        if op == "reduce_sum" and x in ctx.counts:
            ctx.counts.add(out)                  # a count of mask entries (a sequence length) stays one
        return out
    handler.__doc__ = f"The graph's {op!r}; axes are an input from opset {axes_input_since} on."
    return handler


@batch_aware
def _gather(ctx, node, attrs):
    """A constant (V, D) table read at token ids: ``embedding``. A constant index into a tensor: slice."""
    data, idx = node.input[:2]
    axis = int(attrs.get("axis", 0))
    if ctx.is_const(data):
        table = ctx.const(data, "table")
        if axis != 0 or table.ndim != 2:
            raise Unsupported(f"only rows of a (vocabulary, dim) table translate (an embedding), got a table "
                              f"of shape {table.shape} on axis {axis}")
        ids = ctx.value(idx, allow_int=True)
        if ids not in ctx.int_values:
            raise Unsupported("the indices are not integers from the model's input")
        return _at(ctx.emit("embedding", [ids], params={"weight": ctx.float_param(table)}), ctx.batch_axis(idx))
    x = ctx.value(data)
    shape = ctx.shape(x)
    batch = ctx.batch_axis(data)
    onnx_axis = axis % len(shape)
    axis = ctx.axis_of(data, axis)
    if axis == 0:
        raise Unsupported("selects along the batch axis")
    dim = shape[axis]
    ix = np.asarray(ctx.const(idx, "indices")).astype(np.int64)
    ix = np.where(ix < 0, ix + dim, ix)
    if ix.size == 0 or (ix < 0).any() or (ix >= dim).any():
        raise Unsupported(f"indices {ix.tolist()} out of range for an axis of size {dim}")
    if ix.ndim == 0:
        i = int(ix)
        s = ctx.emit("slice", [x], {"axis": axis, "start": i, "stop": i + 1, "step": None}, name=ctx.sub("slice"))
        out = ctx.emit("reshape", [s], {"shape": tuple(shape[1:axis]) + tuple(shape[axis + 1:])})
        return _at(out, batch - (onnx_axis < batch))
    step = int(ix[1] - ix[0]) if ix.size > 1 else 1
    if ix.ndim == 1 and step > 0 and np.array_equal(ix, ix[0] + step * np.arange(ix.size)):
        return _at(ctx.emit("slice", [x], {"axis": axis, "start": int(ix[0]), "stop": int(ix[-1]) + 1,
                                           "step": None if step == 1 else step}), batch)
    raise Unsupported(f"indices {ix.tolist()} are not one index or an evenly spaced increasing run")


HANDLERS = {
    "Gemm": _gemm, "MatMul": _matmul, "Conv": _conv, "ConvTranspose": _conv_transpose,
    "MaxPool": _max_pool, "AveragePool": _avg_pool,
    "GlobalAveragePool": _global_avg_pool, "GlobalMaxPool": _global_max_pool,
    "BatchNormalization": _batch_norm,
    "Relu": _unary("relu"), "Sigmoid": _unary("sigmoid"), "Tanh": _unary("tanh"),
    "LeakyRelu": _leaky_relu, "PRelu": _prelu, "Elu": _elu, "Gelu": _gelu, "Clip": _clip, "Softmax": _softmax,
    "Erf": _erf,
    "Add": _add, "Sum": _sum, "Sub": _sub, "Neg": _neg, "Mul": _mul, "Div": _div,
    "Concat": _concat, "Split": _split, "Slice": _slice, "Flatten": _flatten, "Reshape": _reshape,
    "Transpose": _transpose, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Pad": _pad,
    "ReduceMean": _reduce("reduce_mean", 18), "ReduceSum": _reduce("reduce_sum", 13),
    "Gather": _gather,
    "Identity": _passthrough, "Dropout": _dropout, "Cast": _cast, "Shape": _shape, "Size": _size,
    "Equal": _equal, "Not": _not,
}

HANDLERS.update(RECURRENT_HANDLERS)         # LSTM, GRU
