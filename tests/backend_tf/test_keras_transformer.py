"""Transformers from Keras 3 (issue 19): LayerNormalization, RMSNormalization, the transformer activations,
EinsumDense, MultiHeadAttention, UpSampling2D and Resizing translate with a forward pass equal to Keras's
(float64 where Keras runs it); a small Keras ViT translates, and its relevance equals an independent
construction of the same network (attribx.GraphBuilder with the same weights, and TensorFlow's own
gradient for gradient x input)."""
from __future__ import annotations

import functools

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import attribx  # noqa: E402
from attribx import UnsupportedError  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from attribx.translation import converter  # noqa: E402
from test_keras_translate import check, float64, randomize, sample, seq  # noqa: E402,F401

L = keras.layers


# ----------------------------------------------------------------------------------------------
# normalisation and activations


@pytest.mark.parametrize("kw", [{}, {"axis": [1, 2]}, {"axis": 1}, {"center": False}, {"scale": False},
                                {"center": False, "scale": False, "epsilon": 1e-2}])
def test_layer_normalization(kw, float64):
    g = check(seq((4, 6), L.LayerNormalization(**kw)), sample((4, 6), dtype=float64) * 3 + 1)
    assert [n.op for n in g.nodes] == ["layer_norm"]


def test_layer_normalization_on_channels_after_a_conv(float64):
    """Channels-last LayerNormalization (ConvNeXt) on a value stored channel-first: no transpose needed."""
    g = check(seq((6, 6, 3), L.Conv2D(4, 3), L.LayerNormalization(), L.Conv2D(2, 1)), sample((6, 6, 3), dtype=float64))
    assert [n.op for n in g.nodes].count("transpose") == 2          # in and out, as for any conv stack


@pytest.mark.filterwarnings("ignore:You passed `rms_scaling=True`")
def test_layer_normalization_rms_scaling_is_refused():
    with pytest.raises(UnsupportedError, match=r"rms_scaling=True.*RMSNormalization translates"):
        attribx.translate(seq((5,), L.LayerNormalization(rms_scaling=True)))


@pytest.mark.skipif(not hasattr(keras.layers, "RMSNormalization"), reason="Keras without RMSNormalization")
@pytest.mark.parametrize("axis", [-1, [1, 2]])
def test_rms_normalization(axis, float64):
    g = check(seq((3, 5), L.RMSNormalization(axis=axis, epsilon=1e-3)), sample((3, 5), dtype=float64) + 0.5)
    assert [n.op for n in g.nodes] == ["rms_norm"]


ACTIVATIONS = {"gelu": ("gelu", "none"), "gelu_tanh": (functools.partial(keras.activations.gelu, approximate=True),
                                                       "tanh"),
               "silu": ("silu", None), "swish": ("swish", None), "hard_silu": ("hard_silu", None),
               "hard_swish": ("hard_swish", None), "hard_sigmoid": ("hard_sigmoid", None)}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_transformer_activations(name, float64):
    """Keras's own definitions (hard_sigmoid = relu6(x + 3) / 6 in Keras 3), fused into Dense and as layers."""
    act, approximate = ACTIVATIONS[name]
    x = sample((6,), dtype=float64) * 4
    for model in (seq((6,), L.Dense(8, activation=act)), seq((6,), L.Dense(8), L.Activation(act))):
        g = check(model, x)
        if approximate:
            assert [n for n in g.nodes if n.op == "gelu"][0].attrs["approximate"] == approximate


