"""TensorFlow kernels (forward and vector-Jacobian product) for every built-in op of attribx.

The graph is channel-first (N, C, *spatial) as in torch, while TensorFlow's CPU convolutions and
pools take channel-last tensors only: window ops transpose to (N, *spatial, C) around TF's kernels.
1d windows run as 2d with a unit height. Padding always comes from :mod:`attribx.ops` and is applied
explicitly (``tf.pad``, -inf for max pooling) before a ``VALID`` kernel, so every kind of padding
('same', asymmetric pairs, more than half a window) means what it means on the numpy engine.

VJPs are explicit: a conv's input gradient is TensorFlow's transposed conv (``Conv2DBackpropInput`` /
``Conv3DBackpropInputV2``), average pools use ``AvgPoolGrad``, max pools scatter each window's gradient
to its first maximum, elementwise ops use TF's gradient kernels (``ReluGrad``, ``TanhGrad``, ...) or
their formula. No ``GradientTape`` is needed.

The numbers equal the numpy reference kernels (:mod:`attribx.engines.numpy_kernels`) up to rounding:
same tie-breaking (the first maximum of a window wins), same conventions at kinks (relu'(0) = 0,
leaky_relu'(0) = 1, clip' at the bounds = 0). Kernels keep the input's dtype (parameters are cast to
it). Importing this module imports TensorFlow; attribx imports it only when the engine is used.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from attribx.engines.base import CONSTANT_KERNEL, Kernel, fill_vjp, quotient_kernel, transposed_conv_kernel
from attribx.ops import mask_axes, norm_axis, pad_widths, reduce_axes, slice_bounds

from .conv_kernels import (_ConvPlan, _Placeholder, _add_channel_bias, _conv_forward, _conv_vjp,  # noqa: F401
                           _embedding_forward, _embedding_vjp, _linear_forward, _linear_vjp)
from .layout import _param, _shape, _spread_axis, unbroadcast
from .pool_kernels import (_avg_pool_forward, _avg_pool_vjp, _global_avg_pool_forward, _global_avg_pool_vjp,
                           _max_pool_forward, _max_pool_vjp)

__all__ = ["KERNELS", "unbroadcast"]


# ----------------------------------------------------------------------------------------------
# batch norm


def _bn_params(attrs, x, params):
    axis = norm_axis(attrs["axis"], len(x.shape))
    shape = [1] * len(x.shape)
    shape[axis] = -1
    return [None if p is None else tf.reshape(p, shape)
            for p in (_param(params, k, x) for k in ("mean", "var", "scale", "bias"))]


def _batch_norm_forward(attrs, inputs, params):
    (x,) = inputs
    mean, var, scale, bias = _bn_params(attrs, x, params)
    y = (x - mean) / tf.sqrt(var + attrs["eps"])
    if scale is not None:
        y = y * scale
    return y if bias is None else y + bias


def _batch_norm_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    _, var, scale, _ = _bn_params(attrs, x, params)
    mult = 1 / tf.sqrt(var + attrs["eps"])
    return [grad * (mult if scale is None else mult * scale)]


# ----------------------------------------------------------------------------------------------
# elementwise activations


def _relu_forward(attrs, inputs, params):
    return tf.nn.relu(inputs[0])


def _relu_vjp(attrs, inputs, params, output, grad):
    return [tf.raw_ops.ReluGrad(gradients=grad, features=inputs[0])]   # grad where x > 0 (0 at 0)


def _leaky_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.where(x >= 0, x, x * attrs["negative_slope"])


def _leaky_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [tf.where(x >= 0, grad, grad * attrs["negative_slope"])]    # slope 1 at 0


def _tanh_forward(attrs, inputs, params):
    return tf.tanh(inputs[0])


def _tanh_vjp(attrs, inputs, params, output, grad):
    y = tf.tanh(inputs[0]) if output is None else output
    return [tf.raw_ops.TanhGrad(y=y, dy=grad)]


def _sigmoid_forward(attrs, inputs, params):
    return tf.sigmoid(inputs[0])


def _sigmoid_vjp(attrs, inputs, params, output, grad):
    y = tf.sigmoid(inputs[0]) if output is None else output
    return [tf.raw_ops.SigmoidGrad(y=y, dy=grad)]


def _relu6(attrs, x) -> bool:
    """Whether the clip is ReLU6 on floats (MobileNet's): TF's own kernels, one pass each way."""
    return attrs["min"] == 0 and attrs["max"] == 6 and x.dtype.is_floating


def _clip_forward(attrs, inputs, params):
    (x,) = inputs
    if _relu6(attrs, x):
        return tf.nn.relu6(x)
    if attrs["min"] is not None:
        x = tf.maximum(x, tf.cast(attrs["min"], x.dtype))
    if attrs["max"] is not None:
        x = tf.minimum(x, tf.cast(attrs["max"], x.dtype))
    return x


def _clip_vjp(attrs, inputs, params, output, grad):
    """Gradient 1 strictly inside the bounds (0 at them, as torch's hardtanh)."""
    (x,) = inputs
    if _relu6(attrs, x) and grad.dtype == x.dtype:
        return [tf.raw_ops.Relu6Grad(gradients=grad, features=x)]     # grad where 0 < x < 6
    inside = None
    if attrs["min"] is not None:
        inside = x > attrs["min"]
    if attrs["max"] is not None:
        inside = x < attrs["max"] if inside is None else tf.logical_and(inside, x < attrs["max"])
    return [grad if inside is None else tf.where(inside, grad, tf.zeros_like(grad))]


def _elu_forward(attrs, inputs, params):
    (x,) = inputs
    if attrs["alpha"] == 1.0:
        return tf.nn.elu(x)
    return tf.where(x > 0, x, attrs["alpha"] * tf.math.expm1(tf.minimum(x, 0)))


def _elu_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [grad * tf.where(x > 0, tf.ones_like(x), attrs["alpha"] * tf.exp(tf.minimum(x, 0)))]


_SQRT2 = math.sqrt(2.0)
_TANH_C = math.sqrt(2.0 / math.pi)


def _gelu_forward(attrs, inputs, params):
    """The formula with tf.math.erf: tf.nn.gelu differs from it by ~5e-9 relative in float64 (its
    constants are rounded to float32), which is more than the engines may differ by."""
    (x,) = inputs
    if attrs["approximate"] == "tanh":
        return 0.5 * x * (1 + tf.tanh(_TANH_C * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + tf.math.erf(x / _SQRT2))


def _gelu_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    if attrs["approximate"] == "tanh":
        t = tf.tanh(_TANH_C * (x + 0.044715 * x ** 3))
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _TANH_C * (1 + 3 * 0.044715 * x * x)
    else:
        d = 0.5 * (1 + tf.math.erf(x / _SQRT2)) + x * tf.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return [grad * d]


def _silu_forward(attrs, inputs, params):
    return tf.nn.silu(inputs[0])


def _silu_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    s = tf.sigmoid(x)
    return [grad * (s * (1 + x * (1 - s)))]


def _softmax_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.nn.softmax(x, axis=norm_axis(attrs["axis"], len(x.shape)))


def _softmax_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    axis = norm_axis(attrs["axis"], len(x.shape))
    y = tf.nn.softmax(x, axis=axis) if output is None else output
    return [y * (grad - tf.reduce_sum(grad * y, axis=axis, keepdims=True))]


# ----------------------------------------------------------------------------------------------
# combinations of inputs


def _add_forward(attrs, inputs, params):
    out = inputs[0]
    for x in inputs[1:]:
        out = out + x
    return out


def _add_vjp(attrs, inputs, params, output, grad):
    return [unbroadcast(grad, _shape(x)) for x in inputs]


def _mul_forward(attrs, inputs, params):
    a, b = inputs
    return a * b


def _mul_vjp(attrs, inputs, params, output, grad):
    a, b = inputs
    return [unbroadcast(grad * b, _shape(a)), unbroadcast(grad * a, _shape(b))]


def _concat_forward(attrs, inputs, params):
    return tf.concat(list(inputs), axis=norm_axis(attrs["axis"], len(inputs[0].shape)))


def _concat_vjp(attrs, inputs, params, output, grad):
    axis = norm_axis(attrs["axis"], len(inputs[0].shape))
    return list(tf.split(grad, [int(x.shape[axis]) for x in inputs], axis=axis))


# ----------------------------------------------------------------------------------------------
# shape ops


def _reshape_back(attrs, inputs, params, output, grad):
    return [tf.reshape(grad, _shape(inputs[0]))]


def _reshape_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.reshape(x, (int(x.shape[0]),) + tuple(attrs["shape"]))


def _flatten_forward(attrs, inputs, params):
    (x,) = inputs
    shape = _shape(x)
    start, end = norm_axis(attrs["start_dim"], len(shape)), norm_axis(attrs["end_dim"], len(shape))
    return tf.reshape(x, shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:])


def _perm(attrs, ndim):
    return [norm_axis(p, ndim) for p in attrs["perm"]]


def _transpose_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.transpose(x, _perm(attrs, len(x.shape)))


def _transpose_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [tf.transpose(grad, np.argsort(_perm(attrs, len(x.shape))).tolist())]


def _slice_forward(attrs, inputs, params):
    (x,) = inputs
    axis = norm_axis(attrs["axis"], len(x.shape))
    r = slice_bounds(attrs, int(x.shape[axis]))
    return x[(slice(None),) * axis + (slice(r.start, r.stop, r.step),)]


def _slice_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    axis = norm_axis(attrs["axis"], len(x.shape))
    r = slice_bounds(attrs, int(x.shape[axis]))
    return [_spread_axis(grad, axis, r.step, int(x.shape[axis]), r.start)]


def _pad_forward(attrs, inputs, params):
    (x,) = inputs
    widths = pad_widths(attrs, len(x.shape))
    return tf.pad(x, [list(w) for w in widths], constant_values=attrs["value"])


def _pad_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    widths = pad_widths(attrs, len(x.shape))
    return [grad[tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, _shape(x)))]]


