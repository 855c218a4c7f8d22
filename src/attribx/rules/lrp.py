"""LRP rules for ops that are affine in their inputs (linear, conv, sums, pools, scaling, batch norm).

Every rule here has one shape (Bach et al. 2015; Montavon et al. 2017, 2019): compute the op's output
z with modified weights (and inputs), stabilise it, divide the relevance by it, and send the quotient
back along the (modified) weights with the op's own VJP. Writing rules this way makes each of them
work for every affine op on every engine.

What "the weights" of an op are (see :class:`Affine`):

* ``layer`` ops (linear, conv): the ``weight`` and ``bias`` parameters;
* ``sum`` ops (add, average pools, reductions): the implicit positive coefficients, so "W+" is the op
  itself and "W-" is zero; constant inputs of an add act as its bias;
* ``product`` ops with one constant factor (scaling): the constant is the weight;
* ``norm`` (batch norm): only the rules that need no weight modification (zero, epsilon, norm).

Stabilisers follow zennit: z + s·sign(z) with sign(0) = +1. Bias conventions follow zennit as well:
the positive part of the bias joins the positive term, the negative part the negative term.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import MethodError, UnsupportedError
from ..parameters import Flag, NonNegative, OptionalArray, UnitInterval, ordered
from .base import NodeContext, Rule, epsilon_divide, quotient, relevance_of

KEEP = "keep"   # bias modifier: leave the bias as it is
DROP = None     # bias modifier: no bias


class Mod:
    """A weight modifier: ``mod(w)`` on engine arrays, ``mod.scalar(v)`` on a python number (the implicit
    positive coefficients of sums, evaluated without touching the device)."""

    def __init__(self, array_fn, scalar_fn):
        self.array_fn, self.scalar = array_fn, scalar_fn

    def __call__(self, w):
        return self.array_fn(w)


def positive(eng) -> Mod:
    return Mod(lambda w: eng.clip(w, 0, None), lambda v: max(v, 0.0))


def negative(eng) -> Mod:
    return Mod(lambda w: eng.clip(w, None, 0), lambda v: min(v, 0.0))


def gamma_up(eng, g) -> Mod:
    """W + γW⁺"""
    return Mod(lambda w: w + g * eng.clip(w, 0, None), lambda v: v + g * max(v, 0.0))


def gamma_down(eng, g) -> Mod:
    """W + γW⁻"""
    return Mod(lambda w: w + g * eng.clip(w, None, 0), lambda v: v + g * min(v, 0.0))


def magnitude(eng) -> Mod:
    """|W|"""
    return Mod(lambda w: eng.abs(w), lambda v: abs(v))


def ones(eng) -> Mod:
    return Mod(lambda w: eng.ones_like(w), lambda v: 1.0)


def square(eng) -> Mod:
    return Mod(lambda w: w * w, lambda v: v * v)


class Affine:
    """An affine node seen as weights and bias, evaluated with modified ones.

    ``term(xs, wmod, bmod)`` gives z = f(xs; wmod(W), bmod(b)) and ``back(g, wmod)`` the VJP w.r.t. the
    signal inputs with the modified weights. ``wmod``/``bmod`` map engine arrays to engine arrays.
    """

    def __init__(self, ctx: NodeContext):
        self.ctx = ctx
        self.eng = ctx.engine
        cat = ctx.category
        self.signal = [i for i, c in enumerate(ctx.constant) if not c]
        if cat == "layer":
            self.kind = "layer"
        elif cat == "sum":
            self.kind = "sum"
        elif cat == "product":
            if len(self.signal) != 1:
                raise UnsupportedError(
                    f"node {ctx.node.name!r}: an LRP rule cannot split relevance over a product of "
                    f"{len(self.signal)} signals; assign a product rule (e.g. a gated rule) to it")
            self.kind = "product"
        elif cat == "norm":
            self.kind = "norm"
        else:
            raise UnsupportedError(f"node {ctx.node.name!r}: op {ctx.node.op!r} is not affine")

    # -- building blocks ---------------------------------------------------------------------------
    def _inputs_params(self, xs, wmod, bmod):
        """(inputs, params, scale) of the op evaluated with modified weights/bias on signals ``xs``."""
        ctx, eng = self.ctx, self.eng
        inputs = list(ctx.inputs)
        for i, x in zip(self.signal, xs):
            inputs[i] = x
        params = dict(ctx.params)
        scale = 1.0
        if self.kind == "layer":
            if wmod is not None:
                params["weight"] = wmod(params["weight"])
            if "bias" in params:
                if bmod is DROP:
                    del params["bias"]
                elif bmod is not KEEP:
                    params["bias"] = bmod(params["bias"])
        elif self.kind == "sum":
            if wmod is not None:    # positive coefficients: a positively homogeneous modifier scales them
                scale = float(wmod.scalar(1.0))
            for i, c in enumerate(ctx.constant):
                if c:
                    inputs[i] = (eng.zeros_like(inputs[i]) if bmod is DROP else
                                 inputs[i] if bmod is KEEP else bmod(inputs[i]))
        elif self.kind == "product":
            for i, c in enumerate(ctx.constant):
                if c and wmod is not None:
                    inputs[i] = wmod(inputs[i])
        elif self.kind == "norm":
            if wmod is not None or bmod not in (KEEP, DROP):
                raise UnsupportedError(
                    f"node {ctx.node.name!r}: rules that modify weights do not apply to batch norm; fold it "
                    f"into the layer before it (graph pass 'fold_batch_norm') or use epsilon/zero/norm")
            if bmod is DROP:   # y = k·x: no shift
                params = {k: v for k, v in params.items() if k != "bias"}
                params["mean"] = eng.zeros_like(params["mean"])
        return inputs, params, scale

    def term(self, xs, wmod=None, bmod=KEEP):
        """z with modified weights/bias on signals ``xs`` (None entries: zero signals; all None: no term)."""
        if all(x is None for x in xs):
            if bmod is DROP or self.kind != "layer" or "bias" not in self.ctx.params:
                return None
        xs = [self.eng.zeros_like(self.ctx.inputs[i]) if x is None else x for i, x in zip(self.signal, xs)]
        inputs, params, scale = self._inputs_params(xs, wmod, bmod)
        if scale == 0.0:
            return None
        z = self.ctx.forward(inputs, params)
        return z if scale == 1.0 else z * scale

    def back(self, grad, wmod=None, xs=None):
        """VJP of the modified op w.r.t. each signal input (a list over signals); ``xs``: stand-ins for the
        signals, whose shapes (not values) the VJP takes (for weights stacked along their input axis)."""
        xs = [self.ctx.inputs[i] for i in self.signal] if xs is None else xs
        inputs, params, scale = self._inputs_params(xs, wmod, KEEP)
        if scale == 0.0:
            return [None] * len(self.signal)
        grads = self.ctx.vjp(grad, inputs=inputs, params=params)
        grads = [grads[i] for i in self.signal]
        return grads if scale == 1.0 else [None if g is None else g * scale for g in grads]

    def signals(self):
        return [self.ctx.inputs[i] for i in self.signal]

    def output_channel_axis(self):
        """The output's axis that the weight's first axis maps to, for a dense linear or ungrouped conv (weights
        stacked along their first axis then act on inputs stacked along it); None for other ops."""
        node = self.ctx.node
        if node.op == "conv" and int(node.attrs.get("groups", 1)) == 1:
            return 1
        if node.op == "linear":
            return len(self.ctx.output.shape) - 1
        return None

    def divide_term(self, R, z, epsilon: float):
        """R / stabilised(z) for a ``z`` from :meth:`term`: a weighted layer's forward hands back a fresh array, which
        the engine may overwrite (sums and routing may hand back an input itself)."""
        divide = self.eng.divide_stabilized_into if self.kind == "layer" else self.eng.divide_stabilized
        return divide(R, z, epsilon)

    def bias_map(self, b, z):
        """The bias broadcast to the output z (channel axis 1 for conv, the last axis for linear)."""
        if self.ctx.node.op in ("conv", "conv_transpose"):
            return b[(slice(None),) + (None,) * (len(z.shape) - 2)]
        return b

    def times(self, x, g):
        """x ⊙ g. For weighted layers the VJP's result is a fresh array that nothing else holds, so the
        engine may multiply in place (for sums and routing a VJP can hand back its input itself)."""
        if x is None or g is None:
            return None
        return self.eng.multiply_into(g, x) if self.kind == "layer" else x * g

    def nonnegative(self):
        """Per signal, whether the graph guarantees it is ≥ 0 (after a ReLU)."""
        nonneg = self.ctx.nonnegative or [False] * len(self.ctx.inputs)
        return [bool(nonneg[i]) for i in self.signal]

    def split(self):
        """(x⁺, x⁻) per signal; x⁻ is None where the graph guarantees x ≥ 0 (its terms vanish)."""
        eng, ctx = self.eng, self.ctx
        nonneg = ctx.nonnegative or [False] * len(ctx.inputs)
        xp = [ctx.inputs[i] if nonneg[i] else eng.clip(ctx.inputs[i], 0, None) for i in self.signal]
        xn = [None if nonneg[i] else eng.clip(ctx.inputs[i], None, 0) for i in self.signal]
        return xp, xn

    def scatter(self, rels):
        """Relevance per signal -> relevance per node input (None for constants)."""
        out: list = [None] * len(self.ctx.inputs)
        for i, r in zip(self.signal, rels):
            out[i] = r
        return out


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _mul(a, b):
    return None if a is None or b is None else a * b


class AffineRule(Rule):
    """Base of the rules below: they see the node as an :class:`Affine`."""

    categories = frozenset({"layer", "sum", "product"})
    #: take a rule's optimisations (``fast_*`` methods: the general formula's numbers with less work) where
    #: they apply; False computes the general formula everywhere (the tests compare the two)
    optimise: ClassVar[bool] = True

    def __call__(self, ctx: NodeContext, relevance):
        op = Affine(ctx)
        return op.scatter(self.relevance(op, ctx.engine, relevance))

    def relevance(self, op: Affine, eng, R) -> list:
        raise NotImplementedError


class ZRule(AffineRule):
    """z with the op's own weights; R_i = x_i · (J_iᵀ s) with s = R / stabilised(z)."""

    categories = frozenset({"layer", "sum", "product", "norm"})

    def divide(self, eng, R, z):
        raise NotImplementedError

    def relevance(self, op, eng, R):
        xs = op.signals()
        z = op.term(xs, bmod=DROP) if self.params.get("zero_bias") else op.ctx.output
        s = self.divide(eng, R, z)
        return [op.times(x, g) for x, g in zip(xs, op.back(s))]

    def takes_quotient(self, node, category):
        """R_i = x_i ⊙ J_iᵀ(R / stabilised z) with z the node's own output: a quotient form (not with a
        bias dropped from z, nor with ``bias_factor``'s spreading)."""
        return (category in self.categories and not self.params.get("zero_bias")
                and not self.params.get("bias_factor"))

    def own_output(self, op) -> bool:
        """Whether the rule's z is the node's output (not a bias-free term)."""
        return True

    def divides_exactly(self) -> bool:
        """Whether :meth:`divide` is R / z (0 where z = 0): then a quotient passes on without a division."""
        return False

    def carry(self, ctx, s, r, want):
        op = Affine(ctx)
        if not self.own_output(op):
            return None
        eng, z = ctx.engine, ctx.output
        q = quotient(eng, z, s, r) if self.divides_exactly() else self.divide(eng, relevance_of(eng, r, s, z), z)
        grads = op.back(q)
        return op.scatter([g if want[i] else op.times(x, g) for i, x, g in zip(op.signal, op.signals(), grads)])


