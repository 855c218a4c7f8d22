"""The engine interface: run graph ops on one array library.

An engine supplies, per op, a :class:`Kernel` (forward and vector-Jacobian product) plus the few
elementwise array functions that rules use (``where``, ``sign``, ``clip``, ...). Rules are written
once against this interface, so every rule works on every engine. Kernels come from the
``attribx_kernels(engine)`` hook, so a plugin can add an op to an existing engine: :func:`attribx.get_engine`
hands each engine the registry's table (this module never reads the registry).
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from ..errors import UnsupportedError
from ..ops import conv_transpose_geometry


@dataclass(frozen=True)
class Kernel:
    """How one engine computes one op.

    ``forward(attrs, inputs, params) -> output``;
    ``vjp(attrs, inputs, params, output, grad) -> [grad per input]`` where ``grad`` has the output's
    shape and each returned gradient has its input's shape (``None`` for inputs that take none).
    ``attrs`` are complete (defaults filled by graph validation); ``params`` are engine arrays.
    """

    forward: Callable[..., Any]
    vjp: Callable[..., Sequence[Any]]


def _constant_forward(attrs, inputs, params):
    return params["value"]      # parameters are already engine arrays of the right dtype and device


def _no_inputs(attrs, inputs, params, output, grad):
    return []


def fill_vjp(attrs, inputs, params, output, grad):
    """``fill`` reads only its input's batch size: its gradient is zero."""
    return [inputs[0] * 0]


#: The ``constant`` op's kernel, the same for every engine: its value is a parameter, it has no inputs.
CONSTANT_KERNEL = Kernel(_constant_forward, _no_inputs)


def transposed_conv_kernel(conv: Kernel, placeholder: Callable, add_channel_bias: Callable) -> Kernel:
    """``conv_transpose`` built from an engine's ``conv`` kernel: its forward is conv's VJP w.r.t. the
    input and its VJP is conv's forward, so each engine gets it from code it already tests.

    ``placeholder(shape, like)`` gives an array of that shape and ``like``'s dtype whose values are never
    read (conv's VJP needs only the input's shape); ``add_channel_bias(y, b)`` adds b along axis 1.
    """
    def conv_attrs(attrs):
        return {"stride": attrs["stride"], "padding": attrs["padding"], "dilation": attrs["dilation"],
                "groups": attrs["groups"]}

    def forward(attrs, inputs, params):
        (x,) = inputs
        w = params["weight"]
        *_, spatial = conv_transpose_geometry(attrs, tuple(x.shape), tuple(w.shape))
        out_shape = (x.shape[0], w.shape[1] * int(attrs["groups"])) + spatial
        (y,) = conv.vjp(conv_attrs(attrs), [placeholder(out_shape, x)], {"weight": w}, None, x)
        b = params.get("bias")
        return y if b is None else add_channel_bias(y, b)

    def vjp(attrs, inputs, params, output, grad):
        return [conv.forward(conv_attrs(attrs), [grad], {"weight": params["weight"]})]

    return Kernel(forward, vjp)


def quotient_kernel(unbroadcast: Callable, shape_of: Callable) -> Kernel:
    """``div`` for engines whose arrays support ``/``, ``*`` and unary ``-`` (numpy, torch, TensorFlow):
    only summing a broadcast gradient back to an input's shape (``unbroadcast(g, shape_of(x))``) differs."""

    def forward(attrs, inputs, params):
        a, b = inputs
        return a / b

    def vjp(attrs, inputs, params, output, grad):
        a, b = inputs
        q = grad / b
        return [unbroadcast(q, shape_of(a)), unbroadcast(-q * (a / b), shape_of(b))]

    return Kernel(forward, vjp)


#: Where an engine that was given no kernels (one built by hand: ``TorchEngine()``) finds them: a function of
#: the engine's name, installed by :mod:`attribx.plugins` (the registry's kernel tables) when it loads.
_kernel_source: Callable[[str], Mapping[str, Kernel]] | None = None


def set_kernel_source(source: Callable[[str], Mapping[str, Kernel]] | None) -> None:
    """Install the kernel tables engines built by hand fall back to (the plugin registry does, at import)."""
    global _kernel_source
    _kernel_source = source


