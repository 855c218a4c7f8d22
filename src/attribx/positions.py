"""Language models: explain the logits predicted at one position of a (sample, token, vocabulary) output.

A causal LM's output holds, per position t, the logits of the token that follows. ``explain(lm, ids,
target=token_id, position=-1)`` explains the logit of ``token_id`` predicted at ``position``: the graph's
output is cut to that position (a ``slice`` and a ``reshape`` node), so the output is (sample, vocabulary)
and every target (a token id, ids per sample, ``"predicted"``, ``("contrast", a, b)``) works as for a
classifier. Explaining the cut graph is exactly explaining ``output[:, position, :]``.
"""
from __future__ import annotations

from .errors import InputError
from .graph import Graph, Node


def at_position(graph: Graph, position) -> Graph:
    """``graph`` whose one output is its output at ``position`` (an int, negative from the end) of axis 1."""
    if isinstance(position, bool) or not isinstance(position, int):
        raise InputError(f"position must be an int (a token position, -1 the last), got {type(position).__name__}")
    name = graph.output
    shape = graph.shape_of(name)
    if len(shape) != 3:
        raise InputError(f"position={position} selects a token position of a (sample, token, vocabulary) output; "
                         f"the output {name!r} has shape {_pretty(shape)}: leave position out (a classifier's "
                         f"output is explained by target alone)")
    length = shape[1]
    if not -length <= position < length:
        raise InputError(f"position {position} is out of range for an output with {length} positions "
                         f"(use 0..{length - 1}, or -1 for the last)")
    p = position % length
    cut = Node(f"{name}:position", "slice", (name,), {"axis": 1, "start": p, "stop": p + 1, "step": None})
    flat = Node(f"{name}:at_{p}", "reshape", (cut.name,), {"shape": (shape[2],)})
    meta = dict(graph.meta)
    meta["position"] = p
    return Graph(graph.inputs, list(graph.nodes) + [cut, flat], [flat.name], meta, ops=graph.ops)


def needs_position(graph: Graph, takes_ids: bool, output_init) -> None:
    """Refuse a class target on a language model's (sample, token, vocabulary) output without ``position``:
    which position's prediction is meant cannot be guessed."""
    shape = graph.shape_of(graph.output)
    if takes_ids and len(shape) == 3 and (output_init is None or isinstance(output_init, str)):
        raise InputError(f"the output {graph.output!r} holds logits per token position {_pretty(shape)}; pass "
                         f"position= (the position whose prediction is explained, -1 the last) with target= a "
                         f"token id, or output_init=<array of the output's shape>")


def _pretty(shape) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