class Epsilon(ZRule):
    """LRP-ε: denominator z + ε·sign(z), sign(0) = +1; ε absorbs weak or contradictory relevance.

    ``bias_factor`` (Arras et al. 2017): the share that the bias and ε absorb, times the factor, is spread
    evenly over all of the node's input elements of each sample (1: relevance is conserved; 0: plain ε).
    """

    name = "epsilon"

    def __init__(self, epsilon: NonNegative = 1e-6, zero_bias: Flag = False, bias_factor: UnitInterval = 0.0):
        super().__init__(epsilon=epsilon, zero_bias=zero_bias, bias_factor=bias_factor)

    def divide(self, eng, R, z):
        return epsilon_divide(eng, R, z, self.epsilon)

    def divides_exactly(self):
        return self.epsilon == 0

    def relevance(self, op, eng, R):
        rels = super().relevance(op, eng, R)
        factor = float(self.params.get("bias_factor", 0.0))
        return rels if factor == 0.0 else spread_absorbed(eng, R, rels, factor)


def _sample_total(eng, a):
    """Per-sample sum, shape (N,)."""
    return a if len(a.shape) == 1 else eng.sum(a, axis=tuple(range(1, len(a.shape))))


def spread_absorbed(eng, R, rels, factor: float) -> list:
    """Add ``factor`` × (relevance in − relevance passed on) of each sample evenly to every input element.

    Arras et al.'s ``bias_factor``: spread over all inputs of the sample, not only those of the output unit
    that absorbed it (their reference spreads a linear map's share over all its inputs, also for the
    elementwise cell update), so a gated recurrent network conserves relevance exactly with factor 1."""
    present = [r for r in rels if r is not None]
    if not present:
        return rels
    absorbed = _sample_total(eng, R)
    size = 0
    for r in present:
        absorbed = absorbed - _sample_total(eng, r)
        size += int(np.prod(r.shape[1:]))
    share = absorbed * (factor / size)
    reshape = eng.kernel("reshape")
    out = []
    for r in rels:
        if r is None:
            out.append(None)
        else:
            out.append(r + (share if len(r.shape) == 1 else
                            reshape.forward({"shape": (1,) * (len(r.shape) - 1)}, [share], {})))
    return out


