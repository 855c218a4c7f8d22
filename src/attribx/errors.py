"""Exception types: every failure attribx reports is one of these, so the CLI can print one line."""


class AttribxError(Exception):
    """Base class of all errors attribx raises on purpose."""


class GraphError(AttribxError, ValueError):
    """The intermediate graph is malformed (names, order, shapes, attributes)."""


class UnsupportedError(AttribxError, NotImplementedError):
    """An op, layer or model part has no translation, kernel or rule; the message names the hook that adds it."""


class InputError(AttribxError, ValueError):
    """The data given to attribx is unusable (shape, NaN, dtype, target)."""


class MethodError(AttribxError, ValueError):
    """Unknown method, rule or parameter."""


class StorageError(AttribxError, OSError):
    """A relevance file cannot be read or written."""


class PluginError(AttribxError, RuntimeError):
    """A plugin failed to load or contributes something inconsistent."""


class ModelLoadError(AttribxError, ValueError):
    """A path or object is not a model attribx can load."""
