"""Methods: named recipes — a composite (the rule of each node), the output initialisation, what is
done at the input, and default parameters. Methods are plugins like everything else.

Multi-pass methods (SmoothGrad, integrated gradients) fix the targets on the clean input first, then
average passes over noisy or interpolated inputs.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import composite as C
from . import parameters as P
from .errors import ConservationWarning, InputError, MethodError
from .parameters import FiniteArray, NonNegative, NonNegativeInt, OptionalArray, Positive, PositiveInt
from .propagation import (Propagation, ancestors, as_given, blow_up, propagate, run_forward, sample_sums,
                          signal_values)
from .rules import (AlphaBeta, DeconvNet, Epsilon, Flat, Gamma, Gradient, GuidedBackprop, Rule, WSquare, ZBox, Zero,
                    ZPlus)
from .targets import initial_relevance
from .transformer import attn_lrp_composite, cp_lrp_composite


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

    ``composite(**params)`` returns the :class:`~attribx.composite.Composite` for the given parameters.
    Its keyword arguments are the method's parameters: their defaults are the method's ``defaults`` and
    their annotations its ``ranges`` (``gamma: NonNegative = 0.25``), read from the signature, which
    ``help()`` shows; explicit ``defaults=`` and ``ranges=`` mappings override it. ``output_init`` is the
    default initialisation (``"score"`` for LRP, ``"onehot"`` for gradients); ``input_modifier``
    post-processes the input relevance. ``ranges`` maps parameter names to their valid values
    (:mod:`attribx.parameters`: ``positive``, ``non_negative``, ``integer(1)``, ...) and
    ``constraints`` lists conditions on several parameters (``ordered("low", "high")``); :meth:`resolve`
    applies them, and refuses NaN in any parameter, before anything is computed.
    """

    name: str
    composite: Callable[..., C.Composite]
    defaults: Mapping[str, Any] | None = None     # None: the composite factory's keyword arguments
    output_init: str = "score"
    input_modifier: Callable | None = None
    family: str = "lrp"
    description: str = ""
    #: the method perturbs the input or multiplies by it: meaningless for integer (token index) inputs
    needs_real_input: bool = False
    ranges: Mapping[str, P.Range] | None = None   # None: the factory's annotations (``gamma: NonNegative``)
    constraints: Sequence[P.Constraint] = ()

    def __post_init__(self):
        """Read the defaults from the composite factory's signature. Subclasses fix properties of their
        kind here too (calling ``super().__post_init__()``)."""
        if self.defaults is None:
            self.defaults = P.signature_defaults(self.composite, f"method {self.name!r}")
        if self.ranges is None:
            self.ranges = P.signature_ranges(self.composite)

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

    def rules(self, graph, params: Mapping[str, Any], ops: Mapping | None = None,
              rules: Mapping | None = None) -> dict[str, Rule]:
        """The rule of every node the pass visits; ``ops``/``rules``: the op and rule tables by name (the
        registry's, which :func:`attribx.explain` passes; default: the built-in ones)."""
        return self.composite(**params).assign(graph, ancestors(graph, self.start_node(graph)), ops=ops, rules=rules)

    def run(self, graph, engine, x, targets_fn, params: Mapping[str, Any], init=None,
            keep: Sequence[str] = (), conservation: bool = False, ops: Mapping | None = None,
            rules: Mapping | None = None, masks: Mapping | None = None) -> Propagation:
        """One relevance pass; ``targets_fn(scores) -> (targets, against)`` picks the explained classes;
        ``ops``/``rules`` as for :meth:`rules`; ``masks``: the mask inputs' values (``attention_mask``)."""
        mode = self.output_init if init is None else init
        start = self.start_node(graph)
        rules = self.rules(graph, params, ops, rules)
        state = {}

        def start_relevance(scores):
            s = engine.to_numpy(scores)
            state["targets"], against = targets_fn(s) if s.ndim == 2 else (np.zeros(len(s), np.int64), None)
            r0 = initial_relevance(s, state["targets"], mode, against)
            state["put"] = np.asarray(r0, dtype=np.float64).reshape(len(r0), -1).sum(axis=1)
            return engine.asarray(r0, dtype=engine.dtype_of(scores))

        result = propagate(graph, engine, x, rules, start_relevance, start, keep, conservation, masks=masks)
        result.targets = state["targets"]
        if self.family == "lrp":
            self.check_conservation(graph, engine, x, rules, start_relevance, start, result, state["put"], masks)
        self.finish(engine, graph, result, x)
        return result

    #: the input relevance may sum to at most this many times the explained score (per sample) unwarned
    conservation_factor = 100.0

    def check_conservation(self, graph, engine, x, rules, start_relevance, start, result, put,
                           masks=None) -> None:
        """Warn (:class:`~attribx.errors.ConservationWarning`) when the input relevance sums to orders of
        magnitude more than the relevance put at the output, naming the node where it grows. Costs one sum
        over the input relevance; the per-node sums are computed (a second pass) only when the check fails."""
        r_in = [result.relevance.get(v.name) for v in graph.signal_inputs]
        if any(r is None for r in r_in) or start not in graph:
            return
        got = np.abs(sum(sample_sums(engine, r) for r in r_in))     # over every signal input
        put = np.abs(np.asarray(put, dtype=np.float64))
        tol = self.conservation_factor * put + 1e-3 * float(put.max(initial=0.0)) + 1e-6
        bad = np.flatnonzero(~(got <= tol))        # NaN counts as departing too
        if not len(bad):
            return
        k = int(bad[np.argmax(got[bad] / (put[bad] + 1e-30))])
        traced = propagate(graph, engine, x, rules, start_relevance, start, trace=True, masks=masks)
        node, ratio = blow_up(traced.flow, ancestors(graph, start))
        finite = bool(np.isfinite(got[k]))
        if finite:
            where = (f"; it grows at node {node!r} ({graph[node].op}), whose rule passes back {ratio:.3g}x the "
                     f"relevance it receives" if node is not None else "")
            hint = _growth_hint(graph[node].op if node else None, self.name)
        else:
            where = (f"; it first turns non-finite at node {node!r} ({graph[node].op})" if node is not None and
                     ratio == np.inf else "")
            hint = ("a division by a zero or tiny denominator or an overflow: use a positive epsilon, or float64 "
                    "inputs and model")
        warnings.warn(ConservationWarning(
            f"method {self.name!r}: the input relevance sums to {got[k]:.3g} for an explained score of "
            f"{put[k]:.3g} (sample {k}; {len(bad)} of {len(got)} samples depart by more than "
            f"{self.conservation_factor:g}x or are not finite){where}; {hint}"), stacklevel=4)

    def finish(self, engine, graph, result: Propagation, x, params=None) -> None:
        """The input modifier on each signal input's relevance; its dims recorded per input."""
        for inp, xi in signal_values(graph, x).items():
            dims = next(v.dims for v in graph.signal_inputs if v.name == inp)
            if self.input_modifier is not None:
                result.relevance[inp], dims = self.input_modifier(engine, result.relevance[inp], xi, dims)
            result.input_dims[inp] = dims
        result.dims = next(iter(result.input_dims.values()))


