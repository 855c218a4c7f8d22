"""Recurrent layers and packed sequences: ``nn.LSTM``/``nn.GRU`` unrolled by :mod:`attribx.recurrent`
(writing straight into the translation through the kit's ``add_node``), ``pack_padded_sequence`` and
``pad_packed_sequence``.

The graph's batch axis is always first, so ``batch_first=False`` is read through time-major views
(:class:`~attribx_torch.values.Swapped`); a packed batch carries the (N, T) length mask that keeps each
sequence's state past its end.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import rnn as rnn_utils

from attribx.recurrent import unroll_gru, unroll_lstm
from attribx.translation import Tensor

from ..values import Packed, Swapped, Unsupported, is_number, is_t
from .base import TABLE

#: the functions torch.fx cannot trace through (they read tensor values): recorded as one call each
PACK_PADDED = rnn_utils.pack_padded_sequence
PAD_PACKED = rnn_utils.pad_packed_sequence


def _initial_state(ctx, hx, k, what):
    """The k-th layer/direction's initial state as one vector: the graph has one value for every sample."""
    if hx is None:
        return None
    if is_t(hx):
        raise Unsupported(f"its initial {what} state is computed from the input; give it as a constant")
    v = hx.detach().to("cpu")
    if v.dim() == 3:
        v = v[k]
    if v.dim() == 2:
        if not bool(torch.all(v == v[:1])):
            raise Unsupported(f"its initial {what} state differs between samples; the graph holds one "
                              f"initial state for every sample")
        v = v[0]
    return v.to(torch.float64).numpy().astype(ctx.np_dtype)


def _sequence(ctx, m, x):
    """The batch-first graph value an RNN reads, and its packing (None if not packed)."""
    kind = type(m).__name__
    if isinstance(x, Packed):          # a packed sequence holds its own layout; batch_first does not apply
        return x.data, x
    if m.batch_first:
        if isinstance(x, Swapped):
            raise Unsupported(f"batch_first=True, but its input is time-major (time axis first); pass the "
                              f"batch-first tensor, or build the {kind} with batch_first=False")
        return ctx.tensor(x), None
    if isinstance(x, Swapped):
        return ctx.base(x), None
    x = ctx.tensor(x)
    fed = ("the model feeds its own input to it, i.e. the model expects time-major data (T, N, features), "
           "which the graph cannot take: its input is batch-first (N, T, features)") if x.name == "input" else \
        "its input's axis 0 is the batch axis here (the graph's input is batch-first)"
    raise Unsupported(f"batch_first=False reads axis 0 as time, but {fed}; pass batch-first data and "
                      f"transpose in the model before the layer ({kind.lower()}(x.transpose(0, 1))), or build "
                      f"the {kind} with batch_first=True (the weights are the same)")


# initial states expanded to the batch are fine: one value for every sample
@TABLE.register(nn.LSTM, nn.GRU, time_major="aware", batch_args_ok=True)
def rnn_module(ctx, m, input, hx=None):
    """nn.LSTM and nn.GRU unrolled over the traced sequence length (attribx.recurrent), every layer and
    direction, on a batch-first tensor, a time-major view of one (``batch_first=False``) or a packed
    sequence (its length mask keeps each sequence's state past its end). Returns torch's (output, h_n) /
    (output, (h_n, c_n)): output batch-first, time-major or packed as torch's is, and the final states as
    time-major views (L·D, N, H) of the per-layer/direction states, so that ``h_n[-1]``, ``h_n.squeeze(0)``
    or ``h_n.transpose(0, 1)`` read them."""
    lstm = isinstance(m, nn.LSTM)
    if getattr(m, "proj_size", 0):
        raise Unsupported("proj_size > 0 (an LSTM with projections)")
    x, packed = _sequence(ctx, m, input)
    if len(x.shape) != 3:
        raise Unsupported(f"input of rank {len(x.shape)}; the graph explains batched sequences (N, T, features)")
    if x.name == "input":
        ctx.sequence_input = True       # the input is a sequence of vectors: dims (sample, token, embedding)
    initial = ((None, None) if hx is None else hx) if lstm else (hx,)
    states = ("hidden", "cell") if lstm else ("hidden",)
    steps, hidden = x.shape[1], m.hidden_size
    dirs = 2 if m.bidirectional else 1
    seq = x.name
    finals = [[] for _ in states]
    for layer in range(m.num_layers):
        outs = []
        for d in range(dirs):
            suffix = f"l{layer}" + ("_reverse" if d else "")
            k = layer * dirs + d
            w = {f"{a}_{b}": ctx.param(getattr(m, f"{'weight' if a == 'w' else 'bias'}_{b}_{suffix}", None))
                 for a in ("w", "b") for b in ("ih", "hh")}
            init = [_initial_state(ctx, s, k, what) for s, what in zip(initial, states)]
            common = {"order": "torch", "reverse": bool(d), "name": f"{ctx.main}/{suffix}",
                      "mask": packed.mask if packed else None}
            if lstm:
                out, *last = unroll_lstm(ctx, seq, steps, **w, **common, h0=init[0], c0=init[1])
            else:
                out, *last = unroll_gru(ctx, seq, steps, **w, **common, h0=init[0])
            outs.append(out)
            for f, v in zip(finals, last):
                f.append(Tensor(v, (1, hidden), dtype=ctx.dtype))
        seq = outs[0] if dirs == 1 else ctx.add_node("concat", outs, name=f"{ctx.main}/l{layer}/outputs", axis=2)
    out = ctx.emit("identity", [Tensor(seq, (1, steps, dirs * hidden), dtype=ctx.dtype)], (1, steps, dirs * hidden))
    if packed:
        out = Packed(out, packed.lengths, packed.mask, zeroed=True)
    elif not m.batch_first:
        out = Swapped(out)
    last = [Swapped(None, tuple(f), f"{ctx.main}/{s}") for f, s in zip(finals, ("h_n", "c_n"))]
    return out, (tuple(last) if lstm else last[0])


