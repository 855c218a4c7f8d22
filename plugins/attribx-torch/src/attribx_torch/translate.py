"""Translate a ``torch.nn.Module`` into the attribx graph, with torch.fx and one example forward pass.

``translate_module(model, input_shape)`` traces the model symbolically (``torch.fx``, :mod:`.tracing`) with
the modules that have converters kept whole, so that graph nodes carry the module paths users know
(``features.3``, ``layer1.0.conv1``); functional ops get fx's readable names (``add``, ``add_1``, ``cat``).
One forward pass on a zero example of shape ``(1, *input_shape)`` gives every intermediate shape, from
which 'same' padding, adaptive pooling and ``x.view(x.size(0), -1)``-style reshapes are resolved. The walk
(:mod:`.walker`) hands each op to its converter (:mod:`.converters`, plugins' converters on top).

The graph is checked against the traced shapes before it is returned, and cached per model, input shape,
dtype and plugin converters until a parameter, buffer or submodule changes. The model is left exactly as it
was (:mod:`.state`).

Recurrent layers: ``nn.LSTM`` and ``nn.GRU`` are unrolled over the traced sequence length
(:mod:`attribx.recurrent`). The graph's batch axis is always first, so ``batch_first=False`` is read through
time-major views: ``x.transpose(0, 1)`` of a batch-first tensor is no node, and torch's axis 0 of the view
(time, or layer·direction of ``h_n``) is the graph value's axis 1 for indexing (``out[-1]``, ``h_n[-1]``),
reductions (``out.mean(0)``), ``squeeze(0)``, ``cat``, elementwise ops and ``Linear``; anything else on a
time-major tensor is refused, and so is a model whose own input is time-major. Padded batches of different
lengths: ``pack_padded_sequence`` with lengths computed in the model from the input (``(ids != pad).sum(1)``,
``(x != 0).any(-1).sum(1)``: ops ``mask``, ``reduce_sum``, ``length_mask``) runs the RNN with each sequence's
state kept past its end; ``pad_packed_sequence`` gives the outputs with zeros at padding over the input's
length (torch's ``total_length=T``: without it torch trims to the batch's longest sequence, so the two agree
when that one fills the padding or the model reads the outputs position-independently, e.g. by sums).
"""
from __future__ import annotations

import copy
import inspect
import threading
import weakref
from typing import Sequence

import torch
import torch.nn as nn

from attribx.errors import InputError, InputShapeError, UnsupportedError
from attribx.graph import Graph
from attribx.inputs import first_shape
from attribx.translation import Converter

from .converters import TABLE
from .hf import HFTranslation, is_hf_model
from .state import (as_in_eval_mode, fingerprint, model_dtype, same_fingerprint, untouched,
                    warn_if_training)
from .tracing import first_layer
from .values import HOOK_HINT, pretty
from .walker import Walker

__all__ = ["translate_module", "clear_cache", "HOOK_HINT"]

_cache: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_translating = threading.RLock()


def clear_cache() -> None:
    """Forget every cached translation."""
    with _lock:
        _cache.clear()


def _copy(graph: Graph) -> Graph:
    """A graph of its own for the caller (the cached one stays as translated)."""
    nodes = [n.replace(attrs=dict(n.attrs), params=dict(n.params)) for n in graph.nodes]
    return Graph(list(graph.inputs), nodes, list(graph.outputs), copy.deepcopy(graph.meta), validate=False)


def _implied_input_shape(walker: Walker) -> tuple:
    """One sample's shape when the model's first layer fixes all of it (``nn.Linear``: its in_features);
    otherwise an error saying what to pass, since the graph is traced with example data."""
    _, fx_graph, _ = walker.trace()
    first = first_layer(walker.table, fx_graph, walker.root)
    if first is not None and all(isinstance(d, int) for d in first[2]):
        return first[2]
    if first is not None:
        path, m, template = first
        free = [d for d in template if isinstance(d, str)]
        why = (f"its first layer {path!r} ({type(m).__name__}) takes one sample of shape {pretty(template)} "
               f"and does not fix {', '.join(free)}")
        example = f"attribx.translate(model, input_shape={pretty(template)}) with your data's {', '.join(free)}"
    else:
        why = "its first layer does not fix the input shape"
        example = ("attribx.translate(model, input_shape=...) with one sample's shape (no batch axis), e.g. "
                   "(3, 224, 224)")
    raise InputShapeError(
        f"translating a torch model ({type(walker.model).__name__}) needs one sample's input shape, because "
        f"torch.fx traces it with example data, and {why}: pass {example}; or call attribx.explain(model, x) or "
        f"attribx.forward(model, x), which take the shape from x",
        None if first is None else (None, *first[2]))


