"""The TensorFlow engine against the numpy reference: the shared engine contract (tests/engine_contract.py:
every kernel, every method on hand-built graphs, dtypes), and what is TensorFlow's own: tensors,
device placement, max-pool ties, a oneDNN conv quirk. That attribx never imports TensorFlow unless
this engine is used: tests/test_isolation.py."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("attribx_tf")


import attribx  # noqa: E402
from attribx.engines.numpy_kernels import KERNELS as NUMPY_KERNELS  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from attribx_tf.engine import TensorFlowEngine  # noqa: E402
from attribx_tf.kernels import KERNELS as TF_KERNELS, unbroadcast  # noqa: E402

from engine_cases import OPS, close, cnn_graph  # noqa: E402


# ----------------------------------------------------------------------------------------------
# op kernels


@pytest.fixture
def engine():
    return TensorFlowEngine()


from engine_contract import *  # noqa: E402,F401,F403 - the tests every engine passes


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
@pytest.mark.parametrize("traced", [False, True])
def test_max_pool_gradient_takes_the_first_maximum_with_many_ties(dtype, traced):
    """ResNet's pool (3×3, stride 2, padded, overlapping windows) on ReLU-like inputs full of ties: TF's own
    max-pool gradient (forward recomputed beside it; oneDNN's in float32, traced too) routes each window's
    gradient as the numpy kernel does, to the window's first maximum (117 of the 216 windows here are tied)."""
    rng = np.random.default_rng(5)
    x = np.maximum(rng.integers(-2, 3, size=(2, 3, 11, 12)), 0).astype(dtype)
    attrs = {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1}
    y = NUMPY_KERNELS["max_pool"].forward(attrs, [x], {})
    g = rng.normal(size=y.shape).astype(dtype)
    ref = NUMPY_KERNELS["max_pool"].vjp(attrs, [x], {}, None, g)[0]
    vjp = lambda a, b: TF_KERNELS["max_pool"].vjp(attrs, [a], {}, None, b)[0]       # noqa: E731
    if traced:
        vjp = tf.function(vjp, autograph=False)
    # overlapping windows sum their gradients in another order: rounding only (a tie routed elsewhere is O(1))
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(vjp(tf.constant(x), tf.constant(g)).numpy(), ref, rtol=tol, atol=tol)


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


def test_engine_arrays_are_tf_tensors():
    eng = TensorFlowEngine()
    x = np.array([[-2.0, 0.0, -0.0, 3.0], [1.0, -1e-300, 5.0, np.nan]])
    t = eng.asarray(x)
    assert tf.is_tensor(t) and t.dtype == tf.float64
    assert eng.asarray(x, dtype=np.float32).dtype == tf.float32
    assert eng.asarray(x, dtype="float32").dtype == tf.float32
    assert eng.asarray(x, dtype=tf.float32).dtype == tf.float32
    assert eng.asarray(tf.constant(x)).dtype == tf.float64
    assert eng.asarray(x.astype(np.float32)).dtype == tf.float32
    assert eng.asarray(np.arange(3)).dtype == tf.int64
    assert eng.dtype_of(t) == tf.float64 and eng.dtype_of(x.astype(np.float32)) == tf.float32
    assert TensorFlowEngine(dtype="float32").asarray(x).dtype == tf.float32


def test_device_placement():
    eng = TensorFlowEngine(device="/CPU:0")
    t = eng.asarray(np.ones((2, 3)))
    assert "CPU" in t.device
    g, x = cnn_graph()
    ours = attribx.explain(g, x, "lrp.epsilon", engine=eng)
    ref = attribx.explain(g, x, "lrp.epsilon", engine="numpy")
    assert relative_error(ours.values, ref.values) <= 1e-10


@pytest.mark.parametrize("multiplier, stride, padding, dilation", [(1, 1, 1, 1), (2, 2, 1, 1), (1, 1, 2, 2),
                                                                   (3, (2, 2), 0, 1)])
def test_depthwise_conv_takes_tf_depthwise_kernels_with_the_same_numbers(multiplier, stride, padding, dilation):
    """One input channel per group (MobileNet's depthwise convs) runs as one DepthwiseConv2dNative and its
    input gradient, not one conv per group; forward and VJP equal numpy's (float64)."""
    from attribx_tf.kernels import _ConvPlan
    rng = np.random.default_rng(3)
    c = 5
    attrs = OPS["conv"].resolve_attrs("t", {"stride": stride, "padding": padding, "dilation": dilation,
                                            "groups": c})
    x, w = rng.normal(size=(2, c, 9, 8)), rng.normal(size=(c * multiplier, 1, 3, 3))
    plan = _ConvPlan(attrs, tf.constant(x), tf.constant(w))
    assert plan._depthwise_filter(4, c) is not None
    ref = NUMPY_KERNELS["conv"].forward(attrs, [x], {"weight": w})
    close(TF_KERNELS["conv"].forward(attrs, [tf.constant(x)], {"weight": tf.constant(w)}), ref, 1e-10, "forward")
    g = rng.normal(size=ref.shape)
    want = NUMPY_KERNELS["conv"].vjp(attrs, [x], {"weight": w}, ref, g)[0]
    got = TF_KERNELS["conv"].vjp(attrs, [tf.constant(x)], {"weight": tf.constant(w)}, None, tf.constant(g))[0]
    close(got, want, 1e-10, "vjp")
