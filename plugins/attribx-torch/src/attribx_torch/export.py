"""Translate a ``torch.export`` program (``ExportedProgram``, or a ``.pt2`` file) into the attribx graph.

The program's module (``ep.module()``, an fx graph of aten ops) goes through the same walk as a traced
``nn.Module`` (:class:`attribx_torch.walker.Walker`), with the aten ops that CNN and MLP exports produce
converted by the same converter table (:mod:`attribx_torch.converters.aten`): both the training IR
``torch.export.export`` returns (``aten.conv2d``, ``aten.linear``, ``aten.batch_norm``) and the core ATen IR
of ``run_decompositions()`` (``aten.convolution``, ``aten.addmm``,
``aten._native_batch_norm_legit_no_training``). Nodes a known layer
produced are named by its module path (``features.0``), from the program's ``nn_module_stack``; any aten op
without a translation is an error naming the op and the node.

The program runs once on an example of its own batch size (shapes baked into a static export, like
``aten.view(x, [8, -1])``, then hold) and each value is read for the first sample, as the module walk
reads a batch of one. The program itself is not changed: its module is a fresh copy, programs that update
buffers (exported in training mode) are refused before anything runs, and nothing runs with gradients.
"""
from __future__ import annotations

import zipfile

import torch
import torch.fx as fx

from attribx.errors import InputShapeError, ModelLoadError, UnsupportedError
from attribx.graph import Graph

from .converters import TABLE
from .signatures import bind
from .state import model_dtype
from .tracing import Recorder
from .values import device_of, first_line, pretty
from .walker import Walker

__all__ = ["translate_program", "load_program"]

#: the layer classes with converters, and layers that export as one aten op: ops a call of one made are named
#: by its path
_LEAF_CLASSES = {f"{c.target.__module__}.{c.target.__qualname__}": c.target.__name__
                 for c in TABLE if isinstance(c.target, type)}
_LEAF_CLASSES.update({"torch.nn.modules.normalization.LayerNorm": "LayerNorm",
                      "transformers.activations.GELUActivation": "GELUActivation"})


# ----------------------------------------------------------------------------------------------
# the walk over a program's module


def _class_name(cls) -> str:
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


class ProgramWalker(Walker):
    """The module walk over ``ep.module()``: no tracing, aten converters, names from ``nn_module_stack``."""

    def __init__(self, gm: fx.GraphModule, input_shape: tuple, dtype, batch: int, name: str, table=TABLE,
                 fused: dict | None = None, masks: tuple = ()):
        super().__init__(gm, input_shape, dtype, table)
        self.mask_names = tuple(masks)          # placeholders that are mask inputs (ones in the example)
        self.batch = batch
        self.name = name
        self.leaf: dict[fx.Node, str] = {}      # node -> class of the layer named after it
        self.fused = dict(fused or {})          # node -> class of the module whose pieces it replaced

    def trace(self):
        self.root = gm = self.model
        self.dependent = input_dependent(gm.graph)
        self.masks = {n: n.name for n in gm.graph.nodes if n.op == "placeholder" and n.name in self.mask_names}
        self.signals = [next(n for n in gm.graph.nodes if n.op == "placeholder")]     # the one signal input
        return gm, gm.graph, gm

    def takes_indices(self, fx_graph) -> bool:
        first = next(n for n in fx_graph.nodes if n.op == "placeholder")
        val = first.meta.get("val")
        return val is not None and not val.dtype.is_floating_point

    def record(self, fx_graph):
        """One run at the program's own batch size, every input-dependent value read for the first sample."""
        example = torch.zeros((self.batch, *self.input_shape), dtype=torch.long if self.indices else self.dtype,
                              device=device_of(self.model))
        masks = [torch.ones((self.batch, *self.input_shape), dtype=torch.long, device=example.device)
                 for _ in self.masks]
        rec = Recorder(self.gm)
        try:
            with torch.no_grad():
                rec.run(example, *masks)
        except Exception as err:
            raise self.shape_error(fx_graph, err) from None

        def first(v):
            if isinstance(v, (tuple, list)):
                return tuple(first(a) for a in v)
            if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == self.batch:
                return v[:1]
            return v
        return {n: first(v) if n in self.dependent else v for n, v in rec.env.items()}, example[:1]

    def names(self, nodes) -> dict:
        """A layer's path (``features.0``) for the first input-dependent op each call of a known layer made."""
        names, seen = {}, set()
        for n in nodes:
            scope = self._stack_top(n)
            if n.op != "call_function" or n not in self.dependent or scope is None:
                continue
            key, path, cls = scope
            leaf = self.fused.get(n) or _LEAF_CLASSES.get(cls)
            if leaf is not None and key not in seen:
                seen.add(key)
                names[n] = self.unique(path)
                self.leaf[n] = leaf
        return names

    @staticmethod
    def _stack_top(n):
        stack = n.meta.get("nn_module_stack")
        if not stack:
            return None
        key, (path, cls) = list(stack.items())[-1]
        return key, path, _class_name(cls)

    def scope(self, n):
        top = self._stack_top(n)
        return None if top is None or not top[1] else (top[1], top[2].rsplit(".", 1)[-1])

    def source(self) -> str:
        n = self.node
        if n is not None and n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload):
            return self.leaf.get(n) or str(n.target)
        return super().source()

    def _finish(self, outputs) -> Graph:
        graph = super()._finish(outputs)
        graph.meta.update(name=self.name, source_format="torch.export")
        return graph


