"""numpy kernels (forward and vector-Jacobian product) for every built-in op.

These are the reference implementations: every other engine is tested against them, so they favour
clarity, but the window ops (conv, pooling) are vectorised over batch, channels and output positions
and only loop over the (few) kernel offsets, so real models run at usable speed.

All kernels keep the input's floating dtype: parameters are cast to it and python scalars stay weak,
so float32 in gives float32 out. Geometry (padding, strides, output sizes) comes from
:mod:`attribx.ops`, so every engine agrees with shape inference.
"""
from __future__ import annotations

import itertools
import math
from functools import reduce
from typing import Iterator

import numpy as np

from ..ops import (conv_geometry, mask_axes, norm_axes, norm_axis, pad_widths, pool_geometry, reduce_axes,
                   slice_bounds, window_output_size)
from .base import CONSTANT_KERNEL, Kernel, fill_vjp, quotient_kernel, transposed_conv_kernel
from .vision_kernels import KERNELS as _VISION_KERNELS

__all__ = ["KERNELS", "unbroadcast"]


# ----------------------------------------------------------------------------------------------
# helpers


def _param(params, key, like):
    """A parameter in the dtype of ``like`` (a no-op when the engine already converted it)."""
    p = params.get(key)
    if p is None:
        return None
    p = np.asarray(p)
    if np.issubdtype(like.dtype, np.floating) and p.dtype != like.dtype:
        p = p.astype(like.dtype)
    return p


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the VJP of numpy broadcasting ``shape`` to ``grad.shape``."""
    shape = tuple(shape)
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (s, g) in enumerate(zip(shape, grad.shape)) if s == 1 and g != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _window_offsets(kernel, stride, dilation, out_spatial) -> Iterator[tuple[int, tuple, tuple]]:
    """(flat index, offset, spatial slices) for each kernel offset, in row-major kernel order.

    The slices pick, from the padded input, the input element that this kernel offset sees in every
    output window at once; the number of offsets is small, so looping over them is cheap.
    """
    for flat, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        slices = tuple(
            slice(o * d, o * d + (n - 1) * s + 1, s)
            for o, d, s, n in zip(offset, dilation, stride, out_spatial)
        )
        yield flat, offset, slices


def _out_spatial(in_spatial, kernel, stride, dilation, pads):
    return tuple(
        window_output_size(in_spatial[i], kernel[i], stride[i], dilation[i], pads[i]) for i in range(len(kernel))
    )


def _pad_spatial(x, pads, value):
    if not any(lo or hi for lo, hi in pads):
        return x
    return np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads], mode="constant", constant_values=value)


def _crop_spatial(xp, pads, in_spatial):
    return xp[(slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, in_spatial))]


def _padded_zeros(x, pads, dtype):
    shape = x.shape[:2] + tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[2:], pads))
    return np.zeros(shape, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# weighted layers


def _linear_forward(attrs, inputs, params):
    (x,) = inputs
    y = x @ _param(params, "weight", x).T
    b = _param(params, "bias", x)
    return y if b is None else y + b


def _linear_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [grad @ _param(params, "weight", x)]


def _conv_setup(attrs, x, w):
    _, kernel, stride, dilation, pads = conv_geometry(attrs, x.shape, w.shape)
    out_spatial = _out_spatial(x.shape[2:], kernel, stride, dilation, pads)
    g = int(attrs["groups"])
    return kernel, stride, dilation, pads, out_spatial, g


def _conv_forward(attrs, inputs, params):
    """Cross-correlation as one small batched matmul per kernel offset (no im2col buffer)."""
    (x,) = inputs
    w = _param(params, "weight", x)
    kernel, stride, dilation, pads, out_spatial, g = _conv_setup(attrs, x, w)
    N = x.shape[0]
    O, Cg = w.shape[:2]
    Og = O // g
    P = math.prod(out_spatial)
    xp = _pad_spatial(x, pads, 0)
    out = np.zeros((N, g, Og, P), dtype=np.result_type(x, w))
    for _, offset, slices in _window_offsets(kernel, stride, dilation, out_spatial):
        xs = xp[(slice(None), slice(None)) + slices].reshape(N, g, Cg, P)
        wk = w[(slice(None), slice(None)) + offset].reshape(g, Og, Cg)
        if Cg == 1:  # depthwise-like: a broadcast product beats N*g tiny matmuls
            out += wk[None] * xs
        else:
            out += np.matmul(wk, xs)
    out = out.reshape((N, O) + out_spatial)
    b = _param(params, "bias", x)
    if b is not None:
        out += b.reshape((1, O) + (1,) * len(out_spatial))
    return out


def _conv_vjp(attrs, inputs, params, output, grad):
    """The transposed conv: scatter-add W^T grad into the padded input per offset, then crop."""
    (x,) = inputs
    w = _param(params, "weight", x)
    kernel, stride, dilation, pads, out_spatial, g = _conv_setup(attrs, x, w)
    N, C = x.shape[:2]
    O, Cg = w.shape[:2]
    Og = O // g
    P = math.prod(out_spatial)
    gr = np.asarray(grad).reshape(N, g, Og, P)
    gxp = _padded_zeros(x, pads, np.result_type(gr, w))
    for _, offset, slices in _window_offsets(kernel, stride, dilation, out_spatial):
        wk = w[(slice(None), slice(None)) + offset].reshape(g, Og, Cg)
        if Og == 1:
            gs = wk.transpose(0, 2, 1)[None] * gr
        else:
            gs = np.matmul(wk.transpose(0, 2, 1), gr)
        gxp[(slice(None), slice(None)) + slices] += gs.reshape((N, C) + out_spatial)
    return [_crop_spatial(gxp, pads, x.shape[2:])]


def _embedding_forward(attrs, inputs, params):
    (idx,) = inputs
    return np.asarray(params["weight"])[np.asarray(idx, dtype=np.intp)]


def _embedding_vjp(attrs, inputs, params, output, grad):
    """Indices are not differentiable: what comes back per index is the signal summed over the features
    (for LRP exactly the token's relevance; for gradients the derivative along the all-ones direction)."""
    return [np.asarray(grad).sum(axis=-1)]


def _placeholder(shape, like):
    return np.broadcast_to(np.zeros((), dtype=np.asarray(like).dtype), shape)


def _add_channel_bias(y, b):
    return y + np.asarray(b, dtype=y.dtype).reshape((1, -1) + (1,) * (y.ndim - 2))


# ----------------------------------------------------------------------------------------------
# pooling


def _pool_setup(attrs, x):
    kernel, stride, dilation, pads = pool_geometry(attrs, x.shape)
    out_spatial = _out_spatial(x.shape[2:], kernel, stride, dilation, pads)
    return kernel, stride, dilation, pads, out_spatial


def _max_pool_argmax(attrs, x):
    """Window maxima and the flat kernel offset of each maximum (first one on ties, as torch)."""
    kernel, stride, dilation, pads, out_spatial = _pool_setup(attrs, x)
    xp = _pad_spatial(x, pads, -np.inf)
    best = idx = None
    for flat, _, slices in _window_offsets(kernel, stride, dilation, out_spatial):
        v = xp[(slice(None), slice(None)) + slices]
        if best is None:
            best = v.copy()
            idx = np.zeros(v.shape, dtype=np.intp)
        else:
            better = v > best  # strict: an equal later value does not take over
            best[better] = v[better]
            idx[better] = flat
    return best, idx


def _max_pool_forward(attrs, inputs, params):
    (x,) = inputs
    return _max_pool_argmax(attrs, x)[0]


def _max_pool_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    kernel, stride, dilation, pads, out_spatial = _pool_setup(attrs, x)
    _, idx = _max_pool_argmax(attrs, x)
    gxp = _padded_zeros(x, pads, grad.dtype)
    for flat, _, slices in _window_offsets(kernel, stride, dilation, out_spatial):
        gxp[(slice(None), slice(None)) + slices] += np.where(idx == flat, grad, 0)
    return [_crop_spatial(gxp, pads, x.shape[2:])]


def _avg_divisor(attrs, x, kernel, stride, dilation, pads, out_spatial, dtype):
    """Kernel area, or (count_include_pad False) the number of real input positions per window."""
    if attrs["count_include_pad"] or not any(lo or hi for lo, hi in pads):
        return math.prod(kernel)
    ones = _pad_spatial(np.ones((1, 1) + x.shape[2:], dtype=dtype), pads, 0)
    count = np.zeros((1, 1) + out_spatial, dtype=dtype)
    for _, _, slices in _window_offsets(kernel, stride, dilation, out_spatial):
        count += ones[(slice(None), slice(None)) + slices]
    # a window lying wholly in padding (only possible with pads >= kernel) averages nothing: 0, not nan
    return np.maximum(count, 1)


def _avg_pool_forward(attrs, inputs, params):
    (x,) = inputs
    kernel, stride, dilation, pads, out_spatial = _pool_setup(attrs, x)
    xp = _pad_spatial(x, pads, 0)
    total = np.zeros(x.shape[:2] + out_spatial, dtype=x.dtype)
    for _, _, slices in _window_offsets(kernel, stride, dilation, out_spatial):
        total += xp[(slice(None), slice(None)) + slices]
    return total / _avg_divisor(attrs, x, kernel, stride, dilation, pads, out_spatial, x.dtype)


def _avg_pool_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    kernel, stride, dilation, pads, out_spatial = _pool_setup(attrs, x)
    share = grad / _avg_divisor(attrs, x, kernel, stride, dilation, pads, out_spatial, grad.dtype)
    gxp = _padded_zeros(x, pads, share.dtype)
    for _, _, slices in _window_offsets(kernel, stride, dilation, out_spatial):
        gxp[(slice(None), slice(None)) + slices] += share
    return [_crop_spatial(gxp, pads, x.shape[2:])]


def _global_avg_pool_forward(attrs, inputs, params):
    (x,) = inputs
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=bool(attrs["keepdims"]))


