"""The zoo shared by the Keras-vs-torch tests (tests/backend_tf/test_cross_framework.py) and the cross-backend
matrix (tests/matrix): five small models defined once as numpy weights in PyTorch's convention, each
buildable three ways (Keras, PyTorch, attribx.GraphBuilder), and the comparison rules.

No framework is imported at module level: Keras and torch are imported by the builders that need them,
so the torch-free and the TensorFlow-free environments can import this module.
"""
from __future__ import annotations

import importlib.util

import numpy as np

import attribx
from attribx import GraphBuilder


def _keras():
    import keras
    return keras


HAS_TORCH = importlib.util.find_spec("torch") is not None
BOUNDED = {"lrp.epsilon_gamma_box", "lrp.z_box"}
RANDOM = {"smoothgrad"}      # noise is drawn in the input's own layout: compared per layout only
TOL = 1e-4


def methods():
    """attribx's own methods that explain any network (a third-party plugin installed beside it, such as the
    template's example.*, is tested by its own suite; attention_rollout reads attention maps, which these
    networks lack: tests/test_attention_rollout.py)."""
    reg = attribx.plugins.registry().methods
    return sorted(m for m in reg if ("." not in m or m.startswith("lrp.")) and reg[m].family != "attention")


def method_params(method):
    p = {"low": -3.0, "high": 3.0} if method in BOUNDED else {}
    if method in RANDOM:
        p.update(seed=0, samples=3)
    if method == "integrated_gradients":
        p.update(steps=8)
    return p


def engines():
    names = ["numpy"]
    reg = attribx.plugins.registry()
    for name in ("tensorflow", "torch"):
        if name in reg.engines:
            names.append(name)
    return names


# -- the zoo: weights in torch's convention, and three builders per model ------------------------------
def _conv_w(rng, o, c, *k):
    return (rng.normal(size=(o, c, *k)) / np.sqrt(c * np.prod(k))).astype(np.float32)


def _lin_w(rng, o, i):
    return (rng.normal(size=(o, i)) / np.sqrt(i)).astype(np.float32)


def _bias(rng, n):
    return (0.1 * rng.normal(size=n)).astype(np.float32)


def _bn(rng, n):
    return dict(mean=(0.2 * rng.normal(size=n)).astype(np.float32),
                var=rng.uniform(0.5, 1.5, size=n).astype(np.float32),
                scale=rng.uniform(0.5, 1.5, size=n).astype(np.float32),
                bias=(0.1 * rng.normal(size=n)).astype(np.float32))


def _keras_conv(w):
    """(O, C, *k) -> Keras (*k, C, O)."""
    return np.moveaxis(w, (0, 1), (-1, -2))


def _keras_dense_after_flatten(w, chw):
    """A torch dense weight reading a (C, H, W) flatten -> the Keras kernel reading (H, W, C)."""
    c, h, wd = chw
    return w.reshape(len(w), c, h, wd).transpose(2, 3, 1, 0).reshape(h * wd * c, len(w))


def _keras_bn(layer_input, p, name):
    keras = _keras()
    bn = keras.layers.BatchNormalization(epsilon=1e-3, name=name)
    out = bn(layer_input)
    bn.set_weights([p["scale"], p["bias"], p["mean"], p["var"]])
    return out


class Zoo:
    """One model: ``keras()``, ``torch()`` and ``graph()`` build it; ``x`` is its input (Keras layout)."""

    def __init__(self, name, in_shape_keras, to_channel_first):
        self.name = name
        self.in_shape = in_shape_keras
        self.to_cf = to_channel_first      # axes permutation Keras layout -> channel-first


