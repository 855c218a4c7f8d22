"""Translate a Keras 3 model into the attribx graph, keeping Keras's layer names and the user's layout.

``translate_keras(model, input_shape)`` walks a ``keras.Sequential`` layer by layer, or a functional
``keras.Model`` node by node in Keras's own topological order; nested models are walked in place
(flattened), their nodes named ``outer/inner`` (the bare inner name also resolves, as an alias, when it
is unique). Every main node is named after its Keras layer; extra nodes a layer needs carry the layer's
name and a suffix after a colon, as in the torch backend (``dense_1:activation``, ``conv1:nchw``).

Layout. Keras is channels-last, the graph's conv, pool and batch-norm ops are channel-first. Each
translated tensor therefore carries ``perm``: axis ``i`` of our value is Keras's axis ``perm[i]``.
Layout-agnostic layers (activations, add, dropout, batch norm or softmax or concat with a remapped
axis) keep the permutation, conv and pooling want channel-first and get one transpose when the value
is not already so, and layout-sensitive layers (Flatten, Reshape, Dense on >2-D input, Permute, model
outputs) get a transpose back to Keras order first. A VGG-style ``conv ... conv, flatten`` thus has
one transpose after the input and one before the flatten, and Flatten flattens in H, W, C order exactly
as Keras does. The graph input keeps the user's layout (``NHWC``), so relevance comes back in it.

A layer without a translation, and any setting the graph cannot express exactly, raises
:class:`attribx.UnsupportedError` naming the layer, its class and the hooks that add more.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from attribx.builder import unique_name
from attribx.errors import AttribxError, InputError, UnsupportedError
from attribx.graph import Graph, Node, Value, layout_dims

__all__ = ["translate_keras", "HOOK_HINT"]

HOOK_HINT = ("a plugin can add ops through the 'attribx_ops' hook and translations through "
             "'attribx_translate'")

#: Input layouts by rank for channels-last Keras models (letters of attribx.graph.LAYOUT_LETTERS).
CHANNELS_LAST_LAYOUTS = {2: "NF", 3: "NLC", 4: "NHWC", 5: "NDHWC"}


class _Unsupported(Exception):
    """Raised inside a layer's translation; the walk turns it into an UnsupportedError naming the layer."""


@dataclass
class V:
    """A translated Keras tensor: the graph value, its graph shape, and how its axes map to Keras's."""

    name: str
    shape: tuple            # our shape, batch axis None
    perm: tuple             # our axis i is Keras axis perm[i]
    mask: Any = None        # Keras's padding mask on this tensor: a V (N, steps) of 0/1, an _OpaqueMask, or None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def keras_shape(self) -> tuple:
        out = [None] * self.rank
        for i, k in enumerate(self.perm):
            out[k] = self.shape[i]
        return tuple(out)


@dataclass(frozen=True)
class _OpaqueMask:
    """A padding mask that a layer computed in a way the translation does not follow: harmless unless a
    layer reads it."""

    reason: str


def _identity(n: int) -> tuple:
    return tuple(range(n))


def _channels_first(n: int) -> tuple:
    """Keras axes in channel-first order: batch, channel (last), then the spatial axes."""
    return (0, n - 1) + tuple(range(1, n - 1))


def _np(v) -> np.ndarray:
    """A Keras variable or tensor (or an array, a number) as a numpy array of its own.

    Through ``.numpy()``, not ``np.array(v)`` / ``keras.ops.convert_to_numpy(v)``: the ``__array__`` of Keras
    variables and TensorFlow tensors takes no ``copy`` keyword, which NumPy 2 warns about on every call."""
    if hasattr(v, "numpy") and not isinstance(v, np.ndarray):
        v = v.numpy()
    return np.array(v)


def _class_path(layer) -> str:
    cls = type(layer)
    mod = cls.__module__
    if mod.startswith("keras.src.layers") or mod.startswith("keras.src.models"):
        mod = "keras.layers" if mod.startswith("keras.src.layers") else "keras.models"
    elif mod.startswith("keras.src.ops"):
        mod = "keras.ops"
    return f"{mod}.{cls.__qualname__}"


def _is_model(layer) -> bool:
    import keras
    return isinstance(layer, keras.Model)


# ----------------------------------------------------------------------------------------------
# the translation


