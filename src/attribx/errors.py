"""Exception types: every failure attribx reports is one of these, so the CLI can print one line."""


class AttribxError(Exception):
    """Base class of all errors attribx raises on purpose."""


class GraphError(AttribxError, ValueError):
    """The intermediate graph is malformed (names, order, shapes, attributes)."""


class UnsupportedError(AttribxError, NotImplementedError):
    """An op, layer or model part has no translation, kernel or rule; the message names the hook that adds it."""


class InputError(AttribxError, ValueError):
    """The data given to attribx is unusable (shape, NaN, dtype, target)."""


class InputShapeError(InputError):
    """The input's shape does not fit the model. ``expected`` is the shape it takes, batch axis first (None,
    or a name such as ``"H"``, where any size fits), so that the caller holding the data can say how to fix it."""

    def __init__(self, message: str, expected: tuple | None = None):
        super().__init__(message)
        self.expected = expected


class MethodError(AttribxError, ValueError):
    """Unknown method, rule or parameter."""


class StorageError(AttribxError, OSError):
    """A relevance file cannot be read or written."""


class PluginError(AttribxError, RuntimeError):
    """A plugin failed to load or contributes something inconsistent."""


class ModelLoadError(AttribxError, ValueError):
    """A path or object is not a model attribx can load."""


class AttribxWarning(UserWarning):
    """Base class of the warnings attribx gives: something was done that the user may not expect."""


class ModelModeWarning(AttribxWarning):
    """A model in training mode is explained as in eval mode (its own mode is left as it is)."""


class ConservationWarning(AttribxWarning):
    """An LRP explanation's input relevance sums to orders of magnitude more than the explained score
    (relevance was created on the way back, typically by a batch norm that could not be folded)."""
