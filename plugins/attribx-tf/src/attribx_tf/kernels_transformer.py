"""TensorFlow kernels for the transformer ops: ``layer_norm``, ``rms_norm``, ``matmul`` and ``erf``.

Same numbers as the numpy reference (:mod:`attribx.engines.numpy_kernels`) up to rounding, with explicit
VJPs (no ``GradientTape``), in the input's dtype. Importing this module imports TensorFlow.
"""
from __future__ import annotations

import math

import tensorflow as tf

from attribx.engines.base import Kernel
from attribx.ops import norm_axes

from .kernels import _param, _shape, unbroadcast

__all__ = ["KERNELS"]


def _norm_setup(attrs, x, params, keys):
    shape_x = _shape(x)
    axes = list(norm_axes(attrs, len(shape_x)))
    shape = [shape_x[i] if i in axes else 1 for i in range(len(shape_x))]
    found = [_param(params, k, x) for k in keys]
    return axes, [None if p is None else tf.reshape(p, shape) for p in found]


def _layer_norm_parts(attrs, x, params):
    axes, (scale, bias) = _norm_setup(attrs, x, params, ("scale", "bias"))
    centred = x - tf.reduce_mean(x, axis=axes, keepdims=True)
    inv = tf.math.rsqrt(tf.reduce_mean(centred * centred, axis=axes, keepdims=True) + attrs["eps"])
    return axes, scale, bias, centred * inv, inv


def _layer_norm_forward(attrs, inputs, params):
    _, scale, bias, n, _ = _layer_norm_parts(attrs, inputs[0], params)
    y = n if scale is None else n * scale
    return y if bias is None else y + bias


def _layer_norm_vjp(attrs, inputs, params, output, grad):
    axes, scale, _, n, inv = _layer_norm_parts(attrs, inputs[0], params)
    g = grad if scale is None else grad * scale
    mean = tf.reduce_mean
    return [inv * (g - mean(g, axis=axes, keepdims=True) - n * mean(g * n, axis=axes, keepdims=True))]


def _rms_parts(attrs, x, params):
    axes, (scale,) = _norm_setup(attrs, x, params, ("scale",))
    inv = tf.math.rsqrt(tf.reduce_mean(x * x, axis=axes, keepdims=True) + attrs["eps"])
    return axes, scale, x * inv, inv


def _rms_norm_forward(attrs, inputs, params):
    _, scale, n, _ = _rms_parts(attrs, inputs[0], params)
    return n if scale is None else n * scale


def _rms_norm_vjp(attrs, inputs, params, output, grad):
    axes, scale, n, inv = _rms_parts(attrs, inputs[0], params)
    g = grad if scale is None else grad * scale
    return [inv * (g - n * tf.reduce_mean(g * n, axis=axes, keepdims=True))]


def _matmul_forward(attrs, inputs, params):
    a, b = inputs
    return tf.linalg.matmul(a, b)


def _matmul_vjp(attrs, inputs, params, output, grad):
    a, b = inputs
    return [unbroadcast(tf.linalg.matmul(grad, b, transpose_b=True), _shape(a)),
            unbroadcast(tf.linalg.matmul(a, grad, transpose_a=True), _shape(b))]


def _erf_forward(attrs, inputs, params):
    return tf.math.erf(inputs[0])


def _erf_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [grad * (2 / math.sqrt(math.pi)) * tf.exp(-x * x)]


KERNELS = {
    "erf": Kernel(_erf_forward, _erf_vjp),
    "layer_norm": Kernel(_layer_norm_forward, _layer_norm_vjp),
    "rms_norm": Kernel(_rms_norm_forward, _rms_norm_vjp),
    "matmul": Kernel(_matmul_forward, _matmul_vjp),
}
