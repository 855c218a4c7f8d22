"""The cross-backend matrix for the Keras zoo: every model of tests/matrix/zoo.py (MLP, VGG-like CNN with
batch norm, residual CNN, CNN with concatenation, 1-D conv net), from every source, on every installed
engine, for every method: the same relevance as the numpy engine on the native Keras model's graph.

Sources (the layouts put side by side with ``zoo.to_cf``):

* ``keras``: the native Keras model (channels-last); on the numpy engine it is the reference itself;
* ``graph``: the hand-built channel-first attribx graph with the same weights;
* ``torch``: the PyTorch model with the same weights (needs torch and attribx-torch);
* ``onnx_keras``: the Keras model exported by Keras (``model.export(path, format="onnx")``, tf2onnx); the
  ONNX graph keeps the Keras input layout;
* ``onnx_torch``: the PyTorch model exported with ``torch.onnx.export(dynamo=True)``;
* ``onnx_torch_legacy``: the same with ``dynamo=False`` (numpy engine only).

SmoothGrad draws its noise in the input's layout, so its channel-first sources are compared with the
hand-built graph's numpy relevance instead. Every ONNX export's forward pass also equals onnxruntime's and
the Keras model's output. The comparison rule is in tests/matrix/common.py.
"""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

import attribx  # noqa: E402

from .common import (Lazy, assert_cell, assert_forward, cells, export_path, has_module,  # noqa: E402
                     keras_export, reference, relevance, torch_exporter_missing)
from .torch_export import export_all  # noqa: E402
from .zoo import HAS_TORCH, RANDOM, ZOO, build_zoo, engines, methods, to_cf  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

LAYOUT = {"keras": "keras", "graph": "cf", "torch": "cf", "onnx_keras": "keras", "onnx_torch": "cf",
          "onnx_torch_legacy": "cf"}
SOURCES = {"keras": None, "graph": None, "torch": None, "onnx_keras": None, "onnx_torch": None,
           "onnx_torch_legacy": ["numpy"]}
ONNX_SOURCES = {"onnx_keras": None, "onnx_torch": None, "onnx_torch_legacy": None}
EXPORTER = {"onnx_torch": "dynamo", "onnx_torch_legacy": "legacy"}
HAS_TORCH_PLUGIN = HAS_TORCH and has_module("attribx_torch")


class ZooMatrix:
    def __init__(self, folder):
        self.folder = folder
        self.zoo = build_zoo()
        self.keras_out = {name: np.asarray(km(x)) for name, (z, km, x) in self.zoo.items()}
        self.torch_exports = None
        self.graph = Lazy(self._translate)
        self.path = Lazy(self._path)
        self.ref = Lazy(self._reference)

    def x(self, arch, source):
        z, _, x = self.zoo[arch]
        return x if LAYOUT[source] == "keras" else to_cf(z, x)

    def _torch_report(self):
        if self.torch_exports is None:
            jobs = []
            for name in ZOO:
                z, _, x = self.zoo[name]
                np.save(self.folder / f"{name}-x.npy", to_cf(z, x))
                jobs.append({"name": name, "kind": "zoo", "x": str(self.folder / f"{name}-x.npy")})
            self.torch_exports = export_all(jobs, self.folder / "torch")
        return self.torch_exports

    def _path(self, arch, source):
        if source == "onnx_keras":
            z, km, x = self.zoo[arch]
            return keras_export(km, x, self.folder / f"{arch}-keras.onnx")
        if torch_exporter_missing(EXPORTER[source]):
            pytest.skip(torch_exporter_missing(EXPORTER[source]))
        return export_path(self._torch_report(), arch, EXPORTER[source])

    def _translate(self, arch, source):
        z, km, x = self.zoo[arch]
        if source == "keras":
            return attribx.translate(km)
        if source == "graph":
            return z.graph()
        if source == "torch":
            if not HAS_TORCH_PLUGIN:
                pytest.skip("needs torch and the attribx-torch plugin")
            return attribx.translate(z.torch(), input_shape=self.x(arch, source).shape[1:])
        return attribx.translate(self.path(arch, source))

    def _reference(self, arch, layout, method):
        """Keras layout: the native Keras model; channel-first (SmoothGrad only): the hand-built graph."""
        source = "keras" if layout == "keras" else "graph"
        return reference(self.graph(arch, source), self.x(arch, source), method)


@pytest.fixture(scope="module")
def zm(tmp_path_factory):
    return ZooMatrix(tmp_path_factory.mktemp("zoo_matrix"))


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("source", list(ONNX_SOURCES))
@pytest.mark.parametrize("arch", list(ZOO))
def test_onnx_export_forward(zm, arch, source, engine):
    """attribx's forward of the export equals onnxruntime and the Keras model (and a batch of one runs)."""
    g, path, x = zm.graph(arch, source), zm.path(arch, source), zm.x(arch, source)
    what = f"{arch} {source} on {engine}"
    assert_forward(g, path, x, zm.keras_out[arch], engine, what)
    assert_forward(g, path, x[:1], zm.keras_out[arch][:1], engine, what + " (batch of 1)")


def _cells():
    return cells(ZOO, SOURCES, engines(), methods(), skip={("keras", "numpy")})


@pytest.mark.parametrize("arch, source, engine, method", _cells())
def test_relevance(zm, arch, source, engine, method):
    z = zm.zoo[arch][0]
    g, x = zm.graph(arch, source), zm.x(arch, source)
    if method in RANDOM:        # noise drawn in the input's layout: compared within one layout
        ref, layout = zm.ref(arch, LAYOUT[source], method), (lambda a: a)
        if (source, engine) == ("graph", "numpy"):
            pytest.skip("the channel-first reference itself")
    else:
        ref = zm.ref(arch, "keras", method)
        layout = (lambda a: a) if LAYOUT[source] == "keras" else (lambda a: np.transpose(a, np.argsort(z.to_cf))
                                                                  if a.ndim == len(z.to_cf) else a)
        # compare in the Keras layout: the channel-first relevance moved back (to_cf inverted)
    assert_cell(ref, lambda dt: relevance(g, x, method, engine, dt), f"{arch} {source} {engine} {method}", layout)


def test_keras_export_keeps_the_keras_layout(zm):
    """An ONNX export of a Keras model takes (and explains) channels-last input."""
    z, km, x = zm.zoo["vgg_bn"]
    g = zm.graph("vgg_bn", "onnx_keras")
    assert g.input.shape[1:] == x.shape[1:]
    assert attribx.explain(g, x, "lrp.epsilon_plus_flat", target=0).shape == x.shape


def test_keras_export_relevance_has_the_keras_dims(zm):
    z, km, x = zm.zoo["vgg_bn"]
    want = attribx.explain(zm.graph("vgg_bn", "keras"), x, "lrp.epsilon", target=0).dims
    assert want == ("sample", "height", "width", "channel")
    assert attribx.explain(zm.graph("vgg_bn", "onnx_keras"), x, "lrp.epsilon", target=0).dims == want
