"""Rules: how relevance passes one node. Written once against the engine interface."""
from .alpha_beta import AlphaBeta, ZPlus
from .gradient import (DeconvNet, Gradient, GuidedBackprop, Pass, Proportional, Route, SignalTakesAll,
                       WinnerTakesAll)
from .base import NodeContext, Rule
from .lrp import Affine, AffineRule, Epsilon, Flat, Gamma, Norm, WSquare, ZBox, Zero, ZRule
from .transformer import Block, ConstantFactor, ConstantStd, SoftmaxTaylor, Uniform

BUILTIN_RULES = (Gradient, Route, WinnerTakesAll, Proportional, Pass, SignalTakesAll, DeconvNet, GuidedBackprop,
                 Zero, Epsilon, Norm, AlphaBeta, ZPlus, Gamma, Flat, WSquare, ZBox,
                 ConstantStd, SoftmaxTaylor, Uniform, ConstantFactor, Block)

__all__ = ["NodeContext", "Rule", "Affine", "AffineRule", "ZRule", *[r.__name__ for r in BUILTIN_RULES],
           "BUILTIN_RULES"]
