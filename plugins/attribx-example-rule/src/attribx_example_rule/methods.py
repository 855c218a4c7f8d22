"""Methods built on the rule: it alone on every layer, and a composite in the spirit of Montavon et al.

Rules are named by their registered name (``"epsilon_rms"``), so a composite can also use rules of other
plugins; the LRP defaults (:func:`attribx.composite.lrp_defaults`) give activations, sums, pools and
shape ops the rules every attribx LRP method uses. A method's parameters are its factory's keyword
arguments: :class:`~attribx.methods.Method` reads their defaults, and their ranges from the annotations
(``delta: NonNegative``: out of range is refused before anything is computed), from the signature.
"""
from __future__ import annotations

from attribx import composite as C
from attribx.methods import Method
from attribx.parameters import Flag, NonNegative


def epsilon_rms(delta: NonNegative = 0.25, stabilizer: NonNegative = 1e-9, zero_bias: Flag = False):
    """ε-RMS on every linear and conv layer; sums (residual adds, average pools) divide with the same
    stabilizer (0: exactly)."""
    return C.Composite([(C.category("layer"), ("epsilon_rms", {"delta": delta, "stabilizer": stabilizer,
                                                                "zero_bias": zero_bias}))],
                       defaults=C.lrp_defaults(stabilizer), name="example.epsilon_rms")


def gamma_epsilon_rms(gamma: NonNegative = 0.25, delta: NonNegative = 0.25, stabilizer: NonNegative = 1e-9):
    """Montavon et al.'s (2019) layer-wise recipe by op type: LRP-0 on the output layer, ε-RMS on the
    other dense layers, γ on the convolutions."""
    return C.Composite([
        (C.last("layer"), ("zero", {})),
        (C.op("conv", "conv_transpose"), ("gamma", {"gamma": gamma, "stabilizer": stabilizer})),
        (C.category("layer"), ("epsilon_rms", {"delta": delta, "stabilizer": stabilizer})),
    ], defaults=C.lrp_defaults(stabilizer), name="example.gamma_epsilon_rms")


METHODS = [
    Method("example.epsilon_rms", epsilon_rms,
           description="LRP-ε with ε = δ·RMS(z) per layer and sample (Montavon et al. 2019)."),
    Method("example.gamma_epsilon_rms", gamma_epsilon_rms,
           description="LRP-0 on the output layer, ε-RMS on dense layers, γ on convs (Montavon et al. 2019)."),
]
