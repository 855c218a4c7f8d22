"""The relevance pass: one forward pass keeping activations, one backward pass node by node.

Nodes are visited in reverse topological order; each node's rule maps the relevance at its output to
its inputs; a value read by several nodes sums what comes back from each (branches). Activations are
freed as soon as the backward pass is past the node that produced them.
"""
from __future__ import annotations

import collections
import math

from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np

from .bounds import gated_products, nonnegative_values, value_bounds
from .errors import InputError, UnsupportedError
from .liveness import recomputed_values, released_values
from .rules.base import NodeContext, relevance_of


def ancestors(graph, start: str) -> list[str]:
    """Names of the nodes ``start`` depends on (itself included), in topological order."""
    needed = {start}
    for node in reversed(graph.nodes):
        if node.name in needed:
            needed.update(node.inputs)
    return [n.name for n in graph.nodes if n.name in needed]


def signal_values(graph, x) -> dict[str, Any]:
    """The signal inputs' values by name: ``x`` is one array (a graph with one signal input) or a tuple of
    arrays, one per signal input in :attr:`Graph.signal_inputs` order."""
    signals = graph.signal_inputs
    if not isinstance(x, (tuple, list)):
        return {graph.input.name: x}
    if len(x) != len(signals):
        raise InputError(f"{len(x)} inputs given; the graph's signal inputs are "
                         f"{', '.join(repr(v.name) for v in signals)}")
    return {v.name: a for v, a in zip(signals, x)}


def as_given(graph, arrays: Sequence[Any]):
    """Per-input arrays (signal order) in the form the pass takes: the array itself for one signal input."""
    return arrays[0] if len(graph.signal_inputs) == 1 else tuple(arrays)


def run_forward(graph, engine, x, upto: str | None = None, masks: Mapping[str, Any] | None = None,
                release: Collection[str] = (), recompute: Collection[str] = ()) -> dict[str, Any]:
    """Activations of the graph's inputs and every node up to ``upto`` (default: all outputs); ``x``: one array,
    or a tuple with one per signal input (:func:`signal_values`); ``masks``: the values of the graph's mask
    inputs by name (engine arrays); one not given runs as nothing masked (all ones, or its ``meta["mask_fill"]``).
    ``release``: values replaced by the engine's shape stub after their last consumer ran, where they hold no
    zero (:mod:`attribx.liveness`); ``recompute``: values dropped after their last consumer ran (the backward
    pass computes them again: :func:`attribx.liveness.recomputed_values`)."""
    names = set(ancestors(graph, upto)) if upto else None
    waiting: dict[str, int] = {}
    release, recompute = set(release), set(recompute)
    shared: set[int] = set()
    if release or recompute:
        for node in graph.nodes:
            if names is None or node.name in names:
                for i in set(node.inputs) & (release | recompute):
                    waiting[i] = waiting.get(i, 0) + 1
        release = {name for name in release if name in waiting}
        recompute = {name for name in recompute if name in waiting}
    acts = signal_values(graph, x)
    first = next(iter(acts.values()))
    fill = graph.meta.get("mask_fill", {})
    for v in graph.mask_inputs:
        given = (masks or {}).get(v.name)
        acts[v.name] = given if given is not None else engine.asarray(
            np.full((int(first.shape[0]), *v.shape[1:]), fill.get(v.name, 1), dtype=v.dtype))
    for node in graph.nodes:
        if names is not None and node.name not in names:
            continue
        ins = [acts[i] for i in node.inputs]
        out = acts[node.name] = engine.forward(node, ins, engine.node_params(node, ins or [first]))
        if recompute and any(out is a for a in ins):
            shared.add(id(out))         # an op that hands back its input: that array is held under two names
        if node.name in release and engine.has_zero(out):
            release.discard(node.name)          # its rule must find the zero units: kept
        for i in set(node.inputs) & (release | recompute):
            waiting[i] -= 1
            if waiting[i]:
                continue
            if i in recompute:
                shell = None if id(acts[i]) in shared else engine.vacate(acts[i])
                if shell is None:
                    del acts[i]
                else:
                    acts[i] = Vacated(shell)
            else:
                stub = engine.shape_stub(acts[i])
                if stub is not None:
                    acts[i] = stub
    return acts


@dataclass
class Vacated:
    """A value the forward pass dropped, kept as the engine's shell (:meth:`Engine.vacate`) until recomputed."""

    shell: Any


@dataclass
class Propagation:
    """What one relevance pass returns (engine arrays)."""

    output: Any                      # the values at the start node (scores)
    relevance: dict[str, Any]        # at each signal input, and at every kept node's output
    conservation: dict[str, Any] = field(default_factory=dict)  # per node: relevance sum per sample
    targets: Any = None              # explained class per sample
    start: str = ""                  # the node whose values were explained
    dims: tuple = ()                 # dims of the input relevance (a method may reduce some)
    input_dims: dict[str, tuple] = field(default_factory=dict)   # the same per signal input, by name
    #: with ``trace=True``: per node, (relevance sum at its output, sum of what its rule passed back), per sample
    flow: dict[str, tuple] = field(default_factory=dict)


