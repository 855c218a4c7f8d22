"""The checks attribx ships for plugin authors (attribx.pytest_plugin) pass where they should and catch
what they are for: a rule that does not conserve, an engine that computes other numbers, a name that is
not registered or comes from another plugin. And the fixtures parametrize a plugin author's test."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import attribx
from attribx import plugins
from attribx.engines.numpy_engine import NumpyEngine
from attribx.pytest_plugin import (check_conservation, check_engines_agree, check_registered, rule_method,
                                   small_graphs)
from attribx.rules import Epsilon

SRC = Path(attribx.__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_conservation_check_passes_and_fails(name):
    free, biased = small_graphs(bias=False)[name], small_graphs(bias=True)[name]
    ds = check_conservation("lrp.zero", free)
    assert len(ds["conservation"].node) > 3
    check_conservation(rule_method("flat", stabilizer=0.0), free)
    check_conservation(rule_method("w_square", stabilizer=0.0), free)
    with pytest.raises(AssertionError, match="non-finite"), np.errstate(all="ignore"):   # z+: 0/0 where nothing is positive
        check_conservation(rule_method("z_plus", stabilizer=0.0), free)
    with pytest.raises(AssertionError, match="does not conserve"):
        check_conservation("lrp.epsilon", free, epsilon=1.0)
    with pytest.raises(AssertionError, match="does not conserve"):   # the biases absorb relevance
        check_conservation("lrp.zero", biased)


def test_conservation_check_looks_at_inner_nodes():
    """A rule that moves relevance between two layers but conserves it end to end is caught at the node."""
    class Leaky(Epsilon):
        name = "leaky_test"
        defaults = {"epsilon": 0.0, "zero_bias": False, "bias_factor": 0.0}

        def __call__(self, ctx, relevance):
            out = super().__call__(ctx, relevance)
            return [None if r is None else (r * 2.0 if ctx.node.name == "fc2" else r * 0.5) for r in out]

    g = small_graphs(bias=False)["mlp"]
    method = attribx.composite.Composite([(attribx.composite.name("fc[23]"), Leaky()),
                                          (attribx.composite.category("layer"), ("zero", {}))])
    check_conservation(method, g, every_node=False)          # end to end it conserves
    with pytest.raises(AssertionError, match="at node 'fc2'"):
        check_conservation(method, g)


class _Plugin:
    """A plugin registered at run time: a rule, a method, and a second numpy engine whose "ε" differs."""

    class Twisted(Epsilon):
        name = "twisted_test"

        def divide(self, eng, R, z):
            return super().divide(eng, R, z) * (1.5 if eng.name == "numpy_twin" else 1.0)

    class Twin(NumpyEngine):
        name = "numpy_twin"

    @attribx.hookimpl
    def attribx_rules(self):
        return [self.Twisted]

    @attribx.hookimpl
    def attribx_methods(self):
        from attribx.methods import Method
        return [Method("test.twisted", lambda epsilon=0.1: rule_method("twisted_test", epsilon=epsilon),
                       defaults={"epsilon": 0.1})]

    @attribx.hookimpl
    def attribx_engines(self):
        return [self.Twin]

    @attribx.hookimpl
    def attribx_kernels(self, engine):
        if engine == "numpy_twin":
            from attribx.engines.numpy_kernels import KERNELS
            return dict(KERNELS)
        return None


@pytest.fixture
def twin_plugin():
    name = plugins.register(_Plugin(), name="twin_test")
    yield name
    plugins.unregister(name)


def test_engine_check_catches_a_different_engine(twin_plugin):
    g = small_graphs()["cnn"]
    assert check_engines_agree("lrp.epsilon", g, "numpy_twin") == ["numpy_twin"]
    assert "numpy_twin" in check_engines_agree("lrp.epsilon_plus", g)     # every installed engine
    with pytest.raises(AssertionError, match="numpy_twin differs from numpy"):
        check_engines_agree("test.twisted", g, "numpy_twin")
    twin = _Plugin.Twin(dtype="float64")                       # an engine instance (e.g. a torch engine on a GPU)
    assert check_engines_agree("lrp.epsilon", g, twin) == [twin]
    with pytest.raises(AssertionError, match="differs from numpy"):
        check_engines_agree("test.twisted", g, [twin])


def test_registration_check(twin_plugin):
    check_registered(twin_plugin, rules=["twisted_test"], methods=["test.twisted"])
    with pytest.raises(AssertionError, match="not registered"):
        check_registered(twin_plugin, rules=["no_such_rule"], cli=False)
    with pytest.raises(AssertionError, match="comes from 'attribx.builtin'"):
        check_registered(twin_plugin, methods=["lrp.epsilon"], cli=False)


def test_fixtures_parametrize_an_authors_tests(tmp_path):
    """A plugin author's test file, run by pytest in a fresh process with the plugin loaded."""
    (tmp_path / "test_author.py").write_text(textwrap.dedent("""
        from attribx.pytest_plugin import check_conservation, check_engines_agree

        def test_conserves(attribx_bias_free_graph):
            check_conservation("lrp.zero", attribx_bias_free_graph)

        def test_engines(attribx_graph, attribx_engine):
            check_engines_agree("lrp.epsilon", attribx_graph, attribx_engine)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "attribx.pytest_plugin", "-v", "-rs",
                          "-p", "no:cacheprovider", str(tmp_path / "test_author.py")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for graph in ("mlp", "cnn", "residual"):
        assert f"test_conserves[{graph}] PASSED" in out.stdout
    others = [e for e in plugins.registry().engines if e != "numpy"]
    if others:
        for graph in ("mlp", "cnn", "residual"):
            for eng in others:
                assert f"test_engines[{graph}-{eng}] PASSED" in out.stdout or \
                       f"test_engines[{eng}-{graph}] PASSED" in out.stdout, out.stdout
    else:
        assert "no engine besides numpy is installed" in out.stdout
