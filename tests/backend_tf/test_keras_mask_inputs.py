"""Keras MultiHeadAttention with masks (issue 19): an integer or boolean model input that only reaches
MultiHeadAttention as ``attention_mask`` / ``value_mask`` / ``key_mask`` is a mask input (it decides, takes no
relevance), and the padding masks of Embedding(mask_zero) on the query and value apply as Keras applies them
(dot_product_attention's fill without dropout, the masked Softmax layer's with it). References: Keras's own
forward, tf.GradientTape, a PyTorch twin with the same weights (its key_padding_mask a mask input of the torch
translation), and masked keys taking no relevance."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import attribx  # noqa: E402
from attribx import UnsupportedError  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from test_keras_translate import float64, randomize  # noqa: E402,F401

L = keras.layers
T, E = 5, 8


def _padded(dtype=np.float32, n=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, T, E)).astype(dtype)
    mask = np.ones((n, T), np.int32)
    mask[1, 3:] = 0
    mask[2, 1] = 0
    return x, mask


def encoder(dropout=0.0, first=True):
    """Self-attention whose keys are masked by an int (N, T) input (``value_mask``); the head reads the first
    position (Cropping1D), or every position (Flatten)."""
    x = keras.Input((T, E), name="x")
    m = keras.Input((T,), dtype="int32", name="mask")
    h = L.MultiHeadAttention(2, 4, dropout=dropout, name="mha")(x, x, value_mask=m)
    h = L.Flatten()(L.Cropping1D((0, T - 1))(h) if first else h)
    return randomize(keras.Model([x, m], L.Dense(3, name="head")(h)))


def _forward_matches(model, inputs, tol):
    g = attribx.translate(model)
    ref = model(list(inputs) if isinstance(inputs, tuple) else inputs, training=False).numpy()
    for engine in ("numpy", "tensorflow"):
        assert relative_error(np.asarray(attribx.forward(g, inputs, engine=engine)), ref) <= tol, engine
    return g


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("first", [True, False])
def test_value_mask_from_an_input_is_a_mask_input(float64, dropout, first):
    g = _forward_matches(encoder(dropout, first), _padded(np.float64), 1e-10)
    assert [v.name for v in g.mask_inputs] == ["mask"] and g.input.name == "x"


def test_boolean_attention_mask_with_causal_mask(float64):
    """(N, T, S) attention_mask and use_causal_mask together; rows left with no key: Keras's uniform weights."""
    x = keras.Input((T, E))
    m = keras.Input((T, T), dtype="bool")
    y = L.MultiHeadAttention(2, 4, name="mha")(x, x, attention_mask=m, use_causal_mask=True)
    model = randomize(keras.Model([x, m], L.Dense(3)(y)))
    xs, _ = _padded(np.float64)
    am = np.random.default_rng(3).random((3, T, T)) > 0.3
    _forward_matches(model, (xs, am), 1e-10)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_embedding_mask_zero_masks_queries_and_keys(float64, dropout):
    ids = keras.Input((T,), dtype="int32")
    e = L.Embedding(20, E, mask_zero=True)(ids)
    h = L.MultiHeadAttention(2, 4, dropout=dropout, name="mha")(e, e)
    model = randomize(keras.Model(ids, L.Dense(3)(L.Flatten()(h))))
    x = np.random.default_rng(4).integers(1, 20, (3, T)).astype(np.int32)
    x[1, 3:] = 0
    x[2, 1] = 0
    _forward_matches(model, x, 1e-10)


def test_a_float_mask_input_stays_refused():
    """A float input could be a bias added to the scores: not taken as a mask input."""
    x = keras.Input((T, E))
    m = keras.Input((T, T))
    y = L.MultiHeadAttention(2, 4)(x, x, attention_mask=m)
    with pytest.raises(UnsupportedError, match="2 inputs besides its mask inputs"):
        attribx.translate(keras.Model([x, m], y))


def test_gradient_x_input_equals_tensorflow():
    model = encoder()
    x, mask = _padded()
    ours = np.asarray(attribx.explain(model, (x, mask), "gradient_x_input", target=[0, 2, 1]))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model([xt, tf.constant(mask)], training=False)
        score = tf.reduce_sum(y * tf.one_hot([0, 2, 1], 3, dtype=y.dtype))
    ref = (tape.gradient(score, xt) * xt).numpy()
    assert relative_error(ours, ref) <= 1e-5
    assert not ours[mask == 0].any()


@pytest.mark.parametrize("method", ["lrp.attn", "lrp.cp"])
def test_masked_keys_take_no_relevance_and_padding_content_does_not_matter(method):
    model = encoder()
    x, mask = _padded()
    rel = np.asarray(attribx.explain(model, (x, mask), method, target=1))
    assert np.isfinite(rel).all() and not rel[mask == 0].any() and np.abs(rel[mask == 1]).sum(-1).all()
    other = x.copy()
    other[mask == 0] = 7.0
    again = np.asarray(attribx.explain(model, (other, mask), method, target=1))
    assert relative_error(again, rel) <= 1e-6


TWIN_METHODS = ("lrp.attn", "lrp.cp", "gradient_x_input")