class _Translation:
    def __init__(self, model, input_shape):
        from attribx.plugins import registry
        self.model = model
        self.input_shape = input_shape
        self.ops = registry().ops
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple] = {}
        self.used: set[str] = set()
        self.aliases: dict[str, str] = {}
        self.bare: dict[str, list[str]] = {}      # inner layer name -> prefixed names (nested models)
        self.transposed: dict[tuple, V] = {}      # (value, target perm) -> transposed value
        self.main = ""
        self.layer = None
        self.np_dtype = np.float32
        self.sequence_input = False     # a recurrent layer reads the input (directly or through Masking)
        self.masked_input = None        # the Masking output of the graph input, if any

    # -- names and nodes ------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        return unique_name(base, self.used)

    def sub(self, suffix: str) -> str:
        return self.unique(f"{self.main}:{suffix}")

    def emit(self, op: str, inputs, perm, attrs=None, params=None, name=None) -> V:
        """Add a node (named after the current layer unless ``name``); its shape from the op's inference."""
        if name is None:
            name = self.main if self.main not in self.shapes else self.unique(self.main)
        ins = tuple(i.name for i in inputs)
        params = {k: np.asarray(v) for k, v in (params or {}).items() if v is not None}
        opdef = self.ops[op]
        attrs = dict(attrs or {})
        shape = tuple(opdef.infer(opdef.resolve_attrs(name, attrs), [self.shapes[i] for i in ins], params, name))
        source = type(self.layer).__name__ if self.layer is not None else ""
        self.nodes.append(Node(name, op, ins, attrs, params, None, source))
        self.shapes[name] = shape
        return V(name, shape, tuple(perm))

    def const(self, value, suffix="const") -> V:
        arr = np.asarray(value, dtype=np.float64).astype(self.np_dtype)
        name = self.sub(suffix)
        self.nodes.append(Node(name, "constant", (), {}, {"value": arr}, None, "constant"))
        self.shapes[name] = tuple(arr.shape)
        return V(name, tuple(arr.shape), _identity(arr.ndim))

    def to_perm(self, v: V, target: tuple, suffix: str) -> V:
        """``v`` with its axes in ``target`` order (Keras axes); one transpose node, shared by all readers."""
        target = tuple(target)
        if v.perm == target:
            return v
        key = (v.name, target)
        if key not in self.transposed:
            attr = tuple(v.perm.index(t) for t in target)
            self.transposed[key] = self.emit("transpose", [v], target, {"perm": attr}, name=self.sub(suffix))
        return self.transposed[key]

    def keras_order(self, v: V) -> V:
        return self.to_perm(v, _identity(v.rank), "nhwc" if v.rank == 4 else "channels_last")

    def channel_first(self, v: V, channels_last: bool = True) -> V:
        """``v`` as (N, C, *spatial) for conv and pooling (Keras ``channels_first`` layers: Keras order)."""
        if not channels_last:
            return self.keras_order(v)
        return self.to_perm(v, _channels_first(v.rank), "nchw" if v.rank == 4 else "channels_first")

    # -- the walk -------------------------------------------------------------------------------
    def run(self) -> Graph:
        import keras
        model = self.model
        if not model.built:
            if self.input_shape is None:
                raise InputError(f"Keras model {model.name!r} is not built and no input shape is known; "
                                 f"pass one sample's shape: attribx.translate(model, input_shape=(32, 32, 3))")
            model.build((None, *self.input_shape))
        inputs = list(getattr(model, "inputs", None) or [])
        if len(inputs) > 1:
            raise UnsupportedError(f"Keras model {model.name!r} has {len(inputs)} inputs; attribx graphs "
                                   f"explain models with one input for now")
        kshape = tuple(inputs[0].shape[1:]) if inputs else None
        dtype = str(inputs[0].dtype) if inputs else str(model.dtype_policy.variable_dtype)
        shape = self._input_shape(kshape)
        self.np_dtype = np.float64 if dtype == "float64" else np.float32
        self.indices = "int" in dtype or _feeds_embeddings(model)
        if self.indices:       # token ids: the graph input holds indices for embedding lookups
            dtype = "int64"
            self.np_dtype = np.float64 if str(model.dtype_policy.variable_dtype) == "float64" else np.float32
        elif dtype not in ("float32", "float64"):
            dtype = "float32"
        in_name = inputs[0]._keras_history[0].name if inputs else "input"
        self.used.add(in_name)
        self.input_name = in_name
        full = (None, *shape)
        self.shapes[in_name] = full
        x = V(in_name, full, _identity(len(full)))
        outs = self.walk(model, [x], prefix="")
        layout = None
        if self.indices:
            layout = ("sample",) + tuple("token" if i == 0 else f"position_{i}" for i in range(len(full) - 1))
        elif self.sequence_input and len(full) == 3:
            layout = ("sample", "token", "embedding")    # a recurrent layer reads the input: embedded tokens
        elif keras.config.image_data_format() == "channels_last":
            layout = CHANNELS_LAST_LAYOUTS.get(len(full))
        value = Value(in_name, full, dtype, layout_dims(layout, len(full)))
        self.layer = None
        finals = []
        for o in outs:
            self.main = o.name
            o = self.keras_order(o)
            if o.name == in_name:    # a model that returns its input still gets a node to explain
                o = self.emit("identity", [o], o.perm, name=self.unique("output"))
            finals.append(o)
        return self._finish(value, finals, shape)

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

    def walk(self, model, inputs: list[V], prefix: str) -> list[V]:
        """Translate ``model`` applied to ``inputs``; returns its outputs. Nested models recurse."""
        import keras
        if isinstance(model, keras.Sequential):
            xs = inputs
            for layer in model.layers:
                y = self.layer_call(layer, xs, prefix)
                if isinstance(y, list):
                    raise UnsupportedError(f"layer {prefix + layer.name!r} ({_class_path(layer)}) has {len(y)} "
                                           f"outputs, which a Sequential model cannot pass on; build the model "
                                           f"with the functional API")
                xs = [y]
            return xs
        if not hasattr(model, "_nodes_by_depth"):
            raise UnsupportedError(f"Keras model {model.name!r} ({_class_path(model)}) is a subclassed model; "
                                   f"attribx translates Sequential and functional models (rebuild it with the "
                                   f"functional API); {HOOK_HINT}")
        env: dict[int, V] = {}
        for t, v in zip(model.inputs, inputs):
            env[id(t)] = v
        mask_only = _mask_only_nodes(model)
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                op = node.operation
                if isinstance(op, keras.layers.InputLayer) or id(node) in mask_only:
                    continue     # mask computations: the translation carries masks on its values (V.mask)
                masks = {id(t) for t in _mask_kwarg(node)}
                if any(id(t) not in env for t in node.input_tensors if id(t) not in masks):
                    continue     # a branch that does not start at the model's input (unused here)
                xs = [env[id(t)] for t in node.input_tensors if id(t) not in masks]
                if masks:
                    self._check_mask(node, xs, prefix)
                y = self.layer_call(op, xs, prefix)
                ys = y if isinstance(y, list) else [y]
                outs = node.output_tensors
                if len(outs) != len(ys):
                    raise UnsupportedError(f"layer {op.name!r} ({_class_path(op)}) has {len(outs)} outputs; "
                                           f"attribx translates single-output layers and recurrent layers' "
                                           f"return_state")
                for t, v in zip(outs, ys):
                    env[id(t)] = v
        missing = [t for t in model.outputs if id(t) not in env]
        if missing:
            raise UnsupportedError(f"Keras model {model.name!r}: output {missing[0].name} is not computed "
                                   f"from the model's input")
        return [env[id(t)] for t in model.outputs]

    def _check_mask(self, node, xs: list[V], prefix: str) -> None:
        """A functional node that Keras gives ``mask=``: it must be the mask Keras attached to the input
        (which the translation carries along), not a tensor the model passes explicitly."""
        from keras import tree
        op = node.operation
        where = f"layer {prefix + op.name!r} ({_class_path(op)})"
        first = node.arguments.args[0] if node.arguments.args else None
        attached = [getattr(t, "_keras_mask", None) for t in tree.flatten(first)]
        if any(all(g is not a for a in attached) for g in _mask_kwarg(node)):
            raise UnsupportedError(f"{where} is called with an explicit mask= tensor; attribx takes padding "
                                   f"masks from Masking and Embedding(mask_zero=True) layers only; {HOOK_HINT}")
        if all(x.mask is None for x in xs):
            raise UnsupportedError(f"{where} reads a padding mask that comes from a layer whose mask the "
                                   f"translation does not compute; {HOOK_HINT}")

    def layer_call(self, layer, xs: list[V], prefix: str) -> V:
        import keras
        if isinstance(layer, keras.layers.InputLayer):
            return xs[0]
        if _is_model(layer):
            inner = self.walk(layer, xs, prefix + layer.name + "/")
            if len(inner) != 1:
                raise UnsupportedError(f"nested model {layer.name!r} has {len(inner)} outputs; attribx "
                                       f"translates nested models with one output")
            return inner[0]
        handler = _handler(layer)
        kind = "layer" if isinstance(layer, keras.layers.Layer) else "operation"
        where = f"{kind} {prefix + layer.name!r} ({_class_path(layer)})"
        if handler is None:
            hint = "" if kind == "layer" else " (keras.ops calls in a functional model are not translated; use layers)"
            raise UnsupportedError(f"{where} has no translation to the attribx graph{hint}; {HOOK_HINT}")
        self.layer = layer
        self.main = self.unique(prefix + layer.name)     # a shared layer's second call: name_1
        if prefix:
            self.bare.setdefault(layer.name, []).append(self.main)
        n_before = len(self.nodes)
        try:
            reads_mask = getattr(handler, "reads_mask", False)
            if not reads_mask:
                _refuse_mask_readers(layer, xs)
            y = handler(self, layer, xs)
            if not reads_mask:
                y = _pass_mask(layer, xs, y)
        except _Unsupported as err:
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
            self.aliases[self.main] = (y[0] if isinstance(y, list) else y).name
        return y

    def _finish(self, value: Value, outputs: list[V], shape) -> Graph:
        import keras
        needed = {o.name for o in outputs}
        for node in reversed(self.nodes):
            if node.name in needed:
                needed.update(node.inputs)
        nodes = [n for n in self.nodes if n.name in needed]
        names = {n.name for n in nodes} | {value.name}
        aliases = {k: v for k, v in self.aliases.items() if v in names}
        for bare, full in self.bare.items():   # inner names of nested models, where unambiguous
            if bare not in self.used and len(full) == 1:
                aliases[bare] = aliases.get(full[0], full[0])
        meta = {"name": self.model.name, "backend": "keras", "framework": "tensorflow",
                "keras_version": keras.__version__, "input_shape": list(shape)}
        if aliases:
            meta["aliases"] = aliases
        graph = Graph([value], nodes, [o.name for o in outputs], meta)
        return graph


