"""Heatmap images of saved relevance: RGB arrays, grids as matplotlib figures, PNG files.

Relevance comes as labeled xarray data (what :func:`attribx.explain` returns and
:func:`attribx.open_relevance` reads back): a DataArray, or a Dataset with one variable per method.
Images need the dims ``height`` and ``width`` besides ``sample``; channel dims (``channel`` by default,
wherever it sits: NCHW and NHWC draw the same) are reduced to one value per pixel first.

Colours: a diverging map centred at zero, ``bwr`` by default (red positive, blue negative, white
zero); ``coldnhot`` (cyan-blue-black-red-yellow, as in zennit and iNNvestigate) is built in and any
matplotlib colour map name works. Normalisation maps relevance to [-1, 1] before colouring:

``symmetric``  each heatmap by its own largest |R| (where the evidence sits within one sample);
``global``     one scale per variable (method) over all drawn samples (compares samples' strength);
``none``       no normalisation: |R| = ``vmax`` (default 1) at full colour, larger values clipped.

``bwr`` and ``coldnhot`` are computed with numpy alone; figures and other colour maps need matplotlib.
Token relevance (a ``token`` dim) is drawn by :mod:`attribx.textviz`; :func:`render` picks the right one.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import xarray as xr

from .errors import AttribxError, InputError
from .input_files import read_inputs
from .textviz import (MAX_PNG_PIXELS, SAMPLE_DIM, TOKEN_DIM, _select, _write_atomically, relevance_colors, render_html,
                      render_png, sentences)

NORMS = ("symmetric", "global", "none")
REDUCTIONS = ("sum", "mean", "abs", "norm")
SPATIAL_DIMS = ("height", "width")
INPUT_VARS = ("input", "inputs", "x")
#: zennit's / iNNvestigate's "coldnhot": cyan, blue, black (zero), red, yellow
COLDNHOT = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 0, 0], [1, 1, 0]], dtype=float)
CAPTION_COORDS = (("label", "y"), ("prediction", "ŷ"), ("target", "t"))
MAX_SAMPLES = 16
#: the narrowest a picture in a grid is drawn by default, in pixels (small inputs: whole blocks per pixel)
MIN_PICTURE_PX = 150
#: the heatmap's opacity over the input where |R| reaches half its scale (overlay)
OVERLAY_ALPHA = 0.9


def _mpl_cmap(name: str):
    try:
        import matplotlib       # optional dependency (the demo's extra)
    except ImportError:
        raise AttribxError(f"colour map {name!r} needs matplotlib: pip install 'attribx[demo]' "
                           f"(or use cmap='bwr' or 'coldnhot')") from None
    if name == "coldnhot":
        from matplotlib.colors import LinearSegmentedColormap
        return LinearSegmentedColormap.from_list("coldnhot", COLDNHOT)
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise InputError(f"unknown colour map {name!r}; use 'bwr', 'coldnhot' or a matplotlib colour map "
                         f"name (e.g. 'seismic', 'RdBu_r', 'coolwarm')") from None


def check_cmap(cmap: Any) -> None:
    """Raise a clear :class:`InputError` for a colour map that cannot be drawn."""
    if isinstance(cmap, str) and cmap in ("bwr", "coldnhot"):
        return
    if isinstance(cmap, str):
        _mpl_cmap(cmap)
    elif not callable(cmap):
        raise InputError(f"cmap must be a colour map name or a matplotlib Colormap, got {type(cmap).__name__}")


def colorize(values: Any, cmap: Any = "bwr") -> np.ndarray:
    """RGB in [0, 1] for values in [-1, 1] (clipped): -1 the colour map's start, 0 its centre, 1 its end."""
    v = np.clip(np.asarray(values, dtype=float), -1.0, 1.0)
    if isinstance(cmap, str) and cmap == "bwr":
        return relevance_colors(v, 1.0)
    if isinstance(cmap, str) and cmap == "coldnhot":
        knots = np.linspace(-1.0, 1.0, len(COLDNHOT))
        return np.stack([np.interp(v, knots, COLDNHOT[:, c]) for c in range(3)], axis=-1)
    if isinstance(cmap, str):
        cmap = _mpl_cmap(cmap)
    elif not callable(cmap):
        check_cmap(cmap)
    return np.asarray(cmap((v + 1.0) / 2.0))[..., :3].astype(float)


