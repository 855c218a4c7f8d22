"""Masks computed from a mask input (``key_padding_mask``, ``attention_mask``) in traced models: negation
(``~mask``, ``logical_not``), comparisons with a number (``mask == 0``, ``mask.bool()``), copies and broadcasts (``zeros_like``, ``expand``), selections decided by a mask
(``masked_fill(mask, -inf)``, ``torch.where(mask, scores, -inf)``). The graph holds a mask as 0/1 floats
(:attr:`Walker.counts`), so ``~m`` is ``1 - m`` and a selection is the graph's ``where`` (relevance goes to the
selected input, none to the mask). Slicing, reshaping and concatenating masks go through the shape converters
(a node reading a mask holds one, :meth:`Walker.reads_counts`).
"""
from __future__ import annotations

import operator

import torch

from ..values import Unsupported, is_t
from .aten_transformer import expand as expand_copies
from .base import TABLE


def _mask(ctx, v, what="mask"):
    """A graph mask (0/1 floats computed from a mask input)."""
    if not is_t(v):
        raise Unsupported(f"the {what} is a constant here")
    m = ctx.materialize(v)
    if m.name not in ctx.counts or getattr(m, "dtype", None) != torch.bool:
        raise Unsupported(f"the {what} is not a boolean computed from a mask input")
    return m


@TABLE.register(operator.invert, torch.logical_not, torch.bitwise_not, "method:logical_not", "method:bitwise_not",
                "method:__invert__")
def negation(ctx, *args, **kwargs):
    """~mask of a boolean mask: 1 - m."""
    return _complement(ctx, _mask(ctx, (args or tuple(kwargs.values()))[0]))


def _complement(ctx, m):
    """1 - m of a 0/1 graph value, a boolean mask."""
    shape = ctx.out_shape(counts=True)
    neg = ctx.emit("mul", [m, ctx.const(-1.0, "minus_one")], shape, name=ctx.sub("neg"))
    r = ctx.emit("add", [neg, ctx.const(1.0, "one")], shape)
    r.dtype = torch.bool
    ctx.counts.add(r.name)
    return r


@TABLE.register(operator.eq, torch.eq, "method:eq")
def equal(ctx, *args, **kwargs):
    """``mask == c`` for a number c on a mask (``attention_mask == 0``): 1 - (mask != c)."""
    x, other = (args + tuple(kwargs.values()))[:2]
    if is_t(other) and not is_t(x):
        x, other = other, x
    if is_t(other) or isinstance(other, torch.Tensor):
        raise Unsupported("compares two tensors; the graph compares a mask with a number only")
    x = ctx.tensor(x)
    if x.name not in ctx.counts:
        raise Unsupported("compares a value computed from the input (not a mask); the graph compares masks only")
    differs = ctx.emit("mask", [x], ctx.out_shape(counts=True), {"value": float(other), "axes": None},
                       name=ctx.sub("differs"))
    return _complement(ctx, differs)


@TABLE.register("method:bool")
def to_bool(ctx, input):
    """``mask.bool()``: nonzero entries of a mask (``mask != 0``); a boolean mask passes."""
    x = ctx.tensor(input)
    if x.name not in ctx.counts:
        raise Unsupported("a cast to bool of a value computed from the input (not a mask)")
    if getattr(x, "dtype", None) == torch.bool:
        return x
    r = ctx.emit("mask", [x], ctx.out_shape(counts=True), {"value": 0.0, "axes": None})
    r.dtype = torch.bool
    return r


@TABLE.register(torch.zeros_like, torch.ones_like, torch.full_like)
def like(ctx, input, *args, **kwargs):
    """zeros_like / ones_like / full_like of a value computed from the input: one constant copy per sample."""
    x = ctx.tensor(input)
    value = ctx.result()[0]
    return ctx.emit("fill", [x], ctx.out_shape(), {}, {"value": ctx.param(value.to(torch.float64), "constant")})


@TABLE.register("method:expand")
def expand(ctx, input, *sizes):
    """x.expand(...) of a value computed from the input: copies joined along the broadcast axes."""
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = tuple(sizes[0])
    return expand_copies(ctx, input, sizes)


def _operand(ctx, v, name):
    return ctx.materialize(v) if is_t(v) else ctx.const(torch.as_tensor(v, dtype=torch.float64), name)


def _select(ctx, condition, a, b):
    """where(condition, a, b): a mask computed from a mask input, or a constant (a causal mask)."""
    if is_t(condition):
        cond = _mask(ctx, condition, "condition")
    else:
        cond = ctx.const(torch.as_tensor(condition).to(torch.float64), "condition")
    return ctx.emit("where", [cond, _operand(ctx, a, "a"), _operand(ctx, b, "b")], ctx.out_shape())


@TABLE.register(torch.where)
def where(ctx, condition, input=None, other=None):
    if input is None or other is None:
        raise Unsupported("torch.where(condition) (the indices where it holds) has no translation")
    return _select(ctx, condition, input, other)


@TABLE.register(torch.masked_fill, "method:masked_fill")
def masked_fill(ctx, input, mask, value):
    """scores.masked_fill(mask, -inf): the value where the mask holds, the input elsewhere."""
    if is_t(value):
        raise Unsupported("a fill value computed from the input")
    return _select(ctx, mask, value, input)