def _mask_kwarg(node) -> list:
    """The Keras tensors a functional node was given as ``mask=`` (Keras adds the input's mask there)."""
    from keras import tree
    args = getattr(node, "arguments", None)
    m = None if args is None else args.kwargs.get("mask")
    return [t for t in tree.flatten(m) if hasattr(t, "_keras_history")] if m is not None else []


def _mask_only_nodes(model) -> set:
    """ids of a functional model's nodes that only compute masks (the not_equal/any that Masking and
    Embedding(mask_zero) record): their results reach the model's outputs only through ``mask=``."""
    uses: dict[int, list] = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            masks = {id(t) for t in _mask_kwarg(node)}
            for t in node.input_tensors:
                uses.setdefault(id(t), []).append((node, id(t) in masks))
    outputs = {id(t) for t in model.outputs}
    mask_only: set = set()
    for depth in sorted(model._nodes_by_depth):        # consumers before producers
        for node in model._nodes_by_depth[depth]:
            outs = node.output_tensors
            if not outs or any(id(t) in outputs or not uses.get(id(t)) for t in outs):
                continue
            if all(as_mask or id(user) in mask_only for t in outs for user, as_mask in uses[id(t)]):
                mask_only.add(id(node))
    return mask_only


# ----------------------------------------------------------------------------------------------
# layer translations: handler(ctx, layer, inputs) -> V


def _one(xs: list[V]) -> V:
    if len(xs) != 1:
        raise _Unsupported(f"takes {len(xs)} inputs, expected one")
    return xs[0]


def _activation_fn(ctx, x: V, fn, name=None) -> V:
    """The node(s) of a Keras activation function; ``linear`` adds nothing."""
    import keras
    fname = getattr(fn, "__name__", str(fn))
    if fname == "linear" or fn is None:
        return x
    emit = lambda op, **attrs: ctx.emit(op, [x], x.perm, attrs, name=name)  # noqa: E731
    if fname == "relu":
        return emit("relu")
    if fname == "relu6":
        return emit("clip", min=0.0, max=6.0)
    if fname == "sigmoid":
        return emit("sigmoid")
    if fname == "tanh":
        return emit("tanh")
    if fname in ("silu", "swish"):
        return emit("silu")
    if fname == "elu":
        return emit("elu", alpha=1.0)
    if fname == "gelu":
        return emit("gelu", approximate="none")
    if fname == "leaky_relu":
        return emit("leaky_relu", negative_slope=0.2)
    if fname == "softmax":
        return emit("softmax", axis=x.perm.index(x.rank - 1))
    if fname == "selu":
        alpha, scale = 1.6732632423543772, 1.0507009873554805
        h = ctx.emit("elu", [x], x.perm, {"alpha": alpha}, name=ctx.sub("elu"))
        return ctx.emit("mul", [h, ctx.const(scale, "scale")], x.perm, name=name)
    del keras
    raise _Unsupported(f"activation {fname!r} has no op in the graph")


def _act_name(ctx) -> str:
    return ctx.sub("activation")


def _fused_activation(ctx, layer, y: V) -> V:
    act = getattr(layer, "activation", None)
    if act is None or getattr(act, "__name__", "") == "linear":
        return y
    return _activation_fn(ctx, y, act, name=_act_name(ctx))


def _dense(ctx, layer, xs):
    x = _one(xs)
    if x.rank > 2:
        x = ctx.keras_order(x)
    if getattr(layer, "lora_enabled", False):
        w = _np(layer.kernel)      # the property merges the LoRA factors
    else:
        w = _np(layer.kernel)
    if getattr(layer, "quantization_mode", None):
        raise _Unsupported(f"quantized ({layer.quantization_mode}) kernels are not translated")
    b = _np(layer.bias) if layer.use_bias else None
    y = ctx.emit("linear", [x], x.perm, params={"weight": w.T.copy(), "bias": b})
    return _fused_activation(ctx, layer, y)


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") != "channels_first"


