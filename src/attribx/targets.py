"""Output initialisation: which output is explained, and the relevance the backward pass starts from."""
from __future__ import annotations

import numpy as np

from .errors import InputError


def resolve_targets(target, scores: np.ndarray) -> np.ndarray:
    """Target class per sample from an int, an array of ints (one per sample) or ``"predicted"``."""
    if scores.ndim != 2:
        raise InputError(f"int targets need outputs of shape (N, classes); this output has shape {scores.shape}")
    n, c = scores.shape
    if isinstance(target, str):
        if target != "predicted":
            raise InputError(f"target {target!r}: use an int, an array of ints or 'predicted'")
        return np.argmax(scores, axis=1)
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise InputError(f"target must be integer class indices, got {t.dtype}")
    if t.ndim == 0:
        t = np.full(n, int(t))
    if t.shape != (n,):
        raise InputError(f"target has shape {t.shape}; give one class per sample ({n})")
    if (t < 0).any() or (t >= c).any():
        raise InputError(f"target {t.min() if (t < 0).any() else t.max()} out of range for {c} classes")
    return t.astype(np.int64)


def initial_relevance(engine, output, targets: np.ndarray, mode: str):
    """``"score"``: the target's score, zero elsewhere (LRP decomposes it); ``"onehot"``: 1 at the target
    (the gradient of the target's score)."""
    onehot = engine.one_hot(targets, output)
    if mode == "onehot":
        return onehot
    if mode == "score":
        return onehot * output
    raise InputError(f"unknown output initialisation {mode!r}")
