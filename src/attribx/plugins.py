"""The plugin manager: pluggy, the ``attribx`` entry-point group, and the registry built from the hooks.

The built-in plugin (:mod:`attribx.builtin`) registers through the same hooks as any third party, and
is loaded the way they are, by its module name: no module below this one imports the registry, they are
handed what it holds by the entry points (:mod:`attribx.api`, :mod:`attribx.cli`, the pytest plugin).
A plugin that fails to import, or whose hook raises, is recorded with its error and skipped; the
others keep working. Name clashes keep the first registration (built-ins first) and are reported.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .engines import base as engine_base
from .errors import MethodError, PluginError
from .ops import describe_ops
from .translation import converter_key, converters_of

ENTRY_POINT_GROUP = "attribx"
BUILTIN_PLUGIN = "attribx.builtin"


@dataclass
class PluginFailure:
    plugin: str
    source: str
    error: str

    def __str__(self):
        return f"plugin {self.plugin!r} ({self.source}) failed: {self.error}"


@dataclass
class PluginInfo:
    name: str
    source: str
    contributes: dict[str, list[str]] = field(default_factory=dict)


class Registry:
    """Everything the plugins contribute, by kind and name, with where each came from."""

    KINDS = ("ops", "engines", "rules", "methods", "evaluators", "passes", "translators", "converters", "formats")

    def __init__(self, pm: pluggy.PluginManager, sources: dict[str, str], failures: list[PluginFailure]):
        self._pm = pm
        self._sources = sources
        self.failures = failures
        self.conflicts: list[str] = []
        self.provider: dict[tuple[str, str], str] = {}
        self.ops = self._collect("ops", pm.hook.attribx_ops, lambda x: x.name)
        self.engines = self._collect("engines", pm.hook.attribx_engines, lambda x: x.name)
        self.rules = self._collect("rules", pm.hook.attribx_rules, lambda x: x.name)
        self.methods = self._collect("methods", pm.hook.attribx_methods, lambda x: x.name)
        self.evaluators = self._collect("evaluators", pm.hook.attribx_evaluators, None)
        self.passes = self._collect("passes", pm.hook.attribx_graph_passes, lambda x: x.name)
        self.translators = self._collect("translators", pm.hook.attribx_model_types, None)
        self.formats = self._collect("formats", pm.hook.attribx_model_formats, None)
        self.converters = self._collect("converters", pm.hook.attribx_converters, None)
        self._kernels: dict[str, dict] = {}

    def _impls(self, hook):
        # registration order (pluggy calls last-registered first; we want built-ins first)
        return sorted(hook.get_hookimpls(), key=lambda i: self._order(i.plugin_name))

    def _order(self, name: str) -> int:
        return list(self._sources).index(name) if name in self._sources else len(self._sources)

    def _call(self, impl, **kwargs):
        try:
            return impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception as err:  # a broken plugin must not break the others
            failure = PluginFailure(impl.plugin_name, self._sources.get(impl.plugin_name, "registered"),
                                    f"hook {impl.function.__name__} raised {type(err).__name__}: {err}")
            self.failures.append(failure)
            warnings.warn(str(failure), RuntimeWarning, stacklevel=3)
            return None

    def _collect(self, kind: str, hook, key, **kwargs) -> dict:
        table: dict[str, Any] = {}
        for impl in self._impls(hook):
            result = self._call(impl, **kwargs)
            if not result:
                continue
            if kind == "converters":        # records keyed "framework:target", one per decorated target
                items = self._converter_items(impl, result)
            else:
                items = result.items() if isinstance(result, dict) else [(key(x), x) for x in result]
            for name, item in items:
                if name in table:
                    self.conflicts.append(
                        f"{kind[:-1]} {name!r} from plugin {impl.plugin_name!r} ignored: already provided by "
                        f"{self.provider[(kind, name)]!r}")
                    continue
                table[name] = item
                self.provider[(kind, name)] = impl.plugin_name
        return table

    def _converter_items(self, impl, result) -> list:
        try:
            return [(converter_key(c), c) for c in converters_of(result)]
        except PluginError as err:
            failure = PluginFailure(impl.plugin_name, self._sources.get(impl.plugin_name, "registered"), str(err))
            self.failures.append(failure)
            warnings.warn(str(failure), RuntimeWarning, stacklevel=3)
            return []

    def kernels(self, engine: str) -> dict:
        """Kernels for one engine, from every plugin's ``attribx_kernels`` hook."""
        table = self._kernels.get(engine)
        if table is None:
            with _LOCK:
                table = self._kernels.get(engine)
                if table is None:
                    table = self._collect(f"kernels:{engine}s", self._pm.hook.attribx_kernels, None, engine=engine)
                    self._kernels[engine] = table
        return table

    # -- lookups with clear errors -------------------------------------------------------------
    def rule(self, name: str):
        try:
            return self.rules[name]
        except KeyError:
            raise MethodError(f"unknown rule {name!r}; known rules: {', '.join(sorted(self.rules))} "
                              f"(plugins add rules through the 'attribx_rules' hook)") from None

    def method(self, name: str):
        try:
            return self.methods[name]
        except KeyError:
            raise MethodError(f"unknown method {name!r}; known methods: {', '.join(sorted(self.methods))} "
                              f"(plugins add methods through the 'attribx_methods' hook)") from None

    def engine(self, name: str):
        try:
            return self.engines[name]
        except KeyError:
            raise MethodError(f"unknown or unavailable engine {name!r}; installed engines: "
                              f"{', '.join(sorted(self.engines))}") from None

    def evaluator(self, name: str):
        try:
            return self.evaluators[name]
        except KeyError:
            raise MethodError(f"unknown evaluator {name!r}; known evaluators: "
                              f"{', '.join(sorted(self.evaluators)) or 'none installed'} "
                              f"(plugins add evaluators through the 'attribx_evaluators' hook)") from None

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin, where it comes from and what it contributes."""
        infos = {name: PluginInfo(name, src) for name, src in self._sources.items()}
        for (kind, name), plugin in self.provider.items():
            info = infos.setdefault(plugin, PluginInfo(plugin, "registered"))
            info.contributes.setdefault(kind.split(":")[0], []).append(name)
        return list(infos.values())

    def report(self, ops: bool = False) -> str:
        """What ``attribx plugins`` prints: each plugin, where it comes from and what it adds (``ops``: and
        the op set), then failures and name clashes."""
        lines = []
        for info in self.plugins():
            lines.append(f"{info.name}  ({info.source})")
            for kind in self.KINDS:
                names = info.contributes.get(kind)
                if names and kind in ("translators", "formats"):    # what a user can hand to attribx: say what each is
                    table = getattr(self, kind)
                    lines.append(f"    {kind:11} " + "; ".join(f"{n}: {table[n]}" for n in names))
                elif names:
                    lines.append(f"    {kind:11} {', '.join(names)}")
            for k in (k for k in info.contributes if k.startswith("kernels")):
                lines.append(f"    {k:11} {len(info.contributes[k])} ops")
        if ops:
            lines.append("\nops:\n" + describe_ops(self.ops))
        lines += [f"FAILED: {f}" for f in self.failures]
        lines += [f"conflict: {c}" for c in self.conflicts]
        return "\n".join(lines)


class _State:
    pm: pluggy.PluginManager | None = None
    sources: dict[str, str] = {}
    failures: list[PluginFailure] = []
    registry: Registry | None = None


# One lock for building the manager, the registry and the per-engine kernel tables: the first calls may come
# from several threads at once, and each must see the finished tables (never one half loaded). Reentrant,
# because building the registry builds the manager, and a plugin's hook may look something up.
_LOCK = threading.RLock()


def manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with the built-ins and installed entry points loaded."""
    pm = _State.pm
    if pm is not None:
        return pm
    with _LOCK:
        if _State.pm is None:
            pm = pluggy.PluginManager("attribx")
            pm.add_hookspecs(hookspecs)
            _State.sources, _State.failures = {}, []
            pm.register(importlib.import_module(BUILTIN_PLUGIN), name=BUILTIN_PLUGIN)
            _State.sources[BUILTIN_PLUGIN] = "built-in"
            _load_entry_points(pm)
            _State.pm = pm             # published only when loaded: other threads never see half of it
        return _State.pm