class Engine:
    """Base class: array conversion, parameter caching, kernel dispatch and rule helpers.

    Subclasses set ``name`` and implement the array functions for their library. The kernels (op name ->
    :class:`Kernel`) are given (``use_kernels``; :func:`attribx.get_engine` gives the registry's), else looked
    up on first use where :func:`set_kernel_source` says.
    """

    name: ClassVar[str] = ""
    #: the framework a graph's ``meta["framework"]`` names when this engine is its natural default
    framework: ClassVar[str] = ""
    #: the parameter cache's size at which entries of nodes that are gone are dropped (then twice what is left)
    _prune_at = 256

    def __init__(self, dtype: str | None = None, device: str | None = None):
        self.dtype = dtype
        self.device = device
        self._kernels: dict[str, Kernel] | None = None
        self._param_cache: dict[tuple, Any] = {}

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"

    # -- kernels ---------------------------------------------------------------------------------
    @property
    def kernels(self) -> Mapping[str, Kernel]:
        if self._kernels is None:
            if _kernel_source is None:
                raise UnsupportedError(f"the {self.name} engine has no kernels: get it from attribx.get_engine, or "
                                       f"give it a table with use_kernels()")
            self._kernels = _kernel_source(self.name)
        return self._kernels

    @property
    def has_kernels(self) -> bool:
        """Whether this engine was given its kernels (or has looked them up already)."""
        return self._kernels is not None

    def use_kernels(self, kernels: Mapping[str, Kernel]) -> "Engine":
        """Run ops with ``kernels`` (op name -> :class:`Kernel`); returns the engine."""
        self._kernels = kernels
        return self

    def kernel(self, op: str, node_name: str = "?") -> Kernel:
        k = self.kernels.get(op)
        if k is None:
            raise UnsupportedError(
                f"node {node_name!r}: op {op!r} has no kernel on the {self.name} engine; a plugin adds one "
                f"through the 'attribx_kernels' hook"
            )
        return k

    def forward(self, node, inputs: Sequence[Any], params: dict | None = None):
        params = self.node_params(node, inputs) if params is None else params
        return self.kernel(node.op, node.name).forward(node.attrs, list(inputs), params)

    def vjp(self, node, inputs: Sequence[Any], grad, params: dict | None = None, output=None) -> list:
        params = self.node_params(node, inputs) if params is None else params
        return list(self.kernel(node.op, node.name).vjp(node.attrs, list(inputs), params, output, grad))

    def compiled_pass(self, graph, x, rules, init, start, **options):
        """The relevance pass run as one compiled program (an engine that compiles whole passes returns its
        :class:`~attribx.propagation.Propagation`), or None: :func:`attribx.propagation.propagate` runs it
        node by node. ``options``: propagate's keyword arguments."""
        return None

    def node_params(self, node, inputs: Sequence[Any] = ()) -> dict:
        """The node's parameters as engine arrays of the computation's dtype (cached per engine)."""
        dtype = self.dtype_of(inputs[0]) if inputs else self.dtype
        if dtype is not None and not self.is_floating(dtype):    # indices in: parameters keep their dtype
            dtype = self.dtype
        return self._cached_params(node, (id(node), node.name, str(dtype)),
                                   lambda: {k: self.asarray(v, dtype=dtype) for k, v in node.params.items()})

    def _cached_params(self, node, key, make):
        """``make()``, cached under ``key`` for as long as ``node`` lives. Each entry remembers its node (weakly):
        a node created later at the same address (Python reuses ids) never finds another's parameters, and the
        entries of nodes that are gone are dropped as the cache grows (they would hold converted weights)."""
        entry = self._param_cache.get(key)
        if entry is not None and entry[0]() is node:
            return entry[1]
        hit = make()
        if len(self._param_cache) >= self._prune_at:
            self._param_cache = {k: v for k, v in self._param_cache.items() if v[0]() is not None}
            self._prune_at = max(256, 2 * len(self._param_cache))
        self._param_cache[key] = (weakref.ref(node), hit)
        return hit

    # -- arrays: subclasses implement ------------------------------------------------------------
    def asarray(self, x, dtype=None):
        raise NotImplementedError

    def to_numpy(self, x) -> np.ndarray:
        raise NotImplementedError

    def dtype_of(self, x):
        raise NotImplementedError

    def is_floating(self, dtype) -> bool:
        """Whether ``dtype`` (as :meth:`dtype_of` gives it) is a floating type."""
        return np.dtype(dtype).kind == "f"

    def where(self, cond, a, b):
        raise NotImplementedError

    def sign(self, x):
        """Sign with sign(0) = +1, as the LRP stabilisers need."""
        raise NotImplementedError

    def abs(self, x):
        raise NotImplementedError

    def clip(self, x, low=None, high=None):
        raise NotImplementedError

    def zeros_like(self, x):
        raise NotImplementedError

    def ones_like(self, x):
        raise NotImplementedError

    def sum(self, x, axis=None, keepdims=False):
        raise NotImplementedError

    def argmax(self, x, axis=-1):
        raise NotImplementedError

    def one_hot(self, index, like):
        """Array shaped like ``like`` (N, C) with ones at ``index`` (an int array of length N)."""
        raise NotImplementedError

    def isfinite_all(self, x) -> bool:
        """Whether every entry is finite; an engine that cannot tell yet (tracing) answers False."""
        raise NotImplementedError

    def any_nonzero(self, x) -> bool:
        """Whether any entry of ``x`` is non-zero (rules use it to skip terms that vanish)."""
        raise NotImplementedError

    def if_any_nonzero(self, x, then: Callable[[], Any], otherwise: Callable[[], Any]):
        """``then()`` where any entry of ``x`` is non-zero, else ``otherwise()``: a rule's choice between two forms
        by a value. An engine that compiles the pass decides when it runs (both forms compiled)."""
        return then() if self.any_nonzero(x) else otherwise()

    # -- derived helpers shared by rules -----------------------------------------------------------
    def divide_into(self, num, den):
        """num / den, where ``den`` is a temporary that an engine may overwrite to save an allocation."""
        return num / den

    def multiply_into(self, a, b):
        """a * b, where ``a`` is a temporary (same shape as the result) that an engine may overwrite."""
        return a * b

    def where_positive(self, ref, x):
        """``x`` where ``ref > 0``, else 0 (same shapes): a ReLU's backward, which engines run in one pass."""
        return self.where(ref > 0, x, self.zeros_like(x))

    def where_negative(self, ref, x):
        """``x`` where ``ref < 0``, else 0: :meth:`where_positive`'s other branch (neither takes ref = 0)."""
        return self.where_positive(-ref, x)

    def stack_by_sign(self, ref, x, axis: int):
        """[x where ref > 0, x where ref < 0] concatenated along ``axis`` in one new array, for one transposed op
        with the two branches' weights stacked; None where the engine has no cheaper way than two arrays and
        a copy (the caller then runs two transposed ops)."""
        return None

    def any_where_nonpositive(self, ref, x) -> bool:
        """Whether ``x`` is non-zero anywhere ``ref ≤ 0`` (a rule's one-branch form needs it to be False)."""
        return self.any_nonzero(x - self.where_positive(ref, x))

    def if_any_where_nonpositive(self, ref, x, then: Callable[[], Any], otherwise: Callable[[], Any]):
        """``then()`` where ``x`` is non-zero anywhere ``ref ≤ 0``, else ``otherwise()``: as :meth:`if_any_nonzero`
        (an engine that compiles the pass compiles both forms); eagerly by :meth:`any_where_nonpositive`."""
        if type(self).any_where_nonpositive is not Engine.any_where_nonpositive:     # the engine's own test
            return then() if self.any_where_nonpositive(ref, x) else otherwise()
        return self.if_any_nonzero(x - self.where_positive(ref, x), then, otherwise)

    def add_scaled_into(self, a, b, alpha: float):
        """a + alpha * b, where ``b`` is a temporary that an engine may overwrite (``a`` may be a number)."""
        return a + alpha * b

    def scale_negative(self, x, factor: float):
        """x where x > 0, ``factor`` · x elsewhere (a leaky ReLU of slope ``factor``), as a new array."""
        return x + (factor - 1.0) * self.clip(x, None, 0)

    def copysign_into(self, a, ref):
        """|a| with the sign of ``ref`` (either sign where ref is ±0), where ``a`` is a temporary."""
        return self.abs(a) * self.sign(ref)

    def positive_plus_into(self, x, epsilon: float):
        """max(x, 0) + epsilon, where ``x`` is a temporary."""
        return self.clip(x, 0, None) + epsilon

    def signum(self, x):
        """-1, 0 or +1 by the sign of x (0 at 0): selects two disjoint branches, and neither at 0, in one array."""
        one = self.ones_like(x)
        return self.where_positive(x, one) - self.where_positive(-x, one)

    def stabilize(self, z, epsilon: float):
        """z + epsilon * sign(z) with sign(0) = +1."""
        return z + epsilon * self.sign(z)

    def divide_stabilized(self, num, z, epsilon: float):
        """num / (z + epsilon * sign z), sign(0) = +1: the ε rule's quotient (``z`` is left as it is). One
        method, so that an engine can run it as one pass (the TF engine's trace: one XLA kernel for five ops)."""
        return self.divide_into(num, self.stabilize(z, epsilon))

    def divide_stabilized_into(self, num, den, epsilon: float):
        """:meth:`divide_stabilized`, where ``den`` is a temporary that the engine may overwrite (a rule's own z)."""
        return self.divide_stabilized(num, den, epsilon)

    def multiply_no_nan(self, z, s):
        """z ⊙ s, and 0 where s = 0 even where z is ±∞ (a masked score that carries no quotient holds no
        relevance, not ∞ · 0 = NaN)."""
        if not self.isfinite_all(z):
            z = self.where(s == 0, self.zeros_like(z), z)
        return z * s

    def vacate(self, x):
        """Free ``x``'s memory but keep the array object as a shell that :meth:`recompute` fills again, so that
        caches keyed by the array's identity (the torch engine's max-pool indices) stay valid; None: this
        engine keeps no shells (the pass drops the array)."""
        return None

    def recompute(self, node, inputs: Sequence[Any], params: dict, shell=None):
        """The node's forward value again, in the backward pass, for a value not held from the forward pass
        (:func:`attribx.liveness.recomputed_values`); in ``shell`` (from :meth:`vacate`) where given."""
        return self.forward(node, inputs, params)

    def allocated_peak(self, run: Callable[[], Any]) -> float | None:
        """The peak of the memory this engine's allocator handed out while ``run()`` ran, above what it held
        before (bytes); None where the allocator reports no peak (:func:`attribx.benchmark.measure_memory`)."""
        return None

    def steps_ahead(self, default: int) -> int:
        """How many steps before the backward pass reaches a node :meth:`ordered_after` may let its step run
        (``default``: :data:`attribx.propagation.LOOKAHEAD`): worth it only where another core runs them."""
        return default

    def ordered_after(self, value):
        """A context in which the backward pass computes one node's step, once ``value`` (the relevance that
        reached a node a few steps back: :data:`attribx.propagation.LOOKAHEAD`) exists. Run op by op, that is
        already so; an engine that compiles the whole pass into a dataflow graph makes the step's ops wait for
        ``value``: else they run as soon as their forward inputs exist (a denominator z + ε sign z, a recomputed
        ReLU) and are held until the backward pass gets there, and the compiler merges a recomputed value with
        the forward pass's."""
        return contextlib.nullcontext()

    #: whether :meth:`shape_stub` gives stubs (the pass plans releases only then)
    releases_values: ClassVar[bool] = False

    def shape_stub(self, x):
        """A stand-in for ``x`` that has its shape and dtype but no values, where reading them is an error (the
        pass then releases values it reads only for their shape: :mod:`attribx.liveness`); None: none here."""
        return None

    def has_zero(self, x) -> bool:
        """Whether ``x`` holds a 0."""
        return bool(np.any(self.to_numpy(x) == 0))

    def where_nonzero(self, ref, x):
        """``x`` where ``ref`` is not 0, else 0 (same shapes)."""
        return self.where(ref == 0, self.zeros_like(x), x)

    def safe_divide(self, num, den):
        """num / den, and 0 where den is 0 (LRP-0 on units that contribute nothing)."""
        zero = den == 0
        return self.where(zero, self.zeros_like(num), num / self.where(zero, self.ones_like(den), den))
