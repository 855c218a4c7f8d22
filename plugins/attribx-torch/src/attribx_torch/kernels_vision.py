"""torch kernels for ``hard_sigmoid``, ``hard_swish``, ``roll`` and ``resize``: the shared formulas of
:mod:`attribx.engines.vision_kernels` on torch's clamp, roll and tensordot, under ``torch.no_grad()``, in
the input's dtype and on its device. Importing this module imports torch.
"""
from __future__ import annotations

import torch

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


KERNELS = vision_kernels(_inside, torch.roll, _per_axis, lambda t: tuple(t.shape), wrap=_nograd)
