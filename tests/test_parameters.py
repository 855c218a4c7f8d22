"""Parameter ranges: every built-in method refuses a parameter out of its range (and NaN anywhere) with one
line naming the parameter and its valid range, before computing anything; rules and plugin methods
declare their ranges the same way."""
from __future__ import annotations

import math

import numpy as np
import pytest

import attribx
from attribx import parameters as P
from attribx.methods import BUILTIN_METHODS, Method, gradient_composite
from attribx.pytest_plugin import rule_method, small_graphs
from attribx.rules import AlphaBeta, Epsilon, Gamma, Norm, ZBox

NAN, INF = math.nan, math.inf

#: bad values of every parameter a built-in method takes, and the range the message must state
BAD = {
    "epsilon": ([-1.0, -1e-9, NAN, INF, "abc", True], "a finite number >= 0"),
    "stabilizer": ([0.0, -1e-6, NAN, INF, None], "a finite number > 0"),
    "gamma": ([-0.25, NAN, INF, [0.25]], "a finite number >= 0"),
    "bias_factor": ([-0.1, 1.5, NAN], "a number in [0, 1]"),
    "zero_bias": (["yes", 1, NAN], "true or false"),
    "alpha": ([-1.0, NAN, INF], "a finite number >= 0"),
    "beta": ([-1.0, NAN, INF], "a finite number >= 0"),
    "low": ([NAN, [0.0, NAN], -INF, "low", []], "a finite number or an array of finite numbers (or null)"),
    "high": ([INF, [NAN]], "a finite number or an array of finite numbers (or null)"),
    "noise": ([-0.1, NAN, INF], "a finite number >= 0"),
    "samples": ([0, -3, 2.5, NAN, INF, "ten", True], "an integer >= 1"),
    "seed": ([-1, 0.5, NAN], "an integer >= 0"),
    "baseline": ([NAN, [0.0, NAN], INF, "zero", None], "a finite number or an array of finite numbers"),
    "steps": ([0, -1, 2.5, INF, NAN], "an integer >= 1"),
}

CASES = [(m.name, p, v) for m in BUILTIN_METHODS for p in sorted(m.defaults) for v in BAD[p][0]]


@pytest.fixture(scope="module")
def cnn():
    g = small_graphs()["cnn"]
    return g.graph, g.x


def test_every_builtin_parameter_has_a_declared_range():
    for m in BUILTIN_METHODS:
        assert set(m.defaults) <= set(m.ranges), m.name
        assert set(m.defaults) <= set(BAD), m.name


@pytest.mark.parametrize("method,param,value", CASES, ids=[f"{m}-{p}-{v!r}" for m, p, v in CASES])
def test_out_of_range_parameter_is_one_clear_line(cnn, method, param, value):
    graph, x = cnn
    with pytest.raises(attribx.MethodError) as err:
        attribx.explain(graph, x, method, target=0, **{param: value})
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"method {method!r}: parameter {param} must be {BAD[param][1]}, got "), msg


@pytest.mark.parametrize("method,params,want", [
    ("lrp.alpha_beta", {"alpha": 3.0, "beta": 1.0}, "alpha - beta = 1"),
    ("lrp.alpha_beta", {"alpha": 1.5}, "alpha - beta = 1"),
    ("lrp.alpha_beta", {"alpha": 0.5, "beta": -0.5}, "parameter beta must be a finite number >= 0"),
    ("lrp.z_box", {"low": 1.0, "high": -1.0}, r"low <= high \(every element\), got low=1.0, high=-1.0"),
    ("lrp.z_box", {"low": [0.0, 2.0], "high": 1.0}, "low <= high"),
    ("lrp.epsilon_gamma_box", {"low": 3.0, "high": -3.0}, "low <= high"),
])
def test_parameters_that_break_a_constraint_are_refused(cnn, method, params, want):
    graph, x = cnn
    with pytest.raises(attribx.MethodError, match=f"method {method!r}: .*{want}") as err:
        attribx.explain(graph, x, method, target=0, **params)
    assert "\n" not in str(err.value)


