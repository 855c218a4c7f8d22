"""Casts, comparisons and negations: how a model computes sequence lengths from padding
(``ReduceSum(Cast(Not(Equal(ids, pad))))``) for an LSTM's ``sequence_lens``, and casts that change nothing.

A boolean ``Equal`` is held as its negation (the graph's ``mask``: 1 where different) until a ``Not`` or a
``Cast`` reads it (``ctx.complement``); values counting mask entries stay whole numbers (``ctx.counts``).
"""
from __future__ import annotations

import numpy as np

from . import TABLE, Unsupported
from .common import at_batch, batch_axis, scalar


@TABLE.register("Cast", any_batch_axis=True)
def cast(ctx, node, attrs):
    """A cast to the type a tensor already has is nothing; others would change the graph's dtype, except
    casts of masks and of the counts computed from them (a sequence length), which hold whole numbers."""
    from onnx import helper                    # lazy: onnx loads only when a model is translated
    tensor = node.input[0]
    to = int(attrs["to"])
    target = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if tensor in ctx.complement:               # a boolean held as its negation (Equal): 1 - mask
        if target.kind not in "iuf":
            raise Unsupported(f"a cast of a boolean to {target}")
        m = ctx.values[tensor]
        neg = ctx.emit("mul", [m, ctx.constant(-1.0, "minus_one")], name=ctx.sub("neg"))
        out = ctx.emit("add", [neg, ctx.constant(1.0, "one")])
        ctx.counts.add(out.name)
        return at_batch(out, batch_axis(m))
    v = ctx.value(tensor, allow_int=True)
    if v.name in ctx.int_values and target.kind in "iu":
        return v
    if v.name in ctx.counts and target.kind in "iuf":
        return v
    if v.name not in ctx.int_values and target == ctx.np_dtype:
        return v
    raise Unsupported(f"a cast to {target} changes the type of a tensor computed from the input "
                      f"(the graph computes in {ctx.np_dtype})")


@TABLE.register("Equal")
def equal(ctx, node, attrs):
    """Equal to a constant number: the graph's ``mask`` (1 where different), held as the boolean's negation
    until a Not or a Cast reads it: how a model computes sequence lengths from padding (ids != pad)."""
    a, b = node.input[:2]
    tensor, other = (a, b) if ctx.is_const(b) else (b, a)
    if ctx.is_const(tensor):
        raise Unsupported("compares two tensors computed from the input")
    value = scalar(ctx.const(other, "the compared value"), "the compared value")
    m = ctx.emit("mask", [ctx.value(tensor, allow_int=True)], attrs={"value": value, "axes": None})
    ctx.counts.add(m.name)
    ctx.complement.add(node.output[0])
    return m


@TABLE.register("Not")
def not_(ctx, node, attrs):
    tensor = node.input[0]
    v = ctx.values.get(tensor)
    if tensor not in ctx.complement and (v is None or v.name not in ctx.counts):
        raise Unsupported("only the negation of a comparison (Not(Equal(x, c))) translates")
    if tensor not in ctx.complement:
        ctx.complement.add(node.output[0])
    return ctx.values[tensor]


@TABLE.register("Where")
def where(ctx, node, attrs):
    """Where(cond, X, Y) with a constant condition (a causal mask on attention scores): the graph's ``where``
    (X where cond, else Y; relevance to the selected input). A condition computed from the input has no
    translation."""
    cond, a, b = node.input[:3]
    if not ctx.is_const(cond):
        raise Unsupported("the condition is computed from the input; a constant condition (a causal mask) "
                          "translates")
    mask = np.asarray(ctx.const(cond, "condition")).astype(bool).astype(np.float64)
    return ctx.emit("where", [ctx.constant(mask, "condition"), ctx.operand(a, "x"), ctx.operand(b, "y")])
