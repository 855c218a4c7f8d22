"""The numpy engine: the reference, in core, with no optional dependency."""
from __future__ import annotations

import numpy as np

from .base import Engine


class NumpyEngine(Engine):
    """Runs graphs with numpy on the CPU, in the input's dtype (float32 or float64)."""

    name = "numpy"
    framework = "numpy"

    def asarray(self, x, dtype=None):
        if hasattr(x, "detach"):          # a torch tensor (possibly on a GPU)
            x = x.detach().cpu().numpy()
        return np.asarray(x, dtype=dtype or self.dtype)

    def to_numpy(self, x):
        return np.asarray(x)

    def dtype_of(self, x):
        return np.asarray(x).dtype

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def sign(self, x):
        return np.where(x >= 0, 1, -1).astype(x.dtype)

    def abs(self, x):
        return np.abs(x)

    def signum(self, x):
        return np.sign(x)

    def clip(self, x, low=None, high=None):
        return np.clip(x, low, high)

    def zeros_like(self, x):
        return np.zeros_like(x)

    def ones_like(self, x):
        return np.ones_like(x)

    def sum(self, x, axis=None, keepdims=False):
        return np.sum(x, axis=axis, keepdims=keepdims)

    def argmax(self, x, axis=-1):
        return np.argmax(x, axis=axis)

    def one_hot(self, index, like):
        out = np.zeros_like(like)
        out[np.arange(len(index)), np.asarray(index)] = 1
        return out

    def isfinite_all(self, x):
        return bool(np.isfinite(x).all())

    def any_nonzero(self, x):
        return bool(np.any(x))
