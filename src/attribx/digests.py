"""Content digests of parameter arrays, computed once per array and re-checked cheaply.

A graph's fingerprint (:meth:`attribx.graph.Graph.fingerprint`) hashes every parameter. Every ``explain``
call makes a new graph (the graph passes, the cut to one position), but the arrays are the same ones: the
weights of GPT-2 (500 MB) would be hashed again each time, a fifth of a gradient pass. So each array's
SHA-256 is kept with a *probe* (:func:`probe`, integer arithmetic on the raw bytes, about 1/5 of the time
of hashing them) that changes whenever any value changes, also when values are swapped.
Arrays can change in place (a torch model's weights are shared, not copied, and the graph follows in-place
updates), so the probe is taken again on every use and a changed array is hashed again.
"""
from __future__ import annotations

import hashlib
import weakref

import numpy as np

_WIDTH = 512
_WEIGHTS = np.random.default_rng(20261207).integers(1, 2 ** 62, _WIDTH, dtype=np.uint64) | np.uint64(1)
_SMALL = 1 << 16          # arrays of fewer bytes are hashed every time: cheaper than keeping them
#: id(array) -> (weak reference, probe, digest). No lock: single dict operations are atomic, and a lock taken in
#: the weak reference's callback could deadlock when garbage collection frees an array while it is held.
_cache: dict[int, tuple] = {}


def probe(a: np.ndarray) -> tuple | None:
    """A summary of ``a``'s bytes as they lie in memory (C or Fortran order) in one read: their 64-bit words times odd weights, summed
    modulo 2⁶⁴ per row of 512 words, then the rows summed and xor-ed, and the bytes past the last row.
    Changing any value changes it; so does swapping values. None for small arrays."""
    if a.nbytes < _SMALL:
        return None
    if not a.flags.c_contiguous:        # read in memory order: a transposed weight is probed as it lies
        if not a.flags.f_contiguous:
            return None
        a = a.T
    raw = a.reshape(-1).view(np.uint8)
    whole = raw.size // (8 * _WIDTH) * (8 * _WIDTH)
    rows = raw[:whole].view(np.uint64).reshape(-1, _WIDTH) @ _WEIGHTS      # wraps around: exact modulo 2⁶⁴
    return int(rows.sum(dtype=np.uint64)), int(np.bitwise_xor.reduce(rows)), raw[whole:].tobytes()


def digest(a: np.ndarray) -> bytes:
    """The SHA-256 of ``a``'s bytes (C order), from the cache when ``a``'s probe is unchanged."""
    check = probe(a)
    key = id(a)
    hit = _cache.get(key)
    if check is not None and hit is not None and hit[0]() is a and hit[1] == check:
        return hit[2]
    value = hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).digest()
    if check is not None:
        try:
            ref = weakref.ref(a, lambda _, key=key: _forget(key))
        except TypeError:           # pragma: no cover - an array type without weak references
            return value
        _cache[key] = (ref, check, value)
    return value


def _forget(key: int) -> None:
    _cache.pop(key, None)
