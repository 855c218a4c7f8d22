"""The walk over a Keras model: layer by layer for a Sequential, node by node in Keras's own topological
order for a functional model, nested models in place; each layer goes to its converter.

:class:`KerasTranslator` is the kit's :class:`~attribx.translation.Translator` for Keras: it adds the
shape inference (Keras leaves the batch size free, so each node's shape comes from its op), a shared
transpose per value and target order, and Keras's layout helpers (``keras_order``, ``channels_first``).
"""
from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from attribx.errors import AttribxError, InputError, UnsupportedError
from attribx.graph import Graph, Value, layout_dims
from attribx.inputs import first_shape
from attribx.plugins import registry
from attribx.translation import ConverterTable, Tensor, TranslationError, Translator

from .common import HOOK_HINT, TABLE, Unsupported, channels_first_order, class_path
from .mask_inputs import is_integer, mask_inputs, mask_only_inputs
from .masks import KTensor, check_mask, mask_kwarg, mask_only_nodes, pass_mask, refuse_mask_readers

#: Input layouts by rank for channels-last Keras models (letters of attribx.graph.LAYOUT_LETTERS).
CHANNELS_LAST_LAYOUTS = {2: "NF", 3: "NLC", 4: "NHWC", 5: "NDHWC"}

_NEW_OPS_HINT = "new graph ops come through the 'attribx_ops' hook, whole backends through 'attribx_translate'"


