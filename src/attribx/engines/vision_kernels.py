"""Kernels of the vision ops that came with issue 19: ``hard_sigmoid``, ``hard_swish`` (MobileNetV3),
``roll`` (Swin's cyclic shift) and ``resize`` (the upsampling of segmentation heads), for every engine.

Their formulas need only ``*``, ``+`` and three functions an engine gives :func:`vision_kernels`: the hard
sigmoid with its "strictly inside" mask, a roll, and multiplying each spatial axis by a matrix. A resize
is one fixed matrix per spatial axis (:func:`attribx.ops.resize_matrices`), so its VJP applies the
transposes. The numpy functions here are the reference (merged into :mod:`attribx.engines.numpy_kernels`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..ops import resize_matrices, roll_shifts
from .base import Kernel

__all__ = ["KERNELS", "vision_kernels"]


def vision_kernels(inside: Callable, roll: Callable, per_axis: Callable, shape_of: Callable,
                   wrap: Callable = lambda f: f) -> dict[str, Kernel]:
    """The four kernels from an engine's ``inside(attrs, x) -> (clip(alpha x + beta, 0, 1), 1.0 strictly inside
    (0, 1) else 0.0)``, ``roll(x, shifts, axes)``, ``per_axis(x, matrices)`` (axis 2 + i times matrix i, (out,
    in)) and ``shape_of(x)``; ``wrap`` decorates each function (torch: no autograd)."""

    def hard_sigmoid(attrs, inputs, params):
        return inside(attrs, inputs[0])[0]

    def hard_sigmoid_vjp(attrs, inputs, params, output, grad):
        """Slope alpha strictly inside (0, 1), 0 at and beyond the kinks (as torch's hardsigmoid)."""
        return [grad * attrs["alpha"] * inside(attrs, inputs[0])[1]]

    def hard_swish(attrs, inputs, params):
        (x,) = inputs
        return x * inside(attrs, x)[0]

    def hard_swish_vjp(attrs, inputs, params, output, grad):
        (x,) = inputs
        h, mask = inside(attrs, x)
        return [grad * (h + x * attrs["alpha"] * mask)]

    def roll_forward(attrs, inputs, params):
        (x,) = inputs
        axes, shifts = zip(*roll_shifts(attrs, len(shape_of(x))))
        return roll(x, tuple(shifts), tuple(axes))

    def roll_vjp(attrs, inputs, params, output, grad):
        axes, shifts = zip(*roll_shifts(attrs, len(shape_of(grad))))
        return [roll(grad, tuple(-s for s in shifts), tuple(axes))]

    def resize(attrs, inputs, params):
        (x,) = inputs
        return per_axis(x, resize_matrices(attrs, tuple(shape_of(x))))

    def resize_vjp(attrs, inputs, params, output, grad):
        (x,) = inputs
        return [per_axis(grad, [m.T for m in resize_matrices(attrs, tuple(shape_of(x)))])]

    return {"hard_sigmoid": Kernel(wrap(hard_sigmoid), wrap(hard_sigmoid_vjp)),
            "hard_swish": Kernel(wrap(hard_swish), wrap(hard_swish_vjp)),
            "roll": Kernel(wrap(roll_forward), wrap(roll_vjp)),
            "resize": Kernel(wrap(resize), wrap(resize_vjp))}


def _inside(attrs, x):
    z = attrs["alpha"] * x + attrs["beta"]
    return np.clip(z, 0.0, 1.0), ((z > 0) & (z < 1)).astype(x.dtype)


def _per_axis(x, mats):
    for i, m in enumerate(mats):
        x = np.moveaxis(np.tensordot(x, m.astype(x.dtype), axes=([2 + i], [1])), -1, 2 + i)
    return x


KERNELS = vision_kernels(_inside, np.roll, _per_axis, np.shape)