#: pass quotients s = R / z between rules that take them (:meth:`attribx.rules.Rule.carry`); False: relevance
#: everywhere (the tests compare the two)
QUOTIENTS = True
#: with quotients, release activations the pass reads only for their shape (:mod:`attribx.liveness`)
RELEASE = True
#: a compiled pass (:meth:`Engine.ordered_after`) may run a node's step this many steps before the backward pass
#: reaches the node: its terms that need only forward values (αβ's parts, a denominator) overlap the steps above
#: it on another core (TF's inter-op threads), and at most that many steps' terms are held early. 0: strictly in
#: order (least memory; on 2 cores TF MobileNetV2 α2β1 takes 2.76× TF's gradient pass at 1.26× its memory, with
#: 2: 2.76× at 1.57×, εγ 2.27× → 2.00× at 1.03× → 1.51×; unordered: 2.27×, 1.88× at 4.0×, 3.4×)
LOOKAHEAD = 2
#: recompute cheap values (a ReLU's, a concat's: :data:`attribx.liveness.RECOMPUTED_OPS`) from their inputs in
#: the backward pass instead of holding them (:func:`attribx.liveness.recomputed_values`); False: hold them (the
#: tests compare the two)
RECOMPUTE = True


def _value(name: str, acts: dict, recompute: Collection[str], graph, engine):
    """The forward value ``name``: held in ``acts``, or computed again from its inputs (held or recomputed in
    turn) and kept there."""
    held = acts.get(name) if name in recompute else acts[name]
    if held is not None and not isinstance(held, Vacated):
        return held
    node = graph[name]
    inputs = [_value(i, acts, recompute, graph, engine) for i in node.inputs]
    acts[name] = engine.recompute(node, inputs, engine.node_params(node, inputs),
                                  held.shell if held is not None else None)
    return acts[name]


def _accumulate(into: dict, name: str, value) -> None:
    into[name] = into[name] + value if name in into else value