def _conv_padding(ctx, layer, x: V, kernel, dilation):
    """Keras padding as the graph's; 'causal' (Conv1D) becomes a pad node before a valid conv."""
    pad = layer.padding
    if pad in ("valid", "same"):
        return x, pad
    if pad == "causal":
        left = (kernel[0] - 1) * dilation[0]
        pads = [(0, 0)] * (x.rank - 2) + [(left, 0)]
        return ctx.emit("pad", [x], x.perm, {"pads": pads, "value": 0.0}, name=ctx.sub("causal_pad")), "valid"
    raise _Unsupported(f"padding {pad!r}")


def _conv(ctx, layer, xs):
    x = _one(xs)
    cl = _channels_last(layer)
    n = x.rank - 2
    x = ctx.channel_first(x, cl)
    k = _np(layer.kernel)                               # (*kernel, in/groups, out)
    w = np.transpose(k, (n + 1, n) + tuple(range(n))).copy()
    b = _np(layer.bias) if layer.use_bias else None
    dilation = tuple(layer.dilation_rate)
    x, pad = _conv_padding(ctx, layer, x, w.shape[2:], dilation)
    y = ctx.emit("conv", [x], x.perm, {"stride": tuple(layer.strides), "padding": pad,
                                      "dilation": dilation, "groups": int(getattr(layer, "groups", 1))},
                 {"weight": w, "bias": b})
    return _fused_activation(ctx, layer, y)


