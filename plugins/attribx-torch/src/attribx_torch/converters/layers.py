"""Layers with parameters: linear, convolution, transposed convolution, batch norm, embedding.

Each construct has one converter for the function (torch's arguments by name) and one for the module,
which passes the module's settings to it.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..values import Swapped, Unsupported, compact, compact_pads, is_t, ntuple, swap01
from .base import TABLE


@TABLE.register(F.linear)
def linear(ctx, input, weight, bias=None):
    x = ctx.tensor(input)
    if len(x.shape) < 2:
        raise Unsupported(f"linear on an input of rank {len(x.shape)}: the batch axis would be the features")
    return ctx.emit("linear", [x], ctx.out_shape(), {},
                    {"weight": ctx.param(weight, "weight"), "bias": ctx.param(bias, "bias")})


@TABLE.register(nn.Linear, time_major="elementwise")
def linear_module(ctx, m, input):
    return linear(ctx, input, m.weight, m.bias)


@TABLE.register(F.conv1d, F.conv2d, F.conv3d)
def conv(ctx, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    x = ctx.tensor(input)
    w = ctx.param(weight, "weight")
    n = w.ndim - 2
    if len(x.shape) != n + 2:
        raise Unsupported(f"conv{n}d on an input of rank {len(x.shape)}; the graph needs (N, C, *spatial)")
    kernel = w.shape[2:]
    stride = ntuple(stride, n, "stride")
    dilation = ntuple(dilation, n, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            pairs = [(0, 0)] * n
        elif padding == "same":
            pairs = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pairs.append((total // 2, total - total // 2))
        else:
            raise Unsupported(f"padding {padding!r}")
    else:
        pairs = [(p, p) for p in ntuple(padding, n, "padding")]
    return ctx.emit("conv", [x], ctx.out_shape(),
                    {"stride": compact(stride), "padding": compact_pads(pairs), "dilation": compact(dilation),
                     "groups": int(groups)},
                    {"weight": w, "bias": ctx.param(bias, "bias")})


def _zero_padding(m):
    if m.padding_mode != "zeros":
        raise Unsupported(f"padding_mode={m.padding_mode!r} (only zero padding is in the graph's op set)")


@TABLE.register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_module(ctx, m, input):
    _zero_padding(m)
    return conv(ctx, ctx.tensor(input), m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


@TABLE.register(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def conv_transpose(ctx, input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    x = ctx.tensor(input)
    w = ctx.param(weight, "weight")
    n = w.ndim - 2
    if len(x.shape) != n + 2:
        raise Unsupported(f"conv_transpose{n}d on an input of rank {len(x.shape)}; the graph needs (N, C, *spatial)")
    if isinstance(padding, str):
        raise Unsupported(f"padding {padding!r}")
    return ctx.emit("conv_transpose", [x], ctx.out_shape(),
                    {"stride": compact(ntuple(stride, n, "stride")),
                     "padding": compact(ntuple(padding, n, "padding")),
                     "output_padding": compact(ntuple(output_padding, n, "output_padding")),
                     "dilation": compact(ntuple(dilation, n, "dilation")), "groups": int(groups)},
                    {"weight": w, "bias": ctx.param(bias, "bias")})


@TABLE.register(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_transpose_module(ctx, m, input, output_size=None):
    _zero_padding(m)
    if output_size is not None:
        raise Unsupported("output_size given at call time (set output_padding on the module instead)")
    return conv_transpose(ctx, ctx.tensor(input), m.weight, m.bias, m.stride, m.padding, m.output_padding,
                          m.groups, m.dilation)


@TABLE.register(F.batch_norm)
def batch_norm(ctx, input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
               eps=1e-5):
    x = ctx.tensor(input)
    if training or running_mean is None or running_var is None:
        raise Unsupported("batch norm with batch statistics (no running stats, or training=True); the graph "
                          "needs inference batch norm")
    if len(x.shape) < 2:
        raise Unsupported(f"batch norm on an input of rank {len(x.shape)}")
    return ctx.emit("batch_norm", [x], ctx.out_shape(), {"eps": float(eps), "axis": 1},
                    {"mean": ctx.param(running_mean), "var": ctx.param(running_var), "scale": ctx.param(weight),
                     "bias": ctx.param(bias)})


@TABLE.register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def batch_norm_module(ctx, m, input):
    x = ctx.tensor(input)
    if not m.track_running_stats or m.running_mean is None:
        raise Unsupported("track_running_stats=False: batch norm uses the batch's statistics even in eval "
                          "mode, which mixes samples")
    return batch_norm(ctx, x, m.running_mean, m.running_var, m.weight if m.affine else None,
                      m.bias if m.affine else None, eps=m.eps)


@TABLE.register(F.embedding, time_major="aware")
def embedding(ctx, input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    if max_norm is not None:
        raise Unsupported(f"max_norm={max_norm} renormalises the weight at lookup time")
    ids = ctx.input_names[0]       # the first input, which holds the indices
    if isinstance(input, Swapped) and input.base is not None and input.base.name == ids:
        return Swapped(ctx.emit("embedding", [input.base], swap01(ctx.out_shape()), {},
                                {"weight": ctx.param(weight, "weight")}))
    if not is_t(input) or input.name != ids:
        raise Unsupported("looks up indices computed inside the model; the graph's indices are its input")
    return ctx.emit("embedding", [input], ctx.out_shape(), {}, {"weight": ctx.param(weight, "weight")})


@TABLE.register(nn.Embedding, time_major="aware")
def embedding_module(ctx, m, input):
    return embedding(ctx, input, m.weight, max_norm=m.max_norm)