class Zero(ZRule):
    """LRP-0: R_i = x_i w_ij / z_j R_j exactly; a unit with z = 0 passes no relevance."""

    name = "zero"

    def __init__(self, zero_bias: Flag = False):
        super().__init__(zero_bias=zero_bias)

    def divide(self, eng, R, z):
        return eng.safe_divide(R, z)

    def divides_exactly(self):
        return True


class Norm(ZRule):
    """For sums, average pools and scalings: each input gets its share of the output, by contribution
    (a bias-free LRP-ε with a small stabiliser; ``epsilon=0`` divides exactly)."""

    name = "norm"
    categories = frozenset({"sum", "product"})

    def __init__(self, epsilon: NonNegative = 1e-6):
        super().__init__(epsilon=epsilon)

    def own_output(self, op) -> bool:
        return op.kind == "product" or (op.kind == "sum" and not any(op.ctx.constant))

    def divide(self, eng, R, z):
        return epsilon_divide(eng, R, z, self.epsilon)

    def divides_exactly(self):
        return self.epsilon == 0

    def relevance(self, op, eng, R):
        xs = op.signals()
        z = op.ctx.output if self.own_output(op) else op.term(xs, bmod=DROP)   # no bias to drop: the output
        s = self.divide(eng, R, z)
        return [op.times(x, g) for x, g in zip(xs, op.back(s))]


