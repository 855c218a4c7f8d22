"""Text heatmaps: every token's background coloured by its relevance, as HTML or as a PNG picture.

Colours are matplotlib's diverging map ``bwr``: red positive, blue negative, white zero, symmetric
around zero. Each sentence is normalised by its own largest ``|relevance|``, because a text heatmap shows
where the evidence sits within one sentence; pass ``scale`` to put sentences on one common scale.
Padding positions (a boolean coordinate ``padding``) are drawn grey, uncoloured and left out of the
normalisation, but still shown: relevance the model gives to padding is part of the explanation.

Relevance comes as labeled xarray data with dims ``("sample", "token", ...)`` (further dims, such as
an embedding axis, are summed), token strings in a coordinate ``token_text`` (or ``tokens``), and the
explained ``target``, ``prediction``, ``label`` and ``score`` per sample where known.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr

from .errors import AttribxError, InputError
from .progress import progress
from .safe_writes import temp_file_beside, write_target

TOKEN_DIM = "token"
SAMPLE_DIM = "sample"
TEXT_COORDS = ("token_text", "tokens", "token")
PADDING_COORD = "padding"
CAPTION_COORDS = ("target", "prediction", "label")
PADDING_GREY = "#9a9a9a"
#: Agg cannot draw a picture taller than 2**16 pixels
MAX_PNG_PIXELS = 65000


def relevance_colors(values: Any, scale: float) -> np.ndarray:
    """RGB in [0, 1] for relevance values, matplotlib's ``bwr`` map over [-scale, scale].

    ``bwr`` runs linearly from blue through white to red, so it is written out here: the HTML needs no
    matplotlib (an optional dependency), and the tests check it against matplotlib's own map.
    """
    v = np.clip(np.asarray(values, dtype=float) / scale, -1.0, 1.0)
    rgb = np.ones(v.shape + (3,))
    rgb[..., 0] -= np.maximum(-v, 0.0)
    rgb[..., 1] -= np.abs(v)
    rgb[..., 2] -= np.maximum(v, 0.0)
    return rgb


def _hex(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb)


def _ink(rgb: np.ndarray) -> str:
    """Black text on light backgrounds, white on dark ones (deep blue and red), so words stay legible."""
    return "#000000" if float(np.dot(rgb, (0.2126, 0.7152, 0.0722))) > 0.45 else "#ffffff"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


@dataclass
class Sentence:
    """One sentence to draw: its tokens, their relevance, which are padding, and a caption."""

    tokens: list
    relevance: Any
    padding: Any = None
    label: str | None = None
    score: float | None = None

    def __post_init__(self):
        self.tokens = [str(t) for t in self.tokens]
        self.relevance = np.asarray(self.relevance, dtype=float).reshape(-1)
        n = len(self.tokens)
        if len(self.relevance) != n:
            raise InputError(f"{n} tokens but {len(self.relevance)} relevance values")
        self.padding = (np.zeros(n, bool) if self.padding is None
                        else np.asarray(self.padding, dtype=bool).reshape(-1))
        if len(self.padding) != n:
            raise InputError(f"{n} tokens but {len(self.padding)} padding flags")
        if not np.all(np.isfinite(self.relevance[~self.padding])):
            raise InputError(f"relevance of {self.label or 'a sentence'} holds NaN or infinite values")

    def scale(self, scale: float | None = None) -> float:
        """The ``|relevance|`` drawn at full colour: ``scale`` if given, else this sentence's largest."""
        if scale is not None:
            if not (np.isfinite(scale) and scale > 0):
                raise InputError(f"scale must be a positive number, got {scale!r}")
            return float(scale)
        words = np.abs(self.relevance[~self.padding])
        peak = float(words.max()) if words.size else 0.0
        return peak if peak > 0 else 1.0

    def caption(self, scale: float | None = None) -> str:
        parts = [self.label] if self.label else []
        if self.score is not None:
            parts.append(f"score {_fmt(self.score)}")
        parts.append(f"ΣR {_fmt(float(np.nansum(self.relevance)))}")
        parts.append(f"colour scale ±{_fmt(self.scale(scale))}")
        return " · ".join(parts)

    def colors(self, scale: float | None = None) -> np.ndarray:
        return relevance_colors(np.nan_to_num(self.relevance), self.scale(scale))


# --------------------------------------------------------------------------------------------------
# labeled relevance -> sentences
# --------------------------------------------------------------------------------------------------

