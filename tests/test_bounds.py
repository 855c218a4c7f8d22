"""Value bounds (interval arithmetic over the graph), the gates they reveal, and the signal-takes-all
rule for products of a gate and a signal (Arras et al. 2017)."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx import composite as C
from attribx.bounds import gate_values, gated_products, nonnegative_values, value_bounds
from attribx.propagation import run_forward
from attribx.rules import Gradient

from engine_cases import GRAPHS

R = np.random.default_rng(0)


def elementwise_graph():
    b = GraphBuilder("bounds")
    x = b.input("x", (4,))
    s = b.sigmoid(x, name="s")
    b.clip(x, 0.0, 6.0, name="relu6")
    hs = b.clip(b.add(b.mul(x, b.constant(1 / 6)), b.constant(0.5)), 0.0, 1.0, name="hardsig")
    one_minus = b.add(b.mul(s, b.constant(-1.0)), b.constant(1.0), name="one_minus")
    t2 = b.mul(b.tanh(x, name="t"), b.constant(2.0), name="t2")
    total = b.reduce_sum(s, name="total")
    pooled = b.reduce_mean(b.relu(x, name="r"), name="pooled")
    both = b.mul(s, hs, name="both")
    gated = b.mul(s, x, name="gated")
    out = b.add(b.reshape(one_minus, (4, 1), name="col"), b.reshape(t2, (4, 1)), name="sum")
    return b.build(out, total, pooled, both, gated)


def test_bounds_of_elementwise_ops():
    bounds = value_bounds(elementwise_graph())
    assert bounds["x"] == (-np.inf, np.inf)
    assert bounds["s"] == (0.0, 1.0) and bounds["hardsig"] == (0.0, 1.0) and bounds["one_minus"] == (0.0, 1.0)
    assert bounds["relu6"] == (0.0, 6.0) and bounds["t2"] == (-2.0, 2.0) and bounds["total"] == (0.0, 4.0)
    assert bounds["pooled"] == (0.0, np.inf) and bounds["gated"] == (-np.inf, np.inf)
    assert bounds["sum"] == (-2.0, 3.0)


def test_gates_are_squashed_values_and_their_affine_images_in_unit_range():
    g = elementwise_graph()
    gates = gate_values(g)
    assert {"s", "hardsig", "one_minus", "col", "both"} <= gates
    assert not gates & {"x", "relu6", "t", "t2", "total", "gated", "r", "pooled", "sum"}
    assert gated_products(g) == {"gated": 0}       # both is gate · gate: no signal to take it
    assert nonnegative_values(g) >= {"s", "relu6", "r", "pooled", "total", "hardsig"}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_bounds_hold_on_random_inputs(name):
    """Soundness: every activation lies in its bounds, for inputs of very different scales."""
    graph, x = GRAPHS[name]()
    bounds = value_bounds(graph)
    eng = attribx.get_engine("numpy")
    for scale in (1e-3, 1.0, 30.0):
        xs = R.normal(size=(8,) + x.shape[1:]) * scale
        for value, act in run_forward(graph, eng, xs).items():
            lo, hi = bounds[value]
            assert np.all(act >= lo - 1e-12) and np.all(act <= hi + 1e-12), (value, lo, hi)


def se_graph(frozen_gate=None):
    """conv -> ReLU (h) -> squeeze-and-excitation gate s (N, C, 1, 1) -> h · s -> linear. With
    ``frozen_gate`` the gate is a constant (one sample's), so the product is a plain scaling."""
    rng = np.random.default_rng(1)
    b = GraphBuilder("se")
    x = b.input("x", (2, 5, 5))
    h = b.relu(b.conv(x, rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3) * 0.1, padding=1, name="conv"),
               name="h")
    if frozen_gate is None:
        z = b.linear(b.flatten(b.global_avg_pool(h, keepdims=False)), rng.normal(size=(3, 3)), name="fc_se")
        s = b.reshape(b.sigmoid(z, name="gate"), (3, 1, 1), name="s")
    else:
        rng.normal(size=(3, 3))
        s = b.constant(frozen_gate, name="s")
    y = b.mul(h, s, name="y")
    b.linear(b.flatten(y), rng.normal(size=(4, 75)), name="out")
    return b.build()


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box"])
def test_squeeze_excitation_gate_takes_no_relevance(method):
    x = R.normal(size=(1, 2, 5, 5))
    graph = se_graph()
    assert gated_products(graph) == {"y": 1}
    params = {"low": -4.0, "high": 4.0} if "box" in method else {}
    ds = attribx.explain(graph, x, method, layers=["h", "y", "gate"], conservation=True, target=0, **params)
    assert np.all(ds["gate"].values == 0)                      # nothing flows into the gate branch
    np.testing.assert_allclose(ds["h"].values, ds["y"].values, rtol=1e-12)
    # the same as freezing this sample's gate into a constant scaling, up to the stabiliser (1e-6) that
    # the scaling's norm rule adds to the small outputs of y = h·s
    gate = run_forward(graph, attribx.get_engine("numpy"), x)["s"][0]
    frozen = attribx.explain(se_graph(frozen_gate=gate), x, method, target=0, **params)
    np.testing.assert_allclose(ds["relevance"].values, frozen.values, rtol=2e-3, atol=1e-6)


def test_a_composite_can_override_the_gated_rule():
    x = R.normal(size=(2, 2, 5, 5))
    graph = se_graph()
    comp = C.Composite([(C.op("mul"), Gradient()), (C.category("layer"), "epsilon")], name="mine")
    assert comp.assign(graph)["y"].name == "gradient"
    assert C.Composite([(C.category("layer"), "epsilon")]).assign(graph)["y"].name == "signal_takes_all"
    ours = attribx.explain(graph, x, comp, layers=["gate"], target=0)
    assert np.any(ours["gate"].values != 0)      # the gradient rule does send relevance into the gate


def test_hard_sigmoid_is_a_gate_and_hard_swish_is_bounded_below():
    b = GraphBuilder("hard")
    x = b.input("x", (4,))
    hs = b.add_node("hard_sigmoid", x, name="hs")
    b.add_node("hard_swish", x, name="hw")
    out = b.mul(hs, x, name="gated")
    g = b.build(out, "hw")
    bounds = value_bounds(g)
    assert bounds["hs"] == (0.0, 1.0) and bounds["hw"] == (-0.375, np.inf)   # min of x·relu6(x + 3)/6 at -1.5
    assert "hs" in gate_values(g) and gated_products(g) == {"gated": 0}
    xs = np.linspace(-6, 6, 1201)[None, :4 * 300].reshape(-1, 4)
    hw = attribx.forward(g, xs, output="hw")
    assert hw.min() >= -0.375 - 1e-12 and np.isclose(hw.min(), -0.375)
