"""Methods: named recipes — a composite (the rule of each node), the output initialisation, what is
done at the input, and default parameters. Methods are plugins like everything else.

Multi-pass methods (SmoothGrad, integrated gradients) fix the targets on the clean input first, then
average passes over noisy or interpolated inputs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import composite as C
from . import parameters as P
from .errors import ConservationWarning, InputError, MethodError
from .propagation import Propagation, ancestors, blow_up, propagate, run_forward, sample_sums
from .rules import (AlphaBeta, DeconvNet, Epsilon, Flat, Gamma, Gradient, GuidedBackprop, Norm, Rule, WSquare,
                    ZBox, Zero, ZPlus)
from .targets import initial_relevance


# -- input modifiers: (engine, relevance, input, dims) -> (relevance, dims) ---------------------------
def times_input(eng, rel, x, dims):
    """Gradient × input."""
    return rel * x, dims


def squared_channel_sum(eng, rel, x, dims):
    """Sensitivity (Simonyan et al. 2014): the squared gradient, summed over the channel axis if any."""
    sq = rel * rel
    if "channel" in dims:
        axis = dims.index("channel")
        return eng.sum(sq, axis=axis), tuple(d for d in dims if d != "channel")
    return sq, dims


@dataclass
class Method:
    """A named attribution method.

    ``composite(**params)`` returns the :class:`~attribx.composite.Composite` for the given parameters;
    ``output_init`` is the default initialisation (``"score"`` for LRP, ``"onehot"`` for gradients);
    ``input_modifier`` post-processes the input relevance. ``ranges`` maps parameter names to their valid
    values (:mod:`attribx.parameters`: ``positive``, ``non_negative``, ``integer(1)``, ...) and
    ``constraints`` lists conditions on several parameters (``ordered("low", "high")``); :meth:`resolve`
    applies them, and refuses NaN in any parameter, before anything is computed.
    """

    name: str
    composite: Callable[..., C.Composite]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    output_init: str = "score"
    input_modifier: Callable | None = None
    family: str = "lrp"
    description: str = ""
    #: the method perturbs the input or multiplies by it: meaningless for integer (token index) inputs
    needs_real_input: bool = False
    ranges: Mapping[str, P.Range] = field(default_factory=dict)
    constraints: Sequence[P.Constraint] = ()

    def __post_init__(self):
        """Subclasses fix properties of their kind here."""

    def resolve(self, params: Mapping[str, Any]) -> dict:
        """Defaults overlaid with the user's parameters; unknown names and values out of their declared
        range are an error."""
        unknown = set(params) - set(self.defaults)
        if unknown:
            accepted = ", ".join(sorted(self.defaults)) or "no parameters"
            raise MethodError(f"method {self.name!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                              f"it accepts {accepted}")
        resolved = {**self.defaults, **params}
        P.check(f"method {self.name!r}", resolved, self.ranges, self.constraints)
        return resolved

    def start_node(self, graph) -> str:
        """Where relevance starts: the output, or the scores before a final softmax."""
        out = graph.output
        node = graph[out] if out in graph else None
        if node is not None and node.op == "softmax":
            return node.inputs[0]
        return out

    def rules(self, graph, params: Mapping[str, Any]) -> dict[str, Rule]:
        return self.composite(**params).assign(graph, ancestors(graph, self.start_node(graph)))

    def run(self, graph, engine, x, targets_fn, params: Mapping[str, Any], init=None,
            keep: Sequence[str] = (), conservation: bool = False) -> Propagation:
        """One relevance pass; ``targets_fn(scores) -> (targets, against)`` picks the explained classes."""
        mode = self.output_init if init is None else init
        start = self.start_node(graph)
        rules = self.rules(graph, params)
        state = {}

        def start_relevance(scores):
            s = engine.to_numpy(scores)
            state["targets"], against = targets_fn(s) if s.ndim == 2 else (np.zeros(len(s), np.int64), None)
            r0 = initial_relevance(s, state["targets"], mode, against)
            state["put"] = np.asarray(r0, dtype=np.float64).reshape(len(r0), -1).sum(axis=1)
            return engine.asarray(r0, dtype=engine.dtype_of(scores))

        result = propagate(graph, engine, x, rules, start_relevance, start, keep, conservation)
        result.targets = state["targets"]
        if self.family == "lrp":
            self.check_conservation(graph, engine, x, rules, start_relevance, start, result, state["put"])
        self.finish(engine, graph, result, x)
        return result

    #: the input relevance may sum to at most this many times the explained score (per sample) unwarned
    conservation_factor = 100.0

    def check_conservation(self, graph, engine, x, rules, start_relevance, start, result, put) -> None:
        """Warn (:class:`~attribx.errors.ConservationWarning`) when the input relevance sums to orders of
        magnitude more than the relevance put at the output, naming the node where it grows. Costs one sum
        over the input relevance; the per-node sums are computed (a second pass) only when the check fails."""
        r_in = result.relevance.get(graph.input.name)
        if r_in is None or start not in graph:
            return
        got, put = np.abs(sample_sums(engine, r_in)), np.abs(np.asarray(put, dtype=np.float64))
        tol = self.conservation_factor * put + 1e-3 * float(put.max(initial=0.0)) + 1e-6
        bad = np.flatnonzero(~(got <= tol))        # NaN counts as departing too
        if not len(bad):
            return
        k = int(bad[np.argmax(got[bad] / (put[bad] + 1e-30))])
        traced = propagate(graph, engine, x, rules, start_relevance, start, trace=True)
        node, ratio = blow_up(traced.flow, ancestors(graph, start))
        where = (f"; it grows at node {node!r} ({graph[node].op}), whose rule passes back {ratio:.3g}x the "
                 f"relevance it receives" if node is not None else "")
        warnings.warn(ConservationWarning(
            f"method {self.name!r}: the input relevance sums to {got[k]:.3g} for an explained score of "
            f"{put[k]:.3g} (sample {k}; {len(bad)} of {len(got)} samples depart by more than "
            f"{self.conservation_factor:g}x){where}; typical of batch norms that cannot be folded (DenseNet, "
            f"ResNetV2): lrp.epsilon_plus_flat or lrp.epsilon_gamma_box stay near the score, see docs/rules.md, "
            f"'Batch norms that cannot be folded'"), stacklevel=4)

    def finish(self, engine, graph, result: Propagation, x, params=None) -> None:
        inp = graph.input.name
        result.dims = graph.input.dims
        if self.input_modifier is not None:
            result.relevance[inp], result.dims = self.input_modifier(engine, result.relevance[inp], x, graph.input.dims)


class AveragedMethod(Method):
    """Base of methods that average gradient passes over perturbed inputs, with targets fixed on x."""

    def __post_init__(self):
        self.needs_real_input = True

    def points(self, engine, x, params, rng):
        """Yield (input, weight) pairs; the result is Σ weight · relevance(input)."""
        raise NotImplementedError

    def run(self, graph, engine, x, targets_fn, params, init=None, keep=(), conservation=False):
        if keep or conservation:
            raise MethodError(f"method {self.name!r} averages several passes: layers= and conservation= are "
                              f"not available for it")
        start = self.start_node(graph)
        scores = run_forward(graph, engine, x, upto=start)[start]
        fixed = targets_fn(engine.to_numpy(scores))
        base = Method(self.name, self.composite, output_init=self.output_init)   # one plain pass
        total = None
        rng = np.random.default_rng(params.get("seed", 0))
        for xi, w in self.points(engine, x, params, rng):
            r = Method.run(base, graph, engine, xi, lambda s: fixed, {}, init).relevance[graph.input.name]
            total = r * w if total is None else total + r * w
        result = Propagation(scores, {graph.input.name: total}, targets=fixed[0], start=start)
        self.finish(engine, graph, result, x, params)
        return result


class SmoothGrad(AveragedMethod):
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over ``samples`` copies of x with Gaussian
    noise of standard deviation ``noise`` × (max − min of each sample); ``seed`` fixes the noise."""

    def points(self, engine, x, params, rng):
        n = int(params["samples"])
        xn = engine.to_numpy(x)
        axes = tuple(range(1, xn.ndim))
        std = params["noise"] * (xn.max(axis=axes, keepdims=True) - xn.min(axis=axes, keepdims=True))
        for _ in range(n):
            eps = rng.standard_normal(xn.shape) * std
            yield x + engine.asarray(eps, dtype=engine.dtype_of(x)), 1.0 / n


