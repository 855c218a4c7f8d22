"""LRP-αβ and z⁺ (Bach et al. 2015; Montavon et al. 2017): positive and negative contributions, each over its own
total, in the general form of :mod:`attribx.rules.lrp` and in two faster forms with the same numbers (inputs of
both signs; inputs after a ReLU), each taken only where its rounding stays small."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..parameters import Flag, NonNegative, alpha_minus_beta_is_one
from .base import Rule
from .lrp import DROP, AffineRule, _add, _mul, magnitude, negative, positive


class AlphaBeta(AffineRule):
    """LRP-αβ: positive contributions weighted by α, negative ones by β, α − β = 1.

    Positive contributions are x+·W+ and x-·W- (plus b+), negative ones x+·W- and x-·W+ (plus b-),
    each normalised by its own total (Bach et al. 2015; zennit's convention for negative inputs).
    """

    name = "alpha_beta"
    constraints = (alpha_minus_beta_is_one,)

    def __init__(self, alpha: NonNegative = 2.0, beta: NonNegative = 1.0, stabilizer: NonNegative = 1e-6,
                 zero_bias: Flag = False):
        super().__init__(alpha=alpha, beta=beta, stabilizer=stabilizer, zero_bias=zero_bias)

    def relevance(self, op, eng, R):
        if self.optimise and op.kind == "layer" and len(op.signal) == 1 and not self.few_inputs(op):
            (x,) = op.signals()
            if not op.nonnegative()[0]:
                return self.fast_signed(op, eng, R, x)
            if self.beta:       # z⁺ after a ReLU: the general form is one forward and one transposed op already
                return self.fast_nonnegative(op, eng, R, x)
        return self.general(op, eng, R, *op.split())

    #: the fast forms apply where every unit's contributions of either sign are at least this share of all its
    #: contributions' magnitude (rounding then grows by at most about 2 / share)
    min_share: ClassVar[float] = 1e-2
    #: layers with fewer inputs per unit (a depthwise conv's nine) nearly always have units that are not: not tried
    min_inputs: ClassVar[int] = 32

    def few_inputs(self, op) -> bool:
        return "weight" not in op.ctx.params or int(np.prod(op.ctx.params["weight"].shape[1:])) < self.min_inputs

    def one_sided(self, eng, z0, a):
        """A number, non-zero where some unit has |z₀| > (1 − min_share)·a (a: the magnitude of all its contributions):
        nearly all of them of one sign, so that the other part's denominator, got by a difference, is mostly
        rounding. A sum of terms ≤ 0 (zero only where every term is), so that no output-sized mask outlives it."""
        return eng.sum(eng.clip(eng.add_scaled_into(a, eng.abs(z0), -1.0 / (1.0 - self.min_share)), None, 0))

    def unless_one_sided(self, op, eng, R, flag, fast):
        """``fast()``, or the general form where ``flag`` (:meth:`one_sided`) says some unit is one-sided."""
        return eng.if_any_nonzero(flag, lambda: self.general(op, eng, R, *op.split()), fast)

    def fast_signed(self, op, eng, R, x):
        """Optimisation of :meth:`general` for a weighted layer whose input has both signs (after SiLU, a gate,
        a linear bottleneck); None where it does not apply.

        As for γ (:meth:`attribx.rules.lrp.Gamma.fast_signed`), with A' = F(|x|; |W|) + |b| the parts' denominators are
        zp = (z + A')/2 and zn = (z − A')/2 (zero_bias: z − b and A), and
        R = ½[x ⊙ Wᵀ(α sp − β sn) + |x| ⊙ |W|ᵀ(α sp + β sn)]: one extra forward and two transposed ops instead
        of four of each (z⁺, β = 0: of two each, and x is not split: MobileNetV3's 1×1 convs after hardswish).

        Unlike γ's, these denominators vanish where a unit's contributions all have one sign, while its
        transposed ops do not: z − (±A') rounds to about ε·A' there, and dividing by it spreads that rounding
        (the general form multiplies it by exact zeros). So the form is taken only where
        |z| ≤ (1 − min_share)·A' everywhere (dense layers with many inputs); else, as on depthwise convs, the
        general form runs.
        """
        mag = magnitude(eng)
        z = op.ctx.output
        b = op.ctx.params.get("bias")
        ax = eng.abs(x)
        a = op.term([ax], mag, DROP if self.zero_bias else mag)
        zz = z if b is None or not self.zero_bias else z - op.bias_map(b, z)
        flag = self.one_sided(eng, zz, a)
        held = [zz, a]          # handed to fast(), which drops each as soon as it is past it
        del zz, a

        def fast():
            # with d± = z ± A' = 2·z± and 2ε, the quotients are s±/2 and the form's ½ cancels (exact: powers of 2)
            zz, a = held
            held.clear()
            dp, dn = zz + a, (zz - a if self.beta else None)
            del zz, a
            sp = eng.divide_stabilized_into(R, dp, 2.0 * self.stabilizer)
            if self.alpha != 1:
                sp = eng.add_scaled_into(0.0, sp, self.alpha)
            u = v = sp
            if self.beta:
                sn = eng.divide_stabilized_into(R, dn, 2.0 * self.stabilizer)
                del dn
                u = sp - (sn if self.beta == 1 else sn * self.beta)
                v = eng.add_scaled_into(sp, sn, self.beta)          # into sn
                del sn
            del sp
            (t1,) = op.back(u)
            del u
            (t2,) = op.back(v, mag)
            del v
            return [eng.add_scaled_into(op.times(x, t1), op.times(ax, t2), 1.0)]
        return self.unless_one_sided(op, eng, R, flag, fast)

    def fast_nonnegative(self, op, eng, R, x):
        """Optimisation of :meth:`general` for a weighted layer whose input is x ≥ 0 (after a ReLU).

        The negative contributions need no forward of their own: F(x; W⁻) = z − b − F(x; W⁺), from the forward's
        output. With W⁻ = W − W⁺ the two transposed ops merge as R = x ⊙ [W⁺ᵀ(α s⁺ + β s⁻) − β Wᵀ s⁻], with
        s± = R / z± (z± = F(x; W±) + b±): one extra forward instead of two, two transposed ops as before.
        Where a unit's contributions are nearly all positive, F(x; W⁻) is mostly rounding and the merged ops
        spread it (on a depthwise conv after a ReLU, float32: 3·10⁻² of the largest relevance): None there, as
        for :meth:`fast_signed`, and the general form runs.
        """
        pos = positive(eng)
        z = op.ctx.output
        b = op.ctx.params.get("bias")
        fp = op.term([x], pos, DROP)                                  # F(x; W⁺)
        z0 = z if b is None else z - op.bias_map(b, z)
        fn = z0 - fp                                                  # F(x; W⁻)
        flag = self.one_sided(eng, z0, fp - fn)
        held = [fp, fn]         # handed to fast(), which drops each as soon as it is past it
        del z0, fp, fn

        def fast():
            zp, zn = held
            held.clear()
            if b is not None and not self.zero_bias:        # in place: zp and zn are this rule's own arrays
                zp = eng.add_scaled_into(op.bias_map(eng.clip(b, 0, None), zp), zp, 1.0)
                zn = eng.add_scaled_into(op.bias_map(eng.clip(b, None, 0), zn), zn, 1.0)
            sp = eng.divide_stabilized_into(R, zp, self.stabilizer)
            del zp
            sn = eng.divide_stabilized_into(R, zn, self.stabilizer)
            del zn
            (t2,) = op.back(sn)
            u = eng.add_scaled_into(sp if self.alpha == 1 else sp * self.alpha, sn, self.beta)
            del sp, sn
            (t1,) = op.back(u, pos)
            del u
            return [op.times(x, eng.add_scaled_into(t1, t2, -self.beta))]
        return self.unless_one_sided(op, eng, R, flag, fast)

    def general(self, op, eng, R, xp, xn):
        """The formula (docs/rules.md): each part with its own denominator, on every kind of op."""
        pos, neg = positive(eng), negative(eng)
        zb = self.params["zero_bias"]
        out = [None] * len(xp)

        def part(w_for_xp, w_for_xn, b_mod, weight):
            z = _add(op.term(xp, w_for_xp, DROP if zb else b_mod), op.term(xn, w_for_xn, DROP))
            if z is None:
                return
            s = op.divide_term(R, z, self.stabilizer)
            del z
            gps = op.back(s, w_for_xp)
            gns = op.back(s, w_for_xn) if any(x is not None for x in xn) else [None] * len(xn)
            for k, (gp, gn) in enumerate(zip(gps, gns)):
                r = _add(op.times(xp[k], gp), op.times(xn[k], gn))
                out[k] = _add(out[k], r if weight == 1 else _mul(r, weight))

        part(pos, neg, pos, self.alpha)
        if self.beta:
            part(neg, pos, neg, -self.beta)
        return out


class ZPlus(AlphaBeta):
    """LRP-z+ (deep Taylor for ReLU layers): αβ with α = 1, β = 0."""

    name = "z_plus"
    constraints = ()

    def __init__(self, stabilizer: NonNegative = 1e-6, zero_bias: Flag = False):
        Rule.__init__(self, stabilizer=stabilizer, zero_bias=zero_bias)
        self.params.update(alpha=1.0, beta=0.0)

    def __repr__(self):
        return f"ZPlus(stabilizer={self.stabilizer!r}, zero_bias={self.zero_bias!r})"
