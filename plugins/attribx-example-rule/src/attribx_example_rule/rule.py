"""LRP-ε with a scale-relative ε: ε = δ · RMS(z) of the layer, per sample.

The ε-rule (Bach et al. 2015) divides by z_j + ε·sign(z_j). A fixed ε means different things in
layers of different scale: negligible where |z| is large, overwhelming where it is small. Montavon et
al. set it relative to the layer instead, "ε = 0.25 std" of the layer's outputs z, computed as the root
mean square ``((z**2).mean()**.5)`` (Montavon, Binder, Lapuschkin, Samek, Müller: "Layer-Wise Relevance
Propagation: An Overview", in *Explainable AI: Interpreting, Explaining and Visualizing Deep Learning*,
LNCS 11700, Springer 2019; and the LRP tutorial at heatmapping.org that implements it for VGG-16)::

    R_i = Σ_j  x_i w_ij / (z_j + ε_n · sign(z_j)) · R_j,
    z_j = Σ_i x_i w_ij + b_j,      ε_n = δ · sqrt(mean_j z_nj²) + stabilizer,   sign(0) = +1

The mean runs over all outputs j of the layer (channels and positions) of one sample n, so a sample's
explanation does not depend on the batch it is explained in (the tutorial explains one image at a
time). With δ = 0 and stabilizer = 0 it is LRP-0, and it conserves relevance on bias-free layers.
"""
from __future__ import annotations

from attribx.parameters import Flag, NonNegative
from attribx.rules import ZRule


class EpsilonRMS(ZRule):
    """LRP-ε with ε = δ·RMS(z) of the layer per sample (Montavon et al. 2019): scale-free stabilising."""

    name = "epsilon_rms"

    def __init__(self, delta: NonNegative = 0.25, stabilizer: NonNegative = 1e-9, zero_bias: Flag = False):
        """``delta``: ε relative to the layer's RMS; ``stabilizer``: added to ε; ``zero_bias``: drop the bias.
        The annotations are the ranges, checked when the rule is made."""
        super().__init__(delta=delta, stabilizer=stabilizer, zero_bias=zero_bias)

    def divide(self, eng, R, z):
        """R / (z + ε_n sign(z)), ε_n = δ·RMS of sample n's z (+ stabilizer); 0 where the denominator is 0.

        Written with engine operations only (``eng.sum``, ``eng.sign``, arithmetic), so it runs on every
        engine: numpy, torch, TensorFlow, and engines that plugins add."""
        axes = tuple(range(1, len(z.shape)))
        if axes:
            count = 1
            for d in z.shape[1:]:
                count *= int(d)
            rms = (eng.sum(z * z, axis=axes, keepdims=True) * (1.0 / count)) ** 0.5
        else:   # one number per sample
            rms = eng.abs(z)
        eps = rms * float(self.delta) + float(self.stabilizer)
        return eng.safe_divide(R, z + eps * eng.sign(z))
