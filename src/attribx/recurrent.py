"""Recurrent layers unrolled into the graph's own ops, and the one place that knows each framework's
gate order.

An LSTM step becomes a concat of [x_t, h_{t-1}], one linear layer for all four gate pre-activations
(the weights of x and h side by side, both biases summed), slices per gate, sigmoid/tanh, and the
products and sum of the cell update. Unrolled, every existing rule and engine applies: the linear
layers take the ε rule, the cell update c_t = f·c_{t-1} + i·g is a gated sum (the ε rule with the method's
ε and ``bias_factor``), and the gate products get ``signal_takes_all`` (the gate is a sigmoid output),
which is LRP for LSTMs as Arras et al. (2017) define it. The initial states are ``fill`` nodes, so the
relevance they keep is visible. The graph is built for one sequence length (the data's).

A GRU step is built the same way: one linear layer for the reset and update gates r, z over [x_t, h],
the candidate n = tanh(W_in x + b_in + r·(W_hn h + b_hn)) (``reset_after``, torch's and Keras's default;
ONNX linear_before_reset=1) or tanh(W_in x + W_hn (r·h) + b) (Keras reset_after=False, ONNX's default),
and h_t = (1 − z)·n + z·h_{t-1}, a gated sum.

Sequences of different lengths in one batch: ``mask`` (a (N, steps) node of 0/1, e.g. from the ``mask``
or ``length_mask`` op) makes a masked step keep the previous state (``where`` nodes, which route relevance
to the state they selected): Keras's masking, and torch's packed sequences and ONNX's ``sequence_lens``
for right-padded batches, where the reverse direction then starts at each sequence's own last step.

Gate orders (blocks of ``hidden`` rows in the stacked weights):

=========  ================  ==========
framework  LSTM              GRU
=========  ================  ==========
torch      i, f, g, o        r, z, n
keras      i, f, c, o (c=g)  z, r, h (h=n)
onnx       i, o, f, c        z, r, h
arras      i, g, f, o        (none)
=========  ================  ==========
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
#: GRU: reset r, update z, candidate n
GRU_CANONICAL = ("r", "z", "n")
GRU_GATE_ORDERS = {
    "canonical": GRU_CANONICAL,
    "torch": ("r", "z", "n"),
    "keras": ("z", "r", "n"),
    "onnx": ("z", "r", "n"),
}
_ORDERS = {"lstm": GATE_ORDERS, "gru": GRU_GATE_ORDERS}


def reorder_gates(a, source: str, target: str = "canonical", axis: int = 0, cell: str = "lstm") -> np.ndarray:
    """``a`` with its gate blocks along ``axis`` moved from ``source``'s order to ``target``'s
    (``cell``: "lstm" or "gru")."""
    orders = _ORDERS[cell]
    try:
        src, dst = orders[source], orders[target]
    except KeyError as err:
        raise GraphError(f"unknown {cell} gate order {err.args[0]!r}; known: {', '.join(orders)}") from None
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


def _unroll(b: Emitter, x: str, steps: int, hidden: int, dtype, *, reverse: bool, name: str, initial: dict,
            step, mask: str | None, masked_output: str) -> tuple[str, dict]:
    """Run ``step(prefix, x_t, states) -> new states`` (states: dict name -> node, "h" the output) over the
    time steps; initial states are ``fill`` nodes ``{name}/{state}0``. With ``mask``, a masked step keeps
    every state and outputs zeros (``masked_output="zeros"``) or the kept h (``"state"``)."""
    if steps < 1:
        raise GraphError(f"{name}: a sequence needs at least one step, got {steps}")
    if masked_output not in ("zeros", "state"):
        raise GraphError(f"{name}: masked_output must be 'zeros' or 'state', got {masked_output!r}")
    outputs = {}
    states = None
    zeros = None
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        p = f"{name}/t{t}"
        xt = b.add_node("slice", x, name=f"{p}/x_slice", axis=1, start=t, stop=t + 1)
        xt = b.add_node("reshape", xt, name=f"{p}/x", shape=(-1,))
        if states is None:
            states = {s: b.add_node("fill", xt, name=f"{name}/{s}0",
                                    params={"value": np.zeros(hidden, dtype) if v is None else np.asarray(v)})
                      for s, v in initial.items()}
        new = step(p, xt, states)
        if mask is None:
            states, outputs[t] = new, new["h"]
            continue
        keep = b.add_node("slice", mask, name=f"{p}/mask", axis=1, start=t, stop=t + 1)
        states = {s: b.add_node("where", [keep, new[s], states[s]], name=f"{p}/{s}_kept") for s in new}
        if masked_output == "state":
            outputs[t] = states["h"]
            continue
        if zeros is None:
            zeros = b.add_node("constant", [], name=f"{name}/zeros", params={"value": np.zeros(hidden, dtype)})
        outputs[t] = b.add_node("where", [keep, new["h"], zeros], name=f"{p}/h_out")
    seq = [b.add_node("reshape", outputs[t], name=f"{name}/t{t}/h_seq", shape=(1, hidden)) for t in range(steps)]
    out = seq[0] if steps == 1 else b.add_node("concat", seq, name=f"{name}/outputs", axis=1)
    return out, states


def _summed_bias(hidden: int, dtype, order: str, cell: str, *biases):
    total = np.zeros(len(_ORDERS[cell]["canonical"]) * hidden, dtype=dtype)
    for extra in biases:
        if extra is not None:
            total = total + reorder_gates(extra, order, cell=cell)
    return total


def unroll_lstm(b: Emitter, x: str, steps: int, *, w_ih, w_hh, b_ih=None, b_hh=None, order: str = "torch",
                reverse: bool = False, name: str = "lstm", h0=None, c0=None, mask: str | None = None,
                masked_output: str = "zeros") -> tuple[str, str, str]:
    """Unroll one LSTM direction over ``x`` (N, steps, features).

    Weights are stacked per gate in ``order`` (see :data:`GATE_ORDERS`): ``w_ih`` (4h, features),
    ``w_hh`` (4h, h). ``h0``/``c0`` (h,) are the initial states (default zeros), graph nodes of op ``fill``
    named ``{name}/h0`` and ``{name}/c0``: the relevance that reaches them is what the initial states keep.
    ``mask`` (a node (N, steps) of 0/1) keeps the state over masked steps, see the module docstring.
    Returns (outputs (N, steps, h) in input time order, last h (N, h), last c (N, h)); ``reverse`` runs
    from the last step to the first (the backward half of a bidirectional layer).
    Node names: ``{name}/t{k}/{part}`` with k the input time index.
    """
    w_ih = reorder_gates(w_ih, order)
    w_hh = reorder_gates(w_hh, order)
    hidden = w_hh.shape[1]
    if w_ih.shape[0] != 4 * hidden or w_hh.shape[0] != 4 * hidden:
        raise GraphError(f"{name}: LSTM weights {w_ih.shape}, {w_hh.shape} do not stack 4 gates of {hidden}")
    dtype = np.result_type(w_ih.dtype, np.float32)
    bias = _summed_bias(hidden, dtype, order, "lstm", b_ih, b_hh)
    both = np.concatenate([w_ih, w_hh], axis=1)

    def step(p, xt, states):
        xh = b.add_node("concat", [xt, states["h"]], name=f"{p}/xh", axis=1)
        z = b.add_node("linear", xh, name=f"{p}/gates", params={"weight": both, "bias": bias})
        gate = {}
        for k, g in enumerate(CANONICAL):
            pre = b.add_node("slice", z, name=f"{p}/{g}_pre", axis=1, start=k * hidden, stop=(k + 1) * hidden)
            gate[g] = b.add_node("tanh" if g == "g" else "sigmoid", pre, name=f"{p}/{g}")
        ig = b.add_node("mul", [gate["i"], gate["g"]], name=f"{p}/i*g")
        fc = b.add_node("mul", [gate["f"], states["c"]], name=f"{p}/f*c")
        c = b.add_node("add", [fc, ig], name=f"{p}/c")
        tc = b.add_node("tanh", c, name=f"{p}/tanh_c")
        return {"h": b.add_node("mul", [gate["o"], tc], name=f"{p}/h"), "c": c}

    out, states = _unroll(b, x, steps, hidden, dtype, reverse=reverse, name=name, initial={"h": h0, "c": c0},
                          step=step, mask=mask, masked_output=masked_output)
    return out, states["h"], states["c"]


def unroll_gru(b: Emitter, x: str, steps: int, *, w_ih, w_hh, b_ih=None, b_hh=None, order: str = "torch",
               reset_after: bool = True, reverse: bool = False, name: str = "gru", h0=None,
               mask: str | None = None, masked_output: str = "zeros") -> tuple[str, str]:
    """Unroll one GRU direction over ``x`` (N, steps, features).

    Weights stacked per gate in ``order`` (see :data:`GRU_GATE_ORDERS`): ``w_ih`` (3h, features), ``w_hh``
    (3h, h); ``b_ih``/``b_hh`` (3h,) the input and recurrent biases (``reset_after=False`` has one bias:
    the recurrent candidate bias is then added to the candidate's input part, as Keras and ONNX do).
    ``h0`` (h,) the initial state (node ``{name}/h0``). ``reset_after``: the reset gate multiplies
    W_hn h + b_hn (torch, Keras default, ONNX linear_before_reset=1), else it multiplies h before W_hn.
    Returns (outputs (N, steps, h) in input time order, last h (N, h)).
    """
    w_ih = reorder_gates(w_ih, order, cell="gru")
    w_hh = reorder_gates(w_hh, order, cell="gru")
    hidden = w_hh.shape[1]
    if w_ih.shape[0] != 3 * hidden or w_hh.shape[0] != 3 * hidden:
        raise GraphError(f"{name}: GRU weights {w_ih.shape}, {w_hh.shape} do not stack 3 gates of {hidden}")
    dtype = np.result_type(w_ih.dtype, np.float32)
    zero = np.zeros(3 * hidden, dtype)
    bi = zero if b_ih is None else reorder_gates(b_ih, order, cell="gru")
    bh = zero if b_hh is None else reorder_gates(b_hh, order, cell="gru")
    rz = slice(0, 2 * hidden)
    n = slice(2 * hidden, 3 * hidden)
    rz_weight = np.concatenate([w_ih[rz], w_hh[rz]], axis=1)
    rz_bias = bi[rz] + bh[rz]
    one, minus = (b.add_node("constant", [], name=f"{name}/{k}", params={"value": np.asarray(v, dtype)})
                  for k, v in (("one", 1.0), ("minus_one", -1.0)))

    def step(p, xt, states):
        h = states["h"]
        xh = b.add_node("concat", [xt, h], name=f"{p}/xh", axis=1)
        pre = b.add_node("linear", xh, name=f"{p}/gates", params={"weight": rz_weight, "bias": rz_bias})
        r, z = (b.add_node("sigmoid", b.add_node("slice", pre, name=f"{p}/{g}_pre", axis=1, start=k * hidden,
                                                 stop=(k + 1) * hidden), name=f"{p}/{g}")
                for k, g in enumerate("rz"))
        if reset_after:
            nx = b.add_node("linear", xt, name=f"{p}/n_x", params={"weight": w_ih[n], "bias": bi[n]})
            nh = b.add_node("linear", h, name=f"{p}/n_h", params={"weight": w_hh[n], "bias": bh[n]})
            rnh = b.add_node("mul", [r, nh], name=f"{p}/r*n_h")
            npre = b.add_node("add", [nx, rnh], name=f"{p}/n_pre")
        else:
            rh = b.add_node("mul", [r, h], name=f"{p}/r*h")
            xrh = b.add_node("concat", [xt, rh], name=f"{p}/x_rh", axis=1)
            npre = b.add_node("linear", xrh, name=f"{p}/n_pre",
                              params={"weight": np.concatenate([w_ih[n], w_hh[n]], axis=1), "bias": bi[n] + bh[n]})
        cand = b.add_node("tanh", npre, name=f"{p}/n")
        keep = b.add_node("add", [one, b.add_node("mul", [minus, z], name=f"{p}/-z")], name=f"{p}/1-z")
        new = b.add_node("mul", [keep, cand], name=f"{p}/(1-z)*n")
        old = b.add_node("mul", [z, h], name=f"{p}/z*h")
        return {"h": b.add_node("add", [new, old], name=f"{p}/h")}

    out, states = _unroll(b, x, steps, hidden, dtype, reverse=reverse, name=name, initial={"h": h0}, step=step,
                          mask=mask, masked_output=masked_output)
    return out, states["h"]
