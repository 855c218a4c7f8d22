"""ONNX ``LSTM`` and ``GRU`` nodes, unrolled into graph ops by :mod:`attribx.recurrent`.

Semantics of opsets 7 to 22 (models older than 13 are converted first; ``layout`` came with opset 14):
inputs X, W (dirs, 4h | 3h, E), R (dirs, 4h | 3h, h), B (dirs, 8h | 6h: input then recurrent biases),
sequence_lens, initial_h, initial_c; attributes ``direction`` (forward, reverse, bidirectional),
``hidden_size``, ``layout`` (0: X (T, N, E), Y (T, dirs, N, H), Y_h/Y_c (dirs, N, H); 1: batch first) and,
for GRU, ``linear_before_reset`` (1: the reset gate multiplies R_h h + Rb_h, torch's form; 0: it multiplies
h). Gate blocks are in ONNX's order (LSTM i, o, f, c; GRU z, r, h); the unrollers convert them through
:func:`attribx.recurrent.reorder_gates` (``order="onnx"``).

The graph's batch axis is axis 0, so the sequence-first tensors of ``layout=0`` are stored batch-first:
X (T, N, E) arrives as a value (N, T, E) (a :class:`~attribx.translation.Tensor` with its batch on ONNX
axis 1, as after torch's ``Transpose(perm 1, 0, 2)``), Y is the value (N, T, dirs, H) with its ONNX batch
axis 2, Y_h and Y_c the values (N, dirs, H) with ONNX batch axis 1; the ops after them (Transpose, Reshape,
Squeeze, Gather, Slice, Concat) translate through ``Tensor.order`` (:mod:`attribx_onnx.converters.shape`).

``sequence_lens`` becomes the unroller's ``mask`` through the graph op ``length_mask``: computed from the
input (e.g. ``ReduceSum(Cast(Not(Equal(ids, pad))))``), or a constant that is the same for every sample
(a ``fill`` of that length). A masked step keeps the state and outputs zeros, so Y is zero beyond each
sequence's length, the reverse direction starts at each sequence's own last step and Y_h / Y_c are the
last valid states, as ONNX defines them.

Refused, naming the node: peepholes (input P), ``clip``, ``input_forget=1``, activations other than the
defaults (Sigmoid, Tanh, Tanh for LSTM; Sigmoid, Tanh for GRU), initial states computed from the input
or different per sample, per-sample constant lengths. ``Loop`` and ``Scan`` on the input's values (how
tf2onnx writes Keras GRU layers and masked LSTMs) are refused before the walk, with a message that says so
(:meth:`attribx_onnx.translate.OnnxTranslator._refuse_control_flow`).
"""
from __future__ import annotations

import numpy as np

from attribx.recurrent import unroll_gru, unroll_lstm

from . import TABLE, Unsupported
from .common import at_batch, batch_axis

#: Default activations per direction (LSTM: f, g, h; GRU: f, g); ONNX names are case-sensitive.
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh")}
GATES = {"LSTM": 4, "GRU": 3}
DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}


def _check_attrs(node, attrs, dirs: int) -> None:
    op = node.op_type
    if attrs.get("clip") is not None:
        raise Unsupported(f"clip={attrs['clip']}: the graph's cells do not clip their pre-activations")
    if op == "LSTM" and int(attrs.get("input_forget", 0)):
        raise Unsupported("input_forget=1 (coupled input and forget gates)")
    acts = attrs.get("activations")
    if acts is not None and tuple(acts) != DEFAULT_ACTIVATIONS[op] * dirs:
        raise Unsupported(f"activations {list(acts)}: only the defaults "
                          f"{list(DEFAULT_ACTIVATIONS[op] * dirs)} translate (the unrolled cells use sigmoid "
                          f"gates and tanh)")