def _global_avg_pool_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    spatial = tuple(range(2, x.ndim))
    g = grad.reshape(x.shape[:2] + (1,) * len(spatial)) / math.prod(x.shape[2:])
    return [np.broadcast_to(g, x.shape).copy()]


# ----------------------------------------------------------------------------------------------
# batch norm


def _bn_params(attrs, x, params):
    """mean, var, scale, bias (scale and bias may be None) shaped to broadcast along ``axis``."""
    axis = norm_axis(attrs["axis"], x.ndim)
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return [None if p is None else p.reshape(shape)
            for p in (_param(params, k, x) for k in ("mean", "var", "scale", "bias"))]


def _batch_norm_forward(attrs, inputs, params):
    (x,) = inputs
    mean, var, scale, bias = _bn_params(attrs, x, params)
    y = (x - mean) / np.sqrt(var + attrs["eps"])
    if scale is not None:
        y = y * scale
    return y if bias is None else y + bias


def _batch_norm_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    _, var, scale, _ = _bn_params(attrs, x, params)
    mult = 1 / np.sqrt(var + attrs["eps"])
    return [grad * mult if scale is None else grad * (mult * scale)]


# ----------------------------------------------------------------------------------------------
# layer norm and RMS norm (transformers)


def _norm_setup(attrs, x, params):
    """(normalised axes, scale and bias shaped to broadcast over x, the number of normalised elements)."""
    axes = norm_axes(attrs, x.ndim)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    scale, bias = (None if p is None else p.reshape(shape) for p in (_param(params, k, x) for k in ("scale", "bias")))
    return axes, scale, bias, math.prod(x.shape[a] for a in axes)