class Gamma(AffineRule):
    """Generalised LRP-γ: favour positive contributions by adding γ times them to the weights.

    The sign of the true output z picks the branch: for z > 0 the positive contributions (x+ with
    W + γW+, x- with W + γW-), for z < 0 the negative ones (Montavon et al. 2019; Andéol et al. 2021;
    zennit's generalised form). With non-negative inputs and z > 0 it is the original γ-rule.
    """

    name = "gamma"

    def __init__(self, gamma: NonNegative = 0.25, stabilizer: NonNegative = 1e-6, zero_bias: Flag = False):
        super().__init__(gamma=gamma, stabilizer=stabilizer, zero_bias=zero_bias)

    def relevance(self, op, eng, R):
        if self.optimise and op.kind == "layer" and len(op.signal) == 1:
            (x,) = op.signals()
            fast = self.fast_nonnegative if op.nonnegative()[0] else self.fast_signed
            return fast(op, eng, R, x)
        return self.general(op, eng, R, *op.split())

    def general(self, op, eng, R, xp, xn):
        """The formula (docs/rules.md): both branches, each with its own denominator, on every kind of op."""
        up, down = gamma_up(eng, self.gamma), gamma_down(eng, self.gamma)
        z = op.ctx.output
        zb = self.params["zero_bias"]
        out = [None] * len(xp)
        has_neg = any(x is not None for x in xn)
        for w_xp, w_xn, sign in ((up, down, z), (down, up, -z)):
            zz = _add(op.term(xp, w_xp, DROP if zb else w_xp), op.term(xn, w_xn, DROP))
            if zz is None:
                continue
            s = eng.where_positive(sign, op.divide_term(R, zz, self.stabilizer))
            gps = op.back(s, w_xp)
            gns = op.back(s, w_xn) if has_neg else [None] * len(xn)
            for k, (gp, gn) in enumerate(zip(gps, gns)):
                out[k] = _add(out[k], _add(_mul(xp[k], gp), _mul(xn[k], gn)))
        return out

    def fast_signed(self, op, eng, R, x):
        """Optimisation of :meth:`general` for a weighted layer whose input has both signs (after SiLU, a
        linear bottleneck, a gate, a residual sum).

        With x± = (x ± |x|)/2 and W± = (W ± |W|)/2, the positive contributions are P = F(x⁺; W⁺) + F(x⁻; W⁻)
        = (z₀ + A)/2 and the negative ones N = z₀ − P = (z₀ − A)/2, where z₀ = z − b and A = F(|x|; |W|). So both
        branches' denominators are one array, (1 + γ/2)z + (γ/2)σ(A + |b|) with σ the sign of z (0 at 0;
        zero_bias: z₀ and A), and the four transposed ops merge into two:
        R = (1 + γ/2) x ⊙ Wᵀ(|σ|s) + (γ/2) |x| ⊙ |W|ᵀ(σs). One extra forward and two transposed ops instead of
        four of each. Without zero_bias the denominators stay above γ/2 times the contributions they divide (z
        and γ(P + b⁺) share a sign where z > 0, likewise below), so the rewrite rounds no worse than the general
        form. (The same |x|, |W| rewrite of αβ is not taken: its parts' denominators may vanish while their
        contributions do not cancel, P ≈ 0 beside a large N, and the rounding of A would be amplified.)
        """
        h = self.gamma / 2.0
        z = op.ctx.output
        b = op.ctx.params.get("bias")
        mag = magnitude(eng)
        ax = eng.abs(x)
        a = op.term([ax], mag, DROP if self.zero_bias else mag)          # A (+ |b|)
        zz = z if b is None or not self.zero_bias else z - op.bias_map(b, z)
        sig = eng.signum(z)
        den = eng.add_scaled_into(zz * (1.0 + h), eng.multiply_into(a, sig), h)
        s_diff = eng.multiply_into(eng.divide_stabilized_into(R, den, self.stabilizer), sig)   # σs, in den
        s_both = eng.multiply_into(sig, s_diff)   # σ²s = |σ|s: nothing where z = 0
        (t1,) = op.back(s_both)
        del s_both
        (t2,) = op.back(s_diff, mag)
        del s_diff
        return [eng.add_scaled_into(eng.add_scaled_into(0.0, op.times(x, t1), 1.0 + h), op.times(ax, t2), h)]

    def fast_nonnegative(self, op, eng, R, x):
        """Optimisation of :meth:`general` for a weighted layer whose input is x ≥ 0 (after a ReLU).

        With q = F(x; W⁺) + b⁺ ≥ 0 the branches' outputs are zp = z + γq > 0 where z > 0 and zn = (1+γ)z − γq < 0
        where z < 0, so their stabilised values are one array: z (times 1+γ where z ≤ 0) + sign(z)(γq + ε), four
        light passes. When no relevance arrives where z ≤ 0 (a layer followed by a ReLU under input-proportional
        rules: the usual case) only the positive branch is left, R = x ⊙ (W + γW⁺)ᵀ(R / (zp + ε)): one extra
        forward and one transposed op. Otherwise (a layer feeding a residual sum) each branch's quotient goes back
        along its own weights, R = x ⊙ [(W + γW⁺)ᵀs⁺ + (W + γW⁻)ᵀs⁻]: one extra forward and two transposed ops.
        The modified weights are made from one W⁺. Both give the numbers of the general form.
        """
        if self.zero_bias:
            return self._nonnegative_zero_bias(op, eng, R, x)
        g, eps = self.gamma, self.stabilizer
        z = op.ctx.output
        w = op.ctx.params["weight"]
        wp = eng.clip(w, 0, None)
        q = op.term([x], _fixed(wp), positive(eng))                 # F(x; W⁺) + b⁺

        def positive_branch():                                      # nothing arrives where z ≤ 0
            s = eng.divide_into(R, eng.positive_plus_into(eng.add_scaled_into(z, q, g), eps))
            if eps == 0:
                s = eng.where_positive(z, s)        # where z ≤ 0 the quotient may be 0/0
            (t,) = op.back(s, _fixed(eng.add_scaled_into(w, wp, g)))
            return [op.times(x, t)]

        def both_branches():
            w_dn = eng.add_scaled_into(w, eng.clip(w, None, 0), g)      # W + γW⁻
            pm = eng.copysign_into(eng.add_scaled_into(eps, q, g), z)    # ±(γq + ε) by the sign of z
            s = eng.divide_into(R, eng.add_scaled_into(eng.scale_negative(z, 1.0 + g), pm, 1.0))
            w_up = eng.add_scaled_into(w, wp, g)                        # W + γW⁺
            axis = op.output_channel_axis()
            # one transposed op over [s⁺, s⁻] with the weights stacked the same way where the activations
            # outweigh the weights (more output positions than inputs per unit): there it runs faster than two;
            # with few positions and many channels (a ResNet's last stage) two separate ones run faster than the
            # copy and the larger op
            both = None
            if axis is not None and _positions(z, axis) >= _fan_in(w):
                both = eng.stack_by_sign(z, s, axis)    # z = 0: neither branch
            if both is not None:
                (t,) = op.back(both, _fixed(eng.kernel("concat").forward({"axis": 0}, [w_up, w_dn], {})))
                return [op.times(x, t)]
            (t_up,) = op.back(eng.where_positive(z, s), _fixed(w_up))
            (t_dn,) = op.back(eng.where_negative(z, s), _fixed(w_dn))
            return [op.times(x, eng.add_scaled_into(t_up, t_dn, 1.0))]
        return eng.if_any_where_nonpositive(z, R, both_branches, positive_branch)

    def _nonnegative_zero_bias(self, op, eng, R, x):
        """:meth:`fast_nonnegative` with ``zero_bias``: z' = z − b and q = F(x; W⁺), whose branches' outputs
        zp = z' + γq and zn = (1+γ)z' − γq need not have the sign of z. Where nothing arrives at z ≤ 0 the
        positive branch alone; else R = x ⊙ [Wᵀ(s⁺ + (1+γ)s⁻) + γW⁺ᵀ(s⁺ − s⁻)]."""
        g = self.gamma
        z = op.ctx.output
        b = op.ctx.params.get("bias")
        zz = z if b is None else z - op.bias_map(b, z)
        q = op.term([x], positive(eng), DROP)

        def positive_branch():
            s = eng.divide_stabilized(R, eng.add_scaled_into(zz, q, g), self.stabilizer)
            (t,) = op.back(s, gamma_up(eng, g))
            return [op.times(x, t)]

        def both_branches():
            mz = -z
            # each branch's own contributions: q where z > 0, the negative part zz − q where z < 0
            part = eng.where_positive(z, q) + eng.where_positive(mz, zz - q)
            s = eng.divide_stabilized(R, eng.add_scaled_into(zz, part, g), self.stabilizer)
            s_up, s_dn = eng.where_positive(z, s), eng.where_positive(mz, s)    # z = 0 passes nothing
            diff = s_up - s_dn
            (t1,) = op.back(eng.add_scaled_into(s_up, s_dn, 1 + g))
            (t2,) = op.back(diff, positive(eng))
            return [op.times(x, eng.add_scaled_into(t1, t2, g))]
        # the positive branch alone where nothing arrives where z ≤ 0
        return eng.if_any_where_nonpositive(z, R, both_branches, positive_branch)


