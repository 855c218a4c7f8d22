"""Keras converters of the layers with weights: Dense, convolutions (plain, transposed, depthwise,
separable), BatchNormalization and Embedding.

Keras keeps kernels as (*kernel, in, out) and images channels-last; the graph's conv ops want
(out, in, *kernel) weights and channel-first values, so convolutions ask the translator for their input
channel-first (one shared transpose) and leave their output so for the next conv or pool.
"""
from __future__ import annotations

import keras
import numpy as np

from .common import TABLE, Unsupported, as_numpy, channels_last, one
from .elementwise import fused_activation


def _conv_weight(k: np.ndarray, n: int) -> np.ndarray:
    """Keras (*kernel, a, b) as the graph's (b, a, *kernel)."""
    return np.transpose(k, (n + 1, n) + tuple(range(n))).copy()


def _bias(layer):
    return as_numpy(layer.bias) if layer.use_bias else None


@TABLE.register(keras.layers.Dense)
def dense(ctx, layer, xs):
    x = one(xs)
    if x.rank > 2:
        x = ctx.keras_order(x)
    w = as_numpy(layer.kernel)      # with LoRA enabled, the property merges the LoRA factors
    if getattr(layer, "quantization_mode", None):
        raise Unsupported(f"quantized ({layer.quantization_mode}) kernels are not translated")
    y = ctx.emit("linear", [x], params={"weight": w.T.copy(), "bias": _bias(layer)}, order=x.order)
    return fused_activation(ctx, layer, y)


def _conv_padding(ctx, layer, x, kernel, dilation):
    """Keras padding as the graph's; 'causal' (Conv1D) becomes a pad node before a valid conv."""
    pad = layer.padding
    if pad in ("valid", "same"):
        return x, pad
    if pad == "causal":
        left = (kernel[0] - 1) * dilation[0]
        pads = [(0, 0)] * (x.rank - 2) + [(left, 0)]
        return ctx.emit("pad", [x], attrs={"pads": pads, "value": 0.0}, name=ctx.sub("causal_pad"),
                        order=x.order), "valid"
    raise Unsupported(f"padding {pad!r}")


