"""Synthetic relevance with a planted cluster structure, shared by the SpRAy tests."""
from __future__ import annotations

import numpy as np
import xarray as xr

REGIONS = ((slice(4, 14), slice(4, 14)), (slice(4, 14), slice(26, 36)), (slice(26, 36), slice(14, 24)))


def planted(n_per: int = 60, hw: int = 40, channels: int = 3, noise: float = 0.3, seed: int = 0):
    """(relevance (sample, channel, height, width), group of each sample): three groups of heatmaps, each
    hot in its own 10x10 square (a random strength per heatmap), Gaussian noise everywhere; shuffled."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for g, (ry, rx) in enumerate(REGIONS):
        for _ in range(n_per):
            h = rng.normal(0.0, noise, (channels, hw, hw))
            h[:, ry, rx] += rng.uniform(0.5, 1.5)
            x.append(h)
            y.append(g)
    x, y = np.array(x), np.array(y)
    order = rng.permutation(len(y))
    rel = xr.DataArray(x[order], dims=("sample", "channel", "height", "width"), name="relevance",
                       coords={"sample": np.arange(len(y)) + 100, "label": ("sample", y[order])},
                       attrs={"method": "synthetic"})
    return rel, y[order]
