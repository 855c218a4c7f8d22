"""torch kernels for ``hard_sigmoid``, ``hard_swish``, ``roll`` and ``resize``: the shared formulas of
:mod:`attribx.engines.vision_kernels` on torch's clamp, roll and tensordot, under ``torch.no_grad()``, in
the input's dtype and on its device. Importing this module imports torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from attribx.engines.base import Kernel
from attribx.engines.vision_kernels import vision_kernels

from .kernels import _nograd

__all__ = ["KERNELS"]


def _inside(attrs, x):
    z = x * attrs["alpha"] + attrs["beta"]
    return z.clamp(0.0, 1.0), ((z > 0) & (z < 1)).to(x.dtype)


def _per_axis(x, mats):
    for i, m in enumerate(mats):
        m = torch.as_tensor(m, dtype=x.dtype, device=x.device)
        x = torch.tensordot(x, m, dims=([2 + i], [1])).movedim(-1, 2 + i)
    return x


def _torch_defaults(attrs) -> bool:
    """alpha = 1/6, beta = 1/2: torch's (and Keras') hardsigmoid, relu6(x + 3) / 6, which torch runs in one pass."""
    return attrs["alpha"] == 1 / 6 and attrs["beta"] == 0.5


def _hard_sigmoid(attrs, inputs, params):
    """One pass with torch's own kernel where the attributes are its; the clip of the shared formula (without
    the mask its VJP needs) otherwise."""
    (x,) = inputs
    if _torch_defaults(attrs):
        return F.hardsigmoid(x)
    return (x * attrs["alpha"]).add_(attrs["beta"]).clamp_(0.0, 1.0)


def _hard_swish(attrs, inputs, params):
    """x * hard_sigmoid(x): MobileNetV3 runs it after most convs, and the shared formula's five passes and its
    mask took as long as the convs of the forward pass."""
    (x,) = inputs
    if _torch_defaults(attrs):
        return F.hardswish(x)
    return _hard_sigmoid(attrs, inputs, params).mul_(x)


KERNELS = vision_kernels(_inside, torch.roll, _per_axis, lambda t: tuple(t.shape), wrap=_nograd)
KERNELS["hard_sigmoid"] = Kernel(_nograd(_hard_sigmoid), KERNELS["hard_sigmoid"].vjp)
KERNELS["hard_swish"] = Kernel(_nograd(_hard_swish), KERNELS["hard_swish"].vjp)
