"""Elementwise converters: activations, arithmetic (add, sub, mul, div, neg), dropout and casts.

Most run on time-major views too (``time_major="elementwise"``): on the batch-first values they view.
"""
from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from attribx.translation import Tensor

from ..values import Unsupported, is_number, is_t, norm_dim
from .base import TABLE

ELEMENTWISE = {"time_major": "elementwise"}


def _methods(*names):
    return tuple(f"method:{n}" for n in names)


def unary(ctx, x, op, **attrs):
    x = ctx.tensor(x)
    return ctx.emit(op, [x], ctx.out_shape(), attrs)


def clip(ctx, x, lo, hi):
    for v in (lo, hi):
        if v is not None and not is_number(v):
            raise Unsupported(f"clamp bound {type(v).__name__}; only number bounds are supported")
    x = ctx.tensor(x)
    return ctx.emit("clip", [x], ctx.out_shape(), {"min": None if lo is None else float(lo),
                                                   "max": None if hi is None else float(hi)})


# ----------------------------------------------------------------------------------------------
# activations


@TABLE.register(F.relu, torch.relu, torch.relu_, *_methods("relu", "relu_"), **ELEMENTWISE)
def relu(ctx, input, inplace=False):
    return unary(ctx, input, "relu")


@TABLE.register(F.leaky_relu, **ELEMENTWISE)
def leaky_relu(ctx, input, negative_slope=0.01, inplace=False):
    return unary(ctx, input, "leaky_relu", negative_slope=negative_slope)


@TABLE.register(F.relu6, **ELEMENTWISE)
def relu6(ctx, input, inplace=False):
    return clip(ctx, input, 0.0, 6.0)


@TABLE.register(F.hardtanh, **ELEMENTWISE)
def hardtanh(ctx, input, min_val=-1.0, max_val=1.0, inplace=False):
    return clip(ctx, input, min_val, max_val)


@TABLE.register(torch.clamp, torch.clip, torch.clamp_, *_methods("clamp", "clamp_", "clip", "clip_"), **ELEMENTWISE)
def clamp(ctx, input, min=None, max=None):
    return clip(ctx, input, min, max)


@TABLE.register(F.silu, **ELEMENTWISE)
def silu(ctx, input, inplace=False):
    return unary(ctx, input, "silu")


@TABLE.register(F.gelu, **ELEMENTWISE)
def gelu(ctx, input, approximate="none"):
    return unary(ctx, input, "gelu", approximate=approximate)


@TABLE.register(F.elu, **ELEMENTWISE)
def elu(ctx, input, alpha=1.0, inplace=False):
    return unary(ctx, input, "elu", alpha=alpha)


@TABLE.register(torch.tanh, F.tanh, *_methods("tanh", "tanh_"), **ELEMENTWISE)
def tanh(ctx, input):
    return unary(ctx, input, "tanh")


@TABLE.register(torch.sigmoid, F.sigmoid, *_methods("sigmoid", "sigmoid_"), **ELEMENTWISE)
def sigmoid(ctx, input):
    return unary(ctx, input, "sigmoid")


@TABLE.register(F.hardsigmoid, **ELEMENTWISE)
def hardsigmoid(ctx, input, inplace=False):
    return unary(ctx, input, "hard_sigmoid")


@TABLE.register(F.hardswish, **ELEMENTWISE)
def hardswish(ctx, input, inplace=False):
    return unary(ctx, input, "hard_swish")


@TABLE.register(F.softmax, torch.softmax, "method:softmax")
def softmax(ctx, input, dim=None, _stacklevel=3, dtype=None):
    x = ctx.tensor(input)
    if dtype is not None and dtype != x.dtype:
        raise Unsupported(f"softmax with dtype={dtype}")
    ndim = len(x.shape)
    if dim is None:   # torch's legacy implicit dim
        dim = 0 if ndim in (0, 1, 3) else 1
    dim = norm_dim(dim, ndim)
    if dim == 0:
        raise Unsupported("softmax over the batch axis mixes samples")
    return ctx.emit("softmax", [x], ctx.out_shape(), {"axis": dim})


def _module_unary(op, **attrs_of):
    """The converter of an activation module: op, with attributes read from the module."""
    def convert(ctx, m, input):
        return unary(ctx, input, op, **{k: f(m) for k, f in attrs_of.items()})
    convert.__qualname__ = f"module_{op}"
    return convert