class KerasTranslator(Translator):
    """Translates one Keras model. What converters read besides the kit's surface: ``input_name`` (the
    graph input), ``indices`` (the input holds token ids), and the recurrent bookkeeping
    ``sequence_input`` / ``masked_input``."""

    framework = "keras"

    def __init__(self, model, input_shape, table: ConverterTable = TABLE):
        super().__init__(model.name, np.float32, reserved=())
        self.model = model
        self.input_shape = input_shape
        self.table = table
        self.ops = registry().ops
        self.shapes: dict[str, tuple] = {}
        self.bare: dict[str, list[str]] = {}      # inner layer name -> prefixed names (nested models)
        self._reordered: dict[tuple, Tensor] = {}  # (value, target order) -> transposed value
        self.input_name = ""
        self.indices = False
        self.sequence_input = False     # a recurrent layer reads the input (directly or through Masking)
        self.masked_input = None        # the Masking output of the graph input, if any
        self._call = None               # (Keras node, translated value by id of its tensors) of the layer now
        self.mask_values: list[Value] = []  # further inputs that are masks (attention_mask)

    # -- nodes: the kit's, with shapes inferred -------------------------------------------------------
    def _append(self, name, op, inputs, params, source, attrs):
        ins = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        params = {k: np.asarray(v) for k, v in (params or {}).items() if v is not None}
        opdef = self.ops[op]
        shape = tuple(opdef.infer(opdef.resolve_attrs(name, attrs), [self.shapes[i] for i in ins], params, name))
        super()._append(name, op, ins, params, source, attrs)
        self.shapes[name] = shape
        return name

    def emit(self, op: str, inputs: Sequence[Tensor | str], shape: Sequence | None = None, attrs: dict | None = None,
             params: dict | None = None, name: str | None = None, order: Sequence[int] | None = None) -> KTensor:
        """The kit's :meth:`~attribx.translation.Translator.emit` with the shape inferred by the op (the
        batch size stays free); a ``shape`` given must agree. A second node of the layer without a name
        gets ``layer_1``."""
        if name is None:
            name = self.main if self.main not in self.shapes else self.unique(self.main)
        ins = [i if isinstance(i, str) else i.name for i in inputs]
        node = self._append(name, op, ins, params, "", dict(attrs or {}))
        got = self.shapes[node]
        if shape is not None and tuple(shape) != got:
            raise TranslationError(f"{self.where()}: node {node!r} has shape {got}, expected {tuple(shape)}")
        return KTensor(node, got, None if order is None else tuple(order))

    def value(self, name: str) -> KTensor:
        """A node added by name (``add_node``, e.g. by the recurrent unrollers) as a value in graph order."""
        return KTensor(name, self.shapes[name])

    # -- axis order ----------------------------------------------------------------------------------
    def reorder(self, t: Tensor, order: Sequence[int] | None = None, suffix: str = "order") -> Tensor:
        """The kit's reorder, with one transpose per value and target order, shared by all readers."""
        target = tuple(range(t.rank)) if order is None else tuple(order)
        if (tuple(range(t.rank)) if t.order is None else tuple(t.order)) == target:
            return t
        key = (t.name, target)
        if key not in self._reordered:
            self._reordered[key] = super().reorder(t, order, suffix)
        return self._reordered[key]

    def keras_order(self, t: Tensor) -> Tensor:
        """``t`` stored in Keras's own axis order (for layout-sensitive layers and the model's outputs)."""
        return self.reorder(t, None, "nhwc" if t.rank == 4 else "channels_last")

    def channels_first(self, t: Tensor, channels_last: bool = True) -> Tensor:
        """``t`` as (N, C, *spatial) for conv and pooling (Keras ``channels_first`` layers: Keras order)."""
        if not channels_last:
            return self.keras_order(t)
        return self.reorder(t, channels_first_order(t.rank), "nchw" if t.rank == 4 else "channels_first")

    # -- the walk ------------------------------------------------------------------------------------
    def run(self) -> Graph:
        model = self.model
        if not model.built:
            if self.input_shape is None:
                raise InputError(f"Keras model {model.name!r} is not built and no input shape is known; "
                                 f"pass one sample's shape: attribx.translate(model, input_shape=(32, 32, 3))")
            model.build((None, *first_shape(self.input_shape)))
        inputs = list(getattr(model, "inputs", None) or [])
        masks = mask_inputs(model)
        given = self._given_shapes(inputs, masks)
        floats = [t for t in mask_only_inputs(model) if not is_integer(t)]
        if floats:
            raise UnsupportedError(
                f"Keras model {model.name!r} has {len(inputs) - len(masks)} inputs besides its mask inputs: "
                f"{', '.join(repr(t._keras_history[0].name) for t in floats)} only reach MultiHeadAttention as "
                f"attention_mask, value_mask or key_mask but are real-valued (a bias added to the scores, or a "
                f"mask?); give a mask an integer or boolean Input (keras.Input(..., dtype='int32')) to make it a "
                f"mask input")
        kshape = tuple(inputs[0].shape[1:]) if inputs else None
        dtype = str(inputs[0].dtype) if inputs else str(model.dtype_policy.variable_dtype)
        shape = self._input_shape(kshape)
        self.np_dtype = np.dtype(np.float64 if dtype == "float64" else np.float32)
        self.indices = "int" in dtype or _feeds_embeddings(model)
        if self.indices:       # token ids: the graph input holds indices for embedding lookups
            dtype = "int64"
            self.np_dtype = np.dtype(np.float64 if str(model.dtype_policy.variable_dtype) == "float64"
                                     else np.float32)
        elif dtype not in ("float32", "float64"):
            dtype = "float32"
        in_name = inputs[0]._keras_history[0].name if inputs else "input"
        self.used.add(in_name)
        self.input_name = in_name
        full = (None, *shape)
        self.shapes[in_name] = full
        # further inputs, in the model's order: mask inputs (they only decide), else real-valued signals
        further = [self._mask_input(t, g or shape) if any(t is m for m in masks) else self._further_input(t, g)
                   for t, g in zip(inputs[1:], given[1:])]
        more = [v for v in further if all(v is not m for m in self.mask_values)]
        outs = self.walk(model, [KTensor(in_name, full)] + [KTensor(v.name, v.shape) for v in further], prefix="")
        layout = None
        if self.indices:
            layout = ("sample",) + tuple("token" if i == 0 else f"position_{i}" for i in range(len(full) - 1))
        elif self.sequence_input and len(full) == 3:
            layout = ("sample", "token", "embedding")    # a recurrent layer reads the input: embedded tokens
        elif keras.config.image_data_format() == "channels_last":
            layout = CHANNELS_LAST_LAYOUTS.get(len(full))
        value = Value(in_name, full, dtype, layout_dims(layout, len(full)))
        self.origin = ""
        finals = []
        for o in outs:
            self.main = o.name
            o = self.keras_order(o)
            if o.name == in_name:    # a model that returns its input still gets a node to explain
                o = self.emit("identity", [o], name=self.unique("output"), order=o.order)
            finals.append(o)
        return self._finish([value] + further, finals,
                            shape if not more else [shape] + [list(v.shape[1:]) for v in more])

    def _given_shapes(self, inputs, masks) -> list:
        """One sample's shape per Keras input (None where not given); ``self.input_shape`` becomes the first's.
        Several are given as a tuple (in the model's input order; mask inputs at its end may be left out) or a
        dict by input name."""
        given = self.input_shape
        names = [t._keras_history[0].name for t in inputs]
        if isinstance(given, dict):
            unknown = [k for k in given if k not in names]
            if unknown:
                raise InputError(f"input(s) {', '.join(map(repr, unknown))}: Keras model {self.model.name!r} takes "
                                 f"{', '.join(map(repr, names))}")
            given = [given.get(k) for k in names]
        elif given and isinstance(given[0], (tuple, list)):
            left = inputs[len(given):]
            if len(inputs) > 1 and (len(given) > len(inputs) or not all(any(t is m for m in masks) for t in left)):
                raise InputError(f"{len(given)} inputs given; Keras model {self.model.name!r} takes {len(inputs)} "
                                 f"({', '.join(map(repr, names))})")
            given = list(given) + [None] * len(left)
        else:
            given = [given] + [None] * (len(inputs) - 1)
        self.input_shape = given[0]
        return given

    def _further_input(self, t, given) -> Value:
        """A Keras input after the first that is not a mask input: a real-valued signal, in Keras's
        (channels-last) layout."""
        name = t._keras_history[0].name
        if "float" not in str(t.dtype):
            raise UnsupportedError(f"input {name!r} of Keras model {self.model.name!r} has dtype {t.dtype}; inputs "
                                   f"after the first must be real-valued signals")
        keep, self.input_shape = self.input_shape, given
        try:
            shape = self._input_shape(tuple(t.shape[1:]))
        finally:
            self.input_shape = keep
        self.used.add(name)
        full = (None, *shape)
        self.shapes[name] = full
        layout = CHANNELS_LAST_LAYOUTS.get(len(full)) if keras.config.image_data_format() == "channels_last" else None
        return Value(name, full, "float64" if "64" in str(t.dtype) else "float32", layout_dims(layout, len(full)))

    def _mask_input(self, t, shape) -> Value:
        """A mask input as a graph input in the float dtype; sizes it leaves free are taken from ``shape`` (its
        data's when given, else the explained input's)."""
        name = t._keras_history[0].name
        sample = tuple(d if d is not None else (shape[i] if i < len(shape) else None) for i, d in
                       enumerate(t.shape[1:]))
        if None in sample:
            raise UnsupportedError(f"Keras model input {name!r} (a mask) leaves sizes free that the explained input "
                                   f"does not fix: {tuple(t.shape)}")
        self.used.add(name)
        full = (None, *sample)
        self.shapes[name] = full
        self.mask_values.append(Value(name, full, self.np_dtype.name, layout_dims("NT" if len(full) == 2 else None,
                                                                                  len(full))))
        return self.mask_values[-1]

    def _input_shape(self, kshape):
        given = None if self.input_shape is None else tuple(int(d) for d in self.input_shape)
        if kshape is None:
            if given is None:
                raise InputError("the Keras model declares no input shape; pass one sample's shape")
            return given
        if given is not None:
            if len(given) != len(kshape) or any(k is not None and k != g for k, g in zip(kshape, given)):
                raise InputError(f"input shape {given} does not fit the Keras model's input shape "
                                 f"{tuple(kshape)} (one sample, no batch axis)")
            return given
        if any(d is None for d in kshape):
            raise InputError(f"the Keras model's input shape {tuple(kshape)} has free sizes; pass one sample's "
                             f"shape: attribx.translate(model, input_shape=...) (explain and forward pass the "
                             f"data's shape)")
        return tuple(int(d) for d in kshape)

    def walk(self, model, inputs: list, prefix: str) -> list:
        """Translate ``model`` applied to ``inputs``; returns its outputs. Nested models recurse."""
        if isinstance(model, keras.Sequential):
            xs = inputs
            for layer in model.layers:
                y = self.layer_call(layer, xs, prefix)
                if isinstance(y, list):
                    raise UnsupportedError(f"layer {prefix + layer.name!r} ({class_path(layer)}) has {len(y)} "
                                           f"outputs, which a Sequential model cannot pass on; build the model "
                                           f"with the functional API")
                xs = [y]
            return xs
        if not hasattr(model, "_nodes_by_depth"):
            raise UnsupportedError(f"Keras model {model.name!r} ({class_path(model)}) is a subclassed model; "
                                   f"attribx translates Sequential and functional models (rebuild it with the "
                                   f"functional API); {HOOK_HINT}")
        env: dict[int, Tensor] = {}
        for t, v in zip(model.inputs, inputs):
            env[id(t)] = v
        mask_only = mask_only_nodes(model)
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                op = node.operation
                if isinstance(op, keras.layers.InputLayer) or id(node) in mask_only:
                    continue     # mask computations: the translation carries masks on its values (KTensor.mask)
                masks = {id(t) for t in mask_kwarg(node)}
                if any(id(t) not in env for t in node.input_tensors if id(t) not in masks):
                    continue     # a branch that does not start at the model's input (unused here)
                xs = [env[id(t)] for t in node.input_tensors if id(t) not in masks]
                if masks:
                    check_mask(node, xs, f"layer {prefix + op.name!r} ({class_path(op)})")
                self._call = (node, {id(t): env[id(t)] for t in node.input_tensors if id(t) in env})
                y = self.layer_call(op, xs, prefix)
                self._call = None
                ys = y if isinstance(y, list) else [y]
                outs = node.output_tensors
                if len(outs) != len(ys):
                    raise UnsupportedError(f"layer {op.name!r} ({class_path(op)}) has {len(outs)} outputs; "
                                           f"attribx translates single-output layers and recurrent layers' "
                                           f"return_state")
                for t, v in zip(outs, ys):
                    env[id(t)] = v
        missing = [t for t in model.outputs if id(t) not in env]
        if missing:
            raise UnsupportedError(f"Keras model {model.name!r}: output {missing[0].name} is not computed "
                                   f"from the model's input")
        return [env[id(t)] for t in model.outputs]

    def call_argument(self, name: str, position: int | None = None):
        """An argument of the current layer's call in a functional model (by ``position``, else by keyword
        ``name``): a tensor's translated value, any other value as given, None when left out or outside a
        functional model."""
        if self._call is None:
            return None
        node, values = self._call
        args, kwargs = node.arguments.args, node.arguments.kwargs
        v = args[position] if position is not None and position < len(args) else kwargs.get(name)
        return values.get(id(v)) if isinstance(v, keras.KerasTensor) else v

    def layer_call(self, layer, xs: list, prefix: str):
        """One layer (or keras.ops operation) through its converter: ``convert(ctx, layer, inputs)``."""
        if isinstance(layer, keras.layers.InputLayer):
            return xs[0]
        if isinstance(layer, keras.Model):
            inner = self.walk(layer, xs, prefix + layer.name + "/")
            if len(inner) != 1:
                raise UnsupportedError(f"nested model {layer.name!r} has {len(inner)} outputs; attribx "
                                       f"translates nested models with one output")
            return inner[0]
        conv = self.table.lookup(type(layer))
        kind = "layer" if isinstance(layer, keras.layers.Layer) else "operation"
        where = f"{kind} {prefix + layer.name!r} ({class_path(layer)})"
        self.origin = type(layer).__name__
        if conv is None:
            self.main = prefix + layer.name
            hint = _NEW_OPS_HINT if kind == "layer" else \
                f"keras.ops calls in a functional model are not translated (use layers); {_NEW_OPS_HINT}"
            raise self.no_translation(f"{kind} {class_path(layer)}", hint)
        self.main = self.unique(prefix + layer.name)     # a shared layer's second call: name_1
        if prefix:
            self.bare.setdefault(layer.name, []).append(self.main)
        n_before = len(self.nodes)
        reads_mask = conv.options.get("reads_mask", False)
        try:
            if not reads_mask:
                refuse_mask_readers(layer, xs)
            y = conv.convert(self, layer, xs)
            _check_result(y, conv)
            if not reads_mask:
                y = pass_mask(layer, xs, y)
        except Unsupported as err:
            raise UnsupportedError(f"{where}: {err}; {HOOK_HINT}") from None
        except AttribxError:
            raise
        except (AttributeError, TypeError, ValueError, IndexError) as err:
            # a setting this translation does not know (a newer Keras, a subclass): name the layer
            raise UnsupportedError(f"{where} cannot be translated: {type(err).__name__}: {err}; "
                                   f"{HOOK_HINT}") from None
        names = {n.name for n in self.nodes[n_before:]}
        if self.main not in names:
            # dropped (dropout, identity): the layer's name addresses the value it passes on
            self.alias(self.main, (y[0] if isinstance(y, list) else y).name)
        return y

    def _finish(self, values: list[Value], outputs: list, shape) -> Graph:
        """The graph of the nodes the outputs need, with the aliases that still name one of them."""
        needed = {o.name for o in outputs}
        for node in reversed(self.nodes):
            if node.name in needed:
                needed.update(node.inputs)
        self.nodes = [n for n in self.nodes if n.name in needed]
        names = {n.name for n in self.nodes} | {v.name for v in values}
        aliases = {k: v for k, v in self.aliases.items() if v in names}
        for bare, full in self.bare.items():   # inner names of nested models, where unambiguous
            if bare not in self.used and len(full) == 1:
                aliases[bare] = aliases.get(full[0], full[0])
        self.aliases = aliases
        meta = {"mask_inputs": [m.name for m in self.mask_values]} if self.mask_values else {}
        return self.finish(list(values), [o.name for o in outputs], backend="keras", framework="tensorflow",
                           keras_version=keras.__version__, input_shape=list(shape), **meta)


