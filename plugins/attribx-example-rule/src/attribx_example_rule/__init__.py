"""A template attribx plugin: LRP-ε with ε relative to each layer's scale, and methods built on it.

Copy this package to start a plugin of your own (see docs/plugins.md of attribx). Everything here uses
only attribx's public API: :class:`attribx.rules.ZRule`, :mod:`attribx.composite`,
:class:`attribx.methods.Method` and the hooks of :mod:`attribx.hookspecs`.
"""
from .rule import EpsilonRMS
from .methods import METHODS

__version__ = "0.1.0"
__all__ = ["EpsilonRMS", "METHODS", "__version__"]