def _positions(a, axis: int) -> int:
    """Entries of ``a`` per index of ``axis`` (a layer's output positions over the batch)."""
    return int(np.prod([int(d) for d in a.shape])) // int(a.shape[axis])


def _fan_in(w) -> int:
    """Inputs per output unit of a layer with weights ``w`` (out, in, *kernel)."""
    return int(np.prod([int(d) for d in w.shape[1:]]))


def _fixed(w) -> Mod:
    """A weight 'modifier' that hands back weights made beforehand from the layer's own (a weighted layer's)."""
    return Mod(lambda _: w, lambda v: v)


class Flat(AffineRule):
    """LRP-flat: each output's relevance is spread evenly over its receptive field (Lapuschkin et al. 2019)."""

    name = "flat"

    def __init__(self, stabilizer: NonNegative = 1e-6):
        super().__init__(stabilizer=stabilizer)

    def relevance(self, op, eng, R):
        one = ones(eng)
        xs = [eng.ones_like(x) for x in op.signals()]
        z = op.term(xs, one, DROP)
        s = eng.divide_stabilized(R, z, self.stabilizer)
        return op.back(s, one)


class WSquare(AffineRule):
    """LRP-w²: relevance spread in proportion to the squared weights, independent of the input
    (Montavon et al. 2017); the squared bias joins the denominator unless ``zero_bias``."""

    name = "w_square"

    def __init__(self, stabilizer: NonNegative = 1e-6, zero_bias: Flag = False):
        super().__init__(stabilizer=stabilizer, zero_bias=zero_bias)

    def relevance(self, op, eng, R):
        sq = square(eng)
        xs = [eng.ones_like(x) for x in op.signals()]
        z = op.term(xs, sq, DROP if self.zero_bias else sq)
        s = eng.divide_stabilized(R, z, self.stabilizer)
        return op.back(s, sq)


