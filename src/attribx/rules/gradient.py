"""Rules that pass the signal back unchanged in kind: the gradient, routing and pass-through."""
from __future__ import annotations

from .base import NodeContext, Rule


class Gradient(Rule):
    """The plain vector-Jacobian product: gradient methods use it everywhere."""

    name = "gradient"

    def __call__(self, ctx: NodeContext, relevance):
        return ctx.vjp(relevance, output=ctx.output)


class Route(Rule):
    """Move relevance to where values came from (reshape, concat, slice, pad) and, for max pooling,
    to each window's winner: the VJP does exactly that and conserves relevance."""

    name = "route"
    categories = frozenset({"shape", "pool"})

    def __call__(self, ctx: NodeContext, relevance):
        return ctx.vjp(relevance, output=ctx.output)


class Pass(Rule):
    """Relevance passes an elementwise activation unchanged (LRP's treatment of ReLU, tanh, ...)."""

    name = "pass"
    categories = frozenset({"activation"})

    def __call__(self, ctx: NodeContext, relevance):
        return [relevance]
