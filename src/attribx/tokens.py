"""Token-level relevance: one score per token, labelled with the token strings and the padding.

Text models take token ids (an embedding lookup: the relevance at the ids is already one number per
token) or embedded sequences (N, T, E), whose relevance keeps an embedding axis that a text heatmap
sums away. :class:`TokenView` is what ``explain(tokens=, pad_id=, padding=, per_token=)`` asks for,
checked against the input before the (expensive) relevance pass and applied to its numpy result,
so it works the same for every method and engine.

The token axis is the input's dim named ``token`` (layouts ``"NT"``, ``"NTE"``; the torch and Keras
translators label id inputs so); an input without one is read as (sample, token, ...), its second axis
holding tokens, which is allowed for (N, T) inputs and with ``per_token=True``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InputError, MethodError

TOKEN = "token"
TEXT_COORD = "token_text"
PADDING_COORD = "padding"


@dataclass
class TokenView:
    """Where the tokens are and what to do to the relevance: sum per token, label, zero the padding."""

    axis: str                          # the input dim that holds the tokens
    per_token: bool = False
    text: np.ndarray | None = None     # str (N, T)
    padding: np.ndarray | None = None  # bool (N, T)
    attrs: dict = field(default_factory=dict)

    def apply(self, values: np.ndarray, dims: tuple) -> tuple[np.ndarray, tuple, dict]:
        """(relevance, dims, coords): summed over all but sample and token when ``per_token``, the
        token axis named ``token``, padding set to exactly 0, the token coords to add."""
        dims = tuple(dims)
        if self.axis not in dims:
            raise MethodError(f"the method's relevance has dims {dims}: it summed over the token axis "
                              f"{self.axis!r}, so there is no relevance per token")
        if self.per_token:
            rest = tuple(i for i, d in enumerate(dims) if d not in ("sample", self.axis))
            values = values.sum(axis=rest)
            dims = tuple(d for d in dims if d in ("sample", self.axis))
        dims = tuple(TOKEN if d == self.axis else d for d in dims)
        coords = {}
        if self.padding is not None:
            shape = [1] * len(dims)
            shape[0], shape[dims.index(TOKEN)] = self.padding.shape
            values = np.where(self.padding.reshape(shape), values.dtype.type(0), values)
            coords[PADDING_COORD] = (("sample", TOKEN), self.padding)
        if self.text is not None:
            coords[TEXT_COORD] = (("sample", TOKEN), self.text)
        return values, dims, coords


def token_view(shape: tuple, dims: tuple, takes_indices: bool, tokens: Any = None, pad_id: Any = None,
               padding: Any = None, per_token: bool = False, ids: Any = None) -> TokenView | None:
    """Check the token options against an input of ``shape`` and ``dims``; None when none is asked.

    ``ids`` (the input as numpy) is needed only for ``pad_id``.
    """
    if not isinstance(per_token, (bool, np.bool_)):
        raise InputError(f"per_token must be True or False, got {per_token!r}")
    if tokens is None and pad_id is None and padding is None and not per_token:
        return None
    dims = tuple(dims)
    if len(dims) < 2:
        raise InputError(f"token options need an input with a token axis; this one has dims {dims}")
    axis = TOKEN if TOKEN in dims else dims[1]
    if axis != TOKEN and len(dims) > 2 and not per_token:
        raise InputError(f"the input has dims {dims} and none is 'token': pass per_token=True to read it as "
                         f"(sample, token, embedding) and sum the rest, or label its layout (e.g. 'NTE')")
    n, t = shape[0], shape[dims.index(axis)]
    view = TokenView(axis, bool(per_token))
    if per_token:
        view.attrs["per_token"] = True
    if tokens is not None:
        view.text = _token_text(tokens, n, t)
    if pad_id is not None and padding is not None:
        raise InputError("give either pad_id (the id that pads index inputs) or padding (a boolean mask), not both")
    if pad_id is not None:
        view.padding = _pad_mask(pad_id, takes_indices, ids, dims.index(axis), n, t)
        view.attrs["pad_id"] = int(pad_id)
    elif padding is not None:
        view.padding = _mask(padding, n, t)
    return view


def _token_text(tokens: Any, n: int, t: int) -> np.ndarray:
    """Token strings as a (N, T) str array; every row must have one string per token."""
    if isinstance(tokens, np.ndarray) and tokens.dtype.kind == "U":
        if tokens.shape != (n, t):
            raise InputError(f"tokens has shape {tokens.shape}, the input has (N, T) = {(n, t)}")
        return tokens
    if isinstance(tokens, str) or not hasattr(tokens, "__len__"):
        raise InputError(f"tokens must be (N, T) strings (a list of lists or an array), got {type(tokens).__name__}")
    if len(tokens) != n:
        raise InputError(f"tokens has {len(tokens)} rows for {n} samples")
    for i, row in enumerate(tokens):
        if isinstance(row, str) or not hasattr(row, "__len__") or len(row) != t:
            got = f"{len(row)} entries" if hasattr(row, "__len__") and not isinstance(row, str) else repr(row)
            raise InputError(f"tokens row {i} has {got}; the input has {t} tokens per sample (pad the rows)")
        bad = [w for w in row if not isinstance(w, str)]
        if bad:
            raise InputError(f"tokens row {i}: tokens must be str, got {bad[0]!r}")
    return np.array([list(row) for row in tokens], dtype=str).reshape(n, t)


def _pad_mask(pad_id: Any, takes_indices: bool, ids: Any, axis: int, n: int, t: int) -> np.ndarray:
    """Where the ids equal ``pad_id`` (at every position of any other axis)."""
    if not takes_indices:
        raise InputError("pad_id marks padding in token-id inputs; this model takes real values: "
                         "pass padding= (a boolean (N, T) mask) instead")
    if isinstance(pad_id, (bool, np.bool_)) or not isinstance(pad_id, (int, np.integer)):
        raise InputError(f"pad_id must be an int token id, got {pad_id!r}")
    hit = np.moveaxis(np.asarray(ids) == pad_id, axis, 1)
    return hit.reshape(n, t, -1).all(axis=2)


def _mask(padding: Any, n: int, t: int) -> np.ndarray:
    mask = np.asarray(padding)
    if mask.dtype != bool:
        raise InputError(f"padding must be a boolean (N, T) mask (True at padding), got dtype {mask.dtype}; "
                         f"for token ids use pad_id=")
    if mask.shape != (n, t):
        raise InputError(f"padding has shape {mask.shape}, the input has (N, T) = {(n, t)}")
    return mask
