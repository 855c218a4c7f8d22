"""Where axes go through a chain of rearranging nodes (reshape, flatten, transpose, identity).

Exporters move axes in many equivalent ways (tf2onnx writes Keras's Conv1D as Unsqueeze, Transpose, Conv,
Transpose, Squeeze); rather than match each pattern, an array of indices is pushed through the chain with
the numpy engine, and the positions say where every element went. Passes (a bias added after a squeeze)
and translators (the input's channel axis) use the same tracing.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .engines.numpy_engine import NumpyEngine
from .engines.numpy_kernels import KERNELS

#: Ops that only move elements: a one-to-one map from input positions to output positions.
REARRANGING = frozenset({"reshape", "flatten", "transpose", "identity"})


def rearrange(nodes: Sequence, array: np.ndarray) -> np.ndarray:
    """``array`` (with a batch axis) pushed through rearranging nodes in order."""
    engine = NumpyEngine().use_kernels(KERNELS)     # built-in ops only: the built-in kernels
    for node in nodes:
        if node.op not in REARRANGING:
            raise ValueError(f"node {node.name!r} ({node.op}) does not only rearrange elements")
        array = engine.forward(node, [array], {})
    return np.asarray(array)


def axis_index(shape: Sequence[int], axis: int) -> np.ndarray:
    """An array of ``shape`` holding each element's index along ``axis``."""
    shape = tuple(int(d) for d in shape)
    axis = axis % len(shape)
    ids = np.arange(shape[axis], dtype=np.float64).reshape([-1 if i == axis else 1 for i in range(len(shape))])
    return np.broadcast_to(ids, shape).copy()


def chain_above(graph, name: str, reader: str, consumers: dict) -> tuple[list, str | None]:
    """The rearranging nodes that lead to ``name``, each read only by the next (the last only by ``reader``),
    and the node above them, when that one too is read only by the chain; else ``(chain, None)``.

    Returns ``(chain in execution order, name of the node above it)``."""
    chain = []
    current = name
    while True:
        if current not in graph or consumers.get(current) != [reader] or current in graph.outputs:
            return chain, None
        node = graph[current]
        if node.op not in REARRANGING:
            return chain, current
        chain.insert(0, node)
        reader, current = current, node.inputs[0]


def chain_below(graph, name: str, consumers: dict) -> list:
    """The rearranging nodes that follow ``name`` one after another, each the only reader of the one before."""
    chain = []
    current = name
    while len(consumers.get(current, [])) == 1:
        node = graph[consumers[current][0]]
        if node.op not in REARRANGING:
            break
        chain.append(node)
        current = node.name
    return chain


def traced_axis(graph, chain: Sequence, axis: int, start: str) -> int | None:
    """The axis after ``chain`` that ``axis`` of ``start`` becomes, if it stays one whole axis, else None."""
    shape = (1,) + tuple(graph.shape_of(start))[1:]
    moved = rearrange(chain, axis_index(shape, axis))
    size = shape[axis % len(shape)]
    for out_axis in range(1, moved.ndim):
        if moved.shape[out_axis] == size and np.array_equal(moved, axis_index(moved.shape, out_axis)):
            return out_axis
    return None


def input_channel_axis(graph) -> int | None:
    """The input axis that becomes the channel axis of the convs reading the input, through rearranging
    nodes only; None when no conv reads it that way or the convs disagree."""
    consumers = graph.consumers()
    start = graph.input.name
    chain = chain_below(graph, start, consumers)
    end = chain[-1].name if chain else start
    readers = [graph[c] for c in consumers.get(end, [])]
    if not readers or any(r.op != "conv" or r.inputs[0] != end for r in readers):
        return None
    ndim = len(graph.input.shape)
    found = [j for j in range(1, ndim) if traced_axis(graph, chain, j, start) == 1]
    return found[0] if len(found) == 1 else None
