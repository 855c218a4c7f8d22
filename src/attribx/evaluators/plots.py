"""Plots of evaluator results (matplotlib, drawn without pyplot so no global backend is touched)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import xarray as xr

from ..errors import AttribxError, InputError
from .spray_plots import plot_spray


def _figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise AttribxError("plots need matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _label(name: str, ds: xr.Dataset, var: str = "aopc") -> str:
    if var in ds:
        return f"{name} (AOPC {float(ds[var].mean()):.3g})"
    return name


def _xaxis(ds: xr.Dataset) -> np.ndarray:
    return ds["fraction"].values if "fraction" in ds.coords else ds["step"].values


def plot_curves(results: Any, title: str | None = None, random: bool = True, figsize=(6.4, 4.4)):
    """Pixel-flipping / region-perturbation curves of several methods on one axes, AOPC in the legend.

    ``results``: ``{label: Dataset}`` (e.g. one result per relevance method), a list of Datasets
    (labelled by their ``method`` attr) or one Dataset. Each curve is the mean over samples against the
    fraction of the image perturbed; the random-order curve of the first result that has one is drawn
    dashed (``random=False`` leaves it out). Returns a ``matplotlib.figure.Figure``; save it with
    ``fig.savefig("curves.png")``.
    """
    results = _labelled(results)
    if not results:
        raise InputError("plot_curves: no results to plot")
    fig = _figure(figsize)
    ax = fig.add_subplot(1, 1, 1)
    quantity = None
    random_from = None
    for name, ds in results.items():
        if not isinstance(ds, xr.Dataset) or "curve" not in ds:
            raise InputError(f"plot_curves: {name!r} is not a perturbation result (no 'curve' variable)")
        ax.plot(_xaxis(ds), ds["curve"].mean("sample").values, label=_label(name, ds))
        quantity = quantity or ds["curve"].attrs.get("quantity")
        if random and random_from is None and "curve_random" in ds:
            random_from = ds
    if random_from is not None:
        ax.plot(_xaxis(random_from), random_from["curve_random"].mean("sample").values, "--", color="gray",
                label=_label("random order", random_from, "aopc_random"))
    first = next(iter(results.values()))
    ax.set_xlabel("fraction of the image perturbed" if "fraction" in first.coords else "step")
    output = first.attrs.get("output", "output")
    ax.set_ylabel(f"{output} (mean over samples)" if quantity in (None, "output")
                  else f"{output} drop f_0 - f_k (mean over samples)")
    ev = first.attrs.get("evaluator", "perturbation")
    conv = first.attrs.get("convention", "")
    order = first.attrs.get("order", "")
    ax.set_title(title or f"{ev.replace('_', ' ')} ({conv}, {order}, {first.sizes['sample']} samples)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _labelled(results: Any) -> dict:
    """``{label: Dataset}`` from a mapping, a list of Datasets (labelled by their relevance method) or one."""
    if isinstance(results, xr.Dataset):
        results = [results]
    if isinstance(results, Mapping):
        return dict(results)
    items = list(results)
    labels = [str(ds.attrs.get("method") or ds.attrs.get("relevance_method") or f"result {i}")
              for i, ds in enumerate(items)]
    return dict(zip(labels, items))


def plot_accuracy(results: Any, title: str | None = None, random: bool = True, figsize=(6.4, 4.4)):
    """Word-deletion accuracy curves of several methods on one axes: accuracy against words deleted.

    ``results``: ``{label: Dataset}`` (one word-deletion result per relevance method), a list of
    Datasets (labelled by their relevance method) or one Dataset. The random-order curve of the first
    result that has one is drawn dashed (``random=False`` leaves it out). Returns a
    ``matplotlib.figure.Figure``.
    """
    results = _labelled(results)
    if not results:
        raise InputError("plot_accuracy: no results to plot")
    fig = _figure(figsize)
    ax = fig.add_subplot(1, 1, 1)
    random_from = None
    for name, ds in results.items():
        if not isinstance(ds, xr.Dataset) or "accuracy" not in ds or "step" not in ds["accuracy"].dims:
            raise InputError(f"plot_accuracy: {name!r} is not a word-deletion result (no 'accuracy' over 'step')")
        ax.plot(ds["step"].values, ds["accuracy"].values, marker="o", markersize=3, label=name)
        if random and random_from is None and "accuracy_random" in ds:
            random_from = ds
    if random_from is not None:
        runs = int(random_from.attrs.get("random_runs", 1))
        ax.plot(random_from["step"].values, random_from["accuracy_random"].values, "--", color="gray",
                label=f"random order ({runs} run{'s' if runs != 1 else ''})")
    first = next(iter(results.values()))
    ax.set_xlabel("words deleted")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    mode = first.attrs.get("mode", "")
    order = first.attrs.get("order", "")
    n = first.sizes.get("sample", 0)
    ax.set_title(title or f"word deletion ({mode} sentences, {order}, {n} sentences)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


#: How ``attribx evaluate --plot`` draws a result, by its ``evaluator`` attr: ``f(dataset) -> Figure``.
#: Evaluators add their own entry here (or a plugin does, for its evaluators).
PLOTTERS = {
    "pixel_flipping": lambda ds: plot_curves(ds),
    "region_perturbation": lambda ds: plot_curves(ds),
    "spray": lambda ds: plot_spray(ds),
    "word_deletion": lambda ds: plot_accuracy(ds),
}


def plot_result(ds: xr.Dataset):
    """The standard figure of one evaluator result (see :data:`PLOTTERS`)."""
    name = ds.attrs.get("evaluator")
    if name not in PLOTTERS:
        raise InputError(f"no plot for results of evaluator {name!r}; plots exist for {', '.join(sorted(PLOTTERS))}")
    return PLOTTERS[name](ds)
