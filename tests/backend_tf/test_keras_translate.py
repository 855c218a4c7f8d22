"""Keras 3 models translate into the attribx graph: same forward pass, Keras's names, the user's layout.

Every supported layer kind gets a small model with random, non-trivial weights (batch norm with random
statistics) whose graph forward pass on the numpy engine must equal ``model(x)``; most run in float64
so that the comparison is tight. Nested models, unsupported layers and ``.keras`` files (API and CLI) are
covered too; keras.applications are in test_keras_applications.py.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import attribx  # noqa: E402
from attribx import UnsupportedError  # noqa: E402
from attribx.testing import relative_error  # noqa: E402

L = keras.layers
TOL64 = 1e-8
TOL32 = 1e-5


@pytest.fixture
def float64():
    """Build models in float64 (Keras's floatx), for tight comparisons."""
    old, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield np.float64
    keras.config.set_floatx(old)
    keras.config.set_dtype_policy(policy)     # the global policy is cached from floatx otherwise


def randomize(model, seed=0):
    """Random weights everywhere; batch norm gets random mean, positive variance, gamma and beta."""
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        ws = layer.get_weights()
        if not ws:
            continue
        if isinstance(layer, L.BatchNormalization):
            new = []
            for v, w in zip(layer.weights, ws):
                if "variance" in v.path:
                    new.append(rng.uniform(0.5, 2.0, w.shape))
                elif "gamma" in v.path:
                    new.append(rng.uniform(0.5, 1.5, w.shape) * rng.choice([-1, 1], w.shape))
                else:
                    new.append(rng.normal(size=w.shape) * 0.5)
            layer.set_weights([n.astype(w.dtype) for n, w in zip(new, ws)])
            continue
        if isinstance(layer, L.Normalization):
            continue
        new = []
        for w in ws:
            fan_in = max(1, int(np.prod(w.shape[:-1]))) if w.ndim > 1 else 4
            new.append((rng.normal(size=w.shape) / np.sqrt(fan_in)).astype(w.dtype))
        layer.set_weights(new)
    return model


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def sample(shape, n=2, dtype=np.float32, seed=1):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(dtype)


def check(model, x, tol=None, seed=0):
    """Graph forward (numpy engine) equals model(x); every Keras layer name addresses a node."""
    randomize(model, seed)
    want = np.asarray(model(x, training=False))
    tol = tol or (TOL64 if x.dtype == np.float64 else TOL32)
    raw = attribx.translate(model, passes=False, input_shape=x.shape[1:])       # the translation itself
    graph = attribx.translate(model, input_shape=x.shape[1:])                   # after the default passes
    for g in (raw, graph):
        got = attribx.forward(g, x, engine="numpy", passes=False)
        assert got.shape == want.shape
        err = relative_error(got, want)
        assert err <= tol, f"relative error {err} (passes: {g.meta.get('passes')})"
        aliases = g.meta.get("aliases", {})
        gone = set(g.meta.get("folded_pads", ()))     # pads folded into convs are no values any more
        for layer in _all_layers(model):
            if isinstance(layer, L.InputLayer):
                assert layer.name in [v.name for v in g.inputs]
            elif layer.name not in gone:
                assert layer.name in g or layer.name in aliases, f"{layer.name} not in the graph"
    return graph


def relevance_of(ds):
    """The input relevance of explain's result (a DataArray, or a Dataset when layers were asked)."""
    return ds["relevance"] if hasattr(ds, "data_vars") else ds


def seq(in_shape, *layers):
    return keras.Sequential([keras.Input(in_shape), *layers])


# -- weighted layers ------------------------------------------------------------------------------------
DENSE = {
    "relu": lambda: seq((7,), L.Dense(5, activation="relu", name="fc"), L.Dense(3, name="out")),
    "no_bias": lambda: seq((7,), L.Dense(5, use_bias=False, activation="tanh"), L.Dense(3)),
    "after_conv": lambda: seq((5, 5, 3), L.Conv2D(4, 3), L.Dense(2, activation="relu"), L.Flatten()),
    "3d_input": lambda: seq((4, 6), L.Dense(5, activation="sigmoid"), L.Flatten(), L.Dense(2)),
}

CONV = {
    "conv1d_valid_stride": lambda: seq((16, 3), L.Conv1D(4, 3, strides=2, activation="relu")),
    "conv1d_same_dilation": lambda: seq((16, 3), L.Conv1D(4, 3, padding="same", dilation_rate=2)),
    "conv1d_causal": lambda: seq((12, 3), L.Conv1D(4, 3, padding="causal", dilation_rate=2)),
    "conv2d_same_stride2": lambda: seq((9, 9, 3), L.Conv2D(5, 3, strides=2, padding="same", activation="elu")),
    "conv2d_rect_kernel": lambda: seq((10, 8, 2), L.Conv2D(4, (3, 2), strides=(1, 2), padding="valid")),
    "conv2d_dilation": lambda: seq((11, 11, 3), L.Conv2D(4, 3, dilation_rate=2, padding="same")),
    "conv2d_groups": lambda: seq((8, 8, 4), L.Conv2D(6, 3, groups=2, padding="same", use_bias=False)),
    "conv3d": lambda: seq((6, 6, 6, 2), L.Conv3D(3, 3, strides=(1, 2, 1), padding="same")),
    "depthwise2d": lambda: seq((9, 9, 3), L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same")),
    "depthwise1d": lambda: seq((12, 3), L.DepthwiseConv1D(3, depth_multiplier=2)),
    "separable2d": lambda: seq((9, 9, 3), L.SeparableConv2D(5, 3, depth_multiplier=2, padding="same",
                                                            activation="relu")),
    "separable1d": lambda: seq((12, 3), L.SeparableConv1D(4, 3, strides=2)),
    "conv2d_transpose_same": lambda: seq((5, 4, 3), L.Conv2DTranspose(4, 3, strides=2, padding="same",
                                                                      activation="relu")),
    "conv2d_transpose_valid": lambda: seq((5, 4, 3), L.Conv2DTranspose(4, (3, 2), strides=(2, 3))),
    "conv2d_transpose_small_kernel": lambda: seq((4, 4, 2), L.Conv2DTranspose(3, 2, strides=3, padding="same")),
    "conv1d_transpose_output_padding": lambda: seq((6, 3), L.Conv1DTranspose(2, 3, strides=2, output_padding=1)),
    "conv3d_transpose": lambda: seq((3, 3, 3, 2), L.Conv3DTranspose(2, 3, strides=2, padding="same")),
}


@pytest.mark.parametrize("case", sorted(DENSE) + sorted(CONV))
def test_weighted_layers(case, float64):
    model = (DENSE | CONV)[case]()
    x = sample(model.input_shape[1:], dtype=float64)
    check(model, x)


# -- pooling ------------------------------------------------------------------------------------------------
POOL = {
    "max1d_same": lambda: seq((11, 3), L.MaxPooling1D(3, strides=2, padding="same")),
    "max2d_valid": lambda: seq((9, 9, 3), L.MaxPooling2D(2)),
    "max2d_same": lambda: seq((9, 7, 3), L.MaxPooling2D(3, strides=2, padding="same")),
    "avg1d_valid": lambda: seq((11, 3), L.AveragePooling1D(2)),
    "avg2d_same": lambda: seq((9, 7, 3), L.AveragePooling2D(3, strides=2, padding="same")),
    "gap1d": lambda: seq((10, 3), L.GlobalAveragePooling1D()),
    "gap2d": lambda: seq((6, 5, 3), L.GlobalAveragePooling2D()),
    "gap2d_keepdims": lambda: seq((6, 5, 3), L.GlobalAveragePooling2D(keepdims=True), L.Flatten()),
    "gmp1d": lambda: seq((10, 3), L.GlobalMaxPooling1D()),
    "gmp2d": lambda: seq((6, 5, 3), L.GlobalMaxPooling2D()),
    "gmp2d_keepdims": lambda: seq((6, 5, 3), L.GlobalMaxPooling2D(keepdims=True)),
    "pool3d": lambda: seq((6, 6, 6, 2), L.Conv3D(2, 1), L.AveragePooling3D(2, padding="same"),
                          L.MaxPooling3D(2), L.GlobalMaxPooling3D()),
    "gap3d": lambda: seq((4, 4, 4, 2), L.GlobalAveragePooling3D()),
}


FLOAT32_ONLY = {"pool3d"}      # TensorFlow's CPU AvgPool3D has no float64 kernel


@pytest.mark.parametrize("case", sorted(POOL))
def test_pooling(case, request):
    dtype = np.float32 if case in FLOAT32_ONLY else request.getfixturevalue("float64")
    model = POOL[case]()
    check(model, sample(model.input_shape[1:], dtype=dtype))


# -- batch norm ---------------------------------------------------------------------------------------------
def _bn_after_conv():
    return seq((8, 8, 3), L.Conv2D(4, 3, use_bias=False, name="conv"), L.BatchNormalization(name="bn"),
               L.ReLU(name="relu"))


BN = {
    "after_conv": _bn_after_conv,
    "after_dense": lambda: seq((6,), L.Dense(5, name="fc"), L.BatchNormalization(name="bn", epsilon=1e-2)),
    "no_center_scale": lambda: seq((8, 8, 3), L.Conv2D(4, 3), L.Activation("relu"),
                                   L.BatchNormalization(center=False, scale=False)),
    "after_dense_3d": lambda: seq((4, 6), L.Dense(5, name="fc"), L.BatchNormalization(name="bn")),
    "axis_height": lambda: seq((5, 6, 3), L.Conv2D(4, 1), L.BatchNormalization(axis=1)),
    "on_input": lambda: seq((5, 6, 3), L.BatchNormalization(), L.Conv2D(2, 3)),
}


@pytest.mark.parametrize("case", sorted(BN))
def test_batch_norm(case, float64):
    model = BN[case]()
    check(model, sample(model.input_shape[1:], dtype=float64))


def test_batch_norm_folds_into_conv_and_keeps_its_name(float64):
    model = _bn_after_conv()
    x = sample((8, 8, 3), dtype=float64)
    g = check(model, x)
    assert "bn" not in g and g.meta["aliases"]["bn"] == "conv"
    g3 = check(BN["after_dense_3d"](), sample((4, 6), dtype=float64))
    assert "bn" not in g3 and g3.meta["aliases"]["bn"] == "fc"
    unfolded = attribx.translate(model, passes=False)
    assert unfolded["bn"].op == "batch_norm"
    ds = attribx.explain(model, x, "lrp.epsilon", engine="numpy", layers=["bn"])
    assert np.isfinite(ds["bn"].values).all() and ds["relevance"].dims[-1] == "channel"


def test_translation_and_explanation_do_not_call_keras_array():
    # Keras variables and TensorFlow tensors have an __array__ without a copy keyword, so NumPy 2 warns on
    # each np.array / np.asarray / keras.ops.convert_to_numpy of one: attribx goes through .numpy() instead
    import warnings
    model = _bn_after_conv()
    randomize(model)
    x = sample((8, 8, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for engine in ("numpy", "tensorflow"):
            rel = attribx.explain(model, x, "lrp.epsilon_gamma_box", engine=engine, low=-3.0, high=3.0)
            assert np.isfinite(rel.values).all()
    assert not [w for w in caught if "__array__" in str(w.message)], [str(w.message) for w in caught]


# -- activations ----------------------------------------------------------------------------------------------
ACTIVATIONS = ["relu", "sigmoid", "tanh", "softmax", "linear", "elu", "gelu", "silu", "swish", "relu6",
               "leaky_relu", "selu"]


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_layer(act, float64):
    model = seq((6, 6, 2), L.Conv2D(3, 3, name="conv"), L.Activation(act, name="act"))
    g = check(model, sample((6, 6, 2), dtype=float64) * 3)
    assert ("act" in g) == (act != "linear")


ACT_LAYERS = {
    "relu_max": lambda: L.ReLU(max_value=1.0),
    "relu_slope": lambda: L.ReLU(negative_slope=0.1),
    "relu_slope_max": lambda: L.ReLU(max_value=2.0, negative_slope=0.1),
    "leaky": lambda: L.LeakyReLU(negative_slope=0.05),
    "elu": lambda: L.ELU(alpha=0.7),
    "softmax_channels": lambda: L.Softmax(),
    "softmax_height": lambda: L.Softmax(axis=1),
}


@pytest.mark.parametrize("case", sorted(ACT_LAYERS))
def test_activation_layers(case, float64):
    model = seq((5, 4, 2), L.Conv2D(3, 2, name="conv"), ACT_LAYERS[case]())
    check(model, sample((5, 4, 2), dtype=float64) * 3)


def test_relu_threshold_is_unsupported():
    model = seq((4,), L.ReLU(threshold=0.5, name="shifted"))
    with pytest.raises(UnsupportedError, match="shifted.*ReLU.*threshold"):
        attribx.translate(model)


# -- merges -----------------------------------------------------------------------------------------------------
def _merge(layer_fn, shape=(6, 6, 3), mixed=False):
    i = keras.Input(shape)
    a = L.Conv2D(4, 3, padding="same", name="a")(i)
    # mixed: one branch stays channels-last (a layer-agnostic op on the input), the other is channel-first
    b = L.Conv2D(4, 1, name="b")(i) if not mixed else L.Dense(4, name="b")(i)
    return keras.Model(i, layer_fn(a, b))


MERGES = {
    "add": lambda: _merge(lambda a, b: L.Add(name="add")([a, b])),
    "add_mixed_layouts": lambda: _merge(lambda a, b: L.Add(name="add")([a, b]), mixed=True),
    "subtract": lambda: _merge(lambda a, b: L.Subtract(name="sub")([a, b])),
    "multiply": lambda: _merge(lambda a, b: L.Multiply(name="mul")([a, b])),
    "multiply3": lambda: _merge(lambda a, b: L.Multiply(name="mul")([a, b, a])),
    "average": lambda: _merge(lambda a, b: L.Average(name="avg")([a, b])),
    "concat_channels": lambda: _merge(lambda a, b: L.Concatenate(name="cat")([a, b])),
    "concat_width": lambda: _merge(lambda a, b: L.Concatenate(axis=2, name="cat")([a, b]), mixed=True),
}


@pytest.mark.parametrize("case", sorted(MERGES))
def test_merge_layers(case, float64):
    model = MERGES[case]()
    check(model, sample((6, 6, 3), dtype=float64))


# -- shape layers -------------------------------------------------------------------------------------------------
SHAPE = {
    "flatten_after_conv": lambda: seq((5, 4, 3), L.Conv2D(6, 3, padding="same"), L.Flatten(), L.Dense(3)),
    "flatten_after_pool": lambda: seq((6, 6, 2), L.Conv2D(3, 3), L.MaxPooling2D(2), L.Flatten()),
    "reshape": lambda: seq((4, 4, 3), L.Conv2D(2, 3, padding="same"), L.Reshape((8, 4)), L.Dense(3)),
    "reshape_minus1": lambda: seq((4, 4, 3), L.Conv2D(2, 3, padding="same"), L.Reshape((-1, 2)),
                                  L.Conv1D(2, 3)),
    "permute": lambda: seq((5, 4, 3), L.Conv2D(2, 3, padding="same"), L.Permute((3, 1, 2)), L.Flatten()),
    "zero_pad1d": lambda: seq((8, 3), L.ZeroPadding1D((1, 2)), L.Conv1D(2, 3)),
    "zero_pad2d": lambda: seq((6, 5, 3), L.Conv2D(2, 1), L.ZeroPadding2D(((1, 2), (0, 3))), L.Conv2D(2, 3)),
    "zero_pad2d_input": lambda: seq((6, 5, 3), L.ZeroPadding2D(1), L.Flatten()),
    "pad_crop3d": lambda: seq((6, 6, 6, 2), L.ZeroPadding3D(1), L.Cropping3D(((1, 0), (0, 2), (1, 1))),
                              L.Conv3D(2, 1)),
    "crop1d": lambda: seq((9, 3), L.Conv1D(2, 1), L.Cropping1D((1, 3))),
    "crop2d": lambda: seq((8, 7, 3), L.Conv2D(2, 1), L.Cropping2D(((1, 2), (2, 0))), L.Flatten()),
    "noops": lambda: seq((6, 6, 3), L.Dropout(0.5), L.Conv2D(4, 3, name="c"), L.SpatialDropout2D(0.3),
                         L.GaussianNoise(1.0), L.GaussianDropout(0.2), L.ActivityRegularization(0.1),
                         L.Identity(), L.Flatten()),
    "rescaling": lambda: seq((5, 5, 3), L.Rescaling(1 / 127.5, offset=-1.0), L.Conv2D(2, 3)),
    "rescaling_scale_only": lambda: seq((5, 5, 3), L.Rescaling(2.0), L.Conv2D(2, 3)),
    "normalization": lambda: seq((5, 5, 3), L.Normalization(mean=[0.5, -1.0, 2.0], variance=[0.25, 4.0, 1.0]),
                                 L.Conv2D(2, 3)),
    "normalization_invert": lambda: seq((4,), L.Normalization(mean=[0.5, -1.0, 2.0, 0.0],
                                                              variance=[0.25, 4.0, 1.0, 9.0], invert=True)),
}


@pytest.mark.parametrize("case", sorted(SHAPE))
def test_shape_and_preprocessing_layers(case, float64):
    model = SHAPE[case]()
    check(model, sample(model.input_shape[1:], dtype=float64))


def test_dropped_layers_are_aliases(float64):
    model = SHAPE["noops"]()
    g = check(model, sample((6, 6, 3), dtype=float64))
    aliases = g.meta["aliases"]
    assert aliases[model.layers[0].name] == g.input.name            # dropout on the input: the input
    assert all(aliases[layer.name] == "c" for layer in model.layers[2:-1])
    assert {n.op for n in g.nodes} == {"transpose", "conv", "flatten"}


def test_flatten_after_conv_uses_keras_order():
    """The transpose back to H, W, C sits before the flatten; the layout of the input is NHWC."""
    model = SHAPE["flatten_after_conv"]()
    g = check(model, sample((5, 4, 3)))
    assert g.input.dims == ("sample", "height", "width", "channel")
    flat = g["flatten"] if "flatten" in g else next(n for n in g.nodes if n.op == "flatten")
    before = g[flat.inputs[0]]
    assert before.op == "transpose" and before.attrs["perm"] == (0, 2, 3, 1)


# -- names, layouts, errors ----------------------------------------------------------------------------------------
def test_names_are_keras_layer_names_and_relevance_is_channels_last():
    i = keras.Input((8, 8, 3), name="image")
    h = L.Conv2D(4, 3, activation="relu", name="conv_a")(i)
    h = L.MaxPooling2D(name="pool_a")(h)
    h = L.Flatten(name="flat")(h)
    o = L.Dense(3, name="logits")(h)
    model = randomize(keras.Model(i, o))
    g = attribx.translate(model)
    assert g.input.name == "image"
    assert {"conv_a", "conv_a:activation", "pool_a", "flat", "logits"} <= {n.name for n in g.nodes}
    assert g.output == "logits"
    x = sample((8, 8, 3))
    ds = attribx.explain(model, x, "lrp.epsilon", engine="numpy", layers=["pool_a"])
    rel = relevance_of(ds)
    assert rel.dims == ("sample", "height", "width", "channel") and rel.shape == x.shape
    assert np.isfinite(rel.values).all()


def test_sequence_input_layout():
    model = randomize(seq((10, 3), L.Conv1D(4, 3), L.GlobalAveragePooling1D(), L.Dense(2)))
    g = attribx.translate(model)
    assert g.input.dims == ("sample", "length", "channel")


def test_unsupported_layer_names_layer_class_and_hook():
    """(UpSampling2D was the example until issue 19 translated it.)"""
    model = seq((4, 4, 2), L.GroupNormalization(groups=2, name="gn"), L.Flatten())
    with pytest.raises(UnsupportedError) as err:
        attribx.translate(model)
    msg = str(err.value)
    assert "'gn'" in msg and "GroupNormalization" in msg and "attribx_translate" in msg and "attribx_ops" in msg


def test_keras_ops_in_a_functional_model_are_unsupported():
    """(keras.ops.add was the example until issue 19 translated the arithmetic keras.applications use.)"""
    i = keras.Input((4,))
    model = keras.Model(i, keras.ops.sin(L.Dense(3, name="fc")(i)))
    with pytest.raises(UnsupportedError, match="operation.*keras.ops"):
        attribx.translate(model)


def test_shared_layer_gets_numbered_names():
    i = keras.Input((4,))
    dense = L.Dense(4, activation="tanh", name="shared")
    model = randomize(keras.Model(i, L.Dense(2, name="out")(dense(dense(i)))))
    x = sample((4,))
    g = check_nested(model, x)
    assert {"shared", "shared_1", "shared:activation", "shared_1:activation"} <= {n.name for n in g.nodes}


def _text_model(mask_zero=False):
    i = keras.Input((6,), dtype="int32")
    e = L.Embedding(12, 5, name="emb", mask_zero=mask_zero)(i)
    h = L.Conv1D(4, 3, padding="same", activation="relu", name="conv")(e)
    return keras.Model(i, L.Dense(3, name="out")(L.GlobalAveragePooling1D(name="pool")(h)))


def test_embedding_takes_token_ids_and_gives_relevance_per_token():
    model = randomize(_text_model())
    ids = np.random.default_rng(0).integers(0, 12, size=(4, 6))
    assert relative_error(attribx.forward(model, ids, engine="numpy"), model(ids)) <= TOL32
    graph = attribx.translate(model)
    assert graph.input.dtype == "int64" and graph.input.dims == ("sample", "token")
    ds = attribx.explain(model, ids, "lrp.epsilon", engine="numpy", layers=["emb"], conservation=True)
    # relevance per token is the embedding output's relevance summed over the embedding axis
    np.testing.assert_allclose(ds["relevance"], ds["emb"].sum(ds["emb"].dims[-1]), rtol=1e-5, atol=1e-7)
    assert ds["relevance"].dims == ("sample", "token")
    on_tf = attribx.explain(model, ids, "lrp.epsilon")        # the model's own engine: tensorflow
    assert on_tf.attrs["engine"] == "tensorflow"
    np.testing.assert_allclose(on_tf, ds["relevance"], rtol=1e-4, atol=1e-6)
    with pytest.raises(attribx.MethodError, match="indices"):
        attribx.explain(model, ids, "integrated_gradients")
    with pytest.raises(attribx.InputError, match=r"\[0, 12\)"):
        attribx.explain(model, ids + 12, "lrp.epsilon")


@pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")
def test_embedding_mask_dropped_by_a_conv():
    """mask_zero=True makes a mask (tests/backend_tf/test_keras_recurrent.py); Conv1D drops it, as in Keras."""
    model = randomize(_text_model(mask_zero=True))
    ids = np.random.default_rng(0).integers(0, 12, size=(4, 6))
    assert relative_error(attribx.forward(model, ids, engine="numpy"), model(ids)) <= TOL32


def test_free_input_size_needs_a_shape():
    model = seq((None, None, 3), L.Conv2D(2, 3), L.GlobalAveragePooling2D())
    with pytest.raises(attribx.InputError, match="input_shape"):
        attribx.translate(model)
    randomize(model)
    x = sample((7, 6, 3))
    assert relative_error(attribx.forward(model, x, engine="numpy"), model(x)) <= TOL32


def test_unbuilt_sequential_builds_with_the_data_shape():
    model = keras.Sequential([L.Dense(4, activation="relu"), L.Dense(2)])
    x = sample((5,))
    out = attribx.forward(model, x, engine="numpy")      # builds it with x's shape
    randomize(model)
    assert relative_error(attribx.forward(model, x, engine="numpy"), model(x)) <= TOL32
    assert out.shape == (2, 2)


# -- nested models -------------------------------------------------------------------------------------------------
def _nested():
    inner = keras.Sequential([keras.Input((6, 6, 4)), L.Conv2D(4, 3, padding="same", name="conv"),
                              L.BatchNormalization(name="bn"), L.ReLU(name="relu")], name="block")
    j = keras.Input((6, 6, 4))
    k = L.Conv2D(4, 1, name="conv")(j)                   # same name as in `block`: prefixes keep them apart
    branch = keras.Model(j, L.Add(name="res")([j, k]), name="branch")
    i = keras.Input((6, 6, 3), name="x")
    h = L.Conv2D(4, 3, padding="same", name="stem")(i)
    h = inner(h)
    h = branch(h)
    o = L.Dense(3, name="head")(L.GlobalAveragePooling2D(name="gap")(h))
    return keras.Model(i, o, name="outer")


def test_nested_models_flatten_with_prefixed_names(float64):
    model = _nested()
    x = sample((6, 6, 3), dtype=float64)
    randomize(model)
    want = np.asarray(model(x))
    g = attribx.translate(model)
    assert relative_error(attribx.forward(g, x, engine="numpy"), want) <= TOL64
    names = {n.name for n in g.nodes}
    assert {"stem", "block/conv", "block/relu", "branch/conv", "branch/res", "gap", "head"} <= names
    aliases = g.meta["aliases"]
    assert aliases["block/bn"] == "block/conv"          # folded, still addressable
    assert aliases["relu"] == "block/relu" and aliases["res"] == "branch/res"   # unique bare names
    assert "conv" not in aliases                           # ambiguous: only the prefixed names
    ds = attribx.explain(model, x, "lrp.epsilon", engine="numpy", layers=["relu", "branch/conv"])
    assert ds is not None


def test_nested_functional_inside_sequential():
    j = keras.Input((5,))
    inner = keras.Model(j, L.Dense(4, activation="relu", name="d")(j), name="inner")
    model = randomize(keras.Sequential([keras.Input((5,)), inner, L.Dense(2, name="out")]))
    x = sample((5,))
    g = check_nested(model, x)
    assert "inner/d" in g and "out" in g


def check_nested(model, x):
    g = attribx.translate(model)
    assert relative_error(attribx.forward(g, x, engine="numpy"), model(x)) <= TOL32
    return g


# -- .keras files: API and CLI --------------------------------------------------------------------------------------
def test_keras_file_round_trip_and_cli(tmp_path):
    keras.utils.set_random_seed(0)
    model = randomize(seq((8, 8, 3), L.Conv2D(4, 3, activation="relu", name="conv"),
                          L.BatchNormalization(name="bn"), L.MaxPooling2D(name="pool"),
                          L.Flatten(name="flat"), L.Dense(3, name="logits")))
    path = tmp_path / "net.keras"
    model.save(path)
    x = sample((8, 8, 3))
    loaded = attribx.load_model(str(path))
    assert relative_error(attribx.forward(loaded, x, engine="numpy"), model(x)) <= TOL32
    ds = attribx.explain(str(path), x, "lrp.epsilon", engine="numpy")
    rel = relevance_of(ds)
    assert rel.dims == ("sample", "height", "width", "channel") and np.isfinite(rel.values).all()

    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "rel.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-m", "attribx.cli", "explain", str(path), str(tmp_path / "x.npy"),
                          "-m", "lrp.epsilon", "--engine", "numpy", "-o", str(out)],
                         capture_output=True, text=True, env=env, timeout=300, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.exists()
    with attribx.open_relevance(str(out)) as back:
        assert relative_error(np.asarray(relevance_of(back).values), rel.values) <= 1e-5