for _cls, _convert in (
        (nn.ReLU, _module_unary("relu")),
        (nn.LeakyReLU, _module_unary("leaky_relu", negative_slope=lambda m: float(m.negative_slope))),
        (nn.SiLU, _module_unary("silu")),
        (nn.GELU, _module_unary("gelu", approximate=lambda m: m.approximate)),
        (nn.ELU, _module_unary("elu", alpha=lambda m: float(m.alpha))),
        (nn.Tanh, _module_unary("tanh")),
        (nn.Hardsigmoid, _module_unary("hard_sigmoid")),
        (nn.Hardswish, _module_unary("hard_swish")),
        (nn.Sigmoid, _module_unary("sigmoid"))):
    TABLE.register(_cls, **ELEMENTWISE)(_convert)
del _cls, _convert


@TABLE.register(nn.Hardtanh, nn.ReLU6, **ELEMENTWISE)      # ReLU6 is a Hardtanh(0, 6)
def hardtanh_module(ctx, m, input):
    return clip(ctx, input, m.min_val, m.max_val)


@TABLE.register(nn.Softmax)
def softmax_module(ctx, m, input):
    return softmax(ctx, input, m.dim)


# ----------------------------------------------------------------------------------------------
# arithmetic


def _check_operand(t, c):
    """A constant operand must broadcast without touching the batch axis."""
    shape = tuple(c.shape) if isinstance(c, torch.Tensor) else ()
    if len(shape) > len(t.shape) or (len(shape) == len(t.shape) and shape and shape[0] != 1):
        raise Unsupported(f"a constant of shape {shape} would broadcast over the batch axis of {t.shape}")


def _check_pair(a, b):
    if len(a.shape) != len(b.shape):
        raise Unsupported(f"operands of rank {len(a.shape)} and {len(b.shape)} broadcast across the batch axis")


def _result_check(ctx):
    v = ctx.result()
    if isinstance(v, torch.Tensor) and not v.is_floating_point() and ctx.reads_counts():
        return                  # arithmetic on a mask (1 - attention_mask): the graph holds it as floats
    if not isinstance(v, torch.Tensor) or v.dtype != ctx.dtype:
        raise Unsupported(f"its result has dtype {getattr(v, 'dtype', type(v).__name__)}, the model's is "
                          f"{ctx.dtype}")


def _alpha(alpha):
    if alpha is None:
        return 1
    if not is_number(alpha):
        raise Unsupported(f"alpha={alpha!r}")
    return alpha


def _weighted_sum(ctx, a, b, factor, fold, always: bool, factor_name: str, product_name: str):
    """a + factor * b; constants become constant nodes (the rules treat them as biases), a constant b
    folded with the factor (``fold``). The product node is there when the factor is not 1, or ``always``."""

    def scaled(t):
        if factor == 1 and not always:
            return t
        return ctx.emit("mul", [t, ctx.const(float(factor), factor_name)], t.shape, name=ctx.sub(product_name))
    if is_t(a) and is_t(b):
        a, b = ctx.materialize(a), ctx.materialize(b)
        _check_pair(a, b)
        return ctx.emit("add", [a, scaled(b)], ctx.out_shape())
    if is_t(a):
        t = ctx.materialize(a)
        _check_operand(t, b)
        return ctx.emit("add", [t, ctx.const(fold(b))], ctx.out_shape())
    t = ctx.materialize(b)
    _check_operand(t, a)
    t = scaled(t)
    return ctx.emit("add", [ctx.const(a), t], ctx.out_shape())


@TABLE.register(operator.add, operator.iadd, torch.add, *_methods("add", "add_"), **ELEMENTWISE)
def add(ctx, input, other, alpha=1):
    """input + alpha * other."""
    _result_check(ctx)
    alpha = _alpha(alpha)
    return _weighted_sum(ctx, input, other, alpha, lambda c: c * alpha if alpha != 1 else c, False, "alpha",
                         "scaled")


def _negated(c, alpha):
    if isinstance(c, torch.Tensor):
        return -(c.detach().to(torch.float64) * alpha)
    return -float(c) * alpha


@TABLE.register(operator.sub, operator.isub, torch.sub, torch.subtract, *_methods("sub", "sub_", "subtract"),
                **ELEMENTWISE)
