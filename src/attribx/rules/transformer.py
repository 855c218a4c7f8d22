"""Rules for transformers: AttnLRP (Achtibat et al., ICML 2024) and CP-LRP (Ali et al., ICML 2022).

* :class:`ConstantStd`: layer norm and RMS norm with their standard deviation (RMS) held constant, so the
  op is linear in x (centring included) and LRP-ε passes relevance through it and its affine part;
* :class:`SoftmaxTaylor`: AttnLRP's softmax rule R_in = x ⊙ (R_out − s ⊙ Σ R_out) (Proposition 3.1);
* :class:`Uniform`: AttnLRP's rule for a product of two signals (attention matmuls, gated units): ε-LRP of
  the bilinear product, then an equal share for each factor;
* :class:`ConstantFactor`: CP-LRP's product rule: one factor (attention weights, a gate) is a constant, the
  other takes all the relevance by ε-LRP;
* :class:`Block`: no relevance passes (CP-LRP's softmax).

Each is written against the engine interface (array arithmetic, ``sum``, the op's own kernel), so every
engine runs them. ``epsilon=0`` divides exactly (LRP-0, as LXT): what reaches a zero output is dropped.
"""
from __future__ import annotations

import math
from typing import Annotated, Optional

from ..ops import norm_axes
from ..parameters import NonNegative, Range
from .base import NodeContext, Rule, quotient

#: which input of a product is held constant: 0, 1, or None (found on the graph)
Factor = Annotated[Optional[int], Range("0, 1 or None (found on the graph)",
                                        lambda v: v is None or (not isinstance(v, bool) and v in (0, 1)))]


class ConstantStd(Rule):
    """Layer norm and RMS norm with the standard deviation (RMS) a constant for relevance (AttnLRP, CP-LRP).

    With σ fixed, y = (x − mean x)/σ · scale + bias is linear in x, and LRP-ε on that linear map gives
    R_x = x ⊙ Jᵀ(R / (y + ε·sign y)), Jᵀs = (t − mean t)/σ with t = scale ⊙ s (RMS norm: Jᵀs = t/σ). The
    bias and ε absorb their share; without bias and with ε = 0 relevance is conserved exactly. This is
    LXT's detached-std gradient × input when ε = 0.
    """

    name = "constant_std"
    ops = frozenset({"layer_norm", "rms_norm"})

    def __init__(self, epsilon: NonNegative = 1e-6):
        super().__init__(epsilon=epsilon)

    def __call__(self, ctx: NodeContext, relevance):
        return self.carry(ctx, None, relevance, [False])

    def takes_quotient(self, node, category):
        return True

    def carry(self, ctx, s, r, want):
        eng, node = ctx.engine, ctx.node
        (x,) = ctx.inputs
        ndim = len(x.shape)
        axes = norm_axes(node.attrs, ndim, node.name)
        count = math.prod(int(x.shape[a]) for a in axes)
        eps = float(node.attrs["eps"])
        centred = node.op == "layer_norm"
        if centred:
            x0 = x - eng.sum(x, axis=axes, keepdims=True) / count
        else:
            x0 = x
        inv = (eng.sum(x0 * x0, axis=axes, keepdims=True) / count + eps) ** -0.5
        t = quotient(eng, ctx.output, s, r, self.epsilon)
        scale = ctx.params.get("scale")
        if scale is not None:
            t = t * _reshaped(eng, scale, x, axes)
        if centred:
            t = t - eng.sum(t, axis=axes, keepdims=True) / count
        return [t * inv if want[0] else x * (t * inv)]


def _reshaped(eng, p, x, axes):
    """A normalisation parameter shaped to broadcast over ``x`` (size 1 on the other axes), by the engine's
    reshape kernel (its arrays need not have a ``reshape`` method)."""
    shape = tuple(int(x.shape[i]) if i in axes else 1 for i in range(len(x.shape)))
    return eng.kernel("reshape").forward({"shape": shape[1:]}, [p[None]], {})


class SoftmaxTaylor(Rule):
    """AttnLRP's softmax rule (Achtibat et al. 2024, Proposition 3.1): R_in = x ⊙ (R_out − s ⊙ Σ_axis R_out),
    with s the softmax output. It is the softmax's gradient × input and does not conserve relevance. Inputs
    masked with −∞ (causal attention) get none (not −∞ · 0)."""

    name = "softmax_taylor"
    ops = frozenset({"softmax"})

    def __call__(self, ctx: NodeContext, relevance):
        return self.carry(ctx, None, relevance, [False])

    def takes_quotient(self, node, category):
        return True

    def carry(self, ctx, s, r, want):
        """R_in = x ⊙ (R − y ⊙ Σ R): the bracket is the quotient (no division), R = r + y ⊙ s (y is finite)."""
        eng = ctx.engine
        (x,) = ctx.inputs
        y = ctx.output
        R = r if s is None else (y * s if r is None else r + y * s)
        axis = int(ctx.node.attrs["axis"]) % len(x.shape)
        q = R - y * eng.sum(R, axis=axis, keepdims=True)
        if want[0]:
            return [q]
        return [eng.where(x > -math.inf, x, eng.zeros_like(x)) * q]


