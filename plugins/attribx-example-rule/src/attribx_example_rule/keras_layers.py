"""The template's custom Keras layer, the twin of :class:`.torch_layers.ScaledTanh` (imports keras; the
converter names it by its dotted path)."""
from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="attribx_example_rule")
class ScaledTanh(keras.layers.Layer):
    """scale · tanh(x), one learned scale per feature (the last axis)."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        return keras.ops.tanh(x) * self.scale
