"""Per-op converters and the table each backend keeps of them.

A converter turns one framework construct into graph nodes: a torch module class or function (or a
tensor method, named ``"method:view"``), a Keras layer class, an ONNX op type. Built-ins register where
they are written, with their table's decorator::

    TABLE = ConverterTable("torch")

    @TABLE.register(nn.Conv2d, F.conv2d)
    def conv(ctx, x, weight, bias=None, stride=1, ...): ...

Plugins register through the public :func:`converter` decorator and return what they decorated from the
``attribx_converters`` hook; the backend layers them over its own table for one translation
(:meth:`ConverterTable.with_plugins`), so one custom layer needs one converter, not a new backend.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..errors import PluginError

FRAMEWORKS = ("torch", "keras", "onnx")


@dataclass(frozen=True)
class Converter:
    """What converts ``target`` of ``framework`` into graph nodes; ``origin``: where it was registered."""

    framework: str
    target: Any
    convert: Callable
    origin: str = ""
    options: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.framework not in FRAMEWORKS:
            raise PluginError(f"converter {self.origin or self.convert!r}: framework {self.framework!r} is not "
                              f"one of {', '.join(FRAMEWORKS)}")


def _origin(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def converter(framework: str, *targets: Any, **options: Any) -> Callable:
    """Public decorator: mark ``fn`` as the converter of ``targets`` (classes, functions, op type names).

    The decorated function is returned unchanged, carrying its :class:`Converter` records in
    ``fn.attribx_converters``; a plugin returns such functions (or the records) from its
    ``attribx_converters`` hook. The converter's signature follows the framework (docs/plugins.md)."""
    if not targets:
        raise PluginError(f"converter({framework!r}) needs at least one target (a class, function or op type)")

    def mark(fn: Callable) -> Callable:
        records = [Converter(framework, t, fn, _origin(fn), dict(options)) for t in targets]
        fn.attribx_converters = tuple(getattr(fn, "attribx_converters", ())) + tuple(records)
        return fn

    return mark


def converters_of(items: Iterable[Any]) -> list[Converter]:
    """The :class:`Converter` records in a hook result: records, decorated functions, or lists of them."""
    out: list[Converter] = []
    for item in items or ():
        if isinstance(item, Converter):
            out.append(item)
        elif callable(item) and hasattr(item, "attribx_converters"):
            out.extend(item.attribx_converters)
        elif isinstance(item, (list, tuple, set)):
            out.extend(converters_of(item))
        else:
            raise PluginError(f"an 'attribx_converters' hook returned {item!r}; return functions decorated "
                              f"with attribx.translation.converter(...) or Converter records")
    return out


def converter_key(conv: Converter) -> str:
    """``"torch:mypkg.layers.ScaledTanh"``: how the registry and ``attribx plugins`` name a converter."""
    return f"{conv.framework}:{_name(conv.target)}"


class ConverterTable:
    """One framework's converters by target. Classes are looked up along their MRO (a subclass of
    ``nn.Conv2d`` uses ``nn.Conv2d``'s converter unless it has its own)."""

    def __init__(self, framework: str, entries: dict | None = None):
        self.framework = framework
        self._by_target: dict[Any, Converter] = dict(entries or {})

    def register(self, *targets: Any, **options: Any) -> Callable:
        """Decorator for built-in converters: registers ``fn`` for every target, once."""
        def mark(fn: Callable) -> Callable:
            for t in targets:
                self.add(Converter(self.framework, t, fn, _origin(fn), dict(options)))
            return fn
        return mark

    def add(self, conv: Converter, replace: bool = False) -> None:
        if conv.framework != self.framework:
            raise PluginError(f"{conv.origin}: a {conv.framework} converter cannot join the {self.framework} table")
        old = self._by_target.get(conv.target)
        if old is not None and not replace and old.convert is not conv.convert:
            raise PluginError(f"two {self.framework} converters for {_name(conv.target)}: {old.origin} and "
                              f"{conv.origin}")
        self._by_target[conv.target] = conv

    def with_plugins(self, converters: Iterable[Converter]) -> "ConverterTable":
        """A copy with the plugins' converters of this framework on top: a plugin's converter replaces the
        built-in one for its target; two plugins converting one target are refused."""
        table = ConverterTable(self.framework, self._by_target)
        mine = [c for c in converters if c.framework == self.framework]
        seen: dict[Any, Converter] = {}
        for c in mine:
            if c.target in seen and seen[c.target].convert is not c.convert:
                raise PluginError(f"two plugins convert {self.framework} {_name(c.target)}: {seen[c.target].origin} "
                                  f"and {c.origin}; uninstall one")
            seen[c.target] = c
            table.add(c, replace=True)
        return table

    def lookup(self, target: Any) -> Converter | None:
        """The converter of ``target``: itself, else (for a class) its nearest base class's. A class or
        function is also found by its dotted path (``"mypkg.layers.ScaledTanh"``), so a plugin can register
        a converter without importing the framework its layer is written in."""
        for key in (target.__mro__ if inspect.isclass(target) else (target,)):
            conv = self._get(key)
            if conv is None and (inspect.isclass(key) or callable(key)):
                conv = self._get(_name(key))
            if conv is not None:
                return conv
        return None

    def _get(self, target: Any) -> Converter | None:
        try:
            return self._by_target.get(target)
        except TypeError:            # an unhashable target has no converter
            return None

    def __contains__(self, target: Any) -> bool:
        return self.lookup(target) is not None

    def __iter__(self):
        return iter(self._by_target.values())

    def __len__(self) -> int:
        return len(self._by_target)

    def targets(self) -> list:
        return list(self._by_target)


def _name(target: Any) -> str:
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', repr(target))}".lstrip(".")
