"""Translate an ONNX model (``onnx.ModelProto``) into the attribx graph, keeping ONNX's node names.

``translate_onnx(model, input_shape)`` walks the ONNX graph in its (topological) node order:

* a node whose inputs are all constants (initializers, ``Constant`` outputs, folded values, the
  ``Shape`` of a tensor whose per-sample shape is known) is evaluated right away with onnx's reference
  evaluator (:mod:`attribx_onnx.fold`): exporters' shape arithmetic, weight casts and transposes vanish;
* every other node goes to its converter (one per ONNX op type, :mod:`attribx_onnx.converters`, with the
  plugins' converters layered on top), which emits attribx nodes through this translation, an
  :class:`attribx.translation.Translator`. The main node carries the ONNX node's name (its first output's
  name when it has none; repeats numbered by :func:`attribx.builder.unique_name`); extra nodes a
  converter needs are named ``<node>:<suffix>``, as in the torch and Keras backends. ONNX tensor names,
  and the names of nodes that translate to nothing (Identity, Dropout), resolve through
  ``graph.meta["aliases"]``.

Models older than opset 13 are first converted with ``onnx.version_converter`` so that converters know
one set of semantics (opset 13 to the newest). The batch axis is free: the graph works for any batch
size, whatever batch size the model was exported with. Every translated tensor's shape is checked
against ONNX's own shape inference where ONNX knows it.

Graph values are batch-first; an ONNX tensor may have its batch on another axis (the sequence-first
tensors around an LSTM/GRU with ``layout=0``: X (T, N, E), Y (T, dirs, N, H), Y_h (dirs, N, H)). Each
ONNX tensor's value is an :class:`attribx.translation.Tensor` whose ``order`` records where its axes sit
(the batch axis moved to the front); converters registered with ``any_batch_axis=True`` (Transpose,
Reshape, Squeeze, Unsqueeze, Gather, Slice, Split, Concat, Shape, the recurrent nodes, elementwise
activations, ...) map ONNX axes to the stored ones, and any other converter reading such a tensor is
refused, naming it.

The input's dimension names follow its layout: a channels-last input (a Keras export, which transposes
the input before its convs) is found by tracing where its axes go (:func:`attribx.axes.input_channel_axis`)
and labelled ``("sample", "height", "width", "channel")``, so relevance comes back as the user fed it.

Anything without a translation raises :class:`attribx.UnsupportedError` naming the op type, the node,
the opset and the hooks that add more (:meth:`attribx.translation.Translator.no_translation`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from attribx.axes import input_channel_axis
from attribx.errors import AttribxError, GraphError, InputError, UnsupportedError
from attribx.graph import Graph, Value, layout_dims
from attribx.plugins import registry
from attribx.translation import NO_TRANSLATION_DOCS, Converter, ConverterTable, Tensor, Translator

from .converters import TABLE, Unsupported
# the converter families register in TABLE when imported
from .converters import elementwise, layers, masks, pooling, recurrent, resize, transformer  # noqa: F401
from .converters import shape as shape_converters  # noqa: F401
from .converters.common import batch_axis
from .converters.layout import Merged
from .converters.shape import per_sample
from .fold import Const, Folder
from .load import model_problem
from .mask_inputs import is_mask_input

__all__ = ["translate_onnx", "OnnxTranslator", "HOOK_HINT", "MIN_OPSET"]

HOOK_HINT = ("a plugin can add graph ops through the 'attribx_ops' hook and an ONNX op's converter through "
             f"'attribx_converters' ({NO_TRANSLATION_DOCS})")

#: Added to "has no translation": the hooks besides a converter.
NO_TRANSLATION_HINT = ("new graph ops come through the 'attribx_ops' hook, a whole backend through "
                       "'attribx_translate'")

#: Oldest default-domain opset the converters are written for; older models are converted first.
MIN_OPSET = 13

#: Nodes never evaluated at translation time, although their inputs are known: their outputs vary.
NEVER_FOLD = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                        "Multinomial", "Bernoulli"})

#: Input layouts by rank when the input's channels come last (a Keras export; letters of attribx.graph).
CHANNELS_LAST = {3: "NLC", 4: "NHWC", 5: "NDHWC"}

#: Ops with subgraphs: on values computed from the input they have no translation (see _refuse_control_flow).
CONTROL_FLOW = frozenset({"Loop", "Scan", "If"})

#: Ops that move, copy or select elements: a mask stays a mask through them.
MASK_KEEPING = frozenset({"Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Slice", "Gather",
                          "Split", "Concat", "Expand", "ScatterND"})

#: ONNX tensor element types (TensorProto.DataType) an input may have, as graph dtypes.
INPUT_DTYPES = {1: "float32", 11: "float64", 7: "int64", 6: "int32"}



def default_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise UnsupportedError("the ONNX model imports no default-domain opset")


def node_attrs(node) -> dict[str, Any]:
    """The node's attributes as python values (strings decoded)."""
    from onnx import helper                       # lazy: onnx loads only when a model is translated
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def _tensor_shape(type_proto):
    """Dims of a tensor type (None where unknown), or None without a shape."""
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in type_proto.tensor_type.shape.dim)


