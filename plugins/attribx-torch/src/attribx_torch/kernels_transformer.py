"""torch kernels for the transformer ops: ``layer_norm``, ``rms_norm``, ``matmul`` and ``erf``.

Same numbers as the numpy reference (:mod:`attribx.engines.numpy_kernels`) up to rounding, under
``torch.no_grad()`` with explicit VJPs, in the input's dtype. A layer norm over the trailing axes runs
torch's fused ``F.layer_norm``; other axes use the formula. Importing this module imports torch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attribx.engines.base import Kernel
from attribx.ops import norm_axes

from .kernels import _nograd, _param, unbroadcast

__all__ = ["KERNELS"]


def _norm_setup(attrs, x, params, keys):
    axes = norm_axes(attrs, x.dim())
    shape = [x.shape[i] if i in axes else 1 for i in range(x.dim())]
    found = [_param(params, k, x) for k in keys]
    return axes, [None if p is None else p.reshape(shape) for p in found]


def _layer_norm_parts(attrs, x, params):
    axes, (scale, bias) = _norm_setup(attrs, x, params, ("scale", "bias"))
    centred = x - x.mean(dim=axes, keepdim=True)
    inv = torch.rsqrt((centred * centred).mean(dim=axes, keepdim=True) + attrs["eps"])
    return axes, scale, bias, centred * inv, inv


@_nograd
def _layer_norm_forward(attrs, inputs, params):
    (x,) = inputs
    axes = norm_axes(attrs, x.dim())
    if axes == tuple(range(x.dim() - len(axes), x.dim())):      # the trailing axes: torch's fused kernel
        shape = tuple(x.shape[a] for a in axes)
        return F.layer_norm(x, shape, _param(params, "scale", x), _param(params, "bias", x), float(attrs["eps"]))
    _, scale, bias, n, _ = _layer_norm_parts(attrs, x, params)
    y = n if scale is None else n * scale
    return y if bias is None else y + bias


@_nograd
def _layer_norm_vjp(attrs, inputs, params, output, grad):
    axes, scale, _, n, inv = _layer_norm_parts(attrs, inputs[0], params)
    g = grad if scale is None else grad * scale
    return [inv * (g - g.mean(dim=axes, keepdim=True) - n * (g * n).mean(dim=axes, keepdim=True))]


def _rms_parts(attrs, x, params):
    axes, (scale,) = _norm_setup(attrs, x, params, ("scale",))
    inv = torch.rsqrt((x * x).mean(dim=axes, keepdim=True) + attrs["eps"])
    return axes, scale, x * inv, inv


@_nograd
def _rms_norm_forward(attrs, inputs, params):
    _, scale, n, _ = _rms_parts(attrs, inputs[0], params)
    return n if scale is None else n * scale


@_nograd
def _rms_norm_vjp(attrs, inputs, params, output, grad):
    axes, scale, n, inv = _rms_parts(attrs, inputs[0], params)
    g = grad if scale is None else grad * scale
    return [inv * (g - n * (g * n).mean(dim=axes, keepdim=True))]


@_nograd
def _matmul_forward(attrs, inputs, params):
    a, b = inputs
    return torch.matmul(a, b)


@_nograd
def _matmul_vjp(attrs, inputs, params, output, grad):
    a, b = inputs
    return [unbroadcast(torch.matmul(grad, b.transpose(-1, -2)), a.shape),
            unbroadcast(torch.matmul(a.transpose(-1, -2), grad), b.shape)]


@_nograd
def _erf_forward(attrs, inputs, params):
    return torch.erf(inputs[0])


@_nograd
def _erf_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [grad * (2 / math.sqrt(math.pi)) * torch.exp(-x * x)]


KERNELS = {
    "erf": Kernel(_erf_forward, _erf_vjp),
    "layer_norm": Kernel(_layer_norm_forward, _layer_norm_vjp),
    "rms_norm": Kernel(_rms_norm_forward, _rms_norm_vjp),
    "matmul": Kernel(_matmul_forward, _matmul_vjp),
}
