"""Reading ``.onnx`` files: onnx.load plus the checks that turn a broken file into one clear error.

protobuf parses many byte strings (an empty file is a valid, empty ``ModelProto``), so a file that loads
is also checked to look like a model: an IR version, an opset, a graph with nodes and outputs, and every
node input defined somewhere. Each failure is an :class:`attribx.errors.ModelLoadError` with a one-line
message (the CLI prints it as is).
"""
from __future__ import annotations

import os

from attribx.errors import ModelLoadError


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_onnx(path):
    """The ``onnx.ModelProto`` in ``path``, with external data (files next to it) loaded."""
    path = os.fspath(path)
    try:
        import onnx
        onnx.load                                   # not a stray folder named onnx on sys.path
    except (ImportError, AttributeError):
        raise ModelLoadError(f"{path}: reading ONNX files needs the 'onnx' package (pip install onnx)") from None
    try:
        model = onnx.load(path, load_external_data=False)
        external = _external_tensors(model)
        if external:
            check_external_data(path, external)
            from onnx.external_data_helper import load_external_data_for_model
            load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
    except ModelLoadError:
        raise
    except Exception as err:   # DecodeError for truncated or foreign bytes, OSError for missing data files
        name = type(err).__name__
        if name == "DecodeError":
            raise ModelLoadError(f"{path}: not a readable ONNX model (truncated, corrupt or not ONNX: "
                                 f"protobuf cannot parse it)") from None
        raise ModelLoadError(f"{path}: cannot load the ONNX model ({name}: {_one_line(err)})") from None
    problem = model_problem(model)
    if problem:
        raise ModelLoadError(f"{path}: not a usable ONNX model ({problem}; the file may be truncated or "
                             f"not ONNX)")
    return model


def _external_tensors(model) -> list:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data
    return [t for t in _get_all_tensors(model) if uses_external_data(t)]


def check_external_data(path: str, tensors) -> None:
    """Refuse external data that is not a regular file inside the model's folder: an absolute location, one
    that climbs out (``../``), or a symbolic link (the file or a folder on the way) whose real path leaves
    the folder. onnx >= 1.16 refuses these too (CVE-2024-27318: 1.15 followed a symlinked data file and
    returned the bytes of any file as weights); this check does not depend on the onnx version."""
    from onnx.external_data_helper import ExternalDataInfo
    folder = os.path.dirname(os.path.abspath(path))
    real_folder = os.path.realpath(folder)
    for tensor in tensors:
        location = ExternalDataInfo(tensor).location
        full = os.path.join(folder, location)
        real = os.path.realpath(full)
        why = None
        if not location or os.path.isabs(location):
            why = "an absolute or empty location"
        elif os.path.commonpath([real, real_folder]) != real_folder:
            why = f"it resolves to {real}, outside the model's folder {real_folder}"
        elif os.path.islink(full):
            why = "it is a symbolic link"
        elif os.path.exists(real) and not os.path.isfile(real):
            why = "it is not a regular file"
        if why:
            raise ModelLoadError(f"{path}: tensor {tensor.name!r} reads its external data from {location!r}: "
                                 f"{why}; refused: keep the data file itself (no link) in the model's folder")


def model_problem(model) -> str | None:
    """Why ``model`` is not a complete ONNX model, or None: cheap structural checks, no full validation."""
    if model.ir_version <= 0:
        return "no IR version"
    if not model.opset_import:
        return "no opset import"
    graph = model.graph
    if not graph.node:
        return "the graph has no nodes"
    if not graph.output:
        return "the graph has no outputs"
    known = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    known |= {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        for name in node.input:
            if name and name not in known:
                return f"node {node.name or node.op_type!r} reads {name!r}, which nothing defines"
        known.update(o for o in node.output if o)
    missing = [o.name for o in graph.output if o.name not in known]
    if missing:
        return f"graph output {missing[0]!r} is not computed by any node"
    return None

