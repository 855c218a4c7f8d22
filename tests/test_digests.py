"""Parameter digests (attribx.digests): each array is hashed once while it stays unchanged, so that explaining
a large model again does not hash its weights again; any change to the values, even one ulp or a swap, is seen
by the probe and the array is hashed anew (a graph follows in-place changes of a torch model's weights)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from attribx import digests
from attribx.builder import GraphBuilder


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).digest()


@pytest.mark.parametrize("make", [
    lambda r: r.normal(size=(300, 257)).astype(np.float32),          # rows past the last full block
    lambda r: np.asfortranarray(r.normal(size=(200, 130))),           # a transposed weight: read as it lies
    lambda r: r.normal(size=(100, 300))[:, ::2],                      # neither order: hashed every time
    lambda r: r.normal(size=5),                                       # small: hashed every time
    lambda r: np.zeros((0, 4), np.float32),
    lambda r: r.integers(0, 9, size=(100, 100)),
])
def test_digest_is_the_sha256_of_the_c_order_bytes(make):
    a = make(np.random.default_rng(0))
    assert digests.digest(a) == sha(a)
    assert digests.digest(a) == sha(a)        # from the cache where kept


@pytest.mark.parametrize("change", ["ulp", "swap", "sign"])
def test_a_change_in_place_is_seen(change):
    a = np.random.default_rng(1).normal(size=(256, 300)).astype(np.float32)
    before = digests.digest(a)
    assert digests.digest(a) == before
    if change == "ulp":
        a[100, 7] = np.nextafter(a[100, 7], np.float32(np.inf))
    elif change == "swap":
        a[[3, 200]] = a[[200, 3]]
    else:
        a[0, 0] = -a[0, 0]
    assert digests.digest(a) != before
    assert digests.digest(a) == sha(a)


def test_graph_fingerprint_follows_its_arrays():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(64, 300))
    b = GraphBuilder("m")
    g = b.build(b.linear(b.input("x", (300,)), w, None, name="fc"))
    first = g.fingerprint()
    g2 = b.build("fc")   # another graph object over the same array
    assert g2.fingerprint() == first
    g["fc"].params["weight"][5, 5] += 1e-12
    assert b.build("fc").fingerprint() != first
