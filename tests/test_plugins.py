"""Third-party plugins: a distribution made in the test, found through the 'attribx' entry points."""
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

from conftest import build_mlp, mlp_weights

PLUGIN_CODE = '''
"""A test plugin: a rule that doubles LRP-epsilon's relevance, and a method using it by name."""
import attribx
from attribx import composite as C
from attribx.methods import Method
from attribx.rules import Epsilon


class DoubleEpsilon(Epsilon):
    name = "double_epsilon"

    def __call__(self, ctx, relevance):
        return [None if r is None else 2 * r for r in super().__call__(ctx, relevance)]


@attribx.hookimpl
def attribx_rules():
    return [DoubleEpsilon]


@attribx.hookimpl
def attribx_methods():
    return [Method("test.double", lambda epsilon: C.Composite(
        [(C.last("layer"), ("double_epsilon", {"epsilon": epsilon})),
         (C.category("layer"), ("epsilon", {"epsilon": epsilon}))], name="test.double"),
        defaults={"epsilon": 0.1}, description="doubles at the output layer")]
'''


def make_distribution(root: Path, name: str, module_code: str, entry: str | None = None) -> None:
    """A minimal installed distribution: the module plus a .dist-info with an 'attribx' entry point."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_code))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[attribx]\n{name} = {entry or name}\n")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    make_distribution(tmp_path, "attribx_doubler", PLUGIN_CODE)
    make_distribution(tmp_path, "attribx_broken", "raise ImportError('this plugin is broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reload()
    with pytest.warns(RuntimeWarning, match="attribx_broken"):
        plugins.registry()
    yield tmp_path
    sys.modules.pop("attribx_doubler", None)
    plugins.reload()


def test_plugin_rule_and_method_are_used_by_name(plugin_path, rng):
    reg = plugins.registry()
    assert reg.provider[("methods", "test.double")] == "attribx_doubler"
    assert reg.provider[("rules", "double_epsilon")] == "attribx_doubler"
    ws, bs = mlp_weights(rng)
    graph = build_mlp(ws, bs)
    x = rng.normal(size=(4, 6))
    ours = attribx.explain(graph, x, "test.double", target=1)
    plain = attribx.explain(graph, x, "lrp.epsilon", target=1, epsilon=0.1)
    np.testing.assert_allclose(ours.values, 2 * plain.values, rtol=1e-12)
    assert ours.attrs["parameters"] == {"epsilon": 0.1}


def test_broken_plugin_is_reported_and_others_work(plugin_path):
    failures = plugins.failures()
    assert any(f.plugin == "attribx_broken" and "broken on purpose" in f.error for f in failures)
    assert "test.double" in plugins.registry().methods
    assert "lrp.epsilon" in plugins.registry().methods


def test_cli_lists_plugins(plugin_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), *sys.path])}
    out = subprocess.run([sys.executable, "-m", "attribx.cli", "plugins"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "attribx_doubler  (entry point of attribx_doubler 0.1)" in out.stdout
    assert "test.double" in out.stdout and "double_epsilon" in out.stdout
    assert "attribx.builtin  (built-in)" in out.stdout
    assert "FAILED: plugin 'attribx_broken'" in out.stdout and "broken on purpose" in out.stdout


def test_runtime_registration_and_name_clash(rng):
    class Clash:
        @attribx.hookimpl
        def attribx_methods(self):
            from attribx.methods import BUILTIN_METHODS
            return [BUILTIN_METHODS[0]]
    name = plugins.register(Clash(), name="clash")
    try:
        reg = plugins.registry()
        assert reg.provider[("methods", "gradient")] == "attribx.builtin"
        assert any("'gradient' from plugin 'clash' ignored" in c for c in reg.conflicts)
    finally:
        plugins.unregister(name)


def test_builtins_come_through_the_hooks():
    reg = plugins.registry()
    for kind in ("ops", "engines", "rules", "methods", "passes"):
        names = [n for (k, n), p in reg.provider.items() if k == kind and p == "attribx.builtin"]
        assert names, kind
    assert {"gradient", "gradient_x_input", "lrp.zero", "lrp.epsilon"} <= set(reg.methods)


@pytest.mark.parametrize("opt_in", [False, True])
def test_no_plugins_from_the_working_directory(tmp_path, opt_in):
    """A ``*.dist-info`` lying in the current directory (on sys.path under ``python -c``) is not imported
    unless ATTRIBX_PLUGINS_FROM_CWD=1 (issue 17 point 14)."""
    info = tmp_path / "foo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: foo\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[attribx]\nevil = evilmod\n")
    marker = tmp_path / "marker"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    env = {k: v for k, v in os.environ.items() if k != "ATTRIBX_PLUGINS_FROM_CWD"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.realpath(p) != str(tmp_path))
    if opt_in:
        env["ATTRIBX_PLUGINS_FROM_CWD"] = "1"
    out = subprocess.run([sys.executable, "-c", "import attribx; attribx.plugins.registry()"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert marker.exists() == opt_in
