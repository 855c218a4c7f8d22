"""Translate a ``torch.export`` program (``ExportedProgram``, or a ``.pt2`` file) into the attribx graph.

The program's module (``ep.module()``, an fx graph of aten ops) goes through the same walk as a traced
``nn.Module`` (:class:`attribx_torch.translate._Translation`), with the aten ops that CNN and MLP exports
produce mapped onto the same op translations: both the training IR ``torch.export.export`` returns
(``aten.conv2d``, ``aten.linear``, ``aten.batch_norm``) and the core ATen IR of ``run_decompositions()``
(``aten.convolution``, ``aten.addmm``, ``aten._native_batch_norm_legit_no_training``). Nodes a known layer
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

from . import translate as tr
from .translate import _Recorder, _Unsupported, _h, _pretty

__all__ = ["translate_program", "load_program"]

# ----------------------------------------------------------------------------------------------
# aten ops onto the module translation's handlers


def _convolution(ctx, n, args, kwargs):
    x, w, b, stride, padding, dilation, transposed, output_padding, groups = [
        tr._arg(args, kwargs, i, name) for i, name in enumerate(
            ("input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups"))]
    x = ctx.tensor(x)
    if transposed:
        return tr._conv_transpose(ctx, x, w, b, stride, padding, output_padding, groups, dilation)
    return tr._conv(ctx, x, w, b, stride, padding, dilation, groups)


def _matrix(ctx, m, what):
    if tr._is_t(m) or not isinstance(m, torch.Tensor) or m.dim() != 2:
        raise _Unsupported(f"{what} of two input-dependent tensors, or by a weight that is not a matrix, is "
                           f"not in the graph's op set")
    return m.t()


def _addmm(ctx, n, args, kwargs):
    bias, x, wt = args[:3]
    beta, alpha = tr._arg(args, kwargs, 3, "beta", 1), tr._arg(args, kwargs, 4, "alpha", 1)
    if beta != 1 or alpha != 1 or tr._is_t(bias):
        raise _Unsupported(f"addmm with beta={beta}, alpha={alpha} or an input-dependent bias")
    return tr._linear(ctx, x, _matrix(ctx, wt, "addmm"), bias)


def _mm(ctx, n, args, kwargs):
    return tr._linear(ctx, args[0], _matrix(ctx, args[1], "a matrix product"))


def _first_of(handler):
    """An op returning (result, auxiliaries...), as batch norm and max pooling with indices do in core ATen:
    the graph holds the result; reading an auxiliary (the indices) is an error at that read."""
    def first(ctx, n, args, kwargs):
        return (handler(ctx, n, args, kwargs),) + (None,) * (len(ctx.env[n]) - 1)
    first.multiple = True
    return first


def _batch_norm(ctx, n, args, kwargs):
    x, w, b, mean, var, training, _, eps = [tr._arg(args, kwargs, i, k) for i, k in enumerate(
        ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"))]
    return tr._batch_norm(ctx, ctx.tensor(x), mean, var, w, b, eps, training)


def _batch_norm_eval(ctx, n, args, kwargs):
    x, w, b, mean, var, _, eps = args[:7]
    return tr._batch_norm(ctx, ctx.tensor(x), mean, var, w, b, eps)


def _max_pool_indices(ctx, n, args, kwargs):
    vals = [tr._arg(args, kwargs, i, k, d) for i, (k, d) in enumerate(
        (("input", None), ("kernel_size", None), ("stride", None), ("padding", 0), ("dilation", 1),
         ("ceil_mode", False)))]
    return tr._max_pool(ctx, ctx.tensor(vals[0]), *vals[1:], False)


def _adaptive_max_indices(ctx, n, args, kwargs):
    return tr._adaptive_max(ctx, ctx.tensor(args[0]), args[1])


def _slice(ctx, n, args, kwargs):
    x = ctx.tensor(args[0])
    d = tr._norm_dim(tr._arg(args, kwargs, 1, "dim", 0), len(x.shape))
    start, end, step = (tr._arg(args, kwargs, i, k, v) for i, k, v in ((2, "start", None), (3, "end", None),
                                                                         (4, "step", 1)))
    size = ctx.env[n.args[0]].shape[d]
    if end is not None and end >= size:
        end = None          # exporters write "to the end" as a huge int; the batch axis too was traced whole
    return tr._index(ctx, x, (slice(None),) * d + (slice(start, end, step),))


def _select(ctx, n, args, kwargs):
    x = ctx.tensor(args[0])
    d = tr._norm_dim(args[1], len(x.shape))
    return tr._index(ctx, x, (slice(None),) * d + (int(args[2]),))


def _elu(ctx, n, args, kwargs):
    alpha, scale, input_scale = (tr._arg(args, kwargs, i, k, 1.0) for i, k in
                                 ((1, "alpha"), (2, "scale"), (3, "input_scale")))
    if scale != 1 or input_scale != 1:
        raise _Unsupported(f"elu with scale={scale}, input_scale={input_scale}")
    return tr._unary(ctx, args[0], "elu", alpha=float(alpha))


def _softmax_internal(ctx, n, args, kwargs):
    if args[2]:
        raise _Unsupported("softmax with half_to_float=True")
    return tr._softmax(ctx, args[0], args[1])


_F = tr.FUNCTIONS
_ATEN_NAMES = {
    "conv1d.default conv2d.default conv3d.default conv1d.padding conv2d.padding conv3d.padding":
        _F[torch.nn.functional.conv2d],
    "conv_transpose1d.input conv_transpose2d.input conv_transpose3d.input": _F[torch.nn.functional.conv_transpose2d],
    "convolution.default": _convolution,
    "linear.default": _F[torch.nn.functional.linear],
    "addmm.default": _addmm, "mm.default": _mm, "matmul.default": _mm,
    "batch_norm.default": _batch_norm,
    "_native_batch_norm_legit_no_training.default": _first_of(_batch_norm_eval),
    "embedding.default": _h(lambda ctx, w, x: tr._embedding(ctx, x, w), "weight", "indices"),
    "relu.default": tr._RELU, "sigmoid.default": tr._SIGMOID, "tanh.default": tr._TANH,
    "silu.default": _F[torch.nn.functional.silu], "gelu.default": _F[torch.nn.functional.gelu],
    "leaky_relu.default": _F[torch.nn.functional.leaky_relu], "hardtanh.default": _F[torch.nn.functional.hardtanh],
    "hardsigmoid.default": _F[torch.nn.functional.hardsigmoid], "elu.default": _elu,
    "clamp.default": tr._clip_h,
    "softmax.int": tr._SOFTMAX, "_softmax.default": _softmax_internal,
    "max_pool1d.default max_pool2d.default max_pool3d.default": tr._pool_h("max"),
    "max_pool2d_with_indices.default max_pool3d_with_indices.default": _first_of(_max_pool_indices),
    "avg_pool1d.default avg_pool2d.default avg_pool3d.default": tr._pool_h("avg"),
    "adaptive_avg_pool1d.default adaptive_avg_pool2d.default adaptive_avg_pool3d.default "
    "_adaptive_avg_pool2d.default _adaptive_avg_pool3d.default": tr._adaptive_h("avg"),
    "adaptive_max_pool1d.default adaptive_max_pool2d.default adaptive_max_pool3d.default":
        _first_of(_adaptive_max_indices),
    "add.Tensor add.Scalar": tr._ADD, "sub.Tensor sub.Scalar": tr._SUB, "mul.Tensor mul.Scalar": tr._MUL,
    "div.Tensor div.Scalar": tr._DIV, "neg.default": tr._NEG,
    "mean.dim mean.default": tr._MEAN, "sum.dim_IntList sum.default": tr._SUM,
    "view.default reshape.default _unsafe_view.default": tr._view_h,
    "flatten.using_ints": tr._FLATTEN, "unsqueeze.default": tr._UNSQUEEZE,
    "squeeze.dim squeeze.dims squeeze.default": tr._SQUEEZE,
    "permute.default": _F[torch.permute], "transpose.int": tr._TRANSPOSE, "t.default": tr._T,
    "cat.default": tr._CAT, "stack.default": _F[torch.stack],
    "slice.Tensor": _slice, "select.int": _select,
    "constant_pad_nd.default": _h(lambda ctx, x, pad, value: tr._pad(ctx, x, pad, "constant", value),
                                  "input", "pad", "value", value=0),
    "dropout.default": tr._DROPOUT,
    "clone.default alias.default contiguous.default detach.default _to_copy.default lift_fresh_copy.default":
        tr._cast_h,
    "sym_size.int": tr._size_h,
}


def _aten_table() -> dict:
    """{aten overload: handler}; overloads this torch lacks are left out."""
    table = {}
    for names, handler in _ATEN_NAMES.items():
        for name in names.split():
            packet, overload = name.split(".")
            op = getattr(getattr(torch.ops.aten, packet, None), overload, None)
            if op is not None:
                table[op] = handler
    return table


ATEN = _aten_table()
_LEAF_CLASSES = {f"{c.__module__}.{c.__qualname__}": c.__name__ for c in tr.MODULES}


# ----------------------------------------------------------------------------------------------
# the walk over a program's module


def _class_name(cls) -> str:
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


class _ProgramTranslation(tr._Translation):
    """The module walk over ``ep.module()``: no tracing, aten handlers, names from ``nn_module_stack``."""

    functions = {**tr.FUNCTIONS, **ATEN}

    def __init__(self, gm: fx.GraphModule, input_shape: tuple, dtype, batch: int, name: str):
        super().__init__(gm, input_shape, dtype)
        self.batch = batch
        self.name = name
        self.leaf: dict[fx.Node, str] = {}      # node -> class of the layer named after it

    def trace(self):
        self.root = gm = self.model
        graph = gm.graph
        self.dependent = set()
        for n in graph.nodes:
            if n.op == "placeholder" or any(a in self.dependent for a in n.all_input_nodes):
                self.dependent.add(n)
        return gm, graph, gm

    def takes_indices(self, fx_graph) -> bool:
        first = next(n for n in fx_graph.nodes if n.op == "placeholder")
        val = first.meta.get("val")
        return val is not None and not val.dtype.is_floating_point

    def record(self, fx_graph):
        """One run at the program's own batch size, every input-dependent value read for the first sample."""
        example = torch.zeros((self.batch, *self.input_shape), dtype=torch.long if self.indices else self.dtype,
                              device=tr._device(self.model))
        rec = _Recorder(self.gm)
        try:
            with torch.no_grad():
                rec.run(example)
        except Exception as err:
            raise self.shape_error(fx_graph, err) from None

        def first(v):
            if isinstance(v, (tuple, list)):
                return tuple(first(a) for a in v)
            if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == self.batch:
                return v[:1]
            return v
        return {n: first(v) if n in self.dependent else v for n, v in rec.env.items()}, example[:1]

    def out_shape(self, counts: bool = False) -> tuple:
        v = self.env[self.node]
        if isinstance(v, (tuple, list)) and getattr(self.functions.get(self.node.target), "multiple", False):
            saved, self.env[self.node] = v, v[0]
            try:
                return super().out_shape(counts)
            finally:
                self.env[self.node] = saved
        return super().out_shape(counts)

    def names(self, nodes) -> dict:
        """A layer's path (``features.0``) for the first input-dependent op each call of a known layer made."""
        names, seen = {}, set()
        for n in nodes:
            scope = self._stack_top(n)
            if n.op != "call_function" or n not in self.dependent or scope is None:
                continue
            key, path, cls = scope
            if cls in _LEAF_CLASSES and key not in seen:
                seen.add(key)
                names[n] = self.unique(path)
                self.leaf[n] = _LEAF_CLASSES[cls]
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


