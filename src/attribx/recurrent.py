"""Recurrent layers unrolled into the graph's own ops, and the one place that knows each framework's
gate order.

An LSTM step becomes a concat of [x_t, h_{t-1}], one linear layer for all four gate pre-activations
(the weights of x and h side by side, both biases summed), slices per gate, sigmoid/tanh, and the
products and sum of the cell update. Unrolled, every existing rule and engine applies: the linear
layers take the ε rule, the cell update c_t = f·c_{t-1} + i·g is a gated sum (the ε rule with the method's
ε and ``bias_factor``), and the gate products get ``signal_takes_all`` (the gate is a sigmoid output),
which is LRP for LSTMs as Arras et al. (2017) define it. The initial states are ``fill`` nodes, so the
relevance they keep is visible. The graph is built for one sequence length (the data's).

Gate orders (blocks of ``hidden`` rows in the stacked weights):

===========  ==================
framework    order
===========  ==================
torch        i, f, g, o
keras        i, f, c, o (c = g)
onnx         i, o, f, c
arras        i, g, f, o (Arras et al.'s LRP_for_LSTM)
===========  ==================
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .errors import GraphError

#: the canonical order the unroller uses
CANONICAL = ("i", "f", "g", "o")
GATE_ORDERS = {
    "canonical": CANONICAL,
    "torch": ("i", "f", "g", "o"),
    "keras": ("i", "f", "g", "o"),
    "onnx": ("i", "o", "f", "g"),
    "arras": ("i", "g", "f", "o"),
}


def reorder_gates(a, source: str, target: str = "canonical", axis: int = 0) -> np.ndarray:
    """``a`` with its gate blocks along ``axis`` moved from ``source``'s order to ``target``'s."""
    try:
        src, dst = GATE_ORDERS[source], GATE_ORDERS[target]
    except KeyError as err:
        raise GraphError(f"unknown gate order {err.args[0]!r}; known: {', '.join(GATE_ORDERS)}") from None
    a = np.asarray(a)
    n = len(src)
    if a.shape[axis] % n:
        raise GraphError(f"gate axis of size {a.shape[axis]} is not {n} equal blocks")
    blocks = np.split(a, n, axis=axis)
    return np.concatenate([blocks[src.index(g)] for g in dst], axis=axis)


class Emitter(Protocol):
    """What the unroller needs of a graph builder (:class:`attribx.GraphBuilder` is one)."""

    def add_node(self, op: str, inputs, name: str | None = None, params: dict | None = None, source: str = "",
                 **attrs) -> str: ...


def unroll_lstm(b: Emitter, x: str, steps: int, *, w_ih, w_hh, b_ih=None, b_hh=None, order: str = "torch",
                reverse: bool = False, name: str = "lstm", h0=None, c0=None) -> tuple[str, str, str]:
    """Unroll one LSTM direction over ``x`` (N, steps, features).

    Weights are stacked per gate in ``order`` (see :data:`GATE_ORDERS`): ``w_ih`` (4h, features),
    ``w_hh`` (4h, h). ``h0``/``c0`` (h,) are the initial states (default zeros), graph nodes of op ``fill``
    named ``{name}/h0`` and ``{name}/c0``: the relevance that reaches them is what the initial states keep.
    Returns (outputs (N, steps, h) in input time order, last h (N, h), last c (N, h)); ``reverse`` runs
    from the last step to the first (the backward half of a bidirectional layer).
    Node names: ``{name}/t{k}/{part}`` with k the input time index.
    """
    w_ih = reorder_gates(w_ih, order)
    w_hh = reorder_gates(w_hh, order)
    hidden = w_hh.shape[1]
    if w_ih.shape[0] != 4 * hidden or w_hh.shape[0] != 4 * hidden:
        raise GraphError(f"{name}: LSTM weights {w_ih.shape}, {w_hh.shape} do not stack 4 gates of {hidden}")
    if steps < 1:
        raise GraphError(f"{name}: a sequence needs at least one step, got {steps}")
    bias = np.zeros(4 * hidden, dtype=np.result_type(w_ih.dtype, np.float32))
    for extra in (b_ih, b_hh):
        if extra is not None:
            bias = bias + reorder_gates(extra, order)
    both = np.concatenate([w_ih, w_hh], axis=1)
    outputs = {}
    order_t = list(range(steps - 1, -1, -1) if reverse else range(steps))
    h = c = None
    for t in order_t:
        p = f"{name}/t{t}"
        xt = b.add_node("slice", x, name=f"{p}/x_slice", axis=1, start=t, stop=t + 1)
        xt = b.add_node("reshape", xt, name=f"{p}/x", shape=(-1,))
        if h is None:
            h, c = (b.add_node("fill", xt, name=f"{name}/{s}0",
                               params={"value": np.zeros(hidden, bias.dtype) if v is None else np.asarray(v)})
                    for s, v in (("h", h0), ("c", c0)))
        xh = b.add_node("concat", [xt, h], name=f"{p}/xh", axis=1)
        z = b.add_node("linear", xh, name=f"{p}/gates", params={"weight": both, "bias": bias})
        gate = {}
        for k, g in enumerate(CANONICAL):
            pre = b.add_node("slice", z, name=f"{p}/{g}_pre", axis=1, start=k * hidden, stop=(k + 1) * hidden)
            gate[g] = b.add_node("tanh" if g == "g" else "sigmoid", pre, name=f"{p}/{g}")
        ig = b.add_node("mul", [gate["i"], gate["g"]], name=f"{p}/i*g")
        fc = b.add_node("mul", [gate["f"], c], name=f"{p}/f*c")
        c = b.add_node("add", [fc, ig], name=f"{p}/c")
        tc = b.add_node("tanh", c, name=f"{p}/tanh_c")
        h = b.add_node("mul", [gate["o"], tc], name=f"{p}/h")
        outputs[t] = h
    seq = [b.add_node("reshape", outputs[t], name=f"{name}/t{t}/h_seq", shape=(1, hidden)) for t in range(steps)]
    out = seq[0] if steps == 1 else b.add_node("concat", seq, name=f"{name}/outputs", axis=1)
    return out, h, c
