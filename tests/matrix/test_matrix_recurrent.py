"""Recurrent models exported to ONNX by the real exporters, translated by attribx_onnx.

* torch.onnx, both exporters (dynamo and legacy): nn.LSTM and nn.GRU, one or two layers, uni- or
  bidirectional, a linear head on ``out[:, -1]`` or on ``h_n[-1]``. Both write ONNX LSTM/GRU nodes (layout
  0) between Transposes, Reshapes (a target computed from Shape, or [0, 0, -1]), Gathers and Concats on the
  sequence-first tensors. The forward pass equals onnxruntime and torch; LRP-ε equals that of the torch
  backend's own translation of the module (a different route to the same function).
* The SST BiLSTM (nn.LSTM(60, 60, bidirectional) + Linear(120, 5) with the trained weights of
  ../shared/data/sst-bilstm, skipped when absent), exported with a dynamic time axis by both exporters:
  LRP-ε (epsilon 0.001, bias_factor 0 and 1) equals Arras et al.'s (tests/arras_reference.py) per sample
  to 1e-4 for 1, 4 and 9 steps, on the numpy and torch engines.
* tf2onnx (``tf2onnx.convert.from_keras``) of Keras LSTM, stacked LSTMs, LSTM(return_sequences) + Flatten
  and Bidirectional(LSTM): ONNX LSTM nodes; forward equals onnxruntime and Keras, LRP-ε equals the Keras
  backend's translation. Keras GRU, Bidirectional(GRU) and LSTMs behind a mask come out of tf2onnx 1.x as
  a Loop; the translation refuses the Loop by name (if a tf2onnx writes GRU nodes, they must translate).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402

from .common import FORWARD_TOL, has_module  # noqa: E402
from .zoo import engines  # noqa: E402

pytestmark = pytest.mark.slow     # torch.onnx exports in child processes

TOL = 1e-4
STEPS = 6
HEADS = [f"{cell}-l{layers}-{d}-{head}" for cell in ("LSTM", "GRU") for layers, d in ((1, "uni"), (1, "bi"), (2, "bi"))
         for head in ("out", "h")]
SST_STEPS = (1, 4, 9)


def ort(path, x):
    import onnxruntime as rt
    sess = rt.InferenceSession(path if isinstance(path, bytes) else str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def lrp(graph_or_model, x, engine="numpy", targets=None, **params):
    targets = list(range(len(x))) if targets is None else targets
    r = attribx.explain(graph_or_model, x, "lrp.epsilon", target=targets, engine=engine, **params)
    return np.asarray(r.values, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# torch.onnx


@pytest.fixture(scope="module")
def torch_exports(tmp_path_factory):
    pytest.importorskip("torch")
    from arras_reference import SST

    from .recurrent_models import export_all
    folder = tmp_path_factory.mktemp("recurrent_exports")
    x = np.random.default_rng(0).normal(size=(2, STEPS, 5)).astype(np.float32)
    np.save(folder / "x.npy", x)
    jobs = [{"name": name, "x": str(folder / "x.npy")} for name in HEADS]
    if SST.exists():
        np.save(folder / "sst.npy", (np.random.default_rng(1).normal(size=(2, 5, 60)) * 0.3).astype(np.float32))
        jobs.append({"name": "sst", "x": str(folder / "sst.npy"), "dynamic_time": True})
    return export_all(jobs, folder)


def _exported(torch_exports, name, exporter):
    if name not in torch_exports:
        pytest.skip(f"{name} was not exported (the SST weights are not here)")
    done = torch_exports[name][exporter]
    assert done["error"] is None, f"{exporter} export of {name} failed: {done['error']}"
    return done


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("name", HEADS)
def test_torch_export_forward_and_relevance(torch_exports, name, exporter):
    import torch

    from .recurrent_models import model
    done = _exported(torch_exports, name, exporter)
    cell = name.split("-")[0]
    assert cell in done["ops"] and "Loop" not in done["ops"], done["ops"]
    x = np.random.default_rng(2).normal(size=(3, STEPS, 5)).astype(np.float32)
    graph = attribx.translate(attribx.load_model(done["path"]), input_shape=(STEPS, 5))
    want = ort(done["path"], x)
    native = model(name)
    with torch.no_grad():
        assert relative_error(native(torch.from_numpy(x)).numpy(), want) <= FORWARD_TOL
    for engine in engines():
        assert relative_error(attribx.forward(graph, x, engine=engine), want) <= FORWARD_TOL, engine
    try:
        native_graph = attribx.translate(native, input_shape=(STEPS, 5))
    except attribx.UnsupportedError as err:
        pytest.skip(f"the torch backend does not translate nn.{cell} here: {err}")
    ref = lrp(native_graph, x)
    for engine in engines():
        err = relative_error(lrp(graph, x, engine), ref)
        assert err <= TOL, f"{engine}: LRP-ε of the ONNX export differs from the torch module's by {err:.1e}"


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
def test_sst_bilstm_exported_equals_arras(torch_exports, exporter, bias_factor):
    from arras_reference import arras_lrp, sst_net
    done = _exported(torch_exports, "sst", exporter)
    net = sst_net()
    model = attribx.load_model(done["path"])
    targets = [1, 3]
    for steps in SST_STEPS:
        x = (np.random.default_rng(steps).normal(size=(2, steps, 60)) * 0.3).astype(np.float32)
        graph = attribx.translate(model, input_shape=(steps, 60))
        assert relative_error(attribx.forward(graph, x, engine="numpy"), ort(done["path"], x)) <= FORWARD_TOL
        for engine in engines():
            ours = lrp(graph, x, engine, targets, epsilon=0.001, bias_factor=bias_factor)
            for k, target in enumerate(targets):
                want, _, _ = arras_lrp(x[k].astype(np.float64), net, target, 0.001, bias_factor)
                err = relative_error(ours[k], want)
                assert err <= TOL, f"{exporter}, {engine}, {steps} steps, sample {k}: relative error {err:.1e}"


# ----------------------------------------------------------------------------------------------
# tf2onnx


KERAS = ("lstm", "stacked", "sequence", "bilstm", "gru", "bigru", "masked")


def _keras_model(kind):
    import keras
    layers = keras.layers
    keras.utils.set_random_seed(sum(map(ord, kind)))
    inp = keras.Input((STEPS, 5))
    h = layers.Masking(0.0)(inp) if kind == "masked" else inp
    body = {"lstm": [layers.LSTM(4)], "stacked": [layers.LSTM(4, return_sequences=True), layers.LSTM(3)],
            "sequence": [layers.LSTM(4, return_sequences=True), layers.Flatten()],
            "bilstm": [layers.Bidirectional(layers.LSTM(4))], "gru": [layers.GRU(4)],
            "bigru": [layers.Bidirectional(layers.GRU(4))], "masked": [layers.LSTM(4)]}[kind]
    for layer in body:
        h = layer(h)
    return keras.Model(inp, layers.Dense(3)(h))


@pytest.fixture(scope="module")
def keras_exports():
    if not (has_module("tf2onnx") and has_module("tensorflow")):
        pytest.skip("tf2onnx and TensorFlow are needed")
    import tensorflow as tf
    import tf2onnx
    out = {}
    for kind in KERAS:
        m = _keras_model(kind)
        spec = (tf.TensorSpec((None, STEPS, 5), tf.float32, name="x"),)
        proto, _ = tf2onnx.convert.from_keras(m, input_signature=spec, opset=17)
        out[kind] = (m, proto)
    return out


@pytest.mark.parametrize("kind", KERAS)
def test_tf2onnx_export(keras_exports, kind):
    m, proto = keras_exports[kind]
    ops = {n.op_type for n in proto.graph.node}
    x = np.random.default_rng(3).normal(size=(3, STEPS, 5)).astype(np.float32)
    if kind == "masked":
        x[1, 4:] = 0.0
    if "Loop" in ops and not ops & {"LSTM", "GRU"}:
        with pytest.raises(attribx.UnsupportedError, match=r"\(Loop, opset 17\).*written as a Loop"):
            attribx.translate(proto, input_shape=(STEPS, 5))
        assert kind in ("gru", "bigru", "masked"), f"tf2onnx wrote {kind} as a Loop"
        return
    graph = attribx.translate(proto, input_shape=(STEPS, 5))
    want = ort(proto.SerializeToString(), x)
    assert relative_error(np.asarray(m(x)), want) <= FORWARD_TOL
    for engine in engines():
        assert relative_error(attribx.forward(graph, x, engine=engine), want) <= FORWARD_TOL, engine
    ref = lrp(attribx.translate(m), x)
    for engine in engines():
        err = relative_error(lrp(graph, x, engine), ref)
        assert err <= TOL, f"{engine}: LRP-ε of the tf2onnx export differs from the Keras model's by {err:.1e}"