def _program_module(ep, intermediate_writes: bool = False) -> tuple[fx.GraphModule, fx.Node]:
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
            if n.target in _TRAINING_BN and tr._arg(n.args, n.kwargs, 5, "training", False):
                written = [3, 4]        # running_mean, running_var
            if written:
                what = [_arg_name(n, i, args[i].name) for i in written]
                raise UnsupportedError(
                    f"{n.target} (fx node {n.name!r}) updates {', '.join(what)} when the program runs (exported in "
                    f"training mode?); attribx explains inference: export model.eval()")
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise UnsupportedError(f"the exported program takes {len(inputs)} inputs; attribx translates programs with "
                               f"one input tensor (export a module that takes one)")
    return gm, inputs[0]


def _writes(n: fx.Node) -> bool:
    return isinstance(n.target, torch._ops.OpOverload) and any(
        a.alias_info is not None and a.alias_info.is_write for a in n.target._schema.arguments)


def _functional(ep):
    """The program without in-place ops on intermediate values (``ReLU(inplace=True)`` stays ``relu_`` in
    the training IR): torch's own functionalisation (``run_decompositions`` with no decompositions), which
    also resolves what views of a modified value see. A new program; the user's is not changed. State the
    program would update still shows in the new program's signature, and is refused there."""
    if any(_writes(n) for n in ep.graph.nodes if n.op == "call_function"):
        _program_module(ep, intermediate_writes=True)      # refuses state updates, naming them as they are
        return ep.run_decompositions({})
    return ep


def translate_program(ep, input_shape: tuple | None) -> Graph:
    """The attribx graph of an ``ExportedProgram``; one sample's shape is the program's own, or
    ``input_shape`` where the program leaves sizes free (dynamic dims)."""
    gm, first = _program_module(_functional(ep))
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
                f"the exported program's input has sizes it leaves free, {_pretty(template)}; pass "
                f"attribx.translate(program, input_shape=...) with one sample's shape, or call "
                f"attribx.explain(program, x), which takes the shape from x", expected)
        input_shape = sample
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != len(sample) or any(f is not None and f != s for f, s in zip(sample, input_shape)):
        raise InputShapeError(f"the exported program takes one sample of shape {_pretty(template)}, not "
                              f"{_pretty(input_shape)}", expected)
    batch = fixed[0] if fixed and fixed[0] is not None else 1
    return _ProgramTranslation(gm, input_shape, tr._model_dtype(gm), batch, _exported_name(gm)).run()


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
                             f"({type(err).__name__}: {tr._first_line(err)})") from None
