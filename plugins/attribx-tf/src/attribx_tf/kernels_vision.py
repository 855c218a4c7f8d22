"""TensorFlow kernels for ``hard_sigmoid``, ``hard_swish``, ``roll`` and ``resize``: the shared formulas of
:mod:`attribx.engines.vision_kernels` on TensorFlow's clip, roll and tensordot, in the input's dtype.
Importing this module imports TensorFlow.
"""
from __future__ import annotations

import tensorflow as tf

from attribx.engines.vision_kernels import vision_kernels

from .layout import _shape

__all__ = ["KERNELS"]


def _inside(attrs, x):
    z = x * attrs["alpha"] + attrs["beta"]
    return tf.clip_by_value(z, 0.0, 1.0), tf.cast((z > 0) & (z < 1), x.dtype)


def _roll(x, shifts, axes):
    return tf.roll(x, list(shifts), list(axes))


def _per_axis(x, mats):
    for i, m in enumerate(mats):
        y = tf.tensordot(x, tf.constant(m, dtype=x.dtype), axes=[[2 + i], [1]])
        nd = len(_shape(y))
        x = tf.transpose(y, list(range(2 + i)) + [nd - 1] + list(range(2 + i, nd - 1)))
    return x


KERNELS = vision_kernels(_inside, _roll, _per_axis, _shape)
