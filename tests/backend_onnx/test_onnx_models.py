"""Whole ONNX models: a CNN and an MLP end to end, the exporters' shape subgraphs, every method, files.

The CNN's lrp.epsilon relevance must equal the relevance of the same network written by hand with
attribx.GraphBuilder; the default engine of an ONNX graph is torch when installed, else numpy.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

from onnx import helper  # noqa: E402

import attribx  # noqa: E402
from attribx.plugins import registry  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from onnx_builders import OPSETS, assert_matches, cnn, cnn_by_hand, model, run_ort, weights  # noqa: E402

node = helper.make_node


@pytest.fixture(scope="module")
def net():
    return cnn(np.random.default_rng(1))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(2).normal(size=(3, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("opset", OPSETS)
def test_cnn_end_to_end(opset, images):
    m = cnn(np.random.default_rng(1), opset=opset)
    g = assert_matches(m, images)
    assert [n.name for n in g.nodes] == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1",
                                         "relu3", "fc2"]      # bn1 folded into conv1 by the default pass
    assert g.meta["framework"] == "onnx" and g.meta["opset"] == opset
    assert g.input.name == "x" and g.input.dims == ("sample", "channel", "height", "width")
    assert attribx.api._resolve_alias(g, "bn1") == "conv1" and attribx.api._resolve_alias(g, "r2") == "relu2"
    raw = attribx.translate(m, passes=False)
    assert raw["bn1"].op == "batch_norm"


def test_mlp_end_to_end(rng):
    """MatMul + Add layers, as exporters write torch.nn.Linear on sequences, with a softmax head."""
    nodes = []
    inits = []
    h = "x"
    sizes = (6, 16, 8, 3)
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        nodes += [node("MatMul", [h, f"w{k}"], [f"mm{k}"], name=f"fc{k}/MatMul"),
                  node("Add", [f"mm{k}", f"b{k}"], [f"z{k}"], name=f"fc{k}/Add")]
        inits += [(f"w{k}", weights(rng, a, b)), (f"b{k}", weights(rng, b, scale=0.1))]
        h = f"z{k}"
        if k < len(sizes) - 2:
            nodes.append(node("Tanh" if k else "Relu", [h], [f"a{k}"], name=f"act{k}"))
            h = f"a{k}"
    nodes.append(node("Softmax", [h], ["y"], name="softmax", axis=-1))
    m = model(nodes, inits, (6,), opset=17, name="mlp")
    g = assert_matches(m, rng.normal(size=(7, 6)).astype(np.float32))
    assert [n.op for n in g.nodes] == ["linear", "relu", "linear", "tanh", "linear", "softmax"]
    assert g.input.dims == ("sample", "feature")
    rel = attribx.explain(m, rng.normal(size=(4, 6)).astype(np.float32), "lrp.epsilon", engine="numpy")
    assert rel.dims == ("sample", "feature") and np.isfinite(rel.values).all()


def test_exporter_shape_subgraph_folds(rng):
    """x.view(x.size(0), -1) as exporters write it: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    nodes = [node("Conv", ["x", "w"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1]),
             node("Relu", ["c"], ["r"], name="/relu/Relu"),
             node("Shape", ["r"], ["shape"], name="/Shape"),
             node("Constant", [], ["zero"], name="/Constant", value=onnx.numpy_helper.from_array(np.array(0))),
             node("Gather", ["shape", "zero"], ["batch"], name="/Gather", axis=0),
             node("Constant", [], ["axes"], name="/Constant_1", value=onnx.numpy_helper.from_array(np.array([0]))),
             node("Unsqueeze", ["batch", "axes"], ["batch1"], name="/Unsqueeze"),
             node("Constant", [], ["minus1"], name="/Constant_2", value=onnx.numpy_helper.from_array(np.array([-1]))),
             node("Concat", ["batch1", "minus1"], ["target"], name="/Concat", axis=0),
             node("Reshape", ["r", "target"], ["flat"], name="/Reshape"),
             node("Gemm", ["flat", "fw", "fb"], ["y"], name="/fc/Gemm", transB=1)]
    inits = [("w", weights(rng, 4, 2, 3, 3)), ("fw", weights(rng, 3, 4 * 5 * 5, scale=0.1)), ("fb", weights(rng, 3))]
    m = model(nodes, inits, (2, 5, 5), batch=1)            # exported with a fixed batch size of 1
    g = assert_matches(m, rng.normal(size=(1, 2, 5, 5)).astype(np.float32))
    x = rng.normal(size=(4, 2, 5, 5)).astype(np.float32)     # the graph works for any batch size
    ref = np.concatenate([run_ort(m, x[i:i + 1])[0] for i in range(len(x))])
    assert relative_error(attribx.forward(g, x, engine="numpy"), ref) <= 1e-5
    assert [nd.op for nd in g.nodes] == ["conv", "relu", "reshape", "linear"]
    assert g["/Reshape"].attrs["shape"] == (100,)


