"""Constant folding at translation time, with onnx's reference evaluator.

Exporters compute shapes inside the graph (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``), cast
and transpose weights, build constants with ``ConstantOfShape``. Every node whose inputs are all known
is evaluated here, once, so that the attribx graph sees plain numbers.

The batch size is free, so a ``Shape`` of a batched tensor is not one constant. Each folded value is
therefore a :class:`Const` pair: its value when the batch size is :data:`BATCH_A`, and when it is
:data:`BATCH_B`. A value equal in both does not depend on the batch size; one that differs does, and
only consumers that understand the batch axis (a Reshape target's first entry) may read it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Two batch sizes to evaluate shape computations with; entries that differ depend on the batch size.
BATCH_A, BATCH_B = 5, 7


@dataclass(frozen=True)
class Const:
    """A constant's value at batch size ``BATCH_A`` (``a``) and ``BATCH_B`` (``b``); ``a is b`` when equal."""

    a: np.ndarray
    b: np.ndarray

    @classmethod
    def of(cls, value) -> "Const":
        arr = np.asarray(value)
        return cls(arr, arr)

    @classmethod
    def pair(cls, a, b) -> "Const":
        a, b = np.asarray(a), np.asarray(b)
        if a is b or (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")):
            return cls(a, a)
        return cls(a, b)

    @property
    def batch_dependent(self) -> bool:
        return self.a is not self.b


class Folder:
    """Evaluates single ONNX nodes on constant inputs at the model's opsets (local functions included)."""

    def __init__(self, opsets: dict, functions=()):
        self.opsets = dict(opsets)
        self.functions = list(functions)

    def run(self, node, inputs: dict[str, Const]) -> list[Const | None]:
        """The node's outputs (None for outputs it leaves out) from its constant inputs."""
        evaluator = self._evaluator(node, list(inputs))
        feeds_a = {k: c.a for k, c in inputs.items()}
        outs_a = evaluator.run(None, feeds_a)
        if any(c.batch_dependent for c in inputs.values()):
            outs_b = evaluator.run(None, {k: c.b for k, c in inputs.items()})
        else:
            outs_b = outs_a
        named = [o for o in node.output if o]
        values = {o: Const.pair(a, b) for o, a, b in zip(named, outs_a, outs_b)}
        return [values.get(o) if o else None for o in node.output]

    def _evaluator(self, node, names):
        from onnx import TypeProto, helper
        from onnx.reference import ReferenceEvaluator
        graph = helper.make_graph(
            [node], "attribx_fold",
            [helper.make_value_info(n, TypeProto()) for n in names],
            [helper.make_value_info(o, TypeProto()) for o in node.output if o])
        return ReferenceEvaluator(graph, opsets=self.opsets, functions=self.functions or None)
