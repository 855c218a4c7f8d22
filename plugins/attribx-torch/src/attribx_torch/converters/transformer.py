"""Converters for what transformers are made of: layer and RMS norms (and ``F.normalize``), matrix products
(``@``, ``matmul``, ``bmm``, ``einsum``) of two signals or of a signal and a constant, scaled dot-product
attention, ``nn.MultiheadAttention``, and per-sample copies of a parameter (a class token ``expand``-ed over
the batch and concatenated with the patches).

A product of two signals is a ``matmul`` node (the rules' product of two signals); a signal times a
constant matrix stays a ``linear`` layer (the rules of weighted layers). Attention is written out in graph
ops (``matmul``, ``softmax``, masks as ``where`` with a constant condition), so every rule and engine sees
its parts. What cannot be expressed exactly is refused by name (dropout in attention, extra key/value
biases, einsum equations that are not (batched) matrix products).
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..values import Swapped, Unsupported, is_t, norm_dim
from .base import TABLE

#: the score masked positions get instead of -inf: softmax gives them exactly 0 (as -inf does), and the
#: rules, which multiply the softmax input by relevance, stay finite
MASKED = -1e30


# ----------------------------------------------------------------------------------------------
# small emitters shared by the converters below (shapes are torch's, batch size 1)


def transposed(ctx, x, perm, name):
    perm = tuple(int(p) for p in perm)
    if perm == tuple(range(len(perm))):
        return x
    return ctx.emit("transpose", [x], tuple(x.shape[p] for p in perm), {"perm": perm}, name=name)


def reshaped(ctx, x, shape, name):
    shape = tuple(int(d) for d in shape)
    if shape == tuple(x.shape):
        return x
    if shape[0] != 1 or math.prod(shape) != math.prod(x.shape):
        raise Unsupported(f"reshapes {x.shape} to {shape}: the batch axis would not stay first")
    return ctx.emit("reshape", [x], shape, {"shape": shape[1:]}, name=name)


def swap_last(ctx, x, name):
    n = len(x.shape)
    return transposed(ctx, x, list(range(n - 2)) + [n - 1, n - 2], name)


def scaled(ctx, x, factor, name):
    if factor == 1:
        return x
    return ctx.emit("mul", [x, ctx.const(float(factor), "scale")], x.shape, name=name)


def signal(ctx, v, what):
    """A graph tensor for an argument that must be computed from the input."""
    if isinstance(v, Swapped):
        return ctx.base(v)
    if not is_t(v):
        raise Unsupported(f"its {what} does not depend on the input (only signals are supported there)")
    return ctx.materialize(v)


# ----------------------------------------------------------------------------------------------
# normalisations


@TABLE.register(F.layer_norm)
def layer_norm(ctx, input, normalized_shape, weight=None, bias=None, eps=1e-5):
    x = ctx.tensor(input)
    n = 1 if isinstance(normalized_shape, int) else len(tuple(normalized_shape))
    if n >= len(x.shape):
        raise Unsupported(f"normalises over {n} axes of a rank-{len(x.shape)} tensor: the batch axis too")
    return ctx.emit("layer_norm", [x], ctx.out_shape(), {"axes": tuple(range(-n, 0)), "eps": float(eps)},
                    {"scale": ctx.param(weight, "weight"), "bias": ctx.param(bias, "bias")})


@TABLE.register(nn.LayerNorm)
def layer_norm_module(ctx, m, input):
    return layer_norm(ctx, input, m.normalized_shape, m.weight, m.bias, m.eps)


@TABLE.register(F.rms_norm)
def rms_norm(ctx, input, normalized_shape, weight=None, eps=None):
    x = ctx.tensor(input)
    n = 1 if isinstance(normalized_shape, int) else len(tuple(normalized_shape))
    if n >= len(x.shape):
        raise Unsupported(f"normalises over {n} axes of a rank-{len(x.shape)} tensor: the batch axis too")
    eps = torch.finfo(ctx.dtype).eps if eps is None else eps      # torch's default
    return ctx.emit("rms_norm", [x], ctx.out_shape(), {"axes": tuple(range(-n, 0)), "eps": float(eps)},
                    {"scale": ctx.param(weight, "weight")})


@TABLE.register(nn.RMSNorm)
def rms_norm_module(ctx, m, input):
    return rms_norm(ctx, input, m.normalized_shape, m.weight, m.eps)


def unit_vectors(ctx, x, dim, eps, name):
    """x / max(||x||, eps) along ``dim`` as an ``rms_norm`` (x / sqrt(mean(x²) + eps²/n)) times 1/sqrt(n): the
    same numbers wherever ||x|| is well above eps; the norm is a normalisation for the rules (a constant
    for relevance, as CP-LRP and AttnLRP treat normalisation denominators)."""
    d = norm_dim(dim, len(x.shape))
    if d == 0:
        raise Unsupported("normalises along the batch axis")
    n = x.shape[d]
    r = ctx.emit("rms_norm", [x], x.shape, {"axes": (d,), "eps": float(eps) ** 2 / n}, name=ctx.sub("rms"))
    return scaled(ctx, r, 1 / math.sqrt(n), name)


@TABLE.register(F.normalize)
def normalize(ctx, input, p=2.0, dim=1, eps=1e-12, out=None):
    if p != 2 or out is not None:
        raise Unsupported(f"normalize with p={p}" + (" and out=" if out is not None else "")
                          + "; the graph has the Euclidean norm (p=2)")
    return unit_vectors(ctx, ctx.tensor(input), dim, eps, None)


# ----------------------------------------------------------------------------------------------
# matrix products


def _const_array(ctx, c) -> np.ndarray:
    if not isinstance(c, torch.Tensor):
        raise Unsupported(f"a matrix product with a {type(c).__name__}")
    return c.detach().to("cpu").to(torch.float64).numpy()


def product(ctx, a, b, name=None, out_shape=None):
    """a @ b where a or b (or both) is a graph tensor and the other may be a constant array."""
    out = tuple(out_shape) if out_shape is not None else ctx.out_shape()
    if is_t(a) and is_t(b):
        a, b = ctx.materialize(a), ctx.materialize(b)
        if len(a.shape) < 2 or len(a.shape) != len(b.shape):
            raise Unsupported(f"a matrix product of shapes {a.shape} and {b.shape}: both need the same rank "
                              f">= 3 (batch axis first), else broadcasting would cross the batch axis")
        return ctx.emit("matmul", [a, b], out, name=name)
    if is_t(a):
        a = ctx.materialize(a)
        w = b if isinstance(b, np.ndarray) else _const_array(ctx, b)
        if w.ndim < 2 or len(a.shape) < 2 or w.ndim >= len(a.shape):
            raise Unsupported(f"a matrix product of a signal {a.shape} and a constant {w.shape}: vectors, and "
                              f"constants with as many axes as the signal (one over the batch axis), are not "
                              f"supported")
        if w.ndim == 2:         # a weighted layer: the rules of linear layers apply
            return ctx.emit("linear", [a], out, {}, {"weight": np.ascontiguousarray(w.T)}, name=name)
        return ctx.emit("matmul", [a, ctx.const(w, "matrix")], out, name=name)
    b = ctx.materialize(b)
    w = a if isinstance(a, np.ndarray) else _const_array(ctx, a)
    if w.ndim < 2 or len(b.shape) < 2 or w.ndim >= len(b.shape):
        raise Unsupported(f"a matrix product of a constant {w.shape} and a signal {b.shape}: vectors, and "
                          f"constants with as many axes as the signal, are not supported")
    return ctx.emit("matmul", [ctx.const(w, "matrix"), b], out, name=name)


@TABLE.register(operator.matmul, torch.matmul, "method:matmul", torch.bmm, "method:bmm")
def matmul(ctx, input, other):
    return product(ctx, input, other)


_SPARE = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _einsum_terms(equation, ranks):
    """The equation's operand and output letters, '...' expanded to spare letters (aligned right)."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise Unsupported(f"einsum {equation!r} names {len(terms)} operands, it was given {len(ranks)}")
    spare = [c for c in _SPARE if c not in eq]
    n_ell = max([r - (len(t) - 3) for t, r in zip(terms, ranks) if "..." in t], default=0)
    ell = "".join(spare[:n_ell])
    terms = [t.replace("...", ell[n_ell - (r - (len(t) - 3)):]) if "..." in t else t for t, r in zip(terms, ranks)]
    if not arrow:           # implicit output: the ellipsis, then the letters used once, sorted
        once = sorted(c for c in set("".join(terms)) if "".join(terms).count(c) == 1 and c not in ell)
        out = ell + "".join(once)
    out = out.replace("...", ell)
    for t, r in zip(terms, ranks):
        if len(t) != r or len(set(t)) != len(t):
            raise Unsupported(f"einsum {equation!r}: operand {t!r} does not fit rank {r} or repeats a letter "
                              f"(diagonals and traces are not matrix products)")
    return terms, out