def _resolve_norm(norm: str | None, vmax: float | None) -> str:
    if vmax is not None:
        if not (isinstance(vmax, (int, float, np.number)) and np.isfinite(vmax) and vmax > 0):
            raise InputError(f"vmax (--scale) must be a positive number, got {vmax!r}")
        if norm not in (None, "none"):
            raise InputError(f"a fixed vmax (--scale) means no normalisation; it cannot go with norm={norm!r}")
        return "none"
    norm = "symmetric" if norm is None else norm
    if norm not in NORMS:
        raise InputError(f"unknown normalisation {norm!r}; choose one of {', '.join(NORMS)}")
    return norm


def normalise(values: Any, norm: str | None = "symmetric", vmax: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``values`` (sample first) divided by their scale, and the scale per sample.

    ``symmetric``: each sample by its largest |value|; ``global``: all by the largest |value| of all;
    ``none``: by ``vmax`` (default 1). A scale of zero (an all-zero heatmap) counts as 1.
    """
    norm = _resolve_norm(norm, vmax)
    v = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(v)):
        raise InputError("relevance holds NaN or infinite values; cannot draw it")
    n = v.shape[0]
    if norm == "symmetric":
        scale = np.abs(v.reshape(n, -1)).max(axis=1) if v.size else np.ones(n)
    elif norm == "global":
        scale = np.full(n, np.abs(v).max() if v.size else 1.0)
    else:
        scale = np.full(n, 1.0 if vmax is None else float(vmax))
    scale = np.where(scale > 0, scale, 1.0)
    return v / scale.reshape((n,) + (1,) * (v.ndim - 1)), scale


# --------------------------------------------------------------------------------------------------
# labeled relevance -> (sample, height, width)
# --------------------------------------------------------------------------------------------------

def _is_image(da: xr.DataArray, spatial: Sequence[str]) -> bool:
    return all(d in da.dims for d in spatial)


def image_variables(relevance, variables: str | Sequence[str] | None = None,
                    spatial: Sequence[str] = SPATIAL_DIMS) -> list[tuple[str, xr.DataArray]]:
    """``(name, DataArray)`` for each variable to draw: the named ones, else every image variable.

    A DataArray is drawn under its ``method`` attribute (or its name); from a Dataset, every data
    variable with the spatial dims except stored inputs (``input``, ``inputs``, ``x``).
    """
    if isinstance(variables, str):
        variables = [variables]
    if isinstance(relevance, xr.DataArray):
        name = str(relevance.attrs.get("method") or relevance.name or "relevance")
        if variables is not None and list(variables) not in ([relevance.name], [name]):
            raise InputError(f"no variable {variables}: the relevance is one array named {relevance.name!r}")
        return [(name, relevance)]
    if not isinstance(relevance, xr.Dataset):
        raise InputError(f"expected relevance as an xarray DataArray or Dataset, got {type(relevance).__name__}")
    names = [str(k) for k in relevance.data_vars]
    if variables is None:
        variables = [k for k in names if k not in INPUT_VARS and _is_image(relevance[k], spatial)]
        if not variables:
            raise InputError(f"no variable of the relevance has the dims {tuple(spatial)} of an image "
                             f"(it holds {', '.join(f'{k} {relevance[k].dims}' for k in names)})")
    missing = [v for v in variables if v not in relevance.data_vars]
    if missing:
        raise InputError(f"no variable {', '.join(map(repr, missing))}; the relevance holds {', '.join(names)}")
    return [(v, relevance[v]) for v in variables]


def reduce_channels(da: xr.DataArray, channel: str | Sequence[str] | None = "channel", reduce: str = "sum",
                    spatial: Sequence[str] = SPATIAL_DIMS) -> xr.DataArray:
    """``da`` as ``(sample, height, width)``: the ``channel`` dims reduced, wherever they sit (NCHW, NHWC).

    ``reduce``: ``sum`` (relevance is additive: a pixel's relevance is its channels' sum, the default),
    ``mean``, ``abs`` (sum of |R|) or ``norm`` (Euclidean norm over channels; both not signed).
    """
    if reduce not in REDUCTIONS:
        raise InputError(f"unknown channel reduction {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    spatial = tuple(spatial)
    if not _is_image(da, spatial):
        raise InputError(f"relevance {da.name!r} has dims {da.dims}, not the image dims {spatial}; "
                         f"rename its dims (.rename(...)) or name them with spatial=")
    if SAMPLE_DIM not in da.dims:
        da = da.expand_dims(SAMPLE_DIM)
    channels = [channel] if isinstance(channel, str) else list(channel or ())
    channels = [c for c in channels if c in da.dims]
    left = [d for d in da.dims if d not in (SAMPLE_DIM, *spatial, *channels)]
    if left:
        raise InputError(f"relevance {da.name!r} has dims {da.dims}: {left} are neither sample, image "
                         f"{spatial} nor channel dims {channels}; name the channel dims (channel= / --channel)")
    if channels:
        if reduce == "sum":
            da = da.sum(channels, skipna=False)
        elif reduce == "mean":
            da = da.mean(channels, skipna=False)
        elif reduce == "abs":
            da = abs(da).sum(channels, skipna=False)
        else:
            da = (da ** 2).sum(channels, skipna=False) ** 0.5
    return da.transpose(SAMPLE_DIM, *spatial)


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------

def _load_array(path) -> np.ndarray:
    return np.asarray(read_inputs(os.fspath(path))[0])


def stored_inputs(relevance) -> Any:
    """The inputs kept with the relevance: a Dataset's ``input`` variable, else the ``inputs_file`` that
    ``attribx explain`` notes in the attributes, where that file still exists; else None."""
    if isinstance(relevance, xr.Dataset):
        for k in INPUT_VARS:
            if k in relevance.data_vars:
                return relevance[k]
    path = relevance.attrs.get("inputs_file")
    if isinstance(path, str) and os.path.exists(path):
        return path
    return None


def align_inputs(inputs, da: xr.DataArray, spatial: Sequence[str] = SPATIAL_DIMS) -> xr.DataArray:
    """``inputs`` (a path to .npy/.npz, an array or a DataArray) labeled like the relevance ``da``.

    An array takes the relevance's dims (or ``sample`` and the spatial dims alone, for grey images
    without a channel axis). Samples are matched by position when there are as many inputs as relevance
    samples, else by sample id (row ``id`` of the inputs for the sample with that id).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = _load_array(inputs)
    if SAMPLE_DIM not in da.dims:
        da = da.expand_dims(SAMPLE_DIM)
    if isinstance(inputs, xr.DataArray):
        x = inputs if SAMPLE_DIM in inputs.dims else inputs.expand_dims(SAMPLE_DIM)
        if SAMPLE_DIM in da.coords and SAMPLE_DIM in x.coords:
            return x.sel({SAMPLE_DIM: da[SAMPLE_DIM].values})
        values, dims = np.asarray(x.transpose(SAMPLE_DIM, ...).values), (SAMPLE_DIM,) + tuple(
            d for d in x.dims if d != SAMPLE_DIM)
    else:
        values = np.asarray(inputs)
        dims = da.dims if values.ndim == da.ndim else (SAMPLE_DIM, *spatial) if values.ndim == 3 else None
        if dims is None:
            raise InputError(f"inputs of shape {values.shape} do not fit relevance of dims {da.dims} "
                             f"{tuple(da.shape)}")
    want = tuple(da.sizes[d] for d in dims[1:] if d in da.dims)
    if values.shape[1:] != want:
        raise InputError(f"inputs of shape {values.shape} do not fit relevance of dims {da.dims} "
                         f"{tuple(da.shape)} (per sample {want})")
    n = da.sizes[SAMPLE_DIM]
    ids = da[SAMPLE_DIM].values if SAMPLE_DIM in da.coords else np.arange(n)
    if len(values) != n:
        if not (np.issubdtype(ids.dtype, np.integer) and ids.size and ids.min() >= 0 and ids.max() < len(values)):
            raise InputError(f"{len(values)} inputs for {n} relevance samples (ids {ids.min()} to {ids.max()}): "
                             f"give the inputs that were explained")
        values = values[ids]
    return xr.DataArray(values, dims=dims, coords={SAMPLE_DIM: ids} if SAMPLE_DIM in da.coords else None)