class _Product(Rule):
    """Shared by the product rules: ε-LRP of the product, shares per factor."""

    ops = frozenset({"mul", "matmul"})
    categories = frozenset({"product"})

    def split(self, ctx: NodeContext, relevance, shares):
        """Relevance of each input: share_i · x_i ⊙ (∂z/∂x_i)ᵀ (R / (z + ε·sign z)); shares 0 give None."""
        return self.split_quotient(ctx, None, relevance, shares, [False] * len(shares))

    def split_quotient(self, ctx: NodeContext, s, r, shares, want):
        """As :meth:`split` for R = r + z ⊙ s, with quotients (share_i · (∂z/∂x_i)ᵀ q) for the inputs in
        ``want``. Equal shares scale q once, before the VJP (it is linear), rather than each input after."""
        q = quotient(ctx.engine, ctx.output, s, r, self.epsilon)
        out = self._scaled_by_constant(ctx, q, shares, want)
        if out is not None:
            return out
        used = {share for share in shares if share}
        common = used.pop() if len(used) == 1 else 1.0
        grads = ctx.vjp(q if common == 1 else q * common, output=ctx.output)
        out = []
        for x, g, share, w in zip(ctx.inputs, grads, shares, want):
            if share == 0 or g is None:
                out.append(None)
                continue
            if share != common:
                g = g * (share / common)
            out.append(g if w else x * g)
        return out

    @staticmethod
    def _scaled_by_constant(ctx: NodeContext, q, shares, want):
        """A product of a signal shaped like the output and a constant (attention's scale): the signal's
        quotient is q ⊙ constant, the op's own forward, without the VJP (which would read the signal, and
        reduce a gradient for the constant); None for other products."""
        if ctx.node.op != "mul" or len(shares) != 2 or sum(1 for sh in shares if sh) != 1:
            return None
        k = 0 if shares[0] else 1
        x = ctx.inputs[k]
        if not ctx.constant[1 - k] or tuple(x.shape) != tuple(q.shape):
            return None
        g = ctx.forward([q, ctx.inputs[1]] if k == 0 else [ctx.inputs[0], q])
        if shares[k] != 1:
            g = g * shares[k]
        out = [None, None]
        out[k] = g if want[k] else x * g
        return out

    def signals(self, ctx: NodeContext):
        return [not c for c in ctx.constant]

    def takes_quotient(self, node, category):
        return True

    def carry(self, ctx, s, r, want):
        return self.split_quotient(ctx, s, r, self.shares(ctx), want)

    def __call__(self, ctx: NodeContext, relevance):
        return self.split(ctx, relevance, self.shares(ctx))


class Uniform(_Product):
    """AttnLRP's uniform rule (Achtibat et al. 2024): a product of two signals (q·kᵀ, weights·v, gate·up) gets
    ε-LRP of the bilinear product, then each factor half of it; with one constant factor the signal takes
    all (plain ε-LRP). In LXT's gradient × input form: each factor's gradient divided by 2."""

    name = "uniform"

    def __init__(self, epsilon: NonNegative = 1e-6):
        super().__init__(epsilon=epsilon)

    def shares(self, ctx: NodeContext):
        signal = self.signals(ctx)
        n = sum(signal)
        return [1.0 / n if s else 0 for s in signal]


class ConstantFactor(_Product):
    """CP-LRP's product rule (Ali et al. 2022): one factor is a constant for relevance (attention weights,
    a gate), the other takes all of it by ε-LRP (for weights·v: R_v = v ⊙ Aᵀ(R / (A·v + ε·sign))).

    ``factor``: the index of the constant input; None: the gate found on the graph (the transformer
    composites find softmax outputs and activations, :func:`attribx.transformer.constant_factors`; the
    propagation finds [0, 1] gates of elementwise products), else the uniform rule's equal shares."""

    name = "constant_factor"

    def __init__(self, epsilon: NonNegative = 1e-6, factor: Factor = None):
        super().__init__(epsilon=epsilon, factor=factor)

    def shares(self, ctx: NodeContext):
        signal = self.signals(ctx)
        constant = self.factor
        if constant is None and sum(ctx.gate) == 1:
            constant = list(ctx.gate).index(True)
        if sum(signal) == 2 and constant is not None:
            return [0 if k == constant else 1 for k in range(2)]
        n = sum(signal)
        return [1.0 / n if s else 0 for s in signal]


class Block(Rule):
    """No relevance passes: the node's inputs are constants for relevance (CP-LRP's attention softmax)."""

    name = "block"

    def __call__(self, ctx: NodeContext, relevance):
        return [None] * len(ctx.inputs)

    def takes_quotient(self, node, category):
        return True

    def carry(self, ctx, s, r, want):
        return [None] * len(ctx.inputs)


TRANSFORMER_RULES = (ConstantStd, SoftmaxTaylor, Uniform, ConstantFactor, Block)