def test_reshape_that_mixes_samples_is_unsupported(rng):
    m = model([node("Reshape", ["x", "shape"], ["y"], name="mix")], [("shape", np.array([-1, 2]))], (4,))
    with pytest.raises(attribx.UnsupportedError, match="'mix' \\(Reshape, opset 13\\).*batch axis"):
        attribx.translate(m)


def test_every_method_runs_on_an_onnx_cnn(net, images):
    # every method but those that read attention maps (a CNN has none: tests/test_attention_rollout.py)
    methods = sorted(m for m, method in registry().methods.items() if method.family != "attention")
    assert {"gradient", "lrp.epsilon", "lrp.z_plus", "lrp.epsilon_gamma_box", "smoothgrad"} <= set(methods)
    for name in methods:
        defaults = registry().method(name).defaults
        params = {"samples": 3} if name == "smoothgrad" else {"steps": 4} if name == "integrated_gradients" else {}
        if "low" in defaults:
            params.update(low=-3.0, high=3.0)
        rel = attribx.explain(net, images[:2], name, engine="numpy", **params)
        assert rel.sizes["sample"] == 2 and rel.shape[-2:] == (8, 8), name    # sensitivity sums channels
        assert np.isfinite(rel.values).all(), name
        assert rel.attrs["method"] == name


def test_lrp_epsilon_equals_the_same_network_built_by_hand(net, images):
    ours = attribx.explain(net, images, "lrp.epsilon", target=1, engine="numpy", epsilon=0.01)
    hand = attribx.explain(cnn_by_hand(net), images, "lrp.epsilon", target=1, engine="numpy", epsilon=0.01)
    assert relative_error(ours.values, hand.values) <= 1e-5
    assert abs(ours.values).sum() > 0


def test_inner_relevance_by_onnx_node_and_tensor_names(net, images):
    ds = attribx.explain(net, images, "lrp.epsilon", engine="numpy", layers=["bn1", "r2", "fc1"],
                         conservation=True)
    assert ds["bn1"].shape == (3, 6, 8, 8) and ds["r2"].shape == (3, 8, 4, 4) and ds["fc1"].shape == (3, 16)
    assert np.isfinite(ds["relevance"].values).all()


def test_default_engine_is_torch_when_installed_else_numpy(net, images):
    g = attribx.translate(net)
    assert g.meta["engines"] == ["torch", "numpy"]
    want = "torch" if "torch" in registry().engines else "numpy"
    assert attribx.api.get_engine(None, g).name == want
    for name in registry().engines:      # every installed engine runs the graph when asked for
        assert attribx.api.get_engine(name, g).name == name
    builder_graph = cnn_by_hand(net)    # graphs without a preference keep their framework's default
    assert attribx.api.get_engine(None, builder_graph).name == "numpy"


