"""User input checked against a graph: shape (with a hint for the usual slips), finite values, index inputs.

A torch tensor is checked where it lives (a GPU batch is not copied to the host); anything else becomes a
numpy array. The checks recognise tensors by their methods, so no framework is imported here.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import InputError, InputShapeError
from .graph import Graph


def to_numpy(x: Any) -> np.ndarray:
    """``x`` (a numpy array, a torch or TensorFlow tensor, anything array-like) as a numpy array."""
    if hasattr(x, "detach"):      # a torch tensor
        x = x.detach().cpu().numpy()
    elif hasattr(x, "numpy") and not isinstance(x, np.ndarray):   # a TensorFlow tensor
        x = x.numpy()
    try:
        return np.asarray(x)
    except Exception as err:
        raise InputError(f"input cannot be read as an array: {err}") from None


def is_torch_tensor(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "is_floating_point") and hasattr(x, "isfinite")


def fits(shape: tuple, want: tuple) -> bool:
    """Whether ``shape`` matches ``want``, where None or a name in ``want`` fits any size."""
    return len(shape) == len(want) and all(w is None or isinstance(w, str) or w == s for s, w in zip(shape, want))


def shape_hint(shape: Sequence[int], want: Sequence, tensor: bool = False) -> str:
    """How to fix the two usual slips, when one of them explains the mismatch: one sample without its batch
    axis, and channels-last images for a channels-first model (or the reverse). ``want`` has the batch axis
    first (None, or a name, where any size fits); "" when neither explains it."""
    shape, want = tuple(shape), tuple(want)
    if fits(shape, want[1:]):
        return "add a batch axis: x[None]"
    n = len(want)
    if n < 4 or len(shape) != n:       # images and volumes: (N, C, H, W), (N, C, D, H, W) and channels-last
        return ""
    to_first = (0, n - 1, *range(1, n - 1))      # NHWC -> NCHW
    to_last = (0, *range(2, n), 1)               # NCHW -> NHWC
    for perm, src, dst, where in ((to_first, -1, 1, "first"), (to_last, 1, -1, "last")):
        if fits(tuple(shape[i] for i in perm), want):
            move = f"x.permute{perm}" if tensor else f"np.moveaxis(x, {src}, {dst})"
            return f"the model takes channels {where}: {move}"
    return ""


def shape_error(shape: tuple, want: tuple, tensor: bool = False) -> InputShapeError:
    pretty = "(N, " + ", ".join("?" if d is None else str(d) for d in want[1:]) + ")"
    hint = shape_hint(shape, want, tensor)
    return InputShapeError(f"input has shape {shape}, the model expects {pretty}" + (f" ({hint})" if hint else ""),
                           want)


def check_shape(graph: Graph, shape: tuple, tensor: bool = False) -> None:
    if not shape or not fits(shape[1:], graph.input.shape[1:]):
        raise shape_error(shape, graph.input.shape, tensor)
    if shape[0] == 0:
        raise InputError("input has no samples")


def takes_indices(graph: Graph) -> bool:
    """Whether the graph's input holds integer indices (it feeds an embedding lookup)."""
    return np.dtype(graph.input.dtype).kind in "iu"


def check_indices(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Integer indices within every vocabulary they look up, as int64."""
    if x.dtype.kind == "f":
        if not (np.isfinite(x).all() and np.all(x == np.round(x))):
            raise InputError("this model's input holds indices (an embedding lookup): got non-integer values")
    elif x.dtype.kind not in "iub":
        raise InputError(f"this model's input holds indices (an embedding lookup): got dtype {x.dtype}")
    x = x.astype(np.int64)
    for node in graph.nodes:
        if node.op == "embedding" and graph.input.name in node.inputs:
            size = node.params["weight"].shape[0]
            if x.size and (x.min() < 0 or x.max() >= size):
                raise InputError(f"node {node.name!r}: indices must lie in [0, {size}), got values from "
                                 f"{x.min()} to {x.max()}")
    return x


def as_tensor_input(graph: Graph, x: Any):
    """The torch-tensor counterpart of :func:`as_input`, checked where the tensor lives."""
    x = x.detach()
    check_shape(graph, tuple(x.shape), tensor=True)
    if takes_indices(graph):
        check_indices(graph, x.cpu().numpy())
        return x.long()
    if not x.is_floating_point():
        x = x.float()
    finite = x.isfinite()
    if not bool(finite.all()):
        bad = int((~finite).reshape(len(x), -1).any(1).sum())
        raise InputError(f"input contains NaN or infinite values (in {bad} of {len(x)} samples)")
    return x


def as_input(graph: Graph, x: Any) -> np.ndarray:
    """Check and convert user input: shape against the graph's, finite, floating."""
    x = to_numpy(x)
    if x.dtype.kind not in "fiub":
        raise InputError(f"input must be numeric, got dtype {x.dtype}")
    check_shape(graph, x.shape)
    if takes_indices(graph):
        return check_indices(graph, x)
    if x.dtype.kind != "f":
        x = x.astype(graph.input.dtype if np.dtype(graph.input.dtype).kind == "f" else np.float32)
    elif x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise InputError(f"input contains NaN or infinite values (in {bad} of {len(x)} samples)")
    return x


def split_inputs(x: Any) -> tuple[Any, Any]:
    """(the explained input, the further inputs or None) from what the user passed: one array; a tuple of arrays
    (``(input_ids, attention_mask)``, Captum's convention: the first explained); a dict (the first item explained,
    the others by name, ``{"input_ids": ..., "attention_mask": ...}``)."""
    if isinstance(x, dict):
        if not x:
            raise InputError("the input dict is empty")
        items = list(x.items())
        return items[0][1], dict(items[1:])
    if isinstance(x, tuple) and len(x) > 1 and all(hasattr(a, "shape") for a in x):
        return x[0], list(x[1:])
    return x, None


def mask_arrays(graph: Graph, rest: Any, shape: tuple) -> dict[str, np.ndarray]:
    """The further inputs as the graph's mask inputs by name (numpy in the input's dtype, shaped like the
    explained input), or the reason they cannot be."""
    if rest is None:
        return {}
    masks = graph.mask_inputs
    names = [v.name for v in masks]
    if isinstance(rest, dict):
        unknown = [k for k in rest if k not in names]
        if unknown:
            raise InputError(f"input(s) {', '.join(map(repr, unknown))}: the model's graph takes "
                             + (f"the mask input(s) {', '.join(map(repr, names))} besides the explained one"
                                if names else "one input (several signal inputs are not supported yet)"))
        given = dict(rest)
    else:
        if len(rest) > len(names):
            raise InputError(f"{1 + len(rest)} inputs given; the model's graph takes the explained input"
                             + (f" and the mask input(s) {', '.join(map(repr, names))}" if names else
                                " alone (several signal inputs are not supported yet)"))
        given = dict(zip(names, rest))
    out = {}
    for name, m in given.items():
        m = to_numpy(m)
        own = (shape[0], *next(v.shape[1:] for v in masks if v.name == name))   # (N, T) besides (N, T, E)
        if tuple(m.shape) not in (tuple(shape), own):
            raise InputError(f"mask input {name!r} has shape {tuple(m.shape)}; it must be shaped like the explained "
                             f"input, {tuple(shape)}" + (f", or {own}" if own != tuple(shape) else ""))
        if m.dtype.kind not in "iubf":
            raise InputError(f"mask input {name!r} must be numeric (0 masks, anything else attends), got {m.dtype}")
        out[name] = m.astype(np.dtype(next(v.dtype for v in masks if v.name == name)))
    return out
