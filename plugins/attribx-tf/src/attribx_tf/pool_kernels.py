"""TensorFlow kernels of the pooling ops: max (first maximum wins ties, as numpy), average (with or without
padded positions counted) and global average, channel-last around TF's kernels."""
from __future__ import annotations

import itertools
import math

import numpy as np
import tensorflow as tf

from attribx.ops import pool_geometry, window_output_size

from .layout import _crop_spatial, _lift, _pad_spatial, _shape, _spread_axis, _to_first, _to_last

# ----------------------------------------------------------------------------------------------
# pooling


def _out_spatial(sizes, kernel, stride, dilation, pads):
    return tuple(window_output_size(sizes[i], kernel[i], stride[i], dilation[i], pads[i]) for i in range(len(kernel)))


def _offsets(kernel, stride, dilation, out_spatial):
    """(flat index, offset, spatial slices) per kernel offset in row-major order, as the numpy kernels."""
    for flat, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        yield flat, offset, tuple(slice(o * d, o * d + (n - 1) * s + 1, s)
                                  for o, d, s, n in zip(offset, dilation, stride, out_spatial))


def _max_pool_argmax(x, geometry):
    """Window maxima and the flat kernel offset of each (first one on ties: a later equal value does not
    take over), from strided views of the -inf-padded input; used where TF's pool has no dilation."""
    kernel, stride, dilation, pads = geometry
    out_spatial = _out_spatial(_shape(x)[2:], kernel, stride, dilation, pads)
    xp = _pad_spatial(x, pads, -math.inf)
    best = idx = None
    for flat, _, slices in _offsets(kernel, stride, dilation, out_spatial):
        v = xp[(slice(None), slice(None)) + slices]
        if best is None:
            best, idx = v, tf.zeros(_shape(v), tf.int32)
        else:
            better = v > best
            best = tf.where(better, v, best)
            idx = tf.where(better, flat, idx)
    return best, idx, out_spatial


def _native_max(geometry, ndim):
    """Whether TF's MaxPoolWithArgmax can run this pool: 1d or 2d, no dilation."""
    return ndim in (3, 4) and all(d == 1 for d in geometry[2])


def _max_pool_forward(attrs, inputs, params):
    (x,) = inputs
    geometry = pool_geometry(attrs, _shape(x))
    if _native_max(geometry, len(x.shape)):
        lifted = len(x.shape) == 3
        xl, (kernel, stride, _, pads) = _lift(x, geometry) if lifted else (x, geometry)
        y = tf.nn.max_pool2d(_to_last(_pad_spatial(xl, pads, -math.inf)), list(kernel), list(stride), "VALID")
        y = _to_first(y)
        return tf.squeeze(y, 2) if lifted else y
    return _max_pool_argmax(x, geometry)[0]


def _max_pool_vjp(attrs, inputs, params, output, grad):
    """Each window's gradient goes to its first maximum."""
    (x,) = inputs
    geometry = pool_geometry(attrs, _shape(x))
    grad = tf.cast(grad, x.dtype)
    if _native_max(geometry, len(x.shape)):
        # TF's argmax (row-major scan, a strictly greater value takes over, so the first maximum wins)
        # indexes the padded channel-last input; one segment sum scatters the gradient there
        lifted = len(x.shape) == 3
        xl, (kernel, stride, _, pads) = _lift(x, geometry) if lifted else (x, geometry)
        xp = _to_last(_pad_spatial(xl, pads, -math.inf))
        g = _to_last(tf.expand_dims(grad, 2) if lifted else grad)
        if x.dtype in (tf.float32, tf.float64):
            # TF's own max-pool gradient, its forward recomputed beside it (oneDNN then passes the forward's
            # argmax on: ResNet50's pool 7 ms instead of 85 ms for argmax and segment sum); it too gives each
            # window's gradient to its first maximum (tests/backend_tf: ties)
            ksize, strides = [1, *kernel, 1], [1, *stride, 1]
            y = tf.raw_ops.MaxPool(input=xp, ksize=ksize, strides=strides, padding="VALID")
            gx = tf.raw_ops.MaxPoolGrad(orig_input=xp, orig_output=y, grad=g, ksize=ksize, strides=strides,
                                        padding="VALID")
        else:
            _, arg = tf.nn.max_pool_with_argmax(xp, list(kernel), list(stride), "VALID", include_batch_in_index=True)
            gx = tf.math.unsorted_segment_sum(tf.reshape(g, [-1]), tf.reshape(arg, [-1]), int(np.prod(_shape(xp))))
            gx = tf.reshape(gx, _shape(xp))
        gx = _crop_spatial(_to_first(gx), pads, _shape(xl)[2:])
        return [tf.squeeze(gx, 2) if lifted else gx]
    kernel, stride, dilation, pads = geometry
    _, idx, out_spatial = _max_pool_argmax(x, geometry)
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(_shape(x)[2:], pads))
    zero = tf.zeros_like(grad)
    gx = None
    for flat, offset, _ in _offsets(kernel, stride, dilation, out_spatial):
        part = tf.where(tf.equal(idx, flat), grad, zero)
        for axis, (o, d, s, size) in enumerate(zip(offset, dilation, stride, padded)):
            part = _spread_axis(part, axis + 2, s, size, o * d)
        gx = part if gx is None else gx + part
    return [_crop_spatial(gx, pads, _shape(x)[2:])]


