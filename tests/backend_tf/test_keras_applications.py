"""keras.applications through the Keras translator (issue 19): every model constructor in
``keras.applications`` translates (random weights, a small input, 5 classes), the graph's forward equals
``model(x)`` and ``lrp.attn`` and ``lrp.epsilon_plus_flat`` give finite relevance of the input's shape.

The layers the applications need beyond the common ones are checked on small models first (float64,
forward equal to Keras on the numpy, torch and tensorflow engines): ``keras.ops`` arithmetic in a
functional model (MobileNetV3's hard sigmoid ``relu6(x + 3) * (1/6)``, ConvNeXt's residual
``inputs + x``), ConvNeXt's LayerScale and StochasticDepth, InceptionResNetV2's CustomScaleLayer.

By default a fast representative set runs in float64 (MobileNetV3Small, EfficientNetB0, ConvNeXtTiny);
every model with every method (VGG16, ResNet50, DenseNet121, MobileNetV2) is ``slow``; the walk over every
constructor in float32 and float64 is ``slow`` and ``extended`` (``ATTRIBX_EXTENDED=1`` runs it), as the
torchvision walk in tests/backend_torch/test_torchvision_models.py.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import attribx  # noqa: E402
from attribx import UnsupportedError  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from matrix.zoo import engines, method_params  # noqa: E402
from test_keras_translate import check, float64, randomize, relevance_of, sample  # noqa: E402,F401

L = keras.layers


def forward_on_every_engine(graph, model, x, tol=1e-8):
    """The graph's forward equals Keras's on every installed engine (numpy, tensorflow, torch)."""
    want = np.asarray(model(x, training=False))
    for engine in engines():
        assert relative_error(attribx.forward(graph, x, engine=engine), want) <= tol, engine


# ----------------------------------------------------------------------------------------------
# the layers the applications need

def _ops_model():
    """keras.ops arithmetic on values stored channel-first (after a conv) and in Keras's order (after
    Flatten), with numbers, per-channel arrays (also of full rank) and other values as operands."""
    i = keras.Input((6, 6, 3))
    h = L.Conv2D(4, 3, name="conv")(i)                       # stored channel-first
    a = (h + 3.0) * (1.0 / 6.0)                             # MobileNetV3's hard sigmoid, before its relu6
    b = 2.0 - a                                              # constant first
    c = b * np.array([0.5, -1.0, 2.0, 1.5], dtype="float32")  # per channel, Keras's order
    d = c / 4.0 - np.full((1, 1, 1, 4), 0.25, dtype="float32")
    e = -d + h                                               # two values
    pos = L.Activation("sigmoid")(h) + 1.0
    f = (e * h - h) / pos                                    # value * value, value - value, value / value
    g = 1.5 + L.Flatten()(f)                                 # Keras's order, constant first
    return keras.Model(i, L.Dense(3, name="out")(g))


def test_keras_ops_arithmetic(float64):
    model, x = _ops_model(), sample((6, 6, 3), dtype=float64)
    g = check(model, x)                                      # (randomises the model's weights)
    ops = [n.op for n in g.nodes]
    assert "div" in ops and ops.count("transpose") == 2     # the conv's and Flatten's, none for constants
    forward_on_every_engine(g, model, x)


def test_keras_ops_reciprocal_is_refused():
    i = keras.Input((4,))
    model = keras.Model(i, 1.0 / L.Dense(3, name="fc")(i))
    with pytest.raises(UnsupportedError, match="reciprocal"):
        attribx.translate(model)


def _convnext_block():
    from keras.src.applications.convnext import LayerScale, StochasticDepth
    i = keras.Input((6, 6, 4))
    h = L.Conv2D(4, 3, padding="same", name="dwconv")(i)
    s = LayerScale(0.5, 4, name="scale_cf")(h)              # on a value stored channel-first
    d = L.Dense(4, name="pw")(L.LayerNormalization(name="ln")(s))
    t = LayerScale(0.5, 4, name="scale_cl")(d)              # after a Dense on 4-D input: Keras's order
    return keras.Model(i, L.Flatten()(i + StochasticDepth(0.1, name="drop_path")(t)))


def test_convnext_layer_scale_and_stochastic_depth(float64):
    model, x = _convnext_block(), sample((6, 6, 4), dtype=float64)
    g = check(model, x)
    assert g.meta["aliases"]["drop_path"] == "scale_cl"     # nothing at inference: an alias
    forward_on_every_engine(g, model, x)


def _inception_resnet_block():
    from keras.src.applications.inception_resnet_v2 import CustomScaleLayer
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(4, 1, name="shortcut")(i)
    up = L.Conv2D(4, 3, padding="same", name="up")(L.Activation("relu")(x))
    y = CustomScaleLayer(0.17, name="scaled_sum")([x, up])
    return keras.Model(i, L.GlobalAveragePooling2D()(L.Activation("relu")(y)))


def test_inception_resnet_custom_scale_layer(float64):
    model, x = _inception_resnet_block(), sample((6, 6, 3), dtype=float64)
    forward_on_every_engine(check(model, x), model, x)


# ----------------------------------------------------------------------------------------------
# the applications

#: input sizes where 32×32 is below a model's minimum (Keras's own check: 75 for the Inceptions, 71 for
#: Xception); every other application builds at 32×32 with weights=None
SIZES = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}

#: applications refused on purpose, with the reason the error names. None: every constructor in Keras 3.15's
#: keras.applications translates (RegNet and ResNetRS were tf.keras 2 applications; Keras 3 has neither).
REFUSED: dict[str, str] = {}

#: relative error (max abs difference over max abs value) of the graph's forward against model(x).
#: float32: the graph runs the same arithmetic in another order (batch norm folded into the conv before it,
#: TensorFlow's oneDNN convolutions sum in their own order), so each of 100+ layers rounds differently; the
#: walk measured at most 1.4e-6 (NASNetLarge), and 1e-4 leaves room for other CPUs and BLAS builds while
#: still catching any wrong weight or axis (those give errors of order 1).
TOL32 = 1e-4
#: float64: the translation is exact to rounding (measured ≤ 2e-15), except that TensorFlow's own
#: tf.nn.gelu(approximate=False) departs from 0.5 x (1 + erf(x / √2)) by up to 5e-9 in float64 (measured
#: against scipy's erf): ConvNeXt (GELU in every block) shows ~1e-9 relative
TOL64 = {"ConvNeXt": 1e-7}


def application_names() -> list[str]:
    """Every model constructor in keras.applications (the benchmark's list, benchmarks/zoo_speed.py)."""
    apps = keras.applications
    return sorted(n for n in dir(apps) if n[:1].isupper() and callable(getattr(apps, n)))


@contextlib.contextmanager
def floatx(dtype):
    """Keras builds models in ``dtype`` inside (its floatx and dtype policy, restored after)."""
    old, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(old)
        keras.config.set_dtype_policy(policy)


def build(name, dtype="float32"):
    size = SIZES.get(name, 32)
    with floatx(dtype):
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=5)
    return randomize(model), size


