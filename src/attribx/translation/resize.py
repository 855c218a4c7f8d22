"""Matching a framework's resize with the graph's ``resize``, never approximately.

Frameworks describe resizing by coordinate transformations and rounding rules that differ in the details
(ONNX's ``half_pixel`` with ``round_prefer_floor``, TensorFlow's half-pixel nearest, torch's floor). Each
is a fixed (output, input) matrix per spatial axis; a backend computes its framework's matrices and
:func:`graph_resize_attrs` finds the graph ``resize`` attributes with the very same matrices, or None.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..ops import resize_matrix


def linear_matrix(src: np.ndarray, size_in: int) -> np.ndarray:
    """Linear interpolation at source coordinates ``src`` (one per output), clamped to the input's edges."""
    src = np.clip(src, 0, size_in - 1)
    m = np.zeros((len(src), size_in))
    rows = np.arange(len(src))
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, size_in - 1)
    np.add.at(m, (rows, lo), 1.0 - (src - lo))
    np.add.at(m, (rows, hi), src - lo)
    return m


def nearest_matrix(index: np.ndarray, size_in: int) -> np.ndarray:
    """One source per output at ``index`` (clamped to the input)."""
    m = np.zeros((len(index), size_in))
    m[np.arange(len(index)), np.clip(index, 0, size_in - 1).astype(int)] = 1.0
    return m


def graph_resize_attrs(mode: str, sizes_in: Sequence[int], sizes_out: Sequence[int], want: Sequence[np.ndarray],
                       scales: Sequence[float] | None = None) -> dict | None:
    """The graph ``resize`` attributes (mode ``nearest`` or ``linear``) whose per-axis matrices equal
    ``want``, or None when none does; ``scales`` (input per output size, as the graph's attribute) is
    tried besides the sizes' ratio."""
    for align, sc in [(False, None), (False, None if scales is None else tuple(scales))] + \
            ([(True, None)] if mode == "linear" else []):
        mats = [resize_matrix(i, o, mode, align, s)
                for i, o, s in zip(sizes_in, sizes_out, sc or [None] * len(sizes_in))]
        if all(m.shape == w.shape and np.allclose(m, w, rtol=0, atol=1e-9) for m, w in zip(mats, want)):
            return {"size": tuple(sizes_out), "mode": mode, "align_corners": align, "scales": sc}
    return None