def test_keras_hard_sigmoid_is_relu6_over_6():
    """The definition the converter assumes (older Keras used 0.2 x + 0.5)."""
    x = np.linspace(-4, 4, 33)
    np.testing.assert_allclose(np.asarray(keras.activations.hard_sigmoid(x)), np.clip(x + 3, 0, 6) / 6, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# EinsumDense


EINSUMS = [("abc,cd->abd", (4, 6), (4, 5), "d"), ("abc,cde->abde", (4, 6), (4, 2, 3), "de"),
           ("abcd,cde->abe", (4, 2, 3), (4, 5), "e"), ("...b,bc->...c", (4, 6), (5,), "c"),
           ("ab,bc->ac", (6,), (5,), None), ("abc,cd->adb", (4, 6), (5, 4), "d"),
           ("abcd,dbe->aec", (2, 3, 4), (5, 3), "e")]


@pytest.mark.parametrize("equation,in_shape,out_shape,bias", EINSUMS)
def test_einsum_dense(equation, in_shape, out_shape, bias, float64):
    layer = L.EinsumDense(equation, output_shape=out_shape, bias_axes=bias, activation="gelu")
    g = check(seq(in_shape, layer), sample(in_shape, dtype=float64))
    assert "linear" in [n.op for n in g.nodes]


@pytest.mark.parametrize("equation,shape", [("abc,bcd->abd", (4, 5)), ("abc,cd->abcd", (4, 6, 5))])
def test_einsum_dense_that_is_no_dense_projection_is_refused(equation, shape):
    model = seq((4, 6), L.EinsumDense(equation, output_shape=shape))
    with pytest.raises(UnsupportedError, match=f"equation '{equation}' is not a dense projection"):
        attribx.translate(model)


# ----------------------------------------------------------------------------------------------
# MultiHeadAttention


def _mha_model(causal=False, cross=False, **kw):
    i = keras.Input((5, 8))
    other = L.Dense(8, name="memory")(i) if cross else i
    mha = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha", **kw)
    y = mha(i, other, use_causal_mask=True) if causal else mha(i, other)
    return keras.Model(i, L.Dense(3, name="head")(y))


@pytest.mark.parametrize("case", [{}, {"causal": True}, {"cross": True}, {"value_dim": 3, "use_bias": False},
                                  {"output_shape": 6}])
def test_multi_head_attention(case, float64):
    g = check(_mha_model(**case), sample((5, 8), dtype=float64))
    ops = [n.op for n in g.nodes]
    assert ops.count("matmul") == 2 and ops.count("softmax") == 1


def test_multi_head_attention_with_an_attention_mask_is_refused():
    i = keras.Input((5, 8))
    m = keras.Input((5, 5))
    y = L.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(i, i, attention_mask=m)
    with pytest.raises(UnsupportedError):
        attribx.translate(keras.Model([i, m], y))


# ----------------------------------------------------------------------------------------------
# resizing


@pytest.mark.parametrize("layer", [L.UpSampling2D(2), L.UpSampling2D((2, 3), interpolation="bilinear"),
                                   L.Resizing(12, 15, interpolation="nearest"), L.Resizing(9, 11),
                                   L.Resizing(3, 4)], ids=["up_nearest", "up_bilinear", "resize_nearest",
                                                          "resize_bilinear", "resize_down_bilinear"])
def test_resizing_layers(layer):
    """(In float32: TensorFlow's resize computes in float32.)"""
    g = check(seq((6, 5, 3), L.Conv2D(4, 1), layer, L.Conv2D(2, 1)), sample((6, 5, 3)))
    assert "resize" in [n.op for n in g.nodes]


def test_a_resize_without_exact_translation_is_refused():
    with pytest.raises(UnsupportedError, match="interpolation='bicubic'"):
        attribx.translate(seq((6, 5, 3), L.Resizing(9, 11, interpolation="bicubic")))


# ----------------------------------------------------------------------------------------------
# a small ViT


@keras.saving.register_keras_serializable(package="attribx_tests")
class ClassToken(L.Layer):
    """A learned token before the patches (what torchvision's ViT concatenates)."""

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="random_normal", name="token")

    def call(self, x):
        tokens = keras.ops.broadcast_to(self.token, (keras.ops.shape(x)[0], 1, x.shape[-1]))
        return keras.ops.concatenate([keras.ops.cast(tokens, x.dtype), x], axis=1)


@keras.saving.register_keras_serializable(package="attribx_tests")
class PositionEmbedding(L.Layer):
    """Learned position embeddings added to the tokens."""

    def build(self, input_shape):
        self.position = self.add_weight(shape=tuple(input_shape[1:]), initializer="random_normal", name="position")

    def call(self, x):
        return x + self.position


