"""Output initialisation: which output is explained, and the relevance the backward pass starts from.

Targets: an int, an array of ints (one per sample), ``"predicted"``, or ``("contrast", c, c2)`` to
explain the difference z_c − z_c2. Initialisations (seed 001, "different starting relevance"):

* ``score``: the target's score z_c, zero elsewhere (LRP decomposes the logit);
* ``onehot``: 1 at the target (the gradient of the target's score);
* ``softmax``: the target's probability p_c;
* ``log_odds``: η_c = log(p_c / (1 − p_c)), the evidence for c against all other classes;
* ``contrast``: the pairwise contrasts z_c − z_c'' weighted by the softmin over c'' ≠ c,
  R_cc'' = z_cc'' · exp(−z_cc'') / Σ_c' exp(−z_cc'), split onto the logits as LRP-0 through the
  difference layer does (logit c takes z_c/z_cc''·R_cc'', logit c'' takes −z_c''/z_cc''·R_cc''), so
  that LRP-0 through the last linear layer equals the seed's fused layer with weights w_c − w_c'';
* an array of the output's shape: used as it is.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError

INITS = ("score", "onehot", "softmax", "log_odds", "contrast")


def target_kind(target) -> str:
    """How the explained class was chosen, as relevance provenance records it (``target_kind``): ``"predicted"``,
    ``"class"`` (given class ids, one or one per sample) or ``"contrast"``. Runs of different kinds fill the
    ``target`` coord alike, so appending one to the other's file is refused by this (attribx.storage)."""
    if isinstance(target, tuple) and len(target) == 3 and target[0] == "contrast":
        return "contrast"
    if isinstance(target, str):
        return target
    return "class"


def resolve_targets(target, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(target class per sample, contrast class per sample or None) from the user's ``target``."""
    if scores.ndim != 2:
        raise InputError(f"class targets need outputs of shape (N, classes); this output has shape {scores.shape}; "
                         f"for a language model's (sample, token, vocabulary) logits pass position= (the token position whose "
                         f"prediction is explained, -1 the last); else pass output_init=<array of the output's shape>")
    n, c = scores.shape
    if isinstance(target, tuple) and len(target) == 3 and target[0] == "contrast":
        t, _ = resolve_targets(target[1], scores)
        against, _ = resolve_targets(target[2], scores)
        if (t == against).any():
            raise InputError("a contrast needs two different classes")
        return t, against
    if isinstance(target, str):
        if target != "predicted":
            raise InputError(f"target {target!r}: use an int, an array of ints, 'predicted' or ('contrast', c, c2)")
        return np.argmax(scores, axis=1), None
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise InputError(f"target must be integer class indices, got {t.dtype}")
    if t.ndim == 0:
        t = np.full(n, int(t))
    if t.shape != (n,):
        raise InputError(f"target has shape {t.shape}; give one class per sample ({n})")
    if (t < 0).any() or (t >= c).any():
        raise InputError(f"target {t.min() if (t < 0).any() else t.max()} out of range for {c} classes")
    return t.astype(np.int64), None


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def initial_relevance(scores: np.ndarray, targets: np.ndarray, mode, against: np.ndarray | None = None):
    """The starting relevance (numpy, the scores' shape and dtype) for one of :data:`INITS` or an array."""
    if not isinstance(mode, str):
        r = np.asarray(mode)
        if r.shape != scores.shape:
            raise InputError(f"output_init array has shape {r.shape}; the explained output has shape {scores.shape}")
        return r.astype(scores.dtype)
    n = len(scores)
    rows = np.arange(n)
    out = np.zeros_like(scores)
    z = scores.astype(np.float64)
    if mode == "onehot":
        out[rows, targets] = 1
        if against is not None:
            out[rows, against] = -1
        return out
    if mode == "score":
        out[rows, targets] = z[rows, targets]
        if against is not None:
            out[rows, against] = -z[rows, against]
        return out
    if against is not None:
        raise InputError(f"a ('contrast', c, c2) target works with output_init 'score' or 'onehot', not {mode!r}")
    if mode == "softmax":
        out[rows, targets] = _softmax(z)[rows, targets]
        return out
    if mode == "log_odds":
        # log p/(1-p) from the logits, stably: -logsumexp_{c'' != c}(z_c'' - z_c)
        if z.shape[1] < 2:
            raise InputError("the log-odds initialisation needs at least two classes")
        d = z - z[rows, targets][:, None]
        d[rows, targets] = -np.inf
        m = d.max(axis=1)
        out[rows, targets] = -(m + np.log(np.exp(d - m[:, None]).sum(axis=1)))
        return out
    if mode == "contrast":
        if z.shape[1] < 2:
            raise InputError("the contrast initialisation needs at least two classes")
        zc = z[rows, targets][:, None]
        pair = zc - z                                   # z_cc'' for every c''
        others = np.ones_like(z, dtype=bool)
        others[rows, targets] = False
        w = np.where(others, np.exp(-(pair - np.where(others, pair, np.inf).min(axis=1, keepdims=True))), 0.0)
        w /= w.sum(axis=1, keepdims=True)               # softmin over c'' != c
        r_pair = np.where(others, pair * w, 0.0)        # R_cc''
        safe = np.where(others & (pair != 0), pair, 1.0)
        share = np.where(others & (pair != 0), r_pair / safe, 0.0)
        res = -z * share                                # logit c'' takes -z_c'' R_cc'' / z_cc''
        res[rows, targets] = (zc[:, 0] * share.sum(axis=1))
        return res.astype(scores.dtype)
    raise InputError(f"unknown output_init {mode!r}; use one of {', '.join(INITS)} or an array")