# ----------------------------------------------------------------------------------------------
# entry points


#: batch norms that update their running statistics (args 3, 4) when argument 5 (training) is true
_TRAINING_BN = {torch.ops.aten.batch_norm.default, torch.ops.aten.native_batch_norm.default}


def _computed(n: fx.Node, i: int, name: str) -> bool:
    """Whether op argument i is a value the program computes (not an input, a parameter or a buffer)."""
    v = n.args[i] if i < len(n.args) else n.kwargs.get(name)
    return isinstance(v, fx.Node) and v.op == "call_function"


def _arg_name(n: fx.Node, i: int, name: str) -> str:
    """The state an op argument holds (``bn.running_mean``), else the argument's name."""
    v = n.args[i] if i < len(n.args) else n.kwargs.get(name)
    return str(v.target) if isinstance(v, fx.Node) and v.op == "get_attr" else name


def _program_module(ep, intermediate_writes: bool = False, masks: tuple = ()) -> tuple[fx.GraphModule, fx.Node]:
    """A fresh module of the program (``ep.module()``), without its input guards (they check the example's
    batch size), and its one input; programs that update state are refused before anything runs (with
    ``intermediate_writes``, in-place ops on values the program computes pass: a check before
    :func:`_functional` removes them)."""
    sig = ep.graph_signature
    mutated = dict(getattr(sig, "buffers_to_mutate", {}) or {})
    mutated.update(getattr(sig, "user_inputs_to_mutate", {}) or {})
    if mutated:
        raise UnsupportedError(
            f"the exported program updates {', '.join(sorted(set(mutated.values())))} when it runs (exported in "
            f"training mode?); attribx explains inference: export model.eval()")
    gm = ep.module()
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and str(n.target).startswith("_guards_fn") and not n.users:
            gm.graph.erase_node(n)
        elif isinstance(n.target, torch._ops.OpOverload):
            args = n.target._schema.arguments
            written = [i for i, a in enumerate(args) if a.alias_info is not None and a.alias_info.is_write]
            # (none is left after _functional but on state, which the signature names first)
            if intermediate_writes:
                written = [i for i in written if not _computed(n, i, args[i].name)]
            if n.target in _TRAINING_BN and _training(n):
                written = [3, 4]        # running_mean, running_var
            if written:
                what = [_arg_name(n, i, args[i].name) for i in written]
                raise UnsupportedError(
                    f"{n.target} (fx node {n.name!r}) updates {', '.join(what)} when the program runs (exported in "
                    f"training mode?); attribx explains inference: export model.eval()")
    for n in [n for n in gm.graph.nodes if n.op == "placeholder"]:
        if not n.users and not isinstance(n.meta.get("val"), torch.Tensor):     # a flag (use_cache=False)
            gm.graph.erase_node(n)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and n.name not in masks]
    if len(inputs) != 1:
        raise UnsupportedError(f"the exported program takes {len(inputs)} inputs; attribx translates programs with "
                               f"one input tensor (export a module that takes one)")
    return gm, inputs[0]


