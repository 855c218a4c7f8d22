"""A Keras CNN trained here on scikit-learn's digits: its LRP heatmaps point at the pixels it uses.

The check is a most-relevant-first (MoRF) pixel-flipping loop: removing pixels in the order of
``lrp.epsilon_plus_flat`` relevance must lower the true class's score faster than removing them in a
random order (a smaller area under the curve), averaged over held-out samples.
"""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
datasets = pytest.importorskip("sklearn.datasets")

import attribx  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]       # (n, 8, 8, 1), channels-last
    y = digits.target
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(32, activation="relu", name="fc1"),
        keras.layers.Dense(10, name="logits"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], epochs=30, batch_size=64, verbose=0)
    acc = float(np.mean(np.argmax(model.predict(x[1400:], verbose=0), axis=1) == y[1400:]))
    return model, x[1400:1520], y[1400:1520], acc


def morf_curve(model, x, y, order, steps=10, per_step=4):
    """Mean true-class score after removing (zeroing) the first k·per_step pixels of each order."""
    flat = x.reshape(len(x), -1).copy()
    scores = []
    rows = np.arange(len(x))
    for k in range(steps + 1):
        out = np.asarray(model(flat.reshape(x.shape), training=False))
        scores.append(float(out[rows, y].mean()))
        if k < steps:
            idx = order[:, k * per_step:(k + 1) * per_step]
            flat[rows[:, None], idx] = 0.0
    return np.array(scores)


def test_model_learned_the_digits(trained):
    assert trained[3] > 0.9


def test_lrp_pixel_flipping_falls_faster_than_random(trained):
    model, x, y, _ = trained
    r = attribx.explain(model, x, "lrp.epsilon_plus_flat", target=y)
    assert r.dims == ("sample", "height", "width", "channel")
    rel = np.asarray(r.values).reshape(len(x), -1)
    lrp_order = np.argsort(-rel, axis=1, kind="stable")
    rng = np.random.default_rng(0)
    random_order = np.stack([rng.permutation(rel.shape[1]) for _ in range(len(x))])
    lrp_curve = morf_curve(model, x, y, lrp_order)
    random_curve = morf_curve(model, x, y, random_order)
    assert lrp_curve[0] == pytest.approx(random_curve[0])
    # area under the curve (mean score over the flipping steps): LRP's is clearly smaller
    assert lrp_curve.mean() < random_curve.mean() - 0.1 * (random_curve[0] - random_curve[-1] + 1e-6)
    assert lrp_curve[-1] < random_curve[-1]      # after 40 of the 64 pixels