class IntegratedGradients(AveragedMethod):
    """Integrated gradients (Sundararajan et al. 2017): (x − baseline) × the mean gradient at
    baseline + α (x − baseline) for α = 1/steps, 2/steps, ..., 1 (the right Riemann sum, as zennit)."""

    def points(self, engine, x, params, rng):
        steps = int(params["steps"])
        b = self.baseline(engine, x, params)
        for k in range(1, steps + 1):
            yield b + (x - b) * (k / steps), 1.0 / steps

    def baseline(self, engine, x, params):
        base = np.asarray(params["baseline"], dtype=np.float64)
        try:
            return engine.zeros_like(x) + engine.asarray(base, dtype=engine.dtype_of(x))
        except Exception:
            raise InputError(f"integrated_gradients: baseline of shape {base.shape} does not broadcast to "
                             f"inputs of shape {tuple(x.shape)}") from None

    def finish(self, engine, graph, result, x, params=None):
        inp = graph.input.name
        result.relevance[inp] = result.relevance[inp] * (x - self.baseline(engine, x, params))
        super().finish(engine, graph, result, x, params)


# -- composites ----------------------------------------------------------------------------------------
def gradient_composite(**_):
    return C.Composite([(C.every(), Gradient())], defaults=[], name="gradient")


def relu_composite(rule: Rule, name: str):
    def make(**_):
        return C.Composite([(C.op("relu"), rule), (C.every(), Gradient())], defaults=[], name=name)
    return make


