"""Clear errors: unsupported ops name op type, node, opset and hook; broken files are one-line load errors."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

from onnx import TensorProto, helper  # noqa: E402

import attribx  # noqa: E402
from onnx_builders import cnn, model, weights  # noqa: E402

node = helper.make_node


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "attribx.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


def unsupported_model():
    nodes = [node("Relu", ["x"], ["r"], name="relu"), node("LpNormalization", ["r"], ["y"], name="norm_7")]
    return model(nodes, (), (4,), opset=17)


def test_unsupported_op_names_op_node_opset_and_hook():
    with pytest.raises(attribx.UnsupportedError) as err:
        attribx.translate(unsupported_model())
    msg = str(err.value)
    for part in ("'norm_7'", "LpNormalization", "opset 17", "attribx_ops", "attribx_translate"):
        assert part in msg, msg
    assert "\n" not in msg


def test_unsupported_attribute_value_names_the_node():
    m = model([node("Gemm", ["x", "w"], ["y"], name="fc", transA=1)], [("w", weights(np.random.default_rng(0), 4, 2))],
              (4,))
    with pytest.raises(attribx.UnsupportedError, match=r"'fc' \(Gemm, opset 13\): transA=1"):
        attribx.translate(m)


def test_an_unnamed_node_is_named_after_its_output():
    m = model([node("Relu", ["x"], ["hidden"]), node("Relu", ["hidden"], ["y"])], (), (3,))
    g = attribx.translate(m)
    assert [n.name for n in g.nodes] == ["hidden", "y"]


def test_repeated_node_names_are_numbered():
    m = model([node("Relu", ["x"], ["a"], name="act"), node("Tanh", ["a"], ["y"], name="act")], (), (3,))
    assert [n.name for n in attribx.translate(m).nodes] == ["act", "act_1"]


def test_several_inputs_are_unsupported():
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in ("a", "b")]
    m = model([node("Add", ["a", "b"], ["y"], name="add")], inputs=ins)
    with pytest.raises(attribx.UnsupportedError, match="2 inputs \\('a', 'b'\\)"):
        attribx.translate(m)


def test_other_operator_domains_are_unsupported():
    m = model([node("Relu", ["x"], ["r"], name="relu"),
               node("FusedGemm", ["r", "r"], ["y"], name="fused", domain="com.microsoft")], (), (3,))
    with pytest.raises(attribx.UnsupportedError, match="'fused' \\(FusedGemm, opset 13\\): operator domain "
                                                       "'com.microsoft'"):
        attribx.translate(m)


def test_free_sizes_need_an_input_shape():
    m = model([node("Relu", ["x"], ["y"], name="relu")], (), (3, "H", "W"))
    with pytest.raises(attribx.InputError, match="input_shape"):
        attribx.translate(m)
    g = attribx.translate(m, input_shape=(3, 5, 6))
    assert g.input.shape == (None, 3, 5, 6)
    with pytest.raises(attribx.InputError, match="does not fit"):
        attribx.translate(m, input_shape=(4, 5, 6))


@pytest.fixture
def bad_files(tmp_path):
    data = cnn(np.random.default_rng(0)).SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "notes.onnx"
    text.write_text("these are my notes, not a neural network\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    return {"truncated": truncated, "text": text, "empty": empty}


@pytest.mark.parametrize("kind", ["truncated", "text", "empty"])
def test_broken_files_are_load_errors(bad_files, kind):
    path = bad_files[kind]
    with pytest.raises(attribx.ModelLoadError) as err:
        attribx.load_model(str(path))
    msg = str(err.value)
    assert msg.startswith(str(path)) and "ONNX" in msg and "\n" not in msg
    with pytest.raises(attribx.ModelLoadError):
        attribx.explain(str(path), np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_broken_files_in_the_cli_print_one_line(bad_files, kind):
    path = bad_files[kind]
    x = path.parent / "x.npy"
    for args in (("inspect", path), ("explain", path, x, "-o", path.parent / "rel.h5")):
        out = run_cli(*args)
        assert out.returncode == 2, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("attribx: error: ") and str(path) in lines[0], out.stderr
        assert "Traceback" not in out.stderr
    assert not (path.parent / "rel.h5").exists()


def test_unsupported_op_in_the_cli_prints_one_line(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(unsupported_model(), str(path))
    out = run_cli("inspect", path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "LpNormalization" in lines[0] and "'norm_7'" in lines[0], out.stderr
