"""Two ONNX models that need no framework, shared by tests/backend_onnx/test_onnx_resnet_lenet.py (numpy engine and
onnxruntime only: the tox env ``onnx``) and tests/matrix/test_matrix_onnx_models.py (the other engines):

* the trained LeNet-5 of ``../shared/data/mnist-lenet5`` (``lenet5.onnx``, opset 17, and 2000 MNIST test
  digits; its README gives the accuracy, 98.75%); tests skip when the folder is absent;
* torchvision's ResNet18 built with onnx.helper (:mod:`matrix.onnx_resnet`), random weights, seed 0.

Imports only numpy and attribx; the callers import onnx (with ``pytest.importorskip``) first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import attribx

LENET_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-lenet5"
LENET_ACCURACY = 0.9875          # the README's figure for the 2000 digits
RESNET_SHAPE = (1, 3, 64, 64)    # the relevance input; forward checks use 2 samples


class LeNet:
    def __init__(self, folder: Path):
        self.path = folder / "lenet5.onnx"
        data = np.load(folder / "mnist_test_2000.npz")
        self.images, self.labels = data["images"].astype(np.float32), data["labels"].astype(np.int64)
        self.graph = attribx.translate(self.path)


def load_lenet() -> LeNet:
    if not (LENET_DIR / "lenet5.onnx").exists() or not (LENET_DIR / "mnist_test_2000.npz").exists():
        pytest.skip(f"the LeNet-5 data is not here ({LENET_DIR})")
    return LeNet(LENET_DIR)


class OnnxResNet:
    def __init__(self):
        from .onnx_resnet import resnet18_onnx
        self.model = resnet18_onnx(seed=0, size=RESNET_SHAPE[-1])
        self.bytes = self.model.SerializeToString()
        self.graph = attribx.translate(self.model)
        rng = np.random.default_rng(5)
        self.x = rng.normal(size=RESNET_SHAPE).astype(np.float32)
        self.x2 = rng.normal(size=(2,) + RESNET_SHAPE[1:]).astype(np.float32)


def ort_forward(model, x):
    """onnxruntime's output for a path or serialized model."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model) if isinstance(model, Path) else model,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})[0]