def _weights(ctx, node, dirs: int, gates: int):
    """W, R and the two biases per direction, as float parameters: (w_ih, w_hh, b_ih, b_hh) per direction."""
    w = np.asarray(ctx.const(node.input[1], "W"))
    r = np.asarray(ctx.const(node.input[2], "R"))
    b = ctx.optional_const(node, 3, "B")
    hidden = r.shape[-1] if r.ndim == 3 else None
    if w.ndim != 3 or r.ndim != 3 or w.shape[0] != dirs or r.shape != (dirs, gates * hidden, hidden) \
            or w.shape[1] != gates * hidden:
        raise Unsupported(f"W {w.shape} and R {r.shape} are not ({dirs}, {gates}·hidden, input) and "
                          f"({dirs}, {gates}·hidden, hidden)")
    if b is not None:
        b = np.asarray(b)
        if b.shape != (dirs, 2 * gates * hidden):
            raise Unsupported(f"B {b.shape} is not ({dirs}, {2 * gates * hidden})")
    out = []
    for d in range(dirs):
        b_ih = b_hh = None
        if b is not None:
            b_ih, b_hh = (ctx.float_param(v) for v in np.split(b[d], 2))
        out.append((ctx.float_param(w[d]), ctx.float_param(r[d]), b_ih, b_hh))
    return hidden, out


def _initial(ctx, node, index: int, what: str, dirs: int, hidden: int, layout: int) -> list:
    """An initial state per direction ((hidden,) arrays, None where left out): one value for every sample."""
    if len(node.input) <= index or not node.input[index]:
        return [None] * dirs
    tensor = node.input[index]
    if not ctx.is_const(tensor):
        raise Unsupported(f"{what} {tensor!r} is computed from the model's input; initial states translate when "
                          f"they are constants, the same for every sample")
    pair = ctx.const_pair(tensor)
    found = []
    for arr in (pair.a, pair.b):
        arr = np.asarray(arr)
        if arr.ndim != 3:
            raise Unsupported(f"{what} has shape {arr.shape}, not 3 axes")
        if layout == 1:
            arr = arr.transpose(1, 0, 2)              # (N, dirs, H) -> (dirs, N, H)
        if arr.shape[0] != dirs or arr.shape[2] != hidden or arr.shape[1] < 1:
            raise Unsupported(f"{what} has shape {np.asarray(pair.a).shape}, which does not fit {dirs} "
                              f"direction(s) of {hidden} units (layout={layout})")
        if not np.array_equal(arr, np.broadcast_to(arr[:, :1], arr.shape)):
            raise Unsupported(f"{what} differs between samples; the graph has one initial state for every sample")
        found.append(arr[:, 0])
    if not np.array_equal(found[0], found[1]):
        raise Unsupported(f"{what} depends on the batch size")
    return [ctx.float_param(v) for v in found[0]]


def _mask(ctx, node, x, steps: int) -> str | None:
    """The (N, steps) mask of ``sequence_lens`` (None when every sequence has all steps)."""
    if len(node.input) <= 4 or not node.input[4]:
        return None
    tensor = node.input[4]
    if ctx.is_const(tensor):
        pair = ctx.const_pair(tensor)
        lengths = np.unique(np.concatenate([np.ravel(pair.a), np.ravel(pair.b)]))
        if lengths.size != 1:
            raise Unsupported(f"sequence_lens is a constant with different lengths per sample "
                              f"({np.ravel(pair.a).tolist()}); the graph's batch axis is free, so per-sample "
                              f"lengths must be computed from the input")
        length = int(lengths[0])
        if not 1 <= length <= steps:
            raise Unsupported(f"sequence_lens {length} is outside 1..{steps}")
        if length == steps:
            return None
        lens = ctx.emit("fill", [x], params={"value": np.asarray(length, ctx.np_dtype)},
                        name=ctx.sub("sequence_lens"))
    else:
        lens = ctx.value(tensor)
        if batch_axis(lens) or lens.rank != 1:
            raise Unsupported(f"sequence_lens {tensor!r} is not one length per sample")
    return ctx.emit("length_mask", [lens], attrs={"steps": steps}, name=ctx.sub("mask")).name