def inferred_shapes(model, input_name: str, shape: tuple) -> dict[str, tuple]:
    """ONNX's shape inference with the input's per-sample shape filled in; {} where it cannot run."""
    import onnx                              # lazy: as above
    try:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for v in m.graph.input:
            if v.name == input_name:
                dims = v.type.tensor_type.shape.dim
                del dims[:]
                dims.add().dim_param = "N"
                for d in shape:
                    dims.add().dim_value = int(d)
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:     # > 2 GB, unknown domains, ...: translate without the cross-check
        return {}
    out = {}
    for v in list(m.graph.value_info) + list(m.graph.output):
        s = _tensor_shape(v.type)
        if s is not None:
            out[v.name] = s
    return out


def outer_names(node) -> list[str]:
    """The outer-scope tensors that a node's subgraphs (Loop, Scan, If bodies) read."""
    from onnx import AttributeProto          # lazy: as above
    found: list[str] = []
    for a in node.attribute:
        graphs = [a.g] if a.type == AttributeProto.GRAPH else list(a.graphs) if a.type == AttributeProto.GRAPHS else []
        for g in graphs:
            local = {v.name for v in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                found += [i for i in list(n.input) + outer_names(n) if i and i not in local]
                local.update(n.output)
    return list(dict.fromkeys(found))


class OnnxTranslator(Translator):
    """One translation: the walk over the ONNX nodes, and what converters read and write through ``ctx``
    (constants, the values of ONNX tensors as :class:`~attribx.translation.Tensor`, emitted nodes, names)."""

    framework = "onnx"

    def __init__(self, model, input_shape, table: ConverterTable, ops: dict):
        super().__init__(model.graph.name or "model", reserved=())
        self.model = model
        self.graph = model.graph
        self.opset = default_opset(model)
        self.table = table
        self.ops = ops
        self.inits = {t.name: t for t in self.graph.initializer}
        self.consts: dict[str, Const] = {}
        self.values: dict[str, Tensor] = {}      # ONNX tensor -> its graph value (node or input name), axis order
        self.shapes: dict[str, tuple] = {}       # graph value -> shape, batch axis None
        self.int_values: set[str] = set()        # graph values holding integers (token ids)
        self.counts: set[str] = set()            # float graph values holding whole numbers from masks
        self.complement: set[str] = set()        # ONNX booleans whose graph value holds their negation
        self.booleans: set[str] = set()          # graph values holding 0/1 (masks, comparisons): Where conditions
        self.mask_values: list = []              # ONNX graph inputs that are mask inputs (attention_mask)
        self.sequence_input = False              # an LSTM/GRU reads the input: dims (sample, token, embedding)
        self.skip: set[int] = set()              # ONNX nodes already translated by a fused pattern
        self.consumers: dict[str, list] = {}
        self.producers: dict[str, Any] = {}
        for n in self.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
            for o in n.output:
                self.producers[o] = n
        self.graph_outputs = {o.name for o in self.graph.output}
        self.folder = Folder({d.domain or "": d.version for d in model.opset_import}, model.functions)
        self.input_shape = input_shape
        self.declared_batch: int | None = None   # the input's fixed batch size, if the model declares one
        self.node = None
        self.inferred: dict[str, tuple] = {}

    # -- where ----------------------------------------------------------------------------------
    def where(self) -> str:
        node = self.node
        if node is None:
            return ""
        return f"ONNX node {node.name or node.output[0]!r} ({node.op_type}, opset {self.opset})"

    # -- constants ------------------------------------------------------------------------------
    def is_const(self, tensor: str) -> bool:
        return tensor in self.consts or tensor in self.inits

    def const_pair(self, tensor: str) -> Const:
        if tensor not in self.consts:
            from onnx import numpy_helper            # lazy: onnx loads only when a model is translated
            t = self.inits[tensor]
            try:
                self.consts[tensor] = Const.of(numpy_helper.to_array(t))
            except Exception as err:
                raise UnsupportedError(f"ONNX initializer {tensor!r} cannot be read ({type(err).__name__}: "
                                       f"{err}); models with external data load with attribx.load_model(path) "
                                       f"or onnx.load(path)") from None
        return self.consts[tensor]

    def peek_const(self, tensor: str) -> Const | None:
        """A constant, looking ahead: a later ``Constant`` node is evaluated now (pattern matchers use it)."""
        if self.is_const(tensor):
            return self.const_pair(tensor)
        producer = self.producers.get(tensor)
        if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
            node = self.node
            self._fold(producer, [])
            self.node = node
            return self.consts.get(tensor)
        return None

    def const(self, tensor: str, what: str = "") -> np.ndarray:
        """A constant that must not depend on the batch size (weights, axes, pads)."""
        if not self.is_const(tensor):
            raise Unsupported(f"{what or 'input'} {tensor!r} must be a constant, but is computed from the "
                              f"model's input")
        c = self.const_pair(tensor)
        if c.batch_dependent:
            raise Unsupported(f"{what or 'input'} {tensor!r} depends on the batch size")
        return c.a

    def optional_const(self, node, index: int, what: str = ""):
        """Input ``index`` of ``node`` as a constant, or None when it is left out."""
        if len(node.input) <= index or not node.input[index]:
            return None
        return self.const(node.input[index], what)

    def float_param(self, value) -> np.ndarray:
        """A weight in the graph's float dtype, C-contiguous (transposed weights included)."""
        return np.ascontiguousarray(np.asarray(value).astype(self.np_dtype))

    # -- graph values ---------------------------------------------------------------------------
    def value(self, tensor: str, allow_int: bool = False) -> Tensor:
        """The graph value of an ONNX tensor computed from the input."""
        if tensor not in self.values:
            if self.is_const(tensor):
                raise Unsupported(f"input {tensor!r} is a constant where a tensor computed from the model's "
                                  f"input is expected")
            raise Unsupported(f"input {tensor!r} is not computed by any earlier node")
        v = self.values[tensor]
        if tensor in self.complement:
            raise Unsupported(f"input {tensor!r} is a boolean that only Not and Cast translate")
        if v.name in self.int_values and not allow_int:
            raise Unsupported(f"input {tensor!r} holds integers (token ids); only a Gather from a constant "
                              f"table (an embedding lookup) reads them")
        return v

    def operand(self, tensor: str, suffix: str = "const") -> Tensor:
        """A graph value, or a ``constant`` node holding the constant tensor (one expanded to the batch, the
        same in every sample as an exported attention mask: its sample, with a batch axis of size 1)."""
        if self.is_const(tensor):
            sample = per_sample(self.const_pair(tensor))
            if sample is not None:
                return self.constant(sample[None], suffix)
            return self.constant(self.const(tensor), suffix)
        return self.value(tensor)

    # -- nodes ----------------------------------------------------------------------------------
    def emit(self, op: str, inputs, shape=None, attrs=None, params=None, name=None, order=None) -> Tensor:
        """Add a node (named after the ONNX node unless ``name``); its shape is the op set's inference
        (a ``shape`` given must equal it), ``order`` where its ONNX tensor's axes sit."""
        if name is None:
            name = self.main if self.main not in self.shapes else self.unique(self.main)
        ins = [i if isinstance(i, str) else i.name for i in inputs]
        self._append(name, op, ins, params, "", dict(attrs or {}))
        if shape is not None and tuple(shape) != self.shapes[name]:
            raise Unsupported(f"the graph's {op!r} infers shape {self.shapes[name]}, not {tuple(shape)}")
        return Tensor(name, self.shapes[name], None if order is None else tuple(order))

    def _append(self, name, op, inputs, params, source, attrs) -> str:
        """Every node (``emit``, ``constant``, the unrollers' ``add_node``): checked against the op set, its
        shape inferred and recorded; its source is the ONNX op type it translates."""
        if op not in self.ops:
            raise Unsupported(f"needs the graph op {op!r}, which the installed attribx's op set lacks")
        ins = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        params = {k: np.asarray(v) for k, v in (params or {}).items() if v is not None}
        opdef = self.ops[op]
        try:
            shape = tuple(opdef.infer(opdef.resolve_attrs(name, attrs), [self.shapes[i] for i in ins], params, name))
        except GraphError as err:
            raise Unsupported(f"cannot be expressed in the attribx graph ({err})") from None
        self.shapes[name] = shape
        return super()._append(name, op, ins, params, "", attrs)

    # -- the walk -------------------------------------------------------------------------------
    def run(self) -> Graph:
        value = self._input()
        self.masks = self._mask_inputs(value)
        self.inferred = inferred_shapes(self.model, value.name, value.shape[1:])
        self._refuse_control_flow(value.name)
        for node in self.graph.node:
            if id(node) not in self.skip:
                self._node(node)
        self.node = None
        self.main = self.origin = ""
        return self._finish(value)

    def _refuse_control_flow(self, start: str) -> None:
        """Control flow (Loop, Scan, If) on values computed from the input has no translation; it is refused
        before the walk, so that it, and not some op before it, is what the error names (tf2onnx writes
        Keras GRU layers and masked LSTMs as a Loop whose body reads the sequence). Values that only
        ``Shape``/``Size`` read stay constants."""
        live = {start}
        for node in self.graph.node:
            if not any(i in live for i in [*node.input, *outer_names(node)] if i):
                continue
            if node.op_type in CONTROL_FLOW and node.domain in ("", "ai.onnx"):
                self.node = node
                why = ""
                if node.op_type != "If":
                    why = (f": a recurrent layer written as a {node.op_type} (tf2onnx writes Keras GRU layers and "
                           f"masked LSTMs so) cannot be unrolled; attribx unrolls ONNX LSTM and GRU nodes, and "
                           f"translates Keras models themselves")
                raise UnsupportedError(f"{self.where()}: control flow on values computed from the input has no "
                                       f"translation{why}; {HOOK_HINT}")
            if node.op_type not in ("Shape", "Size"):
                live.update(o for o in node.output if o)

    def _input(self) -> Value:
        inits = set(self.inits) | {t.values.name for t in self.graph.sparse_initializer}
        real = [v for v in self.graph.input if v.name not in inits]
        if len(real) > 1:       # (input_ids, attention_mask): the further inputs that only decide are masks
            masks = [v for v in real[1:] if is_mask_input(self.graph, v, real[0].name)]
            self.mask_values = masks
            real = [v for v in real if v not in masks]
        if len(real) != 1:
            names = ", ".join(repr(v.name) for v in real) or "none"
            raise UnsupportedError(f"ONNX model {self.graph.name!r} has {len(real)} inputs ({names}) besides its "
                                   f"mask inputs (integer inputs that only decide, as an attention_mask); "
                                   f"attribx graphs explain models with one input for now")
        v = real[0]
        if not v.type.HasField("tensor_type"):
            raise UnsupportedError(f"ONNX model input {v.name!r} is not a tensor (a sequence or map?)")
        elem = v.type.tensor_type.elem_type
        dtype = INPUT_DTYPES.get(elem)
        if dtype is None:
            from onnx import helper                  # lazy: onnx loads only when a model is translated
            raise UnsupportedError(f"ONNX model input {v.name!r} has element type "
                                   f"{helper.tensor_dtype_to_np_dtype(elem) if elem else 'undefined'}; attribx "
                                   f"translates float32, float64 and integer (token id) inputs")
        shape = self._input_shape(_tensor_shape(v.type))
        full = (None, *shape)
        self.used.add(v.name)
        self.values[v.name] = Tensor(v.name, full)
        self.shapes[v.name] = full
        layout = None
        if dtype.startswith("int"):
            self.int_values.add(v.name)
            dtype = "int64"
            layout = "NT" if len(full) == 2 else None
        else:
            self.np_dtype = np.dtype(dtype)
        return Value(v.name, full, dtype, layout_dims(layout, len(full)))

    def _mask_inputs(self, main: Value) -> list[Value]:
        """The mask inputs as graph inputs in the float dtype (0 masks): values holding whole numbers
        (``counts``), shaped as declared, sizes left free taken from the explained input's."""
        out = []
        for v in self.mask_values:
            declared = _tensor_shape(v.type)
            if declared is None or len(declared) < 1:
                raise UnsupportedError(f"ONNX model mask input {v.name!r} has no declared rank")
            sample = [d if d is not None else (main.shape[i + 1] if i + 1 < len(main.shape) else None)
                      for i, d in enumerate(declared[1:])]
            if None in sample:
                raise UnsupportedError(f"ONNX model mask input {v.name!r} leaves sizes free that the explained "
                                       f"input does not fix: {declared}")
            full = (None, *sample)
            self.used.add(v.name)
            self.values[v.name] = Tensor(v.name, full)
            self.shapes[v.name] = full
            self.counts.add(v.name)
            if v.type.tensor_type.elem_type == 9:      # a bool input holds 0/1: a condition as it is
                self.booleans.add(v.name)
            out.append(Value(v.name, full, self.np_dtype.name, layout_dims("NT" if len(full) == 2 else None,
                                                                           len(full))))
        return out

    def _input_shape(self, declared) -> tuple:
        given = self.input_shape
        if declared is not None and len(declared) == 0:
            raise UnsupportedError("the ONNX model's input is a scalar; attribx needs a batch axis first")
        per_sample = None if declared is None else declared[1:]
        self.declared_batch = None if declared is None else declared[0]
        if given is not None:
            if per_sample is not None and (len(given) != len(per_sample) or
                                           any(d is not None and d != g for d, g in zip(per_sample, given))):
                want = "(" + ", ".join("?" if d is None else str(d) for d in per_sample) + ")"
                raise InputError(f"input shape {tuple(given)} does not fit the ONNX model's input shape (N, "
                                 f"{want[1:]} (one sample, no batch axis)")
            return tuple(given)
        if per_sample is None or any(d is None for d in per_sample):
            shown = "unknown" if per_sample is None else str(tuple("?" if d is None else d for d in per_sample))
            raise InputError(f"the ONNX model's per-sample input shape is {shown}; pass one sample's shape: "
                             f"attribx.translate(model, input_shape=...) (explain and forward pass the data's)")
        return tuple(int(d) for d in per_sample)


    def _converter(self, node) -> Converter:
        """The converter of ``node``'s op type (``domain:OpType`` outside the default domain)."""
        default = node.domain in ("", "ai.onnx")
        conv = self.table.lookup(node.op_type if default else f"{node.domain}:{node.op_type}")
        if conv is not None:
            return conv
        self.main, self.origin = "", node.op_type    # the error names the node through where()
        key = node.op_type if default else f"{node.domain}:{node.op_type}"
        hint = f"converter('onnx', {key!r}) would convert it; {NO_TRANSLATION_HINT}"
        if not default:
            raise self.no_translation(f"{self.where()}: operator domain {node.domain!r}", hint)
        raise self.no_translation(self.where(), hint)

    def _node(self, node) -> None:
        self.node = node
        present = list(dict.fromkeys([i for i in node.input if i] + outer_names(node)))
        if node.domain in ("", "ai.onnx"):
            if all(o in self.consts for o in node.output if o):
                return                               # folded ahead of time (peek_const)
            if all(self.is_const(i) for i in present) and node.op_type not in NEVER_FOLD:
                self._fold(node, present)
                return
        conv = self._converter(node)
        self._check_layouts(node, conv, present)
        self.main, self.origin = self.unique(node.name or node.output[0]), node.op_type
        n_before = len(self.nodes)
        try:
            outs = conv.convert(self, node, node_attrs(node))
            outs = [self._as_output(o) for o in (list(outs) if isinstance(outs, (list, tuple)) else [outs])]
        except Unsupported as err:
            raise UnsupportedError(f"{self.where()}: {err}; {HOOK_HINT}") from None
        except AttribxError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, ZeroDivisionError) as err:
            raise UnsupportedError(f"{self.where()} cannot be translated: {type(err).__name__}: {err}; "
                                   f"{HOOK_HINT}") from None
        self._bind(node, outs)
        self._keep_kind(node, present, outs)
        first = outs[0] if outs else None
        if self.main not in {n.name for n in self.nodes[n_before:]} and len(node.output) == 1 \
                and isinstance(first, Tensor):
            self.alias(self.main, first.name)     # translated to nothing: the name addresses its input

    def _keep_kind(self, node, present, outs) -> None:
        """Moving, copying or selecting elements keeps a mask a mask: outputs of such ops on 0/1 values (on
        whole numbers) hold 0/1 (whole numbers) too."""
        if node.op_type not in MASK_KEEPING:
            return
        computed = [self.values[i].name for i in present if i in self.values]
        for kind in (self.booleans, self.counts):
            if computed and all(c in kind for c in computed):
                kind.update(o.name for o in outs if isinstance(o, Tensor))

    def _check_layouts(self, node, conv, present) -> None:
        """Only converters registered for them read tensors whose batch is merged with other axes
        (``merged_batch``) or not on the first axis (``any_batch_axis``)."""
        for option, odd, what in (
                ("merged_batch", lambda v: isinstance(v, Merged),
                 lambda v: f"whose batch is merged with other axes (shape {v.framework_shape}, as inside "
                           f"nn.MultiheadAttention's export)"),
                ("any_batch_axis", lambda v: not v.in_graph_order,
                 lambda v: f"whose batch is on its axis {batch_axis(v)} (a sequence-first tensor, as around an "
                           f"LSTM/GRU with layout=0)")):
            found = [i for i in present if i in self.values and odd(self.values[i])]
            if found and not conv.options.get(option):
                readers = sorted(str(c.target) for c in self.table if c.options.get(option))
                raise UnsupportedError(f"{self.where()} reads {found[0]!r}, {what(self.values[found[0]])}; such "
                                       f"tensors translate through {', '.join(readers)}; {HOOK_HINT}")

    def _as_output(self, out):
        """A converter's output: a Tensor, a Const or None (a graph value's name is taken as a Tensor)."""
        if isinstance(out, str):
            if out not in self.shapes:
                raise Unsupported(f"returned {out!r}, which is not a graph value")
            return Tensor(out, self.shapes[out])
        if out is not None and not isinstance(out, (Tensor, Const)):
            raise UnsupportedError(f"{self.where()}: its converter returned {type(out).__name__}; converters "
                                   f"return an attribx.translation.Tensor (ctx.emit's result), a Const or None per "
                                   f"ONNX output")
        return out

    def _fold(self, node, present) -> None:
        self.node = node
        try:
            outs = self.folder.run(node, {i: self.const_pair(i) for i in dict.fromkeys(present)})
        except AttribxError:
            raise
        except Exception as err:
            raise UnsupportedError(f"{self.where()}: constant folding with onnx's reference evaluator failed "
                                   f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
        for tensor, c in zip(node.output, outs):
            if tensor and c is not None:
                self.consts[tensor] = c

    def _bind(self, node, outs) -> None:
        """Record what each ONNX output became; check shapes against ONNX's inference."""
        for tensor, out in zip(node.output, outs):
            if not tensor:
                continue
            if out is None:
                readers = [c for c in self.consumers.get(tensor, []) if id(c) not in self.skip]
                if readers or tensor in self.graph_outputs:
                    raise UnsupportedError(f"{self.where()}: output {tensor!r} is used but has no translation; "
                                           f"{HOOK_HINT}")
                continue
            if isinstance(out, Const):
                self.consts[tensor] = out
                continue
            self.bind_tensor(tensor, out)

    def bind_tensor(self, tensor: str, value: Tensor) -> None:
        """ONNX tensor ``tensor`` is the graph value ``value`` (its name an alias of it)."""
        self.values[tensor] = value
        if tensor not in self.aliases:
            self.alias(tensor, value.name)
        self._check_shape(tensor, value)

    def _check_shape(self, tensor: str, value: Tensor) -> None:
        want = self.inferred.get(tensor)
        if want is None:
            return
        batch = batch_axis(value)
        got = value.framework_shape
        if len(want) != len(got) or any(w is not None and g is not None and w != g
                                        for i, (w, g) in enumerate(zip(want, got)) if i != batch):
            if self.node.op_type in ("MaxPool", "AveragePool") and node_attrs(self.node).get("ceil_mode"):
                # onnx's shape inference counts a last window starting in the right padding, which the
                # spec and the runtimes drop: its shapes from here on are off, so stop comparing
                self.inferred = {}
                return
            raise UnsupportedError(f"{self.where()}: translated to shape {got}, but ONNX infers {want} for "
                                   f"{tensor!r}; this is a bug of the ONNX translation, please report it")

    def _finish(self, value: Value) -> Graph:
        outputs = []
        for o in self.graph.output:
            if o.name not in self.values:
                raise UnsupportedError(f"ONNX model output {o.name!r} is a constant: it does not depend on the "
                                       f"model's input")
            v = self.values[o.name]
            if isinstance(v, Merged):
                raise UnsupportedError(f"ONNX model output {o.name!r} holds the batch merged with other axes "
                                       f"(shape {v.framework_shape}); attribx graphs return outputs with the "
                                       f"batch axis first, on its own")
            if batch_axis(v):
                raise UnsupportedError(f"ONNX model output {o.name!r} has the batch on its axis "
                                       f"{batch_axis(v)}; attribx graphs return outputs with the batch "
                                       f"axis first (transpose it in the model, as a batch_first export does)")
            if v.name in self.int_values:
                raise UnsupportedError(f"ONNX model output {o.name!r} holds integers; attribx explains float "
                                       f"outputs")
            name = v.name
            if name == value.name:     # a model that returns its input still gets a node to explain
                self.main = o.name
                name = self.emit("identity", [name], name=self.unique(o.name)).name
            outputs.append(name)
        needed = set(outputs)
        for node in reversed(self.nodes):
            if node.name in needed:
                needed.update(node.inputs)
        self.nodes = [n for n in self.nodes if n.name in needed]
        kept = {n.name for n in self.nodes} | {value.name} | {m.name for m in self.masks}
        self.aliases = {k: v for k, v in self.aliases.items() if v in kept and k not in kept}
        meta = {"backend": "onnx", "framework": "onnx", "engines": ["torch", "numpy"], "opset": self.opset,
                "input_shape": list(value.shape[1:])}
        producer = f"{self.model.producer_name} {self.model.producer_version}".strip()
        if producer:
            meta["producer"] = producer
        if self.sequence_input and len(value.shape) == 3:
            value = replace(value, dims=layout_dims("NTE", 3))
        if self.masks:
            meta["mask_inputs"] = [m.name for m in self.masks]
        graph = self.finish([value, *self.masks], outputs, **meta)
        channel = input_channel_axis(graph)
        if channel is not None and channel == len(value.shape) - 1 and channel != 1 \
                and len(value.shape) in CHANNELS_LAST:
            # channels-last input (a Keras export transposes it for its convs): relevance keeps that layout
            graph = Graph([replace(value, dims=layout_dims(CHANNELS_LAST[len(value.shape)], len(value.shape))),
                           *self.masks], graph.nodes, graph.outputs, graph.meta)
        return graph


def _upgrade(model):
    """A model older than :data:`MIN_OPSET`, converted with onnx's version converter."""
    from onnx import version_converter            # lazy: onnx loads only when a model is translated
    opset = default_opset(model)
    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as err:
        raise UnsupportedError(f"ONNX model {model.graph.name!r} uses opset {opset}; attribx translates opset "
                               f"{MIN_OPSET} and newer, and onnx's version converter failed "
                               f"({' '.join(str(err).split())[:200]})") from None


def translate_onnx(model, input_shape=None, converters=()) -> Graph:
    """The attribx graph of an ``onnx.ModelProto``; ``input_shape`` (one sample, no batch axis) fills
    sizes the model leaves free and must match the ones it declares; ``converters``: the plugins'
    :class:`~attribx.translation.Converter` records, layered over the built-in ones for this translation."""
    if input_shape is not None:
        try:
            input_shape = tuple(int(d) for d in input_shape)
        except (TypeError, ValueError):
            raise InputError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    problem = model_problem(model)
    if problem:
        raise UnsupportedError(f"not a usable ONNX model: {problem}")
    if default_opset(model) < MIN_OPSET:
        model = _upgrade(model)
    return OnnxTranslator(model, input_shape, TABLE.with_plugins(converters), registry().ops).run()
