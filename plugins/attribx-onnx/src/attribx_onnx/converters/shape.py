"""Shapes and routing: Identity, Dropout, Shape, Size, Concat, Split, Slice, Flatten, Reshape, Transpose,
Squeeze, Unsqueeze, Pad, Gather.

Most of these read tensors whose batch axis is not first (the sequence-first tensors around an LSTM/GRU):
they map ONNX axes onto the graph value's through :class:`~attribx.translation.Tensor` and return their
output with its own batch axis (:func:`~attribx_onnx.converters.common.at_batch`). ``Shape`` of a tensor
with a known per-sample shape is a constant pair (batch sizes ``BATCH_A``, ``BATCH_B``), so that the
exporters' shape arithmetic folds and a Reshape knows which target entry is the batch size.
"""
from __future__ import annotations

import math

import numpy as np

from attribx.translation import Tensor

from ..fold import BATCH_A, BATCH_B, Const
from . import TABLE, Unsupported
from .common import at_batch, axes_input_or_attr, batch_axis, ints, scalar, x_of
from .layout import as_onnx, expanded


def axis_of(t: Tensor, axis: int, what: str = "axis") -> int:
    """The graph value's axis for ONNX axis ``axis`` of ``t`` (negative counts from the end)."""
    if not -t.rank <= axis < t.rank:
        raise Unsupported(f"{what} {axis} is out of range for a tensor of rank {t.rank}")
    return t.graph_axis(axis)


@TABLE.register("Identity", any_batch_axis=True)
def passthrough(ctx, node, attrs):
    """Identity: the output is the input; the node's name resolves through the aliases."""
    return ctx.value(node.input[0], allow_int=True)


@TABLE.register("Dropout", any_batch_axis=True)
def dropout(ctx, node, attrs):
    mode = ctx.optional_const(node, 2, "training_mode")
    if mode is not None and bool(np.asarray(mode).reshape(-1)[0]):
        raise Unsupported("training_mode=True: dropout is random")
    return [ctx.value(node.input[0])] + [None] * (len(node.output) - 1)   # the mask: an error if read


@TABLE.register("Shape", any_batch_axis=True, merged_batch=True)
def shape(ctx, node, attrs):
    """The shape of a tensor with a known per-sample shape: a constant pair (batch size A, B)."""
    exp, groups = expanded(ctx.value(node.input[0], allow_int=True))
    sl = slice(int(attrs.get("start", 0)), attrs.get("end"))
    full = []
    for size in (BATCH_A, BATCH_B):
        dims = [size if d is None else d for d in exp]
        starts = np.cumsum((0,) + groups)
        full.append(np.array([math.prod(dims[starts[i]:starts[i + 1]]) for i in range(len(groups))], np.int64)[sl])
    return Const.pair(*full)


@TABLE.register("Size", any_batch_axis=True)
def size(ctx, node, attrs):
    n = math.prod(ctx.value(node.input[0], allow_int=True).shape[1:])
    return Const.pair(np.array(BATCH_A * n, np.int64), np.array(BATCH_B * n, np.int64))


def per_sample(pair: Const, declared: int | None = None) -> np.ndarray | None:
    """A constant expanded to the batch (a class token: ``Expand(token, (N, 1, D))`` folds to one; with
    ``declared``, the model's fixed batch size, also a constant of that many equal rows): its one sample's
    value when every sample holds the same, else None."""
    if pair.batch_dependent:
        if pair.a.ndim == 0 or pair.a.shape[1:] != pair.b.shape[1:] \
                or (pair.a.shape[0], pair.b.shape[0]) != (BATCH_A, BATCH_B):
            return None
    elif not declared or pair.a.ndim == 0 or pair.a.shape[0] != declared:
        return None
    first = pair.a[0]
    if not (np.array_equal(pair.a, np.broadcast_to(first, pair.a.shape))
            and np.array_equal(pair.b, np.broadcast_to(first, pair.b.shape))):
        return None
    return first


