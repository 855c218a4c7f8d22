"""Converters that move values around: view/reshape/flatten, permute/transpose, cat/stack, chunk/split,
squeeze/unsqueeze, indexing and slicing, roll, constant padding, and the static reads (size, shape, dim).

The batch axis stays the graph's first axis: a reshape or a permutation that would move it is refused,
except ``x.transpose(0, 1)``, which makes a time-major view (:class:`~attribx_torch.values.Swapped`).
"""
from __future__ import annotations

import builtins
import math
import operator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..values import (Lazy, Packed, Swapped, Unsupported, is_int, is_t, norm_dim, swap01, swap_axis)
from .base import TABLE, graph_value
from .transformer import per_sample_copy

AWARE = {"time_major": "aware"}


def reshape_to(ctx, x, out_shape=None):
    x = ctx.tensor(x)
    out = tuple(out_shape if out_shape is not None else ctx.out_shape())
    if out == x.shape:
        return x
    if not out or out[0] != 1 or x.shape[0] != 1 or (math.prod(out) != math.prod(x.shape)):
        raise Unsupported(f"reshapes {x.shape} to {out} (traced with batch size 1): the batch axis does not "
                          f"stay first, so samples would mix")
    if len(out) == 2 and len(x.shape) > 2:
        return ctx.emit("flatten", [x], out, {"start_dim": 1, "end_dim": -1})
    return ctx.emit("reshape", [x], out, {"shape": tuple(out[1:])})


@TABLE.register(torch.reshape, batch_args_ok=True)
def reshape(ctx, input, shape):
    """The traced result's shape is the target: ``x.view(x.size(0), -1)`` works for any batch size."""
    return reshape_to(ctx, input)


@TABLE.register("method:view", "method:reshape", batch_args_ok=True)
def view(ctx, input, shape=()):
    return reshape_to(ctx, input)


@TABLE.register(torch.flatten, "method:flatten")
def flatten(ctx, input, start_dim=0, end_dim=-1):
    x = ctx.tensor(input)
    ndim = len(x.shape)
    if ndim == 0:
        raise Unsupported("flatten of a scalar")
    s, e = norm_dim(start_dim, ndim), norm_dim(end_dim, ndim)
    if s >= e:
        return x
    if s == 0:
        raise Unsupported(f"flatten(start_dim={start_dim}) merges the batch axis into the features "
                          f"(use start_dim=1)")
    return ctx.emit("flatten", [x], ctx.out_shape(), {"start_dim": s, "end_dim": e if e != ndim - 1 else -1})


@TABLE.register(nn.Flatten)
def flatten_module(ctx, m, input):
    return flatten(ctx, input, m.start_dim, m.end_dim)


@TABLE.register(nn.Unflatten)
def unflatten_module(ctx, m, input):
    x = ctx.tensor(input)
    if norm_dim(m.dim, len(x.shape)) == 0:
        raise Unsupported("unflattens the batch axis")
    return reshape_to(ctx, x)


# ----------------------------------------------------------------------------------------------
# permutations


def transpose_perm(ctx, x, perm):
    """A permutation that keeps the batch axis first is a transpose node; one that puts it second makes a
    time-major view (``x.transpose(0, 1)``: no node), and the reverse swap of a view is its value."""
    swapped = isinstance(x, Swapped)
    if not swapped:
        x = ctx.tensor(x)
    ndim = len(x.shape)
    perm = [norm_dim(p, ndim) for p in perm]
    if sorted(perm) != list(range(ndim)):
        raise Unsupported(f"permutation {perm} for rank {ndim}")
    src = [swap_axis(p) for p in perm] if swapped else perm      # graph axis behind each result axis
    ident = list(range(ndim))
    if src[0] == 0:
        g = graph_value(ctx, x)
        return g if src == ident else ctx.emit("transpose", [g], ctx.out_shape(), {"perm": tuple(src)})
    if ndim >= 2 and src[1] == 0:
        g = graph_value(ctx, x)
        r = [src[swap_axis(k)] for k in range(ndim)]
        return Swapped(g if r == ident else ctx.emit("transpose", [g], swap01(ctx.out_shape()),
                                                     {"perm": tuple(r)}))
    if swapped:
        raise Unsupported(f"permutation {perm} of a time-major tensor (batch axis 1) moves the batch axis "
                          f"past the first two")
    raise Unsupported(f"permutation {perm} moves the batch axis")


