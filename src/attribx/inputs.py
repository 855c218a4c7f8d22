"""User input checked against a graph: shape (with a hint for the usual slips), finite values, index inputs.

A torch tensor is checked where it lives (a GPU batch is not copied to the host); anything else becomes a
numpy array. The checks recognise tensors by their methods, so no framework is imported here.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import InputError, InputShapeError, UnsupportedError
from .graph import Graph, Value


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


def check_shape(graph: Graph, shape: tuple, tensor: bool = False, value: Value | None = None) -> None:
    value = graph.input if value is None else value
    if not shape or not fits(shape[1:], value.shape[1:]):
        raise shape_error(shape, value.shape, tensor)
    if shape[0] == 0:
        raise InputError("input has no samples")


def takes_indices(graph: Graph) -> bool:
    """Whether a signal input of the graph holds integer indices (it feeds an embedding lookup)."""
    return any(np.dtype(v.dtype).kind in "iu" for v in graph.signal_inputs)


def check_indices(graph: Graph, x: np.ndarray, value: Value | None = None) -> np.ndarray:
    """Integer indices within every vocabulary they look up, as int64."""
    if x.dtype.kind == "f":
        if not (np.isfinite(x).all() and np.all(x == np.round(x))):
            raise InputError("this model's input holds indices (an embedding lookup): got non-integer values")
    elif x.dtype.kind not in "iub":
        raise InputError(f"this model's input holds indices (an embedding lookup): got dtype {x.dtype}")
    x = x.astype(np.int64)
    name = (graph.input if value is None else value).name
    for node in graph.nodes:
        if node.op == "embedding" and name in node.inputs:
            size = node.params["weight"].shape[0]
            if x.size and (x.min() < 0 or x.max() >= size):
                raise InputError(f"node {node.name!r}: indices must lie in [0, {size}), got values from "
                                 f"{x.min()} to {x.max()}")
    return x


def _indices(value: Value) -> bool:
    return np.dtype(value.dtype).kind in "iu"


def as_tensor_input(graph: Graph, x: Any, value: Value | None = None):
    """The torch-tensor counterpart of :func:`as_input`, checked where the tensor lives."""
    value = graph.input if value is None else value
    x = x.detach()
    check_shape(graph, tuple(x.shape), True, value)
    if _indices(value):
        check_indices(graph, x.cpu().numpy(), value)
        return x.long()
    if not x.is_floating_point():
        x = x.float()
    finite = x.isfinite()
    if not bool(finite.all()):
        bad = int((~finite).reshape(len(x), -1).any(1).sum())
        raise InputError(f"input contains NaN or infinite values (in {bad} of {len(x)} samples)")
    return x


def as_input(graph: Graph, x: Any, value: Value | None = None) -> np.ndarray:
    """Check and convert user input: shape against the graph's (its input ``value``, default the one signal
    input), finite, floating."""
    value = graph.input if value is None else value
    x = to_numpy(x)
    if x.dtype.kind not in "fiub":
        raise InputError(f"input must be numeric, got dtype {x.dtype}")
    check_shape(graph, x.shape, False, value)
    if _indices(value):
        return check_indices(graph, x, value)
    if x.dtype.kind != "f":
        x = x.astype(value.dtype if np.dtype(value.dtype).kind == "f" else np.float32)
    elif x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
        raise InputError(f"input contains NaN or infinite values (in {bad} of {len(x)} samples)")
    return x


def one_signal_input(graph: Graph, what: str) -> None:
    """Refuse, in one line naming ``what``, a graph with several signal inputs where only one can go."""
    signals = graph.signal_inputs
    if len(signals) > 1:
        raise UnsupportedError(f"{what} takes models with one signal input; this one has {len(signals)} "
                               f"({', '.join(repr(v.name) for v in signals)}): use attribx.explain with a tuple "
                               f"of inputs, in memory")


def split_inputs(x: Any) -> tuple[list, list | None]:
    """The arrays the user passed and, for a dict, their names: one array; a tuple of arrays (Captum's
    convention: ``(input_ids, attention_mask)``, ``(image, extra)``); a dict by the graph's input names."""
    if isinstance(x, dict):
        if not x:
            raise InputError("the input dict is empty")
        return list(x.values()), [str(k) for k in x]
    if isinstance(x, tuple) and len(x) > 1 and all(hasattr(a, "shape") for a in x):
        return list(x), None
    return [x], None


def sample_shapes(arrays: Sequence[Any], names: Sequence[str] | None):
    """What a tracing backend is given as ``input_shape``: one sample's shape for one array; for several, a
    tuple of them (in the order given) or, for a dict, the shapes by name."""
    shapes = [tuple(int(d) for d in a.shape[1:]) if hasattr(a, "shape") and len(a.shape) else None for a in arrays]
    if len(arrays) == 1:
        return shapes[0]
    return dict(zip(names, shapes)) if names is not None else tuple(shapes)