def mlp(rng):
    z = Zoo("mlp", (12,), (0, 1))
    w1, b1, w2, b2, w3, b3 = _lin_w(rng, 16, 12), _bias(rng, 16), _lin_w(rng, 16, 16), _bias(rng, 16), \
        _lin_w(rng, 5, 16), _bias(rng, 5)

    def k():
        keras = _keras()
        i = keras.Input((12,))
        h = keras.layers.Dense(16, activation="relu", name="fc1")(i)
        h = keras.layers.Dense(16, name="fc2")(h)
        h = keras.layers.ReLU(name="act2")(h)
        o = keras.layers.Dense(5, name="out")(h)
        m = keras.Model(i, o)
        for name, w, b in (("fc1", w1, b1), ("fc2", w2, b2), ("out", w3, b3)):
            m.get_layer(name).set_weights([w.T, b])
        return m

    def t():
        import torch
        m = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 5))
        for layer, w, b in ((m[0], w1, b1), (m[2], w2, b2), (m[4], w3, b3)):
            layer.weight.data, layer.bias.data = torch.from_numpy(w), torch.from_numpy(b)
        return m.eval()

    def g():
        gb = GraphBuilder("mlp")
        h = gb.relu(gb.linear(gb.input("x", (12,)), w1, b1))
        h = gb.relu(gb.linear(h, w2, b2))
        return gb.build(gb.linear(h, w3, b3))

    z.keras, z.torch, z.graph = k, t, g
    return z


def vgg_bn(rng):
    z = Zoo("vgg_bn", (8, 8, 3), (0, 3, 1, 2))
    c1, c2 = _conv_w(rng, 6, 3, 3, 3), _conv_w(rng, 8, 6, 3, 3)
    bn1, bn2 = _bn(rng, 6), _bn(rng, 8)
    f1, fb1, f2, fb2 = _lin_w(rng, 10, 8 * 2 * 2), _bias(rng, 10), _lin_w(rng, 4, 10), _bias(rng, 4)

    def k():
        keras = _keras()
        i = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv1")(i)
        h = _keras_bn(h, bn1, "bn1")
        h = keras.layers.ReLU(name="relu1")(h)
        h = keras.layers.MaxPooling2D(2, name="pool1")(h)
        h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2")(h)
        h = _keras_bn(h, bn2, "bn2")
        h = keras.layers.Activation("relu", name="relu2")(h)
        h = keras.layers.MaxPooling2D(2, name="pool2")(h)
        h = keras.layers.Flatten(name="flatten")(h)
        h = keras.layers.Dense(10, activation="relu", name="fc1")(h)
        h = keras.layers.Dropout(0.5, name="drop")(h)
        o = keras.layers.Dense(4, name="fc2")(h)
        m = keras.Model(i, o)
        m.get_layer("conv1").set_weights([_keras_conv(c1)])
        m.get_layer("conv2").set_weights([_keras_conv(c2)])
        m.get_layer("fc1").set_weights([_keras_dense_after_flatten(f1, (8, 2, 2)), fb1])
        m.get_layer("fc2").set_weights([f2.T, fb2])
        return m

    def t():
        import torch
        nn = torch.nn
        m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6, eps=1e-3), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1, bias=False),
                          nn.BatchNorm2d(8, eps=1e-3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(32, 10), nn.ReLU(), nn.Dropout(0.5), nn.Linear(10, 4))
        m[0].weight.data, m[4].weight.data = torch.from_numpy(c1), torch.from_numpy(c2)
        for bn, p in ((m[1], bn1), (m[5], bn2)):
            bn.running_mean.data, bn.running_var.data = torch.from_numpy(p["mean"]), torch.from_numpy(p["var"])
            bn.weight.data, bn.bias.data = torch.from_numpy(p["scale"]), torch.from_numpy(p["bias"])
        m[9].weight.data, m[9].bias.data = torch.from_numpy(f1), torch.from_numpy(fb1)
        m[12].weight.data, m[12].bias.data = torch.from_numpy(f2), torch.from_numpy(fb2)
        return m.eval()

    def g():
        gb = GraphBuilder("vgg_bn")
        h = gb.input("x", (3, 8, 8))
        for c, bn in ((c1, bn1), (c2, bn2)):
            h = gb.conv(h, c, padding=1)
            h = gb.batch_norm(h, bn["mean"], bn["var"], bn["scale"], bn["bias"], eps=1e-3)
            h = gb.max_pool(gb.relu(h), 2)
        h = gb.relu(gb.linear(gb.flatten(h), f1, fb1))
        return gb.build(gb.linear(h, f2, fb2))

    z.keras, z.torch, z.graph = k, t, g
    return z