def _fill_forward(attrs, inputs, params):
    v = params["value"]
    return tf.broadcast_to(v, tf.concat([tf.shape(inputs[0])[:1], tf.shape(v)], axis=0))


def _identity_forward(attrs, inputs, params):
    return inputs[0]


def _identity_vjp(attrs, inputs, params, output, grad):
    return [grad]


# ----------------------------------------------------------------------------------------------
# masks and selection (padded sequences)


def _mask_forward(attrs, inputs, params):
    (x,) = inputs
    differs = tf.not_equal(x, tf.cast(attrs["value"], x.dtype))
    axes = mask_axes(attrs, len(x.shape))
    if axes:
        differs = tf.reduce_any(differs, axis=list(axes))
    return tf.cast(differs, x.dtype if x.dtype.is_floating else tf.float32)


def _length_mask_forward(attrs, inputs, params):
    (lengths,) = inputs
    steps = tf.range(int(attrs["steps"]), dtype=lengths.dtype)
    return tf.cast(steps[None, :] < lengths[:, None], lengths.dtype if lengths.dtype.is_floating else tf.float32)


def _no_gradient_vjp(attrs, inputs, params, output, grad):
    """Masks are piecewise constant: zero gradient, in the gradient's dtype."""
    return [tf.zeros(_shape(x), dtype=grad.dtype) for x in inputs]