def check_application(name, dtype="float32", engine="numpy"):
    """Translate; forward equal to Keras's; lrp.attn and lrp.epsilon_plus_flat finite, of the input's shape,
    and not all zero."""
    if name in REFUSED:
        with pytest.raises(UnsupportedError, match=REFUSED[name]):
            attribx.translate(build(name)[0])
        return
    model, size = build(name, dtype)
    x = np.random.default_rng(1).normal(size=(1, size, size, 3)).astype(dtype)
    want = np.asarray(model(x, training=False))
    assert want.dtype == np.dtype(dtype)
    graph = attribx.translate(model)
    tol = TOL32 if dtype == "float32" else next((t for k, t in TOL64.items() if name.startswith(k)), 1e-10)
    assert relative_error(attribx.forward(graph, x, engine=engine), want) <= tol
    for method in ("lrp.attn", "lrp.epsilon_plus_flat"):
        rel = relevance_of(attribx.explain(graph, x, method, target=0, engine=engine))
        assert rel.shape == x.shape and np.isfinite(rel.values).all(), method
        assert np.abs(rel.values).sum() > 0, method


FAST = ["MobileNetV3Small", "EfficientNetB0", "ConvNeXtTiny"]


@pytest.mark.parametrize("name", FAST)
def test_representative_applications(name):
    """keras.ops arithmetic and hard_swish (MobileNetV3), Rescaling, Normalization and squeeze-excite
    (EfficientNet), LayerNormalization, GELU, LayerScale (ConvNeXt); float64, tight."""
    check_application(name, "float64")


def test_every_application_is_walked():
    """The walk below covers keras.applications as this Keras has it (not a list written down once)."""
    names = application_names()
    assert set(FAST) <= set(names) and len(names) >= 40 and set(REFUSED) <= set(names)


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.parametrize("dtype, engine", [("float32", "tensorflow"), ("float64", "numpy")])
@pytest.mark.parametrize("name", application_names())
def test_every_application(name, dtype, engine):
    check_application(name, dtype, engine)


# ----------------------------------------------------------------------------------------------
# every method on a few applications
@pytest.mark.slow
@pytest.mark.parametrize("app", ["DenseNet121", "MobileNetV2", "ResNet50", "VGG16"])
def test_every_method_on_applications(app):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, app)(weights=None, input_shape=(32, 32, 3), classes=10)
    randomize(model)
    x = sample((32, 32, 3), n=1)
    want = model.predict(x, verbose=0)
    g = attribx.translate(model)
    got = attribx.forward(g, x, engine="numpy")
    assert relative_error(got, want) <= 1e-5
    reg = attribx.plugins.registry().methods
    for method in sorted(m for m in reg if reg[m].family != "attention"):     # CNNs: no attention to roll out
        ds = attribx.explain(g, x, method, engine="numpy", **method_params(method))
        rel = relevance_of(ds)
        # channels-last; methods that pool the channels (sensitivity) drop that axis
        assert rel.dims[:3] == ("sample", "height", "width") and rel.dims[3:] in ((), ("channel",)), method
        assert np.isfinite(rel.values).all(), method
