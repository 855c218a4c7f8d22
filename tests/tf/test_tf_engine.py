"""The TensorFlow engine against the numpy reference: every kernel (forward and VJP) on the cases the
torch engine is checked with, every method on hand-built graphs, dtypes, and that attribx never imports
TensorFlow unless this engine is used."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("attribx_tf")

from hypothesis import given  # noqa: E402

import attribx  # noqa: E402
from attribx.engines.numpy_engine import NumpyEngine  # noqa: E402
from attribx.engines.numpy_kernels import KERNELS as NUMPY_KERNELS  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from attribx_tf.engine import TensorFlowEngine  # noqa: E402
from attribx_tf.kernels import KERNELS as TF_KERNELS, unbroadcast  # noqa: E402

from engine_cases import (EXAMPLES, GENERATORS, GRAPHS, OPS, REGISTRY, close, cnn_graph, explain_pair,  # noqa: E402
                          method_params, mlp_graph, op_cases, settings_for)


# ----------------------------------------------------------------------------------------------
# op kernels


def compare_kernel(name, full, inputs, params, rng, dtype=np.float64, rtol=1e-10):
    """Forward and VJP (with and without the output) of the TF kernel equal the numpy kernel's."""
    xs = [x.astype(dtype) for x in inputs]
    ps = {k: v.astype(dtype) for k, v in params.items()}
    txs = [tf.constant(x) for x in xs]
    tps = {k: tf.constant(v) for k, v in ps.items()}
    ref = NUMPY_KERNELS[name].forward(full, list(xs), ps)
    out = TF_KERNELS[name].forward(full, list(txs), tps)
    close(out, ref, rtol, f"{name} forward {full}")
    assert out.dtype == tf.as_dtype(dtype), f"{name}: {out.dtype} from {dtype} inputs"
    g = rng.normal(size=ref.shape).astype(dtype)
    tg = tf.constant(g)
    for out_np, out_t in ((None, None), (ref, out)):
        back_ref = NUMPY_KERNELS[name].vjp(full, list(xs), ps, out_np, g)
        back = TF_KERNELS[name].vjp(full, list(txs), tps, out_t, tg)
        assert len(back) == len(back_ref)
        for i, (b, r) in enumerate(zip(back, back_ref)):
            close(b, r, rtol, f"{name} vjp[{i}] {full}")
            assert b.dtype == tg.dtype


def test_every_registered_op_has_a_tf_kernel():
    kernels = REGISTRY.kernels("tensorflow")
    assert set(OPS) <= set(kernels), sorted(set(OPS) - set(kernels))
    assert set(TF_KERNELS) >= set(NUMPY_KERNELS)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_kernel_matches_numpy(name):
    @settings_for(EXAMPLES.get(name, 25))
    @given(op_cases(name))
    def check(case):
        full, inputs, params, rng = case
        compare_kernel(name, full, inputs, params, rng)
        compare_kernel(name, full, inputs, params, rng, dtype=np.float32, rtol=2e-5)
    check()


def test_max_pool_ties_go_to_the_first_maximum():
    """All-equal windows (TF's argmax path and the dilated fallback): the first position takes it all."""
    x = np.zeros((1, 1, 4, 4))
    for attrs in ({"kernel_size": 2, "stride": 1, "padding": 0, "dilation": 1},
                  {"kernel_size": 2, "stride": 1, "padding": [(1, 0), (0, 1)], "dilation": 1},
                  {"kernel_size": 2, "stride": 1, "padding": 0, "dilation": 2}):
        g = np.arange(1.0, 1 + np.prod(NUMPY_KERNELS["max_pool"].forward(attrs, [x], {}).shape))
        g = g.reshape(NUMPY_KERNELS["max_pool"].forward(attrs, [x], {}).shape)
        ref = NUMPY_KERNELS["max_pool"].vjp(attrs, [x], {}, None, g)[0]
        ours = TF_KERNELS["max_pool"].vjp(attrs, [tf.constant(x)], {}, None, tf.constant(g))[0]
        np.testing.assert_array_equal(ours.numpy(), ref, err_msg=str(attrs))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_with_an_input_tail_no_window_reads(dtype):
    """TF 2.21's oneDNN float32 Conv2D returned garbage in every other row for width 3, kernel 2, stride 2;
    the kernel drops the unread tail first, and its gradient there is zero."""
    rng = np.random.default_rng(0)
    attrs = OPS["conv"].resolve_attrs("t", {"stride": (1, 2), "padding": 0})
    x, w = rng.normal(size=(2, 1, 2, 3)).astype(dtype), rng.normal(size=(1, 1, 1, 2)).astype(dtype)
    ref = NUMPY_KERNELS["conv"].forward(attrs, [x], {"weight": w})
    close(TF_KERNELS["conv"].forward(attrs, [tf.constant(x)], {"weight": tf.constant(w)}), ref, 1e-6, "forward")
    g = rng.normal(size=ref.shape).astype(dtype)
    (back,) = TF_KERNELS["conv"].vjp(attrs, [tf.constant(x)], {"weight": tf.constant(w)}, None, tf.constant(g))
    close(back, NUMPY_KERNELS["conv"].vjp(attrs, [x], {"weight": w}, None, g)[0], 1e-6, "vjp")
    assert not np.asarray(back)[..., 2].any()