def _pick_variable(relevance, variable: str | None) -> xr.DataArray:
    """The DataArray to draw; from a Dataset the one named, else ``relevance``, else the only per-token one."""
    if isinstance(relevance, xr.DataArray):
        if variable is not None and variable != relevance.name:
            raise InputError(f"no variable {variable!r}: the relevance is one array named {relevance.name!r}")
        return relevance
    if not isinstance(relevance, xr.Dataset):
        raise InputError(f"expected relevance as an xarray DataArray or Dataset, got {type(relevance).__name__}")
    names = list(relevance.data_vars)
    if variable is None:
        per_token = [k for k in names if TOKEN_DIM in relevance[k].dims]
        variable = "relevance" if "relevance" in per_token else (per_token[0] if len(per_token) == 1 else None)
        if variable is None:
            raise InputError(f"the relevance holds several variables ({', '.join(map(str, names))}); "
                             f"choose one (variable= / --variable)")
    if variable not in relevance.data_vars:
        raise InputError(f"no variable {variable!r}; the relevance holds {', '.join(map(str, names))}")
    da = relevance[variable]
    score = relevance.get("score")
    if score is not None and score.dims == (SAMPLE_DIM,) and "score" not in da.coords:
        da = da.assign_coords(score=score)
    return da


def _select(da: xr.DataArray, samples: Sequence | None) -> xr.DataArray:
    """Samples by their ids (the ``sample`` coordinate, as captions show them), else all."""
    if samples is None:
        return da
    samples = list(samples)
    if SAMPLE_DIM not in da.coords:
        bad = [s for s in samples if not 0 <= int(s) < da.sizes[SAMPLE_DIM]]
        if bad:
            raise InputError(f"samples {bad} not there: {da.sizes[SAMPLE_DIM]} samples")
        return da.isel({SAMPLE_DIM: samples})
    ids = da[SAMPLE_DIM].values
    known = set(ids.tolist())
    missing = [s for s in samples if s not in known]
    if missing:
        raise InputError(f"samples {missing} not there: the relevance holds sample ids {ids.min()} to {ids.max()}")
    return da.sel({SAMPLE_DIM: samples})


def _token_texts(da: xr.DataArray) -> np.ndarray | None:
    for name in TEXT_COORDS:
        if name in da.coords and da.coords[name].dtype.kind in "USO":
            return da.coords[name].broadcast_like(da).transpose(SAMPLE_DIM, TOKEN_DIM).values
    return None


def _class(value: Any, class_names: Sequence[str] | None) -> str:
    if class_names is not None and np.issubdtype(np.asarray(value).dtype, np.integer) \
            and 0 <= int(value) < len(class_names):
        return f"{int(value)} ({class_names[int(value)]})"
    return str(value)


def sentences(relevance, samples: Sequence | None = None, variable: str | None = None,
              class_names: Sequence[str] | None = None) -> list[Sentence]:
    """The sentences in labeled relevance (dims ``sample``, ``token``; further dims are summed).

    ``samples`` are sample ids; ``variable`` picks a Dataset's variable; ``class_names`` turn the class
    indices of ``target``, ``prediction`` and ``label`` into words in the captions.
    """
    da = _pick_variable(relevance, variable)
    if TOKEN_DIM not in da.dims:
        raise InputError(f"relevance {da.name!r} has dims {da.dims} and no {TOKEN_DIM!r} axis; "
                         f"text heatmaps need relevance per token")
    if SAMPLE_DIM not in da.dims:
        da = da.expand_dims(SAMPLE_DIM)
    da = _select(da, samples)
    extra = [d for d in da.dims if d not in (SAMPLE_DIM, TOKEN_DIM)]
    da = da.sum(extra, skipna=False).transpose(SAMPLE_DIM, TOKEN_DIM)      # NaN stays NaN: an error below
    values = np.asarray(da.values, dtype=float)
    texts = _token_texts(da)
    padding = (da.coords[PADDING_COORD].broadcast_like(da).transpose(SAMPLE_DIM, TOKEN_DIM).values
               if PADDING_COORD in da.coords else None)
    ids = da[SAMPLE_DIM].values if SAMPLE_DIM in da.coords else np.arange(len(values))
    per_sample = {c: da.coords[c].values for c in CAPTION_COORDS + ("score",)
                  if c in da.coords and da.coords[c].dims == (SAMPLE_DIM,)}
    out = []
    for i, row in enumerate(values):
        tokens = [str(t) or f"#{j}" for j, t in enumerate(texts[i] if texts is not None else [""] * len(row))]
        label = " · ".join([f"sample {ids[i]}"] + [f"{c} {_class(per_sample[c][i], class_names)}"
                                                   for c in CAPTION_COORDS if c in per_sample])
        score = float(per_sample["score"][i]) if "score" in per_sample else None
        out.append(Sentence(tokens, row, None if padding is None else padding[i], label, score))
    return out


