"""Tracing a ``torch.nn.Module`` with torch.fx: the modules that have converters stay whole (leaves), so
graph nodes carry the module paths users know (``features.3``); ``x += y`` is recorded as the in-place op
torch runs; functions fx cannot trace through (``pack_padded_sequence``, and plain functions a plugin
converts) are recorded as one call each; every node remembers the module it was made in.
"""
from __future__ import annotations

import functools
import inspect
import operator
import threading
from typing import Callable

import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import rnn as rnn_utils

from attribx.errors import UnsupportedError

from .converters import layers
from .converters.recurrent import PACK_PADDED, PAD_PACKED, rnn_module
from .values import fn_name, is_number

#: functions torch.fx cannot trace through (they read tensor values), recorded as one call each
LEAF_FUNCTIONS = {"pack_padded_sequence": PACK_PADDED, "pad_packed_sequence": PAD_PACKED}
_patch_lock = threading.RLock()


def _leaf(fn):
    """fn, recorded as one fx call when an argument is traced (torch.fx.wrap's behaviour), else run."""
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        proxies = []
        fx.node.map_aggregate((args, kwargs), lambda v: proxies.append(v) if isinstance(v, fx.Proxy) else None)
        if proxies:
            return proxies[0].tracer.create_proxy("call_function", fn, args, kwargs)
        return fn(*args, **kwargs)
    return traced


class _InplaceProxy(fx.Proxy):
    """A proxy that records ``x += y`` (``-=``, ``*=``, ``/=``) as the in-place op torch runs.

    fx's own Proxy has no ``__iadd__``, so Python falls back to ``x = x + y``: the graph then holds an
    out-of-place add while torch changed ``x``'s storage, and an alias of the old ``x`` read later (``a = x;
    x += y; return a``) would silently miss the change. Recorded as ``operator.iadd``, the translator sees
    the in-place op and checks its aliases (issue 17 point 1)."""

    def _inplace(self, fn, other):
        # named as fx names the out-of-place op (``add``, ``add_1``), so graph node names stay as they were
        return self.tracer.create_proxy("call_function", fn, (self, other), {}, name=fn.__name__[1:])

    def __iadd__(self, other):
        return self._inplace(operator.iadd, other)

    def __isub__(self, other):
        return self._inplace(operator.isub, other)

    def __imul__(self, other):
        return self._inplace(operator.imul, other)

    def __itruediv__(self, other):
        return self._inplace(operator.itruediv, other)


