"""Keras padding masks, carried on the translated values the way Keras carries them on its tensors.

Keras attaches a mask (N, steps) to tensors: Masking and Embedding(mask_zero=True) make one, layers with
``supports_masking`` pass their input's mask on (``compute_mask``), others drop it, and layers whose call
takes ``mask`` read it. Each translated value (:class:`KTensor`) carries its mask the same way; the
recurrent converters give it to the unroller (:mod:`attribx.recurrent`), where a masked step keeps the
state. A converter that applies the mask itself is registered with ``reads_mask=True``; the walk refuses
other converters of layers that would compute with a mask, and passes masks on after the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
from keras import tree

from attribx.errors import UnsupportedError
from attribx.translation import Tensor

from .common import HOOK_HINT, TABLE, Unsupported, class_path, one

#: layers whose call takes a mask but uses it in training only (inference reads the moving statistics)
_MASK_UNUSED_AT_INFERENCE = ("BatchNormalization",)


@dataclass
class KTensor(Tensor):
    """A translated Keras tensor: the kit's :class:`~attribx.translation.Tensor` (``order[i]`` is the graph
    axis of Keras's axis ``i``) plus Keras's padding mask on it: a value (N, steps) of 0/1, an
    :class:`OpaqueMask`, or None."""

    mask: Any = None


@dataclass(frozen=True)
class OpaqueMask:
    """A padding mask that a layer computed in a way the translation does not follow: harmless unless a
    layer reads it."""

    reason: str


def with_mask(t: Tensor, mask) -> KTensor:
    """``t`` (any kit Tensor, e.g. from a plugin's converter) carrying ``mask``."""
    return KTensor(t.name, t.shape, t.order, t.dtype, mask)


def mask_of(t: Tensor):
    return getattr(t, "mask", None)


def _mask_source(m) -> str:
    return m.reason if isinstance(m, OpaqueMask) else f"node {m.name!r}"


def mask_kwarg(node) -> list:
    """The Keras tensors a functional node was given as ``mask=`` (Keras adds the input's mask there)."""
    args = getattr(node, "arguments", None)
    m = None if args is None else args.kwargs.get("mask")
    return [t for t in tree.flatten(m) if hasattr(t, "_keras_history")] if m is not None else []


def mask_only_nodes(model) -> set:
    """ids of a functional model's nodes that only compute masks (the not_equal/any that Masking and
    Embedding(mask_zero) record): their results reach the model's outputs only through ``mask=``."""
    uses: dict[int, list] = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            masks = {id(t) for t in mask_kwarg(node)}
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


def check_mask(node, xs: list, where: str) -> None:
    """A functional node that Keras gives ``mask=``: it must be the mask Keras attached to the input
    (which the translation carries along), not a tensor the model passes explicitly."""
    first = node.arguments.args[0] if node.arguments.args else None
    attached = [getattr(t, "_keras_mask", None) for t in tree.flatten(first)]
    if any(all(g is not a for a in attached) for g in mask_kwarg(node)):
        raise UnsupportedError(f"{where} is called with an explicit mask= tensor; attribx takes padding "
                               f"masks from Masking and Embedding(mask_zero=True) layers only; {HOOK_HINT}")
    if all(mask_of(x) is None for x in xs):
        raise UnsupportedError(f"{where} reads a padding mask that comes from a layer whose mask the "
                               f"translation does not compute; {HOOK_HINT}")


def refuse_mask_readers(layer, xs: list) -> None:
    """A layer that computes with the mask Keras hands it, where this translation does not apply it."""
    masks = [mask_of(x) for x in xs if mask_of(x) is not None]
    if not masks or not getattr(layer, "_call_has_mask_arg", False):
        return
    if any(cls.__name__ in _MASK_UNUSED_AT_INFERENCE for cls in type(layer).__mro__):
        return
    raise Unsupported(f"its input carries a padding mask ({_mask_source(masks[0])}), which Keras passes to "
                      f"this layer and which its translation does not apply; drop the Masking / mask_zero, or "
                      f"explain a model without this layer")


def pass_mask(layer, xs: list, y):
    """``y`` (a value or a list of them) with the mask Keras gives the layer's output (see compute_mask)."""
    masks = [mask_of(x) for x in xs if mask_of(x) is not None]
    ys = y if isinstance(y, list) else [y]
    mask = None
    if masks and getattr(layer, "supports_masking", False):
        own = type(layer).compute_mask is not keras.layers.Layer.compute_mask
        merge = any(cls.__name__ == "Merge" for cls in type(layer).__mro__)
        names = {m.name if isinstance(m, Tensor) else id(m) for m in masks}
        if not own and len(xs) == 1:
            mask = masks[0]                               # passed on unchanged
        elif merge and len(names) == 1 and isinstance(masks[0], Tensor) and not (
                isinstance(layer, keras.layers.Concatenate) and layer.axis % xs[0].rank != xs[0].rank - 1):
            mask = masks[0]                               # the logical and of one mask (and none)
        else:
            mask = OpaqueMask(f"the mask that {layer.name!r} ({class_path(layer)}) computes")
        if len(ys) > 1:
            mask = OpaqueMask(f"the masks of the outputs of {layer.name!r} ({class_path(layer)})")
    out = [with_mask(v, mask) for v in ys]
    return out if isinstance(y, list) else out[0]


@TABLE.register(keras.layers.Masking, reads_mask=True)
def masking(ctx, layer, xs):
    """Keras Masking: mask = any(x != mask_value) over the features; the output is x with masked steps 0."""
    x = ctx.keras_order(one(xs))
    m = ctx.emit("mask", [x], attrs={"value": float(layer.mask_value), "axes": [-1]}, name=ctx.sub("mask"))
    cond = ctx.emit("reshape", [m], attrs={"shape": tuple(x.shape[1:-1]) + (1,)}, name=ctx.sub("mask_features"))
    y = ctx.emit("where", [cond, x, ctx.constant(0.0, "zero")])
    y.mask = m
    if x.name == ctx.input_name:
        ctx.masked_input = y.name
    return y
