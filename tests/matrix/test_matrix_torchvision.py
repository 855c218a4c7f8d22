"""The cross-backend matrix for torchvision's ResNet18 and MobileNetV2 (weights=None, seed 0, eval mode,
one 3×64×64 image): the native torch model and its ONNX exports, on every installed engine, for every
method: the same relevance as the numpy engine on the native model's graph.

Sources: ``torch`` (the native model; on the numpy engine it is the reference itself), ``onnx_torch``
(``torch.onnx.export(dynamo=True)``, the default exporter of torch 2.14, batch axis dynamic) and
``onnx_torch_legacy`` (``dynamo=False``; numpy engine only). Every export's forward pass also equals
onnxruntime's and the torch model's output, at the batch size of the relevance and at three samples.
The comparison rule is in tests/matrix/common.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from .common import triton_after_tensorflow

pytest.importorskip("torch")
if triton_after_tensorflow():
    pytest.skip("TensorFlow was imported before triton, and importing triton now would crash (see "
                "tests/matrix/conftest.py): run tests/matrix on its own or first", allow_module_level=True)
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("onnx.helper")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_torch")
pytest.importorskip("attribx_onnx")

import torch  # noqa: E402

import attribx  # noqa: E402

from .common import Lazy, assert_cell, assert_forward, cells, export_path, reference, relevance  # noqa: E402
from .torch_export import export_all  # noqa: E402
from .zoo import engines, methods  # noqa: E402

pytestmark = pytest.mark.slow     # torchvision models on every engine and method

ARCHS = {"resnet18": (1, 3, 64, 64), "mobilenet_v2": (1, 3, 64, 64)}
SOURCES = {"torch": None, "onnx_torch": None, "onnx_torch_legacy": ["numpy"]}
EXPORTER = {"onnx_torch": "dynamo", "onnx_torch_legacy": "legacy"}


class TorchvisionMatrix:
    def __init__(self, folder):
        self.folder = folder
        self.models, self.x, self.xs, self.out = {}, {}, {}, {}
        jobs = []
        for i, (name, shape) in enumerate(ARCHS.items()):
            torch.manual_seed(0)
            self.models[name] = getattr(torchvision.models, name)(weights=None).eval()
            rng = np.random.default_rng(300 + i)
            self.x[name] = rng.normal(size=shape).astype(np.float32)
            self.xs[name] = rng.normal(size=(3,) + shape[1:]).astype(np.float32)     # the dynamic batch axis
            with torch.no_grad():
                self.out[name] = {n: self.models[name](torch.from_numpy(v)).numpy()
                                  for n, v in ((1, self.x[name]), (3, self.xs[name]))}
            torch.save(self.models[name].state_dict(), folder / f"{name}.pt")
            np.save(folder / f"{name}-x.npy", self.xs[name][:2])     # batch 2: the batch axis stays symbolic
            jobs.append({"name": name, "kind": "torchvision", "x": str(folder / f"{name}-x.npy"),
                         "state": str(folder / f"{name}.pt")})
        self.jobs = jobs
        self.report = None
        self.graph = Lazy(self._translate)
        self.ref = Lazy(lambda arch, method: reference(self.graph(arch, "torch"), self.x[arch], method))

    def path(self, arch, source):
        if self.report is None:
            self.report = export_all(self.jobs, self.folder / "exports")
        return export_path(self.report, arch, EXPORTER[source])

    def _translate(self, arch, source):
        if source == "torch":
            return attribx.translate(self.models[arch], input_shape=self.x[arch].shape[1:])
        return attribx.translate(self.path(arch, source))


@pytest.fixture(scope="module")
def tm(tmp_path_factory):
    return TorchvisionMatrix(tmp_path_factory.mktemp("torchvision_matrix"))


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("source", ["onnx_torch", "onnx_torch_legacy"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_onnx_export_forward(tm, arch, source, engine):
    g, path = tm.graph(arch, source), tm.path(arch, source)
    what = f"{arch} {source} on {engine}"
    assert_forward(g, path, tm.x[arch], tm.out[arch][1], engine, what)
    assert_forward(g, path, tm.xs[arch], tm.out[arch][3], engine, what + " (3 samples)")


@pytest.mark.parametrize("arch, source, engine, method",
                         cells(ARCHS, SOURCES, engines(), methods(), skip={("torch", "numpy")}))
def test_relevance(tm, arch, source, engine, method):
    g, x = tm.graph(arch, source), tm.x[arch]
    assert_cell(tm.ref(arch, method), lambda dt: relevance(g, x, method, engine, dt),
                f"{arch} {source} {engine} {method}")