def residual(rng):
    z = Zoo("residual", (8, 8, 3), (0, 3, 1, 2))
    c0, cb0 = _conv_w(rng, 6, 3, 3, 3), _bias(rng, 6)
    c1, cb1 = _conv_w(rng, 6, 6, 3, 3), _bias(rng, 6)
    c2, cb2 = _conv_w(rng, 6, 6, 3, 3), _bias(rng, 6)
    f, fb = _lin_w(rng, 4, 6), _bias(rng, 4)

    def k():
        keras = _keras()
        i = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="stem")(i)
        r = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(h)
        r = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(r)
        h = keras.layers.Add(name="add")([h, r])
        h = keras.layers.ReLU(name="relu")(h)
        h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
        o = keras.layers.Dense(4, name="fc")(h)
        m = keras.Model(i, o)
        for name, w, b in (("stem", c0, cb0), ("conv1", c1, cb1), ("conv2", c2, cb2)):
            m.get_layer(name).set_weights([_keras_conv(w), b])
        m.get_layer("fc").set_weights([f.T, fb])
        return m

    def t():
        import torch
        nn = torch.nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem, self.conv1, self.conv2 = (nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1),
                                                     nn.Conv2d(6, 6, 3, padding=1))
                self.fc = nn.Linear(6, 4)

            def forward(self, x):
                h = torch.relu(self.stem(x))
                r = self.conv2(torch.relu(self.conv1(h)))
                h = torch.relu(h + r)
                return self.fc(h.mean(dim=(2, 3)))

        m = Net()
        for layer, w, b in ((m.stem, c0, cb0), (m.conv1, c1, cb1), (m.conv2, c2, cb2), (m.fc, f, fb)):
            layer.weight.data, layer.bias.data = torch.from_numpy(w), torch.from_numpy(b)
        return m.eval()

    def g():
        gb = GraphBuilder("residual")
        h = gb.relu(gb.conv(gb.input("x", (3, 8, 8)), c0, cb0, padding=1))
        r = gb.conv(gb.relu(gb.conv(h, c1, cb1, padding=1)), c2, cb2, padding=1)
        h = gb.relu(gb.add(h, r))
        return gb.build(gb.linear(gb.global_avg_pool(h, keepdims=False), f, fb))

    z.keras, z.torch, z.graph = k, t, g
    return z


def concat(rng):
    z = Zoo("concat", (8, 8, 3), (0, 3, 1, 2))
    a, ab = _conv_w(rng, 4, 3, 3, 3), _bias(rng, 4)
    b, bb = _conv_w(rng, 5, 3, 1, 1), _bias(rng, 5)
    c, cb = _conv_w(rng, 6, 9, 3, 3), _bias(rng, 6)
    f, fb = _lin_w(rng, 4, 6), _bias(rng, 4)

    def k():
        keras = _keras()
        i = keras.Input((8, 8, 3))
        h1 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="branch_a")(i)
        h2 = keras.layers.Conv2D(5, 1, activation="relu", name="branch_b")(i)
        h = keras.layers.Concatenate(name="cat")([h1, h2])
        h = keras.layers.ZeroPadding2D(1, name="pad")(h)
        h = keras.layers.Conv2D(6, 3, strides=2, activation="relu", name="merge")(h)
        h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
        o = keras.layers.Dense(4, name="fc")(h)
        m = keras.Model(i, o)
        for name, w, bias in (("branch_a", a, ab), ("branch_b", b, bb), ("merge", c, cb)):
            m.get_layer(name).set_weights([_keras_conv(w), bias])
        m.get_layer("fc").set_weights([f.T, fb])
        return m

    def t():
        import torch
        nn = torch.nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 5, 1)
                self.merge, self.fc = nn.Conv2d(9, 6, 3, stride=2, padding=1), nn.Linear(6, 4)

            def forward(self, x):
                h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
                return self.fc(torch.relu(self.merge(h)).mean(dim=(2, 3)))

        m = Net()
        for layer, w, bias in ((m.a, a, ab), (m.b, b, bb), (m.merge, c, cb), (m.fc, f, fb)):
            layer.weight.data, layer.bias.data = torch.from_numpy(w), torch.from_numpy(bias)
        return m.eval()

    def g():
        gb = GraphBuilder("concat")
        x = gb.input("x", (3, 8, 8))
        h = gb.concat(gb.relu(gb.conv(x, a, ab, padding=1)), gb.relu(gb.conv(x, b, bb)), axis=1)
        h = gb.relu(gb.conv(h, c, cb, stride=2, padding=1))
        return gb.build(gb.linear(gb.global_avg_pool(h, keepdims=False), f, fb))

    z.keras, z.torch, z.graph = k, t, g
    return z


