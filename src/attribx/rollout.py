"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020): the baseline
that transformer explanations are compared against.

Each attention map A_l (softmax over keys, heads fused by their mean, max or min) is mixed with the identity
for the residual connection, Ã_l = (1 − r)·A_l + r·I, and its rows renormalised; the rollout is the product
Ã_L ⋯ Ã_1, whose row t says how much each input token flows into token t after the last attention layer.
The explained rows are the tokens the score reads (found by one gradient pass: the query rows of the last
attention map whose gradient is non-zero: the class token of a ViT or BERT classifier, the explained
position of a language model, every token under mean pooling), averaged. Relevance is per token (dims
``sample, token``), or spread evenly over each patch's pixels for image inputs cut into a grid of patches.

Rollout does not depend on the explained class (the same map for every target); it is a baseline, not an
LRP method, so no conservation is checked. Attention is found in the graph, whatever framework it came
from: every softmax whose result is a square (queries × keys) map multiplied into a matrix product.
"""
from __future__ import annotations

from typing import Annotated, Any, Mapping

import numpy as np

from .errors import MethodError
from .inputs import takes_indices
from .methods import Method, gradient_composite
from .parameters import UnitInterval, one_of
from .propagation import Propagation, run_forward
from .tokens import TOKEN

HeadFusion = Annotated[str, one_of("mean", "max", "min")]


def rollout_parameters(residual: UnitInterval = 0.5, head_fusion: HeadFusion = "mean"):
    """``residual``: the identity's weight r for the skip connection (0.5 as in the paper); ``head_fusion``:
    how the heads of one layer become one map (``"mean"`` as in the paper, ``"max"``, ``"min"``)."""
    return gradient_composite()


def attention_maps(graph) -> list[str]:
    """The softmax nodes, in graph order, whose (…, queries, keys) output is square and feeds a matmul."""
    users = graph.consumers()
    found = []
    for node in graph.nodes:
        if node.op != "softmax":
            continue
        shape = graph.shape_of(node.name)
        feeds_product = any(graph[u].op == "matmul" for u in users.get(node.name, ()))
        if feeds_product and len(shape) in (3, 4) and shape[-1] == shape[-2]:
            found.append(node.name)
    return found


class AttentionRollout(Method):
    """attention_rollout: a method that reads the forward pass's attention instead of passing relevance."""

    def __post_init__(self):
        super().__post_init__()
        self.family = "attention"

    def run(self, graph, engine, x, targets_fn, params: Mapping[str, Any], init=None, keep=(),
            conservation=False, ops=None, rules=None, masks=None) -> Propagation:
        if len(graph.signal_inputs) > 1:
            raise MethodError(f"method {self.name!r} reads attention over one input's tokens; this model has several "
                              f"signal inputs ({', '.join(v.name for v in graph.signal_inputs)})")
        if keep or conservation:
            raise MethodError(f"method {self.name!r} reads attention maps: layers= and conservation= are not "
                              f"available for it")
        maps = attention_maps(graph)
        if not maps:
            raise MethodError(f"method {self.name!r} needs attention: this graph has no softmax over a square "
                              f"(queries x keys) map that feeds a matrix product")
        reading = Method.run(self, graph, engine, x, targets_fn, {}, init, keep=[maps[-1]], ops=ops, rules=rules,
                             masks=masks)
        acts = run_forward(graph, engine, x, upto=maps[-1], masks=masks)
        n = len(x)
        flow = None
        for name in maps:
            fused = _fuse_heads(np.asarray(engine.to_numpy(acts[name]), dtype=np.float64), params["head_fusion"],
                                n, name)
            if flow is not None and fused.shape[-1] != flow.shape[-1]:
                raise MethodError(f"method {self.name!r}: attention map {name!r} is over {fused.shape[-1]} tokens, "
                                  f"an earlier one over {flow.shape[-1]}: rollout needs every layer over the same "
                                  f"tokens (windowed attention such as Swin's has none)")
            mixed = (1 - params["residual"]) * fused + params["residual"] * np.eye(fused.shape[-1])
            mixed = mixed / mixed.sum(axis=-1, keepdims=True)
            flow = mixed if flow is None else mixed @ flow
        rows = _read_rows(np.asarray(engine.to_numpy(reading.relevance[maps[-1]]), dtype=np.float64))
        per_token = np.einsum("nt,ntk->nk", rows, flow)
        values, dims = _onto_input(graph, per_token, tuple(x.shape))
        return Propagation(reading.output, {graph.input.name: engine.asarray(values)}, targets=reading.targets,
                           start=reading.start, dims=dims)

    def check_conservation(self, *args, **kwargs) -> None:
        """Rollout is not a decomposition of the score: nothing to check."""

    def finish(self, engine, graph, result, x, params=None) -> None:
        """The gradient pass that finds the read rows keeps its input relevance as it is (discarded)."""