def _where_forward(attrs, inputs, params):
    cond, a, b = inputs
    shape = tf.broadcast_static_shape(tf.broadcast_static_shape(cond.shape, a.shape), b.shape)
    return tf.where(tf.broadcast_to(cond > 0.5, shape), tf.broadcast_to(a, shape), tf.broadcast_to(b, shape))


def _where_vjp(attrs, inputs, params, output, grad):
    cond, a, b = inputs
    chosen = tf.broadcast_to(cond > 0.5, tf.shape(grad))
    zero = tf.zeros_like(grad)
    return [tf.zeros(_shape(cond), dtype=grad.dtype), unbroadcast(tf.where(chosen, grad, zero), _shape(a)),
            unbroadcast(tf.where(chosen, zero, grad), _shape(b))]


# ----------------------------------------------------------------------------------------------
# reductions


def _reduce_sum_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.reduce_sum(x, axis=list(reduce_axes(attrs, len(x.shape))), keepdims=bool(attrs["keepdims"]))


def _reduce_mean_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.reduce_mean(x, axis=list(reduce_axes(attrs, len(x.shape))), keepdims=bool(attrs["keepdims"]))


def _spread(attrs, x, grad):
    """Broadcast a reduction's gradient back over the reduced axes."""
    shape = _shape(x)
    axes = reduce_axes(attrs, len(shape))
    grad = tf.reshape(grad, tuple(1 if i in axes else d for i, d in enumerate(shape)))
    return tf.broadcast_to(grad, shape)


def _reduce_sum_vjp(attrs, inputs, params, output, grad):
    return [_spread(attrs, inputs[0], grad)]


def _reduce_mean_vjp(attrs, inputs, params, output, grad):
    x = inputs[0]
    count = math.prod(int(x.shape[a]) for a in reduce_axes(attrs, len(x.shape)))
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
    "leaky_relu": Kernel(_leaky_forward, _leaky_vjp),
    "tanh": Kernel(_tanh_forward, _tanh_vjp),
    "sigmoid": Kernel(_sigmoid_forward, _sigmoid_vjp),
    "softmax": Kernel(_softmax_forward, _softmax_vjp),
    "add": Kernel(_add_forward, _add_vjp),
    "mul": Kernel(_mul_forward, _mul_vjp),
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
KERNELS["conv_transpose"] = transposed_conv_kernel(KERNELS["conv"], _Placeholder, _add_channel_bias)
KERNELS["div"] = quotient_kernel(unbroadcast, _shape)
