"""attribx: explain neural-network predictions (LRP and relatives) for models from any framework.

>>> rel = attribx.explain(model, x, method="lrp.epsilon", target="predicted")
>>> attribx.save(rel, "relevance.h5")

``import attribx`` needs only numpy, xarray, h5py and pluggy; framework backends are plugins.
"""
from __future__ import annotations

from .api import evaluate, explain, forward, get_engine, load_model, translate
from .builder import GraphBuilder
from .errors import (AttribxError, GraphError, InputError, MethodError, ModelLoadError, PluginError,
                     StorageError, UnsupportedError)
from .graph import Graph, Node, Value
from .hookspecs import hookimpl
from .storage import open_relevance, save
from .streaming import explain_dataset
from .version import __version__

__all__ = [
    "__version__", "explain", "explain_dataset", "evaluate", "forward", "translate", "load_model", "get_engine", "save",
    "open_relevance", "Graph", "GraphBuilder", "Node", "Value", "hookimpl", "AttribxError", "GraphError",
    "InputError", "MethodError", "ModelLoadError", "PluginError", "StorageError", "UnsupportedError",
]
