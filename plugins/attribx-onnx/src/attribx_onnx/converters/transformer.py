"""Transformer pieces: LayerNormalization (opset 17) as ``layer_norm``, and the layer norm older exporters
write node by node (ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div, then Mul scale, Add bias),
recognised as one ``layer_norm``; the tanh GELU written with Pow 3 (HuggingFace's gelu_new) as one
``gelu``. Pow, Sqrt and Reciprocal have no op of their own: they translate only inside such patterns (an
error names them elsewhere).

The other transformer ops live with their families: MatMul of two signals (``matmul``) in layers, Softmax,
Erf and Gelu in elementwise, the class token (a constant expanded to the batch, then concatenated) in shape.
"""
from __future__ import annotations

import math

import numpy as np

from . import TABLE, Unsupported
from .common import ints, scalar, x_of
from .elementwise import _const_near, _only_consumer, _other

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _affine(arr, axes: tuple, rank: int):
    """A constant scale or bias (broadcasting against a rank-``rank`` tensor) reshaped to the normalised axes
    (sizes 1 where it broadcasts), or None when it varies along another axis."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim > rank:
        return None
    full = (1,) * (rank - arr.ndim) + arr.shape
    if any(full[i] != 1 for i in range(rank) if i not in axes):
        return None
    return arr.reshape([full[i] for i in axes])


def _param(ctx, arr, axes: tuple, shape: tuple, what: str) -> np.ndarray:
    """``arr`` as a layer_norm param shaped like the normalised ``axes`` of a tensor of ``shape``."""
    p = _affine(arr, axes, len(shape))
    try:
        if p is not None:
            return ctx.float_param(np.broadcast_to(p, tuple(shape[i] for i in axes)))
    except ValueError:
        pass
    raise Unsupported(f"{what} of shape {np.shape(arr)} does not broadcast over the normalised axes only")


@TABLE.register("LayerNormalization")
def layer_norm(ctx, node, attrs):
    """Normalises axes ``axis``..last (opset 17); Scale and B broadcast to those axes. Mean and InvStdDev
    (training outputs) have no translation: an error only if something reads them."""
    x = x_of(ctx, node)
    axis = int(attrs.get("axis", -1))
    if not -x.rank <= axis < x.rank:
        raise Unsupported(f"axis {axis} is out of range for a tensor of rank {x.rank}")
    axis %= x.rank
    if axis == 0:
        raise Unsupported("axis=0 normalises over the batch axis (samples would mix)")
    axes = tuple(range(axis, x.rank))
    params = {"scale": _param(ctx, ctx.const(node.input[1], "Scale"), axes, x.shape, "Scale")}
    bias = ctx.optional_const(node, 2, "B")
    if bias is not None:
        params["bias"] = _param(ctx, bias, axes, x.shape, "B")
    y = ctx.emit("layer_norm", [x], attrs={"axes": axes, "eps": float(np.float32(attrs.get("epsilon", 1e-5)))},
                 params=params)
    return [y] + [None] * (len(node.output) - 1)


def _reduce_mean_axes(ctx, node, rank: int):
    """The sorted non-negative axes of a ReduceMean with keepdims=1, or None."""
    attrs = {a.name: (list(a.ints) if a.name == "axes" else a.i) for a in node.attribute}
    if not int(attrs.get("keepdims", 1)) or int(attrs.get("noop_with_empty_axes", 0)):
        return None
    axes = attrs.get("axes")
    if ctx.opset >= 18:                             # axes an input (maybe a Constant node not yet folded)
        c = ctx.peek_const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        axes = None if c is None or c.batch_dependent else ints(c.a)
    if not axes:
        return None
    return tuple(sorted({a % rank for a in axes}))


def _layer_norm_pattern(ctx, pow_node):
    """The layer norm around ``pow_node`` (x - mean(x)) ** 2: returns (x, axes, eps, scale, bias, last node,
    nodes covered after the Pow) or None."""
    sub = ctx.producers.get(pow_node.input[0])
    if sub is None or sub.op_type != "Sub" or not _const_near(ctx, pow_node.input[1], 2.0):
        return None
    x, m = sub.input[:2]
    mean1 = ctx.producers.get(m)
    if x not in ctx.values or mean1 is None or mean1.op_type != "ReduceMean" or mean1.input[0] != x:
        return None
    rank = ctx.values[x].rank
    axes = _reduce_mean_axes(ctx, mean1, rank)
    mean2 = _only_consumer(ctx, pow_node.output[0])
    if axes is None or 0 in axes or mean2 is None or mean2.op_type != "ReduceMean" \
            or _reduce_mean_axes(ctx, mean2, rank) != axes:
        return None
    add = _only_consumer(ctx, mean2.output[0])
    if add is None or add.op_type != "Add":
        return None
    eps = ctx.peek_const(_other(add, mean2.output[0]) or "")
    if eps is None or eps.batch_dependent or eps.a.size != 1:
        return None
    sqrt = _only_consumer(ctx, add.output[0])
    div = None if sqrt is None or sqrt.op_type != "Sqrt" else _only_consumer(ctx, sqrt.output[0])
    if div is None or div.op_type != "Div" or list(div.input[:2]) != [sub.output[0], sqrt.output[0]]:
        return None
    readers = ctx.consumers.get(sub.output[0], [])
    if len(readers) != 2 or sub.output[0] in ctx.graph_outputs:
        return None
    covered, last = [mean2, add, sqrt, div], div
    scale = bias = None
    for op_type in ("Mul", "Add"):
        nxt = _only_consumer(ctx, last.output[0])
        c = None if nxt is None or nxt.op_type != op_type else ctx.peek_const(_other(nxt, last.output[0]) or "")
        if c is None or c.batch_dependent:
            break
        p = _affine(c.a, axes, rank)
        if p is None:
            break
        if op_type == "Mul":
            scale = p
        else:
            bias = p
        covered.append(nxt)
        last = nxt
    return x, axes, scalar(eps.a, "epsilon"), scale, bias, last, covered


def _gelu_tanh_pattern(ctx, pow_node):
    """The tanh GELU around ``pow_node`` (x ** 3), as HuggingFace's gelu_new is exported:
    0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x ** 3))). Returns (x, last node, nodes covered after
    the Pow) or None."""
    x = pow_node.input[0]
    if x not in ctx.values or not _const_near(ctx, pow_node.input[1], 3.0):
        return None
    chain, t = [], pow_node.output[0]
    for op_type, value in (("Mul", 0.044715), ("Add", None), ("Mul", SQRT_2_OVER_PI), ("Tanh", None), ("Add", 1.0),
                           ("Mul", None)):
        n = _only_consumer(ctx, t)
        if n is None or n.op_type != op_type:
            return None
        other = _other(n, t) if op_type != "Tanh" else None
        if value is not None and not _const_near(ctx, other, value):
            return None
        if op_type == "Add" and value is None and other != x:
            return None
        chain.append(n)
        t = n.output[0]
    last, other = chain[-1], _other(chain[-1], chain[-2].output[0])
    half = ctx.producers.get(other)
    if half is not None and half.op_type == "Mul" and x in half.input[:2] and _const_near(ctx, _other(half, x), 0.5):
        return x, last, chain                                   # (0.5 * x) * (1 + tanh(...))
    if other == x:
        n = _only_consumer(ctx, last.output[0])
        if n is not None and n.op_type == "Mul" and _const_near(ctx, _other(n, last.output[0]), 0.5):
            return x, n, chain + [n]                            # x * (1 + tanh(...)) * 0.5
    return None


@TABLE.register("Pow")
def pow_(ctx, node, attrs):
    """Pow inside the exporters' patterns: 2 in the decomposed layer norm (one ``layer_norm``), 3 in the tanh
    GELU (one ``gelu``, approximate tanh)."""
    gelu = _gelu_tanh_pattern(ctx, node)
    if gelu is not None:
        x, last, covered = gelu
        y = ctx.emit("gelu", [ctx.value(x)], attrs={"approximate": "tanh"}, name=ctx.unique(last.name or last.output[0]))
        return _covering(ctx, covered, last, y)
    found = _layer_norm_pattern(ctx, node)
    if found is None:
        raise Unsupported("Pow has no op in the graph; it translates inside the exporters' decomposed layer norm "
                          "(ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div[, Mul scale, Add bias]) and "
                          "tanh GELU (0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x ** 3))))")
    x, axes, eps, scale, bias, last, covered = found
    xv = ctx.value(x)
    shape = tuple(xv.shape[a] for a in axes)
    params = {}
    if scale is not None:
        params["scale"] = np.ascontiguousarray(np.broadcast_to(scale, shape))
    if bias is not None:
        params["bias"] = np.ascontiguousarray(np.broadcast_to(bias, shape))
    y = ctx.emit("layer_norm", [xv], attrs={"axes": axes, "eps": eps}, params=params,
                 name=ctx.unique(last.name or last.output[0]))
    return _covering(ctx, covered, last, y)


def _covering(ctx, covered, last, y):
    """``y`` stands for ``last``'s output; the pattern's other nodes are skipped."""
    for n in covered:
        ctx.skip.add(id(n))
    ctx.bind_tensor(last.output[0], y)
    return [None]


def _only_in_patterns(op_type: str):
    def convert(ctx, node, attrs):
        raise Unsupported(f"{op_type} has no op in the graph; it translates only inside the exporters' "
                          f"decomposed layer norm")
    convert.__name__ = convert.__qualname__ = op_type.lower()
    convert.__doc__ = f"{op_type}: refused outside a pattern (one line that says so)."
    return convert


for _op in ("Sqrt", "Reciprocal"):
    TABLE.register(_op)(_only_in_patterns(_op))
