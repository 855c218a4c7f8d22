"""The walk over a traced model: every fx node handed to its converter, in order, on the translation kit.

:class:`Walker` is the torch backend's :class:`attribx.translation.Translator`: it traces the model
(:mod:`attribx_torch.tracing`), runs it once on an example of batch size 1 to know every intermediate
value, then converts node by node through the converter table (:mod:`attribx_torch.converters`; a
translation's plugin converters layered on top). Converters see the narrow surface below (``tensor``,
``emit``, ``const``, ``param``, ``out_shape``, ``result``...). Every op without a converter is
``ctx.no_translation``; every argument the graph cannot express is an :class:`attribx.UnsupportedError`
naming the op, the fx node and the module it was made in.
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from attribx.errors import AttribxError, GraphError, InputError, InputShapeError, UnsupportedError
from attribx.graph import Graph, Value, layout_dims
from attribx.inputs import first_shape
from attribx.translation import ConverterTable, Tensor, Translator

from .aliasing import Aliases
from .converters import TABLE
from .converters.recurrent import PACK_PADDED
from .signatures import bind
from .tracing import (Holder, Recorder, Tracer, concrete_args, feeds_embeddings, first_layer, mask_parameters,
                      module_converter, parameter_names)
from .values import (HOOK_HINT, TIME_MAJOR_HINT, Lazy, Packed, Swapped, Unsupported, class_path, contains,
                     contains_t, device_of, first_line, fn_name, is_number, is_t, pretty, qualname, swap01)

RANDOM_FUNCTIONS = {torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like,
                    torch.randint_like, torch.randperm, torch.bernoulli, torch.normal, torch.multinomial,
                    torch.poisson}
RANDOM_METHODS = {"uniform_", "normal_", "bernoulli", "bernoulli_", "random_", "exponential_",
                  "geometric_", "cauchy_", "log_normal_", "multinomial"}
INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, torch.relu_}


def fx_nodes_in(arg) -> set:
    """The fx nodes an argument holds (inside tuples, lists, dicts and slices)."""
    found: set = set()
    fx.node.map_arg(arg, lambda a: found.add(a) or a)
    return found


class Walker(Translator):
    """One translation of a torch model (``table``: the converters, plugins' included)."""

    framework = "torch"

    def __init__(self, model: nn.Module, input_shape: tuple, dtype: torch.dtype, table: ConverterTable = TABLE,
                 leaf_functions: tuple = ()):
        super().__init__(type(model).__name__, np.float64 if dtype == torch.float64 else np.float32)
        self.model = model
        several = isinstance(input_shape, dict) or bool(input_shape) and isinstance(input_shape[0], (tuple, list))
        self.shapes = input_shape if several else None     # one per input (a tuple, or a dict by forward's names)
        self.input_shape = first_shape(input_shape)
        self.input_names = ["input"]            # the graph inputs: one per traced forward argument
        self.dtype = dtype
        self.table = table
        self.leaf_functions = tuple(leaf_functions)     # a plugin's plain functions, traced as one call
        self.values: dict[fx.Node, object] = {}
        self.tainted: set[fx.Node] = set()      # static values that depend on the batch size
        self.node: fx.Node | None = None       # the fx node being translated
        self.conv = None                       # its converter
        self.main_names: dict[fx.Node, str] = {}
        self.order: dict[fx.Node, int] = {}
        self.expected: dict[str, tuple] = {}    # graph name -> torch's shape (batch 1)
        self.emitted: set[str] = set()
        self.env: dict = {}
        self.sequence_input = False             # a recurrent layer reads the input directly
        self.swap_out = False                   # an elementwise op on time-major tensors: see out_shape
        self.counts: set[str] = set()           # graph values holding integers (masks, lengths)
        self.masks: dict[fx.Node, str] = {}     # further inputs that are masks: their graph input names
        self.signals: list[fx.Node] = []        # the placeholders of the signal inputs, in forward's order

    # -- what converters use ----------------------------------------------------------------------
    def _append(self, name, op, inputs, params, source, attrs):
        self.emitted.add(name)
        return super()._append(name, op, inputs, params, source, attrs)

    def emit(self, op, inputs, shape, attrs=None, params=None, name=None, order=None) -> Tensor:
        """Add a node (named after the fx node unless ``name``); ``shape`` is torch's, batch size 1."""
        ins = [self.materialize(i) for i in inputs]
        t = super().emit(op, ins, shape, attrs, params, name, order)
        t.dtype = self.dtype
        self.expected[t.name] = t.shape
        v = self.env.get(self.node)
        if isinstance(v, torch.Tensor) and not v.is_floating_point() and any(i.name in self.counts for i in ins):
            t.dtype = v.dtype           # a reshaped or sliced mask or lengths: still one
            self.counts.add(t.name)
        return t

    def const(self, value, suffix="const") -> Tensor:
        """A constant node (no batch axis) holding a python number or a tensor."""
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu").to(torch.float64).numpy()
        elif not is_number(value) and not isinstance(value, np.ndarray):
            raise Unsupported(f"operand {value!r} is neither a number nor a tensor")
        t = self.constant(value, suffix)
        t.dtype = self.dtype
        return t

    def param(self, t, what="parameter") -> np.ndarray:
        """A parameter as a numpy array: a read-only view of the tensor's memory where it is a float32/float64
        CPU tensor (the graph then holds no copy of the weights), else a copy on the host."""
        if t is None:
            return None
        if is_t(t):
            raise Unsupported(f"its {what} is computed from the input; the graph's {what}s are constants")
        if not isinstance(t, torch.Tensor):
            raise Unsupported(f"{what} is a {type(t).__name__}, not a tensor")
        a = t.detach()
        if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64) and not a.is_conj() \
                and not a.is_neg():
            view = a.numpy()            # the model's own memory: weights are held once
            view.flags.writeable = False    # nothing in attribx may write through it into the model
            return view
        a = a.to("cpu")
        if not a.is_floating_point() or a.dtype not in (torch.float32, torch.float64):
            a = a.to(self.dtype)
        return a.numpy().copy()

    def materialize(self, v, name: str | None = None) -> Tensor:
        """A graph tensor for ``v``; a chunk/split piece becomes its slice node now (named ``name``)."""
        if isinstance(v, Tensor):
            return v
        if isinstance(v, Lazy):
            if v.made is None:
                v.made = self.emit("slice", [v.source], v.shape,
                                   {"axis": v.axis, "start": v.start, "stop": v.stop, "step": None},
                                   name=name or self.unique(v.name))
            return v.made
        if isinstance(v, Swapped):
            raise Unsupported(TIME_MAJOR_HINT)
        if isinstance(v, Packed):
            raise Unsupported("it reads a PackedSequence; in the graph only nn.LSTM, nn.GRU and "
                              "pad_packed_sequence read one")
        raise Unsupported(f"expected a tensor computed from the input, got {type(v).__name__}")

    def base(self, v: Swapped) -> Tensor:
        """The batch-first graph value of a time-major view (final states stacked now, along axis 1)."""
        if v.base is None:
            rest = v.pieces[0].shape[1:]
            cols = [self.emit("reshape", [p], (1, 1, *rest), {"shape": (1, *rest)},
                              name=self.unique(f"{v.name}/{k}")) for k, p in enumerate(v.pieces)]
            v.base = cols[0] if len(cols) == 1 else self.emit(
                "concat", cols, (1, len(cols), *rest), {"axis": 1}, name=self.unique(v.name))
        return v.base

    def tensor(self, v, what="input") -> Tensor:
        if not is_t(v):
            raise Unsupported(f"its {what} is not computed from the model input "
                              f"({type(v).__name__}); only the input tensor flows through the graph")
        return self.materialize(v)

    def result(self):
        """The traced torch value of the current node (batch size 1)."""
        return self.env[self.node]

    def batch_dependent(self) -> None:
        """Mark the current node's static value as depending on the batch size (``x.size(0)``)."""
        self.tainted.add(self.node)

    def out_shape(self, counts: bool = False) -> tuple:
        """torch's shape of the current node's result (batch 1); graph order (axes 0/1 swapped back) inside
        an elementwise op on time-major tensors. ``counts``: integer and boolean results are fine (masks
        and lengths, which the graph holds as floats). An op returning (result, auxiliaries...): the result's."""
        v = self.env[self.node]
        if isinstance(v, (tuple, list)) and self.conv is not None and self.conv.options.get("multiple"):
            v = v[0]
        if not isinstance(v, torch.Tensor):
            raise Unsupported(f"expected a tensor result, got {type(v).__name__}")
        if not v.is_floating_point() and not counts and not self.reads_counts():
            raise Unsupported(f"its result has dtype {v.dtype}; the graph carries floating point values only "
                              f"(besides masks and lengths of padded sequences)")
        return swap01(v.shape) if self.swap_out else tuple(v.shape)

    def reads_counts(self) -> bool:
        """Whether the current node reads a mask or lengths (its integer or boolean result is one too: a mask
        input sliced, reshaped, concatenated, negated)."""
        return any(isinstance(self.values.get(a), Tensor) and self.values[a].name in self.counts
                   for a in self.node.all_input_nodes)

    def source(self) -> str:
        n = self.node
        if n is None:
            return ""
        if n.op == "call_module":
            return type(self.root.get_submodule(n.target)).__name__
        if n.op == "call_method":
            return str(n.target)
        return fn_name(n.target)

    def where(self) -> str:
        """Where the current node sits: ``fx node 'add', in module 'block' (Block)``."""
        n = self.node
        if n is None:
            return super().where()
        mod = self.scope(n)
        return f"fx node {n.name!r}" + (f", in module {mod[0]!r} ({mod[1]})" if mod else "")

    # -- the walk ---------------------------------------------------------------------------------
    def trace(self):
        """The model as an fx graph: (root module, fx graph, GraphModule); untranslatable modules refused."""
        model = self.model
        # a module we translate whole is traced as the one call of a holder, so it keeps its name
        whole = module_converter(self.table, model) is not None or fx.Tracer().is_leaf_module(model, "")
        self.root = root = Holder(model) if whole else model
        if isinstance(self.shapes, dict):       # by forward's parameter names, in its order; masks may be left out
            names = parameter_names(root)
            unknown = [k for k in self.shapes if k not in names]
            if unknown:
                raise InputError(f"input(s) {', '.join(map(repr, unknown))}: {type(model).__name__}.forward "
                                 f"takes {', '.join(names)}")
            names = names[:max(names.index(k) for k in self.shapes) + 1]
            missing = [k for k in names if k not in self.shapes and k not in mask_parameters(root)]
            if missing:
                raise InputError(f"input(s) {', '.join(map(repr, missing))} missing: {type(model).__name__}.forward "
                                 f"takes {', '.join(names)}")
            self.shapes = {k: self.shapes[k] for k in names if k in self.shapes}
            concrete, _ = concrete_args(root, len(names))
            self.params, self.shapes = list(self.shapes), tuple(self.shapes.values())
            self.input_shape = self.shapes[0]
        else:
            concrete, self.params = concrete_args(root, 1 if self.shapes is None else len(self.shapes))
        tracer = Tracer(lambda m: module_converter(self.table, m) is not None, self.leaf_functions)
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
                f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {first_line(err)}. "
                f"attribx translates models whose forward torch.fx can trace symbolically (no control "
                f"flow on tensor values), or export it with torch.export and explain the program "
                f"(attribx.explain(torch.export.export(model.eval(), (x,)), x), docs/transformers.md); "
                f"{HOOK_HINT}") from None
        finally:
            for k in set(vars(root)) - before:     # the tracer parks tensor constants on the root
                if k.startswith("_tensor_constant"):
                    delattr(root, k)
        for n in fx_graph.nodes:     # modules without a translation: say so before running anything
            if n.op == "call_module" and module_converter(self.table, root.get_submodule(n.target)) is None:
                raise self.no_translation(self._where(n))
        # the graph's inputs, in forward's order: the given ones and the mask parameters (given or not)
        masks, given = set(mask_parameters(root)), set(self.params or ("",))
        first = next((n for n in fx_graph.nodes if n.op == "placeholder"), None)
        self.masks = {n: str(n.target) for n in fx_graph.nodes if n.op == "placeholder" and n.target in masks}
        self.signals = [n for n in fx_graph.nodes if n.op == "placeholder" and n not in self.masks and
                        (n is first or n.target in given)]
        return root, fx_graph, gm

    def takes_indices(self, fx_graph) -> bool:
        return feeds_embeddings(fx_graph, self.root)

    def record(self, fx_graph):
        """One forward pass on an example of batch size 1: (every node's value, the example)."""
        model = self.model
        # packed sequences need lengths >= 1: an example of ones (twos where 1 pads), whole-length sequences
        packs = any(n.op == "call_function" and n.target is PACK_PADDED for n in fx_graph.nodes)
        first_err = None
        for fill in ((1, 2, 0) if packs else (0,)):
            example = torch.full((1, *self.input_shape), fill, dtype=torch.long if self.indices else self.dtype,
                                 device=device_of(model))
            for masks in self._mask_examples(example):
                rec = Recorder(self.gm)
                try:
                    with torch.no_grad():
                        rec.run(*self._arguments(example, masks))
                    return rec.env, example
                except Exception as err:
                    first_err = first_err or err
        raise self.shape_error(fx_graph, first_err)

    def _given_shapes(self) -> dict:
        """The shapes given (one sample's), by forward's parameter name; {} for one input."""
        return dict(zip(self.params, self.shapes)) if self.shapes is not None else {}

    def _mask_examples(self, example):
        """Examples of the mask inputs to record with, nothing masked: boolean False (a key_padding_mask), else
        integer ones (an attention_mask); shaped as given, else (N, T) like token ids, or like the input without
        its feature axis ((N, T) for (N, T, E)); the first the model runs on is taken."""
        if not self.masks:
            return [()]
        given = self._given_shapes()
        shapes = [tuple(example.shape)] if self.indices or example.dim() < 3 else \
            [tuple(example.shape[:-1]), tuple(example.shape)]
        return [tuple(make((1, *given[m]) if m in given else s, dtype=dtype, device=example.device)
                      for m in self.masks.values())
                for s in shapes for make, dtype in ((torch.zeros, torch.bool), (torch.ones, torch.long))]

    def _arguments(self, example, masks) -> list:
        """The traced inputs in forward's order: the example for the first signal input, zeros for further
        ones (real-valued signals, shaped as given), the mask examples for the mask inputs."""
        given, masks = self._given_shapes(), dict(zip(self.masks, masks))
        more = {n: torch.zeros((1, *given[str(n.target)]), dtype=self.dtype, device=example.device)
                for n in self.signals[1:]}
        ordered = [n for n in self.gm.graph.nodes if n in masks or n in more or n is self.signals[0]]
        return [example if n is self.signals[0] else masks[n] if n in masks else more[n] for n in ordered]

    def shape_error(self, fx_graph, err) -> InputShapeError:
        """The model does not run on the example: torch's reason, and the shape its first layer takes."""
        shape = tuple(self.input_shape)
        if self.shapes is not None:
            given = ", ".join(f"{p} {tuple(s)}" for p, s in zip(self.params, self.shapes))
            return InputShapeError(f"{type(self.model).__name__} does not run on one sample of each input ({given}): "
                                   f"{type(err).__name__}: {first_line(err)}", None)
        first = first_layer(self.table, fx_graph, self.root)
        takes = (f"its first layer {first[0]!r} ({type(first[1]).__name__}) takes one sample of shape "
                 f"{pretty(first[2])}" if first else
                 "inputs need the batch axis first, then the model's own layout (channels first for torch)")
        return InputShapeError(
            f"{type(self.model).__name__} does not run on one sample of shape {shape} (batch shape {(1, *shape)}): "
            f"{type(err).__name__}: {first_line(err)}; {takes}", (None, *first[2]) if first else None)

    def names(self, nodes) -> dict:
        """Graph names fixed before the walk: module paths, so that functional names never take them."""
        return {n: self.unique(str(n.target)) for n in nodes if n.op == "call_module"}

    def run(self) -> Graph:
        self.root, fx_graph, self.gm = self.trace()
        self.indices = self.takes_indices(fx_graph)
        self.env, example = self.record(fx_graph)
        nodes = list(fx_graph.nodes)
        self.order = {n: i for i, n in enumerate(nodes)}
        if len(self.signals) > 1:     # several signal inputs: each named after its forward argument
            names = [str(n.target) for n in self.signals]
            self.input_names = [p if p == "input" else self.unique(p) for p in names]
        self.masks = {n: self.unique(name) for n, name in self.masks.items()}
        self.main_names.update(self.names(nodes))
        outputs = None
        for n in nodes:
            self.node = n
            if n.op == "placeholder":
                if n in self.signals:
                    name = self.input_names[self.signals.index(n)]
                    self.values[n] = Tensor(name, tuple(self.env[n].shape), dtype=self.env[n].dtype)
                elif n in self.masks:       # a mask input (attention_mask): a graph input that takes no relevance
                    self.values[n] = Tensor(self.masks[n], tuple(self.env[n].shape), dtype=self.env[n].dtype)
                    self.counts.add(self.masks[n])
                else:
                    self.values[n] = self.env[n]
                continue
            if n.op == "get_attr":
                self.values[n] = self.env[n]
                continue
            self.origin = self.source()
            if n.op == "output":
                outputs = self._outputs(n)
                continue
            self.main = self.main_names.get(n) or self.unique(n.name)
            self.values[n] = self._translate_node(n)
            if isinstance(self.values[n], Tensor) and self.values[n].name != self.main and \
                    self.main not in self.emitted:
                # dropped (identity, dropout, contiguous): the name addresses the value it passes on
                self.alias(self.main, self.values[n].name)
        self.node = None
        return self._finish(outputs)

    def _what(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return f"module {n.target!r} ({class_path(type(self.root.get_submodule(n.target)))})"
        return f"method Tensor.{n.target}" if n.op == "call_method" else f"function {qualname(n.target)}"

    def _where(self, n: fx.Node) -> str:
        if n.op == "call_module":
            return self._what(n)
        where = f"{self._what(n)} (fx node {n.name!r}"
        mod = self.scope(n)
        if mod:
            where += f", in module {mod[0]!r} ({mod[1]})"
        return where + ")"

    def scope(self, n: fx.Node):
        """(module path, class name) of the module the node was made in, or None."""
        return n.meta.get("attribx_module")

    def converter(self, n: fx.Node):
        """(converter or None, leading arguments: the module for a module call)."""
        if n.op == "call_module":
            mod = self.root.get_submodule(n.target)
            return module_converter(self.table, mod), (mod,)
        if n.op == "call_method":
            return self.table.lookup(f"method:{n.target}"), ()
        return self.table.lookup(n.target) or self.table.lookup(qualname(n.target)), ()

    def _call(self, n, conv, extra, args, kwargs):
        """The converter called as its kind is: a module's with the module and the call's arguments, a
        function's or method's with the torch call's arguments by name."""
        if extra:
            return conv.convert(self, *extra, *args, **kwargs)
        target = f"method:{n.target}" if n.op == "call_method" else n.target
        try:
            args, kwargs = bind(target, args, kwargs)
        except TypeError as err:
            raise Unsupported(f"its arguments do not fit torch's signature ({err})") from None
        return conv.convert(self, *args, **kwargs)

    def _translate_node(self, n: fx.Node):
        args = fx.node.map_arg(n.args, lambda a: self.values[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: self.values[a])
        tainted_in = [a for a in n.all_input_nodes if a in self.tainted]
        if not contains_t((args, kwargs)):
            return self._static(n, args, tainted_in)
        conv, extra = self.converter(n)
        if conv is None:
            raise self.no_translation(self._what(n))
        self.conv = conv
        if contains(args, kwargs, Swapped):
            mode = conv.options.get("time_major")
            if mode == "elementwise":
                return self._elementwise_time_major(n, conv, extra, args, kwargs)
            if mode != "aware":
                raise UnsupportedError(f"{self._where(n)}: {TIME_MAJOR_HINT}; {HOOK_HINT}")
        if tainted_in and not conv.options.get("batch_args_ok", False):
            raise UnsupportedError(
                f"{self._where(n)}: an argument depends on the batch size "
                f"({', '.join(a.name for a in tainted_in)}); the graph works for any batch size, so it "
                f"cannot express that; {HOOK_HINT}")
        self._check_inplace(n)
        try:
            return self._call(n, conv, extra, args, kwargs)
        except Unsupported as err:
            raise UnsupportedError(f"{self._where(n)}: {err}; {HOOK_HINT}") from None

    def _elementwise_time_major(self, n, conv, extra, args, kwargs):
        """An elementwise op on time-major views: run on their batch-first values; the result is time-major."""
        def unwrap(v):
            if isinstance(v, Swapped):
                return self.base(v)
            if is_t(v):
                raise Unsupported("it mixes a time-major tensor (time axis first) with a batch-first one; "
                                  "transpose one of them (x.transpose(0, 1))")
            rank = len(getattr(self.env[n], "shape", ()))
            if isinstance(v, torch.Tensor) and (v.dim() > rank or any(
                    ((1,) * (rank - v.dim()) + tuple(v.shape))[a] != 1 for a in range(min(rank, 2)))):
                raise Unsupported(f"a constant of shape {tuple(v.shape)} would broadcast over the time or "
                                  f"batch axis of a time-major tensor")
            return v
        try:
            args = fx.node.map_aggregate(args, unwrap)
            kwargs = fx.node.map_aggregate(kwargs, unwrap)
            self.swap_out = True
            try:
                out = self._call(n, conv, extra, args, kwargs)
            finally:
                self.swap_out = False
            if not isinstance(out, Tensor):
                raise Unsupported("its result is not one tensor")
        except Unsupported as err:
            raise UnsupportedError(f"{self._where(n)}: {err}; {HOOK_HINT}") from None
        return Swapped(out)

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
                    and n.args[0] in self.tainted and not fx_nodes_in(n.args[1]) & self.tainted \
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
            fname = fn_name(n.target)
            return n.target in INPLACE_FUNCTIONS or bool(n.kwargs.get("inplace", False)) \
                or (fname.endswith("_") and not fname.endswith("__"))
        return False

    def _check_inplace(self, n):
        """An in-place op changes every value sharing its tensor's storage (the tensor, its views, its base,
        views of its base); the graph maps each value to the node made when it was created, so a value made
        before the in-place op and read after it would miss the change: refused (issue 17 point 1)."""
        if not n.args or not isinstance(n.args[0], fx.Node) or not self._is_inplace(n):
            return
        if getattr(self, "_aliases", None) is None:
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
            elif isinstance(v, Swapped):
                raise UnsupportedError(
                    f"{type(self.model).__name__} returns a tensor whose batch axis is second (time-major, e.g. "
                    f"x.transpose(0, 1) or an RNN's output with batch_first=False); the graph's outputs keep the "
                    f"batch axis first: return out.transpose(0, 1) (or h_n[-1], h_n.transpose(0, 1) for final "
                    f"states); {HOOK_HINT}")
            elif isinstance(v, Packed):
                raise UnsupportedError(
                    f"{type(self.model).__name__} returns a PackedSequence; return a tensor (unpack it with "
                    f"pad_packed_sequence); {HOOK_HINT}")
            elif is_t(v):
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
        self.origin = "Identity"
        return [self.emit("identity", [o], o.shape, name=self.unique("output")) if o.name in self.input_names else o
                for o in outs]

    def _finish(self, outputs) -> Graph:
        # drop what no output reads (branches the model computes but does not return)
        needed = {o.name for o in outputs}
        for node in reversed(self.nodes):
            if node.name in needed:
                needed.update(node.inputs)
        self.nodes = [nd for nd in self.nodes if nd.name in needed]
        for o in outputs:
            if o.dtype != self.dtype:
                raise UnsupportedError(f"output {o.name!r} has dtype {o.dtype}, the model's is {self.dtype}")
        dtype = "int64" if self.indices else "float64" if self.dtype == torch.float64 else "float32"
        full = (None, *self.input_shape)
        self.aliases = {k: v for k, v in self.aliases.items() if v in needed or v in self.input_names}
        layout = ("sample",) + tuple("token" if i == 0 else f"position_{i}" for i in range(len(full) - 1))
        if not self.indices:
            layout = layout_dims("NTE" if self.sequence_input else None, len(full))
        # mask inputs are carried in the model's float dtype (0 masks), so what is computed from them stays in it
        float_dtype = "float64" if self.dtype == torch.float64 else "float32"
        inputs = {n: Value(name, (None, *self.env[n].shape[1:]), float_dtype,
                           ("sample", "token")[:self.env[n].dim()]) for n, name in self.masks.items()}
        meta = {"mask_inputs": list(self.masks.values())} if self.masks else {}
        # left out, a mask masks nothing: an attention_mask (HF's convention) attends where 1, torch's boolean
        # masks (key_padding_mask, attn_mask) mask where True, so one recorded on False runs as 0
        zeros = [name for n, name in self.masks.items() if self.env[n].dtype == torch.bool and
                 "attention" not in str(n.target)]
        if zeros:
            meta["mask_fill"] = {name: 0 for name in zeros}
        inputs.update({n: Value(name, (None, *self.env[n].shape[1:]), float_dtype, layout_dims(None, self.env[n].dim()))
                       for n, name in zip(self.signals[1:], self.input_names[1:])})
        inputs[self.signals[0]] = Value(self.input_names[0], full, dtype, layout)
        shapes = [list(s) for s in self.shapes] if self.shapes is not None else list(self.input_shape)
        graph = self.finish([v for n, v in sorted(inputs.items(), key=lambda kv: self.order[kv[0]])],
                            [o.name for o in outputs], backend="torch", framework="torch",
                            torch_version=torch.__version__, input_shape=shapes, **meta)
        for nd in graph.nodes:   # the graph's shapes must be torch's, batch axis first
            want = self.expected.get(nd.name)
            got = tuple(1 if d is None else d for d in nd.shape)
            if nd.op != "constant" and (nd.shape[0] is not None or (want is not None and got != want)):
                raise GraphError(f"internal: node {nd.name!r} ({nd.op}) has shape {nd.shape} in the graph "
                                 f"but {want} in torch (batch 1); please report this with the model")
        return graph