def test_unbroadcast():
    g = tf.reshape(tf.range(24.0), (2, 3, 4))
    assert unbroadcast(g, (2, 3, 4)) is g
    np.testing.assert_array_equal(unbroadcast(g, (3, 1)).numpy(), g.numpy().sum(axis=(0, 2)).reshape(3, 1))
    np.testing.assert_array_equal(unbroadcast(g, ()).numpy(), g.numpy().sum())


# ----------------------------------------------------------------------------------------------
# the engine's array functions


def test_engine_arrays():
    eng, ref = TensorFlowEngine(), NumpyEngine()
    x = np.array([[-2.0, 0.0, -0.0, 3.0], [1.0, -1e-300, 5.0, np.nan]])
    t = eng.asarray(x)
    assert tf.is_tensor(t) and t.dtype == tf.float64
    assert eng.asarray(x, dtype=np.float32).dtype == tf.float32
    assert eng.asarray(x, dtype="float32").dtype == tf.float32
    assert eng.asarray(x, dtype=tf.float32).dtype == tf.float32
    assert eng.asarray(tf.constant(x)).dtype == tf.float64
    assert eng.asarray(x.astype(np.float32)).dtype == tf.float32
    assert eng.asarray(np.arange(3)).dtype == tf.int64
    assert eng.asarray(2.5).shape == () and eng.asarray(2.5).dtype == tf.float64
    assert eng.dtype_of(t) == tf.float64 and eng.dtype_of(x.astype(np.float32)) == tf.float32
    assert TensorFlowEngine(dtype="float32").asarray(x).dtype == tf.float32
    assert eng.to_numpy(eng.asarray(np.broadcast_to(np.ones(3), (2, 3)))).tolist() == [[1.0] * 3] * 2
    assert eng.to_numpy(t).dtype == np.float64
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
    np.testing.assert_array_equal(eng.to_numpy(eng.safe_divide(eng.asarray(r), eng.asarray(z))),
                                  ref.safe_divide(r, z))
    assert eng.stabilize(eng.asarray(z[:, :-1].astype(np.float32)), 1e-6).dtype == tf.float32
    a, b = eng.asarray(r), eng.asarray(z)
    np.testing.assert_array_equal(eng.to_numpy(eng.add_scaled_into(a, b, 2.0)), r + 2 * z)
    np.testing.assert_array_equal(eng.to_numpy(eng.multiply_into(a, b)), r * z)
    np.testing.assert_array_equal(eng.to_numpy(eng.divide_into(a, eng.abs(b) + 1)), r / (np.abs(z) + 1))


def test_node_params_are_cached_per_dtype():
    g, _ = mlp_graph()
    node = g.nodes[0]
    eng = TensorFlowEngine()
    x64 = eng.asarray(np.ones((1, 6)))
    p64 = eng.node_params(node, [x64])
    assert p64["weight"].dtype == tf.float64 and eng.node_params(node, [x64]) is p64
    p32 = eng.node_params(node, [tf.cast(x64, tf.float32)])
    assert p32["weight"].dtype == tf.float32 and p32 is not p64
    np.testing.assert_allclose(eng.to_numpy(p32["weight"]), node.params["weight"], rtol=1e-6)


