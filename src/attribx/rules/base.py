"""The rule interface: relevance at a node's output -> relevance at its inputs, on any engine."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from ..errors import MethodError
from ..parameters import check as check_params
from ..parameters import signature_defaults, signature_ranges


@dataclass
class NodeContext:
    """What a rule sees of one node during the backward pass.

    ``inputs`` and ``output`` are the forward pass's activations (engine arrays), ``params`` the node's
    parameters as engine arrays, ``constant`` tells for each input whether it is a constant (constants
    take no relevance: they act like biases), ``nonnegative`` whether it is non-negative for any input
    of the graph (after a ReLU), so that rules can skip terms that vanish, and ``gate`` which input of a
    product of a gate and a signal is the gate (:func:`attribx.bounds.gated_products`).
    """

    engine: Any
    node: Any
    inputs: list
    output: Any
    params: dict
    constant: Sequence[bool]
    category: str
    nonnegative: Sequence[bool] = ()
    gate: Sequence[bool] = ()

    def forward(self, inputs=None, params=None):
        return self.engine.forward(self.node, self.inputs if inputs is None else inputs,
                                   self.params if params is None else params)

    def vjp(self, grad, inputs=None, params=None, output=None):
        return self.engine.vjp(self.node, self.inputs if inputs is None else inputs, grad,
                               self.params if params is None else params, output)


class Rule:
    """Base of all rules.

    Subclasses set ``name``, the ops or op categories they apply to (``ops``/``categories``, both
    empty: every op), take their parameters as keyword arguments of ``__init__`` with defaults and their
    ranges as annotations (``epsilon: NonNegative = 1e-6``: what ``help()`` and the docs show; ``defaults``
    and ``ranges`` are read from that signature) and pass them on to ``Rule.__init__``. The ranges
    (parameter name -> a :class:`attribx.parameters.Range`; a class attribute ``ranges`` overrides the
    annotations) and ``constraints`` (conditions on several parameters) are checked when the rule is made.
    ``__call__(ctx, relevance)`` returns one relevance array (or None) per node input.

    A rule may instead declare ``defaults = {...}`` (and ``ranges = {...}``) and no ``__init__`` (the
    older form): its signature is then made from that dict, so ``help()`` shows the same.
    """

    name: ClassVar[str] = ""
    ops: ClassVar[frozenset] = frozenset()
    categories: ClassVar[frozenset] = frozenset()
    defaults: ClassVar[dict] = {}
    ranges: ClassVar[dict] = {}
    constraints: ClassVar[tuple] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        if (not cls.__module__.startswith("attribx.") and "carry" not in own
                and any(m in own for m in ("__call__", "relevance", "split", "divide"))):
            # a rule written elsewhere that changes how an attribx rule computes relevance: the quotient form
            # it would inherit computes the parent's numbers, so the pass gives it relevance instead
            cls.takes_quotient = Rule.takes_quotient
        if "__init__" in cls.__dict__:          # parameters declared in the signature
            cls.defaults = signature_defaults(cls.__init__, f"rule {cls.name!r}")
            declared = signature_ranges(cls.__init__)
            if declared and "ranges" not in cls.__dict__:
                cls.ranges = declared
            cls.__signature__ = None            # inspect reads __init__ itself
        elif cls.__init__ is Rule.__init__:     # parameters declared as a dict: show them as a signature
            cls.__signature__ = inspect.Signature(
                [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in cls.defaults.items()])

    def __new__(cls, *args: Any, **params: Any):
        """Refuse unknown parameter names with the rule's name and what it takes (rather than Python's
        TypeError), whichever ``__init__`` the rule has."""
        unknown = set(params) - set(cls.defaults)
        if unknown:
            raise MethodError(f"rule {cls.name!r}: unknown parameter(s) {sorted(unknown)}; "
                              f"it takes {sorted(cls.defaults) or 'none'}")
        return super().__new__(cls)

    def __init__(self, **params: Any):
        self.params = {**self.defaults, **params}
        check_params(f"rule {self.name!r}", self.params, self.ranges, self.constraints)

    def __getattr__(self, key):
        params = self.__dict__.get("params", {})
        if key in params:
            return params[key]
        raise AttributeError(key)

    def applies_to(self, op: str, category: str) -> bool:
        if not self.ops and not self.categories:
            return True
        return op in self.ops or category in self.categories

    def __call__(self, ctx: NodeContext, relevance) -> list:
        raise NotImplementedError

    # -- the quotient form: LXT's modified gradient, in LRP's terms ---------------------------------
    def takes_quotient(self, node, category: str) -> bool:
        """Whether :meth:`carry` runs this node (whenever no plain relevance reaches it, at least): rules
        whose relevance is R_i = x_i ⊙ G_i(R / z) say yes, so that a chain of them passes s = R / z along
        and never divides by z or multiplies by x in between (see :meth:`carry`)."""
        return False

    def carry(self, ctx: NodeContext, s, r, want: Sequence[bool]):
        """The rule in quotient form. What reaches the node's output is R = r + z ⊙ s (z its output; ``s``,
        quotients from consumers that carry, and ``r``, relevance from others: either may be None). Returns
        per input its quotient s_i (R_i = x_i ⊙ s_i) where ``want[i]`` (the producer carries too), else its
        relevance R_i, None for nothing; or None as a whole where the form does not apply now, and the pass
        then hands :meth:`__call__` the relevance R. The numbers are those of :meth:`__call__` (up to
        rounding): where LRP-0 divides, a unit whose z is exactly 0 passes nothing on in either form."""
        return None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.params == other.params

    def __hash__(self):
        return hash((type(self), repr(self)))


def epsilon_divide(eng, R, z, epsilon):
    """R / (z + ε·sign(z)); with ε = 0 (LRP-0) a unit whose z is exactly 0 passes nothing (not 0/0 = NaN)."""
    if epsilon == 0:
        return eng.safe_divide(R, z)
    return eng.divide_stabilized(R, z, epsilon)


def quotient(eng, z, s, r, epsilon: float = 0.0):
    """R / (z + ε·sign z) for R = r + z ⊙ s (``s`` or ``r`` None: no such part). With ε = 0: s itself (0 where
    z = 0, as R / z counts 0/0), plus r / z when relevance arrives too: no division where only quotients arrive."""
    if epsilon == 0:
        s = None if s is None else eng.where_nonzero(z, s)
        if r is None:
            return s
        q = eng.safe_divide(r, z)
        return q if s is None else q + s
    return epsilon_divide(eng, relevance_of(eng, r, s, z), z, epsilon)


def relevance_of(eng, r, s, z):
    """The relevance R = r + z ⊙ s that a quotient ``s`` (and relevance ``r``, either None) stand for; a value
    z = ±∞ with s = 0 (a masked attention score) holds none, not ∞ · 0."""
    if s is None:
        return r
    zs = eng.multiply_no_nan(z, s)
    return zs if r is None else r + zs


def times(x, g):
    """x ⊙ g (None where either is None)."""
    return None if x is None or g is None else x * g