def single_rule(rule_cls, name: str):
    """A single-rule LRP method: its rule on every linear and conv node, the base map elsewhere, whose
    sums take the rule's stabiliser (as zennit's composites do); LRP-0 divides exactly there too."""
    def make(**params):
        stab = 0.0 if rule_cls is Zero else params.get("stabilizer", 1e-6)
        defaults = C.lrp_defaults(stab, params.get("epsilon"), params.get("bias_factor", 0.0))
        return C.Composite([(C.category("layer"), rule_cls(**params))], defaults=defaults, name=name)
    ranges = {**rule_cls.ranges, **({"stabilizer": P.positive} if "stabilizer" in rule_cls.defaults else {})}
    return Method(name, make, defaults={k: v for k, v in rule_cls.defaults.items()},
                  description=(rule_cls.__doc__ or "").strip().splitlines()[0],
                  ranges=ranges, constraints=rule_cls.constraints)


#: ops that take the rule a composite names for another (zennit treats transposed convs as convs)
_SAME_RULE = {"conv": ("conv", "conv_transpose")}


#: the ranges of the parameters the built-in composites take (each takes some of them)
COMPOSITE_RANGES = {"epsilon": P.non_negative, "stabilizer": P.positive, "gamma": P.non_negative,
                    "low": P.optional(P.finite_array), "high": P.optional(P.finite_array)}


def named_composite(name, layer_map, first_map=None, defaults=None, description=""):
    """A zennit-style composite: ``first_map`` (matcher kind -> rule) for the first layer of that kind,
    then ``layer_map`` by op, then the base map with the composite's stabiliser for sums."""
    def make(**p):
        entries = []
        for kind, rule in (first_map or {}).items():
            entries.append((C.first(kind), rule(p)))
        for op, rule in layer_map.items():
            entries.append((C.op(*_SAME_RULE.get(op, (op,))), rule(p)))
        return C.Composite(entries, defaults=C.lrp_defaults(p["stabilizer"], p.get("epsilon")), name=name)
    defaults = defaults or {}
    return Method(name, make, defaults=defaults, description=description,
                  ranges={k: r for k, r in COMPOSITE_RANGES.items() if k in defaults},
                  constraints=(P.ordered("low", "high"),) if "low" in defaults else ())


_EPS = {"epsilon": 1e-6, "stabilizer": 1e-6}


def _eps(p):
    return Epsilon(epsilon=p["epsilon"])


