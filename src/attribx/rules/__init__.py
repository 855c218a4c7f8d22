"""Rules: how relevance passes one node. Written once against the engine interface."""
from .base import NodeContext, Rule
from .gradient import Gradient, Pass, Route
from .lrp import Epsilon, Norm, Zero, ZRule

BUILTIN_RULES = (Gradient, Route, Pass, Zero, Epsilon, Norm)

__all__ = ["NodeContext", "Rule", "ZRule", "Gradient", "Route", "Pass", "Zero", "Epsilon", "Norm",
           "BUILTIN_RULES"]