def test_load_a_model_file_and_external_data(tmp_path, net, images):
    path = tmp_path / "cnn.onnx"
    onnx.save_model(net, str(path))
    assert attribx.translate(str(path)).fingerprint() == attribx.translate(net).fingerprint()
    ext = tmp_path / "ext" / "cnn.onnx"
    ext.parent.mkdir()
    onnx.save_model(copy(net), str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (ext.parent / "weights.bin").stat().st_size > 1000 and ext.stat().st_size < 3000
    loaded = attribx.load_model(str(ext))
    assert isinstance(loaded, onnx.ModelProto)
    np.testing.assert_array_equal(attribx.forward(str(ext), images, engine="numpy"),
                                  attribx.forward(net, images, engine="numpy"))


def test_missing_external_data_is_a_load_error(tmp_path, net):
    ext = tmp_path / "cnn.onnx"
    onnx.save_model(copy(net), str(ext), save_as_external_data=True, location="weights.bin", size_threshold=0)
    os.remove(tmp_path / "weights.bin")
    with pytest.raises(attribx.ModelLoadError, match="cnn.onnx: cannot load the ONNX model"):
        attribx.load_model(str(ext))


def test_cli_inspect_and_explain_an_onnx_file(tmp_path, net, images):
    path = tmp_path / "cnn.onnx"
    onnx.save_model(net, str(path))
    np.save(tmp_path / "x.npy", images)
    out = run_cli("inspect", path)
    assert out.returncode == 0, out.stderr
    assert "from onnx" in out.stdout and "conv1" in out.stdout and "fc2" in out.stdout
    out = run_cli("explain", path, tmp_path / "x.npy", "-m", "lrp.epsilon", "--engine", "numpy", "-o",
                  tmp_path / "rel.h5")
    assert out.returncode == 0, out.stderr
    rel = attribx.open_relevance(str(tmp_path / "rel.h5"))
    assert rel.shape == (3, 3, 8, 8)


def copy(m):
    """A copy: saving with external data rewrites the model's tensors in place."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    return out


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "attribx.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


def test_explaining_an_onnx_model_on_numpy_imports_no_other_framework(tmp_path, net):
    path = tmp_path / "cnn.onnx"
    onnx.save_model(net, str(path))
    code = ("import sys, numpy as np, attribx\n"
            f"rel = attribx.explain({str(path)!r}, np.ones((1, 3, 8, 8), np.float32), 'lrp.epsilon', engine='numpy')\n"
            "assert np.isfinite(rel.values).all()\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_keras_conv1d_export_keeps_its_layout_and_bias(rng):
    """tf2onnx writes Keras's Conv1D on channels-last input as Unsqueeze, Transpose, Conv without bias,
    Transpose, Squeeze, Add(bias): the input is labelled channels-last, the bias goes back into the conv,
    and LRP-ε equals the same network written natively (channels-first conv with its bias)."""
    w, bias, fc = weights(rng, 4, 3, 1, 3), weights(rng, 4), weights(rng, 2, 28)
    nodes = [node("Unsqueeze", ["x", "ax1"], ["u"]), node("Transpose", ["u"], ["t"], perm=[0, 3, 1, 2]),
             node("Conv", ["t", "w"], ["c"]), node("Transpose", ["c"], ["tb"], perm=[0, 2, 3, 1]),
             node("Squeeze", ["tb", "ax1"], ["s"]), node("Add", ["s", "b"], ["a"]), node("Relu", ["a"], ["r"]),
             node("Flatten", ["r"], ["f"]), node("Gemm", ["f", "fc"], ["y"], transB=1)]
    m = model(nodes, [("ax1", [1]), ("w", w), ("b", bias), ("fc", fc)], in_shape=(9, 3))
    x = rng.normal(size=(2, 9, 3)).astype(np.float32)
    g = assert_matches(m, x)
    assert g.input.dims == ("sample", "length", "channel")
    assert [n.op for n in g.nodes if n.op in ("add", "conv")] == ["conv"]
    b = attribx.GraphBuilder("native")
    h = b.transpose(b.input("x", (9, 3), layout="NLC"), (0, 2, 1))
    h = b.transpose(b.conv(h, w[:, :, 0, :], bias), (0, 2, 1))
    native = b.build(b.linear(b.flatten(b.relu(h)), fc))
    ours = attribx.explain(m, x, "lrp.epsilon", target=0, engine="numpy")
    assert ours.dims == ("sample", "length", "channel")
    want = attribx.explain(native, x.astype(np.float64), "lrp.epsilon", target=0)
    assert relative_error(ours.values, want.values) <= 1e-5
