"""Translate a ``torch.nn.Module`` into the attribx graph, with torch.fx and one example forward pass.

``translate_module(model, input_shape)`` traces the model symbolically (``torch.fx``) with the modules
it knows kept whole, so that graph nodes carry the module paths users know (``features.3``,
``layer1.0.conv1``); functional ops get fx's readable names (``add``, ``add_1``, ``cat``, ``flatten``).
One forward pass on a zero example of shape ``(1, *input_shape)`` gives every intermediate shape, from
which 'same' padding, adaptive pooling and ``x.view(x.size(0), -1)``-style reshapes are resolved.

Every op without a translation, and every argument the graph cannot express exactly, is an
:class:`attribx.UnsupportedError` naming the op, the fx node or module path, and the hooks that add
more. The graph is checked against the traced shapes before it is returned, and cached per model,
input shape and dtype until a parameter, buffer or submodule changes.

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

import builtins
import contextlib
import copy
import functools
import inspect
import math
import operator
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import rnn as rnn_utils
from torch.utils._python_dispatch import TorchDispatchMode

from attribx.builder import unique_name
from attribx.errors import (AttribxError, GraphError, InputError, InputShapeError, ModelModeWarning,
                            UnsupportedError)
from attribx.graph import Graph, Node, Value, layout_dims

__all__ = ["translate_module", "clear_cache", "HOOK_HINT"]

HOOK_HINT = ("a plugin can add ops through the 'attribx_ops' hook and translations through "
             "'attribx_translate'")

# ----------------------------------------------------------------------------------------------
# values flowing through the translation


@dataclass
class T:
    """A batched tensor of the graph: the graph value's name and its traced shape (batch size 1)."""

    name: str
    shape: tuple
    dtype: torch.dtype = torch.float32


@dataclass
class _Lazy:
    """A piece of a tensor (from chunk/split) that becomes a slice node when something reads it."""

    source: T
    axis: int
    start: int
    stop: int
    name: str
    made: T | None = None

    @property
    def shape(self):
        s = list(self.source.shape)
        s[self.axis] = self.stop - self.start
        return tuple(s)


@dataclass
class _Swapped:
    """A time-major tensor: torch's view has axes 0 and 1 swapped against the batch-first graph value.

    ``x.transpose(0, 1)`` of a batch-first tensor, the output of an RNN with ``batch_first=False``, and an
    RNN's final states (torch's (layers·directions, N, H)) are such views. The graph's batch axis stays
    first: a transpose of axes 0/1 is a no-op, and indexing or reducing torch's axis 0 works on the graph
    value's axis 1. ``pieces`` (final states) are per-layer/direction (N, H) values, stacked along the
    graph's axis 1 only when something reads them whole."""

    base: T | None
    pieces: tuple = ()
    name: str = ""

    @property
    def shape(self):
        if self.base is not None:
            return _swap01(self.base.shape)
        return (len(self.pieces), *self.pieces[0].shape)


@dataclass
class _Packed:
    """A PackedSequence: the padded batch-first data (N, T, ...), one length per sample (N,) and the
    (N, T) length mask; ``zeroed``: the data is zero past each length (an RNN's output)."""

    data: T
    lengths: T
    mask: str
    zeroed: bool = False


def _swap01(shape) -> tuple:
    shape = tuple(shape)
    return (shape[1], shape[0], *shape[2:]) if len(shape) >= 2 else shape


def _is_t(v) -> bool:
    return isinstance(v, (T, _Lazy, _Swapped, _Packed))


def _contains_t(v) -> bool:
    if _is_t(v):
        return True
    if isinstance(v, (list, tuple)):
        return any(_contains_t(a) for a in v)
    if isinstance(v, dict):
        return any(_contains_t(a) for a in v.values())
    return False


def _contains(args, kwargs, cls) -> bool:
    found = []
    fx.node.map_aggregate((args, kwargs), lambda v: found.append(v) if isinstance(v, cls) else None)
    return bool(found)


TIME_MAJOR_HINT = (
    "it reads a time-major tensor (torch's axis 0 is time, axis 1 the batch: from x.transpose(0, 1), an RNN "
    "with batch_first=False, or an RNN's final states h_n); the graph keeps the batch axis first and "
    "supports on such tensors: transposing axes 0 and 1 back, indexing or slicing axis 0 (out[-1], h_n[-1]), "
    "reducing over axis 0 (out.mean(0)), squeeze(0), cat, elementwise ops, and an nn.LSTM/nn.GRU with "
    "batch_first=False; make the tensor batch-first (x.transpose(0, 1)) before other ops")


class _Unsupported(Exception):
    """Raised inside handlers; the translation adds where it happened and the hook hint."""


# ----------------------------------------------------------------------------------------------
# tracing


_PACK_PADDED = rnn_utils.pack_padded_sequence
_PAD_PACKED = rnn_utils.pad_packed_sequence
#: functions torch.fx cannot trace through (they read tensor values), recorded as one call each
LEAF_FUNCTIONS = {"pack_padded_sequence": _PACK_PADDED, "pad_packed_sequence": _PAD_PACKED}
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


class _Tracer(fx.Tracer):
    """Keeps the modules we translate as leaves and records the module each node was made in."""

    def proxy(self, node):
        return _InplaceProxy(node, self)

    def __init__(self):
        # names bound by ``from torch.nn.utils.rnn import ...`` in the model's modules
        super().__init__(autowrap_functions=tuple(LEAF_FUNCTIONS.values()))
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
        if _module_handler(m) is not None:
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


def _concrete_args(model: nn.Module) -> tuple[dict, str | None]:
    """forward's parameters after the first, bound to their defaults; error if one has none."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}, None
    if not params:
        raise UnsupportedError(f"{type(model).__name__}.forward takes no input")
    concrete = {}
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise UnsupportedError(
                f"{type(model).__name__}.forward takes several inputs ({', '.join(q.name for q in params)}); "
                f"attribx translates models with one input tensor (wrap the model in a module that "
                f"takes one; sequence lengths for pack_padded_sequence are computed inside the model from the "
                f"padded input, e.g. (ids != pad).sum(1))")
        concrete[p.name] = p.default
    return concrete, params[0].name


class _Holder(nn.Module):
    """Holds a model that is itself one translatable module (``nn.Conv2d(...)``), named by its class."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.attr = type(model).__name__.lower()
        setattr(self, self.attr, model)

    def forward(self, x):
        return getattr(self, self.attr)(x)


class _Recorder(fx.Interpreter):
    """Runs the traced graph once and keeps every node's value (shapes, static ints)."""

    def __init__(self, gm):
        super().__init__(gm, garbage_collect_values=False)


# ----------------------------------------------------------------------------------------------
# small helpers


def _ntuple(v, n: int, what: str) -> tuple:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return (int(v),) * n
    v = tuple(int(a) for a in v)
    if len(v) == 1 and n > 1:
        return v * n
    if len(v) != n:
        raise _Unsupported(f"{what} {v} does not have {n} entries")
    return v


def _compact_pads(pairs):
    """Per-dim (before, after) pairs as an int, per-dim ints, or the pairs themselves."""
    pairs = [(int(a), int(b)) for a, b in pairs]
    if all(a == b for a, b in pairs):
        if len({a for a, _ in pairs}) == 1:
            return pairs[0][0]
        return tuple(a for a, _ in pairs)
    return [tuple(p) for p in pairs]


def _compact(t: tuple):
    return t[0] if len(set(t)) == 1 else tuple(t)


def _arg(args, kwargs, i, name, default=inspect.Parameter.empty):
    if len(args) > i:
        return args[i]
    if name in kwargs:
        return kwargs[name]
    if default is inspect.Parameter.empty:
        raise _Unsupported(f"argument {name!r} is missing")
    return default


def _qualname(fn) -> str:
    try:
        from torch.fx.node import _get_qualified_name
        return _get_qualified_name(fn)
    except Exception:
        return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _fn_name(fn) -> str:
    return getattr(fn, "__name__", None) or _qualname(fn).rsplit(".", 1)[-1]


def _is_number(v) -> bool:
    return isinstance(v, (bool, int, float, np.integer, np.floating))


def _norm_dim(d, ndim, what="dim") -> int:
    d = int(d)
    if not -ndim <= d < ndim:
        raise _Unsupported(f"{what} {d} is out of range for a tensor of rank {ndim}")
    return d % ndim


RANDOM_FUNCTIONS = {torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like,
                    torch.randint_like, torch.randperm, torch.bernoulli, torch.normal, torch.multinomial,
                    torch.poisson}
RANDOM_METHODS = {"uniform_", "normal_", "bernoulli", "bernoulli_", "random_", "exponential_",
                  "geometric_", "cauchy_", "log_normal_", "multinomial"}
INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.relu_}


# ----------------------------------------------------------------------------------------------
# the translation


