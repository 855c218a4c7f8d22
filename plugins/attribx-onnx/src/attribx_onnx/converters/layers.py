"""Weighted layers: Gemm and MatMul (``linear``), Conv, ConvTranspose, BatchNormalization; their weights are
constants (initializers or folded values), read once into the graph's float dtype."""
from __future__ import annotations

import numpy as np

from . import TABLE, Unsupported
from .common import ints, padding, window, x_of
from .layout import last_axis_alone, like


@TABLE.register("Gemm", any_batch_axis=True, merged_batch=True)
def gemm(ctx, node, attrs):
    """alpha * A @ op(B) + beta * C with A the batch: a linear with weight alpha * op(B) (out, in). A's rows
    may hold the batch merged with other axes (nn.MultiheadAttention's output projection reads (L * N, E))."""
    if int(attrs.get("transA", 0)):
        raise Unsupported("transA=1 puts the batch axis second")
    x = x_of(ctx, node)
    if len(x.framework_shape) != 2:
        raise Unsupported(f"A has rank {len(x.framework_shape)}, Gemm needs rank 2")
    last_axis_alone(x, "a product")
    w = np.asarray(ctx.const(node.input[1], "B"), dtype=np.float64) * float(attrs.get("alpha", 1.0))
    if not int(attrs.get("transB", 0)):
        w = w.T
    bias = ctx.optional_const(node, 2, "C")
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64) * float(attrs.get("beta", 1.0))
        try:
            bias = np.broadcast_to(bias, (1, w.shape[0]))[0]
        except ValueError:
            raise Unsupported(f"C of shape {bias.shape} is not one bias per output") from None
    out = ctx.emit("linear", [x], params={"weight": ctx.float_param(w),
                                          "bias": None if bias is None else ctx.float_param(bias)})
    return like(x, out, w.shape[0])


@TABLE.register("MatMul", any_batch_axis=True, merged_batch=True)
def matmul(ctx, node, attrs):
    """x @ W with a constant (K, M) weight: a linear over the last axis (a following bias Add folds in),
    whatever axis holds x's batch. Any other product (two tensors computed from the input, as attention's
    q @ k^T and weights @ v, or a constant of another rank): the graph's ``matmul``, batched and
    broadcasting as ONNX's."""
    a, b = node.input[:2]
    if not ctx.is_const(a) and ctx.is_const(b):
        x, w = ctx.value(a), ctx.const(b, "weight")
        if w.ndim == 2 and len(x.framework_shape) >= 2:
            last_axis_alone(x, "a product")
            return like(x, ctx.emit("linear", [x], params={"weight": ctx.float_param(w.T)}), w.shape[1])
    (a, sa), (b, sb) = _unscaled(ctx, node, a), _unscaled(ctx, node, b)
    left, right = ctx.operand(a, "left"), ctx.operand(b, "right")
    for t, side in ((left, "left"), (right, "right")):
        if not t.in_graph_order:
            raise Unsupported(f"the {side} operand holds its batch on another axis than the first")
        if t.rank < 2:
            raise Unsupported(f"the {side} operand has rank {t.rank}; only operands of rank >= 2 translate "
                              f"(ONNX's 1-d vector products have no op)")
    if sa * sb == 1.0:
        return ctx.emit("matmul", [left, right])
    y = ctx.emit("matmul", [left, right], name=ctx.sub("product"))
    return ctx.emit("mul", [y, ctx.constant(sa * sb, "scale")])


def _unscaled(ctx, node, tensor: str) -> tuple[str, float]:
    """(the tensor before a scalar scale, the scale) when ``tensor`` is ``Mul(t, c)`` (or ``Div(t, c)``) read
    only by ``node``, else (tensor, 1). torch's math attention writes (q * sqrt(s)) @ (k * sqrt(s)); the
    graph takes the product first and scales it once, as torch's own graph does, so that
    rules with a stabiliser (ε) see the same products whichever way the model was written."""
    mul = ctx.producers.get(tensor)
    if mul is None or mul.op_type not in ("Mul", "Div") or ctx.consumers.get(tensor) != [node] \
            or tensor in ctx.graph_outputs:
        return tensor, 1.0
    swapped = [(mul.input[1], mul.input[0])] if mul.op_type == "Mul" else []
    for t, c in [(mul.input[0], mul.input[1])] + swapped:
        if t not in ctx.values or not ctx.values[t].in_graph_order or not ctx.is_const(c):
            continue
        pair = ctx.const_pair(c)
        if pair.batch_dependent or pair.a.size != 1 or float(pair.a.reshape(())) == 0:
            continue
        v = float(pair.a.reshape(()))
        return t, (v if mul.op_type == "Mul" else 1.0 / v)
    return tensor, 1.0


