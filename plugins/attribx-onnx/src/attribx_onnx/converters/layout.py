"""An ONNX tensor whose batch axis is merged with its neighbours: what exporters write for attention.

``nn.MultiheadAttention`` (and so torchvision's ViT) reshapes its (L, N, E) projections to (L, N * heads,
head_dim), computes per (sample, head) and reshapes back; its output projection reads (L * N, E). The
batch is never mixed with other samples, only laid out together with other axes. Such a tensor is a
:class:`Merged`: the graph value keeps the batch axis first and every other axis on its own (the
*expanded* axes, in the framework's order), and ``groups`` says how many expanded axes make each ONNX
axis (row-major: ``N * heads`` is the two expanded axes N, heads). ``order`` maps the expanded axes onto
the graph value's as :class:`~attribx.translation.Tensor` does, so ``Tensor.framework_shape`` of the
expanded view is :meth:`Merged.expanded_shape`.

Only converters registered with ``merged_batch=True`` read such tensors (Reshape, Transpose, Shape, the
linear MatMul and Gemm, Add/Mul/Div with constants); the walk refuses the others, naming the tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from attribx.translation import Tensor

from . import Unsupported


@dataclass
class Merged(Tensor):
    """A graph value seen by ONNX with its batch merged into a larger axis; ``groups[i]``: how many
    expanded axes ONNX axis ``i`` holds; ``order`` is always a tuple (never None)."""

    groups: tuple = ()

    @property
    def in_graph_order(self) -> bool:
        return False

    @property
    def expanded_shape(self) -> tuple:
        """The expanded axes' sizes in the framework's order, None at the batch."""
        return Tensor.framework_shape.fget(self)

    @property
    def framework_shape(self) -> tuple:
        """ONNX's shape: each group's product, None where the group holds the batch."""
        out, k, exp = [], 0, self.expanded_shape
        for g in self.groups:
            dims = exp[k:k + g]
            out.append(None if None in dims else math.prod(dims))
            k += g
        return tuple(out)

    @property
    def batch_group(self) -> int:
        """The ONNX axis holding the batch."""
        return group_of(self.groups, self.order.index(0))


def group_of(groups, expanded_axis: int) -> int:
    k = 0
    for i, g in enumerate(groups):
        k += g
        if expanded_axis < k:
            return i
    raise IndexError(expanded_axis)


def expanded(t: Tensor) -> tuple[list, tuple]:
    """(the expanded shape, None at the batch; the group sizes) of any ONNX tensor's value."""
    if isinstance(t, Merged):
        return list(t.expanded_shape), tuple(t.groups)
    return list(t.framework_shape), (1,) * t.rank


def batch_order(rank: int, batch: int) -> tuple | None:
    """``Tensor.order`` of an ONNX tensor whose batch is on axis ``batch``: the batch axis moves to the
    front, the others keep their order (None for a batch-first tensor)."""
    if batch == 0:
        return None
    return tuple(0 if i == batch else i + 1 if i < batch else i for i in range(rank))


def as_onnx(t: Tensor, shape: list, groups: tuple) -> Tensor:
    """``t`` (a graph value holding ``shape``'s axes, batch first, the others in order) seen by ONNX as the
    expanded ``shape`` (None at the batch) grouped by ``groups``."""
    order = batch_order(len(shape), shape.index(None))
    if all(g == 1 for g in groups):
        return Tensor(t.name, t.shape, order)
    return Merged(t.name, t.shape, order or tuple(range(len(shape))), groups=tuple(groups))


def like(x: Tensor, out: Tensor, last: int) -> Tensor:
    """``out``, computed from ``x`` by an op on the last axis (now of size ``last``), in ``x``'s layout."""
    shape, groups = expanded(x)
    return as_onnx(out, shape[:-1] + [last], groups)


def last_axis_alone(x: Tensor, what: str) -> None:
    """Ops on the last ONNX axis need it to be one graph axis, and not the batch."""
    shape, groups = expanded(x)
    if groups[-1] != 1 or shape[-1] is None:
        raise Unsupported(f"{what} on an axis that holds the batch")


def aligned_constant(ctx, x: Tensor, value, suffix: str) -> Tensor:
    """A constant broadcasting against ONNX tensor ``x``, as a ``constant`` node laid out like ``x``'s graph
    value (its batch entry, of size 1, first; merged axes split, where the constant is 1 along them)."""
    arr = np.asarray(value, dtype=np.float64)
    if x.in_graph_order:
        return ctx.constant(arr, suffix)
    shape, groups = expanded(x)
    if arr.ndim > len(groups):
        raise Unsupported(f"a constant of shape {arr.shape} has more axes than the tensor ({len(groups)})")
    full = (1,) * (len(groups) - arr.ndim) + arr.shape
    dims, k = [], 0
    for size, g in zip(full, groups):
        part = shape[k:k + g]
        if size == 1:
            dims += [1] * g
        elif g == 1 and part[0] == size:
            dims.append(size)
        else:
            raise Unsupported(f"a constant of shape {arr.shape} varies along an axis that holds the batch (or "
                              f"broadcasts the tensor, of shape {x.framework_shape})")
        k += g
    return ctx.constant(np.moveaxis(arr.reshape(dims), shape.index(None), 0), suffix)