class _Translation:
    def __init__(self, model: nn.Module, input_shape: tuple, dtype: torch.dtype):
        self.model = model
        self.input_shape = input_shape
        self.dtype = dtype
        self.np_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.nodes: list[Node] = []
        self.used: set[str] = {"input"}
        self.values: dict[fx.Node, Any] = {}
        self.tainted: set[fx.Node] = set()
        self.aliases: dict[str, str] = {}
        self.node: fx.Node | None = None       # the fx node being translated
        self.main: str = ""                    # its graph name
        self.main_names: dict[fx.Node, str] = {}
        self.order: dict[fx.Node, int] = {}
        self.expected: dict[str, tuple] = {}    # graph name -> torch's shape (batch 1)
        self.emitted: set[str] = set()
        self.env: dict = {}
        self.sequence_input = False             # a recurrent layer reads the input directly
        self.swap_out = False                   # an elementwise op on time-major tensors: see out_shape
        self.counts: set[str] = set()           # graph values holding integers (masks, lengths)

    # -- names and nodes --------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        return unique_name(base, self.used)

    def sub(self, suffix: str) -> str:
        """A name for an extra node of the current translation (``avgpool:h0``)."""
        return self.unique(f"{self.main}:{suffix}")

    def emit(self, op: str, inputs, shape, attrs=None, params=None, name=None, source=None) -> T:
        """Add a node (named after the fx node unless ``name``); ``shape`` is torch's, batch size 1."""
        ins = tuple(self.materialize(i).name for i in inputs)
        name = name or self.main
        params = {k: v for k, v in (params or {}).items() if v is not None}
        self.nodes.append(Node(name, op, ins, dict(attrs or {}), params, None, source or self.source()))
        self.emitted.add(name)
        t = T(name, tuple(int(d) for d in shape), self.dtype)
        self.expected[name] = t.shape
        v = self.env.get(self.node)
        if isinstance(v, torch.Tensor) and not v.is_floating_point() and any(i in self.counts for i in ins):
            t.dtype = v.dtype           # a reshaped or sliced mask or lengths: still one
            self.counts.add(name)
        return t

    def source(self) -> str:
        n = self.node
        if n is None:
            return ""
        if n.op == "call_module":
            return type(self.root.get_submodule(n.target)).__name__
        if n.op == "call_method":
            return str(n.target)
        return _fn_name(n.target)

    def materialize(self, v, name: str | None = None) -> T:
        """A graph tensor for ``v``; a chunk/split piece becomes its slice node now (named ``name``)."""
        if isinstance(v, T):
            return v
        if isinstance(v, _Lazy):
            if v.made is None:
                v.made = self.emit("slice", [v.source], v.shape,
                                   {"axis": v.axis, "start": v.start, "stop": v.stop, "step": None},
                                   name=name or self.unique(v.name))
            return v.made
        if isinstance(v, _Swapped):
            raise _Unsupported(TIME_MAJOR_HINT)
        if isinstance(v, _Packed):
            raise _Unsupported("it reads a PackedSequence; in the graph only nn.LSTM, nn.GRU and "
                               "pad_packed_sequence read one")
        raise _Unsupported(f"expected a tensor computed from the input, got {type(v).__name__}")

    def base(self, v) -> T:
        """The batch-first graph value of a time-major view (final states stacked now, along axis 1)."""
        if v.base is None:
            rest = v.pieces[0].shape[1:]
            cols = [self.emit("reshape", [p], (1, 1, *rest), {"shape": (1, *rest)},
                              name=self.unique(f"{v.name}/{k}")) for k, p in enumerate(v.pieces)]
            v.base = cols[0] if len(cols) == 1 else self.emit(
                "concat", cols, (1, len(cols), *rest), {"axis": 1}, name=self.unique(v.name))
        return v.base

    def param(self, t, what="parameter") -> np.ndarray:
        if t is None:
            return None
        if _is_t(t):
            raise _Unsupported(f"its {what} is computed from the input; the graph's {what}s are constants")
        if not isinstance(t, torch.Tensor):
            raise _Unsupported(f"{what} is a {type(t).__name__}, not a tensor")
        a = t.detach().to("cpu")
        if not a.is_floating_point() or a.dtype not in (torch.float32, torch.float64):
            a = a.to(self.dtype)
        return a.numpy().copy()

    def const(self, value, suffix="const") -> T:
        """A constant node (no batch axis) holding a python number or a tensor."""
        if isinstance(value, torch.Tensor):
            arr = value.detach().to("cpu").to(torch.float64).numpy().astype(self.np_dtype)
        elif _is_number(value):
            arr = np.asarray(value, dtype=np.float64).astype(self.np_dtype)
        elif isinstance(value, np.ndarray):
            arr = value.astype(self.np_dtype)
        else:
            raise _Unsupported(f"operand {value!r} is neither a number nor a tensor")
        name = self.sub(suffix)
        self.nodes.append(Node(name, "constant", (), {}, {"value": arr}, None, "constant"))
        self.expected[name] = tuple(arr.shape)
        return T(name, tuple(arr.shape), self.dtype)

    def out_shape(self, counts: bool = False) -> tuple:
        """torch's shape of the current node's result (batch 1); graph order (axes 0/1 swapped back) inside
        an elementwise op on time-major tensors. ``counts``: integer and boolean results are fine (masks
        and lengths, which the graph holds as floats)."""
        v = self.env[self.node]
        if not isinstance(v, torch.Tensor):
            raise _Unsupported(f"expected a tensor result, got {type(v).__name__}")
        if not v.is_floating_point() and not counts:
            raise _Unsupported(f"its result has dtype {v.dtype}; the graph carries floating point values only "
                               f"(besides masks and lengths of padded sequences)")
        return _swap01(v.shape) if self.swap_out else tuple(v.shape)

    def tensor(self, v, what="input") -> T:
        if not _is_t(v):
            raise _Unsupported(f"its {what} is not computed from the model input "
                               f"({type(v).__name__}); only the input tensor flows through the graph")
        return self.materialize(v)

    # -- the walk ---------------------------------------------------------------------------------
    #: function handlers by fx node target (a subclass adds its own, e.g. aten ops)
    functions: dict = {}

    def trace(self):
        """The model as an fx graph: (root module, fx graph, GraphModule); untranslatable modules refused."""
        model = self.model
        # a module we translate whole is traced as the one call of a holder, so it keeps its name
        whole = _module_handler(model) is not None or fx.Tracer().is_leaf_module(model, "")
        self.root = root = _Holder(model) if whole else model
        concrete, _ = _concrete_args(root)
        tracer = _Tracer()
        before = set(vars(root))
        try:
            fx_graph = tracer.trace(root, concrete_args=concrete or None)
            for n in fx_graph.nodes:    # else the generated code registers them with fx.wrap by a dotted name
                n.meta.pop("is_wrapped", None)
            gm = fx.GraphModule(tracer.root, fx_graph, type(model).__name__)
        except AttribxError:
            raise
        except Exception as err:
            raise UnsupportedError(
                f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {_first_line(err)}. "
                f"attribx translates models whose forward torch.fx can trace symbolically (no control "
                f"flow on tensor values); {HOOK_HINT}") from None
        finally:
            for k in set(vars(root)) - before:     # the tracer parks tensor constants on the root
                if k.startswith("_tensor_constant"):
                    delattr(root, k)
        for n in fx_graph.nodes:     # modules without a translation: say so before running anything
            if n.op == "call_module" and _module_handler(root.get_submodule(n.target)) is None:
                raise UnsupportedError(f"{self._where(n)} has no translation to the attribx graph; {HOOK_HINT}")
        return root, fx_graph, gm

    def takes_indices(self, fx_graph) -> bool:
        return _feeds_embeddings(fx_graph, self.root)

    def record(self, fx_graph):
        """One forward pass on an example of batch size 1: (every node's value, the example)."""
        model = self.model
        # packed sequences need lengths >= 1: an example of ones (twos where 1 pads), whole-length sequences
        packs = any(n.op == "call_function" and n.target is _PACK_PADDED for n in fx_graph.nodes)
        first_err = None
        for fill in ((1, 2, 0) if packs else (0,)):
            example = torch.full((1, *self.input_shape), fill, dtype=torch.long if self.indices else self.dtype,
                                 device=_device(model))
            rec = _Recorder(self.gm)
            try:
                with torch.no_grad():
                    rec.run(example)
                return rec.env, example
            except Exception as err:
                first_err = first_err or err
        raise self.shape_error(fx_graph, first_err)

    def shape_error(self, fx_graph, err) -> InputShapeError:
        """The model does not run on the example: torch's reason, and the shape its first layer takes."""
        shape = tuple(self.input_shape)
        first = _first_layer(fx_graph, self.root)
        takes = (f"its first layer {first[0]!r} ({type(first[1]).__name__}) takes one sample of shape "
                 f"{_pretty(first[2])}" if first else
                 "inputs need the batch axis first, then the model's own layout (channels first for torch)")
        return InputShapeError(
            f"{type(self.model).__name__} does not run on one sample of shape {shape} (batch shape {(1, *shape)}): "
            f"{type(err).__name__}: {_first_line(err)}; {takes}", (None, *first[2]) if first else None)

    def names(self, nodes) -> dict:
        """Graph names fixed before the walk: module paths, so that functional names never take them."""
        return {n: self.unique(str(n.target)) for n in nodes if n.op == "call_module"}

    def run(self) -> Graph:
        self.root, fx_graph, self.gm = self.trace()
        self.indices = self.takes_indices(fx_graph)
        self.env, example = self.record(fx_graph)
        nodes = list(fx_graph.nodes)
        self.order = {n: i for i, n in enumerate(nodes)}
        self.main_names.update(self.names(nodes))
        outputs = None
        first = True
        for n in nodes:
            self.node = n
            if n.op == "placeholder":
                if first:
                    self.values[n] = T("input", tuple(example.shape), example.dtype)
                    first = False
                else:
                    self.values[n] = self.env[n]
                continue
            if n.op == "get_attr":
                self.values[n] = self.env[n]
                continue
            if n.op == "output":
                outputs = self._outputs(n)
                continue
            self.main = self.main_names.get(n) or self.unique(n.name)
            self.values[n] = self._translate_node(n)
            if isinstance(self.values[n], T) and self.values[n].name != self.main and self.main not in self.emitted:
                # dropped (identity, dropout, contiguous): the name addresses the value it passes on
                self.aliases[self.main] = self.values[n].name
        self.node = None
        return self._finish(outputs)

    def _where(self, n: fx.Node) -> str:
        if n.op == "call_module":
            m = self.root.get_submodule(n.target)
            return f"module {n.target!r} ({_class_path(type(m))})"
        what = f"method Tensor.{n.target}" if n.op == "call_method" else f"function {_qualname(n.target)}"
        where = f"{what} (fx node {n.name!r}"
        mod = self.scope(n)
        if mod:
            where += f", in module {mod[0]!r} ({mod[1]})"
        return where + ")"

    def scope(self, n: fx.Node):
        """(module path, class name) of the module the node was made in, or None."""
        return n.meta.get("attribx_module")

    def _translate_node(self, n: fx.Node):
        args = fx.node.map_arg(n.args, lambda a: self.values[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: self.values[a])
        tainted_in = [a for a in n.all_input_nodes if a in self.tainted]
        if not _contains_t((args, kwargs)):
            return self._static(n, args, tainted_in)
        if n.op == "call_module":
            mod = self.root.get_submodule(n.target)
            handler = _module_handler(mod)
            extra = (mod,)
        elif n.op == "call_method":
            handler = METHODS.get(n.target)
            extra = ()
        else:
            handler = self.functions.get(n.target) or FUNCTIONS_BY_NAME.get(_qualname(n.target))
            extra = ()
        if handler is None:
            raise UnsupportedError(f"{self._where(n)} has no translation to the attribx graph; {HOOK_HINT}")
        if _contains(args, kwargs, _Swapped):
            mode = getattr(handler, "time_major", None)
            if mode == "elementwise":
                return self._elementwise_time_major(n, handler, extra, args, kwargs)
            if mode != "aware":
                raise UnsupportedError(f"{self._where(n)}: {TIME_MAJOR_HINT}; {HOOK_HINT}")
        if tainted_in and not getattr(handler, "batch_args_ok", False):
            raise UnsupportedError(
                f"{self._where(n)}: an argument depends on the batch size "
                f"({', '.join(a.name for a in tainted_in)}); the graph works for any batch size, so it "
                f"cannot express that; {HOOK_HINT}")
        self._check_inplace(n, args, kwargs, extra)
        try:
            return handler(self, n, *extra, args, kwargs)
        except _Unsupported as err:
            raise UnsupportedError(f"{self._where(n)}: {err}; {HOOK_HINT}") from None

    def _elementwise_time_major(self, n, handler, extra, args, kwargs):
        """An elementwise op on time-major views: run on their batch-first values; the result is time-major."""
        def unwrap(v):
            if isinstance(v, _Swapped):
                return self.base(v)
            if _is_t(v):
                raise _Unsupported("it mixes a time-major tensor (time axis first) with a batch-first one; "
                                   "transpose one of them (x.transpose(0, 1))")
            rank = len(getattr(self.env[n], "shape", ()))
            if isinstance(v, torch.Tensor) and (v.dim() > rank or any(
                    ((1,) * (rank - v.dim()) + tuple(v.shape))[a] != 1 for a in range(min(rank, 2)))):
                raise _Unsupported(f"a constant of shape {tuple(v.shape)} would broadcast over the time or "
                                   f"batch axis of a time-major tensor")
            return v
        try:
            args = fx.node.map_aggregate(args, unwrap)
            kwargs = fx.node.map_aggregate(kwargs, unwrap)
            self.swap_out = True
            try:
                out = handler(self, n, *extra, args, kwargs)
            finally:
                self.swap_out = False
            if not isinstance(out, T):
                raise _Unsupported("its result is not one tensor")
        except _Unsupported as err:
            raise UnsupportedError(f"{self._where(n)}: {err}; {HOOK_HINT}") from None
        return _Swapped(out)

    def _static(self, n, args, tainted_in):
        """A node that does not depend on the input: its traced value is its value."""
        if n.target in RANDOM_FUNCTIONS or (n.op == "call_method" and n.target in RANDOM_METHODS):
            raise UnsupportedError(f"{self._where(n)} draws random numbers; the graph is deterministic; "
                                   f"{HOOK_HINT}")
        value = self.env[n]
        if tainted_in:
            # the index is a plain value (an int, a slice: unhashable before Python 3.12, so never looked up
            # in a set) or made of fx nodes, none of them batch-dependent
            if n.op == "call_function" and n.target is operator.getitem and len(n.args) == 2 \
                    and n.args[0] in self.tainted and not _fx_nodes_in(n.args[1]) & self.tainted \
                    and isinstance(args[0], (tuple, list)):
                idx = args[1]
                length = len(args[0])
                if isinstance(idx, int):
                    if idx % max(length, 1) == 0:
                        self.tainted.add(n)
                elif isinstance(idx, slice):
                    if 0 in range(length)[idx]:
                        self.tainted.add(n)
                else:
                    self.tainted.add(n)
            else:
                self.tainted.add(n)
        return value

    def _is_inplace(self, n: fx.Node) -> bool:
        """Whether fx node ``n`` modifies its first argument in place."""
        if n.op == "call_module":
            return bool(getattr(self.root.get_submodule(n.target), "inplace", False))
        if n.op == "call_method":
            return n.target.endswith("_") and not n.target.endswith("__")
        if n.op == "call_function":
            fname = _fn_name(n.target)
            return n.target in INPLACE_FUNCTIONS or bool(n.kwargs.get("inplace", False)) \
                or (fname.endswith("_") and not fname.endswith("__"))
        return False

    def _check_inplace(self, n, args, kwargs, extra):
        """An in-place op changes every value sharing its tensor's storage (the tensor, its views, its base,
        views of its base); the graph maps each value to the node made when it was created, so a value made
        before the in-place op and read after it would miss the change: refused (issue 17 point 1)."""
        if not n.args or not isinstance(n.args[0], fx.Node) or not self._is_inplace(n):
            return
        if getattr(self, "_aliases", None) is None:
            from .aliasing import Aliases
            self._aliases = Aliases(list(self.order), self.root, self.env, self._is_inplace)
        stale = self._aliases.stale_read(n)
        if stale is None:
            return
        m, u = stale
        target = n.args[0]
        if m is target:
            what = f"{m.name!r} is read by {u.name!r} afterwards"
        else:
            what = (f"the earlier value {m.name!r} shares its storage (a view of it, its base or a view of its "
                    f"base) and is read by {u.name!r} afterwards")
        raise UnsupportedError(
            f"{self._where(n)} modifies {target.name!r} in place; {what}, which in torch sees the change and in "
            f"the graph would not: the graph has no aliasing (use the op's out-of-place form, e.g. relu instead "
            f"of relu_, inplace=False, x = x + y instead of x += y, or clone before the view); {HOOK_HINT}")

    def _outputs(self, n):
        val = fx.node.map_arg(n.args[0], lambda a: self.values[a])
        flat = []

        def collect(v):
            if isinstance(v, (list, tuple)):
                for a in v:
                    collect(a)
            elif isinstance(v, dict):
                for a in v.values():
                    collect(a)
            elif isinstance(v, _Swapped):
                raise UnsupportedError(
                    f"{type(self.model).__name__} returns a tensor whose batch axis is second (time-major, e.g. "
                    f"x.transpose(0, 1) or an RNN's output with batch_first=False); the graph's outputs keep the "
                    f"batch axis first: return out.transpose(0, 1) (or h_n[-1], h_n.transpose(0, 1) for final "
                    f"states); {HOOK_HINT}")
            elif isinstance(v, _Packed):
                raise UnsupportedError(
                    f"{type(self.model).__name__} returns a PackedSequence; return a tensor (unpack it with "
                    f"pad_packed_sequence); {HOOK_HINT}")
            elif _is_t(v):
                flat.append(v)
            elif v is None:     # an absent optional output (an aux head that eval mode skips)
                pass
            else:
                raise UnsupportedError(
                    f"{type(self.model).__name__} returns a {type(v).__name__} that does not depend on its "
                    f"input; the graph's outputs must be tensors computed from the input")
        collect(val)
        if not flat:
            raise UnsupportedError(f"{type(self.model).__name__} returns nothing computed from its input")
        self.main = "output"
        outs = [self.materialize(v) for v in flat]
        # a model that returns its input unchanged still gets a node to explain
        return [self.emit("identity", [o], o.shape, name=self.unique("output"), source="Identity")
                if o.name == "input" else o for o in outs]

    def _finish(self, outputs) -> Graph:
        # drop what no output reads (branches the model computes but does not return)
        needed = {o.name for o in outputs}
        for node in reversed(self.nodes):
            if node.name in needed:
                needed.update(node.inputs)
        nodes = [nd for nd in self.nodes if nd.name in needed]
        for o in outputs:
            if o.dtype != self.dtype:
                raise UnsupportedError(f"output {o.name!r} has dtype {o.dtype}, the model's is {self.dtype}")
        dtype = "int64" if self.indices else "float64" if self.dtype == torch.float64 else "float32"
        full = (None, *self.input_shape)
        meta = {"name": type(self.model).__name__, "backend": "torch", "framework": "torch",
                "torch_version": torch.__version__, "input_shape": list(self.input_shape)}
        aliases = {k: v for k, v in self.aliases.items() if v in needed or v == "input"}
        if aliases:
            meta["aliases"] = aliases
        layout = ("sample",) + tuple("token" if i == 0 else f"position_{i}" for i in range(len(full) - 1))
        if not self.indices:
            layout = layout_dims("NTE" if self.sequence_input else None, len(full))
        graph = Graph([Value("input", full, dtype, layout)],
                      nodes,
                      [o.name for o in outputs], meta)
        for nd in graph.nodes:   # the graph's shapes must be torch's, batch axis first
            want = self.expected.get(nd.name)
            got = tuple(1 if d is None else d for d in nd.shape)
            if nd.op != "constant" and (nd.shape[0] is not None or (want is not None and got != want)):
                raise GraphError(f"internal: node {nd.name!r} ({nd.op}) has shape {nd.shape} in the graph "
                                 f"but {want} in torch (batch 1); please report this with the model")
        return graph


def _first_line(err) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _class_path(cls) -> str:
    mod = cls.__module__
    if mod.startswith("torch.nn.modules"):
        mod = "torch.nn"
    return f"{mod}.{cls.__qualname__}"


def _device(model):
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


_AXIS_SWAPS = {"transpose", "permute", "t", "contiguous", "swapaxes", "swapdims"}


def _feeds_embeddings(fx_graph, root) -> bool:
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
            _fn_name(user.target) if user.op == "call_function" else None
        if user.args[:1] != (src,):
            return None
        if name == "ne" and len(user.args) == 2 and _is_number(user.args[1]):
            return "neutral"
        if name in ("size", "dim") or name == "getattr" and user.args[1:] in (("shape",), ("ndim",)):
            return "neutral"
        if name in _AXIS_SWAPS and user.users:
            kinds = [kind(u, user) for u in user.users]
            return None if None in kinds else "lookup" if "lookup" in kinds else "neutral"
        return None
    kinds = [kind(u, first) for u in first.users]
    return None not in kinds and "lookup" in kinds


# ----------------------------------------------------------------------------------------------
# op translations shared by modules and functions


def _conv(ctx, x: T, weight, bias, stride, padding, dilation, groups):
    w = ctx.param(weight, "weight")
    n = w.ndim - 2
    if len(x.shape) != n + 2:
        raise _Unsupported(f"conv{n}d on an input of rank {len(x.shape)}; the graph needs (N, C, *spatial)")
    kernel = w.shape[2:]
    stride = _ntuple(stride, n, "stride")
    dilation = _ntuple(dilation, n, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            pairs = [(0, 0)] * n
        elif padding == "same":
            pairs = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pairs.append((total // 2, total - total // 2))
        else:
            raise _Unsupported(f"padding {padding!r}")
    else:
        pairs = [(p, p) for p in _ntuple(padding, n, "padding")]
    return ctx.emit("conv", [x], ctx.out_shape(),
                    {"stride": _compact(stride), "padding": _compact_pads(pairs), "dilation": _compact(dilation),
                     "groups": int(groups)},
                    {"weight": w, "bias": ctx.param(bias, "bias")})


def _window(x: T, kernel, stride, padding, dilation, ceil_mode, what):
    """Per spatial dim: kernel, stride, dilation, (before, after) pads with ceil mode's extra, extra."""
    n = len(x.shape) - 2
    if n < 1:
        raise _Unsupported(f"{what} on an input of rank {len(x.shape)}; the graph needs (N, C, *spatial)")
    kernel = _ntuple(kernel, n, "kernel_size")
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) \
        else _ntuple(stride, n, "stride")
    padding = _ntuple(padding, n, "padding")
    dilation = _ntuple(dilation, n, "dilation")
    pairs, extras = [], []
    for size, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation):
        span = size + 2 * p - d * (k - 1) - 1
        out = span // s + 1
        if ceil_mode:
            out = -(-span // s) + 1
            if (out - 1) * s >= size + p:
                out -= 1
        extra = max(0, (out - 1) * s + d * (k - 1) + 1 - (size + 2 * p))
        pairs.append((p, p + extra))
        extras.append(extra)
    return kernel, stride, dilation, pairs, extras


def _max_pool(ctx, x, kernel, stride, padding, dilation, ceil_mode, return_indices):
    if return_indices:
        raise _Unsupported("return_indices=True (the indices are not a graph value)")
    kernel, stride, dilation, pairs, extras = _window(x, kernel, stride, padding, dilation, ceil_mode, "max pooling")
    # ceil_mode: torch's extra windows are windows over -inf padding after the input; exact here
    return ctx.emit("max_pool", [x], ctx.out_shape(),
                    {"kernel_size": _compact(kernel), "stride": _compact(stride),
                     "padding": _compact_pads(pairs), "dilation": _compact(dilation)})


def _avg_pool(ctx, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    if divisor_override is not None:
        raise _Unsupported(f"divisor_override={divisor_override}")
    kernel, stride, _, pairs, extras = _window(x, kernel, stride, padding, 1, ceil_mode, "average pooling")
    count = bool(count_include_pad)
    if any(extras):
        # torch counts the zero padding but not ceil mode's extra positions: with no padding, or with
        # count_include_pad=False, that is the count of real positions, which the graph op has
        if count and any(p for p, _ in pairs):
            raise _Unsupported(f"ceil_mode=True with count_include_pad=True and padding {padding} adds a "
                               f"partial window here (input {x.shape[2:]}) whose divisor the graph's "
                               f"avg_pool cannot express")
        count = False
    return ctx.emit("avg_pool", [x], ctx.out_shape(),
                    {"kernel_size": _compact(kernel), "stride": _compact(stride),
                     "padding": _compact_pads(pairs), "count_include_pad": count})


def _adaptive_sizes(x: T, output_size):
    n = len(x.shape) - 2
    if n < 1:
        raise _Unsupported(f"adaptive pooling on an input of rank {len(x.shape)}")
    if isinstance(output_size, (int, np.integer)) or output_size is None:
        output_size = (output_size,) * n
    output_size = tuple(output_size)
    if len(output_size) == 1 and n > 1:
        output_size = output_size * n
    if len(output_size) != n:
        raise _Unsupported(f"output_size {output_size} for {n} spatial dims")
    ins = x.shape[2:]
    return ins, tuple(i if o is None else int(o) for i, o in zip(ins, output_size))


def _axis_letter(n: int, a: int) -> str:
    return {1: "l", 2: "hw", 3: "dhw"}.get(n, "")[a:a + 1] or f"a{a}"


def _adaptive_avg(ctx, x: T, output_size):
    ins, outs = _adaptive_sizes(x, output_size)
    if ins == outs:
        return x
    if all(o == 1 for o in outs):
        return ctx.emit("global_avg_pool", [x], ctx.out_shape(), {"keepdims": True})
    if all(i % o == 0 for i, o in zip(ins, outs)):
        k = tuple(i // o for i, o in zip(ins, outs))
        return ctx.emit("avg_pool", [x], ctx.out_shape(), {"kernel_size": _compact(k), "stride": _compact(k),
                                                           "padding": 0, "count_include_pad": True})
    # overlapping or repeating windows: per spatial axis, the mean of each window, concatenated
    # (a rectangle's mean is the mean over one axis of the means over the other: exact)
    todo = [a for a, (i, o) in enumerate(zip(ins, outs)) if i != o]
    cur = x
    for j, a in enumerate(todo):
        axis = a + 2
        size, out = ins[a], outs[a]
        pieces = []
        for i in range(out):
            lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
            shp = list(cur.shape)
            shp[axis] = hi - lo
            piece = ctx.emit("slice", [cur], shp, {"axis": axis, "start": lo, "stop": hi, "step": None},
                             name=ctx.sub(f"{_axis_letter(len(ins), a)}{i}"))
            if hi - lo > 1:
                shp[axis] = 1
                piece = ctx.emit("reduce_mean", [piece], shp, {"axes": (axis,), "keepdims": True},
                                 name=ctx.sub(f"{_axis_letter(len(ins), a)}{i}_mean"))
            pieces.append(piece)
        shp = list(cur.shape)
        shp[axis] = out
        last = j == len(todo) - 1
        cur = ctx.emit("concat", pieces, shp, {"axis": axis},
                       name=None if last else ctx.sub(f"{_axis_letter(len(ins), a)}"))
    return cur


def _adaptive_max(ctx, x: T, output_size, return_indices=False):
    if return_indices:
        raise _Unsupported("return_indices=True (the indices are not a graph value)")
    ins, outs = _adaptive_sizes(x, output_size)
    if ins == outs:
        return x
    if not all(i % o == 0 for i, o in zip(ins, outs)):
        raise _Unsupported(f"adaptive max pooling from {ins} to {outs}: not a whole number of windows per "
                           f"output, which the graph's max_pool cannot express")
    k = tuple(i // o for i, o in zip(ins, outs))
    return ctx.emit("max_pool", [x], ctx.out_shape(), {"kernel_size": _compact(k), "stride": _compact(k),
                                                       "padding": 0, "dilation": 1})


def _fx_nodes_in(arg) -> set:
    """The fx nodes an argument holds (inside tuples, lists, dicts and slices)."""
    found: set = set()
    fx.node.map_arg(arg, lambda a: found.add(a) or a)
    return found


def _batch_norm(ctx, x: T, mean, var, weight, bias, eps, training=False):
    if training or mean is None or var is None:
        raise _Unsupported("batch norm with batch statistics (no running stats, or training=True); the graph "
                           "needs inference batch norm")
    if len(x.shape) < 2:
        raise _Unsupported(f"batch norm on an input of rank {len(x.shape)}")
    return ctx.emit("batch_norm", [x], ctx.out_shape(), {"eps": float(eps), "axis": 1},
                    {"mean": ctx.param(mean), "var": ctx.param(var), "scale": ctx.param(weight),
                     "bias": ctx.param(bias)})


def _unary(ctx, x, op, **attrs):
    x = ctx.tensor(x)
    return ctx.emit(op, [x], ctx.out_shape(), attrs)


def _clip(ctx, x, lo, hi):
    for v in (lo, hi):
        if v is not None and not _is_number(v):
            raise _Unsupported(f"clamp bound {type(v).__name__}; only number bounds are supported")
    x = ctx.tensor(x)
    return ctx.emit("clip", [x], ctx.out_shape(), {"min": None if lo is None else float(lo),
                                                   "max": None if hi is None else float(hi)})


def _hardsigmoid(ctx, x):
    """relu6(x + 3) / 6 == clip(x / 6 + 1/2, 0, 1)."""
    x = ctx.tensor(x)
    s = ctx.emit("mul", [x, ctx.const(1.0 / 6.0, "scale")], x.shape, name=ctx.sub("scaled"))
    s = ctx.emit("add", [s, ctx.const(0.5, "shift")], x.shape, name=ctx.sub("shifted"))
    return ctx.emit("clip", [s], ctx.out_shape(), {"min": 0.0, "max": 1.0})


def _softmax(ctx, x, dim, dtype=None):
    x = ctx.tensor(x)
    if dtype is not None and dtype != x.dtype:
        raise _Unsupported(f"softmax with dtype={dtype}")
    ndim = len(x.shape)
    if dim is None:   # torch's legacy implicit dim
        dim = 0 if ndim in (0, 1, 3) else 1
    dim = _norm_dim(dim, ndim)
    if dim == 0:
        raise _Unsupported("softmax over the batch axis mixes samples")
    return ctx.emit("softmax", [x], ctx.out_shape(), {"axis": dim})


def _passthrough(ctx, x):
    x = ctx.tensor(x)
    dtype = ctx.env[ctx.node].dtype
    out = ctx.out_shape(counts=x.name in ctx.counts)
    if out == x.shape and dtype != x.dtype and x.name in ctx.counts:
        return T(x.name, x.shape, dtype)      # a mask or lengths cast: the graph holds them as floats
    if out != x.shape or dtype != x.dtype:
        raise _Unsupported(f"changes shape or dtype ({x.shape} {x.dtype} -> {out} {dtype})")
    return x


def _reshape_to(ctx, x, out_shape=None):
    x = ctx.tensor(x)
    out = tuple(out_shape if out_shape is not None else ctx.out_shape())
    if out == x.shape:
        return x
    if not out or out[0] != 1 or x.shape[0] != 1 or (math.prod(out) != math.prod(x.shape)):
        raise _Unsupported(f"reshapes {x.shape} to {out} (traced with batch size 1): the batch axis does not "
                           f"stay first, so samples would mix")
    if len(out) == 2 and len(x.shape) > 2:
        return ctx.emit("flatten", [x], out, {"start_dim": 1, "end_dim": -1})
    return ctx.emit("reshape", [x], out, {"shape": tuple(out[1:])})


def _flatten(ctx, x, start_dim=0, end_dim=-1):
    x = ctx.tensor(x)
    ndim = len(x.shape)
    if ndim == 0:
        raise _Unsupported("flatten of a scalar")
    s, e = _norm_dim(start_dim, ndim), _norm_dim(end_dim, ndim)
    if s >= e:
        return x
    if s == 0:
        raise _Unsupported(f"flatten(start_dim={start_dim}) merges the batch axis into the features "
                           f"(use start_dim=1)")
    return ctx.emit("flatten", [x], ctx.out_shape(), {"start_dim": s, "end_dim": e if e != ndim - 1 else -1})


def _swap_axis(a: int) -> int:
    return 1 if a == 0 else 0 if a == 1 else a


def _graph_value(ctx, x) -> T:
    """The batch-first graph value of x (of a time-major view: the value it views)."""
    return ctx.base(x) if isinstance(x, _Swapped) else ctx.tensor(x)


def _transpose_perm(ctx, x, perm):
    """A permutation that keeps the batch axis first is a transpose node; one that puts it second makes a
    time-major view (``x.transpose(0, 1)``: no node), and the reverse swap of a view is its value."""
    swapped = isinstance(x, _Swapped)
    if not swapped:
        x = ctx.tensor(x)
    ndim = len(x.shape)
    perm = [_norm_dim(p, ndim) for p in perm]
    if sorted(perm) != list(range(ndim)):
        raise _Unsupported(f"permutation {perm} for rank {ndim}")
    src = [_swap_axis(p) for p in perm] if swapped else perm      # graph axis behind each result axis
    ident = list(range(ndim))
    if src[0] == 0:
        g = _graph_value(ctx, x)
        return g if src == ident else ctx.emit("transpose", [g], ctx.out_shape(), {"perm": tuple(src)})
    if ndim >= 2 and src[1] == 0:
        g = _graph_value(ctx, x)
        r = [src[_swap_axis(k)] for k in range(ndim)]
        return _Swapped(g if r == ident else ctx.emit("transpose", [g], _swap01(ctx.out_shape()),
                                                      {"perm": tuple(r)}))
    if swapped:
        raise _Unsupported(f"permutation {perm} of a time-major tensor (batch axis 1) moves the batch axis "
                           f"past the first two")
    raise _Unsupported(f"permutation {perm} moves the batch axis")


def _swap(ctx, x, d0, d1):
    if not isinstance(x, _Swapped):
        x = ctx.tensor(x)
    ndim = len(x.shape)
    perm = list(range(ndim))
    a, b = _norm_dim(d0, ndim), _norm_dim(d1, ndim)
    perm[a], perm[b] = perm[b], perm[a]
    return _transpose_perm(ctx, x, perm)


def _concat(ctx, tensors, dim=0):
    if not isinstance(tensors, (list, tuple)) or not tensors:
        raise _Unsupported("concatenates something that is not a list of tensors")
    if any(isinstance(t, _Swapped) for t in tensors):
        if not all(isinstance(t, _Swapped) for t in tensors):
            raise _Unsupported("concatenates time-major and batch-first tensors; transpose one of them")
        d = _norm_dim(dim, len(tensors[0].shape))
        if d == 1:
            raise _Unsupported("concatenation along the batch axis (axis 1 of a time-major tensor)")
        if len(tensors) == 1:
            return tensors[0]
        return _Swapped(ctx.emit("concat", [ctx.base(t) for t in tensors], _swap01(ctx.out_shape()),
                                 {"axis": _swap_axis(d)}))
    for t in tensors:
        if not _is_t(t):
            raise _Unsupported("concatenates a tensor that does not depend on the input; only "
                               "input-dependent tensors can be concatenated in the graph")
    ts = [ctx.materialize(t) for t in tensors]
    ndim = len(ts[0].shape)
    d = _norm_dim(dim, ndim)
    if d == 0:
        raise _Unsupported("concatenation along the batch axis")
    if len(ts) == 1:
        return ts[0]
    return ctx.emit("concat", ts, ctx.out_shape(), {"axis": d})


def _stack(ctx, tensors, dim=0):
    if not isinstance(tensors, (list, tuple)) or not tensors or not all(_is_t(t) for t in tensors):
        raise _Unsupported("stacks tensors that do not all depend on the input")
    ts = [ctx.materialize(t) for t in tensors]
    ndim = len(ts[0].shape) + 1
    d = _norm_dim(dim, ndim)
    if d == 0:
        raise _Unsupported("stacking along the batch axis")
    pieces = []
    for k, t in enumerate(ts):
        shp = list(t.shape)
        shp.insert(d, 1)
        pieces.append(ctx.emit("reshape", [t], shp, {"shape": tuple(shp[1:])}, name=ctx.sub(f"{k}")))
    return ctx.emit("concat", pieces, ctx.out_shape(), {"axis": d})


def _check_operand(ctx, t: T, c):
    """A constant operand must broadcast without touching the batch axis."""
    shape = tuple(c.shape) if isinstance(c, torch.Tensor) else ()
    if len(shape) > len(t.shape) or (len(shape) == len(t.shape) and shape and shape[0] != 1):
        raise _Unsupported(f"a constant of shape {shape} would broadcast over the batch axis of {t.shape}")


def _check_pair(ctx, a: T, b: T):
    if len(a.shape) != len(b.shape):
        raise _Unsupported(f"operands of rank {len(a.shape)} and {len(b.shape)} broadcast across the batch axis")


def _result_check(ctx):
    v = ctx.env[ctx.node]
    if not isinstance(v, torch.Tensor) or v.dtype != ctx.dtype:
        raise _Unsupported(f"its result has dtype {getattr(v, 'dtype', type(v).__name__)}, the model's is "
                           f"{ctx.dtype}")


def _add(ctx, a, b, alpha=1):
    """a + alpha * b; constants become constant nodes (the rules treat them as biases)."""
    _result_check(ctx)
    if alpha is None:
        alpha = 1
    if not _is_number(alpha):
        raise _Unsupported(f"alpha={alpha!r}")
    if _is_t(a) and _is_t(b):
        a, b = ctx.materialize(a), ctx.materialize(b)
        _check_pair(ctx, a, b)
        if alpha != 1:
            b = ctx.emit("mul", [b, ctx.const(float(alpha), "alpha")], b.shape, name=ctx.sub("scaled"))
        return ctx.emit("add", [a, b], ctx.out_shape())
    if _is_t(a):
        t = ctx.materialize(a)
        _check_operand(ctx, t, b)
        c = b * alpha if alpha != 1 else b
        return ctx.emit("add", [t, ctx.const(c)], ctx.out_shape())
    t = ctx.materialize(b)
    _check_operand(ctx, t, a)
    if alpha != 1:
        t = ctx.emit("mul", [t, ctx.const(float(alpha), "alpha")], t.shape, name=ctx.sub("scaled"))
    return ctx.emit("add", [ctx.const(a), t], ctx.out_shape())


def _neg(ctx, t: T, suffix="neg", final=False):
    return ctx.emit("mul", [t, ctx.const(-1.0, "minus_one")], t.shape, name=None if final else ctx.sub(suffix))


def _sub(ctx, a, b, alpha=1):
    """a - alpha * b == a + (-alpha) * b."""
    _result_check(ctx)
    if alpha is None:
        alpha = 1
    if not _is_number(alpha):
        raise _Unsupported(f"alpha={alpha!r}")
    if _is_t(a) and _is_t(b):
        a, b = ctx.materialize(a), ctx.materialize(b)
        _check_pair(ctx, a, b)
        nb = ctx.emit("mul", [b, ctx.const(-float(alpha), "minus")], b.shape, name=ctx.sub("neg"))
        return ctx.emit("add", [a, nb], ctx.out_shape())
    if _is_t(a):
        t = ctx.materialize(a)
        _check_operand(ctx, t, b)
        return ctx.emit("add", [t, ctx.const(_negated(b, alpha))], ctx.out_shape())
    t = ctx.materialize(b)
    _check_operand(ctx, t, a)
    nt = ctx.emit("mul", [t, ctx.const(-float(alpha), "minus")], t.shape, name=ctx.sub("neg"))
    return ctx.emit("add", [ctx.const(a), nt], ctx.out_shape())


def _negated(c, alpha):
    if isinstance(c, torch.Tensor):
        return -(c.detach().to(torch.float64) * alpha)
    return -float(c) * alpha


def _mul(ctx, a, b):
    _result_check(ctx)
    if _is_t(a) and _is_t(b):
        a, b = ctx.materialize(a), ctx.materialize(b)
        _check_pair(ctx, a, b)
        return ctx.emit("mul", [a, b], ctx.out_shape())
    t, c = (a, b) if _is_t(a) else (b, a)
    t = ctx.materialize(t)
    _check_operand(ctx, t, c)
    return ctx.emit("mul", [t, ctx.const(c, "factor")], ctx.out_shape())


def _div(ctx, a, b, rounding_mode=None):
    _result_check(ctx)
    if rounding_mode is not None:
        raise _Unsupported(f"rounding_mode={rounding_mode!r}")
    if _is_t(b):
        num = ctx.materialize(a) if _is_t(a) else ctx.const(a, "dividend")
        den = ctx.materialize(b)
        if _is_t(a):
            _check_pair(ctx, num, den)
        return ctx.emit("div", [num, den], ctx.out_shape())
    t = ctx.materialize(a)
    _check_operand(ctx, t, b)
    if isinstance(b, torch.Tensor):
        recip = 1.0 / b.detach().to(torch.float64)
    else:
        if float(b) == 0:
            raise _Unsupported("division by zero")
        recip = 1.0 / float(b)
    return ctx.emit("mul", [t, ctx.const(recip, "reciprocal")], ctx.out_shape())


def _reduce(ctx, op, x, dim=None, keepdim=False, dtype=None):
    """A reduction over non-batch axes; over torch's axis 0 of a time-major view (time), a reduction over
    the graph's axis 1. Sums of masks count (lengths of padded sequences)."""
    swapped = isinstance(x, _Swapped)
    ndim = len(x.shape)
    x = _graph_value(ctx, x)
    counts = x.name in ctx.counts
    if dtype is not None and dtype != x.dtype and not counts:
        raise _Unsupported(f"dtype={dtype}")
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        raise _Unsupported("reduces over all axes, the batch axis included (give dim=...)")
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    axes = tuple(sorted({_norm_dim(d, ndim) for d in dims}))
    if (1 if swapped else 0) in axes:
        raise _Unsupported("reduces over the batch axis" + (" (axis 1 of a time-major tensor)" if swapped else "")
                           + ", which mixes samples")
    if counts and op != "reduce_sum":
        raise _Unsupported(f"{op} of a mask; the graph counts masks with sum")
    out = ctx.out_shape(counts=counts)
    if not swapped:
        r = ctx.emit(op, [x], out, {"axes": axes, "keepdims": bool(keepdim)})
    else:
        gaxes = tuple(sorted(_swap_axis(a) for a in axes))
        still = keepdim or 0 not in axes
        r = ctx.emit(op, [x], _swap01(out) if still else out, {"axes": gaxes, "keepdims": bool(keepdim)})
    if counts:
        r.dtype = ctx.env[ctx.node].dtype
        ctx.counts.add(r.name)
    return _Swapped(r) if swapped and (keepdim or 0 not in axes) else r


def _not_equal(ctx, x, other):
    """``x != c`` for a number c: op mask (1.0 where x differs), e.g. ``(ids != pad)`` for lengths."""
    if _is_t(other) and _is_number(x):
        x, other = other, x
    if not _is_number(other):
        raise _Unsupported("compares two tensors; the graph has comparisons with a number (padding) only "
                           "(op mask)")
    x = ctx.tensor(x)
    r = ctx.emit("mask", [x], ctx.out_shape(counts=True), {"value": float(other), "axes": None})
    r.dtype = torch.bool
    ctx.counts.add(r.name)
    return r


def _any(ctx, x, dim=None, keepdim=False):
    """``x.any(dim)``: op mask over dim (1.0 where any element differs from 0)."""
    x = ctx.tensor(x)
    ndim = len(x.shape)
    if dim is None:
        raise _Unsupported("any() over all axes, the batch axis included (give dim=...)")
    dims = (dim,) if isinstance(dim, (int, np.integer)) else tuple(dim)
    axes = tuple(sorted({_norm_dim(d, ndim) for d in dims}))
    if 0 in axes:
        raise _Unsupported("any() over the batch axis mixes samples")
    out = ctx.out_shape(counts=True)
    if keepdim:
        out = tuple(s for d, s in enumerate(out) if d not in axes)
    r = ctx.emit("mask", [x], out, {"value": 0.0, "axes": axes}, name=ctx.sub("any") if keepdim else None)
    if keepdim:
        r = ctx.emit("reshape", [r], ctx.out_shape(counts=True), {"shape": ctx.out_shape(counts=True)[1:]})
    r.dtype = torch.bool
    ctx.counts.add(r.name)
    return r


def _pad(ctx, x, pad, mode="constant", value=None):
    x = ctx.tensor(x)
    if mode != "constant":
        raise _Unsupported(f"mode={mode!r} (only constant padding is in the graph's op set)")
    pad = [int(p) for p in pad]
    if len(pad) % 2:
        raise _Unsupported(f"pad {pad} has an odd length")
    k = len(pad) // 2
    if k > len(x.shape) - 1:
        raise _Unsupported(f"pad {pad} pads the batch axis")
    if any(p < 0 for p in pad):
        raise _Unsupported(f"negative padding {pad} (cropping)")
    if not any(pad):
        return x
    pairs = [(pad[2 * (k - 1 - j)], pad[2 * (k - 1 - j) + 1]) for j in range(k)]
    return ctx.emit("pad", [x], ctx.out_shape(), {"pads": pairs, "value": 0.0 if value is None else float(value)})


def _linear(ctx, x, weight, bias=None):
    x = ctx.tensor(x)
    if len(x.shape) < 2:
        raise _Unsupported(f"linear on an input of rank {len(x.shape)}: the batch axis would be the features")
    return ctx.emit("linear", [x], ctx.out_shape(), {},
                    {"weight": ctx.param(weight, "weight"), "bias": ctx.param(bias, "bias")})


def _index(ctx, x, idx):
    """x[...] with slices, ints, None and Ellipsis: slice nodes, then one reshape where ranks change."""
    if isinstance(x, (list, tuple)):          # a piece of chunk/split, or a tuple of tensors
        v = x[idx]
        if isinstance(v, (list, tuple, _Swapped, _Packed)):
            return v
        if isinstance(v, _Lazy) and v.made is None:
            return ctx.materialize(v, name=ctx.main)
        return ctx.materialize(v)
    if isinstance(x, _Swapped):
        return _index_time_major(ctx, x, idx)
    return _slice_graph(ctx, ctx.tensor(x), idx, ctx.out_shape())


def _full_slice(c) -> bool:
    return isinstance(c, slice) and c.start in (None, 0) and c.stop is None and c.step in (None, 1)


def _is_int(c) -> bool:
    return isinstance(c, (int, np.integer)) and not isinstance(c, bool)


def _index_time_major(ctx, x: _Swapped, idx):
    """Index a time-major view: torch's axis 0 (time, or layer/direction of final states) is the graph's
    axis 1; an int there gives a batch-first tensor (``out[-1]``, ``h_n[-1]``), a slice a time-major one."""
    comps = idx if isinstance(idx, tuple) else (idx,)
    ndim = len(x.shape)
    if any(c is None for c in comps):
        raise _Unsupported("a new axis (None) in the index of a time-major tensor")
    if sum(1 for c in comps if c is Ellipsis) > 1:
        raise _Unsupported("more than one Ellipsis")
    real = sum(1 for c in comps if c is not Ellipsis)
    if real > ndim:
        raise _Unsupported(f"too many indices for a tensor of rank {ndim}")
    full = []
    for c in comps:
        full.extend([slice(None)] * (ndim - real) if c is Ellipsis else [c])
    full.extend([slice(None)] * (ndim - len(full)))
    t, b, rest = full[0], full[1], full[2:]
    if not _full_slice(b):
        raise _Unsupported(f"indexes the batch axis (axis 1 of a time-major tensor) with {b!r}")
    simple = _is_int(t) or isinstance(t, slice) and all(v is None or _is_int(v) for v in (t.start, t.stop, t.step))
    if x.base is None and simple and all(_full_slice(c) for c in rest):     # final states: no node
        if _is_int(t):
            return x.pieces[int(t)]
        kept = tuple(x.pieces[t])
        if kept:
            return x if len(kept) == len(x.pieces) else _Swapped(None, kept, x.name)
    g, out = ctx.base(x), ctx.out_shape()
    if _is_int(t):
        return _slice_graph(ctx, g, (b, t, *rest), out)
    return _Swapped(_slice_graph(ctx, g, (b, t, *rest), _swap01(out)))


def _slice_graph(ctx, x: T, idx, out_shape):
    """Slices of a batch-first graph tensor; ``out_shape`` the result's shape in graph order."""
    comps = idx if isinstance(idx, tuple) else (idx,)
    for c in comps:
        if not (c is None or c is Ellipsis or isinstance(c, (slice, int, np.integer)) and not isinstance(c, bool)):
            raise _Unsupported(f"indexing with {type(c).__name__} (advanced indexing); slices, ints, None and "
                               f"... are supported")
        if isinstance(c, slice) and any(isinstance(s, torch.Tensor) for s in (c.start, c.stop, c.step)):
            raise _Unsupported("slice bounds that are tensors")
    ndim = len(x.shape)
    real = sum(1 for c in comps if c is not None and c is not Ellipsis)
    if sum(1 for c in comps if c is Ellipsis) > 1:
        raise _Unsupported("more than one Ellipsis")
    if real > ndim:
        raise _Unsupported(f"too many indices for a tensor of rank {ndim}")
    full = []
    for c in comps:
        if c is Ellipsis:
            full.extend([slice(None)] * (ndim - real))
        else:
            full.append(c)
    if Ellipsis not in comps:
        full.extend([slice(None)] * (ndim - real))
    plan = []
    axis = 0
    rank_change = False
    for c in full:
        if c is None:
            if axis == 0:
                raise _Unsupported("a new axis before the batch axis")
            rank_change = True
            continue
        size = x.shape[axis]
        if axis == 0:
            if not (isinstance(c, slice) and c.start in (None, 0) and c.stop is None and c.step in (None, 1)):
                raise _Unsupported(f"indexes the batch axis with {c!r}")
            axis += 1
            continue
        if isinstance(c, slice):
            if c.step is not None and c.step <= 0:
                raise _Unsupported(f"slice step {c.step}")
            r = range(size)[c]
            if r != range(size):
                plan.append((axis, r.start, r.stop, None if r.step == 1 else r.step, len(r)))
        else:
            i = int(c)
            if not -size <= i < size:
                raise _Unsupported(f"index {i} out of range for size {size}")
            i %= size
            plan.append((axis, i, i + 1, None, 1))
            rank_change = True
        axis += 1
    cur = x
    for k, (a, start, stop, step, n) in enumerate(plan):
        shp = list(cur.shape)
        shp[a] = n
        last = k == len(plan) - 1 and not rank_change
        cur = ctx.emit("slice", [cur], shp, {"axis": a, "start": start, "stop": stop, "step": step},
                       name=None if last else ctx.sub(f"{k}"))
    if rank_change:
        cur = _reshape_to(ctx, cur, out_shape)
    return cur


def _pieces(ctx, x, sizes, dim):
    x = ctx.tensor(x)
    ndim = len(x.shape)
    d = _norm_dim(dim, ndim)
    if d == 0:
        raise _Unsupported("splits the batch axis")
    out, start = [], 0
    for k, s in enumerate(sizes):
        out.append(_Lazy(x, d, start, start + s, f"{ctx.main}:{k}"))
        start += s
    return tuple(out)


def _chunk(ctx, x, chunks, dim=0):
    x = ctx.tensor(x)
    size = x.shape[_norm_dim(dim, len(x.shape))]
    each = -(-size // int(chunks))
    sizes = [min(each, size - s) for s in range(0, size, each)]
    return _pieces(ctx, x, sizes, dim)


def _split(ctx, x, split_size, dim=0):
    x = ctx.tensor(x)
    size = x.shape[_norm_dim(dim, len(x.shape))]
    if isinstance(split_size, (int, np.integer)):
        sizes = [min(int(split_size), size - s) for s in range(0, size, int(split_size))]
    else:
        sizes = [int(s) for s in split_size]
    return _pieces(ctx, x, sizes, dim)


def _squeeze(ctx, x, dim=None):
    if isinstance(x, _Swapped):
        return _squeeze_time_major(ctx, x, dim)
    x = ctx.tensor(x)
    ndim = len(x.shape)
    if dim is None:
        dims = [d for d in range(1, ndim) if x.shape[d] == 1]     # the batch axis stays, whatever its size
    else:
        dims = [_norm_dim(d, ndim) for d in ((dim,) if isinstance(dim, (int, np.integer)) else dim)]
        if 0 in dims:
            raise _Unsupported("squeezes the batch axis")
        dims = [d for d in dims if x.shape[d] == 1]
    out = tuple(s for d, s in enumerate(x.shape) if d not in dims)
    return _reshape_to(ctx, x, out)


def _squeeze_time_major(ctx, x, dim):
    shape = x.shape
    if dim is None:
        dims = [d for d in range(len(shape)) if d != 1 and shape[d] == 1]
    else:
        dims = [_norm_dim(d, len(shape)) for d in ((dim,) if isinstance(dim, (int, np.integer)) else dim)]
        if 1 in dims:
            raise _Unsupported("squeezes the batch axis (axis 1 of a time-major tensor)")
        dims = [d for d in dims if shape[d] == 1]
    if not dims:
        return x
    if x.base is None and dims == [0]:
        return x.pieces[0]
    out = tuple(s for d, s in enumerate(shape) if d not in dims)
    g = ctx.base(x)
    return _reshape_to(ctx, g, out) if 0 in dims else _Swapped(_reshape_to(ctx, g, _swap01(out)))


def _unsqueeze(ctx, x, dim):
    x = ctx.tensor(x)
    d = _norm_dim(dim, len(x.shape) + 1)
    if d == 0:
        raise _Unsupported("a new axis before the batch axis")
    out = list(x.shape)
    out.insert(d, 1)
    return _reshape_to(ctx, x, tuple(out))


def _dropout(ctx, x, p=0.5, training=False, inplace=False):
    if training and p:
        raise _Unsupported("dropout with training=True is random")
    return ctx.tensor(x)


# ----------------------------------------------------------------------------------------------
# module handlers: handler(ctx, node, module, args, kwargs)


def _m_linear(ctx, n, m, args, kwargs):
    return _linear(ctx, args[0], m.weight, m.bias)


def _m_conv(ctx, n, m, args, kwargs):
    if m.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode={m.padding_mode!r} (only zero padding is in the graph's op set)")
    x = ctx.tensor(args[0])
    return _conv(ctx, x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


def _conv_transpose(ctx, x, weight, bias, stride, padding, output_padding, groups, dilation):
    w = ctx.param(weight, "weight")
    n = w.ndim - 2
    if len(x.shape) != n + 2:
        raise _Unsupported(f"conv_transpose{n}d on an input of rank {len(x.shape)}; the graph needs (N, C, *spatial)")
    if isinstance(padding, str):
        raise _Unsupported(f"padding {padding!r}")
    return ctx.emit("conv_transpose", [x], ctx.out_shape(),
                    {"stride": _compact(_ntuple(stride, n, "stride")),
                     "padding": _compact(_ntuple(padding, n, "padding")),
                     "output_padding": _compact(_ntuple(output_padding, n, "output_padding")),
                     "dilation": _compact(_ntuple(dilation, n, "dilation")), "groups": int(groups)},
                    {"weight": w, "bias": ctx.param(bias, "bias")})


def _m_conv_transpose(ctx, n, m, args, kwargs):
    if m.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode={m.padding_mode!r} (only zero padding is in the graph's op set)")
    if len(args) > 1 or kwargs.get("output_size") is not None:
        raise _Unsupported("output_size given at call time (set output_padding on the module instead)")
    return _conv_transpose(ctx, ctx.tensor(args[0]), m.weight, m.bias, m.stride, m.padding, m.output_padding,
                           m.groups, m.dilation)


def _embedding(ctx, idx, weight, max_norm=None, scale_grad_by_freq=False, sparse=False):
    if max_norm is not None:
        raise _Unsupported(f"max_norm={max_norm} renormalises the weight at lookup time")
    if isinstance(idx, _Swapped) and idx.base is not None and idx.base.name == "input":
        return _Swapped(ctx.emit("embedding", [idx.base], _swap01(ctx.out_shape()), {},
                                 {"weight": ctx.param(weight, "weight")}))
    if not _is_t(idx) or idx.name != "input":
        raise _Unsupported("looks up indices computed inside the model; the graph's indices are its input")
    return ctx.emit("embedding", [idx], ctx.out_shape(), {}, {"weight": ctx.param(weight, "weight")})


def _m_embedding(ctx, n, m, args, kwargs):
    return _embedding(ctx, args[0], m.weight, m.max_norm)


class _Unroller:
    """Lets :func:`attribx.recurrent.unroll_lstm` add nodes to a translation (names kept unique)."""

    def __init__(self, ctx):
        self.ctx = ctx

    def add_node(self, op, inputs, name=None, params=None, source="", **attrs):
        ctx = self.ctx
        name = ctx.unique(name or ctx.main)
        ins = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        ctx.nodes.append(Node(name, op, ins, attrs, params or {}, None, source or ctx.source()))
        ctx.emitted.add(name)
        return name


def _initial_state(ctx, hx, k, what):
    """The k-th layer/direction's initial state as one vector: the graph has one value for every sample."""
    if hx is None:
        return None
    if _is_t(hx):
        raise _Unsupported(f"its initial {what} state is computed from the input; give it as a constant")
    v = hx.detach().to("cpu")
    if v.dim() == 3:
        v = v[k]
    if v.dim() == 2:
        if not bool(torch.all(v == v[:1])):
            raise _Unsupported(f"its initial {what} state differs between samples; the graph holds one "
                               f"initial state for every sample")
        v = v[0]
    return v.to(torch.float64).numpy().astype(ctx.np_dtype)


def _rnn_sequence(ctx, m, x):
    """The batch-first graph value an RNN reads, and its packing (None if not packed)."""
    kind = type(m).__name__
    if isinstance(x, _Packed):          # a packed sequence holds its own layout; batch_first does not apply
        return x.data, x
    if m.batch_first:
        if isinstance(x, _Swapped):
            raise _Unsupported(f"batch_first=True, but its input is time-major (time axis first); pass the "
                               f"batch-first tensor, or build the {kind} with batch_first=False")
        return ctx.tensor(x), None
    if isinstance(x, _Swapped):
        return ctx.base(x), None
    x = ctx.tensor(x)
    fed = ("the model feeds its own input to it, i.e. the model expects time-major data (T, N, features), "
           "which the graph cannot take: its input is batch-first (N, T, features)") if x.name == "input" else \
        "its input's axis 0 is the batch axis here (the graph's input is batch-first)"
    raise _Unsupported(f"batch_first=False reads axis 0 as time, but {fed}; pass batch-first data and "
                       f"transpose in the model before the layer ({kind.lower()}(x.transpose(0, 1))), or build "
                       f"the {kind} with batch_first=True (the weights are the same)")


def _m_rnn(ctx, n, m, args, kwargs):
    """nn.LSTM and nn.GRU unrolled over the traced sequence length (attribx.recurrent), every layer and
    direction, on a batch-first tensor, a time-major view of one (``batch_first=False``) or a packed
    sequence (its length mask keeps each sequence's state past its end). Returns torch's (output, h_n) /
    (output, (h_n, c_n)): output batch-first, time-major or packed as torch's is, and the final states as
    time-major views (L·D, N, H) of the per-layer/direction states, so that ``h_n[-1]``, ``h_n.squeeze(0)``
    or ``h_n.transpose(0, 1)`` read them."""
    from attribx.recurrent import unroll_gru, unroll_lstm
    lstm = isinstance(m, nn.LSTM)
    if getattr(m, "proj_size", 0):
        raise _Unsupported("proj_size > 0 (an LSTM with projections)")
    x, packed = _rnn_sequence(ctx, m, args[0])
    if len(x.shape) != 3:
        raise _Unsupported(f"input of rank {len(x.shape)}; the graph explains batched sequences (N, T, features)")
    if x.name == "input":
        ctx.sequence_input = True       # the input is a sequence of vectors: dims (sample, token, embedding)
    hx = _arg(args, kwargs, 1, "hx", None)
    initial = ((None, None) if hx is None else hx) if lstm else (hx,)
    states = ("hidden", "cell") if lstm else ("hidden",)
    steps, hidden = x.shape[1], m.hidden_size
    dirs = 2 if m.bidirectional else 1
    emit = _Unroller(ctx)
    seq = x.name
    finals = [[] for _ in states]
    for layer in range(m.num_layers):
        outs = []
        for d in range(dirs):
            suffix = f"l{layer}" + ("_reverse" if d else "")
            k = layer * dirs + d
            w = {f"{a}_{b}": ctx.param(getattr(m, f"{'weight' if a == 'w' else 'bias'}_{b}_{suffix}", None))
                 for a in ("w", "b") for b in ("ih", "hh")}
            init = [_initial_state(ctx, s, k, what) for s, what in zip(initial, states)]
            common = {"order": "torch", "reverse": bool(d), "name": f"{ctx.main}/{suffix}",
                      "mask": packed.mask if packed else None}
            if lstm:
                out, *last = unroll_lstm(emit, seq, steps, **w, **common, h0=init[0], c0=init[1])
            else:
                out, *last = unroll_gru(emit, seq, steps, **w, **common, h0=init[0])
            outs.append(out)
            for f, v in zip(finals, last):
                f.append(T(v, (1, hidden), ctx.dtype))
        seq = outs[0] if dirs == 1 else emit.add_node("concat", outs, name=f"{ctx.main}/l{layer}/outputs", axis=2)
    out = ctx.emit("identity", [T(seq, (1, steps, dirs * hidden), ctx.dtype)], (1, steps, dirs * hidden))
    if packed:
        out = _Packed(out, packed.lengths, packed.mask, zeroed=True)
    elif not m.batch_first:
        out = _Swapped(out)
    last = [_Swapped(None, tuple(f), f"{ctx.main}/{s}") for f, s in zip(finals, ("h_n", "c_n"))]
    return out, (tuple(last) if lstm else last[0])


_m_rnn.batch_args_ok = True     # initial states expanded to the batch: one value for every sample


def _pack_h(ctx, n, args, kwargs):
    """pack_padded_sequence(x, lengths, batch_first, enforce_sorted): the data and a length mask (N, T)."""
    x = _arg(args, kwargs, 0, "input")
    lengths = _arg(args, kwargs, 1, "lengths")
    if bool(_arg(args, kwargs, 2, "batch_first", False)):
        if isinstance(x, _Swapped):
            raise _Unsupported("batch_first=True, but its input is time-major (time axis first)")
        data = ctx.tensor(x)
    elif isinstance(x, _Swapped):
        data = ctx.base(x)
    else:
        raise _Unsupported("batch_first=False reads axis 0 as time, but it is the batch axis here (the graph's "
                           "input is batch-first); pass batch_first=True, or pack x.transpose(0, 1)")
    if not _is_t(lengths) or isinstance(lengths, (_Swapped, _Packed)):
        raise _Unsupported(
            "its lengths do not come from the model input (constants, or a second forward argument); the "
            "graph has one input, so compute the lengths in the model from the padded input: "
            "(ids != pad).sum(1) for token ids, (x != 0).any(-1).sum(1) for embedded sequences")
    lengths = ctx.tensor(lengths)
    if len(lengths.shape) != 1:
        raise _Unsupported(f"lengths of shape {lengths.shape}; one length per sample (N,)")
    if len(data.shape) < 2:
        raise _Unsupported(f"packs a tensor of rank {len(data.shape)}")
    steps = data.shape[1]
    mask = ctx.emit("length_mask", [lengths], (1, steps), {"steps": steps})
    return _Packed(data, lengths, mask.name)


_pack_h.batch_args_ok = True     # lengths that depend on the batch size only are refused above
_pack_h.time_major = "aware"


def _unpack_h(ctx, n, args, kwargs):
    """pad_packed_sequence: the packed data (zeros at padding, as an RNN's packed output is) and lengths."""
    p = _arg(args, kwargs, 0, "sequence")
    if not isinstance(p, _Packed):
        raise _Unsupported("unpacks something that is not a PackedSequence computed from the input")
    batch_first = bool(_arg(args, kwargs, 1, "batch_first", False))
    padding_value = _arg(args, kwargs, 2, "padding_value", 0.0)
    total_length = _arg(args, kwargs, 3, "total_length", None)
    steps = p.data.shape[1]
    if not _is_number(padding_value) or float(padding_value) != 0.0:
        raise _Unsupported(f"padding_value={padding_value!r}; the graph pads with zeros")
    if total_length is not None and int(total_length) != steps:
        raise _Unsupported(f"total_length={total_length}, but the graph is built for sequences of {steps} steps")
    if not p.zeroed:
        raise _Unsupported("unpacks a sequence that no nn.LSTM/nn.GRU ran over (the graph keeps its padding)")
    traced = ctx.env[n][0]
    if traced.shape[1 if batch_first else 0] != steps:
        raise _Unsupported(f"its traced output has {traced.shape[1 if batch_first else 0]} steps, not the input's "
                           f"{steps}: the lengths the model computes from an example input of ones are not "
                           f"all {steps}")
    return (p.data if batch_first else _Swapped(p.data)), p.lengths


def _m_max_pool(ctx, n, m, args, kwargs):
    x = ctx.tensor(args[0])
    return _max_pool(ctx, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices)


def _m_avg_pool(ctx, n, m, args, kwargs):
    x = ctx.tensor(args[0])
    return _avg_pool(ctx, x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                     getattr(m, "divisor_override", None))


def _m_adaptive_avg(ctx, n, m, args, kwargs):
    return _adaptive_avg(ctx, ctx.tensor(args[0]), m.output_size)


def _m_adaptive_max(ctx, n, m, args, kwargs):
    return _adaptive_max(ctx, ctx.tensor(args[0]), m.output_size, m.return_indices)


def _m_batch_norm(ctx, n, m, args, kwargs):
    x = ctx.tensor(args[0])
    if not m.track_running_stats or m.running_mean is None:
        raise _Unsupported("track_running_stats=False: batch norm uses the batch's statistics even in eval "
                           "mode, which mixes samples")
    return _batch_norm(ctx, x, m.running_mean, m.running_var, m.weight if m.affine else None,
                       m.bias if m.affine else None, m.eps)


def _m_act(op, **attrs_of):
    def handler(ctx, n, m, args, kwargs):
        return _unary(ctx, args[0], op, **{k: f(m) for k, f in attrs_of.items()})
    handler.time_major = "elementwise"
    return handler


def _m_hardtanh(ctx, n, m, args, kwargs):     # ReLU6 is a Hardtanh(0, 6)
    return _clip(ctx, args[0], m.min_val, m.max_val)


def _m_softmax(ctx, n, m, args, kwargs):
    return _softmax(ctx, args[0], m.dim)


def _m_hardsigmoid(ctx, n, m, args, kwargs):
    return _hardsigmoid(ctx, args[0])


def _m_identity(ctx, n, m, args, kwargs):
    return ctx.tensor(args[0])


def _m_flatten(ctx, n, m, args, kwargs):
    return _flatten(ctx, args[0], m.start_dim, m.end_dim)


def _m_unflatten(ctx, n, m, args, kwargs):
    x = ctx.tensor(args[0])
    if _norm_dim(m.dim, len(x.shape)) == 0:
        raise _Unsupported("unflattens the batch axis")
    return _reshape_to(ctx, x)


def _m_pad(ctx, n, m, args, kwargs):
    return _pad(ctx, args[0], m.padding, "constant", m.value)


MODULES: dict[type, Callable] = {
    nn.Linear: _m_linear,
    nn.Conv1d: _m_conv, nn.Conv2d: _m_conv, nn.Conv3d: _m_conv,
    nn.ConvTranspose1d: _m_conv_transpose, nn.ConvTranspose2d: _m_conv_transpose,
    nn.ConvTranspose3d: _m_conv_transpose,
    nn.Embedding: _m_embedding,
    nn.LSTM: _m_rnn, nn.GRU: _m_rnn,
    nn.MaxPool1d: _m_max_pool, nn.MaxPool2d: _m_max_pool, nn.MaxPool3d: _m_max_pool,
    nn.AvgPool1d: _m_avg_pool, nn.AvgPool2d: _m_avg_pool, nn.AvgPool3d: _m_avg_pool,
    nn.AdaptiveAvgPool1d: _m_adaptive_avg, nn.AdaptiveAvgPool2d: _m_adaptive_avg,
    nn.AdaptiveAvgPool3d: _m_adaptive_avg,
    nn.AdaptiveMaxPool1d: _m_adaptive_max, nn.AdaptiveMaxPool2d: _m_adaptive_max,
    nn.AdaptiveMaxPool3d: _m_adaptive_max,
    nn.BatchNorm1d: _m_batch_norm, nn.BatchNorm2d: _m_batch_norm, nn.BatchNorm3d: _m_batch_norm,
    nn.ReLU: _m_act("relu"),
    nn.LeakyReLU: _m_act("leaky_relu", negative_slope=lambda m: float(m.negative_slope)),
    nn.Hardtanh: _m_hardtanh, nn.ReLU6: _m_hardtanh,
    nn.SiLU: _m_act("silu"),
    nn.GELU: _m_act("gelu", approximate=lambda m: m.approximate),
    nn.ELU: _m_act("elu", alpha=lambda m: float(m.alpha)),
    nn.Tanh: _m_act("tanh"), nn.Sigmoid: _m_act("sigmoid"),
    nn.Hardsigmoid: _m_hardsigmoid,
    nn.Softmax: _m_softmax,
    nn.Identity: _m_identity,
    nn.Dropout: _m_identity, nn.Dropout1d: _m_identity, nn.Dropout2d: _m_identity, nn.Dropout3d: _m_identity,
    nn.AlphaDropout: _m_identity, nn.FeatureAlphaDropout: _m_identity,
    nn.Flatten: _m_flatten, nn.Unflatten: _m_unflatten,
    nn.ConstantPad1d: _m_pad, nn.ConstantPad2d: _m_pad, nn.ConstantPad3d: _m_pad,
    nn.ZeroPad1d: _m_pad, nn.ZeroPad2d: _m_pad, nn.ZeroPad3d: _m_pad,
}


def _module_handler(m: nn.Module):
    """The handler for a module whose class (or a base class with the same forward) we translate."""
    cls = type(m)
    for base in cls.__mro__:
        h = MODULES.get(base)
        if h is not None:
            return h if getattr(cls, "forward", None) is getattr(base, "forward", None) else None
    return None


# ----------------------------------------------------------------------------------------------
# function and method handlers: handler(ctx, node, args, kwargs); methods get self as args[0]


def _h(fn, *names, batch_args_ok=False, **defaults):
    """Adapt fn(ctx, x, *named args) to (ctx, node, args, kwargs) with torch's positional order."""
    def handler(ctx, n, args, kwargs):
        vals = [_arg(args, kwargs, i, name, defaults.get(name, inspect.Parameter.empty))
                for i, name in enumerate(names)]
        return fn(ctx, *vals)
    handler.batch_args_ok = batch_args_ok
    return handler


def _act_h(op, *names, **defaults):
    """An activation: input first, then named attributes (in torch's order) with defaults."""
    def fn(ctx, x, *vals):
        attrs = {k: v for k, v in zip(names, vals) if k != "inplace"}
        return _unary(ctx, x, op, **attrs)
    handler = _h(fn, "input", *names, **defaults)
    handler.time_major = "elementwise"
    return handler


def _view_h(ctx, n, args, kwargs):
    return _reshape_to(ctx, args[0])


_view_h.batch_args_ok = True


def _permute_method(ctx, n, args, kwargs):
    dims = args[1:] if len(args) > 1 else kwargs.get("dims")
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    return _transpose_perm(ctx, args[0], dims)


def _size_h(ctx, n, args, kwargs):
    x = args[0]
    if not isinstance(x, _Swapped):
        x = ctx.tensor(x)
    d = _arg(args, kwargs, 1, "dim", None)
    if d is None or _norm_dim(d, len(x.shape)) == (1 if isinstance(x, _Swapped) else 0):
        ctx.tainted.add(n)
    return ctx.env[n]


def _numel_h(ctx, n, args, kwargs):
    ctx.tainted.add(n)
    return ctx.env[n]


def _static_h(ctx, n, args, kwargs):
    return ctx.env[n]


def _getattr_h(ctx, n, args, kwargs):
    x, attr = args[0], args[1]
    if not _is_t(x):
        return ctx.env[n]
    if isinstance(x, _Packed):
        raise _Unsupported(f"attribute {attr!r} of a PackedSequence; in the graph only nn.LSTM, nn.GRU and "
                           f"pad_packed_sequence read one")
    if attr == "shape":
        ctx.tainted.add(n)
        return ctx.env[n]
    if attr in ("ndim", "dtype", "device", "is_cuda", "requires_grad", "layout"):
        return ctx.env[n]
    raise _Unsupported(f"attribute {attr!r} of a tensor")


def _getitem_h(ctx, n, args, kwargs):
    return _index(ctx, args[0], args[1])


def _cast_h(ctx, n, args, kwargs):
    return _passthrough(ctx, args[0])


def _mm_h(name):
    def handler(ctx, n, args, kwargs):
        raise _Unsupported(f"{name} of two input-dependent tensors is not in the graph's op set")
    return handler


def _reduce_h(op):
    def fn(ctx, x, dim=None, keepdim=False, dtype=None):
        return _reduce(ctx, op, x, dim, keepdim, dtype)
    return _h(fn, "input", "dim", "keepdim", "dtype", dim=None, keepdim=False, dtype=None)


def _clip_h(ctx, n, args, kwargs):
    return _clip(ctx, args[0], _arg(args, kwargs, 1, "min", None), _arg(args, kwargs, 2, "max", None))


_ADD = _h(_add, "input", "other", "alpha", alpha=1)
_SUB = _h(_sub, "input", "other", "alpha", alpha=1)
_MUL = _h(_mul, "input", "other")
_DIV = _h(_div, "input", "other", "rounding_mode", rounding_mode=None)
_NEG = _h(lambda ctx, x: _neg(ctx, ctx.tensor(x), final=True), "input")
_RELU = _act_h("relu", "inplace", inplace=False)
_TANH = _act_h("tanh")
_SIGMOID = _act_h("sigmoid")
_SOFTMAX = _h(_softmax, "input", "dim", "dtype", dim=None, dtype=None)
_FLATTEN = _h(_flatten, "input", "start_dim", "end_dim", start_dim=0, end_dim=-1)
_CAT = _h(_concat, "tensors", "dim", dim=0)
_MEAN = _reduce_h("reduce_mean")
_SUM = _reduce_h("reduce_sum")
_CHUNK = _h(_chunk, "input", "chunks", "dim", dim=0)
_SPLIT = _h(_split, "input", "split_size_or_sections", "dim", dim=0)
_SQUEEZE = _h(_squeeze, "input", "dim", dim=None)
_UNSQUEEZE = _h(_unsqueeze, "input", "dim")
_TRANSPOSE = _h(_swap, "input", "dim0", "dim1")
_T = _h(lambda ctx, x: _swap(ctx, x, 0, min(1, len(x.shape) - 1)), "input")
_NE = _h(_not_equal, "input", "other")
_ANY = _h(_any, "input", "dim", "keepdim", dim=None, keepdim=False)


def _pool_h(fn_kind):
    if fn_kind == "max":
        return _h(lambda ctx, x, k, s, p, d, c, r: _max_pool(ctx, ctx.tensor(x), k, s, p, d, c, r),
                  "input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices",
                  stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False)
    return _h(lambda ctx, x, k, s, p, c, cip, dv: _avg_pool(ctx, ctx.tensor(x), k, s, p, c, cip, dv),
              "input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override",
              stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None)


def _conv_h():
    return _h(lambda ctx, x, w, b, s, p, d, g: _conv(ctx, ctx.tensor(x), w, b, s, p, d, g),
              "input", "weight", "bias", "stride", "padding", "dilation", "groups",
              bias=None, stride=1, padding=0, dilation=1, groups=1)


_CONV_T = _h(lambda ctx, x, w, b, s, p, op, g, d: _conv_transpose(ctx, ctx.tensor(x), w, b, s, p, op, g, d),
             "input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation",
             bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1)


def _adaptive_h(kind):
    if kind == "max":
        return _h(lambda ctx, x, o, r: _adaptive_max(ctx, ctx.tensor(x), o, r), "input", "output_size",
                  "return_indices", return_indices=False)
    return _h(lambda ctx, x, o: _adaptive_avg(ctx, ctx.tensor(x), o), "input", "output_size")


_DROPOUT = _h(_dropout, "input", "p", "training", "inplace", p=0.5, training=True, inplace=False)

FUNCTIONS: dict[Any, Callable] = {
    # arithmetic
    operator.add: _ADD, operator.iadd: _ADD, torch.add: _ADD,
    operator.sub: _SUB, operator.isub: _SUB, torch.sub: _SUB, torch.subtract: _SUB,
    operator.mul: _MUL, operator.imul: _MUL, torch.mul: _MUL, torch.multiply: _MUL,
    operator.truediv: _DIV, operator.itruediv: _DIV, torch.div: _DIV, torch.divide: _DIV,
    torch.true_divide: _DIV,
    operator.neg: _NEG, torch.neg: _NEG, torch.negative: _NEG,
    operator.pos: _h(lambda ctx, x: ctx.tensor(x), "input"),
    operator.matmul: _mm_h("matmul"),
    # activations
    torch.relu: _RELU, torch.relu_: _RELU, F.relu: _RELU,
    F.leaky_relu: _act_h("leaky_relu", "negative_slope", "inplace", negative_slope=0.01, inplace=False),
    F.relu6: _h(lambda ctx, x, inplace: _clip(ctx, x, 0.0, 6.0), "input", "inplace", inplace=False),
    F.hardtanh: _h(lambda ctx, x, lo, hi, inplace: _clip(ctx, x, lo, hi), "input", "min_val", "max_val",
                   "inplace", min_val=-1.0, max_val=1.0, inplace=False),
    torch.clamp: _clip_h, torch.clip: _clip_h, torch.clamp_: _clip_h,
    F.silu: _act_h("silu", "inplace", inplace=False),
    F.gelu: _act_h("gelu", "approximate", approximate="none"),
    F.elu: _act_h("elu", "alpha", "inplace", alpha=1.0, inplace=False),
    torch.tanh: _TANH, F.tanh: _TANH,
    torch.sigmoid: _SIGMOID, F.sigmoid: _SIGMOID,
    F.hardsigmoid: _h(lambda ctx, x, inplace: _hardsigmoid(ctx, x), "input", "inplace", inplace=False),
    F.softmax: _SOFTMAX, torch.softmax: _SOFTMAX,
    # layers
    F.linear: _h(_linear, "input", "weight", "bias", bias=None),
    F.conv1d: _conv_h(), F.conv2d: _conv_h(), F.conv3d: _conv_h(),
    F.conv_transpose1d: _CONV_T, F.conv_transpose2d: _CONV_T, F.conv_transpose3d: _CONV_T,
    F.embedding: _h(lambda ctx, x, w, pi, mn, nt, sg, sp: _embedding(ctx, x, w, mn), "input", "weight",
                    "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse", padding_idx=None,
                    max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False),
    F.max_pool1d: _pool_h("max"), F.max_pool2d: _pool_h("max"), F.max_pool3d: _pool_h("max"),
    F.avg_pool1d: _pool_h("avg"), F.avg_pool2d: _pool_h("avg"), F.avg_pool3d: _pool_h("avg"),
    F.adaptive_avg_pool1d: _adaptive_h("avg"), F.adaptive_avg_pool2d: _adaptive_h("avg"),
    F.adaptive_avg_pool3d: _adaptive_h("avg"),
    F.adaptive_max_pool1d: _adaptive_h("max"), F.adaptive_max_pool2d: _adaptive_h("max"),
    F.adaptive_max_pool3d: _adaptive_h("max"),
    F.batch_norm: _h(lambda ctx, x, rm, rv, w, b, tr, mom, eps: _batch_norm(ctx, ctx.tensor(x), rm, rv, w, b, eps, tr),
                     "input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps",
                     weight=None, bias=None, training=False, momentum=0.1, eps=1e-5),
    F.dropout: _DROPOUT, F.dropout1d: _DROPOUT, F.dropout2d: _DROPOUT, F.dropout3d: _DROPOUT,
    F.alpha_dropout: _DROPOUT, F.feature_alpha_dropout: _DROPOUT,
    F.pad: _h(_pad, "input", "pad", "mode", "value", mode="constant", value=None),
    # shapes
    torch.flatten: _FLATTEN,
    torch.reshape: _view_h,
    torch.squeeze: _SQUEEZE, torch.unsqueeze: _UNSQUEEZE,
    torch.permute: _h(_transpose_perm, "input", "dims"),
    torch.transpose: _TRANSPOSE, torch.swapaxes: _TRANSPOSE, torch.swapdims: _TRANSPOSE,
    torch.cat: _CAT, torch.concat: _CAT,
    torch.concatenate: _h(_concat, "tensors", "axis", axis=0),
    torch.stack: _h(_stack, "tensors", "dim", dim=0),
    torch.chunk: _CHUNK, torch.split: _SPLIT,
    torch.mean: _MEAN, torch.sum: _SUM,
    torch.t: _T,
    builtins.getattr: _getattr_h,
    operator.getitem: _getitem_h,
    # padding masks and packed sequences
    operator.ne: _NE, torch.ne: _NE, torch.not_equal: _NE, torch.any: _ANY,
    _PACK_PADDED: _pack_h, _PAD_PACKED: _unpack_h,
}

#: functions of other libraries, by qualified name (so that they are not imported here)
FUNCTIONS_BY_NAME: dict[str, Callable] = {
    # torchvision's StochasticDepth in eval mode passes its input on
    "torchvision.ops.stochastic_depth.stochastic_depth": _h(
        lambda ctx, x, p, mode, training: _dropout(ctx, x, p, training), "input", "p", "mode", "training",
        training=True),
}

METHODS: dict[str, Callable] = {
    "add": _ADD, "add_": _ADD, "sub": _SUB, "sub_": _SUB, "subtract": _SUB,
    "mul": _MUL, "mul_": _MUL, "multiply": _MUL, "div": _DIV, "div_": _DIV, "divide": _DIV,
    "neg": _NEG, "negative": _NEG,
    "relu": _RELU, "relu_": _RELU, "tanh": _TANH, "tanh_": _TANH, "sigmoid": _SIGMOID, "sigmoid_": _SIGMOID,
    "clamp": _clip_h, "clamp_": _clip_h, "clip": _clip_h, "clip_": _clip_h,
    "softmax": _SOFTMAX,
    "view": _view_h, "reshape": _view_h, "flatten": _FLATTEN,
    "squeeze": _SQUEEZE, "unsqueeze": _UNSQUEEZE,
    "permute": _permute_method, "transpose": _TRANSPOSE, "swapaxes": _TRANSPOSE, "swapdims": _TRANSPOSE,
    "contiguous": _cast_h, "clone": _cast_h, "to": _cast_h, "float": _cast_h, "double": _cast_h,
    "type_as": _cast_h, "cpu": _cast_h, "cuda": _cast_h, "long": _cast_h, "int": _cast_h,
    "ne": _NE, "not_equal": _NE, "any": _ANY, "t": _T,
    "mean": _MEAN, "sum": _SUM,
    "chunk": _CHUNK, "split": _SPLIT,
    "size": _size_h, "dim": _static_h, "numel": _numel_h,
}


# what handlers do with time-major views (see _Swapped): elementwise ones run on the batch-first values,
# aware ones handle the views themselves; every other handler refuses them
for _handler in (_ADD, _SUB, _MUL, _DIV, _NEG, _DROPOUT, _clip_h, _cast_h, _NE, FUNCTIONS[operator.pos],
                 FUNCTIONS[F.relu6], FUNCTIONS[F.hardtanh], FUNCTIONS[F.hardsigmoid],
                 _m_identity, _m_hardtanh, _m_hardsigmoid, _m_linear):
    _handler.time_major = "elementwise"
for _handler in (_TRANSPOSE, _T, _permute_method, FUNCTIONS[torch.permute], _getitem_h, _MEAN, _SUM, _SQUEEZE,
                 _CAT, _size_h, _getattr_h, _static_h, _numel_h, FUNCTIONS[F.embedding], _m_embedding, _m_rnn):
    _handler.time_major = "aware"
del _handler
_Translation.functions = FUNCTIONS


# ----------------------------------------------------------------------------------------------
# the entry point and its cache

_cache: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_translating = threading.RLock()


def clear_cache() -> None:
    """Forget every cached translation."""
    with _lock:
        _cache.clear()


def _model_dtype(model: nn.Module) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            if t.dtype in (torch.float32, torch.float64):
                return t.dtype
            raise UnsupportedError(
                f"{type(model).__name__} has {t.dtype} parameters; attribx graphs are float32 or float64 "
                f"(convert with model.float())")
    return torch.float32


def _simple(v) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_simple(a) for a in v)
    return isinstance(v, (int, float, str, bool, type(None), torch.dtype))


def _state(model: nn.Module):
    """What the cached graph depends on: the modules, their settings, and every parameter and buffer.

    In-place updates under ``torch.no_grad()`` bump a tensor's version, replacing one changes its data
    pointer, and writes through ``.data`` (which bump nothing) change its checksum.
    """
    structure = []
    for name, m in model.named_modules(remove_duplicate=False):
        attrs = tuple(sorted((k, v) for k, v in vars(m).items()
                             if not k.startswith("_") and k != "training" and _simple(v)))
        structure.append((name, type(m), id(m), attrs))
    tensors = [t for _, t in model.named_parameters(remove_duplicate=False)] + \
              [t for _, t in model.named_buffers(remove_duplicate=False)]
    meta = tuple((t._version, t.data_ptr(), tuple(t.shape), t.dtype, t.device) for t in tensors)
    by_device: dict = {}
    for t in tensors:
        if t.is_floating_point() and t.numel():
            by_device.setdefault(t.device, []).append(t.detach().sum().to(torch.float64))
    checksum = b"".join(torch.stack(v).cpu().numpy().tobytes() for v in by_device.values())
    return tuple(structure), meta, checksum


def _copy(graph: Graph) -> Graph:
    """A graph of its own for the caller (the cached one stays as translated)."""
    nodes = [n.replace(attrs=dict(n.attrs), params=dict(n.params)) for n in graph.nodes]
    return Graph(list(graph.inputs), nodes, list(graph.outputs), copy.deepcopy(graph.meta), validate=False)


def _sample_template(m: nn.Module) -> tuple | None:
    """One sample's shape as a first layer takes it: sizes it fixes as ints, the others named."""
    handler = _module_handler(m)
    if handler is _m_linear:
        return (int(m.in_features),)
    if handler in (_m_conv, _m_conv_transpose):
        return (int(m.in_channels), *{1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}[len(m.kernel_size)])
    if handler is _m_embedding:
        return ("T",)
    if handler is _m_rnn and m.batch_first:
        return ("T", int(m.input_size))
    return None


def _first_layer(fx_graph, root) -> tuple | None:
    """(path, module, sample template) of the module that alone reads the model's input, if it has a template."""
    first = next((n for n in fx_graph.nodes if n.op == "placeholder"), None)
    users = list(first.users) if first is not None else []
    if len(users) != 1 or users[0].op != "call_module" or users[0].args[:1] != (first,):
        return None
    m = root.get_submodule(users[0].target)
    template = _sample_template(m)
    return None if template is None else (str(users[0].target), m, template)


def _pretty(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _implied_input_shape(model: nn.Module) -> tuple:
    """One sample's shape when the model's first layer fixes all of it (``nn.Linear``: its in_features);
    otherwise an error saying what to pass, since the graph is traced with example data."""
    ctx = _Translation(model, (), _model_dtype(model))
    _, fx_graph, _ = ctx.trace()
    first = _first_layer(fx_graph, ctx.root)
    if first is not None and all(isinstance(d, int) for d in first[2]):
        return first[2]
    if first is not None:
        path, m, template = first
        free = [d for d in template if isinstance(d, str)]
        why = (f"its first layer {path!r} ({type(m).__name__}) takes one sample of shape {_pretty(template)} "
               f"and does not fix {', '.join(free)}")
        example = f"attribx.translate(model, input_shape={_pretty(template)}) with your data's {', '.join(free)}"
    else:
        why = "its first layer does not fix the input shape"
        example = ("attribx.translate(model, input_shape=...) with one sample's shape (no batch axis), e.g. "
                   "(3, 224, 224)")
    raise InputShapeError(
        f"translating a torch model ({type(model).__name__}) needs one sample's input shape, because torch.fx "
        f"traces it with example data, and {why}: pass {example}; or call attribx.explain(model, x) or "
        f"attribx.forward(model, x), which take the shape from x",
        None if first is None else (None, *first[2]))


def translate_module(model: nn.Module, input_shape: tuple | None) -> Graph:
    """The attribx graph of ``model`` for inputs of one sample's shape ``input_shape`` (no batch axis; None:
    the shape the first layer fixes, see :func:`_implied_input_shape`).

    The model is translated as in eval mode (a warning says so when it is in training mode) and left exactly
    as it was: its parameters, buffers, attributes, modes and hooks, also when the translation fails."""
    with _translating:      # one at a time: another thread must not see (or snapshot) the flags set meanwhile
        return _translate_module(model, input_shape)


def _translate_module(model: nn.Module, input_shape: tuple | None) -> Graph:
    modules = dict(model.named_modules())
    training = [name for name, m in modules.items() if m.training]
    if training:
        cls = type(model).__name__
        which = (f"{cls} is in training mode" if len(training) == len(modules) else
                 f"{cls} has modules in training mode ({_few([a or '(the model)' for a in training])})")
        warnings.warn(
            f"{which}; attribx explains it as in eval mode: dropout off, batch norm with its running statistics; "
            f"the model's own mode is left as it is (call model.eval() to silence this)", ModelModeWarning,
            stacklevel=3)
    implied = input_shape is None
    if not implied:
        try:
            input_shape = tuple(int(d) for d in input_shape)
        except (TypeError, ValueError):
            raise InputError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
        if any(d < 1 for d in input_shape):
            raise InputError(f"input_shape {input_shape} has a non-positive size")
        dtype = _model_dtype(model)
        key = (input_shape, str(dtype))
        with _lock:
            entry = _cache.get(model, {}).get(key)
        if entry is not None and _same_state(entry[0], _state(model)):
            return _copy(entry[1])
    with _untouched(model):
        for m in model.modules():       # eval mode without calling the model's own train()/eval()
            m.training = False
        if implied:
            input_shape = _implied_input_shape(model)
        dtype = _model_dtype(model)
        key = (input_shape, str(dtype))
        try:
            graph = _Translation(model, input_shape, dtype).run()
        except InputShapeError as err:
            if not implied:
                raise
            raise InputShapeError(
                f"{err}. No input_shape was given and {input_shape} was read from the first layer: pass "
                f"attribx.translate(model, input_shape=...) with one sample's shape, or call "
                f"attribx.explain(model, x) or attribx.forward(model, x), which take the shape from x") from None
    state = _state(model)       # after restoring: what the model is now, as the caller gave it
    with _lock:
        try:
            _cache.setdefault(model, {})[key] = (state, graph)
        except TypeError:   # pragma: no cover - a module that cannot be weakly referenced
            pass
    return _copy(graph)


def _few(names, n: int = 3) -> str:
    shown = ", ".join(repr(a) for a in names[:n])
    return shown + (f" and {len(names) - n} more modules" if len(names) > n else "")


class _CopyOnWrite(TorchDispatchMode):
    """Keeps a copy of every parameter or buffer of the model before an op first writes to it (a batch norm
    updating its statistics, ``self.count.add_(1)``, ``nn.Embedding(max_norm=...)`` renormalising rows), so that
    the writes can be undone. Only what is written is copied."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # nothing here is compiled: without this, torch wraps __torch_dispatch__ in torch._dynamo.disable, which
        # imports torch._dynamo (seconds, and it probes for onnx and other frameworks) at the first translation
        return False

    def __init__(self, tensors):
        super().__init__()
        self.owned: dict[int, list] = {}
        for t in tensors:
            key = _storage_key(t)
            if key is not None:
                group = self.owned.setdefault(key, [])
                if not any(t is u for u in group):
                    group.append(t)
        self.saved: dict[int, list] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        schema = getattr(func, "_schema", None)
        if schema is not None and self.owned:
            for i, a in enumerate(schema.arguments):
                if a.alias_info is None or not a.alias_info.is_write:
                    continue
                v = args[i] if i < len(args) and not a.kwarg_only else kwargs.get(a.name)
                for t in (v if isinstance(v, (list, tuple)) else (v,)):
                    if isinstance(t, torch.Tensor):
                        self._save(t)
        return func(*args, **kwargs)

    def _save(self, t):
        key = _storage_key(t)
        if key is None or key in self.saved or key not in self.owned:
            return
        self.saved[key] = [(u, u.detach().clone()) for u in self.owned[key]]

    def restore(self):
        with torch.no_grad():
            for pairs in self.saved.values():
                for t, old in pairs:
                    if t.is_inference():
                        with torch.inference_mode():
                            t.copy_(old)
                    else:
                        t.detach().copy_(old)
        self.saved.clear()


def _storage_key(t) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:       # pragma: no cover - tensors without storage (sparse, meta)
        return None


@contextlib.contextmanager
def _untouched(model: nn.Module):
    """Runs the translation (tracing and the example forward pass) and then leaves the model as it was: every
    module's attributes (training flags and Python values a forward updates, e.g. ``self.calls += 1``), the
    contents of its parameter, buffer, submodule and hook tables, and the values of its parameters and buffers
    (written ones are copied first, see :class:`_CopyOnWrite`), also when the translation raises."""
    modules = list(model.modules())
    attrs = [(m, dict(vars(m)), {k: dict(v) for k, v in vars(m).items() if isinstance(v, dict)})
             for m in modules]
    guard = _CopyOnWrite([*model.parameters(), *model.buffers()])
    try:
        with guard:
            yield
    finally:
        guard.restore()
        for m, d, tables in attrs:
            now = vars(m)
            for k, table in tables.items():
                t = d[k]
                if t.keys() != table.keys() or any(t[a] is not table[a] for a in table):
                    t.clear()
                    t.update(table)
            if now.keys() != d.keys() or any(now[a] is not d[a] for a in d):
                now.clear()
                now.update(d)


def _same_state(a, b) -> bool:
    return a[0] == b[0] and a[1] == b[1] and a[2] == b[2]