def conv1d(rng):
    z = Zoo("conv1d", (16, 4), (0, 2, 1))
    c1, cb1 = _conv_w(rng, 6, 4, 3), _bias(rng, 6)
    c2, cb2 = _conv_w(rng, 8, 6, 3), _bias(rng, 8)
    f, fb = _lin_w(rng, 3, 8), _bias(rng, 3)

    def k():
        keras = _keras()
        i = keras.Input((16, 4))
        h = keras.layers.Conv1D(6, 3, padding="same", activation="relu", name="conv1")(i)
        h = keras.layers.MaxPooling1D(2, name="pool")(h)
        h = keras.layers.Conv1D(8, 3, activation="relu", name="conv2")(h)
        h = keras.layers.GlobalAveragePooling1D(name="gap")(h)
        o = keras.layers.Dense(3, name="fc")(h)
        m = keras.Model(i, o)
        for name, w, b in (("conv1", c1, cb1), ("conv2", c2, cb2)):
            m.get_layer(name).set_weights([_keras_conv(w), b])
        m.get_layer("fc").set_weights([f.T, fb])
        return m

    def t():
        import torch
        nn = torch.nn
        m = nn.Sequential(nn.Conv1d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(6, 8, 3),
                          nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 3))
        for layer, w, b in ((m[0], c1, cb1), (m[3], c2, cb2), (m[7], f, fb)):
            layer.weight.data, layer.bias.data = torch.from_numpy(w), torch.from_numpy(b)
        return m.eval()

    def g():
        gb = GraphBuilder("conv1d")
        h = gb.relu(gb.conv(gb.input("x", (4, 16)), c1, cb1, padding=1))
        h = gb.relu(gb.conv(gb.max_pool(h, 2), c2, cb2))
        return gb.build(gb.linear(gb.global_avg_pool(h, keepdims=False), f, fb))

    z.keras, z.torch, z.graph = k, t, g
    return z


ZOO = {f.__name__: f for f in (mlp, vgg_bn, residual, concat, conv1d)}


def make(name):
    """The zoo entry ``name`` with its fixed weights (the same in every process)."""
    return ZOO[name](np.random.default_rng(100 + list(ZOO).index(name)))


def example_input(name, z=None):
    """Three samples in the Keras layout."""
    z = z or make(name)
    return np.random.default_rng(200 + list(ZOO).index(name)).normal(size=(3,) + z.in_shape).astype(np.float32)


def build_zoo(keras_models=True):
    """name -> (zoo entry, Keras model or None, x in Keras layout); seeds fixed per model."""
    out = {}
    for i, name in enumerate(ZOO):
        if keras_models:
            _keras().utils.set_random_seed(i)
        z = make(name)
        out[name] = (z, z.keras() if keras_models else None, example_input(name, z))
    return out


def to_cf(z, a):
    """Keras-layout array -> channel-first (relevance that a method summed over channels has no channel
    axis left, and the spatial axes are already in the same order)."""
    a = np.asarray(a)
    return np.transpose(a, z.to_cf) if a.ndim == len(z.to_cf) else a
