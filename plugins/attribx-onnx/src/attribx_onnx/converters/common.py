"""Small helpers the converter families share: reading attributes, window geometry, the batch axis.

The batch axis: graph values are batch-first, but ONNX tensors around an LSTM or GRU node are
sequence-first (X (T, N, E) with ``layout=0``, Y (T, dirs, N, H), Y_h (dirs, N, H)). Such a tensor is a
:class:`~attribx.translation.Tensor` stored with the batch moved to the front and its other axes in order;
``order`` maps its ONNX axes onto the graph value's (:func:`at_batch`, :func:`batch_axis`); a batch merged with
other axes: :mod:`attribx_onnx.converters.layout`.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from attribx.ops import resolve_padding
from attribx.translation import Tensor

from . import Unsupported
from .layout import Merged, batch_order


def at_batch(t: Tensor, batch: int) -> Tensor:
    """``t`` as an ONNX tensor with its batch on axis ``batch``."""
    return replace(t, order=batch_order(t.rank, batch))


def batch_axis(t: Tensor) -> int:
    """The ONNX axis of ``t`` that is, or holds, the batch (graph axis 0)."""
    if isinstance(t, Merged):
        return t.batch_group
    return 0 if t.in_graph_order else t.order.index(0)


def x_of(ctx, node) -> Tensor:
    return ctx.value(node.input[0])


def scalar(arr, what: str) -> float:
    arr = np.asarray(arr)
    if arr.size != 1:
        raise Unsupported(f"{what} must be a single number, got shape {arr.shape}")
    return float(arr.reshape(()))


def ints(values) -> list[int]:
    return [int(v) for v in np.asarray(values).reshape(-1)]


def axes_input_or_attr(ctx, node, attrs, since: int, index: int = 1):
    """Axes as an input (opset >= ``since``) or as the ``axes`` attribute (older), or None."""
    if ctx.opset >= since:
        axes = ctx.optional_const(node, index, "axes")
    else:
        axes = attrs.get("axes")
    return None if axes is None else ints(axes)


def padding(attrs, spatial, kernel, strides, dilations, same_string=False):
    """ONNX auto_pad/pads as (before, after) pairs ('same' for SAME_UPPER when ``same_string``)."""
    n = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto == "NOTSET":
        pads = ints(attrs.get("pads", [0] * 2 * n))
        if len(pads) != 2 * n:
            raise Unsupported(f"pads {pads} need {2 * n} entries")
        return [(pads[i], pads[i + n]) for i in range(n)]
    if auto == "VALID":
        return [(0, 0)] * n
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if auto == "SAME_UPPER" and same_string:
            return "same"
        pairs = resolve_padding("same", spatial, kernel, strides, dilations)
        return pairs if auto == "SAME_UPPER" else [(hi, lo) for lo, hi in pairs]
    raise Unsupported(f"auto_pad={auto!r}")


def window(attrs, n, key, default=1):
    return tuple(ints(attrs.get(key, [default] * n)))
