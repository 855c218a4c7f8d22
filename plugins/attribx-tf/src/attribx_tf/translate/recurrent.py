"""Keras converters of recurrent layers: LSTM and GRU (and ``keras.layers.RNN`` over their cells) and
Bidirectional, unrolled over the input's steps by :mod:`attribx.recurrent`.

The unrollers write through the translator's ``add_node`` (the kit's adapter for shared builders); a
padding mask on the input (:mod:`.masks`) makes masked steps keep the state, as in Keras.
"""
from __future__ import annotations

import keras

from attribx.recurrent import unroll_gru, unroll_lstm

from .common import TABLE, Unsupported, as_numpy, class_path
from .masks import OpaqueMask, mask_of, with_mask


def _fn_name(fn) -> str:
    return getattr(fn, "__name__", str(fn))


def _rnn_cell(layer) -> str:
    """'lstm' or 'gru' for a recurrent layer the unrollers express exactly; refuses everything else."""
    cell = getattr(layer, "cell", None)
    if isinstance(cell, keras.layers.LSTMCell):
        kind = "lstm"
    elif isinstance(cell, keras.layers.GRUCell):
        kind = "gru"
    else:
        what = class_path(cell) if cell is not None else "no cell"
        raise Unsupported(f"its cell ({what}) has no unrolled translation; LSTM and GRU cells have one "
                          f"(SimpleRNN, ConvLSTM, stacked cells do not)")
    if layer.stateful:
        raise Unsupported("stateful=True: the state carried from one call to the next is not part of the graph")
    if _fn_name(cell.activation) != "tanh":
        raise Unsupported(f"activation {_fn_name(cell.activation)!r}: the unrolled cell uses tanh")
    if _fn_name(cell.recurrent_activation) != "sigmoid":
        raise Unsupported(f"recurrent_activation {_fn_name(cell.recurrent_activation)!r}: the unrolled cell's "
                          f"gates use sigmoid")
    if getattr(cell, "quantization_mode", None) or getattr(layer, "quantization_mode", None):
        raise Unsupported("quantized kernels are not translated")
    return kind


def _mask_for_rnn(x, steps: int):
    m = mask_of(x)
    if m is None:
        return None
    if isinstance(m, OpaqueMask):
        raise Unsupported(f"it reads a padding mask the translation does not follow ({m.reason})")
    if tuple(m.shape[1:]) != (steps,):
        raise Unsupported(f"its mask has shape {m.shape[1:]}, expected one entry per step ({steps},)")
    return m


def _unroll(ctx, layer, x, mask, name: str):
    """One Keras LSTM/GRU over ``x`` (Keras order, (N, steps, features)): (outputs in input time order,
    Keras's last output, [states]). Masked steps keep the state; their output is zeros when the layer has
    zero_output_for_mask (Bidirectional sets it with return_sequences), else the kept output, as Keras."""
    kind = _rnn_cell(layer)
    cell = layer.cell
    steps = x.shape[1]
    zeros = bool(getattr(layer, "zero_output_for_mask", False))
    kw = {"reverse": bool(layer.go_backwards), "name": name, "mask": None if mask is None else mask.name,
          "masked_output": "zeros" if zeros else "state"}
    w_ih, w_hh = as_numpy(cell.kernel).T.copy(), as_numpy(cell.recurrent_kernel).T.copy()
    bias = as_numpy(cell.bias) if cell.use_bias else None
    if kind == "lstm":
        out, h, c = unroll_lstm(ctx, x.name, steps, w_ih=w_ih, w_hh=w_hh, b_ih=bias, order="keras", **kw)
        states = [h, c]
    else:
        reset_after = bool(cell.reset_after)
        b_ih, b_hh = (bias[0], bias[1]) if bias is not None and reset_after else (bias, None)
        out, h = unroll_gru(ctx, x.name, steps, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, order="keras",
                            reset_after=reset_after, **kw)
        states = [h]
    states = [ctx.value(s) for s in states]
    last = states[0]
    if mask is not None and zeros:      # Keras's last output is the last processed step's, zeroed if masked
        t = 0 if layer.go_backwards else steps - 1
        sl = ctx.add_node("slice", out, name=f"{name}/last_output_slice", axis=1, start=t, stop=t + 1, step=None)
        last = ctx.value(ctx.add_node("reshape", sl, name=f"{name}/last_output", shape=(-1,)))
    return ctx.value(out), last, states


