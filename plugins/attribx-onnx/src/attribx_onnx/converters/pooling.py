"""Pooling and reductions: MaxPool, AveragePool (ceil_mode as extra right padding), the global pools,
ReduceMean and ReduceSum over axes other than the batch axis."""
from __future__ import annotations

from . import TABLE, Unsupported
from .common import axes_input_or_attr, ints, padding, window, x_of


def _pool_pads(attrs, spatial, kernel, strides, dilations):
    """Pads as pairs; ceil_mode=1 becomes extra after-padding where it adds an output position.

    Returns (pairs, whether extra padding was added). As in the runtimes, a last window that would start
    in the right padding is dropped.
    """
    pairs = list(padding(attrs, spatial, kernel, strides, dilations))
    extra_any = False
    if not int(attrs.get("ceil_mode", 0)):
        return pairs, extra_any
    for i, (size, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations)):
        lo, hi = pairs[i]
        eff = (k - 1) * d + 1
        span = size + lo + hi - eff
        out = -(-span // s) + 1
        if (out - 1) * s >= size + lo:
            out -= 1
        extra = (out - 1) * s + eff - (size + lo + hi)
        if extra > 0:
            pairs[i] = (lo, hi + extra)
            extra_any = True
    return pairs, extra_any


def _pool_geometry(x, attrs):
    n = x.rank - 2
    if n < 1:
        raise Unsupported(f"pooling needs an input of rank >= 3, got {x.shape}")
    kernel = tuple(ints(attrs["kernel_shape"]))
    strides, dilations = window(attrs, n, "strides"), window(attrs, n, "dilations")
    pads, extra = _pool_pads(attrs, x.shape[2:], kernel, strides, dilations)
    return kernel, strides, dilations, pads, extra


@TABLE.register("MaxPool")
def max_pool(ctx, node, attrs):
    x = x_of(ctx, node)
    kernel, strides, dilations, pads, _ = _pool_geometry(x, attrs)
    y = ctx.emit("max_pool", [x], attrs={"kernel_size": kernel, "stride": strides, "padding": pads,
                                         "dilation": dilations})
    return [y] + [None] * (len(node.output) - 1)      # Indices: an error if anything reads them


@TABLE.register("AveragePool")
def avg_pool(ctx, node, attrs):
    x = x_of(ctx, node)
    kernel, strides, dilations, pads, extra = _pool_geometry(x, attrs)
    if any(d != 1 for d in dilations):
        raise Unsupported(f"dilations {dilations}: the graph's avg_pool has no dilation")
    include = bool(int(attrs.get("count_include_pad", 0)))
    if extra and include:
        raise Unsupported("ceil_mode=1 with count_include_pad=1 adds windows whose divisor counts padding "
                          "the graph's avg_pool cannot express (export with ceil_mode=0 or count_include_pad=0)")
    return ctx.emit("avg_pool", [x], attrs={"kernel_size": kernel, "stride": strides, "padding": pads,
                                            "count_include_pad": include})


@TABLE.register("GlobalAveragePool")
def global_avg_pool(ctx, node, attrs):
    return ctx.emit("global_avg_pool", [x_of(ctx, node)], attrs={"keepdims": True})


@TABLE.register("GlobalMaxPool")
def global_max_pool(ctx, node, attrs):
    x = x_of(ctx, node)
    spatial = tuple(x.shape[2:])
    return ctx.emit("max_pool", [x], attrs={"kernel_size": spatial, "stride": 1, "padding": 0})


def _reduce(op: str, axes_input_since: int):
    def convert(ctx, node, attrs):
        x = x_of(ctx, node)
        axes = axes_input_or_attr(ctx, node, attrs, axes_input_since)
        if not axes:
            if int(attrs.get("noop_with_empty_axes", 0)):
                return x
            raise Unsupported("reduces over all axes, the batch axis included")
        axes = tuple(sorted({a % x.rank for a in axes}))
        if 0 in axes:
            raise Unsupported("reduces over the batch axis")
        out = ctx.emit(op, [x], attrs={"axes": axes, "keepdims": bool(int(attrs.get("keepdims", 1)))})
        if op == "reduce_sum" and x.name in ctx.counts:
            ctx.counts.add(out.name)             # a count of mask entries (a sequence length) stays one
        return out
    convert.__name__ = convert.__qualname__ = op
    convert.__doc__ = f"The graph's {op!r}; axes are an input from opset {axes_input_since} on."
    return convert


TABLE.register("ReduceMean")(_reduce("reduce_mean", 18))
TABLE.register("ReduceSum")(_reduce("reduce_sum", 13))