def propagate(graph, engine, x, rules: Mapping[str, Any], init: Callable[[Any], Any], start: str,
              keep: Sequence[str] = (), conservation: bool = False, trace: bool = False,
              ops: Mapping[str, Any] | None = None, masks: Mapping[str, Any] | None = None,
              quotients: bool | None = None) -> Propagation:
    """Forward to ``start``, initialise relevance there with ``init(scores)``, and pass it back.

    ``rules`` maps node names to rules (every node between input and ``start`` needs one). ``trace`` records,
    per node, the relevance sum that reached it and the sum its rule passed back (``Propagation.flow``),
    to find where relevance is created (:func:`blow_up`). ``ops`` (the op table, for each node's category)
    defaults to the graph's own (``graph.ops``); ``masks`` as for :func:`run_forward` (they take no relevance).

    Between two nodes whose rules both take quotients (LRP-0/ε on linear maps and sums, routing, AttnLRP's
    and CP-LRP's rules) the pass hands on s = R / z instead of R (``quotients``, default :data:`QUOTIENTS`;
    never with ``trace``): with ε = 0 that is LXT's modified gradient, with no division by z nor product by
    x at each layer. Relevance itself, z ⊙ s, is formed only where a rule or the caller needs it.

    An engine may run the whole pass as one compiled program (:meth:`Engine.compiled_pass`, the TF engine's
    traced ``tf.function``); it returns None for what it does not compile, which then runs here node by node.
    """
    quotients = QUOTIENTS if quotients is None else quotients
    compiled = getattr(engine, "compiled_pass", None)     # an engine may run the whole pass compiled
    done = compiled and compiled(graph, x, rules, init, start, keep=keep, conservation=conservation, trace=trace,
                                 ops=ops, masks=masks, quotients=quotients)
    if done is not None:
        return done
    ops = graph.ops if ops is None else ops
    order = ancestors(graph, start)
    carrying = quotients and not trace
    takes = {name: carrying and name in rules and rules[name].takes_quotient(graph[name], ops[graph[name].op].category)
             for name in order}
    release = (released_values(graph, rules, takes, order, start, keep)
               if carrying and not conservation and RELEASE and getattr(engine, "releases_values", False) else ())
    recompute = recomputed_values(graph, order, start, release) if RECOMPUTE else set()
    acts = run_forward(graph, engine, x, upto=start, masks=masks, release=release, recompute=recompute)
    scores = acts[start]
    rel: dict[str, Any] = {start: init(scores)}
    quot: dict[str, Any] = {}       # quotients: what reached a node is z ⊙ quot[node] (+ rel[node])
    kept: dict[str, Any] = {}
    sums: dict[str, Any] = {}
    flow: dict[str, tuple] = {}
    keep = set(keep)
    consts = {n.name for n in graph.nodes if ops[n.op].category == "source"}
    # rules treat constants as weights and biases; a per-sample source (``fill``: an initial state) is a signal
    fixed = {name for name in consts if not graph[name].inputs}
    bounds = value_bounds(graph)
    nonneg = nonnegative_values(graph, bounds)
    gated = gated_products(graph, bounds)
    ahead = engine.steps_ahead(LOOKAHEAD)
    reached = collections.deque(maxlen=ahead + 1)    # what reached the last steps' nodes, oldest first
    for name in reversed(order):
        node = graph[name]
        r, s = rel.pop(name, None), quot.pop(name, None)
        if node.name in consts:   # constants and initial states are leaves: whatever reaches them stays there
            r = relevance_of(engine, r, s, acts[name]) if s is not None and (conservation or name in keep) else r
            # a constant without a sample axis (a scale, a mask's fill value) holds what reaches it summed over
            # the batch: it has no per-sample sum to report
            if r is not None and conservation and graph.shape_of(name)[:1] == (None,):
                sums[name] = _sample_sum(engine, r)
            if r is not None and name in keep:
                kept[name] = r
            continue
        if r is None and s is None:
            acts.pop(name, None)
            continue
        reached.append(s if r is None else r)
        # a compiled pass runs this step once the relevance reached the node ``ahead`` steps back
        with engine.ordered_after(reached[0]):
            out = _value(name, acts, recompute, graph, engine)
            del acts[name]
            ins = [_value(i, acts, recompute, graph, engine) for i in node.inputs]
            if s is not None and (conservation or name in keep):
                r, s = relevance_of(engine, r, s, out), None
            if conservation:
                sums[name] = _sample_sum(engine, r)
            if name in keep:
                kept[name] = r
            rule = rules.get(name)
            if rule is None:
                raise UnsupportedError(f"node {name!r} ({node.op}) has no rule")
            ctx = NodeContext(engine, node, ins, out, engine.node_params(node, ins),
                              [i in fixed for i in node.inputs], ops[node.op].category,
                              [i in nonneg for i in node.inputs],
                              [k == gated.get(name) for k in range(len(node.inputs))])
            want = [takes.get(i, False) for i in node.inputs]
            back = rule.carry(ctx, s, r, want) if takes[name] else None
            if back is None:
                want = [False] * len(node.inputs)
                back = rule(ctx, relevance_of(engine, r, s, out))
        if len(back) != len(node.inputs):
            raise UnsupportedError(f"rule {rule.name!r} returned {len(back)} relevances for node {name!r} "
                                   f"with {len(node.inputs)} inputs")
        if trace:
            # (what constants take is absorbed, as a bias's share; a constant has no batch axis to sum per sample)
            passed = [_sample_sum(engine, ri) for i, ri in zip(node.inputs, back) if ri is not None and i not in consts]
            flow[name] = (_sample_sum(engine, r), sum(passed) if passed else np.zeros(len(engine.to_numpy(out))))
        for i, ri, w in zip(node.inputs, back, want):
            if ri is not None:
                _accumulate(quot if w else rel, i, ri)
    for inp, xi in signal_values(graph, x).items():
        r_in = rel.get(inp)
        if inp in quot:
            r_in = relevance_of(engine, r_in, quot[inp], xi)
        if r_in is None:
            r_in = engine.zeros_like(xi)
        if conservation:
            sums[inp] = _sample_sum(engine, r_in)
        kept[inp] = r_in
    return Propagation(scores, kept, sums, start=start, flow=flow)


def sample_sums(engine, r) -> np.ndarray:
    """The sum of ``r`` per sample (first axis), as float64 numpy, summed on the engine (cheap to transfer)."""
    shape = tuple(r.shape)
    if len(shape) > 1:
        try:
            r = engine.sum(r, axis=tuple(range(1, len(shape))))
        except NotImplementedError:     # an engine without reductions: sum on the host
            return _sample_sum(engine, r)
    return np.asarray(engine.to_numpy(r), dtype=np.float64).reshape(shape[0])


def blow_up(flow: Mapping[str, tuple], order: Sequence[str], factor: float = 10.0):
    """The first node, in backward order, whose rule passes back more than ``factor`` times the relevance
    that reached it (in absolute sum, in any sample), else the one with the largest such ratio; with that
    ratio (infinite where the rule turns finite relevance into NaN or infinity). ``flow`` as recorded by
    ``propagate(..., trace=True)``."""
    best, best_ratio = None, 0.0
    for name in reversed(order):
        if name not in flow:
            continue
        got, passed = (np.abs(np.asarray(v, dtype=np.float64)) for v in flow[name])
        if np.all(np.isfinite(got)) and not np.all(np.isfinite(passed)):
            return name, math.inf          # where NaN or infinity first appears
        tiny = 1e-12 + 1e-6 * float(got.max(initial=0.0))
        ratio = float(np.max(passed / (got + tiny), initial=0.0))
        if ratio > factor:
            return name, ratio
        if ratio > best_ratio:
            best, best_ratio = name, ratio
    return best, best_ratio


def _sample_sum(engine, r):
    a = engine.to_numpy(r)
    return np.asarray(a, dtype=np.float64).reshape(len(a), -1).sum(axis=1)