@TABLE.register(torch.permute, **AWARE)
def permute(ctx, input, dims):
    return transpose_perm(ctx, input, dims)


@TABLE.register("method:permute", **AWARE)
def permute_method(ctx, input, dims=()):
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    return transpose_perm(ctx, input, dims)


@TABLE.register(torch.transpose, torch.swapaxes, torch.swapdims, "method:transpose", "method:swapaxes",
                "method:swapdims", **AWARE)
def transpose(ctx, input, dim0, dim1):
    x = input if isinstance(input, Swapped) else ctx.tensor(input)
    ndim = len(x.shape)
    perm = list(range(ndim))
    a, b = norm_dim(dim0, ndim), norm_dim(dim1, ndim)
    perm[a], perm[b] = perm[b], perm[a]
    return transpose_perm(ctx, x, perm)


@TABLE.register(torch.t, "method:t", **AWARE)
def transpose_2d(ctx, input):
    return transpose(ctx, input, 0, min(1, len(input.shape) - 1))


# ----------------------------------------------------------------------------------------------
# joining and splitting


@TABLE.register(torch.cat, torch.concat, batch_args_ok=True, **AWARE)
def cat(ctx, tensors, dim=0):
    """Signals, and constants expanded over the batch axis (a class token): one ``fill`` node each."""
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise Unsupported("concatenates something that is not a list of tensors")
    if any(isinstance(t, Swapped) for t in tensors):
        if not all(isinstance(t, Swapped) for t in tensors):
            raise Unsupported("concatenates time-major and batch-first tensors; transpose one of them")
        d = norm_dim(dim, len(tensors[0].shape))
        if d == 1:
            raise Unsupported("concatenation along the batch axis (axis 1 of a time-major tensor)")
        if len(tensors) == 1:
            return tensors[0]
        return Swapped(ctx.emit("concat", [ctx.base(t) for t in tensors], swap01(ctx.out_shape()),
                                {"axis": swap_axis(d)}))
    like = next((t for t in tensors if is_t(t)), None)
    fx_args = ctx.node.args[0] if ctx.node.args else ctx.node.kwargs.get("tensors", ())
    if not isinstance(fx_args, (list, tuple)):      # one fx value holding the list (chunk's pieces)
        fx_args = [None] * len(tensors)
    ts = []
    for t, a in zip(tensors, fx_args):
        copies = None if is_t(t) or like is None else per_sample_copy(ctx, a, ctx.materialize(like))
        if not is_t(t) and copies is None:
            raise Unsupported("concatenates a tensor that does not depend on the input, other than a constant "
                              "expanded over the batch axis (x.expand(n, ...)); only input-dependent tensors can be "
                              "concatenated in the graph")
        ts.append(copies or ctx.materialize(t))
    ndim = len(ts[0].shape)
    d = norm_dim(dim, ndim)
    if d == 0:
        raise Unsupported("concatenation along the batch axis")
    if len(ts) == 1:
        return ts[0]
    return ctx.emit("concat", ts, ctx.out_shape(), {"axis": d})


@TABLE.register(torch.concatenate)
def concatenate(ctx, tensors, axis=0):
    return cat(ctx, tensors, axis)


@TABLE.register(torch.stack)
def stack(ctx, tensors, dim=0):
    if not isinstance(tensors, (list, tuple)) or not tensors or not all(is_t(t) for t in tensors):
        raise Unsupported("stacks tensors that do not all depend on the input")
    ts = [ctx.materialize(t) for t in tensors]
    ndim = len(ts[0].shape) + 1
    d = norm_dim(dim, ndim)
    if d == 0:
        raise Unsupported("stacking along the batch axis")
    pieces = []
    for k, t in enumerate(ts):
        shp = list(t.shape)
        shp.insert(d, 1)
        pieces.append(ctx.emit("reshape", [t], shp, {"shape": tuple(shp[1:])}, name=ctx.sub(f"{k}")))
    return ctx.emit("concat", pieces, ctx.out_shape(), {"axis": d})