@converter("keras", ClassToken)
def class_token(ctx, layer, inputs):
    """A ``fill`` of the token per sample, concatenated before the patches."""
    (x,) = inputs
    x = ctx.keras_order(x)
    token = ctx.emit("fill", [x], params={"value": layer.token.numpy()[0].astype(ctx.np_dtype)},
                     name=ctx.sub("token"))
    return ctx.emit("concat", [token, x], attrs={"axis": 1})


@converter("keras", PositionEmbedding)
def position_embedding(ctx, layer, inputs):
    (x,) = inputs
    x = ctx.keras_order(x)
    return ctx.emit("add", [x, ctx.constant(layer.position.numpy(), "position")])


class _Plugin:
    @attribx.hookimpl
    def attribx_converters(self):
        return [class_token, position_embedding]


@pytest.fixture
def vit_plugin():
    name = attribx.plugins.register(_Plugin(), "test-keras-vit")
    try:
        yield name
    finally:
        attribx.plugins.unregister(name)


DIM, HEADS, MLP, PATCH, SIZE, CLASSES = 16, 2, 32, 4, 8, 3


def keras_vit(seed=0):
    """Patch embedding (Conv2D), class token, position embedding, 2 pre-norm blocks, head on the class token."""
    keras.utils.set_random_seed(seed)
    i = keras.Input((SIZE, SIZE, 3))
    h = L.Conv2D(DIM, PATCH, strides=PATCH, name="patches")(i)
    h = L.Reshape(((SIZE // PATCH) ** 2, DIM), name="tokens")(h)
    h = ClassToken(name="cls")(h)
    h = PositionEmbedding(name="pos")(h)
    for b in range(2):
        a = L.LayerNormalization(epsilon=1e-6, name=f"ln{b}a")(h)
        a = L.MultiHeadAttention(HEADS, DIM // HEADS, name=f"mha{b}")(a, a)
        h = L.Add(name=f"res{b}a")([h, a])
        m = L.LayerNormalization(epsilon=1e-6, name=f"ln{b}b")(h)
        m = L.Dense(MLP, activation="gelu", name=f"mlp{b}a")(m)
        m = L.Dense(DIM, name=f"mlp{b}b")(m)
        h = L.Add(name=f"res{b}b")([h, m])
    h = L.LayerNormalization(epsilon=1e-6, name="ln")(h)
    h = L.Cropping1D((0, (SIZE // PATCH) ** 2), name="cls_out")(h)
    h = L.Flatten(name="flat")(h)
    return randomize(keras.Model(i, L.Dense(CLASSES, name="head")(h), name="vit"), seed)


def _by_hand(model):
    w = {v.path: np.asarray(v.numpy(), dtype=np.float64) for v in model.weights}
    b = attribx.GraphBuilder("vit_by_hand")
    n = (SIZE // PATCH) ** 2
    x = b.input("x", (3, SIZE, SIZE))
    p = b.conv(x, np.transpose(w["patches/kernel"], (3, 2, 0, 1)), w["patches/bias"], stride=PATCH)
    p = b.transpose(b.reshape(p, (DIM, n)), (0, 2, 1))
    cls = b.add_node("fill", [p], params={"value": w["cls/token"][0]})
    h = b.add(b.concat(cls, p, axis=1), b.constant(w["pos/position"]))

    def ln(t, name):
        return b.add_node("layer_norm", [t], params={"scale": w[f"{name}/gamma"], "bias": w[f"{name}/beta"]},
                          axes=(-1,), eps=1e-6)

    def proj(t, name, heads_out=True):
        k = w[f"{name}/kernel"]
        if heads_out:                                   # (D, H, dk): linear to H * dk, then (T, H, dk)
            y = b.linear(t, k.reshape(DIM, -1).T, w[f"{name}/bias"].reshape(-1))
            return b.reshape(y, (n + 1, HEADS, -1))
        y = b.linear(b.reshape(t, (n + 1, -1)), k.reshape(-1, k.shape[-1]).T, w[f"{name}/bias"])
        return y

    for blk in range(2):
        a = ln(h, f"ln{blk}a")
        q = b.transpose(proj(a, f"mha{blk}/query"), (0, 2, 1, 3))
        k = b.transpose(proj(a, f"mha{blk}/key"), (0, 2, 3, 1))
        v = b.transpose(proj(a, f"mha{blk}/value"), (0, 2, 1, 3))
        s = b.softmax(b.mul(b.add_node("matmul", [q, k]), b.constant(1 / np.sqrt(DIM // HEADS))), axis=-1)
        c = b.transpose(b.add_node("matmul", [s, v]), (0, 2, 1, 3))
        a = proj(c, f"mha{blk}/attention_output", heads_out=False)
        h = b.add(h, a)
        m = b.gelu(b.linear(ln(h, f"ln{blk}b"), w[f"mlp{blk}a/kernel"].T, w[f"mlp{blk}a/bias"]))
        h = b.add(h, b.linear(m, w[f"mlp{blk}b/kernel"].T, w[f"mlp{blk}b/bias"]))
    h = b.reshape(b.slice(ln(h, "ln"), axis=1, start=0, stop=1), (DIM,))
    return b.build(b.linear(h, w["head/kernel"].T, w["head/bias"]))


def test_keras_vit_translates_and_its_forward_equals_keras(vit_plugin, float64):
    model = keras_vit()
    x = sample((SIZE, SIZE, 3), n=3, dtype=float64)
    want = np.asarray(model(x, training=False))
    g = attribx.translate(model)
    ops = [n.op for n in g.nodes]
    assert ops.count("layer_norm") == 5 and ops.count("softmax") == 2 and ops.count("matmul") == 4
    for engine in ("numpy", "tensorflow", "torch"):
        if engine in attribx.plugins.registry().engines:
            assert relative_error(attribx.forward(g, x, engine=engine), want) <= 1e-8, engine


def test_the_hand_built_vit_computes_the_same_function(vit_plugin, float64):
    model = keras_vit()
    x = sample((SIZE, SIZE, 3), n=3, dtype=float64)
    want = np.asarray(model(x, training=False))
    got = attribx.forward(_by_hand(model), np.transpose(x, (0, 3, 1, 2)), engine="numpy")
    assert relative_error(got, want) <= 1e-8


@pytest.mark.parametrize("method", ["lrp.attn", "lrp.cp", "gradient_x_input", "lrp.epsilon"])
def test_keras_vit_relevance_equals_the_hand_built_graph(vit_plugin, method):
    """Same weights, independently built: the same relevance (≤1e-4 in float32), for AttnLRP too."""
    model = keras_vit()
    x = sample((SIZE, SIZE, 3), n=2)
    ours = np.asarray(attribx.explain(model, x, method, target=[0, 2], engine="numpy"))
    ref = np.asarray(attribx.explain(_by_hand(model), np.transpose(x, (0, 3, 1, 2)), method, target=[0, 2],
                                     engine="numpy"))
    assert relative_error(ours, np.transpose(ref, (0, 2, 3, 1))) <= 1e-4


def test_keras_vit_gradient_times_input_equals_tensorflow(vit_plugin):
    model = keras_vit()
    x = sample((SIZE, SIZE, 3), n=2)
    target = [1, 2]
    ours = np.asarray(attribx.explain(model, x, "gradient_x_input", target=target))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt, training=False)
        score = tf.reduce_sum(tf.gather(y, target, axis=1, batch_dims=0) * tf.eye(2, dtype=y.dtype))
    ref = (tape.gradient(score, xt) * xt).numpy()
    assert relative_error(ours, ref) <= 1e-4


# ----------------------------------------------------------------------------------------------
# the same ViT in PyTorch


#: Methods whose relevance must be the same from the Keras ViT and its PyTorch twin.
TWIN_METHODS = ("lrp.attn", "lrp.cp", "gradient_x_input")

TORCH_TWIN = f"DIM, HEADS, PATCH, SIZE, METHODS = {DIM}, {HEADS}, {PATCH}, {SIZE}, {TWIN_METHODS!r}\n" + '''
import sys, numpy as np, torch, torch.nn as nn, attribx
torch.set_default_dtype(torch.float32)
w = {k.replace(".", "/"): v for k, v in np.load(sys.argv[1] + "/weights.npz").items()}
t = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)


def linear(prefix, kernel):
    layer = nn.Linear(kernel.shape[0], kernel.shape[1])
    layer.weight.data, layer.bias.data = t(kernel.T), t(w[prefix + "/bias"].reshape(-1))
    return layer


def norm(prefix):
    layer = nn.LayerNorm(DIM, eps=1e-6)
    layer.weight.data, layer.bias.data = t(w[prefix + "/gamma"]), t(w[prefix + "/beta"])
    return layer


class Block(nn.Module):
    def __init__(self, b):
        super().__init__()
        m = f"mha{b}/"
        self.ln1, self.ln2 = norm(f"ln{b}a"), norm(f"ln{b}b")
        self.q, self.k, self.v = (linear(m + p, w[m + p + "/kernel"].reshape(DIM, -1)) for p in ("query", "key", "value"))
        self.o = linear(m + "attention_output", w[m + "attention_output/kernel"].reshape(-1, DIM))
        self.fc1 = linear(f"mlp{b}a", w[f"mlp{b}a/kernel"])
        self.fc2 = linear(f"mlp{b}b", w[f"mlp{b}b/kernel"])
        self.act = nn.GELU()

    def heads(self, x):
        n, length, _ = x.shape
        return x.reshape(n, length, HEADS, DIM // HEADS).transpose(1, 2)

    def forward(self, x):
        a = self.ln1(x)
        q, k, v = self.heads(self.q(a)), self.heads(self.k(a)), self.heads(self.v(a))
        s = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (DIM // HEADS) ** -0.5, dim=-1)
        c = torch.matmul(s, v).transpose(1, 2).reshape(x.shape)
        x = x + self.o(c)
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, DIM, PATCH, stride=PATCH)
        self.patches.weight.data = t(np.transpose(w["patches/kernel"], (3, 2, 0, 1)))
        self.patches.bias.data = t(w["patches/bias"])
        self.cls = nn.Parameter(t(w["cls/token"]))
        self.pos = nn.Parameter(t(w["pos/position"])[None])
        self.blocks = nn.Sequential(Block(0), Block(1))
        self.ln = norm("ln")
        self.head = linear("head", w["head/kernel"])

    def forward(self, x):
        p = self.patches(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), p], dim=1) + self.pos
        return self.head(self.ln(self.blocks(h))[:, 0])


net = ViT().eval()
x = np.load(sys.argv[1] + "/weights.npz")["x"]
out = {"logits": net(t(x)).detach().numpy()}
for method in METHODS:
    out[method] = np.asarray(attribx.explain(net, x, method, target=[0, 2], engine="numpy"))
np.savez(sys.argv[1] + "/torch.npz", **out)
'''


@pytest.mark.slow
def test_keras_vit_and_its_torch_twin_give_the_same_relevance(vit_plugin, tmp_path):
    """The same weights in a PyTorch ViT written with plain torch ops (nn.Linear, nn.LayerNorm, matmul,
    softmax, nn.GELU), translated by attribx's torch backend: the same forward and the same relevance
    (≤1e-4 in float32) for AttnLRP, CP-LRP and gradient x input. Torch runs in a subprocess (it is not
    loaded next to TensorFlow here)."""
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    model = keras_vit()
    x = sample((SIZE, SIZE, 3), n=2)
    np.savez(tmp_path / "weights.npz", x=np.transpose(x, (0, 3, 1, 2)),
             **{v.path.replace("/", "."): np.asarray(v.numpy()) for v in model.weights})
    done = subprocess.run([sys.executable, "-c", TORCH_TWIN, str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = np.load(tmp_path / "torch.npz")
    assert relative_error(ref["logits"], np.asarray(model(x, training=False))) <= 1e-5
    for method in TWIN_METHODS:
        ours = np.asarray(attribx.explain(model, x, method, target=[0, 2], engine="numpy"))
        assert np.abs(ours).max() > 0
        assert relative_error(ours, np.transpose(ref[method], (0, 2, 3, 1))) <= 1e-4, method