TORCH_TWIN = f"T, E, METHODS = {T}, {E}, {TWIN_METHODS!r}\n" + '''
import sys, math, numpy as np, torch, torch.nn as nn, attribx
d = np.load(sys.argv[1] + "/weights.npz")
t = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)


def linear(kernel, bias):
    layer = nn.Linear(kernel.shape[0], kernel.shape[1])
    layer.weight.data, layer.bias.data = t(kernel.T), t(bias.reshape(-1))
    return layer


class Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (linear(d[p + "k"].reshape(E, -1), d[p + "b"]) for p in ("q", "k", "v"))
        self.o = linear(d["ok"].reshape(-1, E), d["ob"])
        self.head = linear(d["hk"], d["hb"])

    def forward(self, x, key_padding_mask):
        n = x.shape[0]
        q, k, v = (f(x).view(n, T, 2, 4).transpose(1, 2) for f in (self.q, self.k, self.v))
        s = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(4))
        s = s.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        c = (s.softmax(-1) @ v).transpose(1, 2).reshape(n, T, E)
        return self.head(self.o(c)[:, 0])


net = Twin().eval()
x, pad = t(d["x"]), torch.tensor(d["mask"] == 0)
out = {"logits": net(x, pad).detach().numpy()}
for method in METHODS:
    out[method] = np.asarray(attribx.explain(net, (x, pad), method, target=[0, 2, 1], engine="numpy"))
np.savez(sys.argv[1] + "/torch.npz", **out)
'''


@pytest.mark.slow
def test_keras_encoder_and_its_torch_twin_give_the_same_relevance(tmp_path):
    """The same weights in a hand-written torch encoder whose key_padding_mask (True: padding) is a mask input
    of the torch translation: the same forward and relevance (≤1e-4 in float32) for AttnLRP, CP-LRP and
    gradient x input. Torch runs in a subprocess (it is not loaded next to TensorFlow here)."""
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    model = encoder()
    mha, head = model.get_layer("mha"), model.get_layer("head")
    w = {}
    for p, dense in (("q", mha._query_dense), ("k", mha._key_dense), ("v", mha._value_dense),
                     ("o", mha._output_dense), ("h", head)):
        w[p + "k"], w[p + "b"] = (np.asarray(v.numpy()) for v in (dense.kernel, dense.bias))
    x, mask = _padded()
    np.savez(tmp_path / "weights.npz", x=x, mask=mask, **w)
    done = subprocess.run([sys.executable, "-c", TORCH_TWIN, str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = np.load(tmp_path / "torch.npz")
    assert relative_error(ref["logits"], model([x, mask], training=False).numpy()) <= 1e-5
    for method in TWIN_METHODS:
        ours = np.asarray(attribx.explain(model, (x, mask), method, target=[0, 2, 1], engine="numpy"))
        assert np.abs(ours).max() > 0
        assert relative_error(ours, ref[method]) <= 1e-4, method


@pytest.mark.parametrize("method", ["lrp.attn", "lrp.cp"])
def test_the_masked_softmax_layer_path_gives_the_same_relevance(method):
    """With dropout (inference still takes Keras's Softmax-layer path: weights zeroed after the softmax) and
    without: the same function on padded keys, and the same relevance — CP-LRP still holds the masked
    attention weights constant."""
    plain, dropped = encoder(), encoder(dropout=0.2)
    dropped.set_weights(plain.get_weights())
    x, mask = _padded()
    a = np.asarray(attribx.explain(plain, (x, mask), method, target=1))
    b = np.asarray(attribx.explain(dropped, (x, mask), method, target=1))
    assert relative_error(b, a) <= 1e-6


def test_two_signal_inputs_and_a_mask_input_equal_tensorflow():
    """A real-valued second Input (a signal) and an int mask Input at once: one relevance per signal input, each
    gradient x input as tf.GradientTape's; the mask may be left out of the tuple (it then attends everywhere)."""
    x = keras.Input((T, E), name="x")
    side = keras.Input((T, 4), name="side")
    m = keras.Input((T,), dtype="int32", name="mask")
    h = L.Add()([x, L.Dense(E)(side)])
    h = L.MultiHeadAttention(2, 4, name="mha")(h, h, value_mask=m)
    model = randomize(keras.Model([x, side, m], L.Dense(3, name="head")(L.Flatten()(h))))
    g = attribx.translate(model)
    assert [v.name for v in g.signal_inputs] == ["x", "side"] and [v.name for v in g.mask_inputs] == ["mask"]
    xv, mask = _padded()
    sv = np.random.default_rng(1).normal(size=(3, T, 4)).astype(np.float32)
    for mv, given in ((mask, (xv, sv, mask)), (np.ones_like(mask), (xv, sv))):
        rel = attribx.explain(model, given, "gradient_x_input", target=[0, 2, 1])
        xt, st = tf.constant(xv), tf.constant(sv)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([xt, st])
            y = model([xt, st, tf.constant(mv)], training=False)
            score = tf.reduce_sum(y * tf.one_hot([0, 2, 1], 3, dtype=y.dtype))
        for r, t in zip(rel, (xt, st)):
            assert relative_error(np.asarray(r), (tape.gradient(score, t) * t).numpy()) <= 1e-5
