"""
SpRAy: finding groups of explanations
=====================================

Spectral relevance analysis (Lapuschkin et al., Nature Communications 2019) clusters many heatmaps
to find the distinct strategies a model uses, for instance a "Clever Hans" that looks at a watermark.
Here the heatmaps are synthetic with a known answer: three groups of 60, each with its relevance in
another place (left bar, right bar, a corner blob), plus noise. SpRAy's eigengap should suggest three
clusters, and the clusters should be the groups.
"""
import numpy as np
import xarray as xr

import attribx
from attribx.evaluators.spray import plot_spray

rng = np.random.default_rng(0)
n, size = 60, 32
yy, xx = np.mgrid[:size, :size]
patterns = [
    (xx < 8).astype(float),                                     # a bar on the left
    (xx >= 24).astype(float),                                   # a bar on the right
    np.exp(-((yy - 5) ** 2 + (xx - 5) ** 2) / 18.0) * 3.0,     # a blob in the top-left corner
]
maps = np.concatenate([p[None] * rng.uniform(0.5, 1.5, (n, 1, 1)) + rng.normal(0, 0.3, (n, size, size))
                       for p in patterns])
group = np.repeat(np.arange(3), n)
relevance = xr.DataArray(maps[:, None].astype(np.float32), dims=("sample", "channel", "height", "width"),
                         coords={"sample": np.arange(len(maps))}, name="relevance")

result = attribx.evaluate("spray", relevance=relevance, n_neighbors=10, size=(16, 16), embedding="spectral")
print("clusters suggested by the eigengap:", result.attrs["n_clusters"])
print(result)

# %%
# How the clusters match the planted groups: a contingency table (rows: groups, columns: clusters).
found = result["cluster"].values
table = np.array([[np.sum((group == g) & (found == c)) for c in range(found.max() + 1)] for g in range(3)])
print(table)

# %%
# The eigenvalue spectrum (the gap after the third), the 2-D embedding coloured by cluster, and each
# cluster's mean heatmap (its prototype).
fig = plot_spray(result)
