"""The TensorFlow engine: runs any attribx graph with TensorFlow's kernels.

TensorFlow is imported on first use, never at module import: attribx imports engine classes to build
its registry, and ``import attribx`` (or explaining on the numpy engine) must not pull TensorFlow in.
TensorFlow tensors are immutable, so the ``*_into`` helpers return new tensors.
"""
from __future__ import annotations

import contextlib
import functools
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


class TensorFlowEngine(Engine):
    """Runs graphs with TensorFlow, in the input's dtype.

    ``device=None`` leaves placement to TensorFlow (its default device); a device string
    (``"/CPU:0"``, ``"/GPU:0"``) runs conversions and kernels under ``tf.device(device)``.
    ``dtype`` (numpy or tf dtype, or its name) casts converted arrays.
    """

    name = "tensorflow"
    framework = "tensorflow"

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
            return super().forward(node, inputs, params)

    def vjp(self, node, inputs: Sequence[Any], grad, params: dict | None = None, output=None) -> list:
        with self.placement():
            return super().vjp(node, inputs, grad, params, output)

    def node_params(self, node, inputs: Sequence[Any] = ()) -> dict:
        """The node's parameters as tensors of the computation's dtype (cached per node and dtype)."""
        like = inputs[0] if inputs else None
        if like is None:
            dtype = tf_dtype(self.dtype)
        else:
            dtype = self.dtype_of(like)
            if not dtype.is_floating:
                dtype = tf_dtype(self.dtype)
        key = (id(node), node.name, dtype, self.device)
        hit = self._param_cache.get(key)
        if hit is None:
            hit = {k: self.asarray(v, dtype=dtype) for k, v in node.params.items()}
            self._param_cache[key] = hit
        return hit

    # -- arrays -------------------------------------------------------------------------------------
    def _is_tensor(self, x):
        return _tf().is_tensor(x)

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
        tf = _tf()
        x = self._tensor(x)
        if not x.dtype.is_floating:
            return True
        return bool(tf.reduce_all(tf.math.is_finite(x)))

    def any_nonzero(self, x) -> bool:
        tf = _tf()
        x = self._tensor(x)
        return bool(tf.reduce_any(tf.not_equal(x, tf.zeros((), x.dtype))))

    # -- rule helpers ----------------------------------------------------------------------------------
    def stabilize(self, z, epsilon: float):
        """z + epsilon * sign(z) with sign(0) = +1, -0.0 included (``-0.0 >= 0`` holds): one select."""
        tf = _tf()
        if not self._is_tensor(z) or not z.dtype.is_floating:
            return super().stabilize(z, epsilon)
        eps = tf.constant(epsilon, dtype=z.dtype)
        return tf.where(z >= 0, z + eps, z - eps)

    def where_positive(self, ref, x):
        """x where ref > 0, else 0, through ReLU's gradient kernel (one pass, no mask tensor)."""
        tf = _tf()
        if (self._is_tensor(x) and self._is_tensor(ref) and x.shape == ref.shape and x.dtype == ref.dtype
                and x.dtype.is_floating):
            return tf.raw_ops.ReluGrad(gradients=x, features=ref)
        return super().where_positive(ref, x)

    def safe_divide(self, num, den):
        """num / den, and 0 where den is 0 (TensorFlow's divide_no_nan)."""
        tf = _tf()
        if self._is_tensor(num) and self._is_tensor(den) and num.dtype == den.dtype and num.dtype.is_floating:
            return tf.math.divide_no_nan(num, den)
        return super().safe_divide(num, den)

    # TensorFlow tensors are immutable: the in-place hints of the base class become plain operations.
    def divide_into(self, num, den):
        return num / den

    def multiply_into(self, a, b):
        return a * b

    def add_scaled_into(self, a, b, alpha: float):
        return a + alpha * b
