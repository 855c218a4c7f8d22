"""Composites: which rule each node gets, declared as (matcher, rule) entries where the first match wins.

Matchers select nodes by op type, op category, name pattern or position (first/last weighted layer
along the data flow). Rules are given as instances, as names of registered rules (so a rule from a
third-party plugin can be used), or as ``(name, {params})``: a built-in name is made at once, another
when the composite is assigned to a graph, from the rule table its caller passes (the registry's, from
:func:`attribx.explain`); composites never read the registry themselves. After the user's entries come the
defaults every LRP method shares (zennit's base layer map): activations and batch norm pass, sums,
average pools and scalings norm, max pools winner-takes-all, shape ops route; and products of a gate
and a signal give the signal all (Arras et al. 2017).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

from .bounds import gated_products
from .errors import MethodError, UnsupportedError
from .ops import BUILTIN_OPS, op_table
from .rules import BUILTIN_RULES, Epsilon, Norm, Pass, Route, Rule, SignalTakesAll, WinnerTakesAll
from .rules.transformer import SoftmaxTaylor, Uniform


@dataclass(frozen=True)
class GraphPositions:
    """Facts about where nodes sit, computed once per graph for position matchers.

    "First" and "last" follow the data flow, not the order nodes happen to be listed in: the first layers
    are those with no layer upstream (two parallel convs that both read the input are both first), the
    last those with no layer downstream. Exporters list parallel branches in different orders; the data
    flow is the same in every framework.
    """

    first: dict  # category or op -> names of its nodes with none of that kind upstream
    last: dict   # category or op -> names of its nodes with none of that kind downstream
    gated: frozenset = frozenset()   # products of a gate and a signal
    gated_sums: frozenset = frozenset()   # sums of such products (the cell update of an LSTM or GRU)
    signal_products: frozenset = frozenset()   # products (mul, matmul) of two or more computed values

    @classmethod
    def of(cls, graph, ops) -> "GraphPositions":
        kinds = {n.name: (ops[n.op].category, n.op) for n in graph.nodes}
        gated = frozenset(gated_products(graph))
        sums = frozenset(n.name for n in graph.nodes
                         if n.op == "add" and len(n.inputs) > 1 and all(i in gated for i in n.inputs))
        products = frozenset(n.name for n in graph.nodes if n.op in ("mul", "matmul") and sum(
            1 for i in n.inputs if not (i in graph and graph[i].op == "constant")) > 1)
        return cls(_without_kind_along(graph.nodes, kinds, lambda n: n.inputs),
                   _without_kind_along(reversed(graph.nodes), kinds, _readers(graph)), gated, sums, products)


def _readers(graph):
    consumers = graph.consumers()
    return lambda node: consumers.get(node.name, ())


def _without_kind_along(nodes, kinds, neighbours) -> dict:
    """kind -> frozenset of nodes of that kind with no node of the same kind among the nodes reached
    through ``neighbours`` (inputs: upstream; readers: downstream); ``nodes`` ordered so that neighbours
    come first."""
    seen: dict[str, frozenset] = {}     # node -> kinds at or beyond it
    out: dict[str, set] = {}
    for node in nodes:
        beyond = frozenset().union(*(seen.get(m, frozenset()) for m in neighbours(node)))
        for kind in kinds[node.name]:
            if kind not in beyond:
                out.setdefault(kind, set()).add(node.name)
        seen[node.name] = beyond | frozenset(kinds[node.name])
    return {k: frozenset(v) for k, v in out.items()}


Matcher = Callable[..., bool]  # (node, category, positions) -> bool


def op(*names: str) -> Matcher:
    """Nodes of these op types."""
    names_ = frozenset(names)
    return _named(lambda node, cat, pos: node.op in names_, f"op{tuple(names)}")


def category(*cats: str) -> Matcher:
    """Nodes whose op is in these categories (see :data:`attribx.ops.CATEGORIES`)."""
    cats_ = frozenset(cats)
    return _named(lambda node, cat, pos: cat in cats_, f"category{tuple(cats)}")


def name(pattern: str, regex: bool = False) -> Matcher:
    """Nodes whose name matches a glob pattern (``features.*``) or, with ``regex=True``, a regex."""
    rx = re.compile(pattern if regex else fnmatch.translate(pattern))
    return _named(lambda node, cat, pos: bool(rx.fullmatch(node.name)), f"name({pattern!r})")


def first(kind: str = "layer") -> Matcher:
    """The first nodes of a category or op type along the data flow (``"layer"``: the input layer, or the
    parallel layers that read the input; ``"conv"``: the first convolution)."""
    return _named(lambda node, c, pos: node.name in pos.first.get(kind, ()), f"first({kind!r})")


def last(kind: str = "layer") -> Matcher:
    """The last nodes of a category or op type along the data flow (``"layer"``: the output layer)."""
    return _named(lambda node, c, pos: node.name in pos.last.get(kind, ()), f"last({kind!r})")


def gated_product() -> Matcher:
    """Products of a gate (a sigmoid-like value in [0, 1]) and another signal."""
    return _named(lambda node, cat, pos: node.name in pos.gated, "gated_product()")


def gated_sum() -> Matcher:
    """Sums whose every term is a gated product: the cell update c_t = f·c_{t-1} + i·g of an LSTM."""
    return _named(lambda node, cat, pos: node.name in pos.gated_sums, "gated_sum()")


def signal_product() -> Matcher:
    """Products (``mul``, ``matmul``) of two or more computed values: attention's matrix products, gated
    units whose gate is not bounded (SwiGLU); a product with a constant is a scaling, not one of these."""
    return _named(lambda node, cat, pos: node.name in pos.signal_products, "signal_product()")


def every() -> Matcher:
    return _named(lambda node, cat, pos: True, "every()")


def _named(fn, label):
    fn.label = label
    return fn


RuleSpec = Union[Rule, str, tuple]


#: the built-in rules by name: what a rule name means when no rule table is given
BUILTIN_RULE_TABLE = {r.name: r for r in BUILTIN_RULES}
_BUILTIN_OPS = op_table(BUILTIN_OPS)


def _spec_name(spec: RuleSpec) -> str | None:
    """The rule name a spec gives (None for an instance); a malformed spec is an error."""
    if isinstance(spec, Rule):
        return None
    if isinstance(spec, str):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        return spec[0]
    raise MethodError(f"cannot make a rule from {spec!r}: give a Rule, a rule name or (name, params)")


def make_rule(spec: RuleSpec, rules: Mapping[str, type] | None = None) -> Rule:
    """A rule from an instance, a rule name, or ``(name, {params})``; names are looked up in ``rules``
    (rule classes by name: the registry's, passed down from the top; default: the built-in rules)."""
    name = _spec_name(spec)
    if name is None:
        return spec
    table = BUILTIN_RULE_TABLE if rules is None else rules
    if name not in table:
        raise MethodError(f"unknown rule {name!r}; known rules: {', '.join(sorted(table))} "
                          f"(plugins add rules through the 'attribx_rules' hook)")
    return table[name](**(dict(spec[1]) if isinstance(spec, tuple) else {}))


def lrp_defaults(stabilizer: float = 1e-6, epsilon: float | None = None,
                 bias_factor: float = 0.0) -> list[tuple[Matcher, Rule]]:
    """The assignments every LRP composite ends with; ``stabilizer`` is the sums' (0: exact division).

    A method with an ``epsilon`` gives gated sums (the cell update of a recurrent layer) the ε rule with
    its ε and ``bias_factor``, as Arras et al. (2017) do; other sums normalise with the stabiliser. Inside
    a network (attention), a softmax takes the rule gradient × input implies (Achtibat et al. 2024, Prop.
    3.1) and a matrix product of two signals the uniform rule (half to each factor), so that every LRP
    method runs on transformers; ``lrp.attn`` and ``lrp.cp`` are the methods made for them."""
    cell = [] if epsilon is None else [(gated_sum(), Epsilon(epsilon=epsilon, bias_factor=bias_factor))]
    return [
        (category("activation", "norm", "scale"), Pass()),
        (gated_product(), SignalTakesAll()),
        *cell,
        (category("softmax"), SoftmaxTaylor()),
        (signal_product(), Uniform(epsilon=stabilizer)),
        (category("sum", "product"), Norm(epsilon=stabilizer)),
        (category("pool"), WinnerTakesAll()),
        (category("shape", "lookup", "select", "mask"), Route()),
    ]


class Composite:
    """An ordered list of (matcher, rule); ``defaults`` (the LRP ones unless given) follow the entries."""

    def __init__(self, entries: Sequence[tuple[Matcher, RuleSpec]] = (),
                 defaults: Sequence[tuple[Matcher, RuleSpec]] | None = None, name: str = "composite"):
        self.name = name
        entries = list(entries) + list(lrp_defaults() if defaults is None else defaults)
        # built-in names are made now, so that their parameters are checked at once; others in assign()
        self.entries = [(m, make_rule(r) if _spec_name(r) in BUILTIN_RULE_TABLE else r) for m, r in entries]

    def __repr__(self):
        body = ", ".join(f"{getattr(m, 'label', m)}: {r!r}" for m, r in self.entries)
        return f"Composite({self.name!r}: {body})"

    def assign(self, graph, nodes: Sequence[str] | None = None, ops: Mapping | None = None,
               rules: Mapping[str, type] | None = None) -> dict[str, Rule]:
        """The rule of every node (of ``nodes``, default all non-constant nodes); errors name the node.

        ``ops`` (op definitions by name; default: the graph's own, else the built-in op set) and ``rules``
        (rule classes by name, for the rules the entries name; default: the built-in rules) are the
        registry's, passed down by :func:`attribx.explain`."""
        if ops is None:     # the graph's own op table where it keeps one, else the built-in op set
            ops = getattr(graph, "ops", None) or _BUILTIN_OPS
        unknown = sorted({n.op for n in graph.nodes} - set(ops))
        if unknown:
            raise UnsupportedError(f"composite {self.name!r}: op(s) {', '.join(unknown)} are not in the op table "
                                   f"given (pass the registry's: ops=attribx.plugins.registry().ops)")
        entries = [(m, make_rule(r, rules)) for m, r in self.entries]
        pos = GraphPositions.of(graph, ops)
        wanted = set(nodes) if nodes is not None else None
        out = {}
        for node in graph.nodes:
            cat = ops[node.op].category
            if cat == "source" or (wanted is not None and node.name not in wanted):
                continue
            for matcher, rule in entries:
                if matcher(node, cat, pos):
                    if not rule.applies_to(node.op, cat):
                        raise UnsupportedError(
                            f"node {node.name!r} ({node.op}): composite {self.name!r} assigns rule "
                            f"{rule.name!r}, which does not apply to {node.op!r} ops")
                    out[node.name] = rule
                    break
            else:
                raise UnsupportedError(
                    f"node {node.name!r}: no rule for op {node.op!r} in {self.name!r}; add an entry to the "
                    f"composite, or a rule for it through the 'attribx_rules' hook")
        return out