CWD_ENV = "ATTRIBX_PLUGINS_FROM_CWD"


def _search_path() -> list[str]:
    """Where entry points are looked for: ``sys.path`` without the current directory (``''``, ``.`` or the
    directory itself, which ``python -c``, ``python -m`` and notebooks put on it), so that a ``*.dist-info``
    lying in the directory one happens to work in is not imported, unless ``ATTRIBX_PLUGINS_FROM_CWD=1``."""
    if os.environ.get(CWD_ENV, "").strip() == "1":
        return list(sys.path)
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:
        cwd = None
    kept = []
    for entry in sys.path:
        if not isinstance(entry, str) or entry in ("", "."):
            continue
        try:
            if cwd is not None and os.path.realpath(entry) == cwd:
                continue
        except (OSError, ValueError):
            continue
        kept.append(entry)
    return kept


def _entry_points(group: str) -> list:
    """The entry points of ``group`` of the distributions installed on :func:`_search_path` (the first
    distribution of a name wins, as in ``importlib.metadata.entry_points``)."""
    seen, found = set(), []
    for dist in metadata.distributions(path=_search_path()):
        try:
            name = re.sub(r"[-_.]+", "-", (dist.metadata["Name"] or "").lower())
        except Exception:   # noqa: BLE001 - a broken METADATA is skipped like importlib does
            continue
        if name in seen:
            continue
        seen.add(name)
        found.extend(ep for ep in dist.entry_points if ep.group == group)
    return found


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in _entry_points(ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        source = f"entry point of {dist.name} {dist.version}" if dist else f"entry point {ep.value}"
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as err:
            failure = PluginFailure(ep.name, source, f"{type(err).__name__}: {err}")
            _State.failures.append(failure)
            warnings.warn(str(failure), RuntimeWarning, stacklevel=3)
            continue
        _State.sources[ep.name] = source


def register(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object or module at run time (the same hooks as an entry point)."""
    with _LOCK:
        pm = manager()
        try:
            name = pm.register(plugin, name=name)
        except ValueError as err:
            raise PluginError(str(err)) from None
        _State.sources[name] = "registered at run time"
        _State.registry = None
        return name


def unregister(name: str) -> None:
    with _LOCK:
        pm = manager()
        pm.unregister(name=name)
        _State.sources.pop(name, None)
        _State.registry = None


def reload() -> None:
    """Forget all plugins and load them again (after installing one in the same process)."""
    with _LOCK:
        _State.pm = None
        _State.registry = None
        metadata.distributions.cache_clear() if hasattr(metadata.distributions, "cache_clear") else None


def registry() -> Registry:
    """The process-wide registry, built once (under a lock: the first calls may come from several threads)."""
    reg = _State.registry
    if reg is not None:
        return reg
    with _LOCK:
        if _State.registry is None:
            pm = manager()
            _State.registry = Registry(pm, _State.sources, list(_State.failures))
        return _State.registry


def failures() -> list[PluginFailure]:
    return registry().failures


# engines built by hand (``TorchEngine()``) find their kernels in the registry; get_engine hands them over
engine_base.set_kernel_source(lambda engine: registry().kernels(engine))