def translate_module(model: nn.Module, input_shape: tuple | None,
                     converters: Sequence[Converter] = ()) -> Graph:
    """The attribx graph of ``model`` for inputs of one sample's shape ``input_shape`` (no batch axis; None:
    the shape the first layer fixes, see :func:`_implied_input_shape`); ``converters``: the plugins'
    converters (those for torch are layered over the built-in ones for this translation).

    The model is translated as in eval mode (a warning says so when it is in training mode) and left exactly
    as it was: its parameters, buffers, attributes, modes and hooks, also when the translation fails."""
    with _translating:      # one at a time: another thread must not see (or snapshot) the flags set meanwhile
        return _translate_module(model, input_shape, tuple(c for c in converters if c.framework == "torch"))


def _walker(model, input_shape, dtype, plugins: tuple) -> Walker:
    table = TABLE.with_plugins(plugins) if plugins else TABLE
    if is_hf_model(model):      # torch.fx cannot trace them: torch.export (:mod:`.hf`)
        return HFTranslation(model, input_shape, dtype, table)
    functions = tuple(c.target for c in plugins if inspect.isfunction(c.target))
    return Walker(model, input_shape, dtype, table, functions)


def _checked(input_shape):
    """One sample's shape as ints; or, for a model with several inputs, a tuple of them or a dict by name."""
    if isinstance(input_shape, dict):
        return {k: _checked(v) for k, v in input_shape.items()}
    if input_shape and isinstance(input_shape[0], (tuple, list)):
        return tuple(_checked(v) for v in input_shape)
    try:
        input_shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise InputError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    if any(d < 1 for d in input_shape):
        raise InputError(f"input_shape {input_shape} has a non-positive size")
    return input_shape


def _hashable(input_shape):
    return tuple(input_shape.items()) if isinstance(input_shape, dict) else input_shape


def _translate_module(model: nn.Module, input_shape: tuple | None, plugins: tuple) -> Graph:
    warn_if_training(model, stacklevel=3)
    implied = input_shape is None
    if implied and is_hf_model(model):
        raise InputShapeError(f"translating a HuggingFace model ({type(model).__name__}) needs one sample's input "
                              f"shape (it is exported with example data): pass attribx.translate(model, "
                              f"input_shape=(T,)) with the sequence length, or call attribx.explain(model, "
                              f"input_ids), which takes the shape from the data", None)
    if not implied:
        if is_hf_model(model):      # its further inputs are masks shaped like input_ids
            input_shape = first_shape(input_shape)
        input_shape = _checked(input_shape)
        dtype = model_dtype(model)
        key = (_hashable(input_shape), str(dtype), plugins)
        with _lock:
            entry = _cache.get(model, {}).get(key)
        if entry is not None and same_fingerprint(entry[0], fingerprint(model)):
            return _copy(entry[1])
    with untouched(model):
        as_in_eval_mode(model)
        if implied:
            input_shape = _implied_input_shape(_walker(model, (), model_dtype(model), plugins))
        dtype = model_dtype(model)
        key = (_hashable(input_shape), str(dtype), plugins)
        try:
            graph = _walker(model, input_shape, dtype, plugins).run()
        except InputShapeError as err:
            if not implied:
                raise
            raise InputShapeError(
                f"{err}. No input_shape was given and {input_shape} was read from the first layer: pass "
                f"attribx.translate(model, input_shape=...) with one sample's shape, or call "
                f"attribx.explain(model, x) or attribx.forward(model, x), which take the shape from x") from None
    state = fingerprint(model)       # after restoring: what the model is now, as the caller gave it
    with _lock:
        try:
            _cache.setdefault(model, {})[key] = (state, graph)
        except TypeError:   # pragma: no cover - a module that cannot be weakly referenced
            pass
    return _copy(graph)