@TABLE.register("Concat", any_batch_axis=True)
def concat(ctx, node, attrs):
    """Tensors computed from the input, and constants expanded to the batch (a class token: a ``fill``
    reading the batch size of another input)."""
    ins = [i for i in node.input if i]
    computed = [i for i in ins if not ctx.is_const(i)]
    if not computed:
        raise Unsupported("concatenates constants only")
    batch = {batch_axis(ctx.value(i)) for i in computed}
    if len(batch) > 1:
        raise Unsupported(f"concatenates tensors whose batch axes differ ({sorted(batch)})")
    values = []
    for k, i in enumerate(ins):
        if not ctx.is_const(i):
            values.append(ctx.value(i))
            continue
        sample = per_sample(ctx.const_pair(i), ctx.declared_batch)
        if sample is None or batch != {0}:
            raise Unsupported("concatenates a constant with tensors computed from the input (a constant has no "
                              "batch axis; one expanded to the batch translates)")
        values.append(ctx.emit("fill", [ctx.value(computed[0])], params={"value": ctx.float_param(sample)},
                               name=ctx.sub(f"fill{k}")))
    out = ctx.emit("concat", values, attrs={"axis": axis_of(values[0], int(attrs["axis"]))})
    return at_batch(out, batch.pop())


def _split_sizes(ctx, node, attrs, dim: int) -> list[int]:
    sizes = ctx.optional_const(node, 1, "split")
    if sizes is None:
        sizes = attrs.get("split")
    n = len(node.output)
    if sizes is not None:
        return ints(sizes)
    if "num_outputs" in attrs:
        n = int(attrs["num_outputs"])
        chunk = -(-dim // n)
        return [chunk] * (n - 1) + [dim - chunk * (n - 1)]
    if dim % n:
        raise Unsupported(f"an axis of size {dim} does not split evenly into {n} outputs")
    return [dim // n] * n


@TABLE.register("Split", any_batch_axis=True)
def split(ctx, node, attrs):
    """Each output is a ``slice`` node named ``<node>:<output index>``."""
    x = x_of(ctx, node)
    axis = axis_of(x, int(attrs.get("axis", 0)))
    if axis == 0:
        raise Unsupported("splits the batch axis")
    sizes = _split_sizes(ctx, node, attrs, x.shape[axis])
    if sum(sizes) != x.shape[axis] or len(sizes) != len(node.output):
        raise Unsupported(f"split sizes {sizes} do not cover an axis of size {x.shape[axis]} with "
                          f"{len(node.output)} outputs")
    outs, start = [], 0
    for i, n in enumerate(sizes):
        out = ctx.emit("slice", [x], attrs={"axis": axis, "start": start, "stop": start + n, "step": None},
                       name=ctx.sub(str(i)), order=x.order)
        outs.append(out)
        start += n
    return outs


def _clamp(index: int, dim: int) -> int:
    """ONNX Slice bounds for positive steps: negative counts from the end, then clamp to [0, dim]."""
    if index < 0:
        index += dim
    return min(max(index, 0), dim)


#: An end at or beyond this selects up to the end of the batch axis (exporters write INT64_MAX).
_TO_END = 2 ** 31 - 1


@TABLE.register("Slice", any_batch_axis=True)
def slice_(ctx, node, attrs):
    """One ``slice`` node per sliced axis (the last one carries the ONNX node's name)."""
    x = x_of(ctx, node)
    starts = ints(ctx.const(node.input[1], "starts"))
    ends = ints(ctx.const(node.input[2], "ends"))
    axes = ctx.optional_const(node, 3, "axes")
    steps = ctx.optional_const(node, 4, "steps")
    axes = list(range(len(starts))) if axes is None else ints(axes)
    axes = [axis_of(x, a) for a in axes]          # the graph value's axes
    steps = [1] * len(starts) if steps is None else ints(steps)
    plan = []
    for axis, s, e, st in zip(axes, starts, ends, steps):
        if st <= 0:
            raise Unsupported(f"step {st} on axis {axis}: only positive steps translate")
        if axis == 0:
            if s in (0,) or s <= -_TO_END:
                if e >= _TO_END and st == 1:
                    continue
            raise Unsupported("slices the batch axis")
        dim = x.shape[axis]
        start, stop = _clamp(s, dim), _clamp(e, dim)
        if (start, stop, st) != (0, dim, 1):
            plan.append((axis, start, stop, st))
    for j, (axis, start, stop, st) in enumerate(plan):
        name = None if j == len(plan) - 1 else ctx.sub(f"axis{axis}")
        x = ctx.emit("slice", [x], attrs={"axis": axis, "start": start, "stop": stop,
                                          "step": None if st == 1 else st}, name=name, order=x.order)
    return x


@TABLE.register("Flatten")
def flatten(ctx, node, attrs):
    x = x_of(ctx, node)
    axis = int(attrs.get("axis", 1))
    if (axis + x.rank if axis < 0 else axis) != 1:
        raise Unsupported(f"axis={axis} mixes the batch axis with others (axis=1 keeps samples apart)")
    if x.rank == 2:
        return x
    return ctx.emit("flatten", [x], attrs={"start_dim": 1, "end_dim": -1})


def _batch_entry(ctx, dims: list, size: int, shown, at: int) -> tuple[int, int]:
    """(the target entry holding the batch, how many elements of one sample it holds besides); ``at``: the
    input's batch axis, the declared batch size's likely place."""
    held = [i for i, d in enumerate(dims) if isinstance(d, tuple)]
    if len(held) > 1:
        raise Unsupported(f"target shape {shown} holds the batch size twice")
    if held:
        return held[0], dims[held[0]][1]
    known = math.prod(d for d in dims if d != -1)
    if dims.count(-1) == 1 and known and size % known == 0:   # -1 stands for the batch (times size / known)
        return dims.index(-1), size // known
    if ctx.declared_batch and ctx.declared_batch in dims:       # exported with a fixed batch size
        return (at if dims[at:at + 1] == [ctx.declared_batch] else dims.index(ctx.declared_batch)), 1
    fixed = "" if not ctx.declared_batch else (
        f"; the model was exported with a fixed batch of {ctx.declared_batch}, which hides where the batch sits in "
        f"merged axes: export it with a dynamic batch (torch.onnx.export's dynamic_shapes / dynamic_axes, from an "
        f"example batch of 2 or more)")
    raise Unsupported(f"target shape {shown} does not keep the batch axis (it would move data between samples)"
                      f"{fixed}")


def _reshape_target(ctx, pair: Const, x: Tensor, allowzero: bool) -> tuple[list, tuple]:
    """A Reshape target as the output's expanded shape (None at the batch) and groups
    (:mod:`~attribx_onnx.converters.layout`).

    The batch's entry in the target is the one that depends on the batch size (``Shape(x)[k]``, or a
    multiple of it: the batch merged with other axes), a 0 that copies the input's batch axis, a -1 (the
    rest of the batch's entry), or the model's declared fixed batch size. The data before the batch in
    row-major order must stay before it (and so the data after it after it): no data moves between
    samples, and the entry splits into (before, batch, after) expanded axes."""
    in_exp, in_groups = expanded(x)
    in_shape = x.framework_shape
    p = in_exp.index(None)
    before, after = math.prod(in_exp[:p]), math.prod(in_exp[p + 1:])
    a, b = ints(pair.a), ints(pair.b)
    if len(a) != len(b):
        raise Unsupported("the target shape's length depends on the batch size")
    if not a:
        raise Unsupported("reshapes to a scalar")
    shown = a if a == b else (a, b)
    dims = []                     # the target's entries with copies resolved; (None, g): the batch times g
    for i, (u, v) in enumerate(zip(a, b)):
        if u != v:
            g = u // BATCH_A
            if g < 1 or u != g * BATCH_A or v != g * BATCH_B:
                raise Unsupported(f"entry {i} of the target shape depends on the batch size but is not a "
                                  f"multiple of it (it would move data between samples)")
            dims.append((None, g))
        elif u == 0 and not allowzero:
            if i >= len(in_shape):
                raise Unsupported(f"target entry {i} is 0 (copy), but the input has rank {len(in_shape)}")
            dims.append(in_shape[i] if in_shape[i] is not None else (None, before * after // math.prod(
                d for j, d in enumerate(in_shape) if j != i)))
        elif u == 0:
            raise Unsupported("allowzero=1 with a zero in the target shape")
        else:
            dims.append(u)
    j, g = _batch_entry(ctx, dims, before * after, shown, batch_axis(x))
    rest = [d for i, d in enumerate(dims) if i != j]
    if rest.count(-1) > 1:
        raise Unsupported(f"target shape {shown} has more than one -1")
    if -1 in rest:
        known = math.prod(d for d in rest if d != -1) * g
        if not known or (before * after) % known:
            raise Unsupported(f"target shape {shown} does not fit one sample of size {before * after}")
        rest[rest.index(-1)] = before * after // known
    head, tail = rest[:j], rest[j:]
    g1 = before // math.prod(head) if before % math.prod(head) == 0 else 0
    if not g1 or g % g1 or math.prod(tail) * (g // g1) != after:
        raise Unsupported(f"target shape {shown} does not keep the batch apart (it would move data between "
                          f"samples)")
    split = [d for d in (g1,) if d > 1] + [None] + [d for d in (g // g1,) if d > 1]
    return head + split + tail, (1,) * len(head) + (len(split),) + (1,) * len(tail)


@TABLE.register("Reshape", any_batch_axis=True, merged_batch=True)
def reshape(ctx, node, attrs):
    """Any target that keeps samples apart; one that merges the batch with other axes gives a
    :class:`~attribx_onnx.converters.layout.Merged` tensor (attention's (L, N * heads, head_dim))."""
    x = ctx.value(node.input[0], allow_int=True)
    if not ctx.is_const(node.input[1]):
        raise Unsupported("the target shape is computed from the input's values")
    shape, groups = _reshape_target(ctx, ctx.const_pair(node.input[1]), x, bool(attrs.get("allowzero", 0)))
    if x.name in ctx.int_values and (tuple(d for d in shape if d is not None) != tuple(x.shape[1:]) or
                                     len(groups) != len(shape)):
        raise Unsupported(f"input {node.input[0]!r} holds integers (token ids); only a reshape that changes "
                          f"nothing (x.view(-1, T)) reads them")
    if len(groups) != len(shape) and node.output[0] in ctx.graph_outputs:
        raise Unsupported(f"a model output that merges the batch axis with other axes ({shape}) is not a "
                          f"batch of outputs")
    target = tuple(d for d in shape if d is not None)
    if target != tuple(x.shape[1:]):
        x = ctx.emit("reshape", [x], attrs={"shape": target})
    return as_onnx(x, shape, groups)


@TABLE.register("Transpose", any_batch_axis=True, merged_batch=True)
def transpose(ctx, node, attrs):
    """Any perm: the batch axis (with the axes merged with it) goes where perm sends it; the graph value
    transposes its other axes."""
    x = x_of(ctx, node)
    shape, groups = expanded(x)
    rank = len(groups)
    perm = [p % rank for p in attrs.get("perm", list(range(rank))[::-1])]
    if sorted(perm) != list(range(rank)):
        raise Unsupported(f"perm {perm} is not a permutation of {rank} axes")
    starts = [sum(groups[:i]) for i in range(rank)]
    moved = [k for p in perm for k in range(starts[p], starts[p] + groups[p])]   # expanded axes, new order
    out_shape = [shape[k] for k in moved]
    stored = tuple(x.graph_axis(k) for k in [moved[out_shape.index(None)]] + [k for k in moved if shape[k] is not None])
    out = x if stored == tuple(range(len(shape))) else ctx.emit("transpose", [x], attrs={"perm": stored})
    return as_onnx(out, out_shape, tuple(groups[p] for p in perm))


def _batch_first(shape: list, batch: int) -> tuple:
    """One sample's shape of a graph value holding an ONNX tensor of ``shape`` (batch axis ``batch``)."""
    return tuple(d for i, d in enumerate(shape) if i != batch)


@TABLE.register("Squeeze", any_batch_axis=True)
def squeeze(ctx, node, attrs):
    x = x_of(ctx, node)
    shape = x.framework_shape
    batch = batch_axis(x)
    axes = axes_input_or_attr(ctx, node, attrs, 13)
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
        return x
    return at_batch(ctx.emit("reshape", [x], attrs={"shape": _batch_first(new, out_batch)}), out_batch)


@TABLE.register("Unsqueeze", any_batch_axis=True)
def unsqueeze(ctx, node, attrs):
    """Size-1 axes anywhere, before the batch axis too (the batch axis then moves)."""
    x = x_of(ctx, node)
    shape = list(x.framework_shape)
    axes = axes_input_or_attr(ctx, node, attrs, 13)
    if not axes:
        raise Unsupported("no axes given")
    out_rank = len(shape) + len(axes)
    for a in sorted(a % out_rank for a in axes):
        shape.insert(a, 1)
    out_batch = shape.index(None)
    return at_batch(ctx.emit("reshape", [x], attrs={"shape": _batch_first(shape, out_batch)}), out_batch)


@TABLE.register("Pad")
def pad(ctx, node, attrs):
    """Constant padding only; pads (and axes, opset 18) are constant inputs."""
    mode = attrs.get("mode", "constant")
    if mode != "constant":
        raise Unsupported(f"mode={mode!r}: only constant padding translates")
    x = x_of(ctx, node)
    rank = x.rank
    pads = ints(ctx.const(node.input[1], "pads"))
    value = ctx.optional_const(node, 2, "constant_value")
    axes = ctx.optional_const(node, 3, "axes")
    axes = list(range(rank)) if axes is None else [a % rank for a in ints(axes)]
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
    return ctx.emit("pad", [x], attrs={"pads": widths[1:], "value": 0.0 if value is None else scalar(value, "value")})


@TABLE.register("Gather", any_batch_axis=True)
def gather(ctx, node, attrs):
    """A constant (V, D) table read at token ids: ``embedding``. A constant index into a tensor: slice."""
    data, idx = node.input[:2]
    axis = int(attrs.get("axis", 0))
    if ctx.is_const(data):
        table = ctx.const(data, "table")
        if axis != 0 or table.ndim != 2:
            raise Unsupported(f"only rows of a (vocabulary, dim) table translate (an embedding), got a table "
                              f"of shape {table.shape} on axis {axis}")
        ids = ctx.value(idx, allow_int=True)
        if ids.name not in ctx.int_values:
            raise Unsupported("the indices are not integers from the model's input")
        out = ctx.emit("embedding", [ids], params={"weight": ctx.float_param(table)})
        return at_batch(out, batch_axis(ids))
    x = ctx.value(data)
    shape = x.shape
    batch = batch_axis(x)
    onnx_axis = axis % len(shape)
    axis = axis_of(x, axis)
    if axis == 0:
        raise Unsupported("selects along the batch axis")
    dim = shape[axis]
    ix = np.asarray(ctx.const(idx, "indices")).astype(np.int64)
    ix = np.where(ix < 0, ix + dim, ix)
    if ix.size == 0 or (ix < 0).any() or (ix >= dim).any():
        raise Unsupported(f"indices {ix.tolist()} out of range for an axis of size {dim}")
    if ix.ndim == 0:
        i = int(ix)
        s = ctx.emit("slice", [x], attrs={"axis": axis, "start": i, "stop": i + 1, "step": None},
                     name=ctx.sub("slice"))
        out = ctx.emit("reshape", [s], attrs={"shape": tuple(shape[1:axis]) + tuple(shape[axis + 1:])})
        return at_batch(out, batch - (onnx_axis < batch))
    step = int(ix[1] - ix[0]) if ix.size > 1 else 1
    if ix.ndim == 1 and step > 0 and np.array_equal(ix, ix[0] + step * np.arange(ix.size)):
        out = ctx.emit("slice", [x], attrs={"axis": axis, "start": int(ix[0]), "stop": int(ix[-1]) + 1,
                                            "step": None if step == 1 else step})
        return at_batch(out, batch)
    raise Unsupported(f"indices {ix.tolist()} are not one index or an evenly spaced increasing run")
