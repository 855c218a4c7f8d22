"""Graph passes: rewrites of the graph after translation (canonicalisation), registered as plugins."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .axes import axis_index, chain_above, rearrange
from .ops import conv_geometry, pad_widths


@dataclass(frozen=True)
class GraphPass:
    """A named rewrite ``graph -> graph``. ``default`` passes run in :func:`attribx.translate`."""

    name: str
    run: Callable
    description: str = ""
    default: bool = True

    def __call__(self, graph):
        return self.run(graph)


def fold_batch_norm(graph):
    """Fold an inference batch norm into the linear or conv right before it (its only reader).

    y = (W x + b - mean) / sqrt(var + eps) * scale + bias  ==  W' x + b'  with
    W' = W * k, b' = (b - mean) * k + bias, k = scale / sqrt(var + eps) per output channel.
    The folded layer keeps its own name; the batch norm's name then addresses the same values.
    """
    consumers = graph.consumers()
    folded: dict[str, str] = {}   # batch norm name -> layer name
    nodes = {n.name: n for n in graph.nodes}
    for bn in graph.nodes:
        if bn.op != "batch_norm" or bn.attrs.get("axis", 1) not in (1, -1):
            continue
        (src,) = bn.inputs
        layer = nodes.get(src)
        if layer is None or layer.op not in ("conv", "linear") or consumers[src] != [bn.name] \
                or src in graph.outputs:
            continue
        if layer.op == "conv" and bn.attrs.get("axis", 1) != 1:
            continue
        if layer.op == "linear" and bn.attrs.get("axis", 1) == 1 and len(layer.shape) != 2:
            continue
        p = bn.params
        w = layer.params["weight"]
        dt = np.result_type(w.dtype, np.float32)
        k = p.get("scale", np.ones_like(p["var"])) / np.sqrt(p["var"].astype(np.float64) + bn.attrs["eps"])
        b = layer.params.get("bias", np.zeros(w.shape[0], dt))
        new_b = (b - p["mean"]) * k + p.get("bias", np.zeros_like(k))
        new_w = w * k.reshape((-1,) + (1,) * (w.ndim - 1))
        nodes[src] = layer.replace(params={"weight": new_w.astype(w.dtype), "bias": new_b.astype(w.dtype)},
                                   source=f"{layer.source} + folded {bn.name}".strip(" +"))
        folded[bn.name] = src
    if not folded:
        return graph
    new_nodes = []
    for n in graph.nodes:
        if n.name in folded:
            continue
        n = nodes[n.name]
        new_nodes.append(n.replace(inputs=tuple(folded.get(i, i) for i in n.inputs)))
    outputs = [folded.get(o, o) for o in graph.outputs]
    out = graph.with_nodes(new_nodes, outputs)
    out.meta.setdefault("passes", []).append("fold_batch_norm")
    out.meta.setdefault("aliases", {}).update(folded)
    return out


def fold_pad_into_conv(graph):
    """Fold a zero padding of the spatial axes into the conv that reads it (its only reader).

    Keras writes ``ZeroPadding2D`` then a ``valid`` conv where torch writes ``padding=`` on the conv: the
    same function, but input-independent rules (flat, w², z-box) see the padded positions of an explicit
    pad as inputs. Folding gives both the semantics of conv padding, so the frameworks agree.
    """
    consumers = graph.consumers()
    nodes = {n.name: n for n in graph.nodes}
    folded: set[str] = set()
    for conv in graph.nodes:
        if conv.op != "conv":
            continue
        pad = nodes.get(conv.inputs[0])
        if pad is None or pad.op != "pad" or float(pad.attrs.get("value", 0.0)) != 0.0 \
                or consumers[pad.name] != [conv.name] or pad.name in graph.outputs:
            continue
        in_shape = (1,) + tuple(graph.shape_of(pad.name))[1:]     # shapes carry a free batch axis
        widths = pad_widths(pad.attrs, len(in_shape))
        if any(w != (0, 0) for w in widths[:2]):       # padding of the batch or channel axis
            continue
        _, _, _, _, own = conv_geometry(conv.attrs, in_shape, conv.params["weight"].shape, conv.name)
        total = [(a + c, b + d) for (a, b), (c, d) in zip(widths[2:], own)]
        attrs = dict(conv.attrs, padding=[tuple(int(v) for v in p) for p in total])
        nodes[conv.name] = conv.replace(inputs=(pad.inputs[0],) + tuple(conv.inputs[1:]), attrs=attrs,
                                        source=f"{conv.source} + folded {pad.name}".strip(" +"))
        folded.add(pad.name)
    if not folded:
        return graph
    out = graph.with_nodes([nodes[n.name] for n in graph.nodes if n.name not in folded], graph.outputs)
    out.meta.setdefault("passes", []).append("fold_pad_into_conv")
    out.meta.setdefault("folded_pads", []).extend(sorted(folded))
    return out


def fold_bias_add(graph):
    """Fold a constant added after a linear, conv or transposed conv into its bias, also across reshapes.

    A bias written as a separate addition (tf2onnx's Conv1D: Unsqueeze, Conv, Squeeze, Add; MatMul then Add;
    ``F.conv2d(x, w) + b``) is the same function, but LRP rules see a conv's bias in its pre-activation z,
    and an addition's constant takes no relevance: folding gives every export the numbers of the native
    layer. The constant must hold one value per output channel wherever that channel lands after the
    rearranging nodes in between (traced with :mod:`attribx.axes`); the addition's name becomes an alias.
    """
    consumers = graph.consumers()
    nodes = {n.name: n for n in graph.nodes}
    replaced: dict[str, str] = {}       # removed addition -> the value that now stands for it
    for add in graph.nodes:
        if add.op != "add" or len(add.inputs) != 2:
            continue
        consts = [i for i in add.inputs if i in graph and graph[i].op == "constant"]
        if len(consts) != 1:
            continue
        signal = add.inputs[1 - add.inputs.index(consts[0])]
        chain, top = chain_above(graph, signal, add.name, consumers)
        layer = nodes.get(top) if top is not None else None
        if layer is None or layer.op not in ("linear", "conv", "conv_transpose"):
            continue
        axis = -1 if layer.op == "linear" else 1
        shape = (1,) + tuple(graph.shape_of(top))[1:]
        channel = rearrange(chain, axis_index(shape, axis))
        value = np.asarray(graph[consts[0]].params["value"])
        if np.broadcast_shapes(channel.shape, value.shape) != channel.shape:
            continue            # the constant would enlarge the signal
        spread = np.broadcast_to(value, channel.shape).astype(np.float64).ravel()
        ids = channel.astype(np.int64).ravel()
        bias = np.zeros(shape[axis])
        bias[ids] = spread
        if not np.array_equal(bias[ids], spread):
            continue            # not one value per output channel
        w = layer.params["weight"]
        old = layer.params.get("bias")
        new_bias = bias if old is None else old.astype(np.float64) + bias
        nodes[top] = layer.replace(params=dict(layer.params, bias=new_bias.astype(w.dtype)),
                                   source=f"{layer.source} + folded {add.name}".strip(" +"))
        replaced[add.name] = chain[-1].name if chain else top
    if not replaced:
        return graph
    kept = [nodes[n.name].replace(inputs=tuple(replaced.get(i, i) for i in nodes[n.name].inputs))
            for n in graph.nodes if n.name not in replaced]
    read = {i for n in kept for i in n.inputs}
    kept = [n for n in kept if n.op != "constant" or n.name in read or n.name in graph.outputs]
    out = graph.with_nodes(kept, [replaced.get(o, o) for o in graph.outputs])
    out.meta.setdefault("passes", []).append("fold_bias_add")
    out.meta.setdefault("aliases", {}).update(replaced)
    return out


BUILTIN_PASSES = (
    GraphPass("fold_bias_add", fold_bias_add,
              "Fold a constant added after a linear/conv into its bias, also across reshapes (exporters)."),
    GraphPass("fold_batch_norm", fold_batch_norm,
              "Fold batch norm into the linear/conv before it (exact, incl. eps)."),
    GraphPass("fold_pad_into_conv", fold_pad_into_conv,
              "Fold a zero padding of the spatial axes into the conv that reads it (Keras ZeroPadding)."),
)