class ZBox(AffineRule):
    """LRP-zᴮ (deep Taylor for bounded inputs, low ≤ x ≤ high): for the pixel layer (Montavon et al. 2017).

    ``low``/``high`` are scalars or arrays broadcastable to one sample's input (e.g. per channel).
    """

    name = "z_box"
    categories = frozenset({"layer", "sum"})
    constraints = (ordered("low", "high"),)

    def __init__(self, low: OptionalArray = None, high: OptionalArray = None, stabilizer: NonNegative = 1e-6):
        super().__init__(low=low, high=high, stabilizer=stabilizer)
        if low is None or high is None:
            raise MethodError("rule 'z_box' needs the input bounds: low=..., high=... (scalars or arrays)")

    def bound(self, eng, value, x):
        arr = np.asarray(value, dtype=np.float64)
        b = eng.asarray(arr, dtype=eng.dtype_of(x))
        try:
            return eng.zeros_like(x) + b
        except Exception as err:
            raise MethodError(f"z_box bounds of shape {arr.shape} do not broadcast to inputs of shape "
                              f"{tuple(x.shape)}: {err}") from None

    def per_channel(self, op, x):
        """The bounds as per-input-channel vectors (low, high), or None where they vary otherwise.

        Bounds that are constant over a sample's spatial positions fold into the weights:
        l ⊙ W⁺ᵀs + h ⊙ W⁻ᵀs = (lW⁺ + hW⁻)ᵀs, and F(l; W⁺) + F(h; W⁻) = F(1; lW⁺ + hW⁻), the same for
        every sample (zero padding included)."""
        node = op.ctx.node
        if op.kind != "layer" or len(op.signal) != 1 or int(node.attrs.get("groups", 1)) != 1:
            return None
        shape = tuple(x.shape[1:])
        out = []
        for v in (self.low, self.high):
            try:
                a = np.broadcast_to(np.asarray(v, dtype=np.float64), shape)
            except ValueError as err:
                raise MethodError(f"z_box bounds of shape {np.shape(v)} do not broadcast to inputs of "
                                  f"shape {tuple(x.shape)}: {err}") from None
            if node.op == "conv":
                if not np.all(a == a[(slice(None),) + (slice(0, 1),) * (a.ndim - 1)]):
                    return None
                a = a.reshape(a.shape[0], -1)[:, 0]
            elif a.ndim != 1:
                return None
            out.append(a)
        return out

    def relevance(self, op, eng, R):
        xs = op.signals()
        bounds = self.per_channel(op, xs[0]) if self.optimise and xs else None
        if bounds is not None:
            return self.fast_folded(op, eng, R, xs[0], *bounds)
        return self.general(op, eng, R, xs)

    def general(self, op, eng, R, xs):
        """The formula (docs/rules.md) with the bounds as arrays of the input's shape: three transposed ops."""
        pos, neg = positive(eng), negative(eng)
        ls = [self.bound(eng, self.low, x) for x in xs]
        hs = [self.bound(eng, self.high, x) for x in xs]
        z = op.term(xs, None, KEEP)
        z = z - op.term(ls, pos, pos)
        zh = op.term(hs, neg, neg)
        z = z if zh is None else z - zh
        s = eng.divide_stabilized(R, z, self.stabilizer)
        out = []
        for x, l, h, g, gp, gn in zip(xs, ls, hs, op.back(s), op.back(s, pos), op.back(s, neg)):
            r = _mul(x, g)
            r = r - _mul(l, gp) if gp is not None else r
            r = r - _mul(h, gn) if gn is not None else r
            out.append(r)
        return out

    def fast_folded(self, op, eng, R, x, low, high):
        """Optimisation of :meth:`general` for bounds constant over each input channel (:meth:`per_channel`):
        z − F(1; M) with M = lW⁺ + hW⁻ on one sample (the bias cancels), and R = x ⊙ Wᵀs − Mᵀs: one transposed
        op with W and M stacked along the input axis, instead of three."""
        dtype = eng.dtype_of(x)
        shape = (1, -1) + (1,) * (len(op.ctx.params["weight"].shape) - 2)
        lo = eng.asarray(low.reshape(shape), dtype=dtype)
        hi = eng.asarray(high.reshape(shape), dtype=dtype)
        mix = Mod(lambda w: lo * eng.clip(w, 0, None) + hi * eng.clip(w, None, 0), None)
        one = eng.ones_like(x[:1])
        c = op.term([one], mix, KEEP)          # F(1; M) + b, broadcast over the batch
        s = eng.divide_stabilized_into(R, op.ctx.output - c, self.stabilizer)
        # [Wᵀs, Mᵀs] as one transposed op with [W, M] stacked along the input axis: an image model's first
        # conv has few input channels, and its transposed op costs about the same for twice as many
        w = op.ctx.params["weight"]
        both = eng.kernel("concat").forward({"axis": 1}, [w, mix(w)], {})
        axis = 1 if op.ctx.node.op == "conv" else len(x.shape) - 1
        (gg,) = op.back(s, _fixed(both), xs=[eng.kernel("concat").forward({"axis": axis}, [x, x], {})])
        n = int(x.shape[axis])
        g, gb = (gg[(slice(None),) * axis + (slice(0, n),)], gg[(slice(None),) * axis + (slice(n, 2 * n),)])
        return [x * g - gb]
