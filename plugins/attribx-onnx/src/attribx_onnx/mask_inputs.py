"""Mask inputs of ONNX models: a transformer exported with ``(input_ids, attention_mask)``.

A further graph input is a *mask input* when it holds integers or booleans and only decides: nothing computed
from it is ever read as token ids (a ``Gather`` from a table) or reaches a model output without the explained
input. Its values then enter the graph as a mask input (:attr:`attribx.graph.Graph.mask_inputs`), in the
graph's float dtype (0 masks), and what the model computes from it (casts, comparisons, ``Where`` conditions,
the additive large-negative mask added to the attention scores) translates into graph ops that the engines run;
it takes no relevance. An op on mask values without an exact translation stays an error naming it.
"""
from __future__ import annotations

#: ONNX element types a mask input may have: int64, int32, int8, uint8, bool
MASK_ELEM_TYPES = frozenset({7, 6, 3, 2, 9})


def _derived(graph, start: str) -> set[str]:
    """The ONNX tensors computed from ``start`` (itself included), skipping what Shape/Size read (constants)."""
    live = {start}
    for node in graph.node:
        if node.op_type in ("Shape", "Size"):
            continue
        if any(i in live for i in node.input if i):
            live.update(o for o in node.output if o)
    return live


def is_mask_input(graph, value, main: str) -> bool:
    """Whether the graph input ``value`` only decides (see the module docstring); ``main``: the explained input."""
    if not value.type.HasField("tensor_type") or value.type.tensor_type.elem_type not in MASK_ELEM_TYPES:
        return False
    mine, signal = _derived(graph, value.name), _derived(graph, main)
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in mine:
            return False                         # read as indices: token ids (token_type_ids), a signal
    return not any(o.name in mine and o.name not in signal for o in graph.output)
