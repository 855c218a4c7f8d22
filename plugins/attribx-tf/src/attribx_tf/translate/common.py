"""What the Keras converters share: the one converter table, the refusal they raise, and small readers of
Keras layers (weights as numpy, class paths, data format)."""
from __future__ import annotations

import numpy as np

from attribx.translation import ConverterTable

#: The built-in Keras converters by layer class; each family module registers into it where it is written.
TABLE = ConverterTable("keras")

HOOK_HINT = ("a plugin can add a converter for one layer through the 'attribx_converters' hook, ops through "
             "the 'attribx_ops' hook and translations through 'attribx_translate'")


class Unsupported(Exception):
    """Raised by a converter for a setting the graph cannot express exactly; the walk turns it into an
    :class:`attribx.UnsupportedError` naming the layer."""


def present(*classes) -> list:
    """The layer classes this Keras has (keras.applications' own layers, imported where the Keras version
    has them, are None otherwise): a converter registers for those only."""
    return [c for c in classes if c is not None]


def one(xs: list):
    """The single input of a layer that takes one."""
    if len(xs) != 1:
        raise Unsupported(f"takes {len(xs)} inputs, expected one")
    return xs[0]


def as_numpy(v) -> np.ndarray:
    """A Keras variable or tensor (or an array, a number) as a numpy array of its own.

    Through ``.numpy()``, not ``np.array(v)`` / ``keras.ops.convert_to_numpy(v)``: the ``__array__`` of Keras
    variables and TensorFlow tensors takes no ``copy`` keyword, which NumPy 2 warns about on every call."""
    if hasattr(v, "numpy") and not isinstance(v, np.ndarray):
        v = v.numpy()
    return np.array(v)


def class_path(layer) -> str:
    """``keras.layers.Dense`` rather than Keras's private module path, for messages."""
    cls = type(layer)
    mod = cls.__module__
    if mod.startswith("keras.src.layers") or mod.startswith("keras.src.models"):
        mod = "keras.layers" if mod.startswith("keras.src.layers") else "keras.models"
    elif mod.startswith("keras.src.ops"):
        mod = "keras.ops"
    return f"{mod}.{cls.__qualname__}"


def channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") != "channels_first"


def channels_first_order(rank: int) -> tuple:
    """The axis order (kit :class:`~attribx.translation.Tensor` ``order``) of a channels-last Keras value
    stored channel-first: Keras's batch axis is graph axis 0, its spatial axes follow the channel, its
    channel (last) axis is graph axis 1."""
    return (0,) + tuple(range(2, rank)) + (1,)
