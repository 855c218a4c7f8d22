"""Keras converters of pooling layers: max and average pooling, global pooling (1-3d).

Pooling reads channel-first values like the graph's conv ops, so a conv-pool-conv chain needs no
transpose between its layers.
"""
from __future__ import annotations

import keras

from .common import TABLE, channels_last, one


def _pool(ctx, layer, xs, op: str):
    x = ctx.channels_first(one(xs), channels_last(layer))
    attrs = {"kernel_size": tuple(layer.pool_size), "stride": tuple(layer.strides), "padding": layer.padding}
    if op == "avg_pool":
        attrs["count_include_pad"] = False      # Keras 'same' averages over the real inputs only
    return ctx.emit(op, [x], attrs=attrs, order=x.order)


@TABLE.register(keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D)
def max_pool(ctx, layer, xs):
    return _pool(ctx, layer, xs, "max_pool")


@TABLE.register(keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D)
def avg_pool(ctx, layer, xs):
    return _pool(ctx, layer, xs, "avg_pool")


@TABLE.register(keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
                keras.layers.GlobalAveragePooling3D)
def global_avg_pool(ctx, layer, xs):
    x = ctx.channels_first(one(xs), channels_last(layer))
    keep = bool(getattr(layer, "keepdims", False))
    return ctx.emit("global_avg_pool", [x], attrs={"keepdims": keep}, order=x.order if keep else None)


@TABLE.register(keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D,
                keras.layers.GlobalMaxPooling3D)
def global_max_pool(ctx, layer, xs):
    """A max pool over the whole spatial extent (flattened to (N, C) unless keepdims)."""
    x = ctx.channels_first(one(xs), channels_last(layer))
    spatial = tuple(x.shape[2:])
    attrs = {"kernel_size": spatial, "stride": 1, "padding": 0}
    if bool(getattr(layer, "keepdims", False)):
        return ctx.emit("max_pool", [x], attrs=attrs, order=x.order)
    p = ctx.emit("max_pool", [x], attrs=attrs, name=ctx.sub("pool"), order=x.order)
    return ctx.emit("flatten", [p], attrs={"start_dim": 1, "end_dim": -1})
