"""aten ops of exported transformers (HuggingFace BERT, GPT-2, Llama, ViT): norms, attention, products of
two signals, broadcasts, selections and dtype casts.

``scaled_dot_product_attention`` is written out as the graph's ops (q·kᵀ, scale, mask, softmax, ·v), so the
attention rules see its matmuls and softmax; a causal or a constant mask is a constant added to the scores
(−∞ where masked, as torch's math kernel does). Masks computed from the model's input are not yet in this
translation. A float-to-float cast (Llama upcasts its softmax to float32) passes the value on: the graph
computes in the model's one dtype.
"""
from __future__ import annotations

import math

import numpy as np
import torch

import attribx_torch.converters.elementwise as elementwise
import attribx_torch.converters.shape as shape_ops

from ..values import Unsupported, is_t
from .aten import aten
from .base import TABLE


def _norm(ctx, op, input, normalized_shape, params, eps):
    x = ctx.tensor(input)
    n = len(tuple(normalized_shape))
    if n >= len(x.shape):
        raise Unsupported(f"{op} over {n} axes of a rank-{len(x.shape)} value would normalise over the batch axis")
    axes = tuple(range(len(x.shape) - n, len(x.shape)))
    return ctx.emit(op, [x], tuple(x.shape), {"axes": axes, "eps": float(eps)},
                    {k: ctx.param(v, k) for k, v in params.items()})


@TABLE.register(*aten("layer_norm.default"))
def layer_norm(ctx, input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    return _norm(ctx, "layer_norm", input, normalized_shape, {"scale": weight, "bias": bias}, eps)


@TABLE.register(*aten("native_layer_norm.default"), multiple=True)
def native_layer_norm(ctx, input, normalized_shape, weight, bias, eps):
    out = _norm(ctx, "layer_norm", input, normalized_shape, {"scale": weight, "bias": bias}, eps)
    return (out,) + (None,) * (len(ctx.result()) - 1)


@TABLE.register(*aten("rms_norm.default"))
def rms_norm(ctx, input, normalized_shape, weight=None, eps=None):
    if eps is None:
        eps = torch.finfo(ctx.dtype).eps
    return _norm(ctx, "rms_norm", input, normalized_shape, {"scale": weight}, eps)


# ----------------------------------------------------------------------------------------------
# products of two signals and attention


def _swap_last(ctx, x, suffix):
    perm = tuple(range(len(x.shape) - 2)) + (len(x.shape) - 1, len(x.shape) - 2)
    return ctx.emit("transpose", [x], tuple(x.shape[p] for p in perm), {"perm": perm}, name=ctx.sub(suffix))


def product(ctx, a, b, out_shape=None, name=None):
    """a @ b of two signals (the graph's ``matmul``, batch axis first in both)."""
    a, b = ctx.materialize(a), ctx.materialize(b)
    if len(a.shape) < 2 or len(b.shape) < 2 or len(a.shape) != len(b.shape):
        raise Unsupported(f"a matrix product of values of rank {len(a.shape)} and {len(b.shape)}; the graph "
                          f"multiplies values of the same rank (>= 3 with the batch axis)")
    shape = out_shape or tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2])) + (a.shape[-2], b.shape[-1])
    return ctx.emit("matmul", [a, b], shape, name=name)


@TABLE.register(*aten("bmm.default"))
def bmm(ctx, input, mat2):
    if not (is_t(input) and is_t(mat2)):
        raise Unsupported("bmm with a constant operand (a batched weight)")
    return product(ctx, input, mat2, ctx.out_shape())


def _mask_constant(mask, shape, dtype) -> np.ndarray:
    """An additive mask (0 where attended, −∞ where not) from a boolean or float attention mask."""
    m = mask.detach().to("cpu")
    if m.dtype == torch.bool:
        m = torch.zeros(m.shape, dtype=torch.float64).masked_fill(~m, -math.inf)
    a = m.to(torch.float64).numpy()
    while a.ndim > len(shape) - 1 and a.shape[0] == 1:    # a leading batch axis of size 1: none
        a = a[0]
    return a


def _repeat_heads(ctx, x, times, axis, suffix):
    """x with each head repeated ``times`` times along ``axis`` (grouped-query attention's key/value heads)."""
    if times == 1:
        return x
    heads = x.shape[axis]
    parts = [ctx.emit("slice", [x], x.shape[:axis] + (1,) + x.shape[axis + 1:],
                      {"axis": axis, "start": h, "stop": h + 1, "step": None}, name=ctx.sub(f"{suffix}{h}"))
             for h in range(heads)]
    shape = x.shape[:axis] + (heads * times,) + x.shape[axis + 1:]
    return ctx.emit("concat", [p for p in parts for _ in range(times)], shape, {"axis": axis},
                    name=ctx.sub(suffix))


