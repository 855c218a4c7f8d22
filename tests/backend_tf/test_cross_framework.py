"""The same network built in Keras, in PyTorch and by hand gets the same relevance from attribx.

A zoo of small models (an MLP, a VGG-like CNN with batch norm, a residual CNN, a CNN with
concatenation, a 1-D conv net for sequences) is defined once as numpy weights in PyTorch's convention
(tests/matrix/zoo.py, shared with the cross-backend matrix); each model is then built three ways with
those weights:

* in Keras (channels-last, kernels transposed, the dense layer after a flatten permuted to H·W·C order);
* in PyTorch (only where torch is installed: the environment with both frameworks);
* by hand with attribx's GraphBuilder (channel-first): the torch-free reference, so that the Keras
  translation is checked against an independent construction in the TensorFlow-only environment.

Every method and composite must give the same relevance from all of them (relative ≤ 1e-4 in float32,
after putting the layouts side by side), on every engine that is installed.
"""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402

from matrix.zoo import (HAS_TORCH, RANDOM, TOL, ZOO, build_zoo, engines,  # noqa: E402
                        method_params, methods)
from matrix.zoo import to_cf as _cf  # noqa: E402


@pytest.fixture(scope="module")
def built():
    """name -> (zoo entry, keras model, x in Keras layout); built once per module."""
    return build_zoo()


@pytest.mark.parametrize("name", list(ZOO))
def test_the_three_builds_compute_the_same_function(built, name):
    z, km, x = built[name]
    want = np.asarray(km(x))
    got_graph = attribx.forward(z.graph(), _cf(z, x))
    assert relative_error(got_graph, want) <= 1e-5
    got_keras = attribx.forward(km, x)
    assert relative_error(got_keras, want) <= 1e-5
    if HAS_TORCH:
        import torch
        with torch.no_grad():
            got_torch = z.torch()(torch.from_numpy(_cf(z, x))).numpy()
        assert relative_error(got_torch, want) <= 1e-5


def _relevance(model, x, method, engine):
    return np.asarray(attribx.explain(model, x, method, target=[0, 1, 2], engine=engine,
                                      **method_params(method)).values)


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("name", list(ZOO))
def test_keras_relevance_equals_the_hand_built_graph(built, name, engine):
    """Every method and composite: Keras translation against the independent channel-first graph."""
    z, km, x = built[name]
    for method in RANDOM:      # same noise only within one layout: check it runs and is finite
        assert np.all(np.isfinite(_relevance(km, x, method, engine)))
    _assert_same_relevance(z, km, z.graph(), x, name, engine)


@pytest.mark.skipif(not HAS_TORCH, reason="the torch side runs in the environment with both frameworks")
@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("name", list(ZOO))
def test_keras_relevance_equals_torch_relevance(built, name, engine):
    """Every method and composite: a Keras model and a torch model with the same weights."""
    z, km, x = built[name]
    _assert_same_relevance(z, km, z.torch(), x, name, engine)


def _assert_same_relevance(z, keras_model, reference, x, name, engine):
    """Every non-random method: the Keras model's relevance, laid out channel-first, equals the
    channel-first ``reference`` model's on the same input."""
    bad = {}
    for method in methods():
        if method in RANDOM:
            continue
        rk = _relevance(keras_model, x, method, engine)
        rr = _relevance(reference, _cf(z, x), method, engine)
        err = relative_error(_cf(z, rk), rr)
        if not err <= TOL:
            bad[method] = err
    assert not bad, f"{name} on {engine}: relative errors above {TOL}: {bad}"


def test_relevance_comes_back_channels_last(built):
    z, km, x = built["vgg_bn"]
    r = attribx.explain(km, x, "lrp.epsilon_plus_flat", target=0)
    assert r.dims == ("sample", "height", "width", "channel")
    assert r.shape == x.shape
