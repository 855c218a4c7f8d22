"""Helpers for tests of rules and methods (ours and plugin authors'): conservation, relative error."""
from __future__ import annotations

import numpy as np

from .api import explain


def relative_error(ours, reference) -> float:
    """``max |ours − reference| / max |reference|`` (the anchors' comparison measure)."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / (scale if scale > 0 else 1.0))


def assert_conserves(model, x, method, rtol: float = 1e-6, target="predicted", **params):
    """Assert that the input relevance of every sample sums to the relevance the pass started from.

    Holds for LRP-0, z+ and α-β without bias, flat and w² without bias (float64 inputs recommended).
    Returns the conservation Dataset for further checks.
    """
    ds = explain(model, x, method, target=target, conservation=True, **params)
    total = ds["conservation"].sel(node=ds["conservation"].node.values[0]).values
    score = ds["score"].values
    np.testing.assert_allclose(total, score, rtol=rtol, atol=rtol * float(np.abs(score).max()),
                               err_msg=f"method {method!r} does not conserve relevance")
    return ds
