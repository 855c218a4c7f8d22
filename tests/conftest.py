"""Shared fixtures: small hand-built graphs with fixed random weights; the ``extended`` marker."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from attribx import GraphBuilder

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: ``@pytest.mark.extended``: a test that repeats what faster tests already cover (a bigger model, more
#: combinations). scripts/test and CI skip it; ATTRIBX_EXTENDED=1 (or ``-m extended``) runs it.
EXTENDED = os.environ.get("ATTRIBX_EXTENDED", "") not in ("", "0")


def pytest_addoption(parser):
    parser.addoption(
        "--engines", default="", metavar="NAMES",
        help="comma-separated (torch, tensorflow): a core test (tests/*.py) parametrized over engines (an `engine` "
             "parameter) runs for the numpy engine and these frameworks' only. tox's `all` env runs the core tests "
             "that need a framework this way, torch and TensorFlow in separate runs (both imported in one pytest "
             "worker crash it); default: every engine (each skips where its framework is missing)")


FRAMEWORK_ENGINES = ("torch", "tensorflow")


def _other_framework(item, asked) -> bool:
    """Whether ``item`` is a core test run for a framework's engine that ``--engines`` did not ask for."""
    callspec = getattr(item, "callspec", None)
    engine = None if callspec is None else callspec.params.get("engine")
    return (Path(str(item.path)).parent == Path(__file__).parent and engine in FRAMEWORK_ENGINES
            and engine not in asked)


def pytest_collection_modifyitems(config, items):
    asked = {e for e in config.getoption("engines").split(",") if e}
    if asked:
        dropped = [i for i in items if _other_framework(i, asked)]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [i for i in items if not _other_framework(i, asked)]
    if EXTENDED or "extended" in (config.getoption("markexpr", "") or ""):
        return
    skip = pytest.mark.skip(reason="extended: repeats covered ground; ATTRIBX_EXTENDED=1 runs it")
    for item in items:
        if item.get_closest_marker("extended"):
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def mlp_weights(rng, sizes=(6, 5, 4, 3), dtype=np.float64):
    """Weights (in, out) and biases of an MLP, as the seeds write them (Z = X W + b)."""
    ws = [rng.normal(size=(a, b)).astype(dtype) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [rng.normal(size=b).astype(dtype) * 0.5 for b in sizes[1:]]
    return ws, bs


def build_mlp(ws, bs):
    """linear -> relu -> ... -> linear, with torch-layout (out, in) weights."""
    b = GraphBuilder("mlp")
    h = b.input("x", (ws[0].shape[0],))
    for k, (w, bias) in enumerate(zip(ws, bs)):
        h = b.linear(h, w.T, bias, name=f"fc{k + 1}")
        if k < len(ws) - 1:
            h = b.relu(h, name=f"relu{k + 1}")
    return b.build()


@pytest.fixture
def mlp(rng):
    ws, bs = mlp_weights(rng)
    return build_mlp(ws, bs), ws, bs
