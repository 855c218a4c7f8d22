"""Hook implementations: the only place attribx and this backend meet."""
from __future__ import annotations

from attribx import hookimpl
from attribx.inputs import first_shape

from .load import load_onnx              # neither imports onnx at import time: onnx loads when a model is read
from .translate import translate_onnx


def is_onnx_model(model) -> bool:
    """True for ``onnx.ModelProto``, checked by class path so that onnx is not imported for other objects."""
    return any(c.__module__.startswith("onnx") and c.__name__ == "ModelProto" for c in type(model).__mro__)


@hookimpl
def attribx_translate(model, input_shape, converters):
    """``converters``: every plugin's :class:`attribx.translation.Converter` records; the ONNX ones are
    layered over the built-in table for this translation."""
    if not is_onnx_model(model):
        return None
    return translate_onnx(model, first_shape(input_shape), converters)   # further inputs: masks (or refused)


@hookimpl
def attribx_model_types():
    return {"onnx.ModelProto": "an ONNX model, opset 13 and newer"}


@hookimpl
def attribx_load_model(path):
    if not str(path).lower().endswith(".onnx"):
        return None
    return load_onnx(path)


@hookimpl
def attribx_model_formats():
    return {".onnx": "ONNX model file (opset 13 and newer; external data next to the file)"}
