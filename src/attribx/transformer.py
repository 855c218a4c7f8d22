"""Composites for transformers: AttnLRP (``lrp.attn``) and CP-LRP (``lrp.cp``), and which factor of a product
is the constant one for CP-LRP.

Both are ordinary composites (matcher, rule entries), so the rules of :mod:`attribx.rules.transformer` combine
with any other rule: ``attn_lrp_composite(0.0, entries=[(C.category("layer"), Gamma(gamma=0.25))])`` puts γ on
the linear layers, as LXT's ViT example does with zennit. What a composite cannot see from one node, whether a
product's factor is an attention weight or a gate, is found on the graph when the composite is assigned
(:func:`constant_factors`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from .composite import Composite, category, lrp_defaults, op
from .ops import BUILTIN_OPS, op_table
from .rules import Epsilon
from .rules.transformer import Block, ConstantFactor, ConstantStd, SoftmaxTaylor, Uniform

_BUILTIN_OPS = op_table(BUILTIN_OPS)


def _producer(graph, name: str, ops):
    """The node a value comes from, looking through single-input routing ops (reshape, transpose, ...) and
    masks that zero some of it (``where(mask, x, constant)``: Keras's masked softmax); None for a graph input."""
    while name in graph:
        node = graph[name]
        if ops[node.op].category == "shape" and len(node.inputs) == 1:
            name = node.inputs[0]
        elif node.op == "where" and node.inputs[2] in graph and graph[node.inputs[2]].op == "constant":
            name = node.inputs[1]
        else:
            break
    return graph[name] if name in graph else None


def _gate_rank(node, ops) -> int:
    """2 for attention weights (a softmax), 1 for an activation's output (a gate), 0 otherwise."""
    if node is None:
        return 0
    if node.op == "softmax":
        return 2
    return 1 if ops[node.op].category == "activation" else 0


def constant_factors(graph, ops: Mapping | None = None) -> dict[str, int]:
    """``{product node: index of its constant factor}`` for CP-LRP: in a product of two signals (``mul``,
    ``matmul``), attention weights (a softmax output) are constant against anything else, an activation's
    output (a gate: SiLU(gate)·up, σ(g)·x) against a value that is not one. Products where neither factor
    ranks above the other (q·kᵀ) are left out: their rule splits relevance equally."""
    if ops is None:
        ops = getattr(graph, "ops", None) or _BUILTIN_OPS
    out = {}
    for node in graph.nodes:
        if node.op not in ("mul", "matmul") or len(node.inputs) != 2:
            continue
        if any(i in graph and graph[i].op == "constant" for i in node.inputs):
            continue
        ranks = [_gate_rank(_producer(graph, i, ops), ops) for i in node.inputs]
        if ranks[0] != ranks[1]:
            out[node.name] = ranks.index(max(ranks))
    return out


class TransformerComposite(Composite):
    """A composite that, when assigned to a graph, gives each ``constant_factor`` rule left without a factor
    the one :func:`constant_factors` finds for its node."""

    def assign(self, graph, nodes: Sequence[str] | None = None, ops: Mapping | None = None,
               rules: Mapping[str, type] | None = None) -> dict:
        out = super().assign(graph, nodes, ops, rules)
        factors = constant_factors(graph, ops)
        for name, rule in out.items():
            if isinstance(rule, ConstantFactor) and rule.factor is None and name in factors:
                out[name] = ConstantFactor(epsilon=rule.epsilon, factor=factors[name])
        return out


def transformer_entries(variant: str, epsilon: float) -> list:
    """The entries of AttnLRP (``"attn"``) or CP-LRP (``"cp"``) for norms, softmax and products."""
    if variant == "attn":
        softmax, product = SoftmaxTaylor(), Uniform(epsilon=epsilon)
    elif variant == "cp":
        softmax, product = Block(), ConstantFactor(epsilon=epsilon)
    else:
        raise ValueError(f"variant must be 'attn' or 'cp', got {variant!r}")
    # a constant added to a signal (position embeddings, attention masks) keeps its share, as a bias does
    # (LXT: embeddings × gradient; LRP's default sum rule gives constants none)
    return [(op("layer_norm", "rms_norm"), ConstantStd(epsilon=epsilon)),
            (op("softmax"), softmax),
            (op("mul", "matmul"), product),
            (op("add"), Epsilon(epsilon=epsilon))]


def _composite(variant: str, name: str, epsilon: float, entries) -> TransformerComposite:
    return TransformerComposite(
        list(entries) + transformer_entries(variant, epsilon) + [(category("layer"), Epsilon(epsilon=epsilon))],
        defaults=lrp_defaults(epsilon, epsilon), name=name)


def attn_lrp_composite(epsilon: float = 1e-6, entries: Sequence = ()) -> TransformerComposite:
    """AttnLRP: ``entries`` (the user's, first), then constant-std norms, the softmax rule, the uniform rule on
    products, ε on weighted layers, and LRP's defaults (activations pass: the identity rule; sums by ε)."""
    return _composite("attn", "lrp.attn", epsilon, entries)


def cp_lrp_composite(epsilon: float = 1e-6, entries: Sequence = ()) -> TransformerComposite:
    """CP-LRP: as :func:`attn_lrp_composite`, but attention weights and gates are constants (the other factor
    takes all) and the softmax passes nothing."""
    return _composite("cp", "lrp.cp", epsilon, entries)
