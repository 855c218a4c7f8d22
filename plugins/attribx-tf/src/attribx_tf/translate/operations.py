"""Keras converters of ``keras.ops`` arithmetic called in a functional model: ``x + 3.0``, ``a + b``,
``x * c``, ``x / c``, ``-x`` on Keras tensors record ``keras.ops`` operations (Add, Subtract, Multiply,
TrueDivide, Negative) as nodes of the model, as keras.applications do (MobileNetV3's hard sigmoid
``relu6(x + 3) * (1 / 6)``, ConvNeXt's residual ``inputs + x``).

An operand is a translated value or a constant (a number, an array, a Keras variable). Two values combine
as the merge layers do (one axis order); a constant is laid out in the value's graph order, so no
transpose is added. A value divided by a value is the graph's ``div``; a constant divided by a value (a
reciprocal) has no op and is refused.
"""
from __future__ import annotations

import numpy as np
from keras.src.ops import numpy as knp

from attribx.translation import Tensor

from .common import TABLE, Unsupported, as_numpy, one
from .shape import aligned


def operands(ctx, layer) -> list:
    """The two operands of a binary keras.ops call: translated values, or constants as float64 arrays."""
    args = [ctx.call_argument(name, i) for i, name in enumerate(("x1", "x2"))]
    if any(a is None for a in args):
        raise Unsupported("its operands are not known (keras.ops calls translate inside functional models)")
    return [a if isinstance(a, Tensor) else np.asarray(as_numpy(a), dtype=np.float64) for a in args]


def laid_out(ctx, x: Tensor, c: np.ndarray, suffix: str) -> Tensor:
    """The constant ``c`` (broadcasting against ``x`` in Keras's axis order) as a graph constant that
    broadcasts against ``x`` as the graph stores it (its batch axis dropped)."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim > x.rank:
        raise Unsupported(f"a constant of shape {c.shape} broadcasts beyond its operand of rank {x.rank}")
    if c.ndim == 0:
        return ctx.constant(c, suffix)
    full = c.reshape((1,) * (x.rank - c.ndim) + c.shape)
    if full.shape[0] != 1:
        raise Unsupported(f"a constant of shape {c.shape} varies along the batch axis")
    if not x.in_graph_order:
        full = full.transpose(np.argsort(x.order))     # graph axis g holds Keras's axis argsort(order)[g]
    return ctx.constant(full[0], suffix)


def _binary(ctx, layer, tensors_op, const_op):
    """A binary op: two values through ``tensors_op(a, b)``, a value and a constant through
    ``const_op(x, c, constant_first)``."""
    a, b = operands(ctx, layer)
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        a, b = aligned(ctx, [a, b])
        return tensors_op(a, b)
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise Unsupported("computes with constants only")
    return const_op(b, a, True) if isinstance(b, Tensor) else const_op(a, b, False)


@TABLE.register(knp.Add)
def add(ctx, layer, xs):
    return _binary(ctx, layer, lambda a, b: ctx.emit("add", [a, b], order=a.order),
                   lambda x, c, _: ctx.emit("add", [x, laid_out(ctx, x, c, "constant")], order=x.order))


@TABLE.register(knp.Multiply)
def multiply(ctx, layer, xs):
    return _binary(ctx, layer, lambda a, b: ctx.emit("mul", [a, b], order=a.order),
                   lambda x, c, _: ctx.emit("mul", [x, laid_out(ctx, x, c, "constant")], order=x.order))


def _negated(ctx, x):
    return ctx.emit("mul", [x, ctx.constant(-1.0, "minus_one")], name=ctx.sub("neg"), order=x.order)


@TABLE.register(knp.Subtract)
def subtract(ctx, layer, xs):
    def const(x, c, constant_first):
        if constant_first:        # c - x
            return ctx.emit("add", [_negated(ctx, x), laid_out(ctx, x, c, "constant")], order=x.order)
        return ctx.emit("add", [x, laid_out(ctx, x, -c, "minus_constant")], order=x.order)
    return _binary(ctx, layer, lambda a, b: ctx.emit("add", [a, _negated(ctx, b)], order=a.order), const)


@TABLE.register(knp.TrueDivide, knp.Divide)
def divide(ctx, layer, xs):
    def const(x, c, constant_first):
        if constant_first:
            raise Unsupported("divides a constant by a value (a reciprocal), which has no op in the graph")
        return ctx.emit("mul", [x, laid_out(ctx, x, 1.0 / c, "inverse")], order=x.order)
    return _binary(ctx, layer, lambda a, b: ctx.emit("div", [a, b], order=a.order), const)


@TABLE.register(knp.Negative)
def negative(ctx, layer, xs):
    x = one(xs)
    return ctx.emit("mul", [x, ctx.constant(-1.0, "minus_one")], order=x.order)
