"""A pytest plugin for authors of attribx plugins: test a rule or method in a few lines.

Installed with attribx and loaded by pytest automatically (the ``pytest11`` entry point
``attribx.pytest_plugin``; where attribx is not installed as a distribution, e.g. run from a source
tree on ``PYTHONPATH``, pass ``-p attribx.pytest_plugin``). It gives

* fixtures ``attribx_graph`` (small float64 graphs with biases: an MLP, a CNN with max pooling, a
  residual CNN with global average pooling), ``attribx_bias_free_graph`` (the same without biases, where
  conserving rules must conserve exactly) and ``attribx_engine`` (every installed engine besides numpy,
  by name; a test using it is skipped, saying why, where numpy is the only one);
* checks that raise ``AssertionError`` with a message saying what broke:
  :func:`check_conservation`, :func:`check_engines_agree`, :func:`check_registered`;
* :func:`rule_method`, a composite that puts one rule (by registered name) on every layer, to test a
  rule before any method uses it.

>>> def test_engines_agree(attribx_graph, attribx_engine):
...     check_engines_agree("example.epsilon_rms", attribx_graph, attribx_engine)

Nothing here imports a framework: engines are looked up in the registry by name.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np
import pytest

from . import composite as C
from .api import explain
from .builder import GraphBuilder
from .composite import Composite
from .plugins import registry
from .rules import Rule
from .testing import relative_error


class SmallGraph(NamedTuple):
    """A hand-built graph and float64 inputs for it."""

    name: str
    graph: Any
    x: np.ndarray
    bias: bool


def _mlp(rng, bias):
    b = GraphBuilder("mlp")
    h = b.input("x", (6,))
    for k, (i, o) in enumerate([(6, 8), (8, 7), (7, 4)]):
        h = b.linear(h, rng.normal(size=(o, i)) * 0.6, rng.normal(size=o) * 0.3 if bias else None, name=f"fc{k + 1}")
        if k < 2:
            h = b.relu(h, name=f"relu{k + 1}")
    return b.build(), rng.normal(size=(4, 6))


def _cnn(rng, bias):
    b = GraphBuilder("cnn")
    x = b.input("x", (2, 8, 8))
    h = b.relu(b.conv(x, rng.normal(size=(4, 2, 3, 3)) * 0.5, rng.normal(size=4) * 0.2 if bias else None,
                      padding=1, name="conv1"))
    h = b.max_pool(h, 2, name="pool1")
    h = b.relu(b.conv(h, rng.normal(size=(5, 4, 3, 3)) * 0.4, rng.normal(size=5) * 0.2 if bias else None,
                      name="conv2"))
    h = b.relu(b.linear(b.flatten(h), rng.normal(size=(8, 20)) * 0.4, rng.normal(size=8) * 0.2 if bias else None,
                        name="fc1"))
    return b.build(b.linear(h, rng.normal(size=(3, 8)) * 0.5, None, name="fc2")), rng.normal(size=(3, 2, 8, 8))


def _residual(rng, bias):
    b = GraphBuilder("residual")
    x = b.input("x", (3, 6, 6))
    h = b.relu(b.conv(x, rng.normal(size=(4, 3, 3, 3)) * 0.5, rng.normal(size=4) * 0.2 if bias else None,
                      padding=1, name="stem"))
    r = b.relu(b.conv(h, rng.normal(size=(4, 4, 3, 3)) * 0.4, rng.normal(size=4) * 0.2 if bias else None,
                      padding=1, name="block.conv"))
    h = b.relu(b.add(h, r, name="block.add"))
    h = b.global_avg_pool(h, keepdims=False, name="gap")
    return b.build(b.linear(h, rng.normal(size=(3, 4)), rng.normal(size=3) * 0.2 if bias else None,
                            name="head")), rng.normal(size=(2, 3, 6, 6))


GRAPHS = {"mlp": _mlp, "cnn": _cnn, "residual": _residual}


def small_graphs(bias: bool = True, seed: int = 0) -> dict[str, SmallGraph]:
    """The small graphs the fixtures use, with fixed random weights (biases unless ``bias=False``)."""
    return {name: SmallGraph(name, *make(np.random.default_rng(seed + k), bias), bias)
            for k, (name, make) in enumerate(GRAPHS.items())}


def rule_method(rule: str, **params: Any):
    """A composite (usable wherever a method is) with rule ``rule`` (a registered name) on every linear
    and conv layer and the LRP defaults elsewhere; sums divide exactly (no stabiliser)."""
    return C.Composite([(C.category("layer"), (rule, params))], defaults=C.lrp_defaults(0.0),
                       name=f"rule:{rule}")


def _unpack(graph, x):
    if isinstance(graph, SmallGraph):
        return graph.graph, graph.x if x is None else x
    if x is None:
        raise TypeError("give inputs x with a graph (or pass a SmallGraph from the attribx_graph fixture)")
    return graph, x


def check_conservation(method, graph, x=None, *, rtol: float = 1e-6, target="predicted", every_node: bool = True,
                       **params):
    """Assert that ``method`` conserves relevance on ``graph``: the input relevance of every sample sums
    to the relevance the pass starts from, and (``every_node``) so does the relevance at every node on the
    way. Use it where the rule should conserve: bias-free layers, and parameters that absorb nothing
    (ε = 0). Returns the explanation (an ``xarray.Dataset`` with ``conservation``)."""
    graph, x = _unpack(graph, x)
    ds = explain(graph, np.asarray(x, dtype=np.float64), method, target=target, conservation=True,
                         **params)
    cons, score = ds["conservation"], ds["score"].values
    atol = rtol * max(float(np.abs(score).max()), 1e-300)
    name = getattr(method, "name", method)
    bad = [str(n) for n in cons.node.values if not np.isfinite(cons.sel(node=n).values).all()]
    assert not bad, f"{name!r} gives non-finite relevance at {bad}"
    inputs = cons.sel(node=cons.node.values[0]).values
    np.testing.assert_allclose(inputs, score, rtol=rtol, atol=atol,
                               err_msg=f"{name!r} does not conserve relevance: input sums vs start scores")
    np.testing.assert_allclose(ds["relevance"].sum(dim=[d for d in ds["relevance"].dims if d != "sample"]).values,
                               score, rtol=rtol, atol=atol,
                               err_msg=f"{name!r}: the returned relevance does not sum to the start scores")
    if every_node:
        for node in _cuts(graph, cons.node.values[0], ds.attrs.get("explained_output")):
            np.testing.assert_allclose(cons.sel(node=node).values, score, rtol=rtol, atol=atol,
                                       err_msg=f"{name!r} does not conserve relevance at node {node!r}")
    return ds


def _cuts(graph, source: str, start: str | None) -> list[str]:
    """Nodes that every path from ``source`` to ``start`` passes: the relevance at each must sum to the total
    (a node inside one branch of a residual block holds only that branch's share)."""
    start = start or graph.output
    readers: dict[str, list[str]] = {}
    for node in graph.nodes:
        for i in node.inputs:
            readers.setdefault(i, []).append(node.name)

    def reaches(without: str) -> bool:
        seen, todo = {source}, [source]
        while todo:
            for nxt in readers.get(todo.pop(), ()):
                if nxt == start and nxt != without:
                    return True
                if nxt not in seen and nxt != without:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    return [source] + [n.name for n in graph.nodes if n.name != start and not reaches(n.name)
                       and _upstream(graph, n.name, source)] + [start]


def _upstream(graph, name: str, source: str) -> bool:
    """Whether ``name`` depends on ``source`` (constants and nodes after the start do not)."""
    by_name = {n.name: n for n in graph.nodes}
    todo, seen = [name], set()
    while todo:
        cur = todo.pop()
        if cur == source:
            return True
        node = by_name.get(cur)
        for i in (node.inputs if node is not None else ()):
            if i not in seen:
                seen.add(i)
                todo.append(i)
    return False


def installed_engines() -> list[str]:
    """Names of the installed engines other than numpy (the reference)."""
    return [name for name in registry().engines if name != "numpy"]


def check_engines_agree(method, graph, engine: Any = None, x=None, *, rtol: float = 1e-6,
                        target="predicted", **params):
    """Assert that ``method`` gives the numpy engine's relevance (and per-node sums) on ``engine`` (a name or
    an engine instance such as ``TorchEngine(device="cuda")``, a list of them, or None: every installed
    engine), in float64, relative to ``rtol`` of the largest value.
    Returns the engines checked; skips the test when there is none besides numpy."""
    graph, x = _unpack(graph, x)
    x = np.asarray(x, dtype=np.float64)
    engines = (installed_engines() if engine is None else list(engine) if isinstance(engine, (list, tuple))
               else [engine])
    if not engines:
        pytest.skip("no engine besides numpy is installed (install attribx-torch or attribx-tf to compare)")
    name = getattr(method, "name", method)
    ref = explain(graph, x, method, target=target, engine="numpy", conservation=True, **params)
    assert np.isfinite(ref["relevance"].values).all(), f"{name!r} gives non-finite relevance on numpy"
    for eng in engines:
        ours = explain(graph, x, method, target=target, engine=eng, conservation=True, **params)
        assert ours["relevance"].dims == ref["relevance"].dims, f"{name!r}: dims differ on {eng}"
        np.testing.assert_array_equal(ours["target"].values, ref["target"].values,
                                      err_msg=f"{name!r}: {eng} explains other targets than numpy")
        err = relative_error(ours["relevance"].values, ref["relevance"].values)
        assert err <= rtol, f"{name!r} on {graph.meta.get('name', 'graph')}: {eng} differs from numpy by {err:.3g} > {rtol}"
        err = relative_error(ours["conservation"].values, ref["conservation"].values)
        assert err <= rtol, f"{name!r}: per-node relevance sums on {eng} differ from numpy by {err:.3g} > {rtol}"
    return engines


def check_registered(plugin: str | None = None, rules: Sequence[str] = (), methods: Sequence[str] = (),
                     cli: bool = True, converters: Sequence[str] = ()):
    """Assert that the rules, methods and converters (``"framework:target"``, e.g.
    ``"torch:mypkg.layers.ScaledTanh"`` or ``"onnx:com.example:ScaledTanh"``) are in attribx's registry,
    provided by ``plugin`` (its entry-point name) when given, that the plugin loaded without failures or name
    clashes, that each rule builds with its defaults and each method's composite with its defaults, and
    (``cli``) that ``attribx plugins`` lists the plugin and every name."""
    reg = registry()
    failed = [str(f) for f in reg.failures if plugin is None or f.plugin == plugin]
    assert not failed, f"plugin failures: {failed}"
    for kind, names, table in (("rules", rules, reg.rules), ("methods", methods, reg.methods),
                               ("converters", converters, reg.converters)):
        for name in names:
            assert name in table, f"{kind[:-1]} {name!r} is not registered; known: {sorted(table)}"
            who = reg.provider[(kind, name)]
            assert plugin is None or who == plugin, f"{kind[:-1]} {name!r} comes from {who!r}, not {plugin!r}"
            clashes = [c for c in reg.conflicts if c.startswith(f"{kind[:-1]} {name!r} ")]
            assert not clashes, clashes
    for name in rules:
        cls = reg.rules[name]
        assert isinstance(cls, type) and issubclass(cls, Rule) and cls.name == name, \
            f"rule {name!r} must be a Rule subclass whose name is {name!r}"
        cls()
    for name in methods:
        m = reg.methods[name]
        assert m.name == name, f"method registered as {name!r} is named {m.name!r}"
        comp = m.composite(**m.resolve({}))
        assert isinstance(comp, Composite), f"method {name!r}: composite() returned {type(comp).__name__}"
    if cli:
        text = reg.report()         # what ``attribx plugins`` prints
        if plugin is not None:
            assert any(line.startswith(f"{plugin}  (") for line in text.splitlines()), \
                f"'attribx plugins' does not list {plugin!r}:\n{text}"
        for name in [*rules, *methods, *converters]:
            assert name in text, f"'attribx plugins' does not list {name!r}:\n{text}"
    return reg


# -- fixtures --------------------------------------------------------------------------------------------
_NO_ENGINE = "no engine besides numpy is installed (install attribx-torch or attribx-tf to compare)"


def pytest_generate_tests(metafunc):
    """Parametrize ``attribx_engine`` over the installed engines, the graph fixtures over the graphs."""
    if "attribx_engine" in metafunc.fixturenames:
        names = installed_engines()
        params = names or [pytest.param(None, marks=pytest.mark.skip(reason=_NO_ENGINE))]
        metafunc.parametrize("attribx_engine", params, ids=names or ["no-engine"])
    for fixture in ("attribx_graph", "attribx_bias_free_graph"):
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(f"_{fixture}_name", list(GRAPHS))


@pytest.fixture
def attribx_engine(request):
    """The name of an installed engine besides numpy (the test runs once per engine)."""
    return request.param


@pytest.fixture
def attribx_graph(_attribx_graph_name):
    """A small float64 graph with biases (:class:`SmallGraph`); the test runs once per graph."""
    return small_graphs(bias=True)[_attribx_graph_name]


@pytest.fixture
def attribx_bias_free_graph(_attribx_bias_free_graph_name):
    """A small float64 graph without biases, where conserving rules conserve exactly."""
    return small_graphs(bias=False)[_attribx_bias_free_graph_name]