def _layer_norm_parts(attrs, x, params):
    axes, scale, bias, _ = _norm_setup(attrs, x, params)
    centred = x - x.mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + attrs["eps"])
    return axes, scale, bias, centred * inv, inv


def _layer_norm_forward(attrs, inputs, params):
    _, scale, bias, n, _ = _layer_norm_parts(attrs, inputs[0], params)
    y = n if scale is None else n * scale
    return y if bias is None else y + bias


def _layer_norm_vjp(attrs, inputs, params, output, grad):
    axes, scale, _, n, inv = _layer_norm_parts(attrs, inputs[0], params)
    g = grad if scale is None else grad * scale
    return [inv * (g - g.mean(axis=axes, keepdims=True) - n * (g * n).mean(axis=axes, keepdims=True))]


def _rms_parts(attrs, x, params):
    axes, scale, _, _ = _norm_setup(attrs, x, params)
    inv = 1 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + attrs["eps"])
    return axes, scale, x * inv, inv


def _rms_norm_forward(attrs, inputs, params):
    _, scale, n, _ = _rms_parts(attrs, inputs[0], params)
    return n if scale is None else n * scale


def _rms_norm_vjp(attrs, inputs, params, output, grad):
    axes, scale, n, inv = _rms_parts(attrs, inputs[0], params)
    g = grad if scale is None else grad * scale
    return [inv * (g - n * (g * n).mean(axis=axes, keepdims=True))]


