"""attribx's ONNX backend: ``.onnx`` models into the attribx graph.

Nothing here imports onnx at import time (``import attribx`` and plugin discovery stay light); onnx loads
when a model file is read or an ``onnx.ModelProto`` is translated. The graph runs on attribx's engines
(torch when installed, else numpy); onnxruntime is not needed.

The walk (:mod:`attribx_onnx.translate`) hands each ONNX node to the converter of its op type
(:mod:`attribx_onnx.converters`: layers, elementwise, pooling, shape, masks, recurrent). A plugin adds or
replaces one op's converter without replacing the backend::

    import attribx
    from attribx.translation import converter

    @converter("onnx", "Softsign")            # "domain:OpType" for ops outside the default domain
    def softsign(ctx, node, attrs):
        x = ctx.value(node.input[0])          # an attribx.translation.Tensor
        ...                                   # ctx.emit(op, [inputs], attrs=..., params=...) per graph node
        return ctx.emit("div", [x, denominator])

    class MyPlugin:
        @attribx.hookimpl
        def attribx_converters(self):
            return [softsign]

An ONNX converter receives ``(ctx, node, attrs)``: the translation (an :class:`attribx.translation.Translator`:
``value(name)`` for a tensor computed from the input, ``const(name)`` for a constant input, ``emit``,
``constant``, ``sub`` for extra node names), the ``onnx.NodeProto`` and its attributes as python values. It
returns one :class:`~attribx.translation.Tensor` per ONNX output (a list for several, None for an output
nothing reads) and raises :class:`attribx_onnx.converters.Unsupported` (or ``ctx.no_translation(...)``) to
refuse, with the reason. The shape of each emitted node comes from the graph's op set.
"""
from .translate import translate_onnx

__all__ = ["translate_onnx"]
