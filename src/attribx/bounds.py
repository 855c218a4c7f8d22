"""Value bounds: the interval every value of a graph stays in, whatever the input, by interval arithmetic.

Rules use two facts derived from them: a value is *non-negative* (after a ReLU, through pooling, ...),
so terms of αβ and γ that need negative inputs vanish; and a value is a *gate* (it lies in [0, 1] and
comes from a squashing op such as a sigmoid), so that in a product of a gate and a signal the signal
takes all the relevance (Arras et al. 2017). Ops without a bound here (a plugin's, weighted layers)
leave their output unbounded, which is always safe.
"""
from __future__ import annotations

import math

import numpy as np

from .ops import reduce_axes

Bound = tuple  # (low, high), floats, possibly infinite
UNBOUNDED: Bound = (-math.inf, math.inf)

#: fixed output ranges of elementwise activations (their minima where they have one)
_RANGES = {
    "relu": (0.0, math.inf),
    "sigmoid": (0.0, 1.0),
    "softmax": (0.0, 1.0),
    "tanh": (-1.0, 1.0),
    "gelu": (-0.17, math.inf),    # min of x·Φ(x) is about -0.170
    "silu": (-0.28, math.inf),    # min of x·σ(x) is about -0.278
    "hard_sigmoid": (0.0, 1.0),
}
#: ops whose output values are some of their inputs' values (or means of them)
_SAME_VALUES = {"max_pool", "avg_pool", "global_avg_pool", "reshape", "flatten", "transpose", "slice",
                "identity", "concat", "reduce_mean", "roll", "resize"}


def _mul(a: Bound, b: Bound) -> Bound:
    """Interval product; 0 · ∞ counts as 0 (values are finite)."""
    products = [0.0 if (x == 0 or y == 0) else x * y for x in a for y in b]
    return min(products), max(products)


def _add(bounds) -> Bound:
    lo = sum(b[0] for b in bounds)
    hi = sum(b[1] for b in bounds)
    return (-math.inf if math.isnan(lo) else lo), (math.inf if math.isnan(hi) else hi)


def _union(bounds) -> Bound:
    return min(b[0] for b in bounds), max(b[1] for b in bounds)


def _extremes(a) -> Bound:
    """(min, max) of an array, read where it lies (no float64 copy of a large embedding table)."""
    a = np.asarray(a)
    return (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)


def _node_bound(node, ins: list, graph) -> Bound:
    op, a = node.op, node.attrs
    if op in ("constant", "fill"):
        return _extremes(node.params["value"])
    if op == "embedding":
        return _extremes(node.params["weight"])
    if op in _RANGES:
        return _RANGES[op]
    if op == "clip":
        lo = -math.inf if a.get("min") is None else float(a["min"])
        hi = math.inf if a.get("max") is None else float(a["max"])
        return max(lo, ins[0][0]), min(hi, ins[0][1])
    if op == "hard_swish" and a.get("alpha", 1 / 6) > 0 and 0 < a.get("beta", 0.5) < 2:
        return -a.get("beta", 0.5) ** 2 / (4 * a.get("alpha", 1 / 6)), math.inf   # min of x·(αx + β)
    if op == "elu":
        return max(-float(a.get("alpha", 1.0)), min(ins[0][0], 0.0)), ins[0][1]
    if op in _SAME_VALUES:
        return _union(ins)
    if op in ("mask", "length_mask"):
        return 0.0, 1.0
    if op == "where":
        return _union(ins[1:])
    if op == "pad":
        value = float(a.get("value", 0.0))
        return min(ins[0][0], value), max(ins[0][1], value)
    if op == "add":
        return _add(ins)
    if op == "mul":
        return _mul(ins[0], ins[1])
    if op == "reduce_sum":
        shape = graph.shape_of(node.inputs[0]) if node.inputs[0] in graph else None
        if shape is None:
            return UNBOUNDED
        axes = reduce_axes(a, len(shape))
        sizes = [shape[i] for i in axes]
        if any(s is None for s in sizes):
            return UNBOUNDED
        n = float(math.prod(sizes))
        return _mul(ins[0], (n, n))
    return UNBOUNDED


def value_bounds(graph) -> dict[str, Bound]:
    """(low, high) of every value (graph inputs and nodes); inputs are unbounded."""
    out: dict[str, Bound] = {v.name: UNBOUNDED for v in graph.inputs}
    for node in graph.nodes:
        ins = [out.get(i, UNBOUNDED) for i in node.inputs]
        lo, hi = _node_bound(node, ins, graph)
        out[node.name] = (float(lo), float(hi))
    return out


def nonnegative_values(graph, bounds: dict | None = None) -> set[str]:
    """Names of the values that are non-negative for every input."""
    bounds = value_bounds(graph) if bounds is None else bounds
    return {name for name, (lo, _) in bounds.items() if lo >= 0}


def gate_values(graph, bounds: dict | None = None) -> set[str]:
    """Names of gates: values in [0, 1] computed from squashing ops (sigmoid, softmax, a clip into
    [0, 1] such as the hard sigmoid) and constants only: routed or reshaped gates, 1 − gate, gate · gate."""
    bounds = value_bounds(graph) if bounds is None else bounds
    family: set[str] = set()      # computed from squashed values and constants only
    for node in graph.nodes:
        lo, hi = bounds[node.name]
        if node.op in ("sigmoid", "softmax", "hard_sigmoid") or (node.op == "clip" and lo >= 0 and hi <= 1):
            family.add(node.name)
        elif node.op in _SAME_VALUES or node.op in ("add", "mul", "clip", "pad"):
            sources = [i for i in node.inputs if not (i in graph and graph[i].op == "constant")]
            if sources and all(i in family for i in sources):
                family.add(node.name)
    return {n for n in family if bounds[n][0] >= 0 and bounds[n][1] <= 1}


def gated_products(graph, bounds: dict | None = None) -> dict[str, int]:
    """``{mul node: index of its gate input}`` for products of exactly one gate and one other signal."""
    gates = gate_values(graph, bounds)
    out = {}
    for node in graph.nodes:
        if node.op != "mul" or len(node.inputs) != 2:
            continue
        signals = [i for i in node.inputs if not (i in graph and graph[i].op == "constant")]
        if len(signals) != 2:
            continue
        flags = [i in gates for i in node.inputs]
        if sum(flags) == 1:
            out[node.name] = flags.index(True)
    return out
