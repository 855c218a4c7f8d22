"""torchvision's Swin Transformer (v1 and v2): its window attention and patch merging, which torchvision
marks with ``torch.fx.wrap`` so that fx records each as one call.

torch folds the windows into the batch axis (``B * windows``); the graph keeps the batch axis first, so the
windows become an axis of their own: (N, windows, tokens, C), with the same numbers. The cyclic shift is a
``roll``, the shift mask and the relative position bias are constants (the bias of v2 comes from an MLP on
constant tables, so it is static too), and v2's cosine attention normalises q and k with ``rms_norm``
(:func:`~attribx_torch.converters.transformer.unit_vectors`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..values import Unsupported
from .base import TABLE
from .transformer import attend, reshaped, transposed, unit_vectors

_SWIN = "torchvision.models.swin_transformer"


def _shift_mask(pad_h, pad_w, window, shift) -> np.ndarray:
    """torchvision's mask of the shifted windows, (windows, T, T): -100 between tokens of different regions."""
    regions = np.zeros((pad_h, pad_w))
    count = 0
    for h in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for w in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            regions[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    regions = regions.reshape(pad_h // window[0], window[0], pad_w // window[1], window[1])
    regions = regions.transpose(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    diff = regions[:, None, :] - regions[:, :, None]
    return np.where(diff != 0, -100.0, 0.0)


@TABLE.register(f"{_SWIN}.shifted_window_attention")
def shifted_window_attention(ctx, input, qkv_weight, proj_weight, relative_position_bias, window_size, num_heads,
                             shift_size, attention_dropout=0.0, dropout=0.0, qkv_bias=None, proj_bias=None,
                             logit_scale=None, training=True):
    if training and (attention_dropout or dropout):
        raise Unsupported("dropout in training mode (call model.eval())")
    x = ctx.tensor(input)
    _, H, W, C = x.shape
    wh, ww = int(window_size[0]), int(window_size[1])
    pad_b, pad_r = (wh - H % wh) % wh, (ww - W % ww) % ww
    if pad_b or pad_r:
        x = ctx.emit("pad", [x], (1, H + pad_b, W + pad_r, C), {"pads": [(0, pad_b), (0, pad_r), (0, 0)]},
                     name=ctx.sub("pad"))
    ph, pw = H + pad_b, W + pad_r
    shift = [0 if wh >= ph else int(shift_size[0]), 0 if ww >= pw else int(shift_size[1])]
    if sum(shift) > 0:
        x = ctx.emit("roll", [x], x.shape, {"shifts": (-shift[0], -shift[1]), "axes": (1, 2)}, name=ctx.sub("shift"))
    nh, nw, T = ph // wh, pw // ww, wh * ww
    heads, d = int(num_heads), C // int(num_heads)
    # windows: (N, nh, wh, nw, ww, C) -> (N, nh, nw, wh, ww, C) -> (N, windows, T, C)
    x = reshaped(ctx, x, (1, nh, wh, nw, ww, C), ctx.sub("grid"))
    x = transposed(ctx, x, (0, 1, 3, 2, 4, 5), ctx.sub("window_order"))
    x = reshaped(ctx, x, (1, nh * nw, T, C), ctx.sub("windows"))
    bias = None if qkv_bias is None else ctx.param(qkv_bias, "qkv bias").copy()
    if logit_scale is not None and bias is not None:
        bias[C:2 * C] = 0.0         # v2: no key bias
    qkv = ctx.emit("linear", [x], (1, nh * nw, T, 3 * C), {}, {"weight": ctx.param(qkv_weight, "qkv weight"),
                                                               "bias": bias}, name=ctx.sub("qkv"))
    qkv = reshaped(ctx, qkv, (1, nh * nw, T, 3, heads, d), ctx.sub("qkv_heads"))
    parts = []
    for i, tag in enumerate("qkv"):
        p = ctx.emit("slice", [qkv], (1, nh * nw, T, 1, heads, d), {"axis": 3, "start": i, "stop": i + 1,
                                                                     "step": None}, name=ctx.sub(tag))
        p = reshaped(ctx, p, (1, nh * nw, T, heads, d), ctx.sub(f"{tag}_heads"))
        parts.append(transposed(ctx, p, (0, 1, 3, 2, 4), ctx.sub(f"{tag}_t")))
    q, k, v = parts
    table = relative_position_bias.detach().to("cpu").to(torch.float64).numpy().reshape(heads, T, T)
    if sum(shift) > 0:
        table = table[None] + _shift_mask(ph, pw, (wh, ww), shift)[:, None]     # (windows, heads, T, T)
    if logit_scale is not None:     # v2: cosine attention, scaled per head
        q = unit_vectors(ctx, q, -1, 1e-12, ctx.sub("q_unit"))
        k = unit_vectors(ctx, k, -1, 1e-12, ctx.sub("k_unit"))
        scale = torch.clamp(logit_scale.detach(), max=math.log(100.0)).exp().to("cpu").to(torch.float64).numpy()
        out = _attend_per_head(ctx, q, k, v, scale.reshape(heads, 1, 1), table)
    else:
        out = attend(ctx, q, k, v, d ** -0.5, table, name=ctx.sub("attended"))[0]
    out = transposed(ctx, out, (0, 1, 3, 2, 4), ctx.sub("merge"))
    out = reshaped(ctx, out, (1, nh * nw, T, C), ctx.sub("merged"))
    out = ctx.emit("linear", [out], out.shape, {}, {"weight": ctx.param(proj_weight, "proj weight"),
                                                    "bias": ctx.param(proj_bias, "proj bias")}, name=ctx.sub("proj"))
    out = reshaped(ctx, out, (1, nh, nw, wh, ww, C), ctx.sub("ungrid"))
    out = transposed(ctx, out, (0, 1, 3, 2, 4, 5), ctx.sub("unwindow"))
    out = reshaped(ctx, out, (1, ph, pw, C), ctx.sub("unwindowed"))
    if sum(shift) > 0:
        out = ctx.emit("roll", [out], out.shape, {"shifts": tuple(shift), "axes": (1, 2)}, name=ctx.sub("unshift"))
    if pad_b or pad_r:
        out = ctx.emit("slice", [out], (1, H, pw, C), {"axis": 1, "start": 0, "stop": H, "step": None},
                       name=ctx.sub("crop_h"))
        out = ctx.emit("slice", [out], (1, H, W, C), {"axis": 2, "start": 0, "stop": W, "step": None})
    return out


def _attend_per_head(ctx, q, k, v, scale, table):
    """Attention whose scores are scaled per head (Swin v2's logit scale) before the bias is added."""
    s_shape = tuple(q.shape[:-1]) + (k.shape[-2],)
    kt = transposed(ctx, k, (0, 1, 2, 4, 3), ctx.sub("key_t"))
    s = ctx.emit("matmul", [q, kt], s_shape, name=ctx.sub("scores"))
    s = ctx.emit("mul", [s, ctx.const(scale, "logit_scale")], s_shape, name=ctx.sub("scaled"))
    s = ctx.emit("add", [s, ctx.const(table, "bias")], s_shape, name=ctx.sub("biased"))
    p = ctx.emit("softmax", [s], s_shape, {"axis": len(s_shape) - 1}, name=ctx.sub("weights"))
    return ctx.emit("matmul", [p, v], tuple(q.shape[:-1]) + (v.shape[-1],), name=ctx.sub("attended"))


@TABLE.register(f"{_SWIN}._patch_merging_pad")
def patch_merging_pad(ctx, x):
    """(N, H, W, C) padded to even H and W, its four interleaved quarters concatenated along C."""
    x = ctx.tensor(x)
    if len(x.shape) != 4:
        raise Unsupported(f"patch merging of a rank-{len(x.shape)} tensor; Swin's is (N, H, W, C)")
    _, H, W, C = x.shape
    if H % 2 or W % 2:
        x = ctx.emit("pad", [x], (1, H + H % 2, W + W % 2, C), {"pads": [(0, H % 2), (0, W % 2), (0, 0)]},
                     name=ctx.sub("pad"))
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    quarters = []
    for i, (r, c) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        rows = ctx.emit("slice", [x], (1, h2, x.shape[2], C), {"axis": 1, "start": r, "stop": None, "step": 2},
                        name=ctx.sub(f"rows{i}"))
        quarters.append(ctx.emit("slice", [rows], (1, h2, w2, C), {"axis": 2, "start": c, "stop": None, "step": 2},
                                 name=ctx.sub(f"x{i}")))
    return ctx.emit("concat", quarters, (1, h2, w2, 4 * C), {"axis": 3})
