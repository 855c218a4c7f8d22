"""The module the 'attribx' entry point names: one function per hook this plugin implements.

attribx imports it when the registry is first built. The rule, methods and converters import only attribx
(the converters name the layers they translate by dotted path), so they are imported here at the top; a plugin whose hooks need a framework (torch, TensorFlow) imports it inside
the hook functions instead, so that ``import attribx`` stays light.
"""
import attribx

from .converters import CONVERTERS
from .methods import METHODS
from .rule import EpsilonRMS


@attribx.hookimpl
def attribx_rules():
    return [EpsilonRMS]


@attribx.hookimpl
def attribx_methods():
    return list(METHODS)


@attribx.hookimpl
def attribx_converters():
    return list(CONVERTERS)
