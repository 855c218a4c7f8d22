"""The TensorFlow engine: runs any attribx graph with TensorFlow's kernels.

TensorFlow is imported on first use, never at module import: attribx imports engine classes to build
its registry, and ``import attribx`` (or explaining on the numpy engine) must not pull TensorFlow in.
TensorFlow tensors are immutable, so the ``*_into`` helpers return new tensors.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import os
from typing import Any, Sequence

import numpy as np

from attribx.engines import Engine

_TF: Any = None


def _tf():
    """tensorflow, imported on first use."""
    global _TF
    if _TF is None:
        import tensorflow as tf
        _TF = tf
    return _TF


@functools.lru_cache(maxsize=None)
def tf_dtype(dtype):
    """A tf.DType from a tf dtype, a numpy dtype (or type) or a name ("float32"); None stays None."""
    tf = _tf()
    if dtype is None or isinstance(dtype, tf.DType):
        return dtype
    return tf.as_dtype(np.dtype(dtype))


#: ops whose kernels run as one compiled ``tf.function`` each: several TF ops per call (layout transposes,
#: padding, the window kernel, a bias), where one call of a traced graph costs less than their eager
#: dispatch and grappler fuses what it can. Elementwise ops stay eager (one op: nothing to gain).
COMPILED_OPS = frozenset({"conv", "conv_transpose", "max_pool", "avg_pool"})

#: traces per (op, "forward" | "vjp"): a new entry or a growing count on repeated calls means retracing
TRACES: collections.Counter = collections.Counter()

# (op, which, attrs, kernel, shapes and dtypes) -> tf.function, shared by every engine so that a new engine
# (one per explain call) reuses the traces; one function per signature, so each traces once (per device)
# and TensorFlow never sees one function retraced for many shapes
_COMPILED: dict[tuple, Any] = {}


def _signature(tensors) -> tuple:
    return tuple((tuple(t.shape), t.dtype) for t in tensors)


def compiled_kernel(op: str, which: str, attrs: dict, kernel, inputs, params, grad=None) -> Any:
    """The kernel's ``forward`` (``fn(inputs, params)``) or ``vjp`` (``fn(inputs, params, grad)``) for these
    attrs and this signature as one ``tf.function`` (cached; its traces counted in :data:`TRACES`)."""
    key = (op, which, repr(sorted(attrs.items())), kernel, _signature(inputs), tuple(sorted(params)),
           _signature(params[k] for k in sorted(params)), None if grad is None else _signature([grad]))
    fn = _COMPILED.get(key)
    if fn is None:
        label = (op, which)
        if which == "forward":
            def run(inputs, params):
                TRACES[label] += 1          # runs only while tracing
                return kernel.forward(attrs, inputs, params)
        else:
            def run(inputs, params, grad):
                TRACES[label] += 1
                return kernel.vjp(attrs, inputs, params, None, grad)
        fn = _COMPILED[key] = _tf().function(run, autograph=False)
    return fn


#: elements from which an elementwise helper runs as one XLA-compiled pass: XLA compiles once per shape
#: (~0.1 s), which pays within a few calls only on large tensors (4 eager passes over 4×64×112×112 floats
#: take ~40 ms on a 2-core CPU, the fused pass ~2 ms); smaller ones stay eager
FUSE_MIN = 1 << 20


def _stabilize(z, eps):
    return _tf().where(z >= 0, z + eps, z - eps)


def _divide_stabilized(num, z, eps):
    return num / _stabilize(z, eps)


#: elements from which a traced pass runs an elementwise helper as one XLA kernel (an XLA launch costs about
#: what a pass over ~10⁴ floats does; the compile, once per shape, falls in the tracing call)
FUSE_MIN_TRACED = 1 << 14


@functools.lru_cache(maxsize=None)
def _fused(fn):
    """``fn`` compiled by XLA (one pass, traced per shape and dtype), or None where this TensorFlow has no XLA
    for the CPU (probed once, eagerly)."""
    tf = _tf()
    compiled = tf.function(fn, jit_compile=True, autograph=False)
    try:
        with tf.init_scope():
            probe = tf.ones((2,), tf.float32)
            compiled(*([probe] * (fn.__code__.co_argcount - 1)), tf.constant(1.0, tf.float32))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError):
        return None
    return compiled


class TensorFlowEngine(Engine):
    """Runs graphs with TensorFlow, in the input's dtype.

    ``device=None`` leaves placement to TensorFlow (its default device); a device string
    (``"/CPU:0"``, ``"/GPU:0"``) runs conversions and kernels under ``tf.device(device)``.
    ``dtype`` (numpy or tf dtype, or its name) casts converted arrays.
    """

    name = "tensorflow"
    framework = "tensorflow"
    #: run the relevance pass as one traced ``tf.function`` (:mod:`attribx_tf.traced`); False: node by node
    compile_pass = True
    #: set while the pass is being traced: value checks answer conservatively (the general branch)
    tracing = False
    #: while tracing: the parameter tensors shared by every trace of the graph, by (node name, dtype)
    shared_params: dict | None = None

    #: eager calls of a pass (same graph, method, input signature) before it is traced
    trace_after = 1

    def __init__(self, dtype=None, device=None, compile_pass: bool = True, trace_after: int = 1):
        super().__init__(dtype, device)
        self.compile_pass = compile_pass
        self.trace_after = trace_after

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r} device={self.device!r}>"

    # -- placement, kernels, parameters -------------------------------------------------------------
    def placement(self):
        """The context kernels run in: ``tf.device(self.device)``, or nothing when no device is set."""
        if self.device is None:
            return contextlib.nullcontext()
        return _tf().device(self.device)

    def forward(self, node, inputs: Sequence[Any], params: dict | None = None):
        with self.placement():
            params = self.node_params(node, inputs) if params is None else params
            if self._compilable(node, inputs, params):
                fn = compiled_kernel(node.op, "forward", node.attrs, self.kernel(node.op, node.name), inputs, params)
                return fn(list(inputs), params)
            return super().forward(node, inputs, params)

    def allocated_peak(self, run):
        """TF's own allocator statistics (``tf.config.experimental.get_memory_info``) on the engine's device (the
        first GPU where TF places ops by default, else the CPU). TF keeps freed blocks in its pool, so the
        resident set says little about one call's peak."""
        tf = _tf()
        name = (self.device or ("GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"))
        name = name.split("device:")[-1].lstrip("/")
        try:
            tf.config.experimental.reset_memory_stats(name)
            base = tf.config.experimental.get_memory_info(name)["current"]
            run()
            return float(tf.config.experimental.get_memory_info(name)["peak"] - base)
        except (ValueError, RuntimeError):          # a device whose allocator keeps no statistics
            return None

    def steps_ahead(self, default: int) -> int:
        """0 where TF runs one op at a time (inter-op parallelism 1, or one core): steps run early would then
        only be held longer, at no gain in time (MobileNetV2 α2β1: 3.97× TF's gradient pass unordered, 3.86×
        two steps ahead)."""
        threads = _tf().config.threading.get_inter_op_parallelism_threads() or (os.cpu_count() or 1)
        return default if threads > 1 else 0

    def ordered_after(self, value):
        """While tracing: a control dependency on ``value`` for the ops of the node's step (see the base class;
        it also keeps grappler from merging a recomputed ReLU with the forward pass's)."""
        if self.tracing and self._is_tensor(value) and not _tf().executing_eagerly():
            return _tf().control_dependencies([value])
        return super().ordered_after(value)

    def vjp(self, node, inputs: Sequence[Any], grad, params: dict | None = None, output=None) -> list:
        with self.placement():
            params = self.node_params(node, inputs) if params is None else params
            if self._compilable(node, inputs, params) and self._is_tensor(grad):
                fn = compiled_kernel(node.op, "vjp", node.attrs, self.kernel(node.op, node.name), inputs, params,
                                     grad)
                return list(fn(list(inputs), params, grad))     # the compiled ops read no output
            return super().vjp(node, inputs, grad, params, output)

    def compiled_pass(self, graph, x, rules, init, start, **options):
        """The whole pass as one traced ``tf.function`` (:func:`attribx_tf.traced.compiled_propagate`), or None
        where it runs node by node (while tracing it, and for the options it cannot trace)."""
        if self.tracing:
            return None
        from .traced import compiled_propagate     # imports TensorFlow: once the engine runs
        return compiled_propagate(self, graph, x, rules, init, start, **options)

    def _compilable(self, node, inputs, params) -> bool:
        """Whether the node runs as a compiled kernel: an op of :data:`COMPILED_OPS`, eager execution (inside
        a caller's ``tf.function`` the kernel is traced into its graph anyway), and tensors only (a numpy
        array or a python number would be traced in as a constant: a new trace per value)."""
        if node.op not in COMPILED_OPS or not _tf().executing_eagerly():
            return False
        from .conv_kernels import channel_first_native, device_kind    # imports TensorFlow: once the engine runs
        if not (all(self._is_tensor(x) for x in inputs) and all(self._is_tensor(p) for p in params.values())):
            return False
        # a 2-D conv that TF runs channel-first (oneDNN float32) is one or two eager ops: nothing to compile,
        # and grappler's memory optimizer aborts the process on some channel-first convs in a traced graph
        return not (node.op in ("conv", "conv_transpose") and inputs and len(inputs[0].shape) <= 4
                    and channel_first_native(inputs[0].dtype, device_kind(inputs[0])))

    def node_params(self, node, inputs: Sequence[Any] = ()) -> dict:
        """The node's parameters as tensors of the computation's dtype (cached per node and dtype)."""
        like = inputs[0] if inputs else None
        if like is None:
            dtype = tf_dtype(self.dtype)
        else:
            dtype = self.dtype_of(like)
            if not dtype.is_floating:
                dtype = tf_dtype(self.dtype)
        cache, key = self._param_cache, (id(node), node.name, dtype, self.device)
        if self.shared_params is not None:      # tracing the pass: shared by the traces of this graph content
            cache, key = self.shared_params, (node.name, dtype)
        hit = cache.get(key)
        if hit is None:
            with _tf().init_scope():            # eager tensors (captured by a trace), never graph constants
                hit = {k: self.asarray(v, dtype=dtype) for k, v in node.params.items()}
            cache[key] = hit
        return hit

    # -- arrays -------------------------------------------------------------------------------------
    def _is_tensor(self, x):
        return _tf().is_tensor(x)

    def _float_pair(self, a, b) -> bool:
        """Both TF tensors of one floating dtype: TF's fused binary kernels take them (shapes may broadcast)."""
        return self._is_tensor(a) and self._is_tensor(b) and a.dtype == b.dtype and a.dtype.is_floating

    def asarray(self, x, dtype=None):
        tf = _tf()
        dtype = tf_dtype(self.dtype if dtype is None else dtype)
        with self.placement():
            if tf.is_tensor(x):
                t = x
            else:
                if hasattr(x, "detach"):      # a torch tensor
                    x = x.detach().cpu().numpy()
                a = np.asarray(x)              # python floats become float64, as on the numpy engine
                if a.dtype == object:
                    raise TypeError(f"cannot convert an array of python objects to a tensor: {a!r}")
                t = tf.convert_to_tensor(a)
            if dtype is not None and t.dtype != dtype:
                t = tf.cast(t, dtype)
            elif self.device is not None:
                t = tf.identity(t)             # copies onto the requested device
            return t

    def to_numpy(self, x) -> np.ndarray:
        if self._is_tensor(x):
            x = x.numpy()
        return np.asarray(x)

    def dtype_of(self, x):
        if self._is_tensor(x):
            return x.dtype
        return tf_dtype(np.asarray(x).dtype)

    def _tensor(self, x):
        """``x`` as a tensor of its own dtype (masks stay boolean whatever the engine's dtype)."""
        if self._is_tensor(x):
            return x
        with self.placement():
            return _tf().convert_to_tensor(np.asarray(x))

    def where(self, cond, a, b):
        tf = _tf()
        ref = a if self._is_tensor(a) else b
        if self._is_tensor(ref):
            a = a if self._is_tensor(a) else tf.cast(a, ref.dtype)
            b = b if self._is_tensor(b) else tf.cast(b, ref.dtype)
        return tf.where(self._tensor(cond), a, b)

    def sign(self, x):
        """Sign with sign(0) = +1 (also at -0.0) and -1 for NaN, as the numpy engine."""
        tf = _tf()
        x = self._tensor(x)
        one = tf.ones_like(x)
        return tf.where(x >= 0, one, -one)

    def abs(self, x):
        return _tf().abs(self._tensor(x))

    def signum(self, x):
        return _tf().sign(self._tensor(x))

    def clip(self, x, low=None, high=None):
        tf = _tf()
        x = self._tensor(x)
        if low is not None:
            x = tf.maximum(x, tf.cast(low, x.dtype))
        if high is not None:
            x = tf.minimum(x, tf.cast(high, x.dtype))
        return x

    def zeros_like(self, x):
        return _tf().zeros_like(self._tensor(x))

    def ones_like(self, x):
        return _tf().ones_like(self._tensor(x))

    def sum(self, x, axis=None, keepdims=False):
        return _tf().reduce_sum(self._tensor(x), axis=axis, keepdims=keepdims)

    def argmax(self, x, axis=-1):
        return _tf().argmax(self._tensor(x), axis=axis)

    def one_hot(self, index, like):
        tf = _tf()
        index = tf.cast(self._tensor(index), tf.int64)
        return tf.one_hot(tf.reshape(index, [-1]), int(like.shape[1]), dtype=like.dtype)

    def isfinite_all(self, x) -> bool:
        """Whether every entry is finite; False while tracing (the value is not known: callers take the form
        that is right for infinite values too)."""
        tf = _tf()
        x = self._tensor(x)
        if not x.dtype.is_floating:
            return True
        if self.tracing or not tf.executing_eagerly():
            return False
        return bool(tf.reduce_all(tf.math.is_finite(x)))

    def any_nonzero(self, x) -> bool:
        """Whether any entry is non-zero; True while tracing (the value is not known: rules take the term)."""
        tf = _tf()
        if self.tracing or not tf.executing_eagerly():
            return True
        x = self._tensor(x)
        return bool(tf.reduce_any(tf.not_equal(x, tf.zeros((), x.dtype))))

    def if_any_nonzero(self, x, then, otherwise):
        """``then()`` where any entry of ``x`` is non-zero, else ``otherwise()``; while tracing a ``tf.cond`` (both
        forms traced, the one the values pick runs), eagerly a Python branch."""
        tf = _tf()
        if not (self.tracing or not tf.executing_eagerly()):
            return super().if_any_nonzero(x, then, otherwise)
        x = self._tensor(x)
        return tf.cond(tf.reduce_any(tf.not_equal(x, tf.zeros((), x.dtype))), then, otherwise)

    # -- rule helpers ----------------------------------------------------------------------------------
    def stabilize(self, z, epsilon: float):
        """z + epsilon * sign(z) with sign(0) = +1, -0.0 included (``-0.0 >= 0`` holds): one select; on large
        tensors one XLA-fused pass (four eager passes take several times as long), bit for bit the same."""
        tf = _tf()
        if not self._is_tensor(z) or not z.dtype.is_floating:
            return super().stabilize(z, epsilon)
        eps = tf.constant(epsilon, dtype=z.dtype)
        return self._fuse(_stabilize, (z,), eps)

    def divide_stabilized(self, num, z, epsilon: float):
        """num / (z + epsilon * sign z) as one XLA kernel on large tensors (five TF ops otherwise: the select
        alone costs several multiplications), with the same numbers (XLA keeps IEEE division on the CPU)."""
        tf = _tf()
        if not self._float_pair(num, z):
            return super().divide_stabilized(num, z, epsilon)
        return self._fuse(_divide_stabilized, (num, z), tf.constant(epsilon, dtype=z.dtype))

    def _fuse(self, fn, tensors, eps):
        """``fn(*tensors, eps)``, XLA-compiled where the tensors are large enough to pay for it (eagerly: from
        ``FUSE_MIN`` elements, compiled per shape at first use; in a trace from ``FUSE_MIN_TRACED``) and the
        dtype is float32/float64, else TF op by op."""
        tf = _tf()
        n = max(t.shape.num_elements() or 0 for t in tensors)
        eager = tf.executing_eagerly()
        if n >= (FUSE_MIN if eager else FUSE_MIN_TRACED) and tensors[0].dtype in (tf.float32, tf.float64):
            fused = _fused(fn)
            if fused is not None:
                try:
                    return fused(*tensors, eps)
                except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):    # eagerly: XLA refused
                    pass
        return fn(*tensors, eps)

    def multiply_no_nan(self, z, s):
        """z ⊙ s, 0 where s = 0 (also where z is ±∞): TF's MulNoNan, one op."""
        tf = _tf()
        if self._float_pair(z, s):
            return tf.math.multiply_no_nan(z, s)
        return super().multiply_no_nan(z, s)

    def where_positive(self, ref, x):
        """x where ref > 0, else 0, through ReLU's gradient kernel (one pass, no mask tensor)."""
        tf = _tf()
        if self._float_pair(x, ref) and x.shape == ref.shape:
            return tf.raw_ops.ReluGrad(gradients=x, features=ref)
        return super().where_positive(ref, x)

    def safe_divide(self, num, den):
        """num / den, and 0 where den is 0 (TensorFlow's divide_no_nan)."""
        tf = _tf()
        if self._float_pair(num, den):
            return tf.math.divide_no_nan(num, den)
        return super().safe_divide(num, den)

    # TensorFlow tensors are immutable: the in-place hints of the base class become plain operations.
    def divide_into(self, num, den):
        return num / den

    def multiply_into(self, a, b):
        return a * b

    def add_scaled_into(self, a, b, alpha: float):
        return a + alpha * b
