"""aten ops of ``torch.export`` programs, onto the same converters: the training IR ``torch.export.export``
returns (``aten.conv2d``, ``aten.linear``, ``aten.batch_norm``) and the core ATen IR of
``run_decompositions()`` (``aten.convolution``, ``aten.addmm``, ``aten._native_batch_norm_legit_no_training``).

An aten op is bound by its schema (``self`` read as ``input``), so an op whose arguments are the torch
function's is registered on that function's converter; the others have a small converter here.
"""
from __future__ import annotations

import torch

# the families as modules (not ``from . import``, which would read the package this module is part of)
import attribx_torch.converters.elementwise as elementwise
import attribx_torch.converters.layers as layers
import attribx_torch.converters.pooling as pooling
import attribx_torch.converters.reductions as reductions
import attribx_torch.converters.shape as shape_ops

from ..values import Unsupported, is_t, norm_dim
from .base import TABLE


def aten(*names: str) -> list:
    """The aten overloads ``"packet.overload"`` this torch has (those it lacks are left out)."""
    ops = []
    for name in names:
        packet, overload = name.split(".")
        op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
        if op is not None:
            ops.append(op)
    return ops


# the aten ops whose arguments are those of a torch function: that function's converter
_SAME = {
    layers.conv: "conv1d.default conv2d.default conv3d.default conv1d.padding conv2d.padding conv3d.padding",
    layers.conv_transpose: "conv_transpose1d.input conv_transpose2d.input conv_transpose3d.input",
    layers.linear: "linear.default",
    elementwise.relu: "relu.default", elementwise.sigmoid: "sigmoid.default", elementwise.tanh: "tanh.default",
    elementwise.silu: "silu.default", elementwise.gelu: "gelu.default", elementwise.leaky_relu: "leaky_relu.default",
    elementwise.hardtanh: "hardtanh.default", elementwise.hardsigmoid: "hardsigmoid.default",
    elementwise.clamp: "clamp.default",
    elementwise.add: "add.Tensor add.Scalar", elementwise.sub: "sub.Tensor sub.Scalar",
    elementwise.mul: "mul.Tensor mul.Scalar", elementwise.div: "div.Tensor div.Scalar",
    elementwise.neg: "neg.default",
    elementwise.cast: "clone.default alias.default contiguous.default detach.default lift_fresh_copy.default",
    pooling.max_pool: "max_pool1d.default max_pool2d.default max_pool3d.default",
    pooling.avg_pool: "avg_pool1d.default avg_pool2d.default avg_pool3d.default",
    pooling.adaptive_avg_pool: "adaptive_avg_pool1d.default adaptive_avg_pool2d.default adaptive_avg_pool3d.default "
                               "_adaptive_avg_pool2d.default _adaptive_avg_pool3d.default",
    reductions.mean: "mean.dim mean.default", reductions.sum_: "sum.dim_IntList sum.default",
    shape_ops.flatten: "flatten.using_ints", shape_ops.unsqueeze: "unsqueeze.default",
    shape_ops.squeeze: "squeeze.dim squeeze.dims squeeze.default",
    shape_ops.permute: "permute.default", shape_ops.transpose: "transpose.int", shape_ops.transpose_2d: "t.default",
    shape_ops.stack: "stack.default",
    shape_ops.size: "sym_size.int",
}
for _convert, _names in _SAME.items():
    _options = next(c.options for c in TABLE if c.convert is _convert)
    TABLE.register(*aten(*_names.split()), **_options)(_convert)
del _convert, _names, _options


@TABLE.register(*aten("view.default", "_unsafe_view.default"), batch_args_ok=True)
def view(ctx, input, size):
    if is_t(input) and tuple(ctx.result().shape) == tuple(input.shape):
        return ctx.tensor(input)        # (token ids viewed as they are, GPT-2's input_ids.view(-1, T))
    return shape_ops.reshape_to(ctx, input)


@TABLE.register(*aten("reshape.default"), batch_args_ok=True)
def reshape(ctx, input, shape):
    return shape_ops.reshape_to(ctx, input)