class _AvgPlan:
    """An average pool as TF runs it: channel-last, 1d lifted to 2d, zero padding explicit.

    3d pools run as a 2d pool over (H, W) and then one over D: a box mean is separable, and TF's CPU
    AvgPool3D takes float32 only, while AvgPool takes float64 too."""

    def __init__(self, attrs, x):
        geometry = pool_geometry(attrs, _shape(x))
        self.lifted = len(x.shape) == 3
        self.x, geometry = _lift(x, geometry) if self.lifted else (x, geometry)
        self.kernel, self.stride, _, self.pads = geometry
        self.area = math.prod(self.kernel)
        self.padded = any(lo or hi for lo, hi in self.pads)
        self.count_pad = bool(attrs["count_include_pad"]) or not self.padded
        self.three = len(self.x.shape) == 5

    def _hw(self):
        k, s = self.kernel[-2:], self.stride[-2:]
        return [1, k[0], k[1], 1], [1, s[0], s[1], 1]

    def _d(self):
        return [1, self.kernel[0], 1, 1], [1, self.stride[0], 1, 1]

    def pool(self, xl):
        if not self.three:
            ksize, strides = self._hw()
            return tf.raw_ops.AvgPool(value=xl, ksize=ksize, strides=strides, padding="VALID")
        n, d, h, w, c = _shape(xl)
        ksize, strides = self._hw()
        y = tf.raw_ops.AvgPool(value=tf.reshape(xl, (n * d, h, w, c)), ksize=ksize, strides=strides, padding="VALID")
        _, h2, w2, _ = _shape(y)
        ksize, strides = self._d()
        y = tf.raw_ops.AvgPool(value=tf.reshape(y, (n, d, h2 * w2, c)), ksize=ksize, strides=strides, padding="VALID")
        return tf.reshape(y, (n, int(y.shape[1]), h2, w2, c))

    def pool_grad(self, gl, shape):
        """The gradient of the (padded, channel-last) input of :meth:`pool`, of that ``shape``."""
        if not self.three:
            ksize, strides = self._hw()
            return tf.raw_ops.AvgPoolGrad(orig_input_shape=tf.constant(shape, tf.int32), grad=gl, ksize=ksize,
                                          strides=strides, padding="VALID")
        n, d, h, w, c = shape
        _, d2, h2, w2, _ = _shape(gl)
        ksize, strides = self._d()
        g = tf.raw_ops.AvgPoolGrad(orig_input_shape=tf.constant((n, d, h2 * w2, c), tf.int32),
                                   grad=tf.reshape(gl, (n, d2, h2 * w2, c)), ksize=ksize, strides=strides,
                                   padding="VALID")
        ksize, strides = self._hw()
        g = tf.raw_ops.AvgPoolGrad(orig_input_shape=tf.constant((n * d, h, w, c), tf.int32),
                                   grad=tf.reshape(g, (n * d, h2, w2, c)), ksize=ksize, strides=strides,
                                   padding="VALID")
        return tf.reshape(g, shape)

    def counts(self, dtype):
        """Real input positions per window (count_include_pad False), at least 1: channel-last."""
        ones = _pad_spatial(tf.ones((1, 1) + _shape(self.x)[2:], dtype), self.pads)
        return tf.maximum(tf.round(self.pool(_to_last(ones)) * self.area), 1)

    def finish(self, y):
        y = _to_first(y)
        return tf.squeeze(y, 2) if self.lifted else y


def _avg_pool_forward(attrs, inputs, params):
    (x,) = inputs
    plan = _AvgPlan(attrs, x)
    y = plan.pool(_to_last(_pad_spatial(plan.x, plan.pads)))
    if not plan.count_pad:
        y = y * plan.area / plan.counts(x.dtype)
    return plan.finish(y)


def _avg_pool_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    plan = _AvgPlan(attrs, x)
    g = tf.cast(grad, x.dtype)
    g = _to_last(tf.expand_dims(g, 2) if plan.lifted else g)
    if not plan.count_pad:
        g = g * plan.area / plan.counts(x.dtype)
    padded = _shape(_to_last(_pad_spatial(plan.x, plan.pads)))
    gx = _crop_spatial(_to_first(plan.pool_grad(g, padded)), plan.pads, _shape(plan.x)[2:])
    return [tf.squeeze(gx, 2) if plan.lifted else gx]


def _global_avg_pool_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.reduce_mean(x, axis=list(range(2, len(x.shape))), keepdims=bool(attrs["keepdims"]))


def _global_avg_pool_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    shape = _shape(x)
    g = tf.reshape(grad, shape[:2] + (1,) * (len(shape) - 2)) / math.prod(shape[2:])
    return [tf.broadcast_to(g, shape)]


