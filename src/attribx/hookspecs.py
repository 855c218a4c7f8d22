"""All hook specifications of attribx, in one module.

A plugin is any module or object with functions named like these, decorated with
``attribx.hookimpl``, registered through the ``attribx`` entry-point group (or
:func:`attribx.plugins.register`). The built-in ops, engines, rules, methods and loaders register
through exactly these hooks.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("attribx")
hookimpl = pluggy.HookimplMarker("attribx")


@hookspec
def attribx_ops():
    """Return a list of :class:`attribx.ops.OpDef`: new op types for the graph."""


@hookspec
def attribx_engines():
    """Return a list of :class:`attribx.engines.Engine` subclasses (each with a unique ``name``)."""


@hookspec
def attribx_kernels(engine):
    """Return ``{op name: Kernel}`` implementing ops on the engine named ``engine`` (or nothing)."""


@hookspec
def attribx_rules():
    """Return a list of :class:`attribx.rules.Rule` subclasses (each with a unique ``name``)."""


@hookspec
def attribx_methods():
    """Return a list of :class:`attribx.methods.Method` objects (each with a unique ``name``)."""


@hookspec
def attribx_evaluators():
    """Return ``{name: callable}`` of evaluators: ``f(model, inputs, relevance, **params) -> xarray``."""


@hookspec
def attribx_graph_passes():
    """Return a list of :class:`attribx.passes.GraphPass`: rewrites run after translation."""


@hookspec(firstresult=True)
def attribx_translate(model, input_shape, converters):
    """Return a :class:`attribx.graph.Graph` for ``model`` if this backend understands it, else None.

    ``input_shape`` is one sample's input shape (no batch axis) when the caller knows it (explain and
    forward pass the data's), else None; backends that need shapes to trace raise a clear error then.
    ``converters``: the :class:`attribx.translation.Converter` records the installed plugins add (every
    framework's; a backend layers its own framework's over its built-in table).
    """


@hookspec
def attribx_converters():
    """Return converters for single layers, functions or ONNX op types: functions decorated with
    :func:`attribx.translation.converter` (or :class:`attribx.translation.Converter` records). A backend
    uses them in place of (or in addition to) its built-in ones; see docs/plugins.md."""


@hookspec
def attribx_model_types():
    """Return ``{model type: description}`` of the model objects this plugin's ``attribx_translate`` takes
    (for messages and ``attribx plugins``)."""


@hookspec(firstresult=True)
def attribx_load_model(path):
    """Return a model object (or Graph) read from ``path`` if this plugin reads that format, else None."""


@hookspec
def attribx_model_formats():
    """Return ``{file suffix: description}`` of the model files this plugin loads (for messages and docs)."""
