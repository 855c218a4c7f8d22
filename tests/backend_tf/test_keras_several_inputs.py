"""A Keras functional model with two Input layers: both inputs are explained, each in its own layout
(NHWC for the image), against TensorFlow's own gradients and against the PyTorch twin with the same weights."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("attribx_tf")

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402

RNG = np.random.default_rng(0)
W = {"conv": RNG.normal(size=(4, 2, 3, 3)) * 0.5, "conv_b": RNG.normal(size=4) * 0.1,
     "fa": RNG.normal(size=(6, 4)) * 0.5, "fa_b": RNG.normal(size=6) * 0.1,
     "fb": RNG.normal(size=(6, 5)) * 0.5, "fb_b": RNG.normal(size=6) * 0.1,
     "out": RNG.normal(size=(3, 6)) * 0.5, "out_b": RNG.normal(size=3) * 0.1}    # torch's convention


def keras_model():
    image, extra = keras.Input((6, 6, 2), name="image"), keras.Input((5,), name="extra")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    h = keras.layers.Dense(6, name="fa")(keras.layers.GlobalAveragePooling2D(name="pool")(h))
    h = keras.layers.ReLU(name="relu")(keras.layers.Add(name="add")([h, keras.layers.Dense(6, name="fb")(extra)]))
    m = keras.Model([image, extra], keras.layers.Dense(3, name="out")(h))
    m.get_layer("conv").set_weights([W["conv"].transpose(2, 3, 1, 0), W["conv_b"]])
    for name in ("fa", "fb", "out"):
        m.get_layer(name).set_weights([W[name].T, W[f"{name}_b"]])
    return m


def data(n=3):
    g = np.random.default_rng(1)
    return g.normal(size=(n, 6, 6, 2)).astype("float32"), g.normal(size=(n, 5)).astype("float32")


def test_graph_forward_and_gradient_equal_tensorflow():
    m, (x1, x2) = keras_model(), data()
    graph = attribx.translate(m)
    assert [(v.name, v.dims) for v in graph.signal_inputs] == [
        ("image", ("sample", "height", "width", "channel")), ("extra", ("sample", "feature"))]
    assert relative_error(attribx.forward(m, (x1, x2)), np.asarray(m([x1, x2]))) <= 1e-5
    t1, t2 = tf.constant(x1), tf.constant(x2)
    with tf.GradientTape() as tape:
        tape.watch([t1, t2])
        y = m([t1, t2])[:, 2]
    refs = tape.gradient(y, [t1, t2])
    rel = attribx.explain(m, {"image": x1, "extra": x2}, "gradient", target=2)
    for r, ref in zip(rel.values(), refs):
        assert relative_error(r.values, ref.numpy()) <= 1e-5


@pytest.mark.parametrize("method,params", [("lrp.epsilon", {}), ("gradient_x_input", {}),
                                           ("integrated_gradients", {"steps": 8}), ("lrp.epsilon_plus", {})])
def test_equals_the_torch_twin(method, params):
    torch = pytest.importorskip("torch")
    pytest.importorskip("attribx_torch")

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = torch.nn.Conv2d(2, 4, 3), torch.nn.AdaptiveAvgPool2d(1)
            self.fa, self.fb, self.out = torch.nn.Linear(4, 6), torch.nn.Linear(5, 6), torch.nn.Linear(6, 3)

        def forward(self, image, extra):
            h = self.fa(self.pool(torch.relu(self.conv(image))).flatten(1))
            return self.out(torch.relu(h + self.fb(extra)))

    twin = Twin().eval()
    with torch.no_grad():
        for name in ("conv", "fa", "fb", "out"):
            getattr(twin, name).weight.copy_(torch.tensor(W[name]))
            getattr(twin, name).bias.copy_(torch.tensor(W[f"{name}_b"]))
    m, (x1, x2) = keras_model(), data()
    ours = attribx.explain(m, (x1, x2), method, target=1, **params)
    theirs = attribx.explain(twin, (torch.tensor(x1.transpose(0, 3, 1, 2)), torch.tensor(x2)), method, target=1,
                             **params)
    assert relative_error(ours[0].values.transpose(0, 3, 1, 2), theirs[0].values) <= 1e-4
    assert relative_error(ours[1].values, theirs[1].values) <= 1e-4