def test_device_placement():
    eng = TensorFlowEngine(device="/CPU:0")
    t = eng.asarray(np.ones((2, 3)))
    assert "CPU" in t.device
    g, x = cnn_graph()
    ours = attribx.explain(g, x, "lrp.epsilon", engine=eng)
    ref = attribx.explain(g, x, "lrp.epsilon", engine="numpy")
    assert relative_error(ours.values, ref.values) <= 1e-10


# ----------------------------------------------------------------------------------------------
# whole graphs: every method on the TensorFlow and numpy engines


@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("method", sorted(REGISTRY.methods))
def test_method_matches_numpy(graph, method):
    g, x = GRAPHS[graph]()
    ours, ref = explain_pair(g, x, method, "tensorflow", **method_params(method))
    if ref is None:
        return
    assert ours.dtype == np.float64
    assert relative_error(ours.values, ref.values) <= 1e-5, method
    np.testing.assert_array_equal(ours.target.values, ref.target.values)
    assert ours.attrs["engine"] == "tensorflow"


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.epsilon_gamma_box", "lrp.alpha_beta", "gradient"])
def test_layers_and_conservation_match_numpy(method):
    g, x = cnn_graph()
    layers = ["c1", "mp", "res", "cat", "fc1"]
    ours, ref = explain_pair(g, x, method, "tensorflow", layers=layers, conservation=True, **method_params(method))
    assert ref is not None
    assert set(ours.data_vars) == set(ref.data_vars) >= set(layers) | {"relevance", "conservation"}
    for name in ref.data_vars:
        assert ours[name].dtype == np.float64
        assert relative_error(ours[name].values, ref[name].values) <= 1e-5, name


def test_targets_and_batches():
    g, x = cnn_graph()
    ours, ref = explain_pair(g, x, "lrp.epsilon", "tensorflow", target=[0, 3, 1], batch_size=2)
    assert relative_error(ours.values, ref.values) <= 1e-5
    ours, ref = explain_pair(g, x, "lrp.gamma", "tensorflow", target=("contrast", 1, 2))
    assert relative_error(ours.values, ref.values) <= 1e-5


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.epsilon_gamma_box", "gradient"])
def test_float32_in_float32_out(method):
    g, x = cnn_graph()
    x32 = x.astype(np.float32)
    ours = attribx.explain(g, x32, method, engine="tensorflow", layers=["c1"], **method_params(method))
    ref = attribx.explain(g, x, method, engine="numpy", **method_params(method))
    assert ours["relevance"].dtype == np.float32 and ours["c1"].dtype == np.float32
    assert relative_error(ours["relevance"].values, ref.values) <= 1e-3
    eng = TensorFlowEngine()
    acts = attribx.propagation.run_forward(g, eng, eng.asarray(x32))
    assert all(a.dtype == tf.float32 for a in acts.values())


def test_tensor_input_and_engine_instance():
    g, x = cnn_graph()
    ref = attribx.explain(g, x, "lrp.epsilon", engine="numpy")
    ours = attribx.explain(g, tf.constant(x), "lrp.epsilon", engine=TensorFlowEngine())
    assert relative_error(ours.values, ref.values) <= 1e-10
    assert relative_error(attribx.forward(g, x, engine="tensorflow"), attribx.forward(g, x, engine="numpy")) <= 1e-12


# ----------------------------------------------------------------------------------------------
# TensorFlow stays out of numpy-only use


def test_numpy_engine_does_not_import_tensorflow():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import attribx
        from attribx import GraphBuilder
        assert 'tensorflow' in attribx.plugins.registry().engines   # the plugin is installed and registered
        b = GraphBuilder('m')
        x = b.input('x', (4,))
        g = b.build(b.linear(b.relu(b.linear(x, np.ones((3, 4)), name='a')), np.ones((2, 3)), name='b'))
        attribx.explain(g, np.ones((2, 4)), 'lrp.epsilon', engine='numpy')
        attribx.explain(g, np.ones((2, 4)), 'gradient')
        print('tensorflow' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
