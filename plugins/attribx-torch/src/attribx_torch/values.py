"""What flows between torch converters: graph tensors and the torch views that have no node of their own.

A converter receives, for every argument computed from the model input, one of these values (and the traced
torch value for everything else): a :class:`~attribx.translation.Tensor` (a graph value, batch axis first,
its ``dtype`` the torch dtype), a :class:`Lazy` piece of a ``chunk``/``split``, a :class:`Swapped`
time-major view, or a :class:`Packed` sequence. Converters raise :class:`Unsupported` for arguments the
graph cannot express; the walker adds where it happened.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx
from torch.fx.node import _get_qualified_name

from attribx.translation import NO_TRANSLATION_DOCS, Tensor

#: how a plugin goes further where the graph cannot express an argument (a converter replaces the built-in one)
HOOK_HINT = ("a plugin can add ops through the 'attribx_ops' hook and converters through 'attribx_converters' "
             f"({NO_TRANSLATION_DOCS})")

TIME_MAJOR_HINT = (
    "it reads a time-major tensor (torch's axis 0 is time, axis 1 the batch: from x.transpose(0, 1), an RNN "
    "with batch_first=False, or an RNN's final states h_n); the graph keeps the batch axis first and "
    "supports on such tensors: transposing axes 0 and 1 back, indexing or slicing axis 0 (out[-1], h_n[-1]), "
    "reducing over axis 0 (out.mean(0)), squeeze(0), cat, elementwise ops, and an nn.LSTM/nn.GRU with "
    "batch_first=False; make the tensor batch-first (x.transpose(0, 1)) before other ops")


class Unsupported(Exception):
    """Raised inside converters; the walker adds where it happened and the hook hint."""


@dataclass
class Lazy:
    """A piece of a tensor (from chunk/split) that becomes a slice node when something reads it."""

    source: Tensor
    axis: int
    start: int
    stop: int
    name: str
    made: Tensor | None = None

    @property
    def shape(self):
        s = list(self.source.shape)
        s[self.axis] = self.stop - self.start
        return tuple(s)


@dataclass
class Swapped:
    """A time-major tensor: torch's view has axes 0 and 1 swapped against the batch-first graph value.

    ``x.transpose(0, 1)`` of a batch-first tensor, the output of an RNN with ``batch_first=False``, and an
    RNN's final states (torch's (layers·directions, N, H)) are such views. The graph's batch axis stays
    first: a transpose of axes 0/1 is a no-op, and indexing or reducing torch's axis 0 works on the graph
    value's axis 1. ``pieces`` (final states) are per-layer/direction (N, H) values, stacked along the
    graph's axis 1 only when something reads them whole. (Kept apart from ``Tensor.order``: the lazily
    stacked final states have no graph value until they are read.)"""

    base: Tensor | None
    pieces: tuple = ()
    name: str = ""

    @property
    def shape(self):
        if self.base is not None:
            return swap01(self.base.shape)
        return (len(self.pieces), *self.pieces[0].shape)


@dataclass
class Packed:
    """A PackedSequence: the padded batch-first data (N, T, ...), one length per sample (N,) and the
    (N, T) length mask; ``zeroed``: the data is zero past each length (an RNN's output)."""

    data: Tensor
    lengths: Tensor
    mask: str
    zeroed: bool = False


def swap01(shape) -> tuple:
    shape = tuple(shape)
    return (shape[1], shape[0], *shape[2:]) if len(shape) >= 2 else shape


def swap_axis(a: int) -> int:
    return 1 if a == 0 else 0 if a == 1 else a


def is_t(v) -> bool:
    """Whether v is computed from the model input (a graph tensor or a view of one)."""
    return isinstance(v, (Tensor, Lazy, Swapped, Packed))


def contains_t(v) -> bool:
    if is_t(v):
        return True
    if isinstance(v, (list, tuple)):
        return any(contains_t(a) for a in v)
    if isinstance(v, dict):
        return any(contains_t(a) for a in v.values())
    return False


def contains(args, kwargs, cls) -> bool:
    found = []
    fx.node.map_aggregate((args, kwargs), lambda v: found.append(v) if isinstance(v, cls) else None)
    return bool(found)


# ----------------------------------------------------------------------------------------------
# small helpers of argument handling


def ntuple(v, n: int, what: str) -> tuple:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v),) * n
    v = tuple(int(a) for a in v)
    if len(v) == 1 and n > 1:
        return v * n
    if len(v) != n:
        raise Unsupported(f"{what} {v} does not have {n} entries")
    return v


def compact_pads(pairs):
    """Per-dim (before, after) pairs as an int, per-dim ints, or the pairs themselves."""
    pairs = [(int(a), int(b)) for a, b in pairs]
    if all(a == b for a, b in pairs):
        if len({a for a, _ in pairs}) == 1:
            return pairs[0][0]
        return tuple(a for a, _ in pairs)
    return [tuple(p) for p in pairs]


def compact(t: tuple):
    return t[0] if len(set(t)) == 1 else tuple(t)


def is_number(v) -> bool:
    return isinstance(v, (bool, int, float, np.integer, np.floating))


def is_int(c) -> bool:
    return isinstance(c, (int, np.integer)) and not isinstance(c, bool)


def norm_dim(d, ndim, what="dim") -> int:
    d = int(d)
    if not -ndim <= d < ndim:
        raise Unsupported(f"{what} {d} is out of range for a tensor of rank {ndim}")
    return d % ndim


def qualname(fn) -> str:
    try:
        return _get_qualified_name(fn)
    except Exception:
        return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def fn_name(fn) -> str:
    return getattr(fn, "__name__", None) or qualname(fn).rsplit(".", 1)[-1]


def first_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def class_path(cls) -> str:
    mod = cls.__module__
    if mod.startswith("torch.nn.modules"):
        mod = "torch.nn"
    return f"{mod}.{cls.__qualname__}"


def device_of(model):
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def pretty(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