def first_shape(input_shape: Any):
    """The first input's shape of an ``input_shape`` that may hold several (a tuple of shapes or a dict by
    name): for backends whose further inputs are masks shaped like the first."""
    if isinstance(input_shape, dict):
        return next(iter(input_shape.values()), None)
    if input_shape and isinstance(input_shape, (tuple, list)) and isinstance(input_shape[0], (tuple, list)):
        return tuple(input_shape[0])
    return input_shape


def assign_inputs(graph: Graph, arrays: list, names: list | None) -> tuple[list, dict]:
    """(the signal inputs' arrays in the graph's order, the mask inputs' arrays by name) from what the user
    passed (:func:`split_inputs`). With one signal input the first array is it (whatever its dict key) and the
    rest are masks in order; with several, a tuple follows the graph's input order and a dict its input names;
    mask inputs left out run as all ones."""
    signals, masks = graph.signal_inputs, graph.mask_inputs
    mask_names = [v.name for v in masks]
    if len(signals) == 1:
        rest_names = names[1:] if names is not None else None
        rest = arrays[1:]
        if names is not None and signals[0].name in names and names[0] != signals[0].name:
            k = names.index(signals[0].name)
            arrays = [arrays[k]] + arrays[:k] + arrays[k + 1:]
            rest, rest_names = arrays[1:], names[:k] + names[k + 1:]
        return [arrays[0]], _masks(graph, rest, rest_names, arrays[0])
    listed = ", ".join(repr(v.name) for v in signals) + (
        f" (and the mask input(s) {', '.join(map(repr, mask_names))})" if mask_names else "")
    if names is None:
        if len(arrays) > len(graph.inputs):
            raise InputError(f"{len(arrays)} inputs given; the model's graph takes {len(graph.inputs)}: {listed}")
        by_name = {v.name: a for v, a in zip(graph.inputs, arrays)}
    else:
        unknown = [k for k in names if k not in {v.name for v in graph.inputs}]
        if unknown:
            raise InputError(f"input(s) {', '.join(map(repr, unknown))}: the model's graph takes the inputs {listed}")
        by_name = dict(zip(names, arrays))
    missing = [v.name for v in signals if v.name not in by_name]
    if missing:
        raise InputError(f"the model takes {len(signals)} signal inputs ({listed}); missing: "
                         f"{', '.join(map(repr, missing))} (pass them all to attribx.explain or attribx.forward, as a "
                         f"tuple in this order or a dict by name; the command line, streaming and the evaluators "
                         f"take one input)")
    return [by_name[v.name] for v in signals], _masks(graph, [by_name[k] for k in mask_names if k in by_name],
                                                       [k for k in mask_names if k in by_name], None)


def _masks(graph: Graph, rest: list, names: list | None, explained: Any) -> dict[str, np.ndarray]:
    """The further inputs as the graph's mask inputs by name (numpy in the input's dtype, shaped like the
    explained input, or like the mask input where there are several signal inputs), or why they cannot be."""
    if not rest:
        return {}
    masks = graph.mask_inputs
    mask_names = [v.name for v in masks]
    if names is not None:
        unknown = [k for k in names if k not in mask_names]
        if unknown:
            raise InputError(f"input(s) {', '.join(map(repr, unknown))}: the model's graph takes "
                             + (f"the mask input(s) {', '.join(map(repr, mask_names))} besides the explained one"
                                if mask_names else "one input (several signal inputs are not supported yet by "
                                                   "this model's translation)"))
        given = dict(zip(names, rest))
    else:
        if len(rest) > len(mask_names):
            raise InputError(f"{1 + len(rest)} inputs given; the model's graph takes the explained input"
                             + (f" and the mask input(s) {', '.join(map(repr, mask_names))}" if mask_names else
                                " alone (several signal inputs are not supported yet by this model's "
                                "translation)"))
        given = dict(zip(mask_names, rest))
    out = {}
    for name, m in given.items():
        m = to_numpy(m)
        value = next(v for v in masks if v.name == name)
        if explained is not None:
            shape = tuple(explained.shape)
            own = (shape[0], *value.shape[1:])       # (N, T) besides (N, T, E)
            if tuple(m.shape) not in (shape, own):
                raise InputError(f"mask input {name!r} has shape {tuple(m.shape)}; it must be shaped like the "
                                 f"explained input, {shape}" + (f", or {own}" if own != shape else ""))
        if explained is None and not fits(tuple(m.shape)[1:], value.shape[1:]):
            raise InputError(f"mask input {name!r} has shape {tuple(m.shape)}; the model expects "
                             f"(N, {', '.join('?' if d is None else str(d) for d in value.shape[1:])})")
        if m.dtype.kind not in "iubf":
            raise InputError(f"mask input {name!r} must be numeric (0 masks, anything else attends), got {m.dtype}")
        out[name] = m.astype(np.dtype(value.dtype))
    return out
