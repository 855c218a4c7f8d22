"""Activations and arithmetic: ONNX ops that act on each entry (Relu, Clip, Add, Div...), and the exporters'
multi-node patterns that are one graph op (GELU around Erf, SiLU as x * Sigmoid(x))."""
from __future__ import annotations

import math

import numpy as np

from . import TABLE, Unsupported
from .common import scalar, x_of
from .layout import aligned_constant, as_onnx, expanded

SQRT2 = math.sqrt(2.0)


def _close(a: float, b: float, rtol: float = 1e-5) -> bool:
    return abs(a - b) <= rtol * abs(b)


# ----------------------------------------------------------------------------------------------
# activations


def _unary(op: str):
    def convert(ctx, node, attrs):
        x = x_of(ctx, node)
        return ctx.emit(op, [x], order=x.order)
    convert.__name__ = convert.__qualname__ = op
    convert.__doc__ = f"ONNX op with the same meaning as the graph's {op!r} (elementwise: any batch axis)."
    return convert


for _op, _onnx in (("relu", "Relu"), ("sigmoid", "Sigmoid"), ("tanh", "Tanh")):
    TABLE.register(_onnx, any_batch_axis=True)(_unary(_op))


@TABLE.register("LeakyRelu")
def leaky_relu(ctx, node, attrs):
    return ctx.emit("leaky_relu", [x_of(ctx, node)], attrs={"negative_slope": float(attrs.get("alpha", 0.01))})


@TABLE.register("PRelu")
def prelu(ctx, node, attrs):
    """PRelu with one constant slope is a leaky ReLU; per-channel slopes have no op."""
    slope = ctx.const(node.input[1], "slope")
    if np.asarray(slope).size != 1:
        raise Unsupported(f"a slope per channel (shape {np.shape(slope)}) has no op in the graph; one slope "
                          f"translates")
    return ctx.emit("leaky_relu", [x_of(ctx, node)], attrs={"negative_slope": scalar(slope, "slope")})


@TABLE.register("Elu")
def elu(ctx, node, attrs):
    return ctx.emit("elu", [x_of(ctx, node)], attrs={"alpha": float(attrs.get("alpha", 1.0))})


@TABLE.register("Gelu")
def gelu(ctx, node, attrs):
    approx = attrs.get("approximate", "none")
    if approx not in ("none", "tanh"):
        raise Unsupported(f"approximate={approx!r}")
    return ctx.emit("gelu", [x_of(ctx, node)], attrs={"approximate": approx})


@TABLE.register("Clip")
def clip(ctx, node, attrs):
    """Clip's bounds are optional constant inputs (opset >= 11); a left-out bound is no bound."""
    lo = ctx.optional_const(node, 1, "min")
    hi = ctx.optional_const(node, 2, "max")
    return ctx.emit("clip", [x_of(ctx, node)], attrs={"min": None if lo is None else scalar(lo, "min"),
                                                      "max": None if hi is None else scalar(hi, "max")})


@TABLE.register("Softmax")
def softmax(ctx, node, attrs):
    """Opset 13 semantics, on any axis but the batch's (default -1); older models are converted before
    translation."""
    x = x_of(ctx, node)
    axis = int(attrs.get("axis", -1))
    if not -x.rank <= axis < x.rank:
        raise Unsupported(f"axis {axis} is out of range for a tensor of rank {x.rank}")
    if axis % x.rank == 0:
        raise Unsupported(f"axis {axis} is the batch axis (samples would mix)")
    return ctx.emit("softmax", [x], attrs={"axis": axis % x.rank})


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


@TABLE.register("Erf", any_batch_axis=True)
def erf(ctx, node, attrs):
    """The exporters' GELU around Erf becomes one ``gelu`` (its rule then sees a GELU); any other Erf, ``erf``."""
    x = x_of(ctx, node)
    found = _gelu_pattern(ctx, node) if x.in_graph_order else None
    if found is None:
        return ctx.emit("erf", [x], order=x.order)
    x, last, covered = found
    y = ctx.emit("gelu", [ctx.value(x)], attrs={"approximate": "none"},
                 name=ctx.unique(last.name or last.output[0]))
    for n in covered:
        ctx.skip.add(id(n))
    ctx.bind_tensor(last.output[0], y)
    return [None]


# ----------------------------------------------------------------------------------------------
# arithmetic


def _binary(ctx, node, op: str, const=None):
    """``op`` of the node's two inputs, numpy broadcasting. A tensor whose batch is not first (moved, or
    merged with other axes: inside an exported nn.MultiheadAttention) meets only constants, laid out like
    it; ``const`` maps the constant first (a reciprocal, a negation)."""
    a, b = node.input[:2]
    odd = [t for t in (a, b) if t in ctx.values and not ctx.values[t].in_graph_order]
    if not odd:
        ins = [ctx.operand(a), ctx.operand(b)] if const is None else \
            [ctx.value(a), ctx.constant(const(ctx.const(b, "constant")), "reciprocal")]
        return ctx.emit(op, ins)
    x = ctx.value(odd[0])
    other = b if odd[0] == a else a
    if len(odd) == 2 and expanded(x) == expanded(ctx.value(b)) and x.order == ctx.value(b).order:
        return as_onnx(ctx.emit(op, [x, ctx.value(b)]), *expanded(x))
    if not ctx.is_const(other):
        raise Unsupported(f"{other!r} and {odd[0]!r} hold their batch on different axes")
    c = ctx.const(other, "constant")
    c = aligned_constant(ctx, x, c if const is None else const(c), "const" if const is None else "reciprocal")
    ins = [x, c] if odd[0] == a else [c, x]
    shape, groups = expanded(x)
    return as_onnx(ctx.emit(op, ins), shape, groups)