@TABLE.register(torch.einsum)
def einsum(ctx, equation, operands=()):
    """Two-operand einsums that are (batched) matrix products, with any transposes: the operands are
    permuted to (batch, rows, contracted) and (batch, contracted, columns), multiplied, and the result
    permuted to the output's order. Sums over an axis of one operand, diagonals and more than two operands
    are refused, naming the equation."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if len(operands) != 2:
        raise Unsupported(f"einsum {equation!r} with {len(operands)} operands; only products of two are matrix "
                          f"products")
    a, b = operands
    shapes = [tuple(v.shape) for v in operands]
    (ta, tb), out = _einsum_terms(equation, [len(s) for s in shapes])
    sig = [is_t(v) for v in operands]
    size = {}
    for t, s in ((ta, shapes[0]), (tb, shapes[1])):
        for c, d in zip(t, s):
            size[c] = max(size.get(c, 1), int(d))
    sample = {t[0] for t, s in zip((ta, tb), sig) if s}
    if len(sample) != 1 or out[:1] != next(iter(sample)) or any(next(iter(sample)) in t
                                                                  for t, s in zip((ta, tb), sig) if not s):
        raise Unsupported(f"einsum {equation!r}: the batch axis must be the first axis of every input that "
                          f"depends on the model input and of the result, and of no constant")
    extra = [c for c in ta + tb if c not in out and not (c in ta and c in tb)]
    if extra or any(c not in ta + tb for c in out) or not any(c in tb and c not in out for c in ta):
        raise ctx.no_translation(f"{ctx._what(ctx.node)} with equation {equation!r} (einsums that are (batched) "
                                 f"matrix products translate: two operands, an axis contracted, none summed alone)")
    batch = [c for c in out if c in ta and c in tb or c in sample]
    rows = [c for c in out if c in ta and c not in batch]
    cols = [c for c in out if c in tb and c not in batch]
    inner = [c for c in ta if c in tb and c not in out]
    n_rows, n_cols, n_inner = (math.prod(size[c] for c in g) for g in (rows, cols, inner))

    def arrange(v, t, is_sig, order, tail, tag):
        """v permuted to ``batch + order`` letters and reshaped to batch sizes + ``tail``."""
        keep = [c for c in batch if c in t or is_sig]
        perm = [t.index(c) for c in keep + order]
        if is_sig:
            g = transposed(ctx, ctx.materialize(v), perm, ctx.sub(f"{tag}_order"))
            return reshaped(ctx, g, [size[c] for c in batch] + tail, ctx.sub(f"{tag}_rows"))
        arr = np.transpose(_const_array(ctx, v), perm)
        lead = [size[c] if c in t else 1 for c in batch if c not in sample]      # no batch axis on constants
        return arr.reshape(lead + tail)

    left = arrange(a, ta, sig[0], rows + inner, [n_rows, n_inner], "a")
    right = arrange(b, tb, sig[1], inner + cols, [n_inner, n_cols], "b")
    flat_shape = [size[c] for c in batch] + [n_rows, n_cols]
    final = batch + rows + cols
    last = final == list(out)
    y = product(ctx, left, right, name=ctx.sub("product") if not last or flat_shape != [size[c] for c in final]
                else None, out_shape=flat_shape)
    y = reshaped(ctx, y, [size[c] for c in final], None if last else ctx.sub("split"))
    return transposed(ctx, y, [final.index(c) for c in out], None)


# ----------------------------------------------------------------------------------------------
# attention


def attend(ctx, q, k, v, scale, bias=None, keep=None, extra=None, name=None):
    """softmax(q @ kᵀ · scale + bias, masked where ``keep`` is 0) @ v: (output, attention weights).

    ``bias`` and ``keep`` are constant arrays broadcasting over the scores (batch axis excluded); ``extra``
    a list of (graph tensor, kind) masks computed from the input: kind "keep" (1 where attended), "drop" (1
    where masked) or "add" (added to the scores)."""
    scores_shape = tuple(q.shape[:-1]) + (k.shape[-2],)
    s = ctx.emit("matmul", [q, swap_last(ctx, k, ctx.sub("key_t"))], scores_shape, name=ctx.sub("scores"))
    s = scaled(ctx, s, scale, ctx.sub("scaled"))
    if bias is not None:
        s = ctx.emit("add", [s, ctx.const(bias, "bias")], scores_shape, name=ctx.sub("biased"))
    for m, kind in extra or ():
        if kind == "add":
            s = ctx.emit("add", [s, m], scores_shape, name=ctx.sub("padded"))
        else:
            pair = [s, ctx.const(MASKED, "masked")]
            s = ctx.emit("where", [m] + (pair if kind == "keep" else pair[::-1]), scores_shape,
                         name=ctx.sub("padded"))
    if keep is not None:
        s = ctx.emit("where", [ctx.const(keep, "keep"), s, ctx.const(MASKED, "masked")], scores_shape,
                     name=ctx.sub("masked"))
    p = ctx.emit("softmax", [s], scores_shape, {"axis": len(scores_shape) - 1}, name=ctx.sub("weights"))
    out = ctx.emit("matmul", [p, v], scores_shape[:-1] + (v.shape[-1],), name=name)
    return out, p


def mask_parts(mask, drop_when_true: bool):
    """(bias, keep) arrays of a constant attention mask: a float mask is added (its -inf entries masked),
    a boolean one keeps where it is True (``drop_when_true``: where it is False, as nn.MultiheadAttention)."""
    m = mask.detach().to("cpu")
    if m.dtype == torch.bool:
        keep = (~m if drop_when_true else m).numpy().astype(np.float64)
        return None, keep
    arr = m.to(torch.float64).numpy()
    finite = np.isfinite(arr)
    if finite.all():
        return arr, None
    if (arr[~finite] > 0).any():
        raise Unsupported("an attention mask with +inf or NaN entries")
    return np.where(finite, arr, 0.0), finite.astype(np.float64)


def _merge_keep(a, b):
    if a is None or b is None:
        return a if b is None else b
    return a * b


@TABLE.register(F.scaled_dot_product_attention)
def scaled_dot_product_attention(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    if dropout_p:
        raise Unsupported(f"dropout_p={dropout_p}: scaled_dot_product_attention drops weights at random even "
                          f"in eval mode (pass dropout_p=0.0 when not training)")
    if enable_gqa:
        raise Unsupported("enable_gqa=True (grouped query attention: repeat the key and value heads first)")
    q, k, v = (signal(ctx, t, what) for t, what in ((query, "query"), (key, "key"), (value, "value")))
    if not len(q.shape) == len(k.shape) == len(v.shape) or len(q.shape) < 3:
        raise Unsupported(f"query, key and value of ranks {len(q.shape)}, {len(k.shape)}, {len(v.shape)}")
    bias = keep = None
    extra = []
    if attn_mask is not None:
        if is_t(attn_mask):
            m = ctx.materialize(attn_mask)
            extra.append((m, "add" if m.dtype.is_floating_point else "keep"))
        else:
            if attn_mask.dim() >= len(q.shape) and attn_mask.shape[0] != 1:
                raise Unsupported(f"a constant attn_mask of shape {tuple(attn_mask.shape)} per sample")
            bias, keep = mask_parts(attn_mask[0] if attn_mask.dim() >= len(q.shape) else attn_mask, False)
    if is_causal:
        L, S = q.shape[-2], k.shape[-2]
        keep = _merge_keep(keep, np.tril(np.ones((L, S))))
    factor = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return attend(ctx, q, k, v, factor, bias, keep, extra)[0]


def _mha_projections(m):
    """(weights, biases) of the query, key and value projections of an nn.MultiheadAttention."""
    e = m.embed_dim
    if m._qkv_same_embed_dim:
        w = m.in_proj_weight
        ws = (w[:e], w[e:2 * e], w[2 * e:])
    else:
        ws = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
    b = m.in_proj_bias
    bs = (None,) * 3 if b is None else (b[:e], b[e:2 * e], b[2 * e:])
    return ws, bs


def _heads(ctx, x, w, b, heads, tag):
    """Project (1, T, E) and split into heads: (1, heads, T, E / heads)."""
    y = ctx.emit("linear", [x], tuple(x.shape[:-1]) + (w.shape[0],), {},
                 {"weight": ctx.param(w, "weight"), "bias": ctx.param(b, "bias")}, name=ctx.sub(tag))
    d = w.shape[0] // heads
    y = reshaped(ctx, y, (1, x.shape[1], heads, d), ctx.sub(f"{tag}_heads"))
    return transposed(ctx, y, (0, 2, 1, 3), ctx.sub(f"{tag}_t"))


def _padding_mask(ctx, kpm, s):
    """nn.MultiheadAttention's key_padding_mask (1, S) as (mask graph tensor, kind) or (None, keep/bias)."""
    if is_t(kpm):
        m = reshaped(ctx, ctx.materialize(kpm), (1, 1, 1, s), ctx.sub("padding"))
        return (m, "add" if kpm.dtype.is_floating_point else "drop"), None, None
    bias, keep = mask_parts(kpm.reshape(1, 1, s), True)      # static: the same for every sample
    return None, bias, keep


