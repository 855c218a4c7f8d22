"""The module the 'attribx' entry point names: one function per hook this plugin implements.

attribx imports it when the registry is first built; anything slow or framework-specific belongs
inside the hook functions, so that ``import attribx`` stays light.
"""
import attribx


@attribx.hookimpl
def attribx_rules():
    from .rule import EpsilonRMS
    return [EpsilonRMS]


@attribx.hookimpl
def attribx_methods():
    from .methods import METHODS
    return list(METHODS)