# ----------------------------------------------------------------------------------------------
# elementwise activations


def _relu_forward(attrs, inputs, params):
    return np.maximum(inputs[0], 0)


def _relu_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [np.where(x > 0, grad, 0)]  # 0 at x == 0, as torch


def _leaky_forward(attrs, inputs, params):
    (x,) = inputs
    return np.where(x >= 0, x, attrs["negative_slope"] * x)


def _leaky_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [np.where(x >= 0, grad, attrs["negative_slope"] * grad)]


def _tanh_forward(attrs, inputs, params):
    return np.tanh(inputs[0])


def _tanh_vjp(attrs, inputs, params, output, grad):
    y = np.tanh(inputs[0]) if output is None else output
    return [grad * (1 - y * y)]


def _sigmoid(x):
    # 0.5 (1 + tanh(x / 2)) equals 1 / (1 + exp(-x)) without overflow for large |x|
    return 0.5 * (1 + np.tanh(0.5 * x))


def _sigmoid_forward(attrs, inputs, params):
    return _sigmoid(inputs[0])


def _sigmoid_vjp(attrs, inputs, params, output, grad):
    y = _sigmoid(inputs[0]) if output is None else output
    return [grad * y * (1 - y)]


def _clip_forward(attrs, inputs, params):
    (x,) = inputs
    return np.clip(x, attrs["min"], attrs["max"])


def _clip_vjp(attrs, inputs, params, output, grad):
    """Gradient 1 strictly inside the bounds (0 at them, as torch's hardtanh)."""
    (x,) = inputs
    inside = np.ones(x.shape, bool)
    if attrs["min"] is not None:
        inside &= x > attrs["min"]
    if attrs["max"] is not None:
        inside &= x < attrs["max"]
    return [grad * inside]


def _elu_forward(attrs, inputs, params):
    (x,) = inputs
    a = x.dtype.type(attrs["alpha"])
    return np.where(x > 0, x, a * np.expm1(np.minimum(x, 0)))


def _elu_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    a = x.dtype.type(attrs["alpha"])
    return [grad * np.where(x > 0, 1, a * np.exp(np.minimum(x, 0))).astype(x.dtype)]


_SQRT2 = np.sqrt(2.0)
_TANH_C = np.sqrt(2.0 / np.pi)


def _erf(x):
    """erf without scipy in core (scipy's when installed)."""
    try:
        from scipy.special import erf      # optional dependency
        return erf(x).astype(x.dtype)
    except ImportError:   # pragma: no cover - exercised only without scipy
        return np.frompyfunc(math.erf, 1, 1)(x).astype(x.dtype)


def _gelu_forward(attrs, inputs, params):
    (x,) = inputs
    if attrs["approximate"] == "tanh":
        return (0.5 * x * (1 + np.tanh(_TANH_C * (x + 0.044715 * x ** 3)))).astype(x.dtype)
    return (0.5 * x * (1 + _erf(x / _SQRT2))).astype(x.dtype)


def _gelu_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    if attrs["approximate"] == "tanh":
        u = _TANH_C * (x + 0.044715 * x ** 3)
        t = np.tanh(u)
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _TANH_C * (1 + 3 * 0.044715 * x * x)
    else:
        d = 0.5 * (1 + _erf(x / _SQRT2)) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    return [(grad * d).astype(x.dtype)]


def _erf_forward(attrs, inputs, params):
    return _erf(inputs[0])


def _erf_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [(grad * (2 / np.sqrt(np.pi)) * np.exp(-x * x)).astype(x.dtype)]


def _silu_forward(attrs, inputs, params):
    (x,) = inputs
    return x * _sigmoid(x)


def _silu_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    s = _sigmoid(x)
    return [grad * (s * (1 + x * (1 - s)))]


def _softmax_forward(attrs, inputs, params):
    (x,) = inputs
    axis = norm_axis(attrs["axis"], x.ndim)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    y = _softmax_forward(attrs, inputs, params) if output is None else output
    axis = norm_axis(attrs["axis"], x.ndim)
    return [y * (grad - (grad * y).sum(axis=axis, keepdims=True))]


# ----------------------------------------------------------------------------------------------
# combinations of inputs


def _add_forward(attrs, inputs, params):
    return reduce(np.add, inputs)


def _add_vjp(attrs, inputs, params, output, grad):
    return [unbroadcast(grad, np.shape(x)) for x in inputs]


