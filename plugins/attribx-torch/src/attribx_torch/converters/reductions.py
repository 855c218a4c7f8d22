"""Reductions over non-batch axes (mean, sum) and the masks of padded sequences (``ids != pad``, ``any``).

Masks and lengths are integer or boolean in torch; the graph holds them as floats and the walker keeps
their names in ``ctx.counts``, so that only the ops that count (sum, casts, reshapes) read them.
"""
from __future__ import annotations

import operator

import numpy as np
import torch

from ..values import Swapped, Unsupported, is_number, is_t, norm_dim, swap01, swap_axis
from .base import TABLE, graph_value


def reduce(ctx, op, x, dim=None, keepdim=False, dtype=None):
    """A reduction over non-batch axes; over torch's axis 0 of a time-major view (time), a reduction over
    the graph's axis 1. Sums of masks count (lengths of padded sequences)."""
    swapped = isinstance(x, Swapped)
    ndim = len(x.shape)
    x = graph_value(ctx, x)
    counts = x.name in ctx.counts
    if dtype is not None and dtype != x.dtype and not counts:
        raise Unsupported(f"dtype={dtype}")
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        raise Unsupported("reduces over all axes, the batch axis included (give dim=...)")
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    axes = tuple(sorted({norm_dim(d, ndim) for d in dims}))
    if (1 if swapped else 0) in axes:
        raise Unsupported("reduces over the batch axis" + (" (axis 1 of a time-major tensor)" if swapped else "")
                          + ", which mixes samples")
    if counts and op != "reduce_sum":
        raise Unsupported(f"{op} of a mask; the graph counts masks with sum")
    out = ctx.out_shape(counts=counts)
    if not swapped:
        r = ctx.emit(op, [x], out, {"axes": axes, "keepdims": bool(keepdim)})
    else:
        gaxes = tuple(sorted(swap_axis(a) for a in axes))
        still = keepdim or 0 not in axes
        r = ctx.emit(op, [x], swap01(out) if still else out, {"axes": gaxes, "keepdims": bool(keepdim)})
    if counts:
        r.dtype = ctx.result().dtype
        ctx.counts.add(r.name)
    return Swapped(r) if swapped and (keepdim or 0 not in axes) else r


@TABLE.register(torch.mean, "method:mean", time_major="aware")
def mean(ctx, input, dim=None, keepdim=False, dtype=None):
    return reduce(ctx, "reduce_mean", input, dim, keepdim, dtype)


@TABLE.register(torch.sum, "method:sum", time_major="aware")
def sum_(ctx, input, dim=None, keepdim=False, dtype=None):
    return reduce(ctx, "reduce_sum", input, dim, keepdim, dtype)


@TABLE.register(operator.ne, torch.ne, torch.not_equal, "method:ne", "method:not_equal", time_major="elementwise")
def not_equal(ctx, input, other):
    """``x != c`` for a number c: op mask (1.0 where x differs), e.g. ``(ids != pad)`` for lengths."""
    x = input
    if is_t(other) and is_number(x):
        x, other = other, x
    if not is_number(other):
        raise Unsupported("compares two tensors; the graph has comparisons with a number (padding) only "
                          "(op mask)")
    x = ctx.tensor(x)
    r = ctx.emit("mask", [x], ctx.out_shape(counts=True), {"value": float(other), "axes": None})
    r.dtype = torch.bool
    ctx.counts.add(r.name)
    return r


@TABLE.register(torch.any, "method:any")
def any_(ctx, input, dim=None, keepdim=False):
    """``x.any(dim)``: op mask over dim (1.0 where any element differs from 0)."""
    x = ctx.tensor(input)
    ndim = len(x.shape)
    if dim is None:
        raise Unsupported("any() over all axes, the batch axis included (give dim=...)")
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    axes = tuple(sorted({norm_dim(d, ndim) for d in dims}))
    if 0 in axes:
        raise Unsupported("any() over the batch axis mixes samples")
    out = ctx.out_shape(counts=True)
    if keepdim:
        out = tuple(s for d, s in enumerate(out) if d not in axes)
    r = ctx.emit("mask", [x], out, {"value": 0.0, "axes": axes}, name=ctx.sub("any") if keepdim else None)
    if keepdim:
        r = ctx.emit("reshape", [r], ctx.out_shape(counts=True), {"shape": ctx.out_shape(counts=True)[1:]})
    r.dtype = torch.bool
    ctx.counts.add(r.name)
    return r