def _title(relevance, variable: str | None) -> str:
    attrs = relevance.attrs
    what = [str(attrs[k]) for k in ("method", "model_name") if k in attrs]
    if variable:
        what.insert(0, variable)
    return "attribx text heatmaps" + (f": {' · '.join(what)}" if what else "")


def _as_sentences(relevance, samples, variable, class_names) -> tuple[list[Sentence], str]:
    """Sentences and a title from labeled relevance, or a list of Sentence objects / (tokens, relevance) pairs."""
    if isinstance(relevance, (xr.DataArray, xr.Dataset)):
        return sentences(relevance, samples, variable, class_names), _title(relevance, variable)
    items = [s if isinstance(s, Sentence) else Sentence(*s) for s in relevance]
    if samples is not None:
        items = [items[i] for i in samples]
    return items, "attribx text heatmaps"


def _progress(items: list, desc: str):
    """A progress bar only for long runs (over 100 sentences); a short one is quick anyway."""
    return progress(items, len(items), desc, None if len(items) > 100 else False)


def _write_atomically(path, write: Callable[[str], None]) -> str:
    """Write through a temporary file beside ``path`` and rename it over ``path``, so a failed write leaves
    no half-written file and the earlier one intact. The new file's mode is what the umask gives (0o644
    under umask 022), or the replaced file's mode. Returns ``path``."""
    path = os.fspath(path)
    target = write_target(path)   # a symbolic link: its target is replaced, the link stays; no FIFO/device
    tmp = temp_file_beside(target)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

def _sentence_html(s: Sentence, scale: float | None) -> str:
    spans = []
    for j, (token, r, pad, rgb) in enumerate(zip(s.tokens, s.relevance, s.padding, s.colors(scale))):
        text, tip = html.escape(token), html.escape(f"#{j}: R = {_fmt(r)}" + (" (padding)" if pad else ""))
        if pad:
            spans.append(f'<span class="attribx-token attribx-padding" style="color:{PADDING_GREY}" '
                         f'title="{tip}">{text}</span>')
        else:
            spans.append(f'<span class="attribx-token" style="background-color:{_hex(rgb)};color:{_ink(rgb)};'
                         f'padding:0.1em 0.2em;border-radius:0.2em" title="{tip}">{text}</span>')
    return (f'<div class="attribx-sentence" style="margin:0.9em 0">\n'
            f'<div class="attribx-caption" style="color:#555;font-size:0.85em">{html.escape(s.caption(scale))}</div>\n'
            f'<div class="attribx-tokens" style="line-height:2">{" ".join(spans)}</div>\n</div>')


def text_heatmap_html(tokens: Sequence[str], relevance: Any, *, label: str | None = None,
                      score: float | None = None, scale: float | None = None, padding: Any = None) -> str:
    """One sentence as an HTML fragment with inline styles (so it shows as is in a notebook or page)."""
    return _sentence_html(Sentence(tokens, relevance, padding, label, score), scale)