@TABLE.register(nn.MultiheadAttention, time_major="aware")
def multihead_attention(ctx, m, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                        average_attn_weights=True, is_causal=False):
    """Packed or separate projections, with or without biases, batch_first either way (batch_first=False
    reads time-major views, x.transpose(0, 1), and returns one), key_padding_mask and attn_mask (bool: True
    masks; float: added), need_weights (averaged over heads or not)."""
    if m.bias_k is not None or m.add_zero_attn:
        raise Unsupported("add_bias_kv / add_zero_attn (extra key and value rows)")
    if m.training and m.dropout:
        raise Unsupported("dropout on the attention weights in training mode (call model.eval())")
    time_major = not m.batch_first
    if time_major and not all(isinstance(t, Swapped) for t in (query, key, value)):
        raise Unsupported("batch_first=False on inputs whose batch axis is first in the graph; pass x.transpose("
                          "0, 1) of a batch-first tensor (or build the layer with batch_first=True)")
    q_in, k_in, v_in = (signal(ctx, t, what) for t, what in ((query, "query"), (key, "key"), (value, "value")))
    ws, bs = _mha_projections(m)
    h = m.num_heads
    q = _heads(ctx, q_in, ws[0], bs[0], h, "q")
    k = _heads(ctx, k_in, ws[1], bs[1], h, "k")
    v = _heads(ctx, v_in, ws[2], bs[2], h, "v")
    L, S = q.shape[2], k.shape[2]
    bias = keep = None
    extra = []
    if key_padding_mask is not None:
        found, bias, keep = _padding_mask(ctx, key_padding_mask, S)
        extra += [found] if found else []
    if attn_mask is not None:
        if is_t(attn_mask) or attn_mask.dim() != 2:
            raise Unsupported("an attn_mask per sample or head ((N·heads, L, S), or computed from the input); "
                              "a constant (L, S) mask is supported")
        b2, k2 = mask_parts(attn_mask, True)
        bias = b2 if bias is None else bias if b2 is None else bias + b2
        keep = _merge_keep(keep, k2)
    out, p = attend(ctx, q, k, v, 1 / math.sqrt(q.shape[-1]), bias, keep, extra, name=ctx.sub("heads_out"))
    out = transposed(ctx, out, (0, 2, 1, 3), ctx.sub("merge"))
    out = reshaped(ctx, out, (1, L, m.embed_dim), ctx.sub("merged"))
    proj = m.out_proj
    out = ctx.emit("linear", [out], (1, L, proj.weight.shape[0]), {},
                   {"weight": ctx.param(proj.weight, "weight"), "bias": ctx.param(proj.bias, "bias")})
    weights = None
    if need_weights:
        weights = ctx.emit("reduce_mean", [p], (1, L, S), {"axes": (1,), "keepdims": False},
                           name=ctx.sub("attention")) if average_attn_weights else p
    return (Swapped(out) if time_major else out), weights


# ----------------------------------------------------------------------------------------------
# per-sample copies of a constant: class tokens


def per_sample_copy(ctx, fx_arg, like):
    """A ``fill`` node (one copy per sample of ``like``) for an argument that is a constant ``expand``-ed over
    the batch axis (``cls_token.expand(n, -1, -1)``: the same value for every sample); None otherwise."""
    n = fx_arg
    if not hasattr(n, "op") or n not in ctx.tainted or n.op != "call_method" or n.target != "expand":
        return None
    src = n.args[0]
    if hasattr(src, "op") and src in ctx.tainted:
        return None
    value = ctx.values[n]
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != 1:
        return None
    arr = value[0].detach().to("cpu").to(torch.float64).numpy()
    return ctx.emit("fill", [like], (1,) + arr.shape, {}, {"value": arr}, name=ctx.sub("copies"))
