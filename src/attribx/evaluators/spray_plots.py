"""SpRAy's plots: the eigenvalue spectrum with its gaps, and the clusters with their prototype heatmaps.

They read only the result Dataset of :func:`attribx.evaluators.spray.spray` (which re-exports them), so
they can draw a result read back from a file. matplotlib is imported when a plot is drawn (optional).
"""
from __future__ import annotations

import math
import os

import numpy as np
import xarray as xr


def _pyplot():
    # matplotlib is optional: imported when a plot is drawn; headless without a display
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo") and not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(n: int):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_spectrum(result: xr.Dataset, ax=None):
    """The eigenvalue spectrum with its gaps; the largest gap (the eigengap's suggestion) is marked.

    Returns the ``matplotlib.figure.Figure`` (the one of ``ax`` when given).
    """
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
    else:
        fig = ax.figure
    lam = np.asarray(result["eigenvalues"].values)
    gaps = np.diff(lam)
    idx = np.arange(1, len(lam) + 1)
    ax.plot(idx, lam, "o", color="C0", ms=4, label="eigenvalue")
    k = int(result.attrs.get("n_clusters", 1))
    ax2 = ax.twinx()
    bar_colors = ["C3" if i + 1 == k else "0.7" for i in range(len(gaps))]
    ax2.bar(idx[:-1] + 0.5, gaps, width=0.6, color=bar_colors, alpha=0.6, label="gap")
    ax2.set_ylabel("gap to the next eigenvalue")
    if 1 <= k < len(lam):
        ax.axvline(k + 0.5, color="C3", ls="--", lw=1)
        ax.annotate(f"largest gap: {k} cluster{'s' if k != 1 else ''}", xy=(k + 0.5, lam[k]),
                    xytext=(6, -14), textcoords="offset points", color="C3", fontsize=8)
    ax.set_xlabel("index (ascending)")
    ax.set_ylabel("eigenvalue of L")
    ax.set_title(f"SpRAy spectrum ({result.attrs.get('eigensolver', 'smallest')})", fontsize=10)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    return fig


def plot_clusters(result: xr.Dataset, fig=None, max_prototypes: int = 20):
    """The 2-D embedding coloured by cluster, and each cluster's prototype heatmap beside it (its
    frame in the cluster's colour). Without an ``embedding`` variable the first two non-trivial
    spectral coordinates are drawn. Returns the ``matplotlib.figure.Figure``."""
    plt = _pyplot()
    ids = np.asarray(result["cluster_label"].values)
    shown = ids[:max_prototypes]
    ncols = int(math.ceil(len(shown) / 4)) if len(shown) > 4 else 1
    nrows = min(4, len(shown))
    if fig is None:
        fig = plt.figure(figsize=(5.0 + 1.6 * ncols, 4.4))
    # room between the prototypes for their titles (without it a title sits on the frame above)
    gs = fig.add_gridspec(max(nrows, 1), 1 + ncols, width_ratios=[3.2 * max(nrows, 1) / 2] + [1] * ncols,
                          hspace=0.5, wspace=0.3)
    ax = fig.add_subplot(gs[:, 0])
    if "embedding" in result:
        xy = np.asarray(result["embedding"].values)
        name = str(result["embedding"].attrs.get("method", "embedding"))
    else:
        emb = np.asarray(result["spectral_embedding"].values)
        xy = emb[:, [1, 2]] if emb.shape[1] >= 3 else emb[:, :2]
        name = "spectral"
    labels = np.asarray(result["cluster"].values)
    colors = _colors(len(ids))
    for c, col in zip(ids, colors):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color="0.6" if c < 0 else col,
                   label=f"{'noise' if c < 0 else c} ({int(sel.sum())})")
    ax.set_title(f"{name} embedding, {len(ids)} cluster(s)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(ids) <= 12:
        ax.legend(fontsize=7, markerscale=2, loc="best")
    proto = result["prototype"]
    for i, c in enumerate(shown):
        pax = fig.add_subplot(gs[i % nrows, 1 + i // nrows])
        img = np.asarray(proto.isel(cluster=i).values)
        if img.ndim == 1:
            img = img[None, :]
        lim = float(np.abs(img).max()) or 1.0
        pax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim, interpolation="nearest",
                   aspect="auto" if img.shape[0] == 1 else "equal")      # a heatmap keeps its shape
        pax.set_xticks([])
        pax.set_yticks([])
        for spine in pax.spines.values():
            spine.set_edgecolor("0.6" if c < 0 else colors[i])
            spine.set_linewidth(2.5)
        pax.set_title(f"{'noise' if c < 0 else f'cluster {c}'}", fontsize=8)
    return fig


def plot_spray(result: xr.Dataset):
    """One figure: the spectrum (left) and the clusters with their prototypes (right)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(13.0, 4.6))
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.7])
    plot_spectrum(result, ax=left.subplots())
    plot_clusters(result, fig=right)
    return fig
