"""Parameters live in signatures: every built-in rule and method factory shows its parameters with their
defaults to ``inspect.signature`` / ``help()``, ``Rule.defaults`` and ``Method.defaults`` are read from
there, the docs list the same, and composites, methods and rules take the registry's tables as arguments
instead of reading the registry."""
from __future__ import annotations

import ast
import inspect
import pathlib
import re

import pytest

import attribx
from attribx import composite as C
from attribx.methods import BUILTIN_METHODS, Method, gradient_composite
from attribx.parameters import NonNegative, PositiveInt, non_negative, positive, signature_defaults, signature_ranges
from attribx.pytest_plugin import small_graphs
from attribx.rules import BUILTIN_RULES, Epsilon, ZRule

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def signature_table(obj) -> dict:
    return {k: p.default for k, p in inspect.signature(obj).parameters.items()}


@pytest.mark.parametrize("rule", BUILTIN_RULES, ids=[r.name for r in BUILTIN_RULES])
def test_each_builtin_rule_shows_its_parameters_with_defaults(rule):
    params = inspect.signature(rule).parameters
    assert all(p.default is not p.empty for p in params.values()), inspect.signature(rule)
    assert all(p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()), inspect.signature(rule)
    assert signature_table(rule) == rule.defaults
    assert set(rule.defaults) <= set(rule.ranges), f"{rule.name}: a parameter without a declared range"
    made = rule(**({"low": -1.0, "high": 1.0} if rule.name == "z_box" else {}))
    assert {k: v for k, v in made.params.items() if k in rule.defaults} == {
        **rule.defaults, **({"low": -1.0, "high": 1.0} if rule.name == "z_box" else {})}


def test_help_shows_the_defaults():
    assert str(inspect.signature(Epsilon)) == ("(epsilon: 'NonNegative' = 1e-06, zero_bias: 'Flag' = False, "
                                               "bias_factor: 'UnitInterval' = 0.0)")
    assert Epsilon(0.5).epsilon == 0.5      # positional, as zennit's rules


@pytest.mark.parametrize("method", BUILTIN_METHODS, ids=[m.name for m in BUILTIN_METHODS])
def test_each_builtin_method_reads_its_defaults_from_its_factory(method):
    assert signature_defaults(method.composite) == dict(method.defaults)
    shown = signature_table(method.composite)
    assert {k: v for k, v in shown.items() if v is not inspect.Parameter.empty} == dict(method.defaults)


def test_ranges_are_read_from_the_annotations():
    assert Epsilon.ranges == signature_ranges(Epsilon.__init__) and set(Epsilon.ranges) == set(Epsilon.defaults)
    assert signature_ranges(BUILTIN_METHODS[0].composite) == {}
    for m in BUILTIN_METHODS:
        if m.name.startswith("lrp.") and "stabilizer" in m.defaults:
            assert m.ranges["stabilizer"] is positive, m.name   # methods need > 0, single rules' own take 0

    def steps(width: NonNegative = 1.0, count: PositiveInt = 3, other: float = 0.0):
        return gradient_composite()

    m = Method("test.steps", steps)
    assert m.ranges == {"width": non_negative, "count": m.ranges["count"]} and m.ranges["count"].text == \
        "an integer >= 1"
    with pytest.raises(attribx.MethodError, match="method 'test.steps': parameter count must be an integer >= 1"):
        m.resolve({"count": 0})
    assert Method("test.explicit", steps, ranges={"other": positive}).ranges == {"other": positive}


def test_an_unknown_rule_parameter_is_a_method_error_not_a_type_error():
    with pytest.raises(attribx.MethodError, match=r"rule 'epsilon': unknown parameter\(s\) \['gamma'\]; it takes"):
        Epsilon(gamma=1.0)


def test_a_rule_declared_with_a_defaults_dict_gets_a_signature():
    class Scaled(ZRule):
        name = "scaled_test"
        defaults = {"scale": 2.0, "zero_bias": False}
        ranges = {"scale": non_negative}

        def divide(self, eng, R, z):
            return eng.safe_divide(R, z * self.scale)

    assert str(inspect.signature(Scaled)) == "(*, scale=2.0, zero_bias=False)"
    assert Scaled(scale=3.0).scale == 3.0 and Scaled().params == {"scale": 2.0, "zero_bias": False}
    with pytest.raises(attribx.MethodError, match="unknown parameter"):
        Scaled(epsilon=1.0)