def _legend_html(scale: float | None) -> str:
    low, high = (f"−{_fmt(scale)}", f"+{_fmt(scale)}") if scale else ("−max |R|", "+max |R|")
    stops = ", ".join(_hex(c) for c in relevance_colors([-1.0, 0.0, 1.0], 1.0))
    note = "one scale for all sentences" if scale else "normalised per sentence"
    return (f'<div class="attribx-legend" style="font-size:0.85em;color:#333">\n'
            f'<div style="display:flex;justify-content:space-between;width:16em">'
            f'<span>{low}</span><span>0</span><span>{high}</span></div>\n'
            f'<div style="width:16em;height:0.9em;border:1px solid #999;'
            f'background:linear-gradient(to right, {stops})"></div>\n'
            f'<div>relevance: red positive, blue negative ({note}); grey words are padding</div>\n</div>')


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
</head>
<body style="font-family:sans-serif;max-width:60em;margin:1.5em auto;padding:0 1em">
<h1 style="font-size:1.2em">{title}</h1>
{legend}
{body}
</body>
</html>
"""


def render_html(relevance, path=None, *, samples: Sequence | None = None, variable: str | None = None,
                scale: float | None = None, class_names: Sequence[str] | None = None,
                title: str | None = None) -> str:
    """A standalone HTML page, one block per sentence, with a colour legend; written to ``path`` if given.

    ``relevance``: labeled relevance (see :func:`sentences` for ``samples``, ``variable`` and
    ``class_names``), or a list of :class:`Sentence` objects or ``(tokens, relevance)`` pairs (then
    ``samples`` are positions in the list).
    """
    items, default_title = _as_sentences(relevance, samples, variable, class_names)
    body = "\n".join(_sentence_html(s, scale) for s in _progress(items, "render html"))
    page = _PAGE.format(title=html.escape(title or default_title), legend=_legend_html(scale), body=body)
    if path is not None:
        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(page)
        _write_atomically(path, write)
    return page


# --------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------

def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise AttribxError("PNG text heatmaps need matplotlib: pip install 'attribx[demo]' "
                           "(or render HTML)") from None
    return Figure, FigureCanvasAgg


def render_png(relevance, path, *, samples: Sequence | None = None, variable: str | None = None,
               scale: float | None = None, class_names: Sequence[str] | None = None,
               title: str | None = None, width: float = 10.0, fontsize: float = 11.0, dpi: int = 100) -> None:
    """A PNG picture of the sentences (``width`` inches wide, long sentences wrapped), with a colour bar.

    Arguments as for :func:`render_html`. Drawn with matplotlib's Agg canvas, never an interactive
    backend, so it works on a machine without a display.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.font_manager import FontProperties

    items, default_title = _as_sentences(relevance, samples, variable, class_names)
    fig = Figure(figsize=(width, 1.0), dpi=dpi)
    renderer = FigureCanvasAgg(fig).get_renderer()
    prop = FontProperties(size=fontsize)
    px = dpi / 72.0 * fontsize                       # the font size in pixels
    pad, line, margin, full = 0.2 * px, 2.0 * px, 0.25 * dpi, width * dpi
    space = 0.35 * px

    def text_width(s: str) -> float:
        return renderer.get_text_width_height_descent(s, prop, ismath=False)[0]

    # lay out in pixels from the top: (x, y, text, style), then size the figure to fit
    y = margin + 4.2 * line                          # title and colour bar above
    placed = []
    for s in _progress(items, "render png"):
        placed.append((margin, y, s.caption(scale), "caption"))
        y += line
        x = margin
        for token, pad_flag, rgb in zip(s.tokens, s.padding, s.colors(scale)):
            w = text_width(token) + 2 * pad
            if x + w > full - margin and x > margin:
                x, y = margin, y + line
            placed.append((x + pad, y, token, None if pad_flag else rgb))
            x += w + space
        y += 1.6 * line
    height = y + margin
    if height > MAX_PNG_PIXELS:
        raise InputError(f"{len(items)} sentences make a picture {int(height)} pixels tall, more than a PNG "
                         f"can hold; choose fewer (samples= / --samples) or render HTML")
    fig.set_size_inches(width, height / dpi)

    def at(x, y):
        return x / full, 1.0 - y / height

    fig.text(*at(margin, margin), title or default_title, fontsize=fontsize * 1.2, va="top", parse_math=False)
    lim = scale if scale else 1.0
    left = margin + text_width("−max |R|") / 2          # room for the colour bar's first tick label
    cax = fig.add_axes([left / full, 1.0 - (margin + 2.3 * line) / height, 0.3, 0.45 * line / height])
    bar = fig.colorbar(ScalarMappable(Normalize(-lim, lim), cmap="bwr"), cax=cax, orientation="horizontal")
    bar.set_ticks([-lim, 0.0, lim])
    if not scale:
        bar.set_ticklabels(["−max |R|", "0", "+max |R|"])
    bar.ax.tick_params(labelsize=fontsize * 0.8)
    for x, y, text, style in placed:
        kw: dict = {"fontsize": fontsize, "va": "top", "parse_math": False}
        if isinstance(style, str):
            kw.update(color="#555555", fontsize=fontsize * 0.8)
        elif style is None:
            kw.update(color=PADDING_GREY)
        else:
            kw.update(color=_ink(style), bbox={"boxstyle": f"square,pad={pad / px:.3f}", "fc": _hex(style),
                                                "ec": "none"})
        fig.text(*at(x, y), text, **kw)
    _write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, facecolor="white"))
