"""The built-in plugin: attribx's own ops, numpy engine, rules, methods, passes and graph files.

It registers through exactly the hooks a third-party plugin uses (see :mod:`attribx.hookspecs`).
"""
from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def attribx_ops():
    from .ops import BUILTIN_OPS
    return list(BUILTIN_OPS)


@hookimpl
def attribx_engines():
    from .engines.numpy_engine import NumpyEngine
    return [NumpyEngine]


@hookimpl
def attribx_kernels(engine):
    if engine == "numpy":
        from .engines.numpy_kernels import KERNELS
        return dict(KERNELS)
    return None


@hookimpl
def attribx_rules():
    from .rules import BUILTIN_RULES
    return list(BUILTIN_RULES)


@hookimpl
def attribx_methods():
    from .methods import BUILTIN_METHODS
    return list(BUILTIN_METHODS)


@hookimpl
def attribx_evaluators():
    from .evaluators import BUILTIN_EVALUATORS
    from .evaluators.spray import spray
    from .evaluators.word_deletion import word_deletion
    return {**BUILTIN_EVALUATORS, "spray": spray, "word_deletion": word_deletion}


@hookimpl
def attribx_graph_passes():
    from .passes import BUILTIN_PASSES
    return list(BUILTIN_PASSES)


@hookimpl
def attribx_model_formats():
    return {".npz": "an attribx graph written by Graph.save"}


@hookimpl
def attribx_load_model(path):
    if not str(path).endswith(".npz"):
        return None
    import numpy as np
    from .graph import Graph
    try:
        with np.load(path, allow_pickle=False) as data:
            if "__attribx_graph__" not in data.files:
                return None
    except Exception:
        return None
    return Graph.load(path)
