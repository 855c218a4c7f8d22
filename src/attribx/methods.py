"""Methods: named recipes — a composite (the rule of each node), the output initialisation, what is
done at the input, and default parameters. Methods are plugins like everything else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import composite as C
from .errors import MethodError
from .propagation import Propagation, ancestors, propagate
from .rules import Epsilon, Gradient, Zero
from .targets import initial_relevance


@dataclass
class Method:
    """A named attribution method.

    ``composite(**params)`` returns the :class:`~attribx.composite.Composite` for the given parameters;
    ``output_init`` is ``"score"`` (LRP: decompose the target's score) or ``"onehot"`` (gradients);
    ``input_modifier`` (``None``, ``"x_input"``) post-processes the input relevance.
    """

    name: str
    composite: Callable[..., C.Composite]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    output_init: str = "score"
    input_modifier: str | None = None
    family: str = "lrp"
    description: str = ""

    def resolve(self, params: Mapping[str, Any]) -> dict:
        """Defaults overlaid with the user's parameters; unknown names are an error."""
        unknown = set(params) - set(self.defaults)
        if unknown:
            accepted = ", ".join(sorted(self.defaults)) or "no parameters"
            raise MethodError(f"method {self.name!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                              f"it accepts {accepted}")
        return {**self.defaults, **params}

    def start_node(self, graph) -> str:
        """Where relevance starts: the output, or for LRP the scores before a final softmax."""
        out = graph.output
        node = graph[out] if out in graph else None
        if self.output_init == "score" and node is not None and node.op == "softmax":
            return node.inputs[0]
        return out

    def run(self, graph, engine, x, targets_fn, params: Mapping[str, Any], keep: Sequence[str] = (),
            conservation: bool = False) -> Propagation:
        """One relevance pass; ``targets_fn(scores)`` returns the target index per sample."""
        start = self.start_node(graph)
        rules = self.composite(**params).assign(graph, ancestors(graph, start))
        state = {}

        def init(scores):
            state["targets"] = targets_fn(engine.to_numpy(scores))
            return initial_relevance(engine, scores, state["targets"], self.output_init)

        result = propagate(graph, engine, x, rules, init, start, keep, conservation)
        result.targets = state["targets"]
        inp = graph.input.name
        if self.input_modifier == "x_input":
            result.relevance[inp] = result.relevance[inp] * x
        elif self.input_modifier is not None:
            raise MethodError(f"method {self.name!r}: unknown input modifier {self.input_modifier!r}")
        return result


def gradient_composite(**_):
    return C.Composite([(C.every(), Gradient())], defaults=[], name="gradient")


def single_rule(rule_factory, name):
    """The composite of a single-rule LRP method: its rule on every weighted layer, defaults elsewhere."""
    def make(**params):
        return C.Composite([(C.category("layer"), rule_factory(**params))], name=name)
    return make


BUILTIN_METHODS = (
    Method("gradient", gradient_composite, output_init="onehot", family="gradient",
           description="Gradient of the target's score w.r.t. the input (sensitivity)."),
    Method("gradient_x_input", gradient_composite, output_init="onehot", input_modifier="x_input",
           family="gradient", description="Gradient times input."),
    Method("lrp.zero", single_rule(lambda: Zero(), "lrp.zero"),
           description="LRP-0 on every linear and conv layer (Bach et al. 2015)."),
    Method("lrp.epsilon", single_rule(lambda epsilon: Epsilon(epsilon=epsilon), "lrp.epsilon"),
           defaults={"epsilon": 1e-6},
           description="LRP-ε on every linear and conv layer: z + ε·sign(z) in the denominator."),
)
