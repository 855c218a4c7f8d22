"""Pooling: max and average windows (with torch's ceil mode and padding counts) and adaptive pooling; resampling
(``F.interpolate``, ``nn.Upsample``)."""
from __future__ import annotations

import numpy as np
import torch.nn as nn
import torch.nn.functional as F

from ..values import Unsupported, compact, compact_pads, ntuple
from .base import TABLE


def _window(x, kernel, stride, padding, dilation, ceil_mode, what):
    """Per spatial dim: kernel, stride, dilation, (before, after) pads with ceil mode's extra, extra."""
    n = len(x.shape) - 2
    if n < 1:
        raise Unsupported(f"{what} on an input of rank {len(x.shape)}; the graph needs (N, C, *spatial)")
    kernel = ntuple(kernel, n, "kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) \
        else ntuple(stride, n, "stride")
    padding = ntuple(padding, n, "padding")
    dilation = ntuple(dilation, n, "dilation")
    pairs, extras = [], []
    for size, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation):
        span = size + 2 * p - d * (k - 1) - 1
        out = span // s + 1
        if ceil_mode:
            out = -(-span // s) + 1
            if (out - 1) * s >= size + p:
                out -= 1
        extra = max(0, (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p))
        pairs.append((p, p + extra))
        extras.append(extra)
    return kernel, stride, dilation, pairs, extras


@TABLE.register(F.max_pool1d, F.max_pool2d, F.max_pool3d)
def max_pool(ctx, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    x = ctx.tensor(input)
    if return_indices:
        raise Unsupported("return_indices=True (the indices are not a graph value)")
    kernel, stride, dilation, pairs, extras = _window(x, kernel_size, stride, padding, dilation, ceil_mode,
                                                      "max pooling")
    # ceil_mode: torch's extra windows are windows over -inf padding after the input; exact here
    return ctx.emit("max_pool", [x], ctx.out_shape(),
                    {"kernel_size": compact(kernel), "stride": compact(stride),
                     "padding": compact_pads(pairs), "dilation": compact(dilation)})


@TABLE.register(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
def max_pool_module(ctx, m, input):
    return max_pool(ctx, input, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)


@TABLE.register(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
def avg_pool(ctx, input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None):
    x = ctx.tensor(input)
    if divisor_override is not None:
        raise Unsupported(f"divisor_override={divisor_override}")
    kernel, stride, _, pairs, extras = _window(x, kernel_size, stride, padding, 1, ceil_mode, "average pooling")
    count = bool(count_include_pad)
    if any(extras):
        # torch counts the zero padding but not ceil mode's extra positions: with no padding, or with
        # count_include_pad=False, that is the count of real positions, which the graph op has
        if count and any(p for p, _ in pairs):
            raise Unsupported(f"ceil_mode=True with count_include_pad=True and padding {padding} adds a "
                              f"partial window here (input {x.shape[2:]}) whose divisor the graph's "
                              f"avg_pool cannot express")
        count = False
    return ctx.emit("avg_pool", [x], ctx.out_shape(),
                    {"kernel_size": compact(kernel), "stride": compact(stride),
                     "padding": compact_pads(pairs), "count_include_pad": count})


@TABLE.register(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def avg_pool_module(ctx, m, input):
    return avg_pool(ctx, input, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                    getattr(m, "divisor_override", None))


def _adaptive_sizes(x, output_size):
    n = len(x.shape) - 2
    if n < 1:
        raise Unsupported(f"adaptive pooling on an input of rank {len(x.shape)}")
    if isinstance(output_size, (int, np.integer)) or output_size is None:
        output_size = (output_size,) * n
    output_size = tuple(output_size)
    if len(output_size) == 1 and n > 1:
        output_size = output_size * n
    if len(output_size) != n:
        raise Unsupported(f"output_size {output_size} for {n} spatial dims")
    ins = x.shape[2:]
    return ins, tuple(i if o is None else int(o) for i, o in zip(ins, output_size))


def _axis_letter(n: int, a: int) -> str:
    return {1: "l", 2: "hw", 3: "dhw"}.get(n, "")[a:a + 1] or f"a{a}"


@TABLE.register(F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
def adaptive_avg_pool(ctx, input, output_size):
    x = ctx.tensor(input)
    ins, outs = _adaptive_sizes(x, output_size)
    if ins == outs:
        return x
    if all(o == 1 for o in outs):
        return ctx.emit("global_avg_pool", [x], ctx.out_shape(), {"keepdims": True})
    if all(i % o == 0 for i, o in zip(ins, outs)):
        k = tuple(i // o for i, o in zip(ins, outs))
        return ctx.emit("avg_pool", [x], ctx.out_shape(), {"kernel_size": compact(k), "stride": compact(k),
                                                           "padding": 0, "count_include_pad": True})
    # overlapping or repeating windows: per spatial axis, the mean of each window, concatenated
    # (a rectangle's mean is the mean over one axis of the means over the other: exact)
    todo = [a for a, (i, o) in enumerate(zip(ins, outs)) if i != o]
    cur = x
    for j, a in enumerate(todo):
        axis = a + 2
        size, out = ins[a], outs[a]
        pieces = []
        for i in range(out):
            lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
            shp = list(cur.shape)
            shp[axis] = hi - lo
            piece = ctx.emit("slice", [cur], shp, {"axis": axis, "start": lo, "stop": hi, "step": None},
                             name=ctx.sub(f"{_axis_letter(len(ins), a)}{i}"))
            if hi - lo > 1:
                shp[axis] = 1
                piece = ctx.emit("reduce_mean", [piece], shp, {"axes": (axis,), "keepdims": True},
                                 name=ctx.sub(f"{_axis_letter(len(ins), a)}{i}_mean"))
            pieces.append(piece)
        shp = list(cur.shape)
        shp[axis] = out
        last = j == len(todo) - 1
        cur = ctx.emit("concat", pieces, shp, {"axis": axis},
                       name=None if last else ctx.sub(f"{_axis_letter(len(ins), a)}"))
    return cur


@TABLE.register(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
def adaptive_avg_pool_module(ctx, m, input):
    return adaptive_avg_pool(ctx, input, m.output_size)


@TABLE.register(F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)
def adaptive_max_pool(ctx, input, output_size, return_indices=False):
    x = ctx.tensor(input)
    if return_indices:
        raise Unsupported("return_indices=True (the indices are not a graph value)")
    ins, outs = _adaptive_sizes(x, output_size)
    if ins == outs:
        return x
    if not all(i % o == 0 for i, o in zip(ins, outs)):
        raise Unsupported(f"adaptive max pooling from {ins} to {outs}: not a whole number of windows per "
                          f"output, which the graph's max_pool cannot express")
    k = tuple(i // o for i, o in zip(ins, outs))
    return ctx.emit("max_pool", [x], ctx.out_shape(), {"kernel_size": compact(k), "stride": compact(k),
                                                       "padding": 0, "dilation": 1})


@TABLE.register(nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
def adaptive_max_pool_module(ctx, m, input):
    return adaptive_max_pool(ctx, input, m.output_size, m.return_indices)


# ----------------------------------------------------------------------------------------------
# resampling

_RESIZE_MODES = {"nearest": "nearest", "linear": "linear", "bilinear": "linear", "trilinear": "linear"}


@TABLE.register(F.interpolate)
def interpolate(ctx, input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                recompute_scale_factor=None, antialias=False):
    """A ``resize`` node with torch's source indices: nearest, and (bi/tri)linear with or without
    align_corners; a scale_factor keeps torch's 1 / scale_factor for the indices unless recomputed."""
    x = ctx.tensor(input)
    n = len(x.shape) - 2
    if n < 1:
        raise Unsupported(f"interpolate on an input of rank {len(x.shape)}; it needs (N, C, *spatial)")
    if mode not in _RESIZE_MODES:
        raise Unsupported(f"interpolate mode {mode!r}; the graph's resize has nearest and (bi/tri)linear")
    if antialias:
        raise Unsupported("antialias=True (a low-pass filter before downsampling)")
    scales = None
    if scale_factor is not None and not recompute_scale_factor and not (mode != "nearest" and align_corners):
        factors = (scale_factor,) * n if isinstance(scale_factor, (int, float)) else tuple(scale_factor)
        scales = tuple(1.0 / float(f) for f in factors)
    out = ctx.out_shape()
    return ctx.emit("resize", [x], out, {"size": tuple(out[2:]), "mode": _RESIZE_MODES[mode],
                                         "align_corners": bool(align_corners) and mode != "nearest",
                                         "scales": scales})


@TABLE.register(nn.Upsample)
def upsample_module(ctx, m, input):
    """nn.Upsample, and UpsamplingNearest2d / UpsamplingBilinear2d (align_corners=True) that share its forward."""
    return interpolate(ctx, input, m.size, m.scale_factor, m.mode, m.align_corners, m.recompute_scale_factor)
