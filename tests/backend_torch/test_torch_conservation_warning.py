"""DenseNet-121 (batch norms after concatenations cannot be folded): LRP-epsilon's relevance explodes and
says so; the composites stay near the score (issue 17 point 7; the numbers are in docs/rules.md)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import attribx
from attribx.errors import ConservationWarning

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def densenet():
    """densenet121(weights=None) with batch-norm statistics of random images (the untrained statistics are
    mean 0, variance 1: nothing to fold), in eval mode."""
    torch.manual_seed(0)
    m = torchvision.models.densenet121(weights=None)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None            # a cumulative average over the calibration batches
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(8, 3, 64, 64))
    m.eval()
    return m, torch.randn(2, 3, 64, 64).numpy()


def test_densenet_epsilon_warns(densenet):
    m, x = densenet
    with pytest.warns(ConservationWarning, match=r"grows at node 'features\.denseblock"):
        r = attribx.explain(m, x, "lrp.epsilon")
    with torch.no_grad():
        score = m(torch.from_numpy(x)).numpy()[np.arange(2), r.target.values]
    assert np.all(np.abs(r.sum(("channel", "height", "width")).values) > 1e3 * np.abs(score))


@pytest.mark.parametrize("method", ["lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box"])
def test_densenet_composites_stay_near_the_score(densenet, method):
    m, x = densenet
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConservationWarning)
        r = attribx.explain(m, x, method, **({"low": -3.0, "high": 3.0} if "box" in method else {}))
    with torch.no_grad():
        score = m(torch.from_numpy(x)).numpy()[np.arange(2), r.target.values]
    ratio = r.sum(("channel", "height", "width")).values / score
    assert np.all((ratio > 0.05) & (ratio < 5)), ratio