@TABLE.register(*aten("convolution.default"))
def convolution(ctx, input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    x = ctx.tensor(input)
    if transposed:
        return layers.conv_transpose(ctx, x, weight, bias, stride, padding, output_padding, groups, dilation)
    return layers.conv(ctx, x, weight, bias, stride, padding, dilation, groups)


def _matrix(m, what):
    if is_t(m) or not isinstance(m, torch.Tensor) or m.dim() != 2:
        raise Unsupported(f"{what} of two input-dependent tensors, or by a weight that is not a matrix, is "
                          f"not in the graph's op set")
    return m.t()


@TABLE.register(*aten("addmm.default"))
def addmm(ctx, input, mat1, mat2, beta=1, alpha=1):
    if beta != 1 or alpha != 1 or is_t(input):
        raise Unsupported(f"addmm with beta={beta}, alpha={alpha} or an input-dependent bias")
    return layers.linear(ctx, mat1, _matrix(mat2, "addmm"), input)


@TABLE.register(*aten("mm.default"))
def mm(ctx, input, mat2):
    return layers.linear(ctx, input, _matrix(mat2, "a matrix product"))


@TABLE.register(*aten("matmul.default"))
def matmul(ctx, input, other):
    if is_t(input) and is_t(other):
        return ctx.emit("matmul", [ctx.materialize(input), ctx.materialize(other)], ctx.out_shape())
    return layers.linear(ctx, input, _matrix(other, "a matrix product"))


@TABLE.register(*aten("batch_norm.default"))
def batch_norm(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled):
    return layers.batch_norm(ctx, ctx.tensor(input), running_mean, running_var, weight, bias, training, eps=eps)


# ops returning (result, auxiliaries...), as batch norm and max pooling with indices do in core ATen: the
# graph holds the result; reading an auxiliary (the indices) is an error at that read
def _first_of(ctx, result):
    return (result,) + (None,) * (len(ctx.result()) - 1)


@TABLE.register(*aten("_native_batch_norm_legit_no_training.default"), multiple=True)
def native_batch_norm(ctx, input, weight, bias, running_mean, running_var, momentum, eps):
    return _first_of(ctx, layers.batch_norm(ctx, ctx.tensor(input), running_mean, running_var, weight, bias,
                                            eps=eps))


@TABLE.register(*aten("max_pool2d_with_indices.default", "max_pool3d_with_indices.default"), multiple=True)
def max_pool_with_indices(ctx, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    return _first_of(ctx, pooling.max_pool(ctx, input, kernel_size, stride, padding, dilation, ceil_mode, False))


@TABLE.register(*aten("adaptive_max_pool1d.default", "adaptive_max_pool2d.default", "adaptive_max_pool3d.default"),
                multiple=True)
def adaptive_max_pool(ctx, input, output_size):
    return _first_of(ctx, pooling.adaptive_max_pool(ctx, input, output_size))


@TABLE.register(*aten("embedding.default"))
def embedding(ctx, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return layers.embedding(ctx, indices, weight)


@TABLE.register(*aten("elu.default"))
def elu(ctx, input, alpha=1.0, scale=1.0, input_scale=1.0):
    if scale != 1 or input_scale != 1:
        raise Unsupported(f"elu with scale={scale}, input_scale={input_scale}")
    return elementwise.unary(ctx, input, "elu", alpha=float(alpha))


@TABLE.register(*aten("_softmax.default"))
def softmax_internal(ctx, input, dim, half_to_float):
    if half_to_float:
        raise Unsupported("softmax with half_to_float=True")
    return elementwise.softmax(ctx, input, dim)


@TABLE.register(*aten("slice.Tensor"))
def slice_(ctx, input, dim=0, start=None, end=None, step=1):
    x = ctx.tensor(input)
    d = norm_dim(dim, len(x.shape))
    if end is not None and end >= x.shape[d]:
        end = None          # exporters write "to the end" as a huge int; the batch axis too was traced whole
    return shape_ops.getitem(ctx, x, (slice(None),) * d + (slice(start, end, step),))


@TABLE.register(*aten("select.int"))
def select(ctx, input, dim, index):
    x = ctx.tensor(input)
    d = norm_dim(dim, len(x.shape))
    return shape_ops.getitem(ctx, x, (slice(None),) * d + (int(index),))


@TABLE.register(*aten("constant_pad_nd.default"))
def constant_pad_nd(ctx, input, pad, value=0):
    return shape_ops.pad(ctx, input, pad, "constant", value)


@TABLE.register(*aten("dropout.default"))
def dropout(ctx, input, p, train):
    return elementwise.dropout(ctx, input, p, train)