def test_values_in_range_are_accepted_and_unchanged(cnn):
    graph, x = cnn
    # equal bounds: z-box becomes LRP-0 of x - low (documented), not an error
    r = attribx.explain(graph, x, "lrp.z_box", target=0, low=0.0, high=0.0).values
    assert np.isfinite(r).all()
    a = attribx.explain(graph, x, "integrated_gradients", target=0, steps=4).values
    b = attribx.explain(graph, x, "integrated_gradients", target=0, steps=4.0).values   # a whole float: JSON 4.0
    np.testing.assert_array_equal(a, b)
    e0 = attribx.explain(graph, x, "lrp.epsilon", target=0, epsilon=0.0).values     # ε = 0 is LRP-0's ε
    assert e0.shape == x.shape
    attribx.explain(graph, x, "lrp.alpha_beta", target=0, alpha=1.0, beta=0.0)
    attribx.explain(graph, x, "lrp.epsilon", target=0, bias_factor=1.0, zero_bias=True)
    attribx.explain(graph, x, "smoothgrad", target=0, noise=0.0, samples=1, seed=np.int64(3))
    attribx.explain(graph, x, "integrated_gradients", target=0, baseline=np.zeros(x.shape[1:]))


@pytest.mark.parametrize("rule,params,want", [
    (Epsilon, {"epsilon": -1.0}, "rule 'epsilon': parameter epsilon must be a finite number >= 0, got -1.0"),
    (Epsilon, {"bias_factor": 2.0}, "rule 'epsilon': parameter bias_factor must be a number in [0, 1], got 2.0"),
    (Gamma, {"gamma": NAN}, "rule 'gamma': parameter gamma must be a finite number >= 0, got nan"),
    (Norm, {"epsilon": -1.0}, "rule 'norm': parameter epsilon must be a finite number >= 0, got -1.0"),
    (AlphaBeta, {"alpha": 2.0, "beta": 2.0}, "rule 'alpha_beta': parameters must satisfy alpha - beta = 1"),
    (ZBox, {"low": 1.0, "high": 0.0}, "rule 'z_box': parameters must satisfy low <= high"),
])
def test_rules_check_their_ranges_when_made(rule, params, want):
    with pytest.raises(attribx.MethodError) as err:
        rule(**params)
    assert str(err.value).startswith(want)


def test_rule_stabilizer_zero_divides_exactly():
    # rules take stabilizer=0 (exact division, as the conservation checks use); methods need > 0
    free = small_graphs(bias=False)["mlp"]
    attribx.explain(free.graph, free.x, rule_method("flat", stabilizer=0.0), target=0)
    with pytest.raises(attribx.MethodError, match="rule 'flat': parameter stabilizer must be a finite number >= 0"):
        rule_method("flat", stabilizer=-1.0)


def test_plugin_methods_declare_ranges_the_same_way(cnn):
    graph, x = cnn
    m = Method("plugin.smooth", gradient_composite, defaults={"width": 1.0, "other": 0.0},
               ranges={"width": P.positive})
    with pytest.raises(attribx.MethodError, match=r"method 'plugin.smooth': parameter width must be a finite "
                                                  r"number > 0, got 0"):
        m.resolve({"width": 0})
    # NaN is refused in every parameter, declared or not
    with pytest.raises(attribx.MethodError, match="method 'plugin.smooth': parameter other is NaN"):
        m.resolve({"other": NAN})
    assert m.resolve({"width": 2.0}) == {"width": 2.0, "other": 0.0}


def test_example_plugin_declares_its_ranges(cnn):
    graph, x = cnn
    if "example.epsilon_rms" not in attribx.plugins.registry().methods:
        pytest.skip("the template plugin is not installed")
    with pytest.raises(attribx.MethodError, match="method 'example.epsilon_rms': parameter delta must be a finite "
                                                  "number >= 0"):
        attribx.explain(graph, x, "example.epsilon_rms", target=0, delta=-1.0)


def test_negative_epsilon_refused_on_every_engine(cnn):
    pytest.importorskip("torch")
    graph, x = cnn
    for engine in ("numpy", "torch"):
        with pytest.raises(attribx.MethodError, match="parameter epsilon must be a finite number >= 0"):
            attribx.explain(graph, x, "lrp.epsilon", target=0, epsilon=-0.5, engine=engine)
