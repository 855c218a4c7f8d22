"""Translate a Keras 3 model into the attribx graph, keeping Keras's layer names and the user's layout.

``translate_keras(model, input_shape, converters)`` walks a ``keras.Sequential`` layer by layer, or a
functional ``keras.Model`` node by node in Keras's own topological order (:mod:`.walk`); nested models
are walked in place (flattened), their nodes named ``outer/inner`` (the bare inner name also resolves,
as an alias, when it is unique). Every main node is named after its Keras layer; extra nodes a layer
needs carry the layer's name and a suffix after a colon, as in the torch backend (``dense_1:activation``,
``conv1:nchw``).

Converters. Each layer goes to the converter registered for its class (looked up along the MRO, so a
subclass of ``Dense`` is a Dense) in one table, :data:`.common.TABLE`, by the family modules where they
are written: :mod:`.layers` (Dense, convolutions, BatchNormalization, Embedding), :mod:`.elementwise`
(activations, Rescaling, Normalization, dropout, ConvNeXt's LayerScale), :mod:`.shape` (Flatten, Reshape,
Permute, padding, cropping, Concatenate and merges), :mod:`.operations` (``keras.ops`` arithmetic in a
functional model: ``x + 3.0``, ``a + b``), :mod:`.pooling`, :mod:`.recurrent` (LSTM, GRU, Bidirectional) and
:mod:`.masks` (Masking), :mod:`.transformer` (LayerNormalization, RMSNormalization, EinsumDense,
MultiHeadAttention, UpSampling2D, Resizing). A plugin adds or replaces one with ``attribx.translation.converter("keras",
LayerClass)`` and the ``attribx_converters`` hook; its converters are layered over the built-in table
for each translation. A Keras converter is::

    def convert(ctx, layer, inputs) -> Tensor | list[Tensor]

(a layer called with several arguments, as MultiHeadAttention's query, value and key, reads each through
``ctx.call_argument(name, position)``)

``ctx`` the :class:`.walk.KerasTranslator` (the kit's ``emit``, ``constant``, ``sub``, ``reorder``,
plus ``keras_order(x)`` and ``channels_first(x)``); ``layer`` the Keras layer object; ``inputs`` the
translated inputs, kit :class:`~attribx.translation.Tensor` values whose ``order`` maps Keras's axes to
the graph's (``x.graph_axis(k)`` is where Keras's axis ``k`` is). It returns what ``ctx.emit`` returns
(the node named after the layer), or a list for layers with several outputs. ``ctx.emit`` infers the
node's shape; pass ``order=x.order`` for elementwise results. A converter registered with
``reads_mask=True`` handles Keras's padding mask itself (``x.mask``); other layers that would read a mask
are refused, and masks pass on as Keras's ``compute_mask`` does.

Layout. Keras is channels-last, the graph's conv, pool and batch-norm ops are channel-first. Each
translated value therefore carries its axis order. Layout-agnostic layers (activations, add, dropout,
batch norm or softmax or concat with a remapped axis) keep the order, conv and pooling want channel-first
and get one transpose when the value is not already so, and layout-sensitive layers (Flatten, Reshape,
Dense on >2-D input, Permute, model outputs) get a transpose back to Keras order first. A VGG-style
``conv ... conv, flatten`` thus has one transpose after the input and one before the flatten, and Flatten
flattens in H, W, C order exactly as Keras does. The graph input keeps the user's layout (``NHWC``), so
relevance comes back in it.

A layer without a converter raises the kit's "has no translation" error (an
:class:`attribx.UnsupportedError`) naming the layer, its class and the hook that adds one; any setting
the graph cannot express exactly raises an UnsupportedError naming the layer too.
"""
# the converter families: importing them registers their converters in TABLE (before any walk runs: the
# walk's module is inside this package, so importing it runs this first)
from . import elementwise, layers, operations, pooling, recurrent, shape, transformer  # noqa: F401
from .common import HOOK_HINT, TABLE
from .masks import KTensor
from .walk import KerasTranslator, translate_keras

__all__ = ["translate_keras", "KerasTranslator", "KTensor", "TABLE", "HOOK_HINT"]
