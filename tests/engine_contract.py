"""What every engine must do, as tests shared by the engine test modules (torch, TensorFlow, ...).

A module imports these tests (``from engine_contract import *``) and defines the fixture ``engine``
returning a fresh engine instance (on the device it wants tested); what is special to one framework
(its dtypes' names, devices, bfloat16) stays in its own module. The reference is always the numpy
engine, on the op cases and graphs of ``engine_cases``.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

import attribx
from attribx.engines.numpy_engine import NumpyEngine
from attribx.engines.numpy_kernels import KERNELS as NUMPY_KERNELS
from attribx.testing import relative_error

from engine_cases import (EXAMPLES, GENERATORS, GRAPHS, OPS, REGISTRY, close, cnn_graph, explain_pair,
                          method_params, mlp_graph, op_cases, settings_for)

__all__ = ["compare_kernel", "test_every_registered_op_has_a_kernel", "test_kernel_matches_numpy",
           "test_engine_array_functions", "test_node_params_are_cached_per_dtype", "test_method_matches_numpy",
           "test_layers_and_conservation_match_numpy", "test_targets_and_batches",
           "test_float32_in_float32_out", "test_native_input_and_engine_instance"]


def compare_kernel(eng, name, full, inputs, params, rng, dtype=np.float64, rtol=1e-10):
    """Forward and VJP (with and without the output) of ``eng``'s kernel equal the numpy kernel's, in
    ``dtype``, with results in the inputs' dtype and on their device."""
    kernel = eng.kernel(name)
    xs = [x.astype(dtype) for x in inputs]
    ps = {k: v.astype(dtype) for k, v in params.items()}
    txs = [eng.asarray(x) for x in xs]
    tps = {k: eng.asarray(v) for k, v in ps.items()}
    ref = NUMPY_KERNELS[name].forward(full, list(xs), ps)
    out = kernel.forward(full, list(txs), tps)
    close(out, ref, rtol, f"{name} forward {full}")
    assert eng.dtype_of(out) == eng.dtype_of(eng.asarray(np.zeros(0, dtype))), f"{name}: {out.dtype} from {dtype}"
    g = rng.normal(size=ref.shape).astype(dtype)
    tg = eng.asarray(g)
    for out_np, out_t in ((None, None), (ref, out)):
        back_ref = NUMPY_KERNELS[name].vjp(full, list(xs), ps, out_np, g)
        back = kernel.vjp(full, list(txs), tps, out_t, tg)
        assert len(back) == len(back_ref)
        for i, (b, r) in enumerate(zip(back, back_ref)):
            close(b, r, rtol, f"{name} vjp[{i}] {full}")
            assert eng.dtype_of(b) == eng.dtype_of(tg)
            assert getattr(b, "device", None) == getattr(tg, "device", None)


def test_every_registered_op_has_a_kernel(engine):
    kernels = REGISTRY.kernels(engine.name)
    assert set(OPS) <= set(kernels), sorted(set(OPS) - set(kernels))
    assert set(GENERATORS) >= set(NUMPY_KERNELS)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_kernel_matches_numpy(engine, name):
    @settings_for(EXAMPLES.get(name, 25))
    @given(op_cases(name))
    def check(case):
        full, inputs, params, rng = case
        compare_kernel(engine, name, full, inputs, params, rng)
        # float32 in, float32 out, and the same numbers as the numpy kernels in float32
        compare_kernel(engine, name, full, inputs, params, rng, dtype=np.float32, rtol=2e-5)
    check()


