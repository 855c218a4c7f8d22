"""The translation kit the backends share: converters registered per op, and the translator base.

A backend (torch, Keras, ONNX) walks its framework's model and hands each layer, function or op to the
converter registered for it (:mod:`attribx.translation.converters`). Converters emit graph nodes
through a :class:`~attribx.translation.kit.Translator`, which owns naming, constants, aliases, error
locations and axis order (:class:`~attribx.translation.kit.Tensor` knows how the framework's axes map
onto the graph's). Plugins add converters for their own layers through the ``attribx_converters``
hook, without replacing the backend (docs/plugins.md).
"""
from .converters import Converter, ConverterTable, converter, converter_key, converters_of
from .kit import Tensor, TranslationError, Translator, NO_TRANSLATION_DOCS

__all__ = ["Converter", "ConverterTable", "converter", "converter_key", "converters_of", "Tensor", "TranslationError",
           "Translator", "NO_TRANSLATION_DOCS"]
