"""Keras converters of layers that move, reshape or combine values: Flatten, Reshape, Permute, padding
and cropping, Concatenate and the merge layers (Add, Subtract, Multiply, Average, and InceptionResNetV2's
scaled residual sum CustomScaleLayer).

Layout-sensitive layers (Flatten, Reshape) first put their input back in Keras's order, so that Flatten
flattens in H, W, C order exactly as Keras does; the others act on the axis Keras names wherever the
value keeps it, and merge layers bring their operands into one order.
"""
from __future__ import annotations

import keras

from .common import TABLE, Unsupported, channels_last, one, present

try:     # keras.applications' own layer (not exported under keras.layers)
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
except ImportError:
    CustomScaleLayer = None


def aligned(ctx, xs: list) -> list:
    """Operands of a merge layer in one axis order (the first's; Keras order where ranks differ)."""
    if len({x.rank for x in xs}) > 1:
        return [ctx.keras_order(x) for x in xs]
    return [ctx.reorder(x, xs[0].order, "aligned") for x in xs]


@TABLE.register(keras.layers.Add)
def add(ctx, layer, xs):
    xs = aligned(ctx, xs)
    return ctx.emit("add", xs, order=xs[0].order)


@TABLE.register(keras.layers.Subtract)
def subtract(ctx, layer, xs):
    if len(xs) != 2:
        raise Unsupported(f"takes {len(xs)} inputs, expected two")
    a, b = aligned(ctx, xs)
    neg = ctx.emit("mul", [b, ctx.constant(-1.0, "minus_one")], name=ctx.sub("neg"), order=b.order)
    return ctx.emit("add", [a, neg], order=a.order)


@TABLE.register(keras.layers.Multiply)
def multiply(ctx, layer, xs):
    xs = aligned(ctx, xs)
    y = xs[0]
    for i, x in enumerate(xs[1:]):
        last = i == len(xs) - 2
        y = ctx.emit("mul", [y, x], name=None if last else ctx.sub(f"mul{i}"), order=y.order)
    return y


@TABLE.register(keras.layers.Average)
def average(ctx, layer, xs):
    xs = aligned(ctx, xs)
    s = ctx.emit("add", xs, name=ctx.sub("sum"), order=xs[0].order)
    return ctx.emit("mul", [s, ctx.constant(1.0 / len(xs), "inv_n")], order=s.order)


@TABLE.register(*present(CustomScaleLayer))
def scaled_sum(ctx, layer, xs):
    """InceptionResNetV2's residual: inputs[0] + inputs[1] * scale."""
    if len(xs) != 2:
        raise Unsupported(f"takes {len(xs)} inputs, expected two")
    a, b = aligned(ctx, xs)
    scaled = ctx.emit("mul", [b, ctx.constant(float(layer.scale), "scale")], name=ctx.sub("scaled"), order=b.order)
    return ctx.emit("add", [a, scaled], order=a.order)


@TABLE.register(keras.layers.Concatenate)
def concat(ctx, layer, xs):
    xs = aligned(ctx, xs)
    axis = layer.axis % xs[0].rank
    return ctx.emit("concat", xs, attrs={"axis": xs[0].graph_axis(axis)}, order=xs[0].order)


@TABLE.register(keras.layers.Flatten)
def flatten(ctx, layer, xs):
    x = one(xs)
    if not channels_last(layer):
        raise Unsupported("data_format='channels_first'")
    x = ctx.keras_order(x)
    if x.rank == 2:
        return ctx.emit("identity", [x], order=x.order)
    return ctx.emit("flatten", [x], attrs={"start_dim": 1, "end_dim": -1})


@TABLE.register(keras.layers.Reshape)
def reshape(ctx, layer, xs):
    x = ctx.keras_order(one(xs))
    shape = tuple(int(d) for d in layer.target_shape)
    return ctx.emit("reshape", [x], attrs={"shape": shape})


@TABLE.register(keras.layers.Permute)
def permute(ctx, layer, xs):
    """One transpose from wherever the value keeps Keras's axes to the permuted Keras order."""
    x = one(xs)
    dims = (0,) + tuple(int(d) for d in layer.dims)
    return ctx.emit("transpose", [x], attrs={"perm": tuple(x.graph_axis(d) for d in dims)})


def _keras_pairs(padding, n):
    """Keras zero-padding/cropping arguments as one (before, after) pair per spatial axis."""
    if isinstance(padding, int):
        return [(padding, padding)] * n
    padding = list(padding)
    if n == 1 and len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return [tuple(padding)]
    out = []
    for p in padding:
        out.append((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])))
    return out


def _spatial_axes(layer, rank) -> list[int]:
    """Keras axes of the spatial dims (1..rank-2 channels-last, 2..rank-1 channels-first)."""
    return list(range(1, rank - 1)) if channels_last(layer) else list(range(2, rank))


@TABLE.register(keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)
def zero_pad(ctx, layer, xs):
    x = one(xs)
    pairs = _keras_pairs(layer.padding, x.rank - 2)
    by_graph_axis = {x.graph_axis(k): p for k, p in zip(_spatial_axes(layer, x.rank), pairs)}
    pads = [by_graph_axis.get(i, (0, 0)) for i in range(1, x.rank)]
    return ctx.emit("pad", [x], attrs={"pads": pads, "value": 0.0}, order=x.order)


@TABLE.register(keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Cropping3D)
def crop(ctx, layer, xs):
    """One slice per cropped axis, the last one named after the layer."""
    x = one(xs)
    pairs = _keras_pairs(layer.cropping, x.rank - 2)
    todo = [(k, lo, hi) for k, (lo, hi) in zip(_spatial_axes(layer, x.rank), pairs) if lo or hi]
    if not todo:
        return ctx.emit("identity", [x], order=x.order)
    for j, (k, lo, hi) in enumerate(todo):
        axis = x.graph_axis(k)
        size = x.shape[axis]
        name = None if j == len(todo) - 1 else ctx.sub(f"axis{k}")
        x = ctx.emit("slice", [x], attrs={"axis": axis, "start": lo, "stop": size - hi, "step": None}, name=name,
                     order=x.order)
    return x