def _pieces(ctx, x, sizes, dim):
    x = ctx.tensor(x)
    ndim = len(x.shape)
    d = norm_dim(dim, ndim)
    if d == 0:
        raise Unsupported("splits the batch axis")
    out, start = [], 0
    for k, s in enumerate(sizes):
        out.append(Lazy(x, d, start, start + s, f"{ctx.main}:{k}"))
        start += s
    return tuple(out)


@TABLE.register(torch.chunk, "method:chunk")
def chunk(ctx, input, chunks, dim=0):
    x = ctx.tensor(input)
    size = x.shape[norm_dim(dim, len(x.shape))]
    each = -(-size // int(chunks))
    sizes = [min(each, size - s) for s in range(0, size, each)]
    return _pieces(ctx, x, sizes, dim)


@TABLE.register(torch.split)
def split(ctx, tensor, split_size_or_sections, dim=0):
    x = ctx.tensor(tensor)
    size = x.shape[norm_dim(dim, len(x.shape))]
    if isinstance(split_size_or_sections, (int, np.integer)):
        step = int(split_size_or_sections)
        sizes = [min(step, size - s) for s in range(0, size, step)]
    else:
        sizes = [int(s) for s in split_size_or_sections]
    return _pieces(ctx, x, sizes, dim)


@TABLE.register("method:split")
def split_method(ctx, input, split_size, dim=0):
    return split(ctx, input, split_size, dim)


# ----------------------------------------------------------------------------------------------
# axes of size one


@TABLE.register(torch.squeeze, "method:squeeze", **AWARE)
def squeeze(ctx, input, dim=None):
    if isinstance(input, Swapped):
        return _squeeze_time_major(ctx, input, dim)
    x = ctx.tensor(input)
    ndim = len(x.shape)
    if dim is None:
        dims = [d for d in range(1, ndim) if x.shape[d] == 1]     # the batch axis stays, whatever its size
    else:
        dims = [norm_dim(d, ndim) for d in ((dim,) if isinstance(dim, (int, np.integer)) else dim)]
        if 0 in dims:
            raise Unsupported("squeezes the batch axis")
        dims = [d for d in dims if x.shape[d] == 1]
    out = tuple(s for d, s in enumerate(x.shape) if d not in dims)
    return reshape_to(ctx, x, out)


def _squeeze_time_major(ctx, x, dim):
    shape = x.shape
    if dim is None:
        dims = [d for d in range(len(shape)) if d != 1 and shape[d] == 1]
    else:
        dims = [norm_dim(d, len(shape)) for d in ((dim,) if isinstance(dim, (int, np.integer)) else dim)]
        if 1 in dims:
            raise Unsupported("squeezes the batch axis (axis 1 of a time-major tensor)")
        dims = [d for d in dims if shape[d] == 1]
    if not dims:
        return x
    if x.base is None and dims == [0]:
        return x.pieces[0]
    out = tuple(s for d, s in enumerate(shape) if d not in dims)
    g = ctx.base(x)
    return reshape_to(ctx, g, out) if 0 in dims else Swapped(reshape_to(ctx, g, swap01(out)))


@TABLE.register(torch.unsqueeze, "method:unsqueeze")
def unsqueeze(ctx, input, dim):
    x = ctx.tensor(input)
    d = norm_dim(dim, len(x.shape) + 1)
    if d == 0:
        raise Unsupported("a new axis before the batch axis")
    out = list(x.shape)
    out.insert(d, 1)
    return reshape_to(ctx, x, tuple(out))


# ----------------------------------------------------------------------------------------------
# indexing


@TABLE.register(operator.getitem, **AWARE)
def getitem(ctx, input, index):
    """x[...] with slices, ints, None and Ellipsis: slice nodes, then one reshape where ranks change."""
    x, idx = input, index
    if isinstance(x, (list, tuple)):          # a piece of chunk/split, or a tuple of tensors
        v = x[idx]
        if v is None or isinstance(v, (list, tuple, Swapped, Packed)):     # None: an output not asked for
            return v
        if isinstance(v, Lazy) and v.made is None:
            return ctx.materialize(v, name=ctx.main)
        return ctx.materialize(v)
    if isinstance(x, Swapped):
        return _index_time_major(ctx, x, idx)
    return slice_graph(ctx, ctx.tensor(x), idx, ctx.out_shape())


def _full_slice(c) -> bool:
    return isinstance(c, slice) and c.start in (None, 0) and c.stop is None and c.step in (None, 1)


def _index_time_major(ctx, x: Swapped, idx):
    """Index a time-major view: torch's axis 0 (time, or layer/direction of final states) is the graph's
    axis 1; an int there gives a batch-first tensor (``out[-1]``, ``h_n[-1]``), a slice a time-major one."""
    comps = idx if isinstance(idx, tuple) else (idx,)
    ndim = len(x.shape)
    if any(c is None for c in comps):
        raise Unsupported("a new axis (None) in the index of a time-major tensor")
    if sum(1 for c in comps if c is Ellipsis) > 1:
        raise Unsupported("more than one Ellipsis")
    real = sum(1 for c in comps if c is not Ellipsis)
    if real > ndim:
        raise Unsupported(f"too many indices for a tensor of rank {ndim}")
    full = []
    for c in comps:
        full.extend([slice(None)] * (ndim - real) if c is Ellipsis else [c])
    full.extend([slice(None)] * (ndim - len(full)))
    t, b, rest = full[0], full[1], full[2:]
    if not _full_slice(b):
        raise Unsupported(f"indexes the batch axis (axis 1 of a time-major tensor) with {b!r}")
    simple = is_int(t) or isinstance(t, slice) and all(v is None or is_int(v) for v in (t.start, t.stop, t.step))
    if x.base is None and simple and all(_full_slice(c) for c in rest):     # final states: no node
        if is_int(t):
            return x.pieces[int(t)]
        kept = tuple(x.pieces[t])
        if kept:
            return x if len(kept) == len(x.pieces) else Swapped(None, kept, x.name)
    g, out = ctx.base(x), ctx.out_shape()
    if is_int(t):
        return slice_graph(ctx, g, (b, t, *rest), out)
    return Swapped(slice_graph(ctx, g, (b, t, *rest), swap01(out)))


def slice_graph(ctx, x, idx, out_shape):
    """Slices of a batch-first graph tensor; ``out_shape`` the result's shape in graph order."""
    comps = idx if isinstance(idx, tuple) else (idx,)
    for c in comps:
        if not (c is None or c is Ellipsis or isinstance(c, (slice, int, np.integer)) and not isinstance(c, bool)):
            raise Unsupported(f"indexing with {type(c).__name__} (advanced indexing); slices, ints, None and "
                              f"... are supported")
        if isinstance(c, slice) and any(isinstance(s, torch.Tensor) for s in (c.start, c.stop, c.step)):
            raise Unsupported("slice bounds that are tensors")
    ndim = len(x.shape)
    real = sum(1 for c in comps if c is not None and c is not Ellipsis)
    if sum(1 for c in comps if c is Ellipsis) > 1:
        raise Unsupported("more than one Ellipsis")
    if real > ndim:
        raise Unsupported(f"too many indices for a tensor of rank {ndim}")
    full = []
    for c in comps:
        if c is Ellipsis:
            full.extend([slice(None)] * (ndim - real))
        else:
            full.append(c)
    if Ellipsis not in comps:
        full.extend([slice(None)] * (ndim - real))
    plan = []
    axis = 0
    rank_change = False
    for c in full:
        if c is None:
            if axis == 0:
                raise Unsupported("a new axis before the batch axis")
            rank_change = True
            continue
        size = x.shape[axis]
        if axis == 0:
            if not (isinstance(c, slice) and c.start in (None, 0) and c.stop is None and c.step in (None, 1)):
                raise Unsupported(f"indexes the batch axis with {c!r}")
            axis += 1
            continue
        if isinstance(c, slice):
            if c.step is not None and c.step <= 0:
                raise Unsupported(f"slice step {c.step}")
            r = range(size)[c]
            if r != range(size):
                plan.append((axis, r.start, r.stop, None if r.step == 1 else r.step, len(r)))
        else:
            i = int(c)
            if not -size <= i < size:
                raise Unsupported(f"index {i} out of range for size {size}")
            i %= size
            plan.append((axis, i, i + 1, None, 1))
            rank_change = True
        axis += 1
    cur = x
    for k, (a, start, stop, step, n) in enumerate(plan):
        shp = list(cur.shape)
        shp[a] = n
        last = k == len(plan) - 1 and not rank_change
        cur = ctx.emit("slice", [cur], shp, {"axis": a, "start": start, "stop": stop, "step": step},
                       name=None if last else ctx.sub(f"{k}"))
    if rank_change:
        cur = reshape_to(ctx, cur, out_shape)
    return cur


@TABLE.register(torch.roll, "method:roll")
def roll(ctx, input, shifts, dims=None):
    """torch.roll along given axes (Swin's cyclic shift); without dims torch rolls the flattened tensor,
    batch axis included: refused."""
    x = ctx.tensor(input)
    if dims is None:
        raise Unsupported("roll without dims rolls the flattened tensor across samples")
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    axes = tuple(norm_dim(d, len(x.shape)) for d in dims)
    if 0 in axes:
        raise Unsupported("rolls the batch axis")
    return ctx.emit("roll", [x], ctx.out_shape(), {"shifts": tuple(int(s) for s in shifts), "axes": axes})


# ----------------------------------------------------------------------------------------------
# padding


@TABLE.register(F.pad)
def pad(ctx, input, pad, mode="constant", value=None):
    x = ctx.tensor(input)
    if mode != "constant":
        raise Unsupported(f"mode={mode!r} (only constant padding is in the graph's op set)")
    pad = [int(p) for p in pad]
    if len(pad) % 2:
        raise Unsupported(f"pad {pad} has an odd length")
    k = len(pad) // 2
    if k > len(x.shape) - 1:
        raise Unsupported(f"pad {pad} pads the batch axis")
    if any(p < 0 for p in pad):
        raise Unsupported(f"negative padding {pad} (cropping)")
    if not any(pad):
        return x
    pairs = [(pad[2 * (k - 1 - j)], pad[2 * (k - 1 - j) + 1]) for j in range(k)]
    return ctx.emit("pad", [x], ctx.out_shape(), {"pads": pairs, "value": 0.0 if value is None else float(value)})


@TABLE.register(nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
def pad_module(ctx, m, input):
    return pad(ctx, input, m.padding, "constant", m.value)


# ----------------------------------------------------------------------------------------------
# static reads: the traced value, marked when it depends on the batch size


@TABLE.register("method:size", **AWARE)
def size(ctx, input, dim=None):
    x = input if isinstance(input, Swapped) else ctx.tensor(input)
    if dim is None or norm_dim(dim, len(x.shape)) == (1 if isinstance(x, Swapped) else 0):
        ctx.batch_dependent()
    return ctx.result()


@TABLE.register("method:numel", **AWARE)
def numel(ctx, input):
    ctx.batch_dependent()
    return ctx.result()


@TABLE.register("method:dim", **AWARE)
def rank(ctx, input):
    return ctx.result()


@TABLE.register(builtins.getattr, **AWARE)
def getattr_(ctx, input, name):
    if not is_t(input):
        return ctx.result()
    if isinstance(input, Packed):
        raise Unsupported(f"attribute {name!r} of a PackedSequence; in the graph only nn.LSTM, nn.GRU and "
                          f"pad_packed_sequence read one")
    if name == "shape":
        ctx.batch_dependent()
        return ctx.result()
    if name in ("ndim", "dtype", "device", "is_cuda", "requires_grad", "layout"):
        return ctx.result()
    raise Unsupported(f"attribute {name!r} of a tensor")