def input_images(x: xr.DataArray, channel: str | Sequence[str] | None = "channel",
                 spatial: Sequence[str] = SPATIAL_DIMS, input_cmap: str = "gray") -> np.ndarray:
    """Inputs as RGB pictures in [0, 1], ``(sample, height, width, 3)``, each stretched to its own range.

    Three channels are drawn as colour (RGB); one channel, none or any other number as grey (their
    mean), through ``input_cmap`` (``gray``: high values white; ``gray_r``: high values dark).
    """
    channels = [channel] if isinstance(channel, str) else list(channel or ())
    channels = [c for c in channels if c in x.dims]
    colour = len(channels) == 1 and x.sizes[channels[0]] == 3
    if colour:
        v = np.asarray(x.transpose(SAMPLE_DIM, *spatial, channels[0]).values, dtype=float)
    else:
        v = np.asarray((x.mean(channels) if channels else x).transpose(SAMPLE_DIM, *spatial).values, dtype=float)
    v = np.nan_to_num(v)
    flat = v.reshape(len(v), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    shape = (len(v),) + (1,) * (v.ndim - 1)
    v = (v - lo.reshape(shape)) / span.reshape(shape)
    if colour:
        return v
    if input_cmap == "gray":
        return np.repeat(v[..., None], 3, axis=-1)
    if input_cmap == "gray_r":
        return np.repeat(1.0 - v[..., None], 3, axis=-1)
    return np.asarray(_mpl_cmap(input_cmap)(v))[..., :3].astype(float)


def blend(heat: np.ndarray, normalised: np.ndarray, base: np.ndarray, alpha: float = OVERLAY_ALPHA,
          cmap: Any = None) -> np.ndarray:
    """The heatmap laid over the input ``base`` (RGB in [0, 1]) so that it stays visible.

    The input is drawn grey with reduced contrast (0.25 + 0.5 × its luminance), so neither its black
    nor its white hides a colour. Each pixel's opacity is ``alpha × min(1, 2|v|)^0.7`` for the
    normalised relevance ``v``: 0 at zero relevance (only the grey input shows there), ``alpha`` from half
    the scale on, and already a third of ``alpha`` at a tenth of it, so the sparse evidence of an LRP
    heatmap stays visible. Its colour is the colour map's outer half, ``cmap(sign(v) × (0.5 + 0.5|v|))``:
    weak relevance is drawn not in the map's pale (``bwr``) or dark (``coldnhot``) middle but in a clear
    colour that fades out.
    With ``cmap=None`` the given ``heat`` colours are used as they are.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must lie in [0, 1], got {alpha!r}")
    v = np.clip(np.asarray(normalised, dtype=float), -1.0, 1.0)
    grey = np.asarray(base, dtype=float) @ np.array([0.299, 0.587, 0.114])
    under = np.repeat((0.25 + 0.5 * grey)[..., None], 3, axis=-1)
    colour = heat if cmap is None else colorize(np.sign(v) * (0.5 + 0.5 * np.abs(v)), cmap)
    a = (alpha * np.minimum(1.0, 2.0 * np.abs(v)) ** 0.7)[..., None]
    return (1.0 - a) * under + a * colour


# --------------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------------

def _prepared(relevance, variable, samples, channel, reduce, spatial):
    """[(name, reduced (sample, H, W) DataArray, the full-dims DataArray of the selected samples)]."""
    out = []
    for name, da in image_variables(relevance, variable, spatial):
        if TOKEN_DIM in da.dims:
            raise InputError(f"relevance {name!r} is per token: draw it with attribx.textviz (or render())")
        if SAMPLE_DIM not in da.dims:
            da = da.expand_dims(SAMPLE_DIM)
        if samples is None and da.sizes[SAMPLE_DIM] > MAX_SAMPLES:
            samples = list(da[SAMPLE_DIM].values[:MAX_SAMPLES]) if SAMPLE_DIM in da.coords else list(range(MAX_SAMPLES))
        picked = _select(da, samples)
        out.append((name, reduce_channels(picked, channel, reduce, spatial), da, samples))
    return out


def heatmap(relevance, variable: str | None = None, *, samples: Sequence | None = None, cmap: Any = "bwr",
            norm: str | None = None, vmax: float | None = None, channel: str | Sequence[str] | None = "channel",
            reduce: str = "sum", inputs: Any = None, overlay: bool = False, alpha: float = OVERLAY_ALPHA,
            input_cmap: str = "gray", spatial: Sequence[str] = SPATIAL_DIMS) -> np.ndarray:
    """Heatmaps as an RGB array ``(sample, height, width, 3)`` of floats in [0, 1].

    ``variable`` picks one of a Dataset's variables (needed when it holds several); ``samples`` are
    sample ids (default: all). ``norm``: ``symmetric`` (default), ``global`` or ``none`` (with
    ``vmax``, the |R| at full colour). ``overlay=True`` lays the heatmap over the inputs drawn in grey
    (``inputs``: a path, an array or DataArray; default: those stored with the relevance; ``alpha``: the
    opacity from half the scale on, see :func:`blend`). For a picture file,
    ``(heatmap(...) * 255).astype('uint8')`` or :func:`heatmap_grid`.
    """
    check_cmap(cmap)
    norm = _resolve_norm(norm, vmax)
    prepared = _prepared(relevance, variable, samples, channel, reduce, spatial)
    if len(prepared) != 1:
        raise InputError(f"the relevance holds several image variables ({', '.join(p[0] for p in prepared)}); "
                         f"choose one (variable=), or draw them all with heatmap_grid")
    _, red, full, picked = prepared[0]
    v, _ = normalise(red.values, norm, vmax)
    rgb = colorize(v, cmap)
    if overlay:
        x = inputs if inputs is not None else stored_inputs(relevance)
        if x is None:
            raise InputError("overlay needs the inputs: pass inputs= (--inputs X.npy); the relevance stores none")
        xa = align_inputs(x, full, spatial)
        xa = _select(xa, picked) if picked is not None else xa
        rgb = blend(rgb, v, input_images(xa, channel, spatial, input_cmap), alpha, cmap)
    return rgb


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------

def _figure(**kw):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise AttribxError("heatmap figures need matplotlib: pip install 'attribx[demo]' "
                           "(attribx.render.heatmap returns arrays without it)") from None
    return Figure(**kw)


def _caption(red: xr.DataArray, i: int) -> str:
    parts = [f"#{red[SAMPLE_DIM].values[i]}" if SAMPLE_DIM in red.coords else f"#{i}"]
    for coord, short in CAPTION_COORDS:
        if coord in red.coords and red.coords[coord].dims == (SAMPLE_DIM,):
            parts.append(f"{short}={red.coords[coord].values[i]}")
    return " ".join(parts)


def picture_size(width: int, size: int | None = None) -> int:
    """Pixels per picture (its width) in a grid: ``size`` when given, else the input's own width, times
    the smallest whole factor that makes it at least ``MIN_PICTURE_PX`` wide (an 8-pixel digit is drawn
    19 screen pixels per input pixel, a 224-pixel image one to one)."""
    if size is not None:
        if not (isinstance(size, (int, np.integer)) and not isinstance(size, bool) and 1 <= size <= MAX_PNG_PIXELS):
            raise InputError(f"size (--size) must be a whole number of pixels from 1 to {MAX_PNG_PIXELS}, got {size!r}")
        return int(size)
    return int(width) * max(1, -(-MIN_PICTURE_PX // int(width)))


def _check_dpi(dpi) -> float:
    if not (isinstance(dpi, (int, float, np.number)) and not isinstance(dpi, bool) and np.isfinite(dpi)
            and 10 <= dpi <= 2400):
        raise InputError(f"dpi (--dpi) must be a number from 10 to 2400, got {dpi!r}")
    return float(dpi)


def heatmap_grid(relevance, inputs: Any = None, *, variables: str | Sequence[str] | None = None,
                 samples: Sequence | None = None, rows: str = "methods", overlay: bool = False,
                 cmap: Any = "bwr", norm: str | None = None, vmax: float | None = None,
                 channel: str | Sequence[str] | None = "channel", reduce: str = "sum",
                 alpha: float = OVERLAY_ALPHA, input_cmap: str = "gray", show_inputs: bool | None = None,
                 colorbar: bool = True, title: str | None = None, size: int | None = None, dpi: float = 100,
                 cell: float | None = None, fontsize: float = 10.0, spatial: Sequence[str] = SPATIAL_DIMS):
    """A grid of heatmaps as a matplotlib Figure (not attached to pyplot: ``fig.savefig(path)``).

    ``rows="methods"``: one row per variable (method), one column per sample, the inputs in a first
    row; ``rows="samples"``: one row per sample, the input in the first column, then one column per
    method. ``overlay=True`` draws each heatmap over its input instead of beside it (see :func:`blend`).
    Inputs (a path to .npy/.npz, an array or a DataArray) default to those stored with the relevance;
    without any, only heatmaps are drawn. ``samples`` are sample ids (default: the first 16).
    ``norm="global"`` scales each method over all its drawn samples. Other arguments as for :func:`heatmap`.

    Size: each picture is ``size`` pixels wide (default: the input's width, times the smallest whole
    factor reaching 150 pixels, so that every input pixel gets at least one screen pixel and small inputs
    whole blocks of them), its height in proportion; ``dpi`` is the figure's dots per inch, which sets
    how large the text is beside the pictures (``fontsize`` points for the row and column labels).
    ``cell`` (inches per picture) is the older way to set the size: ``size = cell × dpi``. The layout is
    computed in whole pixels, so ``fig.savefig(path)`` (at the figure's own dpi) places every picture on
    the pixel grid.
    """
    if rows not in ("methods", "samples"):
        raise InputError(f"rows must be 'methods' or 'samples', got {rows!r}")
    check_cmap(cmap)
    norm = _resolve_norm(norm, vmax)
    dpi = _check_dpi(dpi)
    if cell is not None:
        if size is not None:
            raise InputError("give the picture size once: size= (pixels) or cell= (inches), not both")
        if not (isinstance(cell, (int, float, np.number)) and np.isfinite(cell) and cell > 0):
            raise InputError(f"cell must be a positive number of inches, got {cell!r}")
        size = max(1, int(round(cell * dpi)))
    prepared = _prepared(relevance, variables, samples, channel, reduce, spatial)
    x = inputs if inputs is not None else stored_inputs(relevance)
    if overlay and x is None:
        raise InputError("overlay needs the inputs: pass inputs= (--inputs X.npy); the relevance stores none")
    names = [p[0] for p in prepared]
    red0, full0, picked = prepared[0][1], prepared[0][2], prepared[0][3]
    n = red0.sizes[SAMPLE_DIM]
    for name, red, _, _ in prepared[1:]:
        if red.sizes[SAMPLE_DIM] != n:
            raise InputError(f"variables {names[0]!r} and {name!r} hold different numbers of samples")
    h, w = red0.sizes[spatial[0]], red0.sizes[spatial[1]]
    pic_w = picture_size(w, size)
    pic_h = max(1, int(round(pic_w * h / w)))
    base = None
    if x is not None:
        xa = align_inputs(x, full0, spatial)
        xa = _select(xa, picked) if picked is not None else xa
        base = input_images(xa, channel, spatial, input_cmap)
    cells = []                                  # per variable: RGB pictures
    for _, red, _, _ in prepared:
        v, _ = normalise(red.values, norm, vmax)
        rgb = colorize(v, cmap)
        if overlay:
            rgb = blend(rgb, v, base, alpha, cmap)
        cells.append(rgb)
    beside = base is not None and not overlay if show_inputs is None else bool(show_inputs) and base is not None
    labels = (["input"] if beside else []) + names
    pictures = ([base] if beside else []) + cells
    n_rows, n_cols = (len(labels), n) if rows == "methods" else (n, len(labels))
    row_labels = labels if rows == "methods" else [_caption(red0, i) for i in range(n)]
    col_labels = [_caption(red0, i) for i in range(n)] if rows == "methods" else labels
    caption_size = fontsize * 0.85

    fig = _figure(figsize=(4.0, 3.0), dpi=dpi)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.font_manager import FontProperties
    renderer = FigureCanvasAgg(fig).get_renderer()

    def text_px(text: str, points: float) -> float:
        return renderer.get_text_width_height_descent(text, FontProperties(size=points), ismath=False)[0]

    def wrap(text: str, points: float, room: float) -> str:
        """``text`` broken at spaces into lines of at most ``room`` pixels (a word longer stays whole)."""
        lines: list[str] = []
        for word in text.split(" "):
            if lines and text_px(f"{lines[-1]} {word}", points) <= room:
                lines[-1] = f"{lines[-1]} {word}"
            else:
                lines.append(word)
        return "\n".join(lines)

    pt = dpi / 72.0                             # pixels per point
    # the layout in whole pixels: labels left of the rows (horizontal), captions above the columns
    gap_w, gap_h = max(2, round(0.06 * dpi)), max(2, round(0.06 * dpi))
    # column captions wider than a picture are wrapped onto several lines, so neighbours never overlap
    col_labels = [wrap(t, caption_size, pic_w + gap_w - 2) for t in col_labels]
    caption_lines = max(t.count("\n") + 1 for t in col_labels)
    left = int(np.ceil(max(text_px(t, fontsize) for t in row_labels) + 10 * pt))
    right = max(4, round(0.1 * dpi))
    top = int(np.ceil((0.6 + 1.25 * caption_lines) * caption_size * pt
                      + (2.2 * fontsize * pt if title else 0.0))) + gap_h
    bottom = int(np.ceil((0.75 if colorbar else 0.1) * dpi))
    width = left + n_cols * pic_w + (n_cols - 1) * gap_w + right
    if title:
        width = max(width, int(np.ceil(text_px(title, fontsize * 1.1) + 2 * right)))
    height = top + n_rows * pic_h + (n_rows - 1) * gap_h + bottom
    if max(width, height) > MAX_PNG_PIXELS:
        raise InputError(f"the grid would be {width}×{height} pixels, more than a PNG can hold; draw fewer "
                         f"samples (--samples) or smaller pictures (--size)")
    fig.set_size_inches(width / dpi, height / dpi)
    x0 = left + (width - left - right - (n_cols * pic_w + (n_cols - 1) * gap_w)) // 2
    for k, pics in enumerate(pictures):
        for i in range(n):
            r, c = (k, i) if rows == "methods" else (i, k)
            px, py = x0 + c * (pic_w + gap_w), top + r * (pic_h + gap_h)
            ax = fig.add_axes([px / width, 1.0 - (py + pic_h) / height, pic_w / width, pic_h / height])
            ax.imshow(pics[i], interpolation="nearest", aspect="auto")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_linewidth(0.6)
                spine.set_color("0.6")
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=fontsize, rotation=0, ha="right", va="center",
                              labelpad=4)
            if r == 0:
                ax.set_title(col_labels[c], fontsize=caption_size, pad=3)
    if title:
        fig.text(0.5, 1.0 - 0.5 * fontsize * pt / height, title, fontsize=fontsize * 1.1, ha="center", va="top")
    if colorbar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import ListedColormap, Normalize
        t = np.linspace(-1, 1, 256)
        ramp = colorize(t, cmap)
        if overlay:                             # what the overlay draws, over a mid-grey input
            ramp = blend(ramp, t, np.full((256, 3), 0.5), alpha, cmap)
        tick = max(text_px(lab, fontsize * 0.75) for lab in ("−max |R|", "+max |R|"))
        bar_w = max(0.2 * width, min(3.0 * dpi, width - tick - 2 * right))
        cax = fig.add_axes([0.5 - bar_w / width / 2, 0.45 * dpi / height, bar_w / width, 0.12 * dpi / height])
        bar = fig.colorbar(ScalarMappable(Normalize(-1, 1), cmap=ListedColormap(ramp)), cax=cax,
                           orientation="horizontal")
        bar.set_ticks([-1.0, 0.0, 1.0])
        if norm == "none":
            lim = vmax if vmax is not None else 1.0
            bar.set_ticklabels([f"−{lim:.3g}", "0", f"+{lim:.3g}"])
        else:
            bar.set_ticklabels(["−max |R|", "0", "+max |R|"])
            bar.set_label("max |R| " + ("of each heatmap" if norm == "symmetric" else "of each method"),
                          fontsize=fontsize * 0.75)
        bar.ax.tick_params(labelsize=fontsize * 0.75)
    return fig


def render_image_png(relevance, path, *, dpi: float = 100, **kw) -> str:
    """:func:`heatmap_grid` written to a PNG file at the grid's own ``dpi`` (through a temporary file: no
    half-written picture). Returns ``path``."""
    fig = heatmap_grid(relevance, dpi=dpi, **kw)
    return _write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi, facecolor="white"))


def is_token_relevance(relevance, variable: str | None = None) -> bool:
    """Whether the relevance to draw is per token (text heatmaps) rather than per pixel."""
    if isinstance(relevance, xr.DataArray):
        return TOKEN_DIM in relevance.dims
    if variable is not None and variable in relevance.data_vars:
        return TOKEN_DIM in relevance[variable].dims
    return any(TOKEN_DIM in relevance[k].dims for k in relevance.data_vars) and not any(
        _is_image(relevance[k], SPATIAL_DIMS) for k in relevance.data_vars)


def render(relevance, path, *, samples: Sequence | None = None, variable: str | Sequence[str] | None = None,
           inputs: Any = None, overlay: bool = False, cmap: Any = None, norm: str | None = None,
           scale: float | None = None, rows: str | None = None, channel: str | Sequence[str] | None = None,
           reduce: str | None = None, class_names: Sequence[str] | None = None, title: str | None = None,
           size: int | None = None, dpi: float | None = None) -> str:
    """Draw any relevance to ``path``: token relevance as text heatmaps (.html or .png, by
    :mod:`attribx.textviz`), image relevance as a heatmap grid (.png). Returns ``"text"`` or ``"image"``.

    ``size``: pixels per image heatmap (default: the input's resolution, see :func:`heatmap_grid`);
    ``dpi``: dots per inch of a PNG (default 100; for an image grid it sets the text's size beside the
    pictures, whose pixels ``size`` fixes). Options that only one kind understands raise
    :class:`InputError` for the other.
    """
    if dpi is not None:
        dpi = _check_dpi(dpi)
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    single = variable if isinstance(variable, str) or variable is None else (
        variable[0] if len(variable) == 1 else None)
    if isinstance(relevance, (xr.DataArray, xr.Dataset)) and is_token_relevance(relevance, single):
        bad = [opt for opt, value in (("inputs", inputs), ("overlay", overlay), ("rows", rows),
                                      ("channel", channel), ("reduce", reduce)) if value]
        if size is not None:
            bad.append("size")
        if cmap not in (None, "bwr"):
            bad.append("cmap")
        if bad:
            raise InputError(f"{', '.join(bad)}: only for image relevance; this relevance is per token "
                             f"(text heatmaps, always coloured 'bwr')")
        if variable is not None and single is None:
            raise InputError("text heatmaps draw one variable at a time")
        draw = {".html": render_html, ".htm": render_html, ".png": render_png}.get(suffix)
        if draw is None:
            raise InputError(f"{path}: unknown output type {suffix or '(no suffix)'!r}; write .html or .png")
        if dpi is not None and draw is render_html:
            raise InputError("dpi is for PNG pictures; an HTML page has none (write .png, or leave out --dpi)")
        norm = _resolve_norm(norm, scale)
        if norm == "global":
            scale = max(s.scale() for s in sentences(relevance, samples, single, class_names))
        elif norm == "none" and scale is None:
            scale = 1.0
        kw: dict = {"title": title} if title else {}
        if dpi is not None:
            kw["dpi"] = dpi
        draw(relevance, path, samples=samples, variable=single, scale=scale, class_names=class_names, **kw)
        return "text"
    if isinstance(relevance, (xr.DataArray, xr.Dataset)) and not any(
            _is_image(da, SPATIAL_DIMS) for da in ([relevance] if isinstance(relevance, xr.DataArray)
                                                   else relevance.data_vars.values())):
        dims = relevance.dims if isinstance(relevance, xr.DataArray) else tuple(relevance.dims)
        raise InputError(f"relevance of dims {dims} has no 'token' axis (text heatmaps) nor 'height' and "
                         f"'width' (image heatmaps); rename its dims (xarray .rename) to draw it")
    if suffix != ".png":
        raise InputError(f"{path}: image heatmaps are written as .png (got {suffix or 'no suffix'!r})")
    if class_names is not None:
        raise InputError("class names are only for text heatmaps' captions")
    render_image_png(relevance, path, inputs=inputs, variables=variable, samples=samples,
                     rows=rows or "methods", overlay=overlay, cmap=cmap or "bwr", norm=norm, vmax=scale,
                     channel="channel" if channel is None else channel, reduce=reduce or "sum", title=title,
                     size=size, dpi=100 if dpi is None else dpi)
    return "image"