def _flip_time(ctx, v, suffix: str):
    """``v`` (N, steps, ...) with its steps in reverse order: Keras's go_backwards outputs."""
    steps = v.shape[1]
    if steps == 1:
        return v
    parts = [ctx.emit("slice", [v], attrs={"axis": 1, "start": t, "stop": t + 1, "step": None},
                      name=ctx.sub(f"{suffix}/t{t}"), order=v.order) for t in range(steps - 1, -1, -1)]
    return ctx.emit("concat", parts, attrs={"axis": 1}, name=ctx.sub(suffix), order=v.order)


def _rnn_input(ctx, layer, xs):
    if len(xs) != 1:
        raise Unsupported(f"it is called with {len(xs)} tensors (initial_state or an explicit mask); the graph "
                          f"starts recurrent layers from zero states and takes masks from Masking or "
                          f"Embedding(mask_zero=True)")
    x = ctx.keras_order(xs[0])
    if x.rank != 3:
        raise Unsupported(f"input of rank {x.rank}; recurrent layers read (N, steps, features)")
    if x.name in (ctx.input_name, ctx.masked_input) and not ctx.indices:
        ctx.sequence_input = True
    return with_mask(x, mask_of(xs[0]))


@TABLE.register(keras.layers.RNN, reads_mask=True)
def rnn(ctx, layer, xs):
    """LSTM, GRU (and keras.layers.RNN over an LSTMCell or GRUCell), unrolled over the input's steps;
    other cells are refused with the reason."""
    x = _rnn_input(ctx, layer, xs)
    _rnn_cell(layer)
    mask = _mask_for_rnn(x, x.shape[1])
    seq, last, states = _unroll(ctx, layer, x, mask, ctx.main)
    if layer.return_sequences:       # Keras returns go_backwards outputs in processing order
        out = _flip_time(ctx, seq, "flip") if layer.go_backwards else seq
        y = ctx.emit("identity", [out], order=out.order)
        y.mask = mask
    else:
        y = ctx.emit("identity", [last], order=last.order)
    return [y] + states if layer.return_state else y


@TABLE.register(keras.layers.Bidirectional, reads_mask=True)
def bidirectional(ctx, layer, xs):
    """Bidirectional: forward and backward layers (each its own weights) on the same input and mask, the
    backward sequence flipped back to input order, merged by merge_mode (None: two outputs)."""
    x = _rnn_input(ctx, layer, xs)
    fwd, bwd = layer.forward_layer, layer.backward_layer
    for sub in (fwd, bwd):
        try:
            _rnn_cell(sub)
        except Unsupported as err:
            raise Unsupported(f"its layer {sub.name!r} ({class_path(sub)}): {err}") from None
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
        outs = [ctx.emit("concat", [y, y_rev], attrs={"axis": y.rank - 1}, order=y.order)]
    elif mode == "sum":
        outs = [ctx.emit("add", [y, y_rev], order=y.order)]
    elif mode == "ave":
        s = ctx.emit("add", [y, y_rev], name=ctx.sub("sum"), order=y.order)
        outs = [ctx.emit("mul", [s, ctx.constant(0.5, "half")], order=y.order)]
    elif mode == "mul":
        outs = [ctx.emit("mul", [y, y_rev], order=y.order)]
    elif mode is None:
        outs = [ctx.emit("identity", [y], order=y.order),
                ctx.emit("identity", [y_rev], name=ctx.sub("backward"), order=y.order)]
    else:
        raise Unsupported(f"merge_mode {mode!r}")
    if layer.return_sequences:
        for o in outs:
            o.mask = mask
    if layer.return_state:
        return outs + stf + stb
    return outs if len(outs) > 1 else outs[0]
