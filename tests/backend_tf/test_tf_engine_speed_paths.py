"""The TensorFlow engine's fast paths against the general formula they replace: channel-first convs (oneDNN
float32, no layout transposes), grouped convs as one TF op, kernels compiled by ``tf.function`` (traced once,
never again on the same shapes), the XLA-fused stabiliser (bit for bit) and ReLU6 through TF's own kernels."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("attribx_tf")

import attribx  # noqa: E402
from attribx.engines.numpy_kernels import KERNELS as NUMPY_KERNELS  # noqa: E402
from attribx_tf import conv_kernels, engine as tf_engine  # noqa: E402
from attribx_tf.engine import TensorFlowEngine  # noqa: E402
from attribx_tf.kernels import KERNELS as TF_KERNELS  # noqa: E402

from engine_cases import OPS, close, cnn_graph  # noqa: E402

CONVS = [  # (input shape, weight shape, attrs): dense, strided, asymmetric, dilated, grouped, depthwise, 1d
    ((2, 4, 9, 8), (6, 4, 3, 3), {"padding": 1}),
    ((2, 4, 9, 8), (6, 4, 3, 3), {"stride": 2, "padding": "same"}),
    ((2, 4, 7, 6), (5, 4, 2, 3), {"stride": (2, 1), "padding": [(1, 0), (0, 2)]}),
    ((2, 4, 9, 9), (6, 4, 3, 3), {"padding": 2, "dilation": 2}),
    ((2, 6, 8, 8), (9, 2, 3, 3), {"padding": 1, "groups": 3}),
    ((2, 6, 8, 8), (6, 1, 3, 3), {"padding": 1, "groups": 6}),
    ((2, 6, 9, 9), (12, 1, 3, 3), {"stride": 2, "padding": [(0, 1), (0, 1)], "groups": 6}),
    ((2, 1, 2, 3), (1, 1, 1, 2), {"stride": (1, 2), "padding": 0}),      # an input tail no window reads
    ((2, 4, 11), (6, 4, 3), {"stride": 2, "padding": 1}),
    ((2, 4, 11), (4, 1, 3), {"padding": 1, "groups": 4}),
]


def _conv_case(shapes, dtype, seed=0):
    xs, ws, attrs = shapes
    rng = np.random.default_rng(seed)
    attrs = OPS["conv"].resolve_attrs("t", attrs)
    return attrs, rng.normal(size=xs).astype(dtype), rng.normal(size=ws).astype(dtype), rng


def _tf_conv(attrs, x, w, g):
    params = {"weight": tf.constant(w)}
    y = TF_KERNELS["conv"].forward(attrs, [tf.constant(x)], params)
    (gx,) = TF_KERNELS["conv"].vjp(attrs, [tf.constant(x)], params, None, tf.constant(g))
    return y.numpy(), gx.numpy()


@pytest.mark.parametrize("case", CONVS, ids=lambda c: str(c[2]))
def test_channel_first_conv_equals_the_channel_last_path_and_numpy(case, monkeypatch):
    """float32: where TF runs convs channel-first (oneDNN), forward and VJP equal the transposing path and
    the numpy reference (float64) up to float32 rounding."""
    attrs, x, w, rng = _conv_case(case, np.float32)
    ref = NUMPY_KERNELS["conv"].forward(attrs, [x.astype(np.float64)], {"weight": w.astype(np.float64)})
    g = rng.normal(size=ref.shape).astype(np.float32)
    want = NUMPY_KERNELS["conv"].vjp(attrs, [x.astype(np.float64)], {"weight": w.astype(np.float64)}, ref,
                                     g.astype(np.float64))[0]
    fast = _tf_conv(attrs, x, w, g)
    monkeypatch.setattr(conv_kernels, "channel_first_native", lambda dtype, kind="CPU": False)
    monkeypatch.setattr(conv_kernels, "grouped_grad_native", lambda dtype, kind="CPU": False)
    general = _tf_conv(attrs, x, w, g)
    for got, other, exact, what in ((fast[0], general[0], ref, "forward"), (fast[1], general[1], want, "vjp")):
        close(got, other, 1e-5, what + " vs the channel-last path")
        close(got, exact, 1e-5, what + " vs numpy")
    if len(x.shape) == 4 and attrs["stride"] == (1, 2):
        assert not fast[1][..., 2].any()     # the unread tail gets no gradient


def test_channel_first_is_probed_per_dtype():
    assert conv_kernels.channel_first_native(tf.float64) is False     # Eigen: channel-last only
    assert isinstance(conv_kernels.channel_first_native(tf.float32), bool)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grouped_conv_as_one_op_equals_one_conv_per_group(dtype, monkeypatch):
    """A grouped (not depthwise) conv runs as one TF Conv2D (and one input gradient where TF takes a grouped
    filter): the numbers of a conv per group, concatenated."""
    monkeypatch.setattr(conv_kernels, "channel_first_native", lambda dtype, kind="CPU": False)
    attrs, x, w, rng = _conv_case(((2, 8, 7, 7), (12, 2, 3, 3), {"stride": 2, "padding": 1, "groups": 4}), dtype)
    g = rng.normal(size=(2, 12, 4, 4)).astype(dtype)
    y, gx = _tf_conv(attrs, x, w, g)
    one = OPS["conv"].resolve_attrs("t", {"stride": 2, "padding": 1})
    ys, gs = [], []
    for k in range(4):
        yk, gk = _tf_conv(one, x[:, 2 * k:2 * k + 2], w[3 * k:3 * k + 3], g[:, 3 * k:3 * k + 3])
        ys.append(yk)
        gs.append(gk)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    close(y, np.concatenate(ys, axis=1), tol, "forward")
    close(gx, np.concatenate(gs, axis=1), tol, "vjp")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compiled_kernels_trace_once_and_equal_eager(dtype, monkeypatch):
    """Kernels of COMPILED_OPS run as tf.functions: the same numbers as the eager kernels, and explaining
    the same shapes again (also with a new engine) traces nothing new. (The engine node by node: the whole
    pass traced is attribx_tf.traced's, tested in test_tf_traced.py.)"""
    g, x = cnn_graph()
    x = x.astype(dtype)
    for method in ("lrp.epsilon", "lrp.epsilon_gamma_box"):
        kw = {"low": -3.0, "high": 3.0} if method == "lrp.epsilon_gamma_box" else {}
        first = attribx.explain(g, x, method, engine=TensorFlowEngine(compile_pass=False), **kw).values
        traces = dict(tf_engine.TRACES)
        again = attribx.explain(g, x, method, engine=TensorFlowEngine(compile_pass=False), **kw).values
        assert dict(tf_engine.TRACES) == traces, "retraced on the same shapes"
        np.testing.assert_array_equal(again, first)
        with monkeypatch.context() as m:
            m.setattr(tf_engine, "COMPILED_OPS", frozenset())
            eager = attribx.explain(g, x, method, engine=TensorFlowEngine(compile_pass=False), **kw).values
        close(first, eager, 1e-5 if dtype == "float32" else 1e-12, method)
    assert any(op == "max_pool" for op, _ in tf_engine.TRACES)
    assert all(fn.experimental_get_tracing_count() == 1 for fn in tf_engine._COMPILED.values())


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_fused_stabilizer_is_bit_for_bit_the_select(dtype):
    """Large tensors take the XLA-fused stabiliser: the same bits as the select, -0.0 and 0 included."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 64, 64, 64))
    z[0, 0, 0, :4] = [0.0, -0.0, 1e-30, -1e-30]
    z = tf.constant(z, dtype)
    assert z.shape.num_elements() >= tf_engine.FUSE_MIN
    got = TensorFlowEngine().stabilize(z, 1e-6)
    want = tf_engine._stabilize(z, tf.constant(1e-6, dtype))
    bits = tf.int32 if dtype == tf.float32 else tf.int64
    np.testing.assert_array_equal(tf.bitcast(got, bits).numpy(), tf.bitcast(want, bits).numpy())


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
@pytest.mark.parametrize("traced", [False, True])
def test_fused_epsilon_quotient_is_bit_for_bit_the_ops(dtype, traced):
    """R / (z + ε sign z) as one XLA kernel (eagerly on large tensors, inside a trace from FUSE_MIN_TRACED):
    the same bits as the TF ops one by one (IEEE division, no reciprocal), at ±0, tiny z and broadcast R."""
    rng = np.random.default_rng(1)
    shape = (4, 64, 64, 64) if not traced else (2, 16, 32, 32)
    z = rng.normal(size=shape)
    z.flat[:6] = [0.0, -0.0, 1e-30, -1e-30, 3e-7, -3e-7]
    z, r = tf.constant(z, dtype), tf.constant(rng.normal(size=shape), dtype)
    r_row = tf.constant(rng.normal(size=shape[-1:]), dtype)          # broadcast against z
    eng = TensorFlowEngine()
    limit = tf_engine.FUSE_MIN_TRACED if traced else tf_engine.FUSE_MIN
    assert z.shape.num_elements() >= limit
    if traced:
        run = tf.function(lambda a, b: eng.divide_stabilized(a, b, 1e-6), autograph=False)
        ops = {o.type for o in run.get_concrete_function(r, z).graph.get_operations()}
        assert "StatefulPartitionedCall" in ops or "PartitionedCall" in ops       # the XLA kernel, not five ops
        assert "SelectV2" not in ops
    else:
        run = lambda a, b: eng.divide_stabilized(a, b, 1e-6)       # noqa: E731
    eps = tf.constant(1e-6, dtype)
    bits = tf.int32 if dtype == tf.float32 else tf.int64
    for num in (r, r_row):
        want = num / tf_engine._stabilize(z, eps)
        np.testing.assert_array_equal(tf.bitcast(run(num, z), bits).numpy(), tf.bitcast(want, bits).numpy())


def test_multiply_no_nan_holds_no_relevance_on_masked_scores():
    """z ⊙ s with z = ±∞ where s = 0 (a masked attention score) is 0 (MulNoNan), finite entries the product;
    the same numbers as the base class's select (numpy engine)."""
    from attribx.engines.numpy_engine import NumpyEngine
    z = np.array([[-np.inf, 2.0, np.inf, -3.0, 0.0]], np.float32)
    s = np.array([[0.0, 0.5, 0.0, -2.0, 7.0]], np.float32)
    got = TensorFlowEngine().multiply_no_nan(tf.constant(z), tf.constant(s)).numpy()
    np.testing.assert_array_equal(got, [[0.0, 1.0, 0.0, 6.0, 0.0]])
    np.testing.assert_array_equal(NumpyEngine().multiply_no_nan(z, s), got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu6_takes_tf_kernels_with_the_clip_numbers(dtype):
    """clip(0, 6) (MobileNet's ReLU6) runs as relu6 / Relu6Grad: the numbers of the general clip, gradient 0
    at both bounds."""
    x = np.array([[-1.0, 0.0, -0.0, 1e-30, 3.0, 6.0 - 1e-3, 6.0, 6.5, np.inf, -np.inf]], dtype)
    g = np.arange(1.0, 11.0, dtype=dtype).reshape(1, -1)
    attrs = OPS["clip"].resolve_attrs("t", {"min": 0.0, "max": 6.0})
    np.testing.assert_array_equal(TF_KERNELS["clip"].forward(attrs, [tf.constant(x)], {}).numpy(),
                                  NUMPY_KERNELS["clip"].forward(attrs, [x], {}))
    np.testing.assert_array_equal(TF_KERNELS["clip"].vjp(attrs, [tf.constant(x)], {}, None, tf.constant(g))[0].numpy(),
                                  NUMPY_KERNELS["clip"].vjp(attrs, [x], {}, None, g)[0])
