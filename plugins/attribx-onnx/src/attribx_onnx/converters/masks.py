"""Casts, comparisons and negations: how a model computes sequence lengths from padding
(``ReduceSum(Cast(Not(Equal(ids, pad))))``) for an LSTM's ``sequence_lens``, and casts that change nothing.

A boolean ``Equal`` is held as its negation (the graph's ``mask``: 1 where different) until a ``Not`` or a
``Cast`` reads it (``ctx.complement``); values counting mask entries stay whole numbers (``ctx.counts``).
"""
from __future__ import annotations

import numpy as np

from . import TABLE, Unsupported
from ..fold import BATCH_A, BATCH_B
from .common import at_batch, batch_axis, scalar
from .shape import per_sample


@TABLE.register("Cast", any_batch_axis=True)
def cast(ctx, node, attrs):
    """A cast to the type a tensor already has is nothing; others would change the graph's dtype, except
    casts of masks and of the counts computed from them (a sequence length), which hold whole numbers."""
    from onnx import helper                    # lazy: onnx loads only when a model is translated
    tensor = node.input[0]
    to = int(attrs["to"])
    target = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if tensor in ctx.complement:               # a boolean held as its negation (Equal): 1 - mask
        if target.kind == "b":
            ctx.complement.add(node.output[0])
            return ctx.values[tensor]
        if target.kind not in "iuf":
            raise Unsupported(f"a cast of a boolean to {target}")
        m = ctx.values[tensor]
        neg = ctx.emit("mul", [m, ctx.constant(-1.0, "minus_one")], name=ctx.sub("neg"))
        out = ctx.emit("add", [neg, ctx.constant(1.0, "one")])
        ctx.counts.add(out.name)
        ctx.booleans.add(out.name)
        return at_batch(out, batch_axis(m))
    v = ctx.value(tensor, allow_int=True)
    if target.kind == "b":                     # x != 0 as 0/1 (a mask made boolean): the graph's mask op
        if v.name in ctx.booleans:
            return v
        if v.name in ctx.int_values:
            raise Unsupported("a cast of token ids to bool")
        m = at_batch(ctx.emit("mask", [v], attrs={"value": 0.0, "axes": None}), batch_axis(v))
        ctx.counts.add(m.name)
        ctx.booleans.add(m.name)
        return m
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
    ctx.booleans.add(m.name)
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
    """Where(cond, X, Y): the graph's ``where`` (X where cond, else Y; relevance to the selected input). The
    condition is a constant (a causal mask on attention scores) or a boolean computed from a mask input
    (``attention_mask``: comparisons, casts to bool); any other computed condition has no translation."""
    cond, a, b = node.input[:3]
    if ctx.is_const(cond):
        mask = np.asarray(ctx.const(cond, "condition")).astype(bool).astype(np.float64)
        return ctx.emit("where", [ctx.constant(mask, "condition"), ctx.operand(a, "x"), ctx.operand(b, "y")])
    if cond in ctx.complement:                 # held as its negation: swap the branches
        cond, a, b = None, b, a
        m = ctx.values[node.input[0]]
    else:
        m = ctx.value(cond)
        if m.name not in ctx.booleans:
            raise Unsupported("the condition is computed from the input, not a boolean of a mask input (a "
                              "comparison or a cast to bool of an attention mask) nor a constant (a causal mask)")
    if not m.in_graph_order:
        raise Unsupported("the condition holds its batch on another axis")
    return ctx.emit("where", [m, ctx.operand(a, "x"), ctx.operand(b, "y")])


@TABLE.register("Expand")
def expand(ctx, node, attrs):
    """A tensor computed from the input broadcast along axes of size one (an attention mask (N, 1, 1, T) to
    (N, 1, T, T)): copies joined (``concat``; relevance sums over them). New leading axes have no translation."""
    x = ctx.value(node.input[0])
    if not x.in_graph_order:
        raise Unsupported("expands a tensor whose batch is not on its first axis")
    pair = ctx.const_pair(node.input[1]) if ctx.is_const(node.input[1]) else None
    if pair is None:
        raise Unsupported("the target shape is computed from the input")
    try:
        out = np.broadcast_shapes((BATCH_A, *x.shape[1:]), tuple(int(d) for d in np.asarray(pair.a).reshape(-1)))
        out_b = np.broadcast_shapes((BATCH_B, *x.shape[1:]), tuple(int(d) for d in np.asarray(pair.b).reshape(-1)))
    except ValueError as err:
        raise Unsupported(f"cannot broadcast {x.shape} to the target ({err})") from None
    if len(out) != len(x.shape) or out[0] != BATCH_A or out_b[0] != BATCH_B or out[1:] != out_b[1:]:
        raise Unsupported(f"expands {x.shape} to {out}: a new leading axis or the batch axis")
    for axis in range(1, len(out)):
        if x.shape[axis] != out[axis]:
            x = ctx.emit("concat", [x] * out[axis], attrs={"axis": axis}, name=ctx.sub(f"expand{axis}"))
    return x


def _full_grid(indices: np.ndarray) -> bool:
    """Whether ``indices`` (..., k) lists every position of its leading axes once, in order."""
    k = indices.shape[-1]
    if indices.ndim != k + 1:
        return False
    grid = np.stack(np.meshgrid(*[np.arange(d) for d in indices.shape[:-1]], indexing="ij"), axis=-1)
    return np.array_equal(indices, grid)


@TABLE.register("ScatterND")
def scatter_nd(ctx, node, attrs):
    """A ScatterND that writes every element (``mask[:, :, :, :length] = ...`` over the whole length, as HF's
    causal-mask code exports with the TorchScript exporter): the updates themselves. A partial write has no
    translation."""
    data, indices, updates = node.input[:3]
    if attrs.get("reduction", "none") != "none" or not ctx.is_const(indices):
        raise Unsupported("only a write of every element (constant indices covering the tensor) translates")
    pair = ctx.const_pair(indices)
    u = ctx.value(updates)
    a, b = np.asarray(pair.a), np.asarray(pair.b)
    target = ctx.values[data].shape[1:] if data in ctx.values else \
        (per_sample(ctx.const_pair(data)) if ctx.is_const(data) else None)
    target = getattr(target, "shape", target)
    if not (target is not None and tuple(target) == tuple(u.shape[1:]) and _full_grid(a) and _full_grid(b) and a.shape[0] == BATCH_A and b.shape[0] == BATCH_B
            and u.in_graph_order and a.shape[1:-1] == tuple(u.shape[1:a.shape[-1]])):
        raise Unsupported("writes part of the tensor; only a write of every element translates")
    return u
