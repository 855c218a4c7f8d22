"""Tensor helpers the TensorFlow kernels share: parameters in the input's dtype, static shapes, broadcasting
sums, and the channel-first <-> channel-last layout that TF's CPU window kernels need."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["unbroadcast"]


def _param(params, key, like):
    """A parameter as a tensor of ``like``'s dtype (a no-op when the engine already converted it)."""
    p = params.get(key)
    if p is None:
        return None
    if not tf.is_tensor(p):
        p = tf.convert_to_tensor(np.asarray(p))
    if p.dtype != like.dtype and like.dtype.is_floating:
        p = tf.cast(p, like.dtype)
    return p


def _shape(x):
    return tuple(int(d) for d in x.shape)


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the VJP of broadcasting ``shape`` to ``grad.shape``."""
    shape = tuple(shape)
    gshape = _shape(grad)
    if gshape == shape:
        return grad
    extra = len(gshape) - len(shape)
    axes = list(range(extra)) + [extra + i for i, s in enumerate(shape) if s == 1 and gshape[extra + i] != 1]
    if axes:
        grad = tf.reduce_sum(grad, axis=axes)
    return tf.reshape(grad, shape)


def _to_last(x):
    """(N, C, *spatial) -> (N, *spatial, C)."""
    n = len(x.shape)
    return tf.transpose(x, [0] + list(range(2, n)) + [1])


def _to_first(x):
    """(N, *spatial, C) -> (N, C, *spatial)."""
    n = len(x.shape)
    return tf.transpose(x, [0, n - 1] + list(range(1, n - 1)))


def _pad_spatial(x, pads, value=0.0):
    """Pad the spatial axes of a channel-first tensor by per-dim (before, after) pairs."""
    if not any(lo or hi for lo, hi in pads):
        return x
    return tf.pad(x, [[0, 0], [0, 0]] + [list(p) for p in pads], constant_values=value)


def _crop_spatial(x, pads, sizes):
    if not any(lo or hi for lo, hi in pads):
        return x
    return x[(slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, sizes))]


def _lift(x, geometry):
    """A 1d window problem (N, C, L) as 2d (N, C, 1, L), the smallest rank TF's window kernels take."""
    kernel, stride, dilation, pads = geometry
    return (tf.expand_dims(x, 2),
            ((1,) + tuple(kernel), (1,) + tuple(stride), (1,) + tuple(dilation), [(0, 0)] + list(pads)))


def _spread_axis(x, axis, step, size, start=0):
    """Place ``x``'s entries along ``axis`` at start, start + step, ... of a zero tensor of length ``size``
    (the VJP of a strided slice), by interleaving zeros and padding: no scatter needed."""
    m = int(x.shape[axis])
    if step > 1:
        shape = _shape(x)
        zeros = tf.zeros(shape[:axis + 1] + (step - 1,) + shape[axis + 1:], dtype=x.dtype)
        x = tf.concat([tf.expand_dims(x, axis + 1), zeros], axis=axis + 1)
        x = tf.reshape(x, shape[:axis] + (m * step,) + shape[axis + 1:])
        x = x[(slice(None),) * axis + (slice(0, (m - 1) * step + 1),)]
    used = (m - 1) * step + 1
    if start or size - start - used:
        widths = [[0, 0]] * len(x.shape)
        widths[axis] = [start, size - start - used]
        x = tf.pad(x, widths)
    return x