@TABLE.register("Add", any_batch_axis=True, merged_batch=True)
def add(ctx, node, attrs):
    """(A bias Add after a MatMul or Conv is folded by the graph pass ``fold_bias_add``.)"""
    return _binary(ctx, node, "add")


@TABLE.register("Sum")
def sum_(ctx, node, attrs):
    ins = [i for i in node.input if i]
    if len(ins) == 1:
        return ctx.value(ins[0])
    return ctx.emit("add", [ctx.operand(i, f"const{k}") for k, i in enumerate(ins)])


@TABLE.register("Sub")
def sub(ctx, node, attrs):
    """a - b as add(a, -b): a negated constant, or b times -1."""
    a, b = node.input[:2]
    if ctx.is_const(b):
        neg = ctx.constant(-np.asarray(ctx.const(b, "subtrahend"), dtype=np.float64), "negated")
        return ctx.emit("add", [ctx.value(a), neg])
    neg = ctx.emit("mul", [ctx.value(b), ctx.constant(-1.0, "minus_one")], name=ctx.sub("neg"))
    return ctx.emit("add", [ctx.operand(a), neg])


@TABLE.register("Neg")
def neg(ctx, node, attrs):
    return ctx.emit("mul", [x_of(ctx, node), ctx.constant(-1.0, "minus_one")])


def _silu(ctx, node, x: str, s: str):
    """x * sigmoid(x) (the exporters' SiLU) as one ``silu`` node; the sigmoid is left unused."""
    sig = ctx.producers.get(s)
    if sig is None or sig.op_type != "Sigmoid" or sig.input[0] != x or _only_consumer(ctx, s) is not node:
        return None
    if x not in ctx.values:
        return None
    v = ctx.value(x)
    return ctx.emit("silu", [v], order=v.order)        # any batch axis (merged ones never reach here)


@TABLE.register("Mul", any_batch_axis=True, merged_batch=True)
def mul(ctx, node, attrs):
    a, b = node.input[:2]
    silu = _silu(ctx, node, a, b)
    if silu is None:
        silu = _silu(ctx, node, b, a)
    if silu is not None:
        return silu
    gated = _masked(ctx, a, b)
    if gated is None:
        gated = _masked(ctx, b, a)
    return gated if gated is not None else _binary(ctx, node, "mul")


def _masked(ctx, x: str, m: str):
    """x times a 0/1 mask computed from a mask input: ``where(m, x, 0)``, so that the mask takes no relevance
    (a product rule would share it with the mask); None for other products."""
    mv, xv = ctx.values.get(m), ctx.values.get(x)
    if mv is None or mv.name not in ctx.booleans or m in ctx.complement or xv is None or x in ctx.complement:
        return None
    if not (mv.in_graph_order and xv.in_graph_order) or mv.name in ctx.int_values or xv.name in ctx.int_values:
        return None
    return ctx.emit("where", [mv, xv, ctx.constant(0.0, "zero")])


def _reciprocal(c):
    c = np.asarray(c, dtype=np.float64)
    if not np.all(c != 0):
        raise Unsupported("divides by a constant that holds zeros")
    return 1.0 / c


@TABLE.register("Div", any_batch_axis=True, merged_batch=True)
def div(ctx, node, attrs):
    """Division by a constant is a product with its reciprocal; by a tensor, the graph's ``div``."""
    a, b = node.input[:2]
    if ctx.is_const(b):
        return _binary(ctx, node, "mul", const=_reciprocal)
    if not all(ctx.values[t].in_graph_order for t in (a, b) if t in ctx.values):
        raise Unsupported("divides by a tensor whose batch is not on its first axis")
    return ctx.emit("div", [ctx.operand(a), ctx.value(b)])


@TABLE.register("HardSigmoid")
def hard_sigmoid(ctx, node, attrs):
    """max(0, min(1, alpha x + beta)), ONNX's defaults alpha 0.2, beta 0.5."""
    return ctx.emit("hard_sigmoid", [x_of(ctx, node)], attrs={"alpha": float(np.float32(attrs.get("alpha", 0.2))),
                                                              "beta": float(np.float32(attrs.get("beta", 0.5)))})


@TABLE.register("HardSwish")
def hard_swish(ctx, node, attrs):
    """x * max(0, min(1, x / 6 + 1 / 2)) (MobileNetV3's hard-swish)."""
    return ctx.emit("hard_swish", [x_of(ctx, node)], attrs={"alpha": 1 / 6, "beta": 0.5})
