"""attribx's ONNX backend: ``.onnx`` models into the attribx graph.

Nothing here imports onnx at import time (``import attribx`` and plugin discovery stay light); onnx loads
when a model file is read or an ``onnx.ModelProto`` is translated. The graph runs on attribx's engines
(torch when installed, else numpy); onnxruntime is not needed.
"""
from .translate import translate_onnx

__all__ = ["translate_onnx"]