def sub(ctx, input, other, alpha=1):
    """input - alpha * other == input + (-alpha) * other."""
    _result_check(ctx)
    alpha = _alpha(alpha)
    return _weighted_sum(ctx, input, other, -float(alpha), lambda c: _negated(c, alpha), True, "minus", "neg")


@TABLE.register(operator.mul, operator.imul, torch.mul, torch.multiply, *_methods("mul", "mul_", "multiply"),
                **ELEMENTWISE)
def mul(ctx, input, other):
    _result_check(ctx)
    if is_t(input) and is_t(other):
        a, b = ctx.materialize(input), ctx.materialize(other)
        _check_pair(a, b)
        for x, m in ((a, b), (b, a)):       # x times a boolean mask: a selection, the mask takes no relevance
            if m.name in ctx.counts and getattr(m, "dtype", None) == torch.bool and x.name not in ctx.counts:
                return ctx.emit("where", [m, x, ctx.const(0.0, "zero")], ctx.out_shape())
        return ctx.emit("mul", [a, b], ctx.out_shape())
    t, c = (input, other) if is_t(input) else (other, input)
    t = ctx.materialize(t)
    _check_operand(t, c)
    return ctx.emit("mul", [t, ctx.const(c, "factor")], ctx.out_shape())


@TABLE.register(operator.truediv, operator.itruediv, torch.div, torch.divide, torch.true_divide,
                *_methods("div", "div_", "divide"), **ELEMENTWISE)
def div(ctx, input, other, rounding_mode=None):
    a, b = input, other
    _result_check(ctx)
    if rounding_mode is not None:
        raise Unsupported(f"rounding_mode={rounding_mode!r}")
    if is_t(b):
        num = ctx.materialize(a) if is_t(a) else ctx.const(a, "dividend")
        den = ctx.materialize(b)
        if is_t(a):
            _check_pair(num, den)
        return ctx.emit("div", [num, den], ctx.out_shape())
    t = ctx.materialize(a)
    _check_operand(t, b)
    if isinstance(b, torch.Tensor):
        recip = 1.0 / b.detach().to(torch.float64)
    else:
        if float(b) == 0:
            raise Unsupported("division by zero")
        recip = 1.0 / float(b)
    return ctx.emit("mul", [t, ctx.const(recip, "reciprocal")], ctx.out_shape())


@TABLE.register(operator.neg, torch.neg, torch.negative, *_methods("neg", "negative"), **ELEMENTWISE)
def neg(ctx, input):
    t = ctx.tensor(input)
    return ctx.emit("mul", [t, ctx.const(-1.0, "minus_one")], t.shape)


@TABLE.register(operator.pos, **ELEMENTWISE)
def pos(ctx, input):
    return ctx.tensor(input)


# ----------------------------------------------------------------------------------------------
# what passes its input on: dropout in eval mode, identity, casts


@TABLE.register(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
                **ELEMENTWISE)
def dropout(ctx, input, p=0.5, training=True, inplace=False):
    if training and p:
        raise Unsupported("dropout with training=True is random")
    return ctx.tensor(input)


@TABLE.register("torchvision.ops.stochastic_depth.stochastic_depth")
def stochastic_depth(ctx, input, p, mode, training=True):
    """torchvision's StochasticDepth in eval mode passes its input on."""
    return dropout(ctx, input, p, training)


@TABLE.register(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                nn.FeatureAlphaDropout, **ELEMENTWISE)
def identity_module(ctx, m, input):
    return ctx.tensor(input)


@TABLE.register(*_methods("contiguous", "clone", "to", "float", "double", "type_as", "cpu", "cuda", "long", "int"),
                **ELEMENTWISE)
def cast(ctx, input, args=(), **kwargs):
    """A copy or a cast that keeps shape and dtype; a mask or lengths cast keeps counting."""
    x = ctx.tensor(input)
    dtype = ctx.result().dtype
    out = ctx.out_shape(counts=x.name in ctx.counts)
    if out == x.shape and dtype != x.dtype and x.name in ctx.counts:
        return Tensor(x.name, x.shape, dtype=dtype)     # the graph holds masks and lengths as floats
    if out != x.shape or dtype != x.dtype:
        raise Unsupported(f"changes shape or dtype ({x.shape} {x.dtype} -> {out} {dtype})")
    return x
