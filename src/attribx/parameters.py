"""Parameter ranges: what a method's or a rule's parameters may be, declared where their defaults are.

A parameter lives in a signature, where ``help()`` and the docs show it: a rule's ``__init__`` and a
method's composite factory take keyword arguments with defaults (:func:`signature_defaults` reads them),
annotated with their range (:func:`signature_ranges` reads it): ``epsilon: NonNegative = 1e-6``, where
``NonNegative`` is ``Annotated[float, non_negative]``, one of the annotations below, or any
``Annotated[type, a Range]``. :func:`check` applies the ranges, once, before anything is computed, and
refuses a value out of range with one line that names the parameter and its valid range::

    def my_method(delta: NonNegative = 0.25, steps: PositiveInt = 10):
        ...                                    # returns a Composite
    Method("my.method", my_method)             # defaults and ranges read from the signature

A range can also be given as a mapping (a method's ``ranges=``, a rule's class attribute ``ranges``),
which overrides the annotations; conditions on several parameters are ``constraints``.

Every method's parameters are also refused when they hold NaN, declared or not: a NaN parameter only
ever gives all-NaN relevance. Plugins use the same checks (see docs/plugins.md and docs/refusals.md).
"""
from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from .errors import MethodError

__all__ = ["Range", "Constraint", "check", "finite", "non_negative", "positive", "unit_interval", "integer",
           "flag", "finite_array", "optional", "ordered", "alpha_minus_beta_is_one", "signature_defaults",
           "signature_ranges", "Finite", "NonNegative", "Positive", "UnitInterval", "Flag", "FiniteArray",
           "OptionalArray", "PositiveInt", "NonNegativeInt"]


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True)
class Range:
    """A parameter's valid values: ``test(value) -> bool`` and ``text``, the range in words
    ("a finite number >= 0"), which the error message quotes."""

    text: str
    test: Callable[[Any], bool]

    def __call__(self, value) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False


@dataclass(frozen=True)
class Constraint:
    """A condition on several parameters together: ``test(params) -> bool`` on the resolved parameters,
    and ``text``, the condition in words, which the error message quotes."""

    names: tuple
    text: str
    test: Callable[[Mapping[str, Any]], bool]


def _number(low=None, high=None, low_open=False, high_open=False) -> Range:
    def test(v):
        if not _is_number(v) or not math.isfinite(float(v)):
            return False
        v = float(v)
        if low is not None and (v <= low if low_open else v < low):
            return False
        return not (high is not None and (v >= high if high_open else v > high))
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    text = "a finite number" + (" " + " and ".join(parts) if parts else "")
    if low is not None and high is not None and not low_open and not high_open:
        text = f"a number in [{low:g}, {high:g}]"
    return Range(text, test)


#: any finite real number
finite = _number()
#: a finite number >= 0
non_negative = _number(low=0.0)
#: a finite number > 0
positive = _number(low=0.0, low_open=True)
#: a number in [0, 1]
unit_interval = _number(low=0.0, high=1.0)
#: true or false
flag = Range("true or false", lambda v: isinstance(v, (bool, np.bool_)))


def integer(minimum: int = 0) -> Range:
    """A whole number >= ``minimum`` (an int, or a float with no fractional part such as 20.0)."""
    def test(v):
        return (_is_number(v) and math.isfinite(float(v)) and float(v) == int(v) and int(v) >= minimum)
    return Range(f"an integer >= {minimum}", test)


def _finite_array(v) -> bool:
    try:
        a = np.asarray(v)
    except ValueError:      # arrays of different shapes: one per input (integrated gradients' baselines)
        return isinstance(v, (tuple, list)) and all(_finite_array(e) for e in v)
    return a.dtype.kind in "iuf" and a.size > 0 and bool(np.all(np.isfinite(a)))


#: a finite number or an array (list) of finite numbers (or a tuple of them, one per input)
finite_array = Range("a finite number or an array of finite numbers", _finite_array)


def one_of(*choices: str) -> Range:
    """One of the named ``choices`` (a string parameter such as a fusion mode)."""
    return Range("one of " + ", ".join(repr(c) for c in choices), lambda v: isinstance(v, str) and v in choices)


def optional(r: Range) -> Range:
    """``r``, or None (unset)."""
    return Range(f"{r.text} (or null)", lambda v: v is None or r(v))