def _fuse_heads(att: np.ndarray, fusion: str, n: int, name: str) -> np.ndarray:
    if att.shape[0] != n:
        raise MethodError(f"attention_rollout: attention map {name!r} has {att.shape[0]} rows on its first axis "
                          f"for {n} samples (heads or windows folded into the batch axis are not read)")
    if att.ndim == 3:
        return att
    return {"mean": np.mean, "max": np.max, "min": np.min}[fusion](att, axis=1)


def _read_rows(grad: np.ndarray) -> np.ndarray:
    """Per sample, equal weights on the query rows of the last attention map that the score depends on."""
    rows = np.abs(grad).sum(axis=-1)
    if rows.ndim == 3:
        rows = rows.sum(axis=1)
    read = (rows > 0).astype(np.float64)
    count = read.sum(axis=1, keepdims=True)
    if (count == 0).any():     # the score does not depend on the last attention at all: read every row
        read[count[:, 0] == 0] = 1.0
        count = read.sum(axis=1, keepdims=True)
    return read / count


def _onto_input(graph, per_token: np.ndarray, shape: tuple) -> tuple[np.ndarray, tuple]:
    """Token relevance in the input's terms: per token for sequences, spread over its patch for images. Tokens
    the model adds (a class token concatenated to the words or patches) are left out."""
    dims = tuple(graph.input.dims)
    per_token = per_token[:, _input_tokens(graph, per_token.shape[1])]
    t = per_token.shape[1]
    token_axis = dims.index(TOKEN) if TOKEN in dims else (1 if takes_indices(graph) or len(shape) == 3 else None)
    if token_axis is not None and shape[token_axis] == t:
        return per_token, ("sample", TOKEN)
    if len(shape) == 4 and dims[1] == "channel":
        c, h, w = shape[1:]
        grid = _grid(t, h, w)
        if grid is not None:
            gh, gw = grid
            patches = per_token.reshape(-1, gh, gw) / (c * (h // gh) * (w // gw))
            pixels = np.repeat(np.repeat(patches, h // gh, axis=1), w // gw, axis=2)
            return np.broadcast_to(pixels[:, None], (len(pixels), c, h, w)).copy(), dims
    raise MethodError(f"attention_rollout: attention over {t} tokens from the input cannot be placed on an input "
                      f"of shape {shape[1:]} (dims {dims[1:]}): neither its token axis nor a grid of patches")


def _input_tokens(graph, t: int) -> slice:
    """The columns of the attention that hold the input's tokens: all, or, where the model concatenates tokens
    of its own (a class token: a constant or parameter) with one tensor computed from the input along the token
    axis, that tensor's columns."""
    signals = {graph.input.name}       # values computed from the input (a fill only takes its batch size)
    for node in graph.nodes:
        if graph.ops[node.op].category != "source" and any(i in signals for i in node.inputs):
            signals.add(node.name)
    for node in graph.nodes:
        shape = graph.shape_of(node.name)
        if node.op != "concat" or len(shape) != 3 or shape[1] != t or node.attrs["axis"] not in (1, -2):
            continue
        from_input = [i in signals for i in node.inputs]
        if sum(from_input) == 1:
            k = from_input.index(True)
            start = sum(graph.shape_of(i)[1] for i in node.inputs[:k])
            return slice(start, start + graph.shape_of(node.inputs[k])[1])
    return slice(0, t)


def _grid(patches: int, h: int, w: int) -> tuple[int, int] | None:
    """(rows, columns) of square-pixel patches tiling an h × w image, if ``patches`` of them do."""
    for gh in range(1, h + 1):
        if patches % gh == 0 and h % gh == 0:
            gw = patches // gh
            if w % gw == 0 and (h // gh) == (w // gw):
                return gh, gw
    return None


ATTENTION_ROLLOUT = AttentionRollout(
    "attention_rollout", rollout_parameters, output_init="onehot", family="attention",
    description="Attention rollout (Abnar & Zuidema 2020): the product of the layers' attention maps, each "
                "mixed with the identity for the residual; a baseline that ignores the explained class.")
