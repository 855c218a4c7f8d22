"""The ONNX converters, one module per family, all registered in :data:`TABLE` by op type.

A converter is ``fn(ctx, node, attrs)``: ``ctx`` the translation (:class:`attribx_onnx.translate.OnnxTranslator`,
an :class:`attribx.translation.Translator`), ``node`` the ``onnx.NodeProto``, ``attrs`` its attributes as python
values. It returns what each ONNX output became: a :class:`attribx.translation.Tensor` (``ctx.emit``'s result;
its ``order`` says where the ONNX tensor's axes sit when its batch axis is not first), a
:class:`~attribx_onnx.fold.Const`, or None for an output with no translation (an error only if something reads
it). It raises :class:`Unsupported` with the reason; the walk adds the node, op type and opset. Only
converters registered with ``any_batch_axis=True`` read tensors whose batch axis is not first (the walk
refuses the others, naming the tensor), so a converter that knows nothing of axis order stays correct.
Likewise only converters registered with ``merged_batch=True`` read tensors whose batch is merged with
other axes (exported attention, :mod:`attribx_onnx.converters.layout`).

Keys are op types of the default domain (``"Conv"``) or ``"domain:OpType"`` for other domains. Only this
package's modules register here; plugins register through :func:`attribx.translation.converter` and the
``attribx_converters`` hook, and the walk layers them over this table for one translation.
"""
from __future__ import annotations

from attribx.translation import ConverterTable

#: The built-in ONNX converters; the family modules (layers, elementwise, ...) fill it when imported.
TABLE = ConverterTable("onnx")


class Unsupported(Exception):
    """Raised inside a converter; the walk turns it into an UnsupportedError naming node, op and opset."""