@TABLE.register(*aten("scaled_dot_product_attention.default"))
def sdpa(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q·kᵀ · scale + mask) · v, as the graph's ops."""
    if dropout_p:
        raise Unsupported(f"dropout_p={dropout_p} in attention is random")
    q, k, v = (ctx.tensor(t, what) for t, what in ((query, "query"), (key, "key"), (value, "value")))
    if enable_gqa and q.shape[-3] != k.shape[-3]:
        times = q.shape[-3] // k.shape[-3]
        k = _repeat_heads(ctx, k, times, len(k.shape) - 3, "key_heads")
        v = _repeat_heads(ctx, v, times, len(v.shape) - 3, "value_heads")
    scores = product(ctx, q, _swap_last(ctx, k, "key_t"), name=ctx.sub("scores"))
    factor = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    scores = ctx.emit("mul", [scores, ctx.const(factor, "scale")], scores.shape, name=ctx.sub("scaled"))
    length, source = scores.shape[-2], scores.shape[-1]
    masks = []
    if is_causal:
        masks.append(np.triu(np.full((length, source), -math.inf), 1))
    if attn_mask is not None and not is_t(attn_mask):
        masks.append(_mask_constant(attn_mask, scores.shape, ctx.dtype))
    for i, m in enumerate(masks):
        scores = ctx.emit("add", [scores, ctx.const(m, f"mask{i}")], scores.shape, name=ctx.sub(f"masked{i}"))
    if is_t(attn_mask):         # an additive mask computed from a mask input (attention_mask)
        scores = ctx.emit("add", [scores, ctx.materialize(attn_mask)], scores.shape, name=ctx.sub("masked"))
    weights = ctx.emit("softmax", [scores], scores.shape, {"axis": len(scores.shape) - 1}, name=ctx.sub("weights"))
    return product(ctx, weights, v, ctx.out_shape())


# ----------------------------------------------------------------------------------------------
# broadcasts, selections, casts


@TABLE.register(*aten("expand.default"))
def expand(ctx, input, size, implicit=False):
    """A signal broadcast along axes of size one: copies joined (relevance sums over them)."""
    x = ctx.tensor(input)
    out = ctx.out_shape()
    if len(out) != len(x.shape) or out[0] != x.shape[0]:
        raise Unsupported(f"expands {x.shape} to {out}: a new leading axis or the batch axis")
    for axis, (a, b) in enumerate(zip(x.shape, out)):
        if a != b:
            shape = x.shape[:axis] + (b,) + x.shape[axis + 1:]
            x = ctx.emit("concat", [x] * b, shape, {"axis": axis}, name=ctx.sub(f"expand{axis}"))
    return x


@TABLE.register(*aten("where.self"))
def where(ctx, condition, input, other):
    """A selection decided by a constant condition (a causal mask); relevance goes to what is selected."""
    if is_t(condition):
        raise Unsupported("a selection decided by a value computed from the input")
    cond = condition.detach().to(torch.float64)
    ins = [ctx.materialize(v) if is_t(v) else ctx.const(v, name) for v, name in ((input, "a"), (other, "b"))]
    return ctx.emit("where", [ctx.const(cond, "condition"), *ins], ctx.out_shape())


@TABLE.register(*aten("masked_fill.Scalar"))
def masked_fill(ctx, input, mask, value):
    if is_t(mask):
        raise Unsupported("a fill decided by a value computed from the input")
    return where(ctx, ~mask.to(torch.bool), input, torch.tensor(float(value)))


def _float_cast(ctx, x):
    x = ctx.tensor(x)
    result = ctx.result()
    if not isinstance(result, torch.Tensor) or not result.is_floating_point() or tuple(result.shape) != x.shape:
        raise Unsupported(f"a cast to {getattr(result, 'dtype', type(result).__name__)}; the graph casts between "
                          f"float dtypes only (it computes in the model's one dtype)")
    return x


@TABLE.register(*aten("to.dtype", "to.dtype_layout", "to.device", "_to_copy.default", "type_as.default"))
def to(ctx, input, *args, **kwargs):
    return _float_cast(ctx, input)


@TABLE.register(*aten("softmax.int"))
def softmax(ctx, input, dim, dtype=None):
    """Softmax; a float dtype argument (Llama's float32 softmax) is the graph's dtype."""
    if dtype is not None and not dtype.is_floating_point:
        raise Unsupported(f"softmax with dtype={dtype}")
    return elementwise.softmax(ctx, input, dim)


@TABLE.register(*aten("split.Tensor", "split_with_sizes.default"))
def split(ctx, input, split_size, dim=0):
    return shape_ops.split(ctx, input, split_size, dim)


@TABLE.register(*aten("cat.default"))
def cat(ctx, tensors, dim=0):
    """cat where some pieces are constants (a class token): each constant as one copy per sample (``fill``)."""
    signal = next((t for t in tensors if is_t(t)), None)
    if signal is None:
        raise Unsupported("concatenates no value computed from the input")
    ref = ctx.materialize(signal)
    pieces = []
    for i, t in enumerate(tensors):
        if is_t(t):
            pieces.append(t)
            continue
        if not isinstance(t, torch.Tensor) or t.dim() != len(ref.shape) or t.shape[0] != 1:
            raise Unsupported("concatenates a constant that has no batch axis of size one")
        pieces.append(ctx.emit("fill", [ref], tuple(t.shape), {}, {"value": ctx.param(t[0], "constant")},
                               name=ctx.sub(f"constant{i}")))
    return shape_ops.cat(ctx, pieces, dim)


@TABLE.register(*aten("ne.Scalar"))
def not_equal(ctx, input, other):
    """``attention_mask != 0`` on a mask input: the graph's ``mask`` op (1.0 where it differs; no relevance)."""
    x = ctx.tensor(input)
    if x.name not in ctx.counts:
        raise Unsupported("a comparison of a value computed from the input; the graph compares mask inputs and "
                          "token ids only")
    return ctx.emit("mask", [x], tuple(x.shape), {"value": float(other), "axes": None})


@TABLE.register(*aten("rsub.Scalar"))
def rsub(ctx, input, other, alpha=1):
    """other - alpha * input."""
    return elementwise.sub(ctx, other, input, alpha)