def _growth_hint(op: str | None, method: str = "") -> str:
    """What usually makes relevance grow at a node of this op, and what to use instead."""
    if op == "softmax" and method == "lrp.attn":
        return ("AttnLRP's softmax rule (x ⊙ (R − s·ΣR) on the scores x) conserves only up to what the scores' "
                "shift absorbs, which grows with large scores; lrp.cp holds the attention weights constant and "
                "conserves there")
    if op == "softmax":
        return ("a softmax inside the network (attention) passes back more than it receives under the Taylor "
                "rule: lrp.attn or lrp.cp are made for attention, see docs/rules.md, 'Transformers: AttnLRP "
                "and CP-LRP'")
    return ("biases larger than the contributions, typical of batch norms that cannot be folded (DenseNet, "
            "ResNetV2): lrp.epsilon_plus_flat or lrp.epsilon_gamma_box stay near the score, see docs/rules.md, "
            "'Batch norms that cannot be folded'")


class AveragedMethod(Method):
    """Base of methods that average gradient passes over perturbed inputs, with targets fixed on x."""

    def __post_init__(self):
        super().__post_init__()
        self.needs_real_input = True

    def points(self, engine, xs, params, rng):
        """Yield (inputs, weight) pairs, ``xs`` and each ``inputs`` a list with one array per signal input; the
        result is Σ weight · relevance(inputs)."""
        raise NotImplementedError

    def run(self, graph, engine, x, targets_fn, params, init=None, keep=(), conservation=False, ops=None,
            rules=None, masks=None):
        if keep or conservation:
            raise MethodError(f"method {self.name!r} averages several passes: layers= and conservation= are "
                              f"not available for it")
        start = self.start_node(graph)
        scores = run_forward(graph, engine, x, upto=start, masks=masks)[start]
        fixed = targets_fn(engine.to_numpy(scores))
        base = Method(self.name, self.composite, defaults={}, output_init=self.output_init)   # one plain pass
        names = [v.name for v in graph.signal_inputs]
        total = {}
        rng = np.random.default_rng(params.get("seed", 0))
        for xi, w in self.points(engine, list(signal_values(graph, x).values()), params, rng):
            rel = Method.run(base, graph, engine, as_given(graph, xi), lambda s: fixed, {}, init, ops=ops,
                             rules=rules, masks=masks).relevance
            for name in names:
                total[name] = rel[name] * w if name not in total else total[name] + rel[name] * w
        result = Propagation(scores, total, targets=fixed[0], start=start)
        self.finish(engine, graph, result, x, params)
        return result


