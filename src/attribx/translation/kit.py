"""The translator base every backend extends: names, nodes, constants, aliases, error locations, axis order.

Backends differ in how they walk a model (torch.fx / torch.export, the Keras layer graph, ONNX nodes);
what they write is the same, so it is written once here. A backend's walker subclasses
:class:`Translator`; its converters see only this narrow surface (``emit``, ``constant``, ``sub``,
``reorder``...), never the walker's own state.

Axis order: the graph keeps the batch axis first, while a framework may hold a value in another order
(a time-major torch view, a channels-last Keras tensor, an ONNX tensor whose batch axis moved). A
:class:`Tensor` records that order, so a converter asks for the graph axis of the framework's axis
instead of keeping its own bookkeeping, and :meth:`Translator.reorder` emits the one transpose needed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from ..builder import unique_name
from ..errors import UnsupportedError
from ..graph import Graph, Node, Value

NO_TRANSLATION_DOCS = "docs/plugins.md#a-converter-for-your-own-layer"


class TranslationError(UnsupportedError):
    """A part of the model cannot be translated; the message names it and where it sits in the model."""


@dataclass
class Tensor:
    """A graph value as the framework sees it.

    ``shape`` is the graph's (batch axis first); ``order[i]`` is the graph axis that holds the framework's
    axis ``i`` (None: the same order)."""

    name: str
    shape: tuple
    order: tuple | None = None
    dtype: Any = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def in_graph_order(self) -> bool:
        return self.order is None or tuple(self.order) == tuple(range(self.rank))

    @property
    def framework_shape(self) -> tuple:
        """The shape as the framework reports it."""
        if self.in_graph_order:
            return tuple(self.shape)
        return tuple(self.shape[o] for o in self.order)

    def graph_axis(self, axis: int) -> int:
        """The graph axis holding the framework's axis ``axis`` (negative counts from the end)."""
        n = self.rank
        if not -n <= axis < n:
            raise TranslationError(f"axis {axis} is out of range for a tensor of rank {n}")
        axis %= n
        return axis if self.in_graph_order else int(self.order[axis])

    def with_name(self, name: str, shape: Sequence[int] | None = None) -> "Tensor":
        return replace(self, name=name, shape=tuple(self.shape if shape is None else shape))


def _as_order(order, rank: int) -> tuple:
    order = tuple(range(rank)) if order is None else tuple(int(o) for o in order)
    if sorted(order) != list(range(rank)):
        raise TranslationError(f"axis order {order} is not a permutation of {rank} axes")
    return order


class Translator:
    """Writes one graph: a backend's walker subclasses it and sets ``main`` (the current layer's graph
    name) and ``origin`` (what the layer is, e.g. ``Conv2d``) before handing a layer to its converter."""

    framework = ""

    def __init__(self, name: str = "model", dtype=np.float32, reserved: Sequence[str] = ("input",)):
        self.name = name
        self.np_dtype = np.dtype(dtype)
        self.nodes: list[Node] = []
        self.used: set[str] = set(reserved)
        self.aliases: dict[str, str] = {}
        self.main = ""
        self.origin = ""

    # -- names ------------------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        return unique_name(base, self.used)

    def sub(self, suffix: str) -> str:
        """A name for an extra node of the current layer (``avgpool:h0``)."""
        return self.unique(f"{self.main}:{suffix}")

    def alias(self, source_name: str, value: str) -> None:
        """Record that the model's name ``source_name`` is the graph value ``value`` (``layers=`` finds it)."""
        if source_name != value:
            self.aliases[source_name] = value

    def where(self) -> str:
        """Where the current layer sits, for messages: ``'features.3' (Conv2d)``."""
        if not self.main:
            return ""
        return f"'{self.main}' ({self.origin})" if self.origin else f"'{self.main}'"

    # -- nodes ------------------------------------------------------------------------------------
    def add_node(self, op: str, inputs=(), name: str | None = None, params: dict | None = None, source: str = "",
                 **attrs: Any) -> str:
        """Add one node by input names; the signature of :meth:`attribx.builder.GraphBuilder.add_node`, so
        shared builders (:mod:`attribx.recurrent`) write into a translation directly."""
        return self._append(self.unique(name or self.main or op), op, inputs, params, source, attrs)

    def _append(self, name: str, op: str, inputs, params, source: str, attrs: dict) -> str:
        """Append a node under ``name``, already reserved (the walker's ``main``, or from :meth:`sub`)."""
        ins = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        params = {k: v for k, v in (params or {}).items() if v is not None}
        self.nodes.append(Node(name, op, ins, dict(attrs), params, None, source or self.origin))
        return name

    def emit(self, op: str, inputs: Sequence[Tensor | str], shape: Sequence[int], attrs: dict | None = None,
             params: dict | None = None, name: str | None = None, order: Sequence[int] | None = None) -> Tensor:
        """Add a node (named after the current layer unless ``name``) and return its value; ``shape`` is
        the graph's, ``order`` how the framework sees the result (default: the graph's order)."""
        ins = [i if isinstance(i, str) else i.name for i in inputs]
        node = self._append(name or self.main, op, ins, params, "", dict(attrs or {}))
        return Tensor(node, tuple(int(d) for d in shape), None if order is None else tuple(order))

    def constant(self, value, suffix: str = "const") -> Tensor:
        """A constant node (no batch axis) in the translation's float dtype."""
        arr = np.asarray(value, dtype=np.float64).astype(self.np_dtype)
        name = self._append(self.sub(suffix) if self.main else self.unique(suffix), "constant", (),
                            {"value": arr}, "constant", {})
        return Tensor(name, tuple(arr.shape))

    def reorder(self, t: Tensor, order: Sequence[int] | None = None, suffix: str = "order") -> Tensor:
        """``t`` stored so that the framework's axis ``i`` is graph axis ``order[i]`` (default: the
        framework's own order); one transpose node when the order changes, none otherwise. The batch
        axis stays graph axis 0 (a time-major value cannot be put in the framework's order)."""
        old = _as_order(t.order, t.rank)
        new = _as_order(order, t.rank)
        if old == new:
            return t
        if old.index(0) != new.index(0):
            raise TranslationError(f"{self.where() or 'a layer'} would move the batch axis: the graph keeps it "
                                   f"first (framework axis {old.index(0)})")
        inverse = [0] * t.rank
        for i, o in enumerate(new):
            inverse[o] = i
        perm = tuple(old[inverse[j]] for j in range(t.rank))
        shape = tuple(t.shape[p] for p in perm)
        return self.emit("transpose", [t], shape, {"perm": perm}, name=self.sub(suffix),
                         order=None if new == tuple(range(t.rank)) else new)

    def no_translation(self, what: str, hint: str = "") -> TranslationError:
        """The error for a construct without a converter: names it, where it is, and how to add one."""
        where = f" at {self.where()}" if self.main else ""
        extra = f"; {hint}" if hint else ""
        return TranslationError(
            f"{what}{where} has no {self.framework or 'backend'} translation{extra}; a plugin can add one with "
            f"attribx.translation.converter and the 'attribx_converters' hook ({NO_TRANSLATION_DOCS})")

    def finish(self, inputs: Sequence[Value], outputs: Sequence[str], **meta: Any) -> Graph:
        """The graph of everything emitted (validated by :class:`Graph`); aliases go into its meta."""
        meta = {"name": self.name, **meta}
        if self.aliases:
            meta["aliases"] = {**meta.get("aliases", {}), **self.aliases}
        return Graph(list(inputs), self.nodes, list(outputs), meta)