def _mul_forward(attrs, inputs, params):
    a, b = inputs
    return a * b


def _mul_vjp(attrs, inputs, params, output, grad):
    a, b = inputs
    return [unbroadcast(grad * b, np.shape(a)), unbroadcast(grad * a, np.shape(b))]


def _matmul_forward(attrs, inputs, params):
    a, b = inputs
    return np.matmul(a, b)


def _matmul_vjp(attrs, inputs, params, output, grad):
    a, b = inputs
    return [unbroadcast(np.matmul(grad, np.swapaxes(b, -1, -2)), a.shape),
            unbroadcast(np.matmul(np.swapaxes(a, -1, -2), grad), b.shape)]


def _concat_forward(attrs, inputs, params):
    axis = norm_axis(attrs["axis"], inputs[0].ndim)
    return np.concatenate(inputs, axis=axis)


def _concat_vjp(attrs, inputs, params, output, grad):
    axis = norm_axis(attrs["axis"], inputs[0].ndim)
    cuts = np.cumsum([x.shape[axis] for x in inputs])[:-1]
    return list(np.split(grad, cuts, axis=axis))


# ----------------------------------------------------------------------------------------------
# shape ops


def _reshape_back(attrs, inputs, params, output, grad):
    return [grad.reshape(inputs[0].shape)]


def _reshape_forward(attrs, inputs, params):
    (x,) = inputs
    return x.reshape((x.shape[0],) + tuple(attrs["shape"]))


def _flatten_forward(attrs, inputs, params):
    (x,) = inputs
    start = norm_axis(attrs["start_dim"], x.ndim)
    end = norm_axis(attrs["end_dim"], x.ndim)
    return x.reshape(x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:])


def _perm(attrs, ndim):
    return [norm_axis(p, ndim) for p in attrs["perm"]]


def _transpose_forward(attrs, inputs, params):
    (x,) = inputs
    return np.transpose(x, _perm(attrs, x.ndim))


def _transpose_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [np.transpose(grad, np.argsort(_perm(attrs, x.ndim)))]


def _slice_index(attrs, x):
    axis = norm_axis(attrs["axis"], x.ndim)
    r = slice_bounds(attrs, x.shape[axis])
    return (slice(None),) * axis + (slice(r.start, r.stop, r.step),)


def _slice_forward(attrs, inputs, params):
    (x,) = inputs
    return x[_slice_index(attrs, x)]


def _slice_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    gx = np.zeros(x.shape, dtype=grad.dtype)
    gx[_slice_index(attrs, x)] = grad
    return [gx]


def _pad_forward(attrs, inputs, params):
    (x,) = inputs
    return np.pad(x, pad_widths(attrs, x.ndim), mode="constant", constant_values=attrs["value"])


def _pad_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    widths = pad_widths(attrs, x.ndim)
    return [grad[tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, x.shape))]]


def _identity_forward(attrs, inputs, params):
    return inputs[0]


def _identity_vjp(attrs, inputs, params, output, grad):
    return [grad]


def _fill_forward(attrs, inputs, params):
    v = params["value"]
    return np.broadcast_to(v, (inputs[0].shape[0],) + v.shape).copy()


# ----------------------------------------------------------------------------------------------
# masks and selection (padded sequences)


def _mask_forward(attrs, inputs, params):
    (x,) = inputs
    differs = x != attrs["value"]
    axes = mask_axes(attrs, x.ndim)
    if axes:
        differs = differs.any(axis=axes)
    return differs.astype(x.dtype if x.dtype.kind == "f" else np.float32)


def _length_mask_forward(attrs, inputs, params):
    (lengths,) = inputs
    steps = np.arange(int(attrs["steps"]))
    return (steps[None, :] < lengths[:, None]).astype(lengths.dtype if lengths.dtype.kind == "f" else np.float32)


def _no_gradient_vjp(attrs, inputs, params, output, grad):
    """Masks are piecewise constant: zero gradient, in the gradient's dtype."""
    return [np.zeros(x.shape, dtype=grad.dtype) for x in inputs]


def _where_forward(attrs, inputs, params):
    cond, a, b = inputs
    return np.where(cond > 0.5, a, b)