def test_engine_array_functions(engine):
    """The array functions rules use give numpy's numbers, sign(0) = sign(-0.0) = +1 included."""
    eng, ref = engine, NumpyEngine()
    x = np.array([[-2.0, 0.0, -0.0, 3.0], [1.0, -1e-300, 5.0, np.nan]])
    t = eng.asarray(x)
    assert eng.to_numpy(t).dtype == np.float64
    assert eng.to_numpy(eng.asarray(np.broadcast_to(np.ones(3), (2, 3)))).tolist() == [[1.0] * 3] * 2
    assert eng.to_numpy(eng.asarray(np.arange(6.0)[::-2])).tolist() == [5.0, 3.0, 1.0]
    assert eng.to_numpy(eng.asarray(np.arange(3))).dtype.kind == "i"
    assert tuple(eng.asarray(2.5).shape) == ()
    finite = np.nan_to_num(x)
    tfin = eng.asarray(finite)
    for fn, args in [("sign", (x,)), ("abs", (x,)), ("clip", (x, 0, None)), ("clip", (x, None, 0)),
                     ("clip", (x, -1, 1)), ("clip", (x, None, None)), ("zeros_like", (x,)), ("ones_like", (x,)),
                     ("sum", (finite,)), ("sum", (finite, 1)), ("sum", (finite, (0, 1), True)),
                     ("sum", (finite, None, True)), ("argmax", (finite,)), ("argmax", (finite, 0))]:
        ours = getattr(eng, fn)(*[eng.asarray(a) if isinstance(a, np.ndarray) else a for a in args])
        np.testing.assert_array_equal(eng.to_numpy(ours), getattr(ref, fn)(*args), err_msg=fn)
    assert eng.to_numpy(eng.sign(eng.asarray(x))).tolist()[0] == [-1, 1, 1, 1]
    np.testing.assert_array_equal(eng.to_numpy(eng.where(tfin > 0, tfin, eng.zeros_like(tfin))),
                                  np.maximum(finite, 0))
    np.testing.assert_array_equal(eng.to_numpy(eng.where_positive(tfin, tfin * 2)), np.maximum(finite, 0) * 2)
    np.testing.assert_array_equal(eng.to_numpy(eng.one_hot(np.array([3, 0]), tfin)),
                                  ref.one_hot(np.array([3, 0]), finite))
    assert eng.isfinite_all(tfin) and not eng.isfinite_all(t)
    assert eng.any_nonzero(tfin) and not eng.any_nonzero(eng.zeros_like(tfin))
    z = np.array([[-1.0, -1e-9, 0.0, -0.0, 1e-9, 2.0, 1e300]])
    r = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])
    for eps in (0.0, 1e-6, 0.5):
        np.testing.assert_array_equal(eng.to_numpy(eng.stabilize(eng.asarray(z), eps)), ref.stabilize(z, eps))
        want = r / ref.stabilize(z, eps)          # the ε quotient, and computed in a temporary z: same bits
        np.testing.assert_array_equal(eng.to_numpy(eng.divide_stabilized(eng.asarray(r), eng.asarray(z), eps)), want)
        np.testing.assert_array_equal(
            eng.to_numpy(eng.divide_stabilized_into(eng.asarray(r), eng.asarray(z.copy()), eps)), want)
    np.testing.assert_array_equal(eng.to_numpy(eng.safe_divide(eng.asarray(r), eng.asarray(z))),
                                  ref.safe_divide(r, z))
    z32 = eng.asarray(z[:, :-1].astype(np.float32))
    assert eng.dtype_of(eng.stabilize(z32, 1e-6)) == eng.dtype_of(z32)
    # the "_into" helpers may overwrite their temporaries (torch shares memory with numpy: pass copies)
    def fresh():
        return eng.asarray(r.copy()), eng.asarray(z.copy())
    a, b = fresh()
    np.testing.assert_array_equal(eng.to_numpy(eng.add_scaled_into(a, b, 2.0)), r + 2 * z)
    a, b = fresh()
    np.testing.assert_array_equal(eng.to_numpy(eng.multiply_into(a, b)), r * z)
    a, b = fresh()
    np.testing.assert_array_equal(eng.to_numpy(eng.divide_into(a, eng.abs(b) + 1)), r / (np.abs(z) + 1))
    # a bias broadcast into a temporary (rules add it in place), and shapes that do not broadcast into it
    z4 = np.arange(24.0).reshape(2, 3, 2, 2)
    bias = np.array([1.0, -2.0, 0.5]).reshape(3, 1, 1)
    np.testing.assert_array_equal(eng.to_numpy(eng.add_scaled_into(eng.asarray(bias), eng.asarray(z4.copy()), 1.0)),
                                  bias + z4)
    np.testing.assert_array_equal(eng.to_numpy(eng.add_scaled_into(eng.asarray(z4), eng.asarray(bias.copy()), -1.0)),
                                  z4 - bias)
    np.testing.assert_array_equal(eng.to_numpy(eng.multiply_into(eng.asarray(r[0, :1].copy()), eng.asarray(r))),
                                  r[0, :1] * r)