def _check_kernel(attrs, kernel):
    if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != tuple(kernel):
        raise Unsupported(f"kernel_shape {attrs['kernel_shape']} does not match the weight's {tuple(kernel)}")


def _conv_operands(ctx, node, attrs):
    """(x, weight, bias, n, strides, dilations) of a Conv or ConvTranspose node."""
    x = x_of(ctx, node)
    w = ctx.const(node.input[1], "weight")
    bias = ctx.optional_const(node, 2, "bias")
    n = w.ndim - 2
    _check_kernel(attrs, w.shape[2:])
    return x, w, bias, n, window(attrs, n, "strides"), window(attrs, n, "dilations")


@TABLE.register("Conv")
def conv(ctx, node, attrs):
    x, w, bias, n, strides, dilations = _conv_operands(ctx, node, attrs)
    pads = padding(attrs, x.shape[2:], w.shape[2:], strides, dilations, same_string=True)
    return ctx.emit("conv", [x], attrs={"stride": strides, "padding": pads, "dilation": dilations,
                                        "groups": int(attrs.get("group", 1))},
                    params={"weight": ctx.float_param(w), "bias": None if bias is None else ctx.float_param(bias)})


def _conv_transpose_pads(attrs, spatial, kernel, strides, dilations, out_pad):
    """Pads removed from the full transposed output: given, or derived from output_shape / SAME."""
    n = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    full = [s * (i - 1) + op + (k - 1) * d + 1 for s, i, op, k, d in zip(strides, spatial, out_pad, kernel, dilations)]
    if "output_shape" in attrs:
        target = ints(attrs["output_shape"])[-n:]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        target = [i * s for i, s in zip(spatial, strides)]
    elif auto == "VALID":
        return [(0, 0)] * n
    elif auto == "NOTSET":
        return padding(attrs, spatial, kernel, strides, dilations)
    else:
        raise Unsupported(f"auto_pad={auto!r}")
    pairs = []
    for f, t in zip(full, target):
        total = f - t
        if total < 0:
            raise Unsupported(f"output size {t} is larger than the full transposed output {f}")
        half = total // 2
        pairs.append((half, total - half) if auto == "SAME_UPPER" else (total - half, half))
    return pairs


@TABLE.register("ConvTranspose")
def conv_transpose(ctx, node, attrs):
    x, w, bias, n, strides, dilations = _conv_operands(ctx, node, attrs)
    out_pad = window(attrs, n, "output_padding", 0)
    pads = _conv_transpose_pads(attrs, x.shape[2:], w.shape[2:], strides, dilations, out_pad)
    return ctx.emit("conv_transpose", [x], attrs={"stride": strides, "padding": [tuple(p) for p in pads],
                                                  "output_padding": out_pad, "dilation": dilations,
                                                  "groups": int(attrs.get("group", 1))},
                    params={"weight": ctx.float_param(w), "bias": None if bias is None else ctx.float_param(bias)})


@TABLE.register("BatchNormalization")
def batch_norm(ctx, node, attrs):
    """Inference batch norm over axis 1 with ONNX's epsilon (its float32 value, as runtimes use it)."""
    if int(attrs.get("training_mode", 0)):
        raise Unsupported("training_mode=1 normalises with the batch's statistics")
    x = x_of(ctx, node)
    scale, bias, mean, var = (ctx.const(node.input[i], what) for i, what in
                              ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")))
    y = ctx.emit("batch_norm", [x], attrs={"eps": float(np.float32(attrs.get("epsilon", 1e-5))), "axis": 1},
                 params={k: ctx.float_param(v) for k, v in
                         (("mean", mean), ("var", var), ("scale", scale), ("bias", bias))})
    return [y] + [None] * (len(node.output) - 1)