def test_method_reads_defaults_from_the_signature_and_an_explicit_mapping_overrides():
    def mine(epsilon: float = 0.1, stabilizer: float = 1e-6):
        return C.Composite([(C.category("layer"), ("epsilon", {"epsilon": epsilon}))], name="mine")

    m = Method("test.mine", mine, ranges={"epsilon": non_negative})
    assert m.defaults == {"epsilon": 0.1, "stabilizer": 1e-6}
    assert m.resolve({"epsilon": 0.2}) == {"epsilon": 0.2, "stabilizer": 1e-6}
    with pytest.raises(attribx.MethodError, match="unknown parameter"):
        m.resolve({"gamma": 1.0})
    assert Method("test.old", mine, defaults={"epsilon": 0.3}).defaults == {"epsilon": 0.3}
    assert Method("test.grad", gradient_composite).defaults == {}
    with pytest.raises(attribx.MethodError, match="parameter epsilon needs a default"):
        Method("test.bad", lambda epsilon: mine(epsilon))


def test_the_example_plugin_declares_parameters_in_signatures():
    example = pytest.importorskip("attribx_example_rule")
    assert signature_table(example.EpsilonRMS) == {"delta": 0.25, "stabilizer": 1e-9, "zero_bias": False}
    assert set(example.EpsilonRMS.ranges) == {"delta", "stabilizer", "zero_bias"}
    for m in example.METHODS:
        assert signature_defaults(m.composite) == m.defaults and m.defaults
        assert set(m.ranges) == set(m.defaults)


# -- the docs list the same parameters and defaults ---------------------------------------------------
def doc_rows(page: str) -> dict:
    """name -> {parameter: default as written} from a page's tables (first column a name in backticks)."""
    rows = {}
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`[\w.]+`", cells[0]) and cells[0].strip("`") not in rows:
            rows[cells[0].strip("`")] = dict(re.findall(r"`(\w+)=([^`]+)`", cells[1]))
    return rows


def test_rules_page_lists_every_rule_parameter_with_its_default():
    rows = doc_rows("rules.md")
    for rule in BUILTIN_RULES:
        assert rule.name in rows, f"docs/rules.md lists no rule {rule.name!r}"
        assert rows[rule.name] == {k: repr(v) for k, v in rule.defaults.items()}, rule.name


def test_methods_page_lists_every_method_parameter_with_its_default():
    rows = doc_rows("methods.md")
    for m in BUILTIN_METHODS:
        assert m.name in rows, f"docs/methods.md lists no method {m.name!r}"
        assert rows[m.name] == {k: repr(v) for k, v in m.defaults.items()}, m.name


# -- the registry only at the top --------------------------------------------------------------------
LOWER = ["composite.py", "methods.py", "parameters.py", *[f"rules/{p.name}" for p in
                                                           (ROOT / "src/attribx/rules").glob("*.py")]]


@pytest.mark.parametrize("path", LOWER)
def test_composites_methods_and_rules_do_not_read_the_registry(path):
    tree = ast.parse((ROOT / "src/attribx" / path).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module not in ("plugins", "attribx.plugins") and \
                not (node.level and node.module == "plugins"), f"{path} imports the plugin manager"
        if isinstance(node, (ast.Name, ast.Attribute)):
            assert getattr(node, "id", getattr(node, "attr", None)) != "registry", \
                f"{path} line {node.lineno} reads the registry"


class Halved(Epsilon):
    """A rule no built-in table knows."""

    name = "halved_test"

    def divide(self, eng, R, z):
        return super().divide(eng, R, z) * 0.5


def test_rule_names_resolve_in_the_table_the_caller_gives():
    g = small_graphs()["mlp"].graph
    comp = C.Composite([(C.category("layer"), ("halved_test", {"epsilon": 0.1}))], name="halved")
    with pytest.raises(attribx.MethodError, match="unknown rule 'halved_test'.*attribx_rules"):
        comp.assign(g)
    table = {**C.BUILTIN_RULE_TABLE, "halved_test": Halved}
    rules = comp.assign(g, rules=table)
    assert {type(r) for name, r in rules.items() if g[name].op == "linear"} == {Halved}
    assert all(r.epsilon == 0.1 for r in rules.values() if isinstance(r, Halved))
    # built-in names are made at once, so their parameters are checked when the composite is made
    with pytest.raises(attribx.MethodError, match="rule 'epsilon': parameter epsilon"):
        C.Composite([(C.category("layer"), ("epsilon", {"epsilon": -1.0}))])


def test_methods_are_looked_up_in_the_table_the_caller_gives():
    from attribx.methods import as_method
    assert as_method("lrp.epsilon").name == "lrp.epsilon"
    mine = Method("test.mine", gradient_composite)
    assert as_method("test.mine", {"test.mine": mine}) is mine
    with pytest.raises(attribx.MethodError, match="unknown method 'test.mine'"):
        as_method("test.mine")