def test_node_params_are_cached_per_dtype(engine):
    g, _ = mlp_graph()
    node = g.nodes[0]
    x64, x32 = engine.asarray(np.ones((1, 6))), engine.asarray(np.ones((1, 6), np.float32))
    p64 = engine.node_params(node, [x64])
    assert engine.dtype_of(p64["weight"]) == engine.dtype_of(x64) and engine.node_params(node, [x64]) is p64
    p32 = engine.node_params(node, [x32])
    assert engine.dtype_of(p32["weight"]) == engine.dtype_of(x32) and p32 is not p64
    np.testing.assert_allclose(engine.to_numpy(p32["weight"]), node.params["weight"], rtol=1e-6)


@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("method", sorted(REGISTRY.methods))
def test_method_matches_numpy(engine, graph, method):
    g, x = GRAPHS[graph]()
    ours, ref = explain_pair(g, x, method, engine.name, **method_params(method))
    if ref is None:
        return
    assert ours.dtype == np.float64
    assert relative_error(ours.values, ref.values) <= 1e-5, method
    np.testing.assert_array_equal(ours.target.values, ref.target.values)
    assert ours.attrs["engine"] == engine.name


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.zero", "lrp.epsilon_gamma_box", "lrp.epsilon_plus_flat",
                                    "lrp.alpha_beta", "lrp.w_square", "gradient"])
def test_layers_and_conservation_match_numpy(engine, method):
    g, x = cnn_graph()
    layers = ["c1", "mp", "res", "cat", "fc1"]
    ours, ref = explain_pair(g, x, method, engine.name, layers=layers, conservation=True, **method_params(method))
    assert ref is not None
    assert set(ours.data_vars) == set(ref.data_vars) >= set(layers) | {"relevance", "conservation"}
    for name in ref.data_vars:
        assert ours[name].dtype == np.float64
        assert relative_error(ours[name].values, ref[name].values) <= 1e-5, name
    assert list(ours.conservation.node.values) == list(ref.conservation.node.values)


def test_targets_and_batches(engine):
    g, x = cnn_graph()
    ours, ref = explain_pair(g, x, "lrp.epsilon", engine.name, target=[0, 3, 1], batch_size=2)
    assert relative_error(ours.values, ref.values) <= 1e-5
    ours, ref = explain_pair(g, x, "lrp.gamma", engine.name, target=("contrast", 1, 2))
    assert relative_error(ours.values, ref.values) <= 1e-5


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.epsilon_gamma_box", "gradient"])
def test_float32_in_float32_out(engine, method):
    g, x = cnn_graph()
    x32 = x.astype(np.float32)
    ours = attribx.explain(g, x32, method, engine=engine, layers=["c1"], **method_params(method))
    ref = attribx.explain(g, x, method, engine="numpy", **method_params(method))
    assert ours["relevance"].dtype == np.float32 and ours["c1"].dtype == np.float32
    assert relative_error(ours["relevance"].values, ref.values) <= 1e-3
    acts = attribx.propagation.run_forward(g, engine, engine.asarray(x32))
    assert {engine.dtype_of(a) for a in acts.values()} == {engine.dtype_of(engine.asarray(x32))}


def test_native_input_and_engine_instance(engine):
    """The framework's own tensors go in as they are, and an engine instance is used as given."""
    g, x = cnn_graph()
    ref = attribx.explain(g, x, "lrp.epsilon", engine="numpy")
    ours = attribx.explain(g, engine.asarray(x), "lrp.epsilon", engine=engine)
    assert relative_error(ours.values, ref.values) <= 1e-10
    assert relative_error(attribx.forward(g, x, engine=engine.name), attribx.forward(g, x, engine="numpy")) <= 1e-12