@TABLE.register(keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
def conv(ctx, layer, xs):
    x = one(xs)
    n = x.rank - 2
    x = ctx.channels_first(x, channels_last(layer))
    w = _conv_weight(as_numpy(layer.kernel), n)          # Keras (*kernel, in/groups, out)
    b = _bias(layer)
    dilation = tuple(layer.dilation_rate)
    x, pad = _conv_padding(ctx, layer, x, w.shape[2:], dilation)
    y = ctx.emit("conv", [x], attrs={"stride": tuple(layer.strides), "padding": pad, "dilation": dilation,
                                     "groups": int(getattr(layer, "groups", 1))},
                 params={"weight": w, "bias": b}, order=x.order)
    return fused_activation(ctx, layer, y)


@TABLE.register(keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
def conv_transpose(ctx, layer, xs):
    """Keras's transposed conv is TensorFlow's conv input gradient for the output size Keras computes:
    the graph's conv_transpose crops (before, after) = the SAME split of what exceeds that size, or adds
    output_padding where the size exceeds the full transposed output."""
    x = one(xs)
    cl = channels_last(layer)
    n = x.rank - 2
    x = ctx.channels_first(x, cl)
    w = _conv_weight(as_numpy(layer.kernel), n)          # Keras (*kernel, out, in)
    b = _bias(layer)
    stride, dilation = tuple(layer.strides), tuple(layer.dilation_rate)
    spatial, channels = tuple(x.shape[2:]), x.shape[1]
    out = layer.compute_output_shape((None, *spatial, channels) if cl else (None, channels, *spatial))
    out = tuple(out[1:-1] if cl else out[2:])
    pads, extra = [], []
    for size, o, kk, s, d in zip(spatial, out, w.shape[2:], stride, dilation):
        full = (size - 1) * s + (kk - 1) * d + 1
        total = max(full - o, 0)
        pads.append((total // 2, total - total // 2))
        extra.append(max(o - full, 0))
    y = ctx.emit("conv_transpose", [x], attrs={"stride": stride, "padding": pads, "output_padding": tuple(extra),
                                               "dilation": dilation},
                 params={"weight": w, "bias": b}, order=x.order)
    return fused_activation(ctx, layer, y)


def _depthwise_weight(k: np.ndarray) -> np.ndarray:
    """Keras (*kernel, in, multiplier) as a grouped conv weight (in*multiplier, 1, *kernel), channel-major."""
    n = k.ndim - 2
    flat = k.reshape(k.shape[:n] + (k.shape[n] * k.shape[n + 1],))
    return np.transpose(flat, (n,) + tuple(range(n)))[:, None].copy()


@TABLE.register(keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
def depthwise(ctx, layer, xs):
    x = ctx.channels_first(one(xs), channels_last(layer))
    k = as_numpy(layer.kernel)
    w = _depthwise_weight(k)
    b = _bias(layer)
    dilation = tuple(layer.dilation_rate)
    x, pad = _conv_padding(ctx, layer, x, w.shape[2:], dilation)
    y = ctx.emit("conv", [x], attrs={"stride": tuple(layer.strides), "padding": pad, "dilation": dilation,
                                     "groups": int(k.shape[-2])}, params={"weight": w, "bias": b}, order=x.order)
    return fused_activation(ctx, layer, y)


@TABLE.register(keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
def separable(ctx, layer, xs):
    """A depthwise conv (``layer:depthwise``) then a pointwise one, as Keras computes it."""
    x = ctx.channels_first(one(xs), channels_last(layer))
    dk = as_numpy(layer.depthwise_kernel)
    pk = as_numpy(layer.pointwise_kernel)                 # (1, ..., in*mult, out)
    n = dk.ndim - 2
    dilation = tuple(layer.dilation_rate)
    x, pad = _conv_padding(ctx, layer, x, dk.shape[:n], dilation)
    d = ctx.emit("conv", [x], attrs={"stride": tuple(layer.strides), "padding": pad, "dilation": dilation,
                                     "groups": int(dk.shape[-2])}, params={"weight": _depthwise_weight(dk)},
                 name=ctx.sub("depthwise"), order=x.order)
    pw = _conv_weight(pk, n)
    b = _bias(layer)
    y = ctx.emit("conv", [d], attrs={"stride": 1, "padding": 0}, params={"weight": pw, "bias": b}, order=d.order)
    return fused_activation(ctx, layer, y)


@TABLE.register(keras.layers.BatchNormalization)
def batch_norm(ctx, layer, xs):
    """Inference batch norm with the moving statistics (renorm too), over the axis Keras names, wherever
    the value keeps it."""
    x = one(xs)
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if len(axes) != 1:
        raise Unsupported(f"normalises over several axes {list(axes)}")
    axis = axes[0] % x.rank
    params = {"mean": as_numpy(layer.moving_mean), "var": as_numpy(layer.moving_variance),
              "scale": as_numpy(layer.gamma) if layer.scale else None,
              "bias": as_numpy(layer.beta) if layer.center else None}
    ours = x.graph_axis(axis)
    if ours == x.rank - 1 and ours > 1:
        ours = -1        # features last (Dense on a sequence): the fold pass folds axis -1 into a linear
    return ctx.emit("batch_norm", [x], attrs={"eps": float(layer.epsilon), "axis": ours}, params=params,
                    order=x.order)


@TABLE.register(keras.layers.Embedding, reads_mask=True)
def embedding(ctx, layer, xs):
    """A lookup of the graph input's token ids; ``mask_zero=True`` adds Keras's mask (ids != 0)."""
    x = ctx.keras_order(one(xs))
    if x.name != ctx.input_name or not ctx.indices:
        raise Unsupported("looks up indices computed inside the model; the graph's indices are its input")
    if getattr(layer, "quantization_mode", None):
        raise Unsupported(f"quantized ({layer.quantization_mode}) embeddings are not translated")
    y = ctx.emit("embedding", [x], params={"weight": as_numpy(layer.embeddings)})
    if getattr(layer, "mask_zero", False):      # Keras's mask: ids != 0, elementwise
        y.mask = ctx.emit("mask", [x], attrs={"value": 0.0, "axes": None}, name=ctx.sub("mask"), order=x.order)
    return y
