"""scikit-learn's 8×8 digits and a small CNN trained on them in seconds: the image model that the tests,
the evaluator anchors (Quantus, CoRelAy) and the benchmarks share; and the numpy-only MLP graph that the
demo and the benchmark share (:func:`digits_graph`).

Why: image explanations and their evaluation need a model that has learned something, and nothing may
be downloaded at run time; the digits ship with scikit-learn. One definition keeps the tests and
benchmarks on the same model (zennit's anchor tests included: the ReLUs are modules, since zennit's
hooks see modules only and flat / w² send relevance to dead units, which a functional ReLU's gradient,
zennit's fallback, would zero).

torch and scikit-learn are imported inside the functions: ``attribx.datasets`` imports without them.
"""
from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from ..builder import GraphBuilder
from ..errors import AttribxError


def load_digits_images(scale: str = "signed") -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as float32 images (N, 1, 8, 8) and int64 labels; ``scale``: "signed" maps the
    16 grey levels to [-1, 1] (the tests' convention), "unit" to [0, 1] (what Quantus's baselines assume)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise AttribxError("the digits need scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    if scale == "signed":
        x = d.images / 8.0 - 1.0
    elif scale == "unit":
        x = d.images / 16.0
    else:
        raise AttribxError(f"scale must be 'signed' or 'unit', got {scale!r}")
    return x[:, None].astype(np.float32), d.target.astype(np.int64)


def digits_graph(hidden=(64, 32), seed=0):
    """Train an MLP on 8x8 digits (a few seconds) and return (graph, test images, test labels, accuracy).

    The images are in [0, 1], shape (n, 1, 8, 8); a quarter of the digits are held out.
    """
    try:        # optional dependency
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        raise AttribxError("the demo needs scikit-learn: pip install 'attribx[demo]'") from None

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)   # (n, 8, 8) in [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=seed)
    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=300, random_state=seed)
    clf.fit(x_train.reshape(len(x_train), -1), y_train)
    b = GraphBuilder("digits-mlp", trained_by="scikit-learn MLPClassifier")
    h = b.flatten(b.input("image", (1, 8, 8), layout="NCHW"))
    n_layers = len(clf.coefs_)
    for k, (w, bias) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        h = b.linear(h, w.T.astype(np.float32), bias.astype(np.float32), name=f"fc{k + 1}")
        if k < n_layers - 1:
            h = b.relu(h, name=f"relu{k + 1}")
    graph = b.build()
    acc = float(clf.score(x_test.reshape(len(x_test), -1), y_test))
    return graph, x_test[:, None], y_test.astype(np.int64), acc


def _torch():
    try:
        import torch
    except ImportError:
        raise AttribxError("the digits CNN needs PyTorch: pip install 'attribx[torch]'") from None
    return torch


@cache
def _model_class():
    """The nn.Module class, defined on first use so that importing this module needs no torch."""
    nn = _torch().nn

    class DigitsCNN(nn.Module):
        """conv 8 → ReLU → conv 16 → ReLU → max pool 2 → linear 32 → ReLU → linear 10, on (N, 1, 8, 8)."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.fc1 = nn.Linear(16 * 4 * 4, 32)
            self.fc2 = nn.Linear(32, 10)
            self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

        def forward(self, x):
            x = self.relu1(self.conv1(x))
            x = self.pool(self.relu2(self.conv2(x)))
            return self.fc2(self.relu3(self.fc1(x.flatten(1))))

    DigitsCNN.__module__, DigitsCNN.__qualname__ = __name__, "DigitsCNN"
    return DigitsCNN


def build_digits_cnn(seed: int = 0):
    """An untrained :class:`DigitsCNN` (a ``torch.nn.Module``) with weights drawn from ``seed``."""
    torch = _torch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _model_class()()


def train_digits_cnn(x: np.ndarray, y: np.ndarray, steps: int = 80, lr: float = 0.01, seed: int = 0) -> Any:
    """The CNN after ``steps`` full-batch Adam steps on the cross-entropy of ``(x, y)``, in eval mode.

    Deterministic: float32 on the CPU, one torch thread while training (also several times faster for
    tensors this small on a shared machine), the global torch RNG and thread count left as they were.
    """
    torch = _torch()
    model = build_digits_cnn(seed)
    xt, yt = torch.as_tensor(np.asarray(x, np.float32)), torch.as_tensor(np.asarray(y, np.int64))
    opt = torch.optim.Adam(model.parameters(), lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