def _where_vjp(attrs, inputs, params, output, grad):
    cond, a, b = inputs
    chosen = np.broadcast_to(cond > 0.5, grad.shape)
    zero = np.zeros((), dtype=grad.dtype)
    return [np.zeros(cond.shape, dtype=grad.dtype), unbroadcast(np.where(chosen, grad, zero), a.shape),
            unbroadcast(np.where(chosen, zero, grad), b.shape)]


# ----------------------------------------------------------------------------------------------
# reductions


def _reduce_sum_forward(attrs, inputs, params):
    (x,) = inputs
    return x.sum(axis=reduce_axes(attrs, x.ndim), keepdims=bool(attrs["keepdims"]))


def _reduce_mean_forward(attrs, inputs, params):
    (x,) = inputs
    return x.mean(axis=reduce_axes(attrs, x.ndim), keepdims=bool(attrs["keepdims"]))


def _spread(attrs, x, grad):
    """Broadcast a reduction's gradient back over the reduced axes."""
    axes = reduce_axes(attrs, x.ndim)
    if not attrs["keepdims"]:
        grad = np.expand_dims(grad, axes)
    return np.broadcast_to(grad, x.shape).copy()


def _reduce_sum_vjp(attrs, inputs, params, output, grad):
    return [_spread(attrs, inputs[0], grad)]


def _reduce_mean_vjp(attrs, inputs, params, output, grad):
    x = inputs[0]
    count = math.prod(x.shape[a] for a in reduce_axes(attrs, x.ndim))
    return [_spread(attrs, x, grad) / count]


# ----------------------------------------------------------------------------------------------


KERNELS: dict[str, Kernel] = {
    "linear": Kernel(_linear_forward, _linear_vjp),
    "conv": Kernel(_conv_forward, _conv_vjp),
    "embedding": Kernel(_embedding_forward, _embedding_vjp),
    "max_pool": Kernel(_max_pool_forward, _max_pool_vjp),
    "avg_pool": Kernel(_avg_pool_forward, _avg_pool_vjp),
    "global_avg_pool": Kernel(_global_avg_pool_forward, _global_avg_pool_vjp),
    "batch_norm": Kernel(_batch_norm_forward, _batch_norm_vjp),
    "relu": Kernel(_relu_forward, _relu_vjp),
    "clip": Kernel(_clip_forward, _clip_vjp),
    "elu": Kernel(_elu_forward, _elu_vjp),
    "gelu": Kernel(_gelu_forward, _gelu_vjp),
    "silu": Kernel(_silu_forward, _silu_vjp),
    "erf": Kernel(_erf_forward, _erf_vjp),
    "leaky_relu": Kernel(_leaky_forward, _leaky_vjp),
    "tanh": Kernel(_tanh_forward, _tanh_vjp),
    "sigmoid": Kernel(_sigmoid_forward, _sigmoid_vjp),
    "softmax": Kernel(_softmax_forward, _softmax_vjp),
    "add": Kernel(_add_forward, _add_vjp),
    "mul": Kernel(_mul_forward, _mul_vjp),
    "matmul": Kernel(_matmul_forward, _matmul_vjp),
    "layer_norm": Kernel(_layer_norm_forward, _layer_norm_vjp),
    "rms_norm": Kernel(_rms_norm_forward, _rms_norm_vjp),
    "concat": Kernel(_concat_forward, _concat_vjp),
    "reshape": Kernel(_reshape_forward, _reshape_back),
    "flatten": Kernel(_flatten_forward, _reshape_back),
    "transpose": Kernel(_transpose_forward, _transpose_vjp),
    "slice": Kernel(_slice_forward, _slice_vjp),
    "pad": Kernel(_pad_forward, _pad_vjp),
    "identity": Kernel(_identity_forward, _identity_vjp),
    "reduce_sum": Kernel(_reduce_sum_forward, _reduce_sum_vjp),
    "reduce_mean": Kernel(_reduce_mean_forward, _reduce_mean_vjp),
    "constant": CONSTANT_KERNEL,
    "fill": Kernel(_fill_forward, fill_vjp),
    "mask": Kernel(_mask_forward, _no_gradient_vjp),
    "length_mask": Kernel(_length_mask_forward, _no_gradient_vjp),
    "where": Kernel(_where_forward, _where_vjp),
}
KERNELS["conv_transpose"] = transposed_conv_kernel(KERNELS["conv"], _placeholder, _add_channel_bias)
KERNELS["div"] = quotient_kernel(unbroadcast, np.shape)
KERNELS.update(_VISION_KERNELS)
