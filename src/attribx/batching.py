"""Splitting samples into batches: by a given size, or by what one relevance pass costs in memory.

The samples are independent, so batching changes no number beyond floating-point summation order.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .errors import InputError
from .graph import Graph


def batches(n: int, batch_size: int | None) -> list[slice]:
    """Slices of ``n`` samples, ``batch_size`` at a time (one slice for None)."""
    if batch_size is None or batch_size >= n:
        return [slice(0, n)]
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def each(x: Any, fn):
    """``fn`` on the input, or on each input of a tuple (one per signal input): batches slice every input
    along the sample axis."""
    return tuple(fn(a) for a in x) if isinstance(x, tuple) else fn(x)


def memory_budget() -> int:
    """Bytes one explain batch may hold in activations and relevance: a quarter of the physical memory
    available now, at most 4 GiB (1 GiB where the system does not say)."""
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 1 << 30
    return int(max(64 << 20, min(avail // 4, 4 << 30)))


def per_sample_bytes(graph: Graph, x: Any) -> int:
    """What one sample costs a relevance pass, roughly: every node's activation (the forward pass keeps
    them all) and the relevance beside it, in the input's precision (at least float32); ``x`` one input or a
    tuple of them."""
    if isinstance(x, tuple):       # the further inputs and their relevance besides the first's pass
        return per_sample_bytes(graph, x[0]) + sum(2 * max(4, a.dtype.itemsize) * math.prod(a.shape[1:]) for a in x[1:])
    itemsize = max(4, int(getattr(getattr(x, "dtype", None), "itemsize", 4) or 4))
    per_in = math.prod(int(d) for d in x.shape[1:]) if len(x.shape) > 1 else 1
    total = per_in
    for node in graph.nodes:
        shape = node.shape or ()
        dims = shape[1:]
        total += math.prod(dims) if all(isinstance(d, int) for d in dims) else per_in
    return 2 * itemsize * total


def auto_batch_size(graph: Graph, x: Any) -> int | None:
    """A batch size for inputs whose relevance pass would not fit in :func:`memory_budget` at once (None:
    one batch)."""
    n = len(x[0] if isinstance(x, tuple) else x)
    per = per_sample_bytes(graph, x)
    if n <= 1 or per * n <= memory_budget():
        return None
    return max(1, memory_budget() // max(per, 1))


def batch_target(target, sl: slice, n: int):
    """The part of ``target`` (an explain target for ``n`` samples) that belongs to the samples in ``sl``."""
    def part(t):
        if isinstance(t, str):
            return t
        a = np.asarray(t)
        if a.ndim == 1:
            if len(a) != n:
                raise InputError(f"target has {len(a)} entries for {n} samples")
            return a[sl]
        return a
    if isinstance(target, tuple) and len(target) == 3 and target[0] == "contrast":
        return ("contrast", part(target[1]), part(target[2]))
    return part(target)