# -- the same ranges as annotations: ``epsilon: NonNegative = 1e-6`` --------------------------------------
Finite = Annotated[float, finite]
NonNegative = Annotated[float, non_negative]
Positive = Annotated[float, positive]
UnitInterval = Annotated[float, unit_interval]
Flag = Annotated[bool, flag]
FiniteArray = Annotated[Union[float, np.ndarray], finite_array]
#: a finite number or array, or None (unset: bounds the user must give)
OptionalArray = Annotated[Optional[Union[float, np.ndarray]], optional(finite_array)]
PositiveInt = Annotated[int, integer(1)]
NonNegativeInt = Annotated[int, integer(0)]


def ordered(low: str, high: str) -> Constraint:
    """``params[low] <= params[high]`` (elementwise for arrays); holds where either is unset."""
    def test(p):
        lo, hi = p.get(low), p.get(high)
        if lo is None or hi is None:
            return True
        try:
            return bool(np.all(np.asarray(lo, dtype=np.float64) <= np.asarray(hi, dtype=np.float64)))
        except ValueError:      # shapes that do not broadcast: the rule says so against the input's shape
            return True
    return Constraint((low, high), f"{low} <= {high} (every element)", test)


#: LRP-αβ: α − β = 1 (β ≥ 0 and so α ≥ 1 come from the ranges)
alpha_minus_beta_is_one = Constraint(
    ("alpha", "beta"), "alpha - beta = 1 (e.g. alpha=2, beta=1; alpha=1, beta=0)",
    lambda p: abs((float(p["alpha"]) - float(p["beta"])) - 1.0) <= 1e-9 * max(1.0, abs(float(p["alpha"]))))


def signature_defaults(fn: Callable, owner: str = "") -> dict:
    """The parameters ``fn`` takes by keyword, with their defaults, in signature order (``self`` and
    ``**kwargs`` left out). Every one needs a default: a parameter the user may omit must say what it is
    then. ``owner`` names ``fn`` in the error."""
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) or name == "self":
            continue
        if p.default is p.empty:
            raise MethodError(f"{owner or getattr(fn, '__qualname__', fn)}: parameter {name} needs a default "
                              f"(parameters are keyword arguments with defaults)")
        out[name] = p.default
    return out


def signature_ranges(fn: Callable) -> dict:
    """The ranges ``fn``'s parameters declare in their annotations (``Annotated[type, a Range]``), by name.
    Annotations that do not evaluate in ``fn``'s module (names defined inside a function) declare none."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:   # noqa: BLE001 - any failure to evaluate an annotation means: no range declared there
        return {}
    out = {}
    for name, hint in hints.items():
        found = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Range)]
        if found and name != "return":
            out[name] = found[0]
    return out


def _show(v) -> str:
    if isinstance(v, np.ndarray) and v.size > 8:
        return f"an array of shape {v.shape}"
    text = repr(v.tolist() if isinstance(v, np.ndarray) else v)
    return text if len(text) <= 60 else text[:57] + "..."


def _has_nan(v) -> bool:
    if _is_number(v):
        return math.isnan(float(v))
    if isinstance(v, (list, tuple, np.ndarray)):
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            return False
        return bool(np.isnan(a).any())
    return False


def check(owner: str, params: Mapping[str, Any], ranges: Mapping[str, Range] | None = None,
          constraints: Sequence[Constraint] = ()) -> None:
    """Refuse (:class:`~attribx.errors.MethodError`, one line) a parameter out of its declared range, a
    NaN in any parameter, and parameters that break a constraint. ``owner`` names who takes them
    ("method 'lrp.epsilon'", "rule 'gamma'")."""
    ranges = ranges or {}
    for name, value in params.items():
        r = ranges.get(name)
        if r is not None and not r(value):
            raise MethodError(f"{owner}: parameter {name} must be {r.text}, got {_show(value)}")
        if r is None and _has_nan(value):
            raise MethodError(f"{owner}: parameter {name} is NaN; give a number")
    for c in constraints:
        if all(n in params for n in c.names) and not c.test(params):
            got = ", ".join(f"{n}={_show(params[n])}" for n in c.names)
            raise MethodError(f"{owner}: parameters must satisfy {c.text}, got {got}")
