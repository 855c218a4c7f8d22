"""Values recomputed in the backward pass (:func:`attribx.liveness.recomputed_values`): a ReLU's output (or a
clip's, a leaky ReLU's) is dropped once its forward consumers ran and computed again from its input, which the
pass holds anyway. The reference is the same pass holding every value (``RECOMPUTE = False``): the numbers must
be the same bits, on every engine, with every composite, with branches, pools and an op that hands back its
input."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import liveness, propagation
from attribx.propagation import Vacated, ancestors, run_forward

from engine_cases import ENGINES, attention_graph, cnn_graph, mlp_graph, zoo_graph

METHODS = ["gradient", "lrp.epsilon", "lrp.epsilon_plus_flat", "lrp.epsilon_alpha2_beta1", "lrp.epsilon_gamma_box"]


def _planned(graph):
    order = ancestors(graph, graph.output)
    return liveness.recomputed_values(graph, order, graph.output)


def _explain(monkeypatch, recompute, *args, calls=1, **kw):
    monkeypatch.setattr(propagation, "RECOMPUTE", recompute)
    for _ in range(calls):          # the TF engine traces the pass on its second call
        out = attribx.explain(*args, progress_bar=False, **kw)
    return out


def test_the_cheap_ops_are_planned_and_nothing_else():
    graph, _ = cnn_graph()
    assert {graph[n].op for n in _planned(graph)} == {"relu", "slice", "concat", "flatten"}
    assert len([n for n in _planned(graph) if graph[n].op == "relu"]) == 4
    graph, _ = zoo_graph()
    assert {graph[n].op for n in _planned(graph)} == {"leaky_relu", "pad", "clip", "transpose", "reshape", "mul",
                                                      "concat", "identity", "flatten"}


def test_chains_bottom_out_at_held_values_and_the_explained_node_is_held():
    b = attribx.GraphBuilder("chain")
    x = b.input("x", (4,))
    h = b.relu(b.relu(b.linear(x, np.eye(4), name="fc"), name="r1"), name="r2")
    graph = b.build(b.relu(b.linear(h, np.ones((2, 4)), name="out"), name="top"))
    order = ancestors(graph, "top")
    assert liveness.recomputed_values(graph, order, "top") == {"r1", "r2"}
    assert liveness.recomputed_values(graph, order, "top", released={"fc"}) == {"r2"}    # r1 is then held


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("make", [cnn_graph, mlp_graph, zoo_graph], ids=["cnn", "mlp", "zoo"])
def test_the_same_bits_as_holding_every_value(monkeypatch, engine, make):
    graph, x = make()
    calls = 3 if engine == "tensorflow" else 1
    for method in METHODS if make is cnn_graph else METHODS[:2]:
        kw = {"low": -4.0, "high": 4.0} if method == "lrp.epsilon_gamma_box" else {}
        held = _explain(monkeypatch, False, graph, x, method, target=1, engine=engine, calls=calls, **kw)
        again = _explain(monkeypatch, True, graph, x, method, target=1, engine=engine, calls=calls, **kw)
        assert np.abs(held.values).sum() > 0
        np.testing.assert_array_equal(again.values, held.values, err_msg=f"{engine} {method}")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("epsilon", [0.0, 1e-6])
def test_the_same_bits_on_an_attention_block(monkeypatch, engine, epsilon):
    """Transposes and reshapes of q, k and v recomputed, beside the scores that the torch engine releases."""
    graph, x = attention_graph()
    assert {"transpose", "reshape"} & {graph[n].op for n in _planned(graph)}
    calls = 3 if engine == "tensorflow" else 1
    for method in ("lrp.attn", "lrp.cp"):
        held = _explain(monkeypatch, False, graph, x, method, target=1, engine=engine, calls=calls, epsilon=epsilon)
        again = _explain(monkeypatch, True, graph, x, method, target=1, engine=engine, calls=calls, epsilon=epsilon)
        np.testing.assert_array_equal(again.values, held.values, err_msg=f"{engine} {method}")


@pytest.mark.parametrize("engine", ENGINES)
def test_the_forward_pass_drops_what_it_recomputes(engine):
    graph, x = cnn_graph()
    eng = attribx.get_engine(engine)
    planned = _planned(graph)
    acts = run_forward(graph, eng, eng.asarray(x.astype(np.float32)), upto=graph.output, recompute=planned)
    for name in planned:
        held = acts.get(name)
        assert held is None or (isinstance(held, Vacated) and int(np.prod(held.shell.shape)) == 0), name
    assert all(n.name in acts for n in graph.nodes if n.op == "conv")     # their ReLUs' inputs stay


def _identity_after_relu():
    rng = np.random.default_rng(4)
    b = attribx.GraphBuilder("same_array")
    x = b.input("x", (5,))
    h = b.relu(b.linear(x, rng.normal(size=(6, 5)), rng.normal(size=6), name="fc1"), name="r")
    a = b.identity(h, name="same")          # hands back its input: one array under two names
    out = b.add(b.linear(a, rng.normal(size=(3, 6)), name="fc2"), b.linear(h, rng.normal(size=(3, 6)), name="fc3"))
    return b.build(out), rng.normal(size=(4, 5))


@pytest.mark.parametrize("engine", ENGINES)
def test_an_op_that_hands_back_its_input_keeps_the_array(monkeypatch, engine):
    """The torch engine empties a recomputed value's tensor in place (``vacate``): where another node holds the
    same tensor (an identity), emptying it would leave that node without values. The pass must see it."""
    graph, x = _identity_after_relu()
    assert "r" in _planned(graph)
    eng = attribx.get_engine(engine)
    xs = eng.asarray(x)
    acts = run_forward(graph, eng, xs, upto=graph.output, recompute={"r"})
    assert tuple(acts["same"].shape) == (4, 6)
    held = _explain(monkeypatch, False, graph, x, "lrp.epsilon", target=0, engine=engine)
    again = _explain(monkeypatch, True, graph, x, "lrp.epsilon", target=0, engine=engine)
    np.testing.assert_array_equal(again.values, held.values)


@pytest.mark.parametrize("engine", ["torch"])
def test_the_torch_max_pool_finds_its_indices_on_a_recomputed_input(monkeypatch, engine):
    """The indices of the maxima are kept by the identity of the pool's input; the recomputed ReLU output is the
    same tensor object (its storage refilled), so the VJP does not run the pool again."""
    pytest.importorskip("attribx_torch")
    from attribx_torch import kernels
    rng = np.random.default_rng(5)
    b = attribx.GraphBuilder("pooled")
    h = b.relu(b.conv(b.input("x", (2, 8, 8)), rng.normal(size=(4, 2, 3, 3)) * 0.5, rng.normal(size=4), name="c"))
    graph = b.build(b.linear(b.flatten(b.max_pool(h, 2, name="mp")), rng.normal(size=(3, 36)), name="fc"))
    x = rng.normal(size=(2, 2, 8, 8))
    assert h in _planned(graph)
    runs = []
    plain = kernels._MaxPlan.run

    def counted(self):
        runs.append(1)
        return plain(self)
    monkeypatch.setattr(kernels._MaxPlan, "run", counted)
    _explain(monkeypatch, True, graph, x, "lrp.epsilon", target=1, engine=engine)
    assert len(runs) == sum(n.op == "max_pool" for n in graph.nodes)


@pytest.mark.parametrize("engine", ["tensorflow"])
def test_tensorflow_orders_a_step_after_the_relevance_that_reaches_it(engine):
    """Traced, each node's step waits for the relevance at the node (a control dependency): else TF's executor
    runs it as soon as its forward inputs exist and holds the result until the backward pass gets there."""
    pytest.importorskip("attribx_tf")
    tf = pytest.importorskip("tensorflow")
    eng = attribx.get_engine(engine)
    ops = []

    @tf.function
    def step(z, r):
        eng.tracing = True
        try:
            with eng.ordered_after(r):
                y = tf.nn.relu(z)
        finally:
            eng.tracing = False
        ops.append((y.op, r.op))
        return y
    step(tf.ones((2, 3)), tf.ones((2, 3)))
    y_op, r_op = ops[0]
    assert r_op in y_op.control_inputs
    with eng.ordered_after(tf.ones(2)):          # eager: nothing to order
        assert tf.executing_eagerly()