def _conv_transpose(ctx, layer, xs):
    """Keras's transposed conv is TensorFlow's conv input gradient for the output size Keras computes:
    the graph's conv_transpose crops (before, after) = the SAME split of what exceeds that size, or adds
    output_padding where the size exceeds the full transposed output."""
    x = _one(xs)
    cl = _channels_last(layer)
    n = x.rank - 2
    x = ctx.channel_first(x, cl)
    k = _np(layer.kernel)                               # (*kernel, out, in)
    w = np.transpose(k, (n + 1, n) + tuple(range(n))).copy()
    b = _np(layer.bias) if layer.use_bias else None
    stride, dilation = tuple(layer.strides), tuple(layer.dilation_rate)
    spatial, channels = tuple(x.shape[2:]), x.shape[1]
    out = layer.compute_output_shape((None, *spatial, channels) if cl else (None, channels, *spatial))
    out = tuple(out[1:-1] if cl else out[2:])
    pads, extra = [], []
    for size, o, kk, s, d in zip(spatial, out, w.shape[2:], stride, dilation):
        full = (size - 1) * s + (kk - 1) * d + 1
        total = max(full - o, 0)
        pads.append((total // 2, total - total // 2))
        extra.append(max(o - full, 0))
    y = ctx.emit("conv_transpose", [x], x.perm, {"stride": stride, "padding": pads, "output_padding": tuple(extra),
                                                "dilation": dilation}, {"weight": w, "bias": b})
    return _fused_activation(ctx, layer, y)


def _depthwise_weight(k: np.ndarray) -> np.ndarray:
    """Keras (*kernel, in, multiplier) as a grouped conv weight (in*multiplier, 1, *kernel), channel-major."""
    n = k.ndim - 2
    flat = k.reshape(k.shape[:n] + (k.shape[n] * k.shape[n + 1],))
    return np.transpose(flat, (n,) + tuple(range(n)))[:, None].copy()


def _depthwise(ctx, layer, xs):
    x = _one(xs)
    x = ctx.channel_first(x, _channels_last(layer))
    k = _np(layer.kernel)
    w = _depthwise_weight(k)
    b = _np(layer.bias) if layer.use_bias else None
    dilation = tuple(layer.dilation_rate)
    x, pad = _conv_padding(ctx, layer, x, w.shape[2:], dilation)
    y = ctx.emit("conv", [x], x.perm, {"stride": tuple(layer.strides), "padding": pad, "dilation": dilation,
                                      "groups": int(k.shape[-2])}, {"weight": w, "bias": b})
    return _fused_activation(ctx, layer, y)


def _separable(ctx, layer, xs):
    x = _one(xs)
    x = ctx.channel_first(x, _channels_last(layer))
    dk = _np(layer.depthwise_kernel)
    pk = _np(layer.pointwise_kernel)                     # (1, ..., in*mult, out)
    n = dk.ndim - 2
    dilation = tuple(layer.dilation_rate)
    x, pad = _conv_padding(ctx, layer, x, dk.shape[:n], dilation)
    d = ctx.emit("conv", [x], x.perm, {"stride": tuple(layer.strides), "padding": pad, "dilation": dilation,
                                      "groups": int(dk.shape[-2])}, {"weight": _depthwise_weight(dk)},
                 name=ctx.sub("depthwise"))
    pw = np.transpose(pk, (n + 1, n) + tuple(range(n))).copy()
    b = _np(layer.bias) if layer.use_bias else None
    y = ctx.emit("conv", [d], d.perm, {"stride": 1, "padding": 0}, {"weight": pw, "bias": b})
    return _fused_activation(ctx, layer, y)


def _pool(op):
    def handler(ctx, layer, xs):
        x = ctx.channel_first(_one(xs), _channels_last(layer))
        attrs = {"kernel_size": tuple(layer.pool_size), "stride": tuple(layer.strides), "padding": layer.padding}
        if op == "avg_pool":
            attrs["count_include_pad"] = False      # Keras 'same' averages over the real inputs only
        return ctx.emit(op, [x], x.perm, attrs)
    return handler


def _global_pool(kind):
    def handler(ctx, layer, xs):
        x = ctx.channel_first(_one(xs), _channels_last(layer))
        keep = bool(getattr(layer, "keepdims", False))
        if kind == "avg":
            return ctx.emit("global_avg_pool", [x], x.perm if keep else (0, 1), {"keepdims": keep})
        spatial = tuple(x.shape[2:])
        if not keep:
            p = ctx.emit("max_pool", [x], x.perm, {"kernel_size": spatial, "stride": 1, "padding": 0},
                         name=ctx.sub("pool"))
            return ctx.emit("flatten", [p], (0, 1), {"start_dim": 1, "end_dim": -1})
        return ctx.emit("max_pool", [x], x.perm, {"kernel_size": spatial, "stride": 1, "padding": 0})
    return handler


def _batch_norm(ctx, layer, xs):
    x = _one(xs)
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if len(axes) != 1:
        raise _Unsupported(f"normalises over several axes {list(axes)}")
    axis = axes[0] % x.rank
    if getattr(layer, "renorm", False):
        pass   # inference uses the moving statistics either way
    params = {"mean": _np(layer.moving_mean), "var": _np(layer.moving_variance),
              "scale": _np(layer.gamma) if layer.scale else None,
              "bias": _np(layer.beta) if layer.center else None}
    ours = x.perm.index(axis)
    if ours == x.rank - 1 and ours > 1:
        ours = -1        # features last (Dense on a sequence): the fold pass folds axis -1 into a linear
    return ctx.emit("batch_norm", [x], x.perm, {"eps": float(layer.epsilon), "axis": ours}, params)


def _activation_layer(ctx, layer, xs):
    return _activation_fn(ctx, _one(xs), layer.activation, name=ctx.main)


def _relu_layer(ctx, layer, xs):
    x = _one(xs)
    mx = None if layer.max_value is None else float(layer.max_value)
    slope = float(layer.negative_slope)
    if float(layer.threshold) != 0.0:
        raise _Unsupported(f"threshold={layer.threshold} (a shifted ReLU) has no op in the graph")
    if slope == 0.0:
        if mx is None:
            return ctx.emit("relu", [x], x.perm)
        return ctx.emit("clip", [x], x.perm, {"min": 0.0, "max": mx})
    if mx is None:
        return ctx.emit("leaky_relu", [x], x.perm, {"negative_slope": slope})
    h = ctx.emit("leaky_relu", [x], x.perm, {"negative_slope": slope}, name=ctx.sub("leaky"))
    return ctx.emit("clip", [h], x.perm, {"min": None, "max": mx})


def _leaky(ctx, layer, xs):
    x = _one(xs)
    slope = getattr(layer, "negative_slope", None)
    if slope is None:
        slope = layer.alpha
    return ctx.emit("leaky_relu", [x], x.perm, {"negative_slope": float(slope)})


def _elu(ctx, layer, xs):
    x = _one(xs)
    return ctx.emit("elu", [x], x.perm, {"alpha": float(getattr(layer, "alpha", 1.0))})


def _softmax_layer(ctx, layer, xs):
    x = _one(xs)
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise _Unsupported(f"softmax over several axes {list(axis)}")
        axis = axis[0]
    return ctx.emit("softmax", [x], x.perm, {"axis": x.perm.index(axis % x.rank)})


def _aligned(ctx, xs: list[V]) -> list[V]:
    """Operands of a merge layer in one axis order (the first's; Keras order where ranks differ)."""
    if len({x.rank for x in xs}) > 1:
        return [ctx.keras_order(x) for x in xs]
    target = xs[0].perm
    return [ctx.to_perm(x, target, "aligned") for x in xs]


def _add(ctx, layer, xs):
    xs = _aligned(ctx, xs)
    return ctx.emit("add", xs, xs[0].perm)


def _subtract(ctx, layer, xs):
    if len(xs) != 2:
        raise _Unsupported(f"takes {len(xs)} inputs, expected two")
    a, b = _aligned(ctx, xs)
    neg = ctx.emit("mul", [b, ctx.const(-1.0, "minus_one")], b.perm, name=ctx.sub("neg"))
    return ctx.emit("add", [a, neg], a.perm)


def _multiply(ctx, layer, xs):
    xs = _aligned(ctx, xs)
    y = xs[0]
    for i, x in enumerate(xs[1:]):
        last = i == len(xs) - 2
        y = ctx.emit("mul", [y, x], y.perm, name=None if last else ctx.sub(f"mul{i}"))
    return y


def _average(ctx, layer, xs):
    xs = _aligned(ctx, xs)
    s = ctx.emit("add", xs, xs[0].perm, name=ctx.sub("sum"))
    return ctx.emit("mul", [s, ctx.const(1.0 / len(xs), "inv_n")], s.perm)


def _concat(ctx, layer, xs):
    xs = _aligned(ctx, xs)
    axis = layer.axis % xs[0].rank
    return ctx.emit("concat", xs, xs[0].perm, {"axis": xs[0].perm.index(axis)})


def _flatten(ctx, layer, xs):
    x = _one(xs)
    if not _channels_last(layer):
        raise _Unsupported("data_format='channels_first'")
    x = ctx.keras_order(x)
    if x.rank == 2:
        return ctx.emit("identity", [x], x.perm)
    return ctx.emit("flatten", [x], (0, 1), {"start_dim": 1, "end_dim": -1})


def _reshape(ctx, layer, xs):
    x = ctx.keras_order(_one(xs))
    shape = tuple(int(d) for d in layer.target_shape)
    return ctx.emit("reshape", [x], _identity(len(shape) + 1), {"shape": shape})


def _permute(ctx, layer, xs):
    x = _one(xs)
    dims = (0,) + tuple(int(d) for d in layer.dims)
    attr = tuple(x.perm.index(d) for d in dims)
    return ctx.emit("transpose", [x], _identity(x.rank), {"perm": attr})


def _keras_pairs(padding, n):
    """Keras zero-padding/cropping arguments as one (before, after) pair per spatial axis."""
    if isinstance(padding, int):
        return [(padding, padding)] * n
    padding = list(padding)
    if n == 1 and len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return [tuple(padding)]
    out = []
    for p in padding:
        out.append((p, p) if isinstance(p, int) else (int(p[0]), int(p[1])))
    return out


def _spatial_axes(layer, rank) -> list[int]:
    """Keras axes of the spatial dims (1..rank-2 channels-last, 2..rank-1 channels-first)."""
    return list(range(1, rank - 1)) if _channels_last(layer) else list(range(2, rank))


def _zero_pad(ctx, layer, xs):
    x = _one(xs)
    pairs = _keras_pairs(layer.padding, x.rank - 2)
    by_keras = dict(zip(_spatial_axes(layer, x.rank), pairs))
    pads = [by_keras.get(k, (0, 0)) for k in x.perm[1:]]
    return ctx.emit("pad", [x], x.perm, {"pads": pads, "value": 0.0})


def _crop(ctx, layer, xs):
    x = _one(xs)
    pairs = _keras_pairs(layer.cropping, x.rank - 2)
    todo = [(k, lo, hi) for k, (lo, hi) in zip(_spatial_axes(layer, x.rank), pairs) if lo or hi]
    if not todo:
        return ctx.emit("identity", [x], x.perm)
    for j, (k, lo, hi) in enumerate(todo):
        axis = x.perm.index(k)
        size = x.shape[axis]
        name = None if j == len(todo) - 1 else ctx.sub(f"axis{k}")
        x = ctx.emit("slice", [x], x.perm, {"axis": axis, "start": lo, "stop": size - hi, "step": None}, name=name)
    return x


def _passthrough(ctx, layer, xs):
    return _one(xs)


def _rescaling(ctx, layer, xs):
    x = _one(xs)
    scale = np.asarray(_np(layer.scale) if not np.isscalar(layer.scale) else layer.scale, dtype=np.float64)
    offset = np.asarray(_np(layer.offset) if not np.isscalar(layer.offset) else layer.offset, dtype=np.float64)
    if scale.ndim or offset.ndim:
        x = ctx.keras_order(x)
    if not offset.any():
        return ctx.emit("mul", [x, ctx.const(scale, "scale")], x.perm)
    h = ctx.emit("mul", [x, ctx.const(scale, "scale")], x.perm, name=ctx.sub("scaled"))
    return ctx.emit("add", [h, ctx.const(offset, "offset")], x.perm)


def _normalization(ctx, layer, xs):
    import keras
    x = ctx.keras_order(_one(xs))
    mean = _np(layer.mean).astype(np.float64)
    var = _np(layer.variance).astype(np.float64)
    while mean.ndim >= x.rank and mean.shape[0] == 1:   # constants carry no batch axis
        mean, var = mean[0], var[0]
    std = np.maximum(np.sqrt(var), keras.backend.epsilon())
    if getattr(layer, "invert", False):
        h = ctx.emit("mul", [x, ctx.const(std, "std")], x.perm, name=ctx.sub("scaled"))
        return ctx.emit("add", [h, ctx.const(mean, "mean")], x.perm)
    h = ctx.emit("add", [x, ctx.const(-mean, "minus_mean")], x.perm, name=ctx.sub("centered"))
    return ctx.emit("mul", [h, ctx.const(1.0 / std, "inv_std")], x.perm)


def _feeds_embeddings(model) -> bool:
    """Whether a model's first layer (after its input) is an Embedding: its input holds token ids."""
    layers = [la for la in getattr(model, "layers", []) if type(la).__name__ != "InputLayer"]
    return bool(layers) and type(layers[0]).__name__ == "Embedding"


def _embedding(ctx, layer, xs):
    x = ctx.keras_order(_one(xs))
    if x.name != ctx.input_name or not ctx.indices:
        raise _Unsupported("looks up indices computed inside the model; the graph's indices are its input")
    if getattr(layer, "quantization_mode", None):
        raise _Unsupported(f"quantized ({layer.quantization_mode}) embeddings are not translated")
    y = ctx.emit("embedding", [x], _identity(x.rank + 1), params={"weight": _np(layer.embeddings)})
    if getattr(layer, "mask_zero", False):      # Keras's mask: ids != 0, elementwise
        y.mask = ctx.emit("mask", [x], x.perm, {"value": 0.0, "axes": None}, name=ctx.sub("mask"))
    return y


_embedding.reads_mask = True


# ----------------------------------------------------------------------------------------------
# padding masks and recurrent layers
#
# Keras attaches a mask (N, steps) to tensors: Masking and Embedding(mask_zero=True) make one, layers with
# supports_masking pass their input's mask on (compute_mask), others drop it, and layers whose call takes
# ``mask`` read it. Each translated tensor carries its mask (V.mask) the same way; the recurrent layers
# give it to the unroller (attribx.recurrent), where a masked step keeps the state.

#: layers whose call takes a mask but uses it in training only (inference reads the moving statistics)
_MASK_UNUSED_AT_INFERENCE = ("BatchNormalization",)


def _mask_source(m) -> str:
    return m.reason if isinstance(m, _OpaqueMask) else f"node {m.name!r}"


def _refuse_mask_readers(layer, xs: list[V]) -> None:
    """A layer that computes with the mask Keras hands it, where this translation does not apply it."""
    masks = [x.mask for x in xs if x.mask is not None]
    if not masks or not getattr(layer, "_call_has_mask_arg", False):
        return
    if any(cls.__name__ in _MASK_UNUSED_AT_INFERENCE for cls in type(layer).__mro__):
        return
    raise _Unsupported(f"its input carries a padding mask ({_mask_source(masks[0])}), which Keras passes to "
                       f"this layer and which its translation does not apply; drop the Masking / mask_zero, or "
                       f"explain a model without this layer")


def _pass_mask(layer, xs: list[V], y):
    """``y`` (a V or a list of them) with the mask Keras gives the layer's output (see compute_mask)."""
    import keras
    masks = [x.mask for x in xs if x.mask is not None]
    ys = y if isinstance(y, list) else [y]
    mask = None
    if masks and getattr(layer, "supports_masking", False):
        own = type(layer).compute_mask is not keras.layers.Layer.compute_mask
        merge = any(cls.__name__ == "Merge" for cls in type(layer).__mro__)
        names = {m.name if isinstance(m, V) else id(m) for m in masks}
        if not own and len(xs) == 1:
            mask = masks[0]                               # passed on unchanged
        elif merge and len(names) == 1 and isinstance(masks[0], V) and not (
                isinstance(layer, keras.layers.Concatenate) and layer.axis % xs[0].rank != xs[0].rank - 1):
            mask = masks[0]                               # the logical and of one mask (and none)
        else:
            mask = _OpaqueMask(f"the mask that {layer.name!r} ({_class_path(layer)}) computes")
        if len(ys) > 1:
            mask = _OpaqueMask(f"the masks of the outputs of {layer.name!r} ({_class_path(layer)})")
    out = [replace(v, mask=mask) for v in ys]
    return out if isinstance(y, list) else out[0]


def _masking(ctx, layer, xs):
    """Keras Masking: mask = any(x != mask_value) over the features; the output is x with masked steps 0."""
    x = ctx.keras_order(_one(xs))
    m = ctx.emit("mask", [x], x.perm[:-1], {"value": float(layer.mask_value), "axes": [-1]},
                 name=ctx.sub("mask"))
    cond = ctx.emit("reshape", [m], x.perm, {"shape": tuple(x.shape[1:-1]) + (1,)}, name=ctx.sub("mask_features"))
    y = ctx.emit("where", [cond, x, ctx.const(0.0, "zero")], x.perm)
    y.mask = m
    if x.name == ctx.input_name:
        ctx.masked_input = y.name
    return y


_masking.reads_mask = True


class _Emitter:
    """Lets attribx.recurrent's unrollers add nodes to a Keras translation (shapes inferred, names unique)."""

    def __init__(self, ctx):
        self.ctx = ctx

    def add_node(self, op, inputs=(), name=None, params=None, source="", **attrs):
        ctx = self.ctx
        ins = [inputs] if isinstance(inputs, str) else list(inputs)
        vs = [V(i, ctx.shapes[i], ()) for i in ins]
        return ctx.emit(op, vs, (), attrs, params, name=ctx.unique(name or ctx.main)).name


def _fn_name(fn) -> str:
    return getattr(fn, "__name__", str(fn))


def _rnn_cell(layer) -> str:
    """'lstm' or 'gru' for a recurrent layer the unrollers express exactly; refuses everything else."""
    import keras
    cell = getattr(layer, "cell", None)
    if isinstance(cell, keras.layers.LSTMCell):
        kind = "lstm"
    elif isinstance(cell, keras.layers.GRUCell):
        kind = "gru"
    else:
        what = _class_path(cell) if cell is not None else "no cell"
        raise _Unsupported(f"its cell ({what}) has no unrolled translation; LSTM and GRU cells have one "
                           f"(SimpleRNN, ConvLSTM, stacked cells do not)")
    if layer.stateful:
        raise _Unsupported("stateful=True: the state carried from one call to the next is not part of the graph")
    if _fn_name(cell.activation) != "tanh":
        raise _Unsupported(f"activation {_fn_name(cell.activation)!r}: the unrolled cell uses tanh")
    if _fn_name(cell.recurrent_activation) != "sigmoid":
        raise _Unsupported(f"recurrent_activation {_fn_name(cell.recurrent_activation)!r}: the unrolled cell's "
                           f"gates use sigmoid")
    if getattr(cell, "quantization_mode", None) or getattr(layer, "quantization_mode", None):
        raise _Unsupported("quantized kernels are not translated")
    return kind


def _mask_for_rnn(x: V, steps: int):
    m = x.mask
    if m is None:
        return None
    if isinstance(m, _OpaqueMask):
        raise _Unsupported(f"it reads a padding mask the translation does not follow ({m.reason})")
    if tuple(m.shape[1:]) != (steps,):
        raise _Unsupported(f"its mask has shape {m.shape[1:]}, expected one entry per step ({steps},)")
    return m


def _unroll(ctx, layer, x: V, mask, name: str):
    """One Keras LSTM/GRU over ``x`` (Keras order, (N, steps, features)): (outputs in input time order,
    Keras's last output, [states]). Masked steps keep the state; their output is zeros when the layer has
    zero_output_for_mask (Bidirectional sets it with return_sequences), else the kept output, as Keras."""
    from attribx.recurrent import unroll_gru, unroll_lstm
    kind = _rnn_cell(layer)
    cell = layer.cell
    steps = x.shape[1]
    emit = _Emitter(ctx)
    zeros = bool(getattr(layer, "zero_output_for_mask", False))
    kw = {"reverse": bool(layer.go_backwards), "name": name, "mask": None if mask is None else mask.name,
          "masked_output": "zeros" if zeros else "state"}
    w_ih, w_hh = _np(cell.kernel).T.copy(), _np(cell.recurrent_kernel).T.copy()
    bias = _np(cell.bias) if cell.use_bias else None
    if kind == "lstm":
        out, h, c = unroll_lstm(emit, x.name, steps, w_ih=w_ih, w_hh=w_hh, b_ih=bias, order="keras", **kw)
        states = [h, c]
    else:
        reset_after = bool(cell.reset_after)
        b_ih, b_hh = (bias[0], bias[1]) if bias is not None and reset_after else (bias, None)
        out, h = unroll_gru(emit, x.name, steps, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, order="keras",
                            reset_after=reset_after, **kw)
        states = [h]
    seq = V(out, ctx.shapes[out], (0, 1, 2))
    states = [V(s, ctx.shapes[s], (0, 1)) for s in states]
    last = states[0]
    if mask is not None and zeros:      # Keras's last output is the last processed step's, zeroed if masked
        t = 0 if layer.go_backwards else steps - 1
        sl = emit.add_node("slice", out, name=f"{name}/last_output_slice", axis=1, start=t, stop=t + 1, step=None)
        r = emit.add_node("reshape", sl, name=f"{name}/last_output", shape=(-1,))
        last = V(r, ctx.shapes[r], (0, 1))
    return seq, last, states


def _flip_time(ctx, v: V, suffix: str) -> V:
    """``v`` (N, steps, ...) with its steps in reverse order: Keras's go_backwards outputs."""
    steps = v.shape[1]
    if steps == 1:
        return v
    parts = [ctx.emit("slice", [v], v.perm, {"axis": 1, "start": t, "stop": t + 1, "step": None},
                      name=ctx.sub(f"{suffix}/t{t}")) for t in range(steps - 1, -1, -1)]
    return ctx.emit("concat", parts, v.perm, {"axis": 1}, name=ctx.sub(suffix))


def _rnn_input(ctx, layer, xs) -> V:
    if len(xs) != 1:
        raise _Unsupported(f"it is called with {len(xs)} tensors (initial_state or an explicit mask); the graph "
                           f"starts recurrent layers from zero states and takes masks from Masking or "
                           f"Embedding(mask_zero=True)")
    x = ctx.keras_order(xs[0])
    if x.rank != 3:
        raise _Unsupported(f"input of rank {x.rank}; recurrent layers read (N, steps, features)")
    if x.name in (ctx.input_name, ctx.masked_input) and not ctx.indices:
        ctx.sequence_input = True
    return replace(x, mask=xs[0].mask)


def _rnn(ctx, layer, xs):
    """LSTM, GRU (and keras.layers.RNN over an LSTMCell or GRUCell), unrolled over the input's steps."""
    x = _rnn_input(ctx, layer, xs)
    _rnn_cell(layer)
    mask = _mask_for_rnn(x, x.shape[1])
    seq, last, states = _unroll(ctx, layer, x, mask, ctx.main)
    if layer.return_sequences:       # Keras returns go_backwards outputs in processing order
        out = _flip_time(ctx, seq, "flip") if layer.go_backwards else seq
        y = ctx.emit("identity", [out], out.perm)
        y.mask = mask
    else:
        y = ctx.emit("identity", [last], last.perm)
    return [y] + states if layer.return_state else y


_rnn.reads_mask = True


def _bidirectional(ctx, layer, xs):
    """Bidirectional: forward and backward layers (each its own weights) on the same input and mask, the
    backward sequence flipped back to input order, merged by merge_mode (None: two outputs)."""
    x = _rnn_input(ctx, layer, xs)
    fwd, bwd = layer.forward_layer, layer.backward_layer
    for sub in (fwd, bwd):
        try:
            _rnn_cell(sub)
        except _Unsupported as err:
            raise _Unsupported(f"its layer {sub.name!r} ({_class_path(sub)}): {err}") from None
    mask = _mask_for_rnn(x, x.shape[1])
    sf, lf, stf = _unroll(ctx, fwd, x, mask, f"{ctx.main}/{fwd.name}")
    sb, lb, stb = _unroll(ctx, bwd, x, mask, f"{ctx.main}/{bwd.name}")
    if layer.return_sequences:
        # Keras: y = fwd's output (processing order), y_rev = flip(bwd's output); ours are in input order
        y = _flip_time(ctx, sf, "forward_flip") if fwd.go_backwards else sf
        y_rev = sb if bwd.go_backwards else _flip_time(ctx, sb, "backward_flip")
    else:
        y, y_rev = lf, lb
    mode = layer.merge_mode
    if mode == "concat":
        outs = [ctx.emit("concat", [y, y_rev], y.perm, {"axis": y.rank - 1})]
    elif mode == "sum":
        outs = [ctx.emit("add", [y, y_rev], y.perm)]
    elif mode == "ave":
        s = ctx.emit("add", [y, y_rev], y.perm, name=ctx.sub("sum"))
        outs = [ctx.emit("mul", [s, ctx.const(0.5, "half")], y.perm)]
    elif mode == "mul":
        outs = [ctx.emit("mul", [y, y_rev], y.perm)]
    elif mode is None:
        outs = [ctx.emit("identity", [y], y.perm), ctx.emit("identity", [y_rev], y.perm, name=ctx.sub("backward"))]
    else:
        raise _Unsupported(f"merge_mode {mode!r}")
    if layer.return_sequences:
        for o in outs:
            o.mask = mask
    if layer.return_state:
        return outs + stf + stb
    return outs if len(outs) > 1 else outs[0]


_bidirectional.reads_mask = True


_PASSTHROUGH = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity")

_HANDLERS = {
    "Dense": _dense,
    "Conv1D": _conv, "Conv2D": _conv, "Conv3D": _conv,
    "Conv1DTranspose": _conv_transpose, "Conv2DTranspose": _conv_transpose, "Conv3DTranspose": _conv_transpose,
    "DepthwiseConv1D": _depthwise, "DepthwiseConv2D": _depthwise,
    "SeparableConv1D": _separable, "SeparableConv2D": _separable,
    "MaxPooling1D": _pool("max_pool"), "MaxPooling2D": _pool("max_pool"), "MaxPooling3D": _pool("max_pool"),
    "AveragePooling1D": _pool("avg_pool"), "AveragePooling2D": _pool("avg_pool"),
    "AveragePooling3D": _pool("avg_pool"),
    "GlobalAveragePooling1D": _global_pool("avg"), "GlobalAveragePooling2D": _global_pool("avg"),
    "GlobalAveragePooling3D": _global_pool("avg"),
    "GlobalMaxPooling1D": _global_pool("max"), "GlobalMaxPooling2D": _global_pool("max"),
    "GlobalMaxPooling3D": _global_pool("max"),
    "BatchNormalization": _batch_norm,
    "Activation": _activation_layer, "ReLU": _relu_layer, "LeakyReLU": _leaky, "ELU": _elu,
    "Softmax": _softmax_layer,
    "Add": _add, "Subtract": _subtract, "Multiply": _multiply, "Average": _average, "Concatenate": _concat,
    "Flatten": _flatten, "Reshape": _reshape, "Permute": _permute,
    "ZeroPadding1D": _zero_pad, "ZeroPadding2D": _zero_pad, "ZeroPadding3D": _zero_pad,
    "Cropping1D": _crop, "Cropping2D": _crop, "Cropping3D": _crop,
    "Rescaling": _rescaling, "Normalization": _normalization,
    "Embedding": _embedding,
    "Masking": _masking,
    "RNN": _rnn,                  # LSTM and GRU are RNNs; other cells are refused with the reason
    "Bidirectional": _bidirectional,
    **{k: _passthrough for k in _PASSTHROUGH},
}


def _handler(layer):
    """The translation of a layer: by class, walking up the bases so subclasses of known layers work."""
    import keras
    if not isinstance(layer, keras.layers.Layer):
        return None          # keras.ops operations share names with layers (Add, Reshape) but not meaning
    for cls in type(layer).__mro__:
        if cls.__module__.startswith("keras.src.layers") and cls.__name__ in _HANDLERS:
            return _HANDLERS[cls.__name__]
    return None


def translate_keras(model, input_shape) -> Graph:
    """The attribx graph of a Keras 3 model; ``input_shape`` (one sample, no batch axis) fills free sizes."""
    if input_shape is not None:
        try:
            input_shape = tuple(int(d) for d in input_shape)
        except (TypeError, ValueError):
            raise InputError(f"input_shape must be a sequence of ints, got {input_shape!r}") from None
    import keras
    if not isinstance(model, keras.Model):
        # a bare layer: wrap it, so that it translates like a one-layer model
        if input_shape is None:
            raise InputError(f"translating the Keras layer {model.name!r} needs one sample's input shape")
        model = keras.Sequential([keras.Input(input_shape), model], name=model.name)
    return _Translation(model, input_shape).run()