def _check_result(y, conv) -> None:
    """A converter returns a translated value or a list of them (a plugin's mistake names the plugin)."""
    ys = y if isinstance(y, list) else [y]
    if not ys or not all(isinstance(v, Tensor) for v in ys):
        raise UnsupportedError(f"the Keras converter {conv.origin} returned {y!r}, not an attribx.translation."
                               f"Tensor (or a list of them): return what ctx.emit returns")


def _feeds_embeddings(model) -> bool:
    """Whether a model's first layer (after its input) is an Embedding: its input holds token ids."""
    layers = [la for la in getattr(model, "layers", []) if type(la).__name__ != "InputLayer"]
    return bool(layers) and type(layers[0]).__name__ == "Embedding"


def translate_keras(model, input_shape, converters=()) -> Graph:
    """The attribx graph of a Keras 3 model; ``input_shape`` (one sample, no batch axis) fills free sizes;
    ``converters`` (plugins' :class:`~attribx.translation.Converter` records) replace or add to the
    built-in ones for this translation."""
    several = isinstance(input_shape, dict) or bool(input_shape) and isinstance(input_shape[0], (tuple, list))
    if input_shape is not None and not several:     # several (one per input) are checked input by input
        try:
            input_shape = tuple(int(d) for d in input_shape)
        except (TypeError, ValueError):
            raise InputError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    if not isinstance(model, keras.Model) and several:
        input_shape = first_shape(input_shape)
    if not isinstance(model, keras.Model):
        # a bare layer: wrap it, so that it translates like a one-layer model
        if input_shape is None:
            raise InputError(f"translating the Keras layer {model.name!r} needs one sample's input shape")
        model = keras.Sequential([keras.Input(input_shape), model], name=model.name)
    table = TABLE.with_plugins(converters) if converters else TABLE
    return KerasTranslator(model, input_shape, table).run()