class SmoothGrad(AveragedMethod):
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over ``samples`` copies of x with Gaussian
    noise of standard deviation ``noise`` × (max − min of each sample); ``seed`` fixes the noise."""

    def points(self, engine, xs, params, rng):
        """Noise on every input, each scaled by its own range."""
        n = int(params["samples"])
        stds = []
        for x in xs:
            xn = engine.to_numpy(x)
            axes = tuple(range(1, xn.ndim))
            stds.append(params["noise"] * (xn.max(axis=axes, keepdims=True) - xn.min(axis=axes, keepdims=True)))
        for _ in range(n):
            yield [x + engine.asarray(rng.standard_normal(tuple(x.shape)) * std, dtype=engine.dtype_of(x))
                   for x, std in zip(xs, stds)], 1.0 / n


class IntegratedGradients(AveragedMethod):
    """Integrated gradients (Sundararajan et al. 2017): (x − baseline) × the mean gradient at
    baseline + α (x − baseline) for α = 1/steps, 2/steps, ..., 1 (the right Riemann sum, as zennit and
    Captum's ``method="riemann_right"``). Several inputs move together along one α, each from its own
    baseline (``baseline``: one for all, or a tuple with one per signal input)."""

    def points(self, engine, xs, params, rng):
        steps = int(params["steps"])
        bs = self.baselines(engine, xs, params)
        for k in range(1, steps + 1):
            yield [b + (x - b) * (k / steps) for x, b in zip(xs, bs)], 1.0 / steps

    def baselines(self, engine, xs, params):
        given = params["baseline"]
        if isinstance(given, (tuple, list)) and len(xs) > 1:
            if len(given) != len(xs):
                raise InputError(f"integrated_gradients: {len(given)} baselines for {len(xs)} inputs; give one "
                                 f"per signal input, or one for all")
        else:
            given = [given] * len(xs)
        return [self.baseline(engine, x, b) for x, b in zip(xs, given)]

    def baseline(self, engine, x, given):
        base = np.asarray(given, dtype=np.float64)
        try:
            return engine.zeros_like(x) + engine.asarray(base, dtype=engine.dtype_of(x))
        except Exception:
            raise InputError(f"integrated_gradients: baseline of shape {base.shape} does not broadcast to "
                             f"inputs of shape {tuple(x.shape)}") from None

    def finish(self, engine, graph, result, x, params=None):
        xs = signal_values(graph, x)
        for (inp, xi), b in zip(xs.items(), self.baselines(engine, list(xs.values()), params)):
            result.relevance[inp] = result.relevance[inp] * (xi - b)
        super().finish(engine, graph, result, x, params)


# -- composites: each method's parameters are its factory's keyword arguments -------------------------
def gradient_composite(**_):
    """Every node passes the gradient back (parameters, if any, belong to the method, not the passes)."""
    return C.Composite([(C.every(), Gradient())], defaults=[], name="gradient")


def relu_composite(rule: Rule, name: str):
    def make(**_):
        return C.Composite([(C.op("relu"), rule), (C.every(), Gradient())], defaults=[], name=name)
    return make


def smoothgrad(noise: NonNegative = 0.1, samples: PositiveInt = 20, seed: NonNegativeInt = 0) -> C.Composite:
    """SmoothGrad's parameters (used by :meth:`SmoothGrad.points`); each of its passes is a gradient pass."""
    return gradient_composite()


def integrated_gradients(baseline: FiniteArray = 0.0, steps: PositiveInt = 20) -> C.Composite:
    """Integrated gradients' parameters (used by :class:`IntegratedGradients`); each pass is a gradient pass."""
    return gradient_composite()


def single_rule(rule_cls, name: str):
    """A single-rule LRP method: its rule on every linear and conv node, the base map elsewhere, whose
    sums take the rule's stabiliser (as zennit's composites do); LRP-0 divides exactly there too. The
    method takes the rule's parameters: its factory shows the rule's signature."""
    def make(**params):
        stab = 0.0 if rule_cls is Zero else params.get("stabilizer", 1e-6)
        defaults = C.lrp_defaults(stab, params.get("epsilon"), params.get("bias_factor", 0.0))
        return C.Composite([(C.category("layer"), rule_cls(**params))], defaults=defaults, name=name)
    sig = inspect.signature(rule_cls)       # a method's stabiliser must be > 0 (the rule's may be 0)
    make.__signature__ = sig.replace(parameters=[p.replace(annotation="Positive") if p.name == "stabilizer" else p
                                                 for p in sig.parameters.values()])
    make.__name__ = make.__qualname__ = name.replace(".", "_")
    make.__doc__ = rule_cls.__doc__
    ranges = {**rule_cls.ranges, **({"stabilizer": P.positive} if "stabilizer" in rule_cls.defaults else {})}
    return Method(name, make, description=(rule_cls.__doc__ or "").strip().splitlines()[0],
                  ranges=ranges, constraints=rule_cls.constraints)


def zennit_style(name: str, stabilizer: float, epsilon: float, conv: Rule, linear: Rule,
                 first: Mapping[str, Rule] | None = None) -> C.Composite:
    """A zennit-style composite: ``first`` (matcher kind -> rule) for the first layer of that kind, then
    ``conv`` on convolutions (transposed ones too, as zennit), ``linear`` on dense layers, then the base
    map with the composite's stabiliser for sums."""
    entries = [(C.first(kind), rule) for kind, rule in (first or {}).items()]
    entries += [(C.op("conv", "conv_transpose"), conv), (C.op("linear"), linear)]
    return C.Composite(entries, defaults=C.lrp_defaults(stabilizer, epsilon), name=name)


def epsilon_gamma_box(low: OptionalArray = None, high: OptionalArray = None, gamma: NonNegative = 0.25,
                      epsilon: NonNegative = 1e-6, stabilizer: Positive = 1e-6) -> C.Composite:
    """z-box on the first conv (``low``/``high``: the input's bounds, required), γ on the other convs, ε on
    dense layers (zennit's EpsilonGammaBox)."""
    box = ZBox(low=low, high=high, stabilizer=stabilizer)
    return zennit_style("lrp.epsilon_gamma_box", stabilizer, epsilon, Gamma(gamma=gamma, stabilizer=stabilizer),
                        Epsilon(epsilon=epsilon), first={"conv": box})


def epsilon_plus(epsilon: NonNegative = 1e-6, stabilizer: Positive = 1e-6) -> C.Composite:
    """z+ on convs, ε on dense layers (zennit's EpsilonPlus)."""
    return zennit_style("lrp.epsilon_plus", stabilizer, epsilon, ZPlus(stabilizer=stabilizer), Epsilon(epsilon=epsilon))


def epsilon_plus_flat(epsilon: NonNegative = 1e-6, stabilizer: Positive = 1e-6) -> C.Composite:
    """flat on the first layer, z+ on convs, ε on dense layers (zennit's EpsilonPlusFlat)."""
    flat = Flat(stabilizer=stabilizer)
    return zennit_style("lrp.epsilon_plus_flat", stabilizer, epsilon, ZPlus(stabilizer=stabilizer),
                        Epsilon(epsilon=epsilon), first={"layer": flat})


def epsilon_alpha2_beta1(epsilon: NonNegative = 1e-6, stabilizer: Positive = 1e-6) -> C.Composite:
    """α2β1 on convs, ε on dense layers (zennit's EpsilonAlpha2Beta1)."""
    return zennit_style("lrp.epsilon_alpha2_beta1", stabilizer, epsilon,
                        AlphaBeta(alpha=2.0, beta=1.0, stabilizer=stabilizer), Epsilon(epsilon=epsilon))


def epsilon_alpha2_beta1_flat(epsilon: NonNegative = 1e-6, stabilizer: Positive = 1e-6) -> C.Composite:
    """flat on the first layer, α2β1 on convs, ε on dense layers (zennit's EpsilonAlpha2Beta1Flat)."""
    flat = Flat(stabilizer=stabilizer)
    return zennit_style("lrp.epsilon_alpha2_beta1_flat", stabilizer, epsilon,
                        AlphaBeta(alpha=2.0, beta=1.0, stabilizer=stabilizer), Epsilon(epsilon=epsilon),
                        first={"layer": flat})


def attn(epsilon: NonNegative = 1e-6) -> C.Composite:
    """AttnLRP (Achtibat et al. 2024): identity on activations, norms with a constant standard deviation, the
    softmax rule of Proposition 3.1, the uniform rule on products of two signals, ε on weighted layers, norms,
    products and sums. ``epsilon=0`` is LRP-0 there: LXT's numbers."""
    return attn_lrp_composite(epsilon)


def cp(epsilon: NonNegative = 1e-6) -> C.Composite:
    """CP-LRP (Ali et al. 2022): attention weights and gates are constants (relevance flows through the values
    only), norms with a constant standard deviation, identity on activations, ε elsewhere as in ``lrp.attn``."""
    return cp_lrp_composite(epsilon)


def composite_method(name: str, factory: Callable[..., C.Composite], description: str) -> Method:
    """A method built on a named composite (its parameters and ranges are the factory's); box bounds ordered."""
    boxed = "low" in P.signature_defaults(factory)
    return Method(name, factory, description=description, constraints=(P.ordered("low", "high"),) if boxed else ())


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
    SmoothGrad("smoothgrad", smoothgrad, output_init="onehot", family="gradient",
               description="Mean gradient over noisy copies of the input (Smilkov et al. 2017)."),
    IntegratedGradients("integrated_gradients", integrated_gradients, output_init="onehot", family="gradient",
                        description="Path integral of the gradient from a baseline (Sundararajan et al. 2017)."),
    single_rule(Zero, "lrp.zero"),
    single_rule(Epsilon, "lrp.epsilon"),
    single_rule(Gamma, "lrp.gamma"),
    single_rule(AlphaBeta, "lrp.alpha_beta"),
    single_rule(ZPlus, "lrp.z_plus"),
    single_rule(Flat, "lrp.flat"),
    single_rule(WSquare, "lrp.w_square"),
    single_rule(ZBox, "lrp.z_box"),
    composite_method("lrp.epsilon_gamma_box", epsilon_gamma_box,
                     "z-box on the first conv, γ on the other convs, ε on dense layers (zennit EpsilonGammaBox)."),
    composite_method("lrp.epsilon_plus", epsilon_plus, "z+ on convs, ε on dense layers (zennit EpsilonPlus)."),
    composite_method("lrp.epsilon_plus_flat", epsilon_plus_flat,
                     "flat on the first layer, z+ on convs, ε on dense layers (zennit EpsilonPlusFlat)."),
    composite_method("lrp.epsilon_alpha2_beta1", epsilon_alpha2_beta1,
                     "α2β1 on convs, ε on dense layers (zennit EpsilonAlpha2Beta1)."),
    composite_method("lrp.epsilon_alpha2_beta1_flat", epsilon_alpha2_beta1_flat,
                     "flat on the first layer, α2β1 on convs, ε on dense layers (zennit EpsilonAlpha2Beta1Flat)."),
    composite_method("lrp.attn", attn, "AttnLRP for transformers: softmax rule, uniform rule on products of two "
                     "signals, constant-std norms, ε on linears (Achtibat et al. 2024)."),
    composite_method("lrp.cp", cp, "CP-LRP for transformers: attention weights and gates constant, constant-std "
                     "norms, ε on linears (Ali et al. 2022)."),
)

_BUILTIN_BY_NAME = {m.name: m for m in BUILTIN_METHODS}


def as_method(method, methods: Mapping[str, Method] | None = None) -> Method:
    """A Method from a name, a Method, or a Composite (a user composite as a method). Names are looked up
    in ``methods`` (the registry's, which the top-level callers pass; default: the built-in methods)."""
    if isinstance(method, Method):
        return method
    if isinstance(method, C.Composite):
        return Method(method.name, lambda: method, description="user composite")
    if isinstance(method, str):
        table = _BUILTIN_BY_NAME if methods is None else methods
        if method not in table:
            raise MethodError(f"unknown method {method!r}; known methods: {', '.join(sorted(table))} "
                              f"(plugins add methods through the 'attribx_methods' hook)")
        return table[method]
    raise MethodError(f"method must be a name, a Method or a Composite, got {type(method).__name__}")
