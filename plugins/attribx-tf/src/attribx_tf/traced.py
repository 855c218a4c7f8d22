"""The whole relevance pass (forward and backward) as one compiled ``tf.function``.

Run node by node, each eager TF op costs about what the same op costs in a graph, plus Python dispatch: a
TF gradient pass, one compiled graph, is 2-3x faster than the eager pass. So the TF engine traces
:func:`attribx.propagation.propagate` once per (graph content, rules and their parameters, input signature,
kept nodes, engine dtype and device, kernel and op tables) and calls the traced graph from then on, never
retracing it (:data:`TRACES` counts the traces). Tracing costs several passes, so a pass is traced on its
second call (the engine's ``trace_after``: eager calls first; 0 traces on the first call): a one-off
explanation runs eagerly.

While tracing, a rule's choice of form by value (``Engine.if_any_nonzero``: γ's one-branch form, αβ's fast
forms) becomes a ``tf.cond`` decided at run time, other value checks (``any_nonzero``) answer conservatively
(the general branch, always correct), and the engine's parameters are converted eagerly and shared by every trace of
the same graph content (captured, never copied into the graph as constants). The start relevance (the
targets, picked from the scores on the host) is computed by the caller's ``init`` through ``tf.py_function``
on every call, so the target spec never changes the trace.

Options that read values on the host mid-pass run eagerly instead, as do graphs or rules that cannot be
traced; each such case is counted in :data:`FALLBACKS` by reason:
``conservation=True`` (per-node sums), ``trace=True`` (the flow record), several signal inputs, an input that
is not a tensor, a caller's own ``tf.function`` (the pass is traced into it anyway), an engine built with
``compile_pass=False``, and a pass whose tracing failed (``"untraceable"``: remembered per key).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import threading
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from attribx.digests import digest
from attribx.propagation import Propagation, propagate

#: traces of the whole pass, by graph fingerprint: a growing count on repeated calls means retracing
TRACES: collections.Counter = collections.Counter()
#: passes that ran eagerly instead, by reason
FALLBACKS: collections.Counter = collections.Counter()

#: graphs (by content, engine dtype and device) whose traces are kept: each keeps its converted parameters
MAX_GRAPHS = 4
#: traces kept per graph (methods, input shapes, kept nodes)
MAX_TRACES = 32

_LOCK = threading.Lock()
# (fingerprint, dtype, device) -> _Group, least recently used first
_GROUPS: "collections.OrderedDict[tuple, _Group]" = collections.OrderedDict()


class _Group:
    """The traces of one graph content on one engine dtype and device, and the parameters they share."""

    def __init__(self):
        self.params: dict = {}          # (node name, dtype) -> {name: tensor}, converted eagerly
        self.passes: "collections.OrderedDict[tuple, _Pass | None]" = collections.OrderedDict()


class _Pass:
    """One traced pass: its ``tf.function`` and the slot the caller's ``init`` is put in for each call."""

    def __init__(self):
        self.fn = None
        self.tables = None
        self.calls = 0                      # eager calls before the trace
        self.init = None
        self.error: BaseException | None = None
        self.lock = threading.Lock()


def clear() -> None:
    """Forget every traced pass (and the parameters they hold)."""
    with _LOCK:
        _GROUPS.clear()


def _value_key(v) -> Any:
    """A hashable stand-in for a rule parameter: arrays by content, rules by type and parameters."""
    if isinstance(v, np.ndarray):
        return ("array", v.shape, v.dtype.str, digest(v))
    if hasattr(v, "params") and isinstance(getattr(v, "params"), dict):
        return (type(v), tuple(sorted((k, _value_key(p)) for k, p in v.params.items())))
    if isinstance(v, (list, tuple)):
        return (type(v), tuple(_value_key(p) for p in v))
    if isinstance(v, dict):
        return tuple(sorted((k, _value_key(p)) for k, p in v.items()))
    if tf.is_tensor(v):
        return ("tensor", tuple(v.shape), v.dtype.name, digest(np.asarray(v)))
    return (type(v), repr(v))


def _spec(t) -> tuple:
    return tuple(t.shape), t.dtype


def fallback_reason(engine, x, keep, conservation, trace, masks) -> str | None:
    """Why this pass runs eagerly (None: it is traced)."""
    if not getattr(engine, "compile_pass", True):
        return "compile_pass=False"
    if conservation:
        return "conservation"
    if trace:
        return "trace"
    if isinstance(x, (tuple, list)):
        return "several inputs"
    if not tf.is_tensor(x) or any(not tf.is_tensor(m) for m in (masks or {}).values()):
        return "not a tensor"
    if not tf.executing_eagerly():
        return "inside tf.function"
    return None


