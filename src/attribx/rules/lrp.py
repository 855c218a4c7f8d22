"""LRP rules for ops that are affine in their inputs (linear, conv, sums, pools, batch norm).

All of them share one form (Bach et al. 2015; Montavon et al. 2019): with z the (modified) forward
output, s = R / stabilised(z), and the relevance of input i is x_i * (J_i^T s), the VJP doing the
"redistribute along the weights" step. Constants take none: like a bias, they absorb their share.
"""
from __future__ import annotations

from ..errors import UnsupportedError
from .base import NodeContext, Rule

AFFINE = frozenset({"layer", "sum", "norm"})


class ZRule(Rule):
    """Shared machinery: z from the (possibly modified) forward pass, stabilise, redistribute."""

    categories = AFFINE | {"product"}

    def denominator(self, ctx: NodeContext, z):
        raise NotImplementedError

    def divide(self, ctx: NodeContext, relevance, z):
        return relevance / self.denominator(ctx, z)

    def params_without_bias(self, ctx: NodeContext):
        return {k: v for k, v in ctx.params.items() if k != "bias"}

    def __call__(self, ctx: NodeContext, relevance):
        if ctx.category == "product" and sum(not c for c in ctx.constant) > 1:
            raise UnsupportedError(
                f"node {ctx.node.name!r}: rule {self.name!r} cannot split relevance over a product of two "
                f"signals; assign a product rule (e.g. a gated rule) to it in the composite")
        inputs = ctx.inputs
        if self.params.get("zero_bias"):
            eng = ctx.engine
            inputs = [eng.zeros_like(x) if c else x for x, c in zip(ctx.inputs, ctx.constant)]
            z = ctx.forward(inputs, self.params_without_bias(ctx))
        else:
            z = ctx.output
        s = self.divide(ctx, relevance, z)
        grads = ctx.vjp(s, inputs=inputs)
        return [None if c or g is None else x * g for x, g, c in zip(ctx.inputs, grads, ctx.constant)]


class Epsilon(ZRule):
    """LRP-ε: denominator z + ε·sign(z), sign(0) = +1; ε absorbs weak or contradictory relevance."""

    name = "epsilon"
    defaults = {"epsilon": 1e-6, "zero_bias": False}

    def denominator(self, ctx, z):
        return ctx.engine.stabilize(z, self.epsilon)


class Zero(ZRule):
    """LRP-0: R_i = x_i w_ij / z_j R_j exactly; a unit with z = 0 passes no relevance."""

    name = "zero"
    defaults = {"zero_bias": False}

    def divide(self, ctx, relevance, z):
        return ctx.engine.safe_divide(relevance, z)


class Norm(Zero):
    """For sums and average pools: each input gets its share of the output (LRP-0 without bias)."""

    name = "norm"
    categories = frozenset({"sum"})
    defaults = {"zero_bias": True}