BUILTIN_METHODS = (
    Method("gradient", gradient_composite, output_init="onehot", family="gradient",
           description="Gradient of the target's score w.r.t. the input."),
    Method("sensitivity", gradient_composite, output_init="onehot", input_modifier=squared_channel_sum,
           family="gradient", description="Squared gradient summed over channels (Simonyan et al. 2014)."),
    Method("gradient_x_input", gradient_composite, output_init="onehot", input_modifier=times_input,
           family="gradient", description="Gradient times input.", needs_real_input=True),
    Method("deconvnet", relu_composite(DeconvNet(), "deconvnet"), output_init="onehot", family="gradient",
           description="DeconvNet: ReLUs pass back the positive part of the signal (Zeiler & Fergus 2014)."),
    Method("guided_backprop", relu_composite(GuidedBackprop(), "guided_backprop"), output_init="onehot",
           family="gradient", description="Guided backpropagation (Springenberg et al. 2015)."),
    SmoothGrad("smoothgrad", gradient_composite, defaults={"noise": 0.1, "samples": 20, "seed": 0},
               ranges={"noise": P.non_negative, "samples": P.integer(1), "seed": P.integer(0)},
               output_init="onehot", family="gradient",
               description="Mean gradient over noisy copies of the input (Smilkov et al. 2017)."),
    IntegratedGradients("integrated_gradients", gradient_composite, defaults={"baseline": 0.0, "steps": 20},
                        ranges={"baseline": P.finite_array, "steps": P.integer(1)},
                        output_init="onehot", family="gradient",
                        description="Path integral of the gradient from a baseline (Sundararajan et al. 2017)."),
    single_rule(Zero, "lrp.zero"),
    single_rule(Epsilon, "lrp.epsilon"),
    single_rule(Gamma, "lrp.gamma"),
    single_rule(AlphaBeta, "lrp.alpha_beta"),
    single_rule(ZPlus, "lrp.z_plus"),
    single_rule(Flat, "lrp.flat"),
    single_rule(WSquare, "lrp.w_square"),
    single_rule(ZBox, "lrp.z_box"),
    named_composite(
        "lrp.epsilon_gamma_box",
        {"conv": lambda p: Gamma(gamma=p["gamma"], stabilizer=p["stabilizer"]), "linear": _eps},
        first_map={"conv": lambda p: ZBox(low=p["low"], high=p["high"], stabilizer=p["stabilizer"])},
        defaults={"low": None, "high": None, "gamma": 0.25, **_EPS},
        description="z-box on the first conv, γ on the other convs, ε on dense layers (zennit EpsilonGammaBox)."),
    named_composite(
        "lrp.epsilon_plus", {"conv": lambda p: ZPlus(stabilizer=p["stabilizer"]), "linear": _eps},
        defaults=dict(_EPS), description="z+ on convs, ε on dense layers (zennit EpsilonPlus)."),
    named_composite(
        "lrp.epsilon_plus_flat", {"conv": lambda p: ZPlus(stabilizer=p["stabilizer"]), "linear": _eps},
        first_map={"layer": lambda p: Flat(stabilizer=p["stabilizer"])}, defaults=dict(_EPS),
        description="flat on the first layer, z+ on convs, ε on dense layers (zennit EpsilonPlusFlat)."),
    named_composite(
        "lrp.epsilon_alpha2_beta1",
        {"conv": lambda p: AlphaBeta(alpha=2.0, beta=1.0, stabilizer=p["stabilizer"]), "linear": _eps},
        defaults=dict(_EPS), description="α2β1 on convs, ε on dense layers (zennit EpsilonAlpha2Beta1)."),
    named_composite(
        "lrp.epsilon_alpha2_beta1_flat",
        {"conv": lambda p: AlphaBeta(alpha=2.0, beta=1.0, stabilizer=p["stabilizer"]), "linear": _eps},
        first_map={"layer": lambda p: Flat(stabilizer=p["stabilizer"])}, defaults=dict(_EPS),
        description="flat on the first layer, α2β1 on convs, ε on dense layers (zennit EpsilonAlpha2Beta1Flat)."),
)


def as_method(method) -> Method:
    """A Method from a registered name, a Method, or a Composite (a user composite as a method)."""
    if isinstance(method, Method):
        return method
    if isinstance(method, C.Composite):
        return Method(method.name, lambda: method, description="user composite")
    if isinstance(method, str):
        from .plugins import registry
        return registry().method(method)
    raise MethodError(f"method must be a name, a Method or a Composite, got {type(method).__name__}")
