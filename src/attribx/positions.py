"""Language models: explain the logits predicted at one position of a (sample, token, vocabulary) output.

A causal LM's output holds, per position t, the logits of the token that follows. ``explain(lm, ids,
target=token_id, position=-1)`` explains the logit of ``token_id`` predicted at ``position``: the graph's
output is cut to that position (a ``slice`` and a ``reshape`` node), so the output is (sample, vocabulary)
and every target (a token id, ids per sample, ``"predicted"``, ``("contrast", a, b)``) works as for a
classifier. Explaining the cut graph is exactly explaining ``output[:, position, :]``.

The cut is moved up past the ops that work on each position alone (the head's ``linear``, the final layer or
RMS norm, elementwise activations): they then run on one position instead of all, which is most of the time
of a language-model head (GPT-2's is 768 × 50257). Relevance and gradients are unchanged by the move, since
nothing reaches the other positions of those ops' outputs.
"""
from __future__ import annotations

from .errors import InputError
from .graph import Graph, Node


#: ops besides the elementwise activations (op category "activation") that act on each position alone when their
#: input is (sample, token, ...) and they do not reduce axis 1
_PER_POSITION = {"linear", "layer_norm", "rms_norm"}


def at_position(graph: Graph, position, keep=()) -> Graph:
    """``graph`` whose one output is its output at ``position`` (an int, negative from the end) of axis 1.

    ``keep``: node names whose full output must stay (asked for as layers); the cut is not moved above them."""
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
    chain = _per_position_chain(graph, set(keep))
    above = chain[0].inputs[0] if chain else name
    cut = Node(f"{name}:position", "slice", (above,), {"axis": 1, "start": p, "stop": p + 1, "step": None})
    moved = [n.replace(inputs=(cut.name if i == 0 else n.inputs[0],), shape=None) for i, n in enumerate(chain)]
    flat = Node(f"{name}:at_{p}", "reshape", (moved[-1].name if moved else cut.name,), {"shape": (shape[2],)})
    meta = dict(graph.meta)
    meta["position"] = p
    gone = {n.name for n in chain}
    nodes = [n for n in graph.nodes if n.name not in gone] + [cut] + moved + [flat]
    return Graph(graph.inputs, nodes, [flat.name], meta, ops=graph.ops)


def _per_position_chain(graph: Graph, keep: set) -> list[Node]:
    """The nodes that end the graph and act on each position alone, each the only reader of the one before,
    in graph order (empty when the output itself is not such a node)."""
    readers = graph.consumers()
    chain: list[Node] = []
    name = graph.output
    if readers.get(name):      # the output is read further on: its positions are all needed
        return chain
    while name in graph and name not in keep:
        node = graph[name]
        if (node.op not in _PER_POSITION and graph.ops[node.op].category != "activation") or len(node.inputs) != 1:
            break
        src = node.inputs[0]
        in_shape = graph.shape_of(src)
        if len(in_shape) < 3:
            break
        if node.op in ("layer_norm", "rms_norm") and any(a % len(in_shape) in (0, 1) for a in node.attrs["axes"]):
            break
        chain.append(node)
        if len(readers.get(src, ())) != 1 or src in graph.outputs:
            break
        name = src
    return chain[::-1]


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