def input_dependent(graph: fx.Graph) -> set:
    """The nodes computed from a program input."""
    dependent = set()
    for n in graph.nodes:
        if n.op == "placeholder" or any(a in dependent for a in n.all_input_nodes):
            dependent.add(n)
    return dependent


#: checks of an intermediate value's dtype and device a program records; they compute nothing
_CHECKS = tuple(getattr(torch.ops.aten, name).default for name in ("_assert_tensor_metadata",)
                if hasattr(torch.ops.aten, name))


def prepared_module(ep, masks: tuple = ()) -> tuple[fx.GraphModule, fx.Node]:
    """The program's module to walk (see :func:`_program_module`), functional, without its metadata checks;
    ``masks``: names of further inputs that are masks."""
    gm, first = _program_module(_functional(ep, masks), masks=masks)
    checks = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _CHECKS]
    for n in checks:
        gm.graph.erase_node(n)
    if checks:
        gm.recompile()
    return gm, first


def _writes(n: fx.Node) -> bool:
    return isinstance(n.target, torch._ops.OpOverload) and any(
        a.alias_info is not None and a.alias_info.is_write for a in n.target._schema.arguments)


def _functional(ep, masks: tuple = ()):
    """The program without in-place ops on intermediate values (``ReLU(inplace=True)`` stays ``relu_`` in
    the training IR): torch's own functionalisation (``run_decompositions`` with no decompositions), which
    also resolves what views of a modified value see. A new program; the user's is not changed. State the
    program would update still shows in the new program's signature, and is refused there."""
    if any(_writes(n) for n in ep.graph.nodes if n.op == "call_function"):
        _program_module(ep, intermediate_writes=True, masks=masks)      # refuses state updates, naming them as they are
        return ep.run_decompositions({})
    return ep


def _training(n: fx.Node) -> bool:
    """A batch norm op's ``training`` argument."""
    return bool(bind(n.target, n.args, n.kwargs)[1].get("training", False))


def translate_program(ep, input_shape: tuple | None, converters=()) -> Graph:
    """The attribx graph of an ``ExportedProgram``; one sample's shape is the program's own, or
    ``input_shape`` where the program leaves sizes free (dynamic dims); ``converters``: the plugins'."""
    gm, first = prepared_module(ep)
    val = first.meta.get("val")
    if val is None:
        raise UnsupportedError("the exported program does not record its input's shape (no 'val' metadata)")
    fixed = tuple(d if isinstance(d, int) else None for d in val.shape)
    sample = fixed[1:]
    template = [d if d is not None else "?" for d in sample]
    expected = (None, *sample)
    if input_shape is None:
        if None in sample:
            raise InputShapeError(
                f"the exported program's input has sizes it leaves free, {pretty(template)}; pass "
                f"attribx.translate(program, input_shape=...) with one sample's shape, or call "
                f"attribx.explain(program, x), which takes the shape from x", expected)
        input_shape = sample
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != len(sample) or any(f is not None and f != s for f, s in zip(sample, input_shape)):
        raise InputShapeError(f"the exported program takes one sample of shape {pretty(template)}, not "
                              f"{pretty(input_shape)}", expected)
    batch = fixed[0] if fixed and fixed[0] is not None else 1
    plugins = [c for c in converters if c.framework == "torch"]
    table = TABLE.with_plugins(plugins) if plugins else TABLE
    return ProgramWalker(gm, input_shape, model_dtype(gm), batch, _exported_name(gm), table).run()


def _exported_name(gm) -> str:
    """The class name of the module that was exported (the root of the module stacks)."""
    for n in gm.graph.nodes:
        stack = n.meta.get("nn_module_stack")
        if stack:
            return _class_name(next(iter(stack.values()))[1]).rsplit(".", 1)[-1]
    return "ExportedProgram"


def load_program(path: str):
    """A ``torch.export.save`` file (``.pt2``) as its ``ExportedProgram``."""
    if not zipfile.is_zipfile(path):      # torch would log a traceback before raising
        raise ModelLoadError(f"{path}: not a torch.export program (a .pt2 file is a zip archive)")
    try:
        return torch.export.load(path)
    except Exception as err:
        raise ModelLoadError(f"{path}: not a torch.export program torch {torch.__version__} can read "
                             f"({type(err).__name__}: {first_line(err)})") from None
