"""Rules that pass the signal back without LRP's normalisation: the gradient and its ReLU variants,
routing (shape ops, max pooling) and pass-through (activations)."""
from __future__ import annotations

from ..errors import UnsupportedError
from ..parameters import NonNegative
from .base import NodeContext, Rule, times


class Gradient(Rule):
    """The plain vector-Jacobian product: gradient methods use it everywhere."""

    name = "gradient"

    def __call__(self, ctx: NodeContext, relevance):
        return ctx.vjp(relevance, output=ctx.output)


class Route(Rule):
    """Move relevance to where values came from (reshape, concat, slice, pad; an embedding's features
    to their index; a ``where`` to the input it selected, none to its mask): the VJP of a routing op does
    exactly that and conserves relevance."""

    name = "route"
    categories = frozenset({"shape", "pool", "lookup", "select", "mask"})

    def __call__(self, ctx: NodeContext, relevance):
        return ctx.vjp(relevance, output=ctx.output)

    def takes_quotient(self, node, category):
        """Each output element is one input element (or a constant), so the VJP of z ⊙ s is x ⊙ (VJP of s):
        quotients route as relevance does. Not for a lookup (its input is an index, not the value)."""
        return category in ("shape", "pool", "select")

    def carry(self, ctx, s, r, want):
        if r is not None:       # relevance at a unit whose value is 0 must still route: not a quotient
            return None
        grads = ctx.vjp(s, output=ctx.output)
        return [g if w else times(x, g) for x, g, w in zip(ctx.inputs, grads, want)]


class WinnerTakesAll(Route):
    """Max pooling: each window's relevance goes to its maximum (the first one, on ties)."""

    name = "winner_takes_all"
    categories = frozenset({"pool"})


class Proportional(Rule):
    """Max pooling, proportional variant: each window's relevance is split over its inputs in proportion
    to their values (LRP-0 on the window's sum); needs non-negative inputs, as after a ReLU."""

    name = "proportional"
    categories = frozenset({"pool"})
    def __init__(self, epsilon: NonNegative = 1e-6):
        super().__init__(epsilon=epsilon)

    def __call__(self, ctx: NodeContext, relevance):
        eng, node = ctx.engine, ctx.node
        if any(d != 1 for d in _tuple(node.attrs.get("dilation", 1))):
            raise UnsupportedError(f"node {node.name!r}: the proportional rule needs a max pool without dilation")
        # the pool's windows averaged: a node of the same class (rules need not import the graph)
        window = type(node)(node.name, "avg_pool", node.inputs,
                            {"kernel_size": node.attrs["kernel_size"], "stride": node.attrs["stride"],
                             "padding": node.attrs["padding"], "count_include_pad": True})
        (x,) = ctx.inputs
        z = eng.forward(window, [x], {})
        s = eng.divide_stabilized(relevance, z, self.epsilon)
        (g,) = eng.vjp(window, [x], s, {})
        return [x * g]


def _tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


class Pass(Rule):
    """Relevance passes an elementwise activation unchanged (LRP's treatment of ReLU, tanh, ...); through
    a division it goes to the dividend, the divisor acting as a fixed scale."""

    name = "pass"
    categories = frozenset({"activation", "norm", "scale"})

    def __call__(self, ctx: NodeContext, relevance):
        return [relevance] + [None] * (len(ctx.inputs) - 1)


class SignalTakesAll(Rule):
    """A product of a gate and a signal (LSTM/GRU gates, squeeze-and-excitation, gated units): the signal
    takes all the relevance and the gate none (Arras et al. 2017), since the gate only decides how much
    of the signal passes. The gate is found by :func:`attribx.bounds.gated_products`."""

    name = "signal_takes_all"
    ops = frozenset({"mul"})

    def __call__(self, ctx: NodeContext, relevance):
        gate = list(ctx.gate)
        if sum(gate) != 1 or len(ctx.inputs) != 2:
            raise UnsupportedError(f"node {ctx.node.name!r}: signal_takes_all needs a product of one gate (a "
                                   f"sigmoid-like value in [0, 1]) and one other signal")
        return [None if g else relevance for g in gate]


class DeconvNet(Rule):
    """DeconvNet (Zeiler & Fergus 2014): a ReLU passes back the positive part of the incoming signal,
    whatever its input was."""

    name = "deconvnet"
    ops = frozenset({"relu"})

    def __call__(self, ctx: NodeContext, relevance):
        return [ctx.engine.clip(relevance, 0, None)]


class GuidedBackprop(Rule):
    """Guided backpropagation (Springenberg et al. 2015): a ReLU passes back the gradient where both its
    input and the incoming signal are positive."""

    name = "guided_backprop"
    ops = frozenset({"relu"})

    def __call__(self, ctx: NodeContext, relevance):
        (g,) = ctx.vjp(relevance, output=ctx.output)
        return [ctx.engine.where_positive(relevance, g)]
