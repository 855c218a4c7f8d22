"""Activations the relevance pass does not hold from the forward pass to the backward pass.

Two kinds. Values read only for their shape are released (below). Values of cheap ops (a ReLU, a concat, a
transpose) are dropped once their forward consumers ran and computed again from their inputs when the backward
pass reaches them (:func:`recomputed_values`): the inputs (a conv's output, which its rule reads anyway) are
held until then, so a conv and its ReLU cost one stored array, as in the framework's own gradient pass, at the
cost of one more ReLU pass. The same kernel on the same inputs gives the same bits: the numbers do not change.

Released values:

With quotients (:meth:`attribx.rules.Rule.carry`) a chain of attention scores before a softmax (q·kᵀ, its
scaling, the mask added) is read in the backward pass only for shapes and for LRP-0's test of units whose z is
exactly 0; autograd keeps none of them either. Such a value is tested for zeros when it is computed and, after
its last forward consumer ran, replaced by the engine's shape stub (:meth:`attribx.engines.Engine.shape_stub`:
on torch a tensor on the "meta" device, so that reading its values is an error, never a wrong number). A value
holding a zero is kept (its rule must pass nothing there). Only rules and ops listed here qualify: what each
reads is known exactly.
"""
from __future__ import annotations

from typing import Any, Collection, Mapping

from .rules.lrp import Epsilon, Zero
from .rules.transformer import Block, ConstantFactor, SoftmaxTaylor, Uniform


def _exact(rule) -> bool:
    """LRP-0's division (ε = 0) by a rule whose quotient form this module knows."""
    if type(rule) in (Epsilon, Zero):
        return rule.divides_exactly() and not rule.params.get("zero_bias") and not rule.params.get("bias_factor")
    if type(rule) in (Uniform, ConstantFactor):
        return rule.epsilon == 0
    return False


def _reads_output_only_for_zeros(rule, node) -> bool:
    """The node's rule reads its own output only to find exactly-zero units (and not its values otherwise)."""
    if type(rule) in (Epsilon, Zero):
        return _exact(rule) and node.op == "add"
    return _exact(rule) and node.op in ("mul", "matmul")


def _reads_only_shape(graph, rule, consumer, value: str) -> bool:
    """``consumer``'s rule reads ``value`` (one of its inputs, which takes quotients) for its shape at most."""
    if type(rule) in (SoftmaxTaylor, Block):     # x ⊙ (…) only where the producer takes no quotients
        return True
    if type(rule) in (Epsilon, Zero):            # a sum's VJP: the inputs' shapes
        return _exact(rule) and consumer.op == "add"
    if type(rule) in (Uniform, ConstantFactor) and consumer.op == "mul" and len(consumer.inputs) == 2:
        other = consumer.inputs[1 - consumer.inputs.index(value)]
        # the signal's quotient is q ⊙ constant by the op's own kernel (_Product.split_quotient): value unread
        return (_exact(rule) and other != value and other in graph and graph[other].op == "constant"
                and tuple(graph.shape_of(value)) == tuple(consumer.shape))
    return False


def released_values(graph, rules: Mapping[str, Any], takes: Mapping[str, bool], order: Collection[str],
                    start: str, keep: Collection[str]) -> set[str]:
    """The values of ``order`` (the nodes the pass runs) that the relevance pass reads only for shapes and the
    zero test: each node's rule and every consumer's rule take quotients and are among the rules above."""
    inputs = {v.name for v in graph.inputs}
    running = set(order)
    consumers = graph.consumers()
    out = set()
    for name in order:
        if name == start or name in keep or name in inputs or not takes.get(name):
            continue
        node = graph[name]
        if not _reads_output_only_for_zeros(rules.get(name), node):
            continue
        readers = [graph[c] for c in consumers.get(name, ()) if c in running]
        if readers and all(takes.get(c.name) and _reads_only_shape(graph, rules.get(c.name), c, name)
                           for c in readers):
            out.add(name)
    return out


#: ops whose value the relevance pass computes again from its inputs rather than hold it: one elementwise pass
#: or copy each (exact: the same kernel on the same inputs). Activations other than these cost more (an exp, an
#: erf) and are held.
RECOMPUTED_OPS = frozenset({"relu", "leaky_relu", "clip", "concat", "pad", "transpose", "reshape", "flatten",
                            "slice", "identity"})


def recomputed_values(graph, order: Collection[str], start: str, released: Collection[str] = ()) -> set[str]:
    """The values of ``order`` that the pass recomputes in the backward pass (:data:`RECOMPUTED_OPS`, and a
    product by a constant: attention scores scaled by 1/√d): each of
    the node's inputs is a graph input, a value held until the backward pass is past the node (not released), or
    itself recomputed (a concat of ReLUs: from the convs' outputs); and the node's value has forward consumers
    (else it is not dropped early). A recomputed value is kept from its first use in the backward pass until the
    pass reaches its node."""
    running = set(order)
    held = {v.name for v in graph.inputs} | {n for n in running if n not in released}
    consumers = graph.consumers()
    out: set[str] = set()
    for name in order:
        node = graph[name]
        scaled = node.op == "mul" and any(i in graph and graph[i].op == "constant" for i in node.inputs)
        if name == start or name in released or not (node.op in RECOMPUTED_OPS or scaled) or not node.inputs \
                or not all(i in held for i in node.inputs):
            continue
        if any(c in running for c in consumers.get(name, ())):
            out.add(name)
    return out
