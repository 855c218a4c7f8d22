"""Helpers for the ONNX backend's tests: build small models with onnx.helper, run them with onnxruntime.

No torch, no TensorFlow: every model is written node by node here, with fixed-seed random weights.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import attribx
from attribx.plugins import registry
from attribx.testing import relative_error

#: The newest default-domain opset of the installed onnx (28 for onnx 1.23).
CURRENT = onnx.defs.onnx_opset_version()
OPSETS = sorted({13, 17, 18, 20, CURRENT})
TOL = 1e-5


def has_op(op: str) -> bool:
    """Whether the installed attribx core has the graph op (embedding, div and conv_transpose are new)."""
    return op in registry().ops


def tensor(name: str, value, dtype=None):
    """An initializer from a numpy value (int lists become int64)."""
    arr = np.asarray(value)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype.kind == "i":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    return numpy_helper.from_array(arr, name)


def weights(rng, *shape, scale=0.5):
    return (rng.normal(size=shape) * scale).astype(np.float32)


def model(nodes, inits=(), in_shape=(3,), opset=13, in_dtype=TensorProto.FLOAT, outputs=("y",), batch="N",
          name="test", inputs=None):
    """A model with one input ``x`` of shape (batch, *in_shape) and float outputs of unknown shape."""
    ins = inputs or [helper.make_tensor_value_info("x", in_dtype, [batch, *in_shape])]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    init = [t if isinstance(t, onnx.TensorProto) else tensor(*t) for t in inits]
    graph = helper.make_graph(list(nodes), name, ins, outs, init)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="attribx-tests")
    return m


def run_ort(m, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def assert_matches(m, x, tol=TOL, output=0):
    """The translated graph's numpy forward pass equals onnxruntime's (float64 comparison); returns the graph."""
    ref = np.asarray(run_ort(m, x)[output], dtype=np.float64)
    graph = attribx.translate(m, input_shape=x.shape[1:])
    ours = attribx.forward(graph, x, engine="numpy", output=graph.outputs[output])
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = relative_error(ours, ref)
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}\n{graph}"
    if "torch" in registry().engines:        # the default engine of ONNX graphs, where installed
        err = relative_error(attribx.forward(graph, x, output=graph.outputs[output]), ref)
        assert err <= tol, f"torch engine: relative error {err:.2e} > {tol:.0e}\n{graph}"
    return graph


def cnn(rng, opset=13, classes=4, channels=(3, 6, 8), size=8):
    """conv-bn-relu-maxpool, conv-relu-avgpool, flatten, gemm-relu, gemm: a small CNN on (3, 8, 8)."""
    c0, c1, c2 = channels
    flat = c2 * (size // 4) ** 2
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"], name="bn1", epsilon=1e-3),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("AveragePool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "w4", "b4"], ["y"], name="fc2", transB=1),
    ]
    inits = [("w1", weights(rng, c1, c0, 3, 3)), ("b1", weights(rng, c1, scale=0.1)),
             ("g", rng.uniform(0.5, 1.5, c1)), ("be", weights(rng, c1, scale=0.1)),
             ("mu", weights(rng, c1, scale=0.1)), ("var", rng.uniform(0.5, 1.5, c1)),
             ("w2", weights(rng, c2, c1, 3, 3, scale=0.3)), ("b2", weights(rng, c2, scale=0.1)),
             ("w3", weights(rng, 16, flat, scale=0.3)), ("b3", weights(rng, 16, scale=0.1)),
             ("w4", weights(rng, classes, 16)), ("b4", weights(rng, classes, scale=0.1))]
    return model(nodes, inits, (c0, size, size), opset=opset, name="cnn")


def cnn_by_hand(m):
    """The network of :func:`cnn`, written independently with attribx.GraphBuilder from its weights."""
    w = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    b = attribx.GraphBuilder("cnn_by_hand")
    h = b.input("x", (3, 8, 8))
    h = b.conv(h, w["w1"], w["b1"], padding=1, name="conv1")
    h = b.batch_norm(h, w["mu"], w["var"], w["g"], w["be"], eps=float(np.float32(1e-3)), name="bn1")
    h = b.relu(h, name="relu1")
    h = b.max_pool(h, 2, 2, name="pool1")
    h = b.conv(h, w["w2"], w["b2"], padding=1, name="conv2")
    h = b.relu(h, name="relu2")
    h = b.avg_pool(h, 2, 2, name="pool2")
    h = b.flatten(h, name="flatten")
    h = b.relu(b.linear(h, w["w3"], w["b3"], name="fc1"), name="relu3")
    return b.build(b.linear(h, w["w4"], w["b4"], name="fc2"))
