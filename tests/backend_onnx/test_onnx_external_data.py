"""ONNX external data never reads a file outside the model's folder (issue 17 point 12): onnx 1.15
followed a symbolic link in external data (CVE-2024-27318) and returned the link target's bytes as weights.
attribx-onnx needs onnx>=1.16, which refuses that, and checks the real paths itself before loading."""
from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("attribx_onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import attribx  # noqa: E402
from attribx.cli import main  # noqa: E402

SECRET = np.arange(100, 116, dtype=np.float32)   # 64 bytes: the size of W below


def _model_with_external_data(folder, location):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    os.makedirs(os.path.dirname(folder / location), exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return path


@pytest.fixture
def secret(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(SECRET.tobytes())
    return outside / "secret.bin"


def test_the_plain_model_loads(tmp_path):
    path = _model_with_external_data(tmp_path / "m", "w.bin")
    loaded = attribx.load_model(str(path))
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), np.ones((4, 4)))


@pytest.mark.parametrize("how", ["file_link", "relative_file_link", "folder_link"])
def test_external_data_through_a_symlink_is_refused(tmp_path, secret, how, capsys):
    folder = tmp_path / "m"
    if how == "folder_link":
        path = _model_with_external_data(folder, os.path.join("sub", "secret.bin"))
        os.remove(folder / "sub" / "secret.bin")
        os.rmdir(folder / "sub")
        os.symlink(secret.parent, folder / "sub")
    else:
        path = _model_with_external_data(folder, "w.bin")
        os.remove(folder / "w.bin")
        os.symlink(secret if how == "file_link" else os.path.join("..", "outside", "secret.bin"), folder / "w.bin")
    with pytest.raises(attribx.ModelLoadError, match="external data") as info:
        attribx.load_model(str(path))
    assert "\n" not in str(info.value) and "refused" in str(info.value)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr()
    assert len(err.err.strip().splitlines()) == 1 and "100.0" not in err.out + err.err


def test_onnx_itself_refuses_a_symlinked_data_file(tmp_path, secret):
    """The version floor in attribx-onnx's pyproject (onnx>=1.16) is the one that refuses this."""
    from onnx.external_data_helper import load_external_data_for_model
    folder = tmp_path / "m"
    path = _model_with_external_data(folder, "w.bin")
    os.remove(folder / "w.bin")
    os.symlink(secret, folder / "w.bin")
    model = onnx.load(str(path), load_external_data=False)
    with pytest.raises(Exception, match="symbolic link|outside"):
        load_external_data_for_model(model, str(folder))