# lengths that depend on the batch size only are refused below
@TABLE.register(PACK_PADDED, batch_args_ok=True, time_major="aware")
def pack_padded_sequence(ctx, input, lengths, batch_first=False, enforce_sorted=True):
    """The data and a length mask (N, T)."""
    x = input
    if bool(batch_first):
        if isinstance(x, Swapped):
            raise Unsupported("batch_first=True, but its input is time-major (time axis first)")
        data = ctx.tensor(x)
    elif isinstance(x, Swapped):
        data = ctx.base(x)
    else:
        raise Unsupported("batch_first=False reads axis 0 as time, but it is the batch axis here (the graph's "
                          "input is batch-first); pass batch_first=True, or pack x.transpose(0, 1)")
    if not is_t(lengths) or isinstance(lengths, (Swapped, Packed)):
        raise Unsupported(
            "its lengths do not come from the model input (constants, or a second forward argument); the "
            "graph has one input, so compute the lengths in the model from the padded input: "
            "(ids != pad).sum(1) for token ids, (x != 0).any(-1).sum(1) for embedded sequences")
    lengths = ctx.tensor(lengths)
    if len(lengths.shape) != 1:
        raise Unsupported(f"lengths of shape {lengths.shape}; one length per sample (N,)")
    if len(data.shape) < 2:
        raise Unsupported(f"packs a tensor of rank {len(data.shape)}")
    steps = data.shape[1]
    mask = ctx.emit("length_mask", [lengths], (1, steps), {"steps": steps})
    return Packed(data, lengths, mask.name)


@TABLE.register(PAD_PACKED)
def pad_packed_sequence(ctx, sequence, batch_first=False, padding_value=0.0, total_length=None):
    """The packed data (zeros at padding, as an RNN's packed output is) and the lengths."""
    p = sequence
    if not isinstance(p, Packed):
        raise Unsupported("unpacks something that is not a PackedSequence computed from the input")
    batch_first = bool(batch_first)
    steps = p.data.shape[1]
    if not is_number(padding_value) or float(padding_value) != 0.0:
        raise Unsupported(f"padding_value={padding_value!r}; the graph pads with zeros")
    if total_length is not None and int(total_length) != steps:
        raise Unsupported(f"total_length={total_length}, but the graph is built for sequences of {steps} steps")
    if not p.zeroed:
        raise Unsupported("unpacks a sequence that no nn.LSTM/nn.GRU ran over (the graph keeps its padding)")
    traced = ctx.result()[0]
    if traced.shape[1 if batch_first else 0] != steps:
        raise Unsupported(f"its traced output has {traced.shape[1 if batch_first else 0]} steps, not the input's "
                          f"{steps}: the lengths the model computes from an example input of ones are not "
                          f"all {steps}")
    return (p.data if batch_first else Swapped(p.data)), p.lengths
