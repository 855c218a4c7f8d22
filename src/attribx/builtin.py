"""The built-in plugin: attribx's own ops, numpy engine, rules, methods, passes and graph files.

It registers through exactly the hooks a third-party plugin uses (see :mod:`attribx.hookspecs`), and the
plugin manager loads it by name as it loads theirs, so nothing imports this module and it may import all
it registers.
"""
from __future__ import annotations

import numpy as np

from .engines.numpy_engine import NumpyEngine
from .engines.numpy_kernels import KERNELS
from .errors import ModelLoadError
from .evaluators import BUILTIN_EVALUATORS
from .evaluators.spray import spray
from .evaluators.word_deletion import word_deletion
from .graph import Graph
from .hookspecs import hookimpl
from .methods import BUILTIN_METHODS
from .ops import BUILTIN_OPS
from .passes import BUILTIN_PASSES
from .rollout import ATTENTION_ROLLOUT
from .rules import BUILTIN_RULES


@hookimpl
def attribx_ops():
    return list(BUILTIN_OPS)


@hookimpl
def attribx_engines():
    return [NumpyEngine]


@hookimpl
def attribx_kernels(engine):
    if engine == "numpy":
        return dict(KERNELS)
    return None


@hookimpl
def attribx_rules():
    return list(BUILTIN_RULES)


@hookimpl
def attribx_methods():
    return [*BUILTIN_METHODS, ATTENTION_ROLLOUT]


@hookimpl
def attribx_evaluators():
    return {**BUILTIN_EVALUATORS, "spray": spray, "word_deletion": word_deletion}


@hookimpl
def attribx_graph_passes():
    return list(BUILTIN_PASSES)


@hookimpl
def attribx_model_formats():
    return {".npz": "an attribx graph written by Graph.save"}


@hookimpl
def attribx_load_model(path):
    if not str(path).endswith(".npz"):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if "__attribx_graph__" not in data.files:
                return None
    except Exception:
        if _names_a_graph(path):
            raise ModelLoadError(f"{path}: a damaged attribx graph (truncated or corrupted: not a readable .npz "
                                 f"archive); write it again with Graph.save") from None
        return None
    return Graph.load(path, validate=False)    # attribx.load_model checks it against every plugin's ops


def _names_a_graph(path) -> bool:
    """Whether a file that is no readable .npz still holds the zip entry of an attribx graph's structure
    (``__attribx_graph__.npy``: the first entry Graph.save writes, so a truncated graph keeps it)."""
    marker = b"__attribx_graph__.npy"
    try:
        with open(path, "rb") as f:
            tail = b""
            while True:
                block = f.read(1 << 20)
                if not block:
                    return False
                if marker in tail + block:
                    return True
                tail = block[-len(marker):]
    except OSError:
        return False