@TABLE.register("LSTM", "GRU", any_batch_axis=True)
def recurrent(ctx, node, attrs):
    """An ONNX LSTM or GRU node: each direction unrolled; returns Y, Y_h (and Y_c) in the layout's axes."""
    op = node.op_type
    direction = attrs.get("direction", "forward")
    if direction not in DIRECTIONS:
        raise Unsupported(f"direction={direction!r}")
    reverses = DIRECTIONS[direction]
    dirs = len(reverses)
    _check_attrs(node, attrs, dirs)
    layout = int(attrs.get("layout", 0))
    if layout not in (0, 1):
        raise Unsupported(f"layout={layout}")
    if op == "LSTM" and len(node.input) > 7 and node.input[7]:
        raise Unsupported("peephole weights P: the unrolled LSTM cell has no peepholes")
    tensor = node.input[0]
    x = ctx.value(tensor)
    want = 1 if layout == 0 else 0
    if batch_axis(x) != want or x.rank != 3:
        where = "(T, N, E)" if layout == 0 else "(N, T, E)"
        raise Unsupported(f"X {tensor!r} must be a sequence {where} for layout={layout} with the batch on axis "
                          f"{want}, but its batch axis is {batch_axis(x)} (the graph's input is batch "
                          f"first: a sequence-first model needs a Transpose before the {op}, as torch.onnx writes)")
    steps = x.shape[1]
    if x.name in {v.name for v in ctx.graph.input}:
        ctx.sequence_input = True          # the input is a sequence of vectors: dims (sample, token, embedding)
    gates = GATES[op]
    hidden, weights = _weights(ctx, node, dirs, gates)
    if attrs.get("hidden_size") is not None and int(attrs["hidden_size"]) != hidden:
        raise Unsupported(f"hidden_size={attrs['hidden_size']} but R holds {hidden} units")
    h0 = _initial(ctx, node, 5, "initial_h", dirs, hidden, layout)
    c0 = _initial(ctx, node, 6, "initial_c", dirs, hidden, layout) if op == "LSTM" else None
    mask = _mask(ctx, node, x, steps)
    outs, hs, cs = [], [], []
    for d, reverse in enumerate(reverses):
        w_ih, w_hh, b_ih, b_hh = weights[d]
        common = dict(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, order="onnx", reverse=reverse,
                      name=f"{ctx.main}/{'reverse' if reverse else 'forward'}", h0=h0[d], mask=mask)
        if op == "LSTM":
            out, h, c = unroll_lstm(ctx, x.name, steps, c0=c0[d], **common)
            cs.append(c)
        else:
            out, h = unroll_gru(ctx, x.name, steps, reset_after=bool(int(attrs.get("linear_before_reset", 0))),
                                **common)
        outs.append(out)
        hs.append(h)

    def stack(values, shape, axis, name):
        """One direction's (N, ...) values as (N, ..., 1, H) parts concatenated on the directions axis."""
        last = ctx.main if name == "Y" else ctx.sub(name)
        parts = [ctx.emit("reshape", [v], attrs={"shape": shape}, name=last if dirs == 1 else ctx.sub(f"{name}{k}"))
                 for k, v in enumerate(values)]
        return parts[0] if dirs == 1 else ctx.emit("concat", parts, attrs={"axis": axis}, name=last)

    # stored batch-first: Y (N, T, dirs, H) named after the node, Y_h and Y_c (N, dirs, H); ONNX's batch axis
    # by layout
    y = stack(outs, (steps, 1, hidden), 2, "Y")
    state_batch = 1 if layout == 0 else 0
    results = [at_batch(y, 2 if layout == 0 else 0), at_batch(stack(hs, (1, hidden), 1, "Y_h"), state_batch)]
    if op == "LSTM":
        results.append(at_batch(stack(cs, (1, hidden), 1, "Y_c"), state_batch))
    return results[:len(node.output)] + [None] * (len(node.output) - len(results))