class Tracer(fx.Tracer):
    """Keeps the modules ``is_leaf(module)`` accepts as leaves and records the module each node was made
    in; ``functions``: plain Python functions (a plugin's) to record as one call where the model's module
    calls them by a global name."""

    def proxy(self, node):
        return _InplaceProxy(node, self)

    def __init__(self, is_leaf: Callable[[nn.Module], bool], functions: tuple = ()):
        # names bound by ``from torch.nn.utils.rnn import ...`` in the model's modules
        super().__init__(autowrap_functions=tuple(LEAF_FUNCTIONS.values()) + tuple(functions))
        self._is_leaf = is_leaf
        self._stack: list[tuple[str, str]] = []

    def trace(self, root, concrete_args=None):
        # ``nn.utils.rnn.pack_padded_sequence(...)``: the attribute, replaced while tracing
        with _patch_lock:
            saved = {k: getattr(rnn_utils, k) for k in LEAF_FUNCTIONS}
            try:
                for k, fn in LEAF_FUNCTIONS.items():
                    setattr(rnn_utils, k, _leaf(fn))
                return super().trace(root, concrete_args)
            finally:
                for k, fn in saved.items():
                    setattr(rnn_utils, k, fn)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._is_leaf(m):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            path = self.path_of_module(m)
        except Exception:   # pragma: no cover - modules not reachable from the root
            path = "?"
        self._stack.append((path, type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._stack.pop()

    def create_node(self, *args, **kwargs):
        node = super().create_node(*args, **kwargs)
        if self._stack:
            node.meta["attribx_module"] = self._stack[-1]
        return node


def concrete_args(model: nn.Module, n_inputs: int = 1) -> tuple[dict, list[str]]:
    """forward's parameters after the first ``n_inputs`` (the inputs given), bound to their defaults, but for
    mask parameters (:func:`is_mask_parameter`), which stay traced inputs run on example masks; error if another
    one has no default. Returns them and the given inputs' names."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}, []
    if not params:
        raise UnsupportedError(f"{type(model).__name__}.forward takes no input")
    inputs = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)][:n_inputs]
    if len(inputs) < n_inputs:
        raise UnsupportedError(f"{n_inputs} inputs given; {type(model).__name__}.forward takes "
                               f"{len(inputs)} ({', '.join(p.name for p in inputs)})")
    concrete = {}
    for p in params[n_inputs:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or is_mask_parameter(p):
            continue
        if p.default is p.empty:
            raise UnsupportedError(
                f"{type(model).__name__}.forward takes several inputs ({', '.join(q.name for q in params)}), "
                f"{'one input' if n_inputs == 1 else f'{n_inputs} inputs'} given: pass them all, "
                f"attribx.explain(model, "
                f"({', '.join(q.name for q in params if q.default is q.empty)})), or translate(model, "
                f"input_shape=(shape, ...)) with one shape per input (mask parameters without a default whose name "
                f"says mask, key_padding_mask, attention_mask, may be left out: they run as nothing masked; "
                f"sequence lengths for pack_padded_sequence are computed inside the model from the padded input, "
                f"e.g. (ids != pad).sum(1))")
        concrete[p.name] = p.default
    return concrete, [p.name for p in inputs]


def is_mask_parameter(p: inspect.Parameter) -> bool:
    """A further forward parameter without a default whose name says it is a mask (``key_padding_mask``,
    ``attention_mask``): a mask input of the graph (it decides, takes no relevance); the others without a
    default are signal inputs."""
    return p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and "mask" in p.name


def parameter_names(model: nn.Module) -> list[str]:
    """Names of ``model.forward``'s parameters that can take an input (not ``*args``, ``**kwargs``), in order."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def mask_parameters(model: nn.Module) -> list[str]:
    """Names of ``model.forward``'s mask parameters (:func:`is_mask_parameter`), in order."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    return [p.name for p in params[1:] if is_mask_parameter(p)]


class Holder(nn.Module):
    """Holds a model that is itself one translatable module (``nn.Conv2d(...)``), named by its class."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.attr = type(model).__name__.lower()
        setattr(self, self.attr, model)

    def forward(self, x):
        return getattr(self, self.attr)(x)


class Recorder(fx.Interpreter):
    """Runs the traced graph once and keeps every node's value (shapes, static ints)."""

    def __init__(self, gm):
        super().__init__(gm, garbage_collect_values=False)


_AXIS_SWAPS = {"transpose", "permute", "t", "contiguous", "swapaxes", "swapdims"}


def feeds_embeddings(fx_graph, root) -> bool:
    """Whether the model's input holds indices: it is looked up in an embedding (directly or through a
    time-major view), and otherwise only compared with a padding id (``ids != pad``, for lengths and masks)
    or asked its size."""
    first = next((n for n in fx_graph.nodes if n.op == "placeholder"), None)
    if first is None or not first.users:
        return False

    def kind(user, src):
        """'lookup', 'neutral' or None (any other use) for one use of src."""
        if user.op == "call_module":
            ok = isinstance(root.get_submodule(user.target), nn.Embedding) and user.args[:1] == (src,)
            return "lookup" if ok else None
        if user.op == "call_function" and user.target is F.embedding:
            return "lookup" if user.args[:1] == (src,) or user.kwargs.get("input") is src else None
        name = user.target if user.op == "call_method" else \
            fn_name(user.target) if user.op == "call_function" else None
        if user.args[:1] != (src,):
            return None
        if name == "ne" and len(user.args) == 2 and is_number(user.args[1]):
            return "neutral"
        if name in ("size", "dim") or name == "getattr" and user.args[1:] in (("shape",), ("ndim",)):
            return "neutral"
        if name in _AXIS_SWAPS and user.users:
            kinds = [kind(u, user) for u in user.users]
            return None if None in kinds else "lookup" if "lookup" in kinds else "neutral"
        return None
    kinds = [kind(u, first) for u in first.users]
    return None not in kinds and "lookup" in kinds


def module_converter(table, m: nn.Module):
    """The converter of a module whose class (or a base class with the same forward) has one."""
    conv = table.lookup(type(m))
    if conv is None:
        return None
    # the class the converter was registered for (by class or by dotted path) must not be subclassed with
    # another forward: a subclass computing something else is traced through instead
    owner = next((c for c in type(m).__mro__ if c is conv.target or _dotted(c) == conv.target), None)
    return conv if owner is not None and type(m).forward is owner.forward else None


def _dotted(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def sample_template(table, m: nn.Module) -> tuple | None:
    """One sample's shape as a first layer takes it: sizes it fixes as ints, the others named."""
    conv = module_converter(table, m)
    convert = conv.convert if conv is not None else None
    if convert is layers.linear_module:
        return (int(m.in_features),)
    if convert in (layers.conv_module, layers.conv_transpose_module):
        return (int(m.in_channels), *{1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}[len(m.kernel_size)])
    if convert is layers.embedding_module:
        return ("T",)
    if convert is rnn_module and m.batch_first:
        return ("T", int(m.input_size))
    return None


def first_layer(table, fx_graph, root) -> tuple | None:
    """(path, module, sample template) of the module that alone reads the model's input, if it has a template."""
    first = next((n for n in fx_graph.nodes if n.op == "placeholder"), None)
    users = list(first.users) if first is not None else []
    if len(users) != 1 or users[0].op != "call_module" or users[0].args[:1] != (first,):
        return None
    m = root.get_submodule(users[0].target)
    template = sample_template(table, m)
    return None if template is None else (str(users[0].target), m, template)