def compiled_propagate(engine, graph, x, rules: Mapping[str, Any], init, start: str, keep=(),
                       conservation: bool = False, trace: bool = False, ops=None, masks=None, quotients=True):
    """The pass through its traced ``tf.function`` (traced on first use), or None where it runs eagerly."""
    reason = fallback_reason(engine, x, keep, conservation, trace, masks)
    if reason is not None:
        FALLBACKS[reason] += 1
        return None
    masks = dict(masks or {})
    keep = tuple(keep)
    fingerprint = graph.fingerprint()
    group_key = (fingerprint, engine.dtype, engine.device, type(engine))
    key = (start, keep, bool(quotients), _spec(x), tuple(sorted((k, _spec(v)) for k, v in masks.items())),
           id(engine.kernels), id(graph.ops if ops is None else ops),
           tuple(sorted((name, type(r), _value_key(getattr(r, "params", r))) for name, r in rules.items())))
    with _LOCK:
        group = _GROUPS.pop(group_key, None) or _Group()
        _GROUPS[group_key] = group              # most recently used last
        while len(_GROUPS) > MAX_GRAPHS:
            _GROUPS.popitem(last=False)
        entry = group.passes.pop(key, None) if key in group.passes else _Pass()
        group.passes[key] = entry
        if entry is not None:
            # the key holds the tables' ids: held here, no other table can take those ids while the trace lives
            entry.tables = (engine.kernels, graph.ops if ops is None else ops)
        while len(group.passes) > MAX_TRACES:
            group.passes.popitem(last=False)
    if entry is None:                         # tracing failed before: eager
        FALLBACKS["untraceable"] += 1
        return None
    with entry.lock:
        if entry.fn is None and entry.calls < getattr(engine, "trace_after", 0):
            entry.calls += 1                  # a pass run once stays eager: tracing costs several passes
            FALLBACKS["before tracing"] += 1
            return None
        if entry.fn is None:
            entry.fn = _trace(engine, graph, x, rules, start, keep, ops, masks, group, entry, fingerprint, quotients)
            if entry.fn is None:
                with _LOCK:
                    group.passes[key] = None
                FALLBACKS["untraceable"] += 1
                return None
        entry.init, entry.error = init, None
        try:
            with _no_remapper():
                scores, relevance = entry.fn(x, masks)
        except tf.errors.OpError:
            if entry.error is not None:       # the caller's init raised: its own error, not TF's wrapper
                raise entry.error from None
            raise
        finally:
            entry.init = None
    return Propagation(scores, dict(relevance), {}, start=start)


def _trace(engine, graph, x, rules, start, keep, ops, masks, group, entry, fingerprint, quotients=True):
    """A ``tf.function`` running the pass for these input specs, traced now (None: the pass cannot be traced)."""

    def start_relevance(scores):
        if not scores.dtype.is_floating:
            raise _Untraceable("scores are not floating-point")

        def call(s):
            try:
                return entry.init(s)
            except BaseException as err:      # noqa: BLE001 - re-raised by the caller as is
                entry.error = err
                raise
        r0 = tf.py_function(call, [scores], Tout=scores.dtype)
        r0.set_shape(scores.shape)
        return r0

    def run(xt, mt):
        TRACES[fingerprint] += 1             # runs only while tracing
        result = propagate(graph, engine, xt, rules, start_relevance, start, keep, ops=ops, masks=mt or None,
                           quotients=quotients)
        return result.output, result.relevance

    if _no_remapper_options() is None:       # no way to keep the remapper off: tracing could abort the process
        return None
    fn = tf.function(run, autograph=False, reduce_retracing=False,
                     input_signature=[tf.TensorSpec(x.shape, x.dtype),
                                      {k: tf.TensorSpec(v.shape, v.dtype) for k, v in masks.items()}])
    engine.tracing, engine.shared_params = True, group.params
    try:
        fn.get_concrete_function()
    except Exception:                         # noqa: BLE001 - data-dependent Python in a rule or kernel: eager
        return None
    finally:
        engine.tracing, engine.shared_params = False, None
    return fn


@functools.lru_cache(maxsize=8)
def _options_without_remapper(executor_type, config: bytes | None):
    from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
    from tensorflow.python.eager import context as tf_context
    proto = config_pb2.ConfigProto()
    if config is not None:
        proto.ParseFromString(config)
    proto.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
    return tf_context.FunctionCallOptions(executor_type=executor_type, config_proto=proto)


def _no_remapper_options():
    """This thread's function-call options with grappler's remapper off, or None where TensorFlow's (private)
    per-call options are not there. The remapper fuses a channel-first conv with its bias on the CPU into an op
    that aborts the process (TF 2.21, oneDNN: "Check failed ... tensor_format.h"); the eager engine runs those
    convs channel-first, and so does the traced pass."""
    try:
        from tensorflow.python.eager import context as tf_context
        current = tf_context.context().function_call_options
        return current, _options_without_remapper(current.executor_type, current.config_proto_serialized)
    except (ImportError, AttributeError, TypeError):
        return None


@contextlib.contextmanager
def _no_remapper():
    """Calls in this block run (and are optimised, on their first call) without grappler's remapper."""
    from tensorflow.python.eager import context as tf_context
    current, options = _no_remapper_options()
    ctx = tf_context.context()
    ctx.function_call_options = options
    try:
        yield
    finally:
        ctx.function_call_options = current


class _Untraceable(Exception):
    """The pass cannot be traced (it runs eagerly)."""
