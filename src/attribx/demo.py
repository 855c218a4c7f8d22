"""``attribx demo``: train small models, explain them, evaluate the explanations, write one report.

Nothing is downloaded: the digits ship with scikit-learn, the sentences are generated
(:func:`attribx.datasets.make_sentiment`). With PyTorch and the attribx-torch plugin installed (the
default backend) the demo trains the digits CNN (:mod:`attribx.datasets.digits`), the sentiment
BiLSTM (:mod:`attribx.datasets.text_model`) and a sentiment transformer
(:mod:`attribx.datasets.text_transformer`); without them it trains a scikit-learn MLP on the digits,
writes it into an attribx graph with the public builder (how any framework's model reaches attribx)
and runs it on the numpy engine with methods that suit a network without convolutions
(:data:`NUMPY_IMAGE_METHODS`), and skips the text part.

Every stage writes its files as soon as it finishes (each file atomically), so a failure midway leaves
the finished files intact; the report is written at the end, also after a failure (it then says
where the demo stopped).
"""
from __future__ import annotations

import base64
import datetime
import html
import os
import platform
import re
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr

from . import composite as C
from .api import evaluate, explain
from .datasets.digits import digits_graph, load_digits_images, train_digits_cnn
from .datasets.sentiment import make_sentiment
from .datasets.text_model import embedded, predict, train_sentiment_lstm
from .datasets.text_transformer import embedded_transformer, train_sentiment_transformer
from .errors import AttribxError
from .evaluators import plot_accuracy, plot_curves
from .evaluators import spray as spray_module
from .progress import progress
from .render import heatmap_grid as render_grid
from .storage import save
from .textviz import _legend_html, _write_atomically, render_html, render_png, text_heatmap_html
from .version import __version__

#: The image methods of the digits CNN (torch), in the order of the heatmap grid's rows; "random" is a
#: seeded N(0, 1) baseline.
IMAGE_METHODS = ("lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "lrp.epsilon_alpha2_beta1", "lrp.epsilon",
                 "gradient", "gradient_x_input", "deconvnet", "guided_backprop", "random")
#: The image methods of the MLP (numpy fallback). The registered composites differ from LRP-ε only in
#: their rules for convolutions, which an MLP lacks, and lrp.epsilon_plus_flat's flat first layer splits
#: the relevance equally over all 64 pixels there (one colour per heatmap); so the MLP gets the same
#: recipe written for dense layers (:func:`mlp_composite`) and the single rules z+ and α2β1. Deconvnet and
#: guided backprop are left out: without max pooling their backward pass sees the input only through which
#: ReLUs are on (guided backprop) or not at all (deconvnet), so the digits of a class share a few heatmaps
#: or one; integrated gradients is drawn instead.
NUMPY_IMAGE_METHODS = ("lrp.epsilon_gamma_box_mlp", "lrp.z_plus", "lrp.alpha_beta", "lrp.epsilon",
                       "gradient", "gradient_x_input", "integrated_gradients", "random")
#: The heatmaps SpRAy clusters: the CNN's first composite; for the MLP LRP-z+, whose heatmaps (positive,
#: on the strokes) show a digit in each cluster's prototype.
SPRAY_METHOD = {"torch": "lrp.epsilon_plus_flat", "numpy": "lrp.z_plus"}
#: The text methods (torch only): gradient×input runs on the embedded vectors, one score per token.
TEXT_METHODS = ("lrp.epsilon", "gradient", "gradient_x_input", "random")
#: The methods compared on the sentiment transformer (torch only): AttnLRP, CP-LRP, gradient × input (on the
#: embedded vectors), attention rollout and a seeded random baseline.
TRANSFORMER_METHODS = ("lrp.attn", "lrp.cp", "gradient_x_input", "attention_rollout", "random")
#: Kept for old callers: the methods of the first demo.
DEMO_METHODS = IMAGE_METHODS
#: Pixel flipping on 8×8 digits: one pixel per step, the first half of the pixels (32 steps).
PF_STEPS = 32
WD_STEPS = 5
SEED = 0
#: How to install what the torch demo needs, from a checkout of the attribx repository (the torch
#: plugin is a package of its own there, not an extra of attribx).
TORCH_INSTALL = "python3 -m pip install -e plugins/attribx-torch torch"
TORCH_HINT = f"from the attribx repository: {TORCH_INSTALL}"


def image_methods(backend: str) -> tuple[str, ...]:
    """The image methods the demo runs on ``backend`` ("torch" or "numpy")."""
    return IMAGE_METHODS if backend == "torch" else NUMPY_IMAGE_METHODS


def mlp_composite(low: float = 0.0, high: float = 1.0):
    """lrp.epsilon_gamma_box for dense layers: z-box on the first layer (pixels in [low, high]), LRP-γ
    (γ = 0.25) on the hidden layers, LRP-ε on the output layer; a user composite, as any user writes one."""
    return C.Composite([(C.first("layer"), ("z_box", {"low": low, "high": high})),
                        (C.last("layer"), ("epsilon", {"epsilon": 1e-6})),
                        (C.category("layer"), ("gamma", {"gamma": 0.25}))], name="lrp.epsilon_gamma_box_mlp")


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------

def torch_available() -> bool:
    """True when PyTorch and the attribx-torch plugin import."""
    try:
        import attribx_torch  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def digits_cnn(seed=0):
    """The shared digits CNN trained on three quarters of the digits ([-1, 1] scale); returns
    (model, test images, test labels, accuracy)."""
    import torch        # optional: the torch backend only

    x, y = load_digits_images("signed")
    order = np.random.default_rng(seed).permutation(len(x))
    n_train = int(0.75 * len(x))
    tr, te = order[:n_train], order[n_train:]
    model = train_digits_cnn(x[tr], y[tr], steps=120, seed=seed)
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x[te])).argmax(1).numpy() == y[te]).mean())
    return model, x[te], y[te], acc


def random_relevance(like: xr.DataArray, seed: int = SEED) -> xr.DataArray:
    """A seeded N(0, 1) relevance with the coords of ``like`` (padding, where marked, stays 0)."""
    values = np.random.default_rng(seed).standard_normal(like.shape).astype(np.float32)
    if "padding" in like.coords:
        values = np.where(like.coords["padding"].broadcast_like(like).values, 0.0, values).astype(np.float32)
    r = like.copy(data=values)
    r.attrs = {k: v for k, v in like.attrs.items() if k not in ("method", "parameters")}
    r.attrs.update(method="random", parameters={"seed": seed, "distribution": "standard normal"})
    return r


# --------------------------------------------------------------------------------------------------
# files: written atomically, so an interrupted demo leaves no half-written file
# --------------------------------------------------------------------------------------------------

def _atomic(path: str, write: Callable[[str], None]) -> str:
    """``write(tmp)`` to a temporary file beside ``path``, then renamed over it (the mode the umask gives)."""
    return _write_atomically(path, write)


def save_figure(fig, path: str, dpi: Any = 110) -> str:
    """Save a matplotlib figure to PNG atomically and close it (pyplot figures too); ``dpi="figure"``
    keeps the figure's own."""
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", facecolor="white"))
    import matplotlib.pyplot as plt     # optional: the demo's extra
    plt.close(fig)      # a no-op for a Figure made without pyplot
    return path


def heatmap_grid(images: np.ndarray, relevance: xr.Dataset, path: str, n: int = 8,
                 methods: list[str] | None = None) -> str:
    """Input in the first row, one row per method, ``n`` samples, drawn by :func:`attribx.render.heatmap_grid`:
    diverging colours centred at zero (``bwr``: red positive, blue negative), each heatmap scaled by its
    own largest |relevance|; 13 screen pixels per input pixel."""
    methods = list(methods or relevance.data_vars)
    samples = list(relevance["sample"].values[:min(n, len(images))])
    fig = render_grid(relevance, np.asarray(images), variables=methods, samples=samples, input_cmap="gray_r",
                      size=13 * int(relevance.sizes["width"]), dpi=100, fontsize=11,
                      title="input and relevance per method (red positive, blue negative, symmetric per heatmap)")
    return save_figure(fig, path, dpi="figure")


def _distinguish(fig, under: str, over: str) -> None:
    """Draw the curve of ``over`` dashed with markers on top of the broad, pale curve of ``under``, so that
    two equal curves are both seen (lines labelled by the method's name, with or without " (AOPC …)")."""
    ax = fig.axes[0]
    for line in ax.get_lines():
        label = line.get_label().split(" (", 1)[0]
        if label == under:
            line.set(linewidth=6, alpha=0.35, zorder=1, solid_capstyle="round")
        elif label == over:
            line.set(linestyle="--", linewidth=1.5, marker="o", markersize=3.5, markevery=4, zorder=3)
    ax.legend(fontsize=8)


def _combine(results: dict[str, xr.Dataset]) -> xr.Dataset:
    """Results of one evaluator for several methods as one Dataset along a ``method`` dim."""
    names = list(results)
    ds = xr.concat([results[m] for m in names], dim="method", coords="minimal", compat="override",
                   join="outer", combine_attrs="drop_conflicts")
    ds = ds.assign_coords(method=names)
    for var in ("aopc", "aopc_random", "aopc_relative", "auc"):
        ds.attrs.pop(var, None)
    ds.attrs["methods"] = names
    return ds


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------

_CSS = """body{font-family:sans-serif;max-width:70em;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:0.6em 0}td,th{border:1px solid #ccc;padding:0.25em 0.7em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:0.92em}.error{color:#a00}code{background:#f5f5f5;padding:0 0.2em}"""


def _img(path: str, alt: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


class _Link(str):
    """A file name drawn in a table as a link relative to the report (the files lie beside it)."""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        if isinstance(v, _Link):
            return f'<a href="{html.escape(urllib.parse.quote(v))}">{html.escape(v)}</a>'
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    def td(v):      # numbers right-aligned, text left
        num = (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)) or (
            isinstance(v, str) and not isinstance(v, _Link) and re.fullmatch(r"-?\d+(\.\d+)?", v) is not None)
        return f'<td class="num">{cell(v)}</td>' if num else f"<td>{cell(v)}</td>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(td(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Report:
    """Sections of the report, collected while the demo runs, written as one self-contained HTML file."""

    def __init__(self, out: str, backend: str):
        self.out, self.backend, self.sections, self.files = out, backend, [], []
        self.models: list[list[Any]] = []
        self.started = time.perf_counter()
        self.error: str | None = None

    def add(self, title: str, html_text: str | None, anchor: str) -> None:
        """A section; ``html_text=None`` for the models section, written from :attr:`models` at the end."""
        self.sections.append((title, html_text, anchor))

    def model(self, name: str, data: str, accuracy: float, seconds: float) -> None:
        self.models.append([name, data, accuracy, f"{seconds:.1f}"])

    def file(self, path: str, what: str) -> str:
        self.files.append((os.path.basename(path), what))
        return path

    def models_html(self) -> str:
        n = len(self.models)
        count = {1: "One small model is", 2: "Two small models are", 3: "Three small models are"}.get(
            n, f"{n} small models are")
        seeds = "a fixed seed" if n == 1 else "fixed seeds"
        intro = (f"<p>{count} trained here from {seeds}, in seconds, on the digits that ship with scikit-learn"
                 f"{' and sentences attribx generates' if n > 1 else ''} (nothing is downloaded).")
        if self.backend == "numpy":
            intro += (f" The demo's digits CNN and the sentiment BiLSTM and transformer of the text part need "
                      f"PyTorch and the "
                      f"attribx-torch plugin ({html.escape(TORCH_HINT)}).")
        return intro + "</p>" + _table(["model", "data", "held-out accuracy", "training (s)"], self.models)

    def write(self) -> str:
        seconds = time.perf_counter() - self.started
        toc = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for t, _, a in self.sections)
        parts = [f"<h2 id='{a}'>{html.escape(t)}</h2>\n{self.models_html() if body is None else body}"
                 for t, body, a in self.sections]
        files = _table(["file", "what it holds"], [[_Link(f), w] for f, w in self.files])
        error = (f'<p class="error"><b>The demo stopped early:</b> {html.escape(self.error)}. The sections '
                 f'below are the parts that finished.</p>' if self.error else "")
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>attribx demo report</title><style>{_CSS}</style></head>
<body>
<h1>attribx demo report</h1>
<p>attribx {html.escape(__version__)} · backend <b>{html.escape(self.backend)}</b> · Python
{platform.python_version()} on {html.escape(platform.platform(terse=True))} ·
{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} · {seconds:.0f} s</p>
<p class="note">This page is self-contained (the pictures are embedded); the data behind it are the HDF5
files listed at the end, in the same folder, readable with <code>attribx.open_relevance</code>.</p>
{error}<ul>{toc}</ul>
{''.join(parts)}
<h2 id="files">Files</h2>
{files}
</body></html>
"""
        path = os.path.join(self.out, "report.html")

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(page)
        return _atomic(path, write)


# --------------------------------------------------------------------------------------------------
# the stages
# --------------------------------------------------------------------------------------------------

def _say(msg: str) -> None:
    print(msg, flush=True)


def _images(rep: _Report, out: str, backend: str, n_images: int, progress_bar, result: dict) -> None:
    methods = image_methods(backend)
    t0 = time.perf_counter()
    if backend == "torch":
        model, x, y, acc = digits_cnn(SEED)
        engine, low, high, name = None, -1.0, 1.0, "digits CNN (torch: conv 8, conv 16, max pool, linear 32, linear 10)"
        recipes: dict[str, Any] = {"lrp.epsilon_gamma_box": ("lrp.epsilon_gamma_box", {"low": low, "high": high})}
    else:
        model, x, y, acc = digits_graph(seed=SEED)
        engine, low, high, name = "numpy", 0.0, 1.0, "digits MLP (scikit-learn, 64-32 hidden units, numpy engine)"
        recipes = {"lrp.epsilon_gamma_box_mlp": (mlp_composite(low, high), {})}
        model.save(rep.file(os.path.join(out, "digits-mlp.npz"), "the digits MLP as an attribx graph"))
    train_s = time.perf_counter() - t0
    result["accuracy"] = acc
    _say(f"trained the {name} on scikit-learn's digits: test accuracy {acc:.3f} ({train_s:.1f} s)")
    rep.model(name, f"scikit-learn digits, {len(x)} held-out 8×8 images", acc, train_s)
    rep.add("Models", None, "models")

    x, y = x[:n_images], y[:n_images]
    rels = {}
    for m in progress(methods, len(methods), "explain digits", progress_bar):
        if m == "random":
            rels[m] = random_relevance(rels["gradient"], SEED)
            continue
        how, params = recipes.get(m, (m, {}))
        rels[m] = explain(model, x, how, target="predicted", labels=y, engine=engine, progress_bar=False,
                                  **params)
    first = rels[methods[0]]
    ds = xr.Dataset({m: r.drop_attrs() for m, r in rels.items()})
    ds.attrs.update({k: v for k, v in first.attrs.items() if k not in ("method", "parameters")})
    ds.attrs["methods"] = list(methods)
    ds.attrs["parameters"] = {m: r.attrs.get("parameters", {}) for m, r in rels.items()}
    rel_path = rep.file(os.path.join(out, "relevance_digits.h5"), "relevance of every image method (one variable each)")
    save(ds, rel_path)
    result["relevance"] = rel_path
    png = rep.file(heatmap_grid(x, ds, os.path.join(out, "heatmaps_digits.png")), "heatmap grid of the digits")
    result["heatmaps"] = png
    _say(f"explained {len(x)} test digits with {len(methods)} methods: {rel_path}")
    rep.add("Heatmaps", _heatmaps_text(backend) + _img(png, "heatmaps"), "heatmaps")

    # pixel flipping
    pf = {}
    for m in progress(methods, len(methods), "pixel flipping", progress_bar):
        pf[m] = evaluate("pixel_flipping", model, x, rels[m], convention="samek2017", steps=PF_STEPS,
                                 patch_size=1, engine=engine, seed=SEED, progress_bar=False)
    pf_ds = _combine(pf)
    pf_path = rep.file(os.path.join(out, "eval_pixel_flipping.h5"), "pixel-flipping curves and AOPC per method")
    save(pf_ds, pf_path)
    fig = plot_curves(pf, title=f"pixel flipping, {len(x)} digits (most relevant first, uniform noise)",
                      figsize=(7.4, 5.0))
    _distinguish(fig, under="gradient_x_input", over="lrp.epsilon")
    curves = rep.file(save_figure(fig, os.path.join(out, "pixel_flipping.png")), "pixel-flipping curves")
    rows = [[m, float(pf[m].attrs["aopc"]), float(pf[m].attrs["aopc_random"]), float(pf[m].attrs["aopc_relative"])]
            for m in sorted(methods, key=lambda m: -pf[m].attrs["aopc"])]
    result["aopc"] = {m: float(pf[m].attrs["aopc"]) for m in methods}
    best = rows[0][0]
    eps, gxi = (rels[m].values.reshape(len(x), -1) for m in ("lrp.epsilon", "gradient_x_input"))
    per_sample = np.abs(eps - gxi).max(1) / np.maximum(np.abs(gxi).max(1), 1e-30)
    result["epsilon_vs_gradient_x_input"] = float(per_sample.max())
    _say(f"pixel flipping ({PF_STEPS} steps): AOPC " + ", ".join(f"{r[0]} {r[1]:.3f}" for r in rows))
    rep.add("Pixel flipping", f"<p>Samek et al. 2017: the pixels are replaced by uniform noise one at a time, "
            f"most relevant first, for {PF_STEPS} steps (half of the 64 pixels), and the logit of the explained "
            f"class is recorded. A good explanation makes it fall fast: the area over the perturbation curve "
            f"(AOPC, the mean drop f₀ − f_k over the steps) is large. Each method is also compared with a random "
            f"flipping order (AOPC random; relative = AOPC − AOPC random). Ranking by AOPC: <b>{html.escape(best)}"
            f"</b> first.</p>" + _EPSILON_NOTE.format(median=float(np.median(per_sample)), most=float(per_sample.max()))
            + _table(["method", "AOPC", "AOPC random order", "AOPC relative"], rows)
            + _img(curves, "pixel-flipping curves"), "pixel-flipping")

    # SpRAy on the heatmaps of one LRP method
    sp_method = SPRAY_METHOD[backend]
    sp = evaluate("spray", relevance=rels[sp_method], seed=SEED, progress_bar=False)
    sp_path = rep.file(os.path.join(out, "eval_spray.h5"), f"SpRAy of the {sp_method} heatmaps")
    save(sp, sp_path)
    sp_png = rep.file(save_figure(spray_module.plot_spray(sp), os.path.join(out, "spray.png")),
                      "SpRAy spectrum and clusters")
    sizes = sp["cluster_size"].values
    labels = sp["cluster"].values
    common = {int(c): int(np.bincount(y[labels == c]).argmax()) for c, s in zip(sp["cluster_label"].values, sizes)
              if s and c >= 0}
    agree = float(np.mean([common.get(int(c), -1) == t for c, t in zip(labels, y)]))
    result["spray_clusters"] = int(sp.attrs["n_clusters"])
    _say(f"SpRAy on {len(x)} {sp_method} heatmaps: eigengap suggests {sp.attrs['n_clusters']} clusters")
    table = _table(["cluster", "heatmaps", "most common true digit"],
                   [[int(c), int(s), common.get(int(c), "-")] for c, s in zip(sp["cluster_label"].values, sizes)])
    split = {d: sorted(c for c, dc in common.items() if dc == d) for d in sorted(set(common.values()))}
    split = {d: cs for d, cs in split.items() if len(cs) > 1}
    follow = "so the clusters follow the classes" if agree >= 0.8 else "so the clusters only partly follow the classes"
    if split:
        follow += ("; " + ", ".join(f"digit {d} in clusters {' and '.join(map(str, cs))}" for d, cs in split.items())
                   + ": the model reads these digits in more than one way (compare their prototypes)")
    rep.add("SpRAy", f"<p>Spectral relevance analysis (Lapuschkin et al. 2019) of the {len(x)} "
            f"<code>{sp_method}</code> heatmaps: each heatmap is pooled and normalised, a k-nearest-neighbour "
            f"graph links similar heatmaps, and the eigenvalues of its Laplacian count groups of heatmaps "
            f"with a similar strategy: a large gap after the k-th smallest eigenvalue suggests k clusters "
            f"(here {sp.attrs['n_clusters']}). The right panel shows the clusters on a 2-D embedding and "
            f"each cluster's mean heatmap (its prototype). Here {agree:.0%} of the digits share their cluster's "
            f"most common digit, {follow}; on a data set with a shortcut (a watermark, a border) a separate "
            f"cluster would reveal it.</p>" + table + _img(sp_png, "SpRAy"), "spray")
    result["spray"] = sp_path


_EPSILON_NOTE = ("<p class='note'>The curves of <code>lrp.epsilon</code> (dashed, with dots) and "
                 "<code>gradient_x_input</code> (broad, pale) lie on each other, and that is expected: in a "
                 "network of linear or convolutional layers, ReLUs and max pooling, the ratio R<sub>k</sub> / "
                 "z<sub>k</sub> that LRP-ε passes back from each neuron is the gradient of the explained logit "
                 "with respect to z<sub>k</sub>, so with a tiny ε (here 10⁻⁶) LRP-ε equals gradient × input "
                 "(Kindermans et al. 2016, Ancona et al. 2018), biases or not: a bias only keeps its share "
                 "of the relevance, in both. Here the two heatmaps of a digit differ by {median:.0e} of the "
                 "heatmap's largest |R| (median over the digits; at most {most:.0e}, where a neuron's z lies "
                 "within a few ε of zero: the difference vanishes as ε → 0). LRP differs from gradient × input "
                 "through its other rules (z⁺, γ, α2β1, z-box on the first layer) and a larger ε.</p>")


def _heatmaps_text(backend: str) -> str:
    backprop = ("deconvnet and guided backprop pass only positive signals back through the ReLUs"
                if backend == "torch" else
                "integrated gradients averages the gradient on the way from a blank image to the digit and "
                "multiplies it by the input")
    head = ("<p>Each column is a held-out digit (first row: the input, ink dark; y the true label, ŷ the "
            "prediction, t the explained class); each further row is one method's relevance for the predicted "
            "class. Red pixels speak for the class, blue against it; every heatmap is scaled symmetrically by "
            "its own largest |relevance|, so white is zero. The gradient shows sensitivity (what would change "
            f"the logit), not contribution; {backprop}; the random row is a seeded Gaussian baseline.</p>")
    if backend == "torch":
        return head + ("<p class='note'>The CNN reads the digits on a [−1, 1] scale, so the blank background is "
                       "−1, not 0: methods multiplied by the input (gradient × input, LRP-ε) and the z-box rule "
                       "of <code>lrp.epsilon_gamma_box</code> can give background pixels relevance — the "
                       "absence of ink is evidence too. <code>lrp.epsilon_plus_flat</code> spreads the first "
                       "convolution's relevance evenly over each 3×3 window and so gives smoother heatmaps.</p>")
    return head + ("<p class='note'>The MLP has no convolutions. The registered composites differ from LRP-ε "
                   "only in their rules for convolutions, and <code>lrp.epsilon_plus_flat</code>'s flat first "
                   "layer would split the relevance equally over all 64 pixels (one colour per heatmap), so the "
                   "demo explains the MLP with <code>lrp.epsilon_gamma_box_mlp</code>, the same recipe for dense "
                   "layers written as a user composite (<code>attribx.demo.mlp_composite</code>: z-box on the "
                   "first layer for pixels in [0, 1], LRP-γ on the hidden layer, LRP-ε on the output layer), "
                   "and with LRP-z⁺ and LRP-α2β1 on every layer. Deconvnet and guided backprop are left out: "
                   "without max pooling their backward pass sees the input only through which ReLUs are on "
                   "(guided backprop) or not at all (deconvnet), so the digits of a class would share a few "
                   "heatmaps, or one. The pixels are in [0, 1] with a blank background of 0, so gradient × "
                   "input, integrated gradients, LRP-ε, z⁺ and α2β1 give the background no relevance; the "
                   "z-box rule, which also weighs the ink a pixel could hold (up to 1), gives it relevance "
                   "too.</p>")


def _explain_sentences(model, head, vectors, test, methods, what: str, progress_bar) -> tuple[dict, xr.Dataset]:
    """Each method's relevance for the true class, per token, and all of them as one Dataset: gradient × input
    on the embedded vectors (``head``), "random" a seeded baseline, the others on the token ids."""
    y, tokens = test.labels, test.token_text
    rels = {}
    for m in progress(methods, len(methods), what, progress_bar):
        if m == "random":
            rels[m] = random_relevance(rels[methods[0]], SEED)
        elif m == "gradient_x_input":
            rels[m] = explain(head, vectors, m, target=y, labels=y, tokens=tokens, padding=test.ids == test.pad_id,
                              per_token=True, progress_bar=False)
        else:
            rels[m] = explain(model, test.ids, m, target=y, labels=y, tokens=tokens, pad_id=test.pad_id,
                              progress_bar=False)
    ds = xr.Dataset({m: r.drop_attrs() for m, r in rels.items()})
    ds.attrs.update({k: v for k, v in rels[methods[0]].attrs.items() if k not in ("method", "parameters")})
    ds.attrs["methods"] = list(methods)
    ds.attrs["parameters"] = {m: r.attrs.get("parameters", {}) for m, r in rels.items()}
    return rels, ds


def _word_deletion_results(rep: _Report, out: str, wd: dict, suffix: str = "", model: str = "") -> tuple[list, str]:
    """Store one model's word-deletion results (``eval_word_deletion<suffix>.h5``, an accuracy plot); return the
    report table's rows (accuracy after each deletion and its mean, per method, then the random order of the
    first method's run) and the plot's path. ``model`` names the model in the files' descriptions."""
    methods = list(wd)
    of = f" ({model})" if model else ""
    save(_combine(wd), rep.file(os.path.join(out, f"eval_word_deletion{suffix}.h5"),
                                f"word-deletion accuracy per method{of}"))
    acc_png = rep.file(save_figure(plot_accuracy(wd), os.path.join(out, f"word_deletion{suffix}.png")),
                       f"word-deletion accuracy curves{of}")
    rows = [[m, *[float(a) for a in wd[m]["accuracy"].values[1:]], float(wd[m]["accuracy"].values[1:].mean())]
            for m in methods]
    r0 = wd[methods[0]]
    rows.append(["random order (3 runs)", *[float(a) for a in r0["accuracy_random"].values[1:]],
                 float(r0["accuracy_random"].values[1:].mean())])
    return rows, acc_png


def _text(rep: _Report, out: str, n_sentences: int, progress_bar, result: dict) -> None:
    t0 = time.perf_counter()
    train = make_sentiment(3000, seed=1)
    model, _ = train_sentiment_lstm(train, epochs=6, seed=SEED, progress_bar=progress_bar)
    test = make_sentiment(n_sentences, seed=2)
    acc = float((predict(model, test.ids).argmax(1) == test.labels).mean())
    train_s = time.perf_counter() - t0
    result["text_accuracy"] = acc
    _say(f"trained the sentiment BiLSTM on 3000 generated sentences: held-out accuracy {acc:.3f} ({train_s:.1f} s)")
    ids, y = test.ids, test.labels
    rep.model("sentiment BiLSTM (torch: embedding 16, LSTM 24 per direction, linear)",
              f"{len(train)} generated sentences, {len(ids)} held out", acc, train_s)
    head, vectors = embedded(model, ids)
    rels, ds = _explain_sentences(model, head, vectors, test, TEXT_METHODS, "explain sentences", progress_bar)
    rel_path = rep.file(os.path.join(out, "relevance_text.h5"), "relevance of every text method (per token)")
    save(ds, rel_path)
    result["text_relevance"] = rel_path
    wd = {}
    for m in progress(TEXT_METHODS, len(TEXT_METHODS), "word deletion", progress_bar):
        # gradient×input explains the model from its embedding on: evaluated on that model and the vectors
        # (deleting a word = zeroing its vector, the same as on the ids)
        on, inputs = (head, vectors) if m == "gradient_x_input" else (model, ids)
        wd[m] = evaluate("word_deletion", on, inputs, rels[m], steps=WD_STEPS, repeats=3, seed=SEED,
                                 random_baseline=(m == TEXT_METHODS[0]), progress_bar=False)
    rows, acc_png = _word_deletion_results(rep, out, wd)
    result["word_deletion"] = {r[0]: r[-1] for r in rows}
    _say("word deletion: mean accuracy after 1.." + f"{WD_STEPS} deletions " +
         ", ".join(f"{r[0]} {r[-1]:.3f}" for r in rows))

    show = list(range(min(6, len(ids))))
    html_path = rep.file(os.path.join(out, "text_heatmaps.html"), "LRP-ε text heatmaps (HTML)")
    render_html(rels["lrp.epsilon"], html_path, samples=list(range(min(40, len(ids)))),
                class_names=["negative", "positive"])
    png = rep.file(os.path.join(out, "text_heatmaps.png"), "LRP-ε text heatmaps (PNG)")
    _atomic(png, lambda tmp: render_png(rels["lrp.epsilon"], tmp, samples=show, class_names=["negative", "positive"]))
    inline = []
    for m in ("lrp.epsilon", "gradient_x_input"):
        r = rels[m]
        for i in show[:4]:
            n = int(test.lengths[i])
            inline.append(text_heatmap_html(list(test.tokens[i]), r.values[i, :n],
                                            label=f"{m} · sentence {i} · label "
                                                  f"{['negative', 'positive'][int(y[i])]}"))
    rep.add("Text: word deletion", "<p>Arras et al. 2017: in the held-out sentences the model classifies "
            f"correctly, words are deleted (their embedding set to zero) one at a time, most relevant first, and "
            f"the accuracy is recorded after each of {WD_STEPS} deletions. A good explanation finds the deciding "
            "words (sentiment words and the negations that flip them), so the accuracy falls fast: lower is "
            "better. The table gives the accuracy after 1, 2, … deletions and its mean.</p>"
            + _table(["method"] + [f"after {k}" for k in range(1, WD_STEPS + 1)] + ["mean"], rows)
            + _img(acc_png, "word deletion"), "word-deletion")
    rep.add("Text heatmaps", "<p>Relevance of each word for the true class (LRP-ε on the token ids, "
            "gradient×input on the embedded vectors); hover over a word for its value. LRP-ε of "
            f"{min(40, len(ids))} sentences is in <a href=\"text_heatmaps.html\">text_heatmaps.html</a> "
            f"(and of {len(show)} as a picture in <a href=\"text_heatmaps.png\">text_heatmaps.png</a>).</p>"
            + _legend_html(None) + "\n".join(inline), "text-heatmaps")


def _transformer(rep: _Report, out: str, n_sentences: int, progress_bar, result: dict) -> None:
    """The sentiment transformer: AttnLRP, CP-LRP, gradient × input, attention rollout and random, compared by
    where they put the relevance and by word deletion (issue 19)."""
    t0 = time.perf_counter()
    train = make_sentiment(3000, seed=1)
    model, _ = train_sentiment_transformer(train, seed=SEED, progress_bar=progress_bar)
    test = make_sentiment(n_sentences, seed=2)
    acc = float((predict(model, test.ids).argmax(1) == test.labels).mean())
    train_s = time.perf_counter() - t0
    result["transformer_accuracy"] = acc
    _say(f"trained the sentiment transformer on 3000 generated sentences: held-out accuracy {acc:.3f} "
         f"({train_s:.1f} s)")
    rep.model("sentiment transformer (torch: embedding 32, class token, 2 blocks of 4-head attention and a GELU "
              "MLP, linear head)", f"{len(train)} generated sentences, {len(test)} held out", acc, train_s)
    ids, y = test.ids, test.labels
    head, vectors = embedded_transformer(model, ids)
    rels, ds = _explain_sentences(model, head, vectors, test, TRANSFORMER_METHODS, "explain sentences (transformer)",
                                  progress_bar)
    save(ds, rep.file(os.path.join(out, "relevance_transformer.h5"),
                      "relevance of every method on the sentiment transformer (per token)"))
    # gradient×input explains the model from its embedding on: evaluated there (a deleted word's vector is zero
    # on both models, which they read as a removed word)
    wd = {m: evaluate("word_deletion", *((head, vectors) if m == "gradient_x_input" else (model, ids)), rels[m],
                      steps=WD_STEPS, repeats=3, seed=SEED, random_baseline=(m == TRANSFORMER_METHODS[0]),
                      progress_bar=False)
          for m in progress(TRANSFORMER_METHODS, len(TRANSFORMER_METHODS), "word deletion (transformer)",
                            progress_bar)}
    rows, acc_png = _word_deletion_results(rep, out, wd, "_transformer", "sentiment transformer")
    result["word_deletion_transformer"] = {r[0]: r[-1] for r in rows}
    _say("word deletion (transformer): mean accuracy after 1.." + f"{WD_STEPS} deletions " +
         ", ".join(f"{r[0]} {r[-1]:.3f}" for r in rows))
    inline = [text_heatmap_html(list(test.tokens[i]), rels[m].values[i, :int(test.lengths[i])],
                                label=f"transformer · {m} · sentence {i} · label "
                                      f"{['negative', 'positive'][int(y[i])]}")
              for m in ("lrp.attn", "gradient_x_input", "attention_rollout") for i in range(min(3, len(ids)))]
    rep.add("Transformer: word deletion and heatmaps",
            "<p>The same sentences and the same word deletion on a small transformer (a class token, learned "
            "positions, two blocks of multi-head self-attention, trained here): AttnLRP (<code>lrp.attn</code>, "
            "Achtibat et al. 2024) and CP-LRP (<code>lrp.cp</code>, Ali et al. 2022) against gradient × input, "
            "attention rollout (Abnar &amp; Zuidema 2020, the same map for every class) and a random order. "
            "Lower is better.</p>"
            + _table(["method"] + [f"after {k}" for k in range(1, WD_STEPS + 1)] + ["mean"], rows)
            + _img(acc_png, "word deletion (transformer)")
            + "<p>Relevance of each word for the true class; attention rollout is positive by construction.</p>"
            + "\n".join(inline), "transformer")


def run_demo(out: str = "attribx-demo", backend: str = "auto", n_images: int = 200, n_sentences: int = 400,
             progress_bar: bool | None = None) -> dict:
    """Run the demo into the folder ``out``; returns what it wrote and measured (paths, accuracy, AOPC).

    ``backend``: "torch" (the digits CNN, the sentiment BiLSTM and transformer), "numpy" (a scikit-learn MLP on the
    numpy engine; no text part) or "auto" (torch when PyTorch and attribx-torch are installed).
    """
    if backend == "auto":
        backend = "torch" if torch_available() else "numpy"
    if backend not in ("torch", "numpy"):
        raise AttribxError(f"backend must be 'auto', 'torch' or 'numpy', got {backend!r}")
    if backend == "torch" and not torch_available():
        raise AttribxError(f"backend 'torch' needs PyTorch and the attribx-torch plugin; {TORCH_HINT}")
    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError:
        raise AttribxError("the demo needs scikit-learn and matplotlib: pip install 'attribx[demo]'") from None
    os.makedirs(out, exist_ok=True)
    _say(f"attribx demo: backend {backend}, writing to {os.path.abspath(out)}")
    rep = _Report(out, backend)
    result: dict = {"backend": backend, "out": out}
    threads = None
    if backend == "torch":
        import torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)        # tiny models: one thread is fastest and fair to a shared machine
    stage = "images"
    try:
        _images(rep, out, backend, n_images, progress_bar, result)
        stage = "text"
        if backend == "torch":
            _text(rep, out, n_sentences, progress_bar, result)
            stage = "transformer"
            _transformer(rep, out, n_sentences, progress_bar, result)
        else:
            line = (f"text part skipped: the sentiment BiLSTM and transformer need PyTorch and attribx-torch "
                    f"({TORCH_HINT})")
            _say(line)
            rep.add("Text", f"<p>{html.escape(line)}.</p>", "text")
            result["text_skipped"] = line
    except BaseException as e:
        rep.error = f"during the {stage} part: {type(e).__name__}: {e}"
        if not isinstance(e, KeyboardInterrupt):
            traceback.print_exc()
        raise
    finally:
        if threads is not None:
            import torch
            torch.set_num_threads(threads)
        result["report"] = rep.write()
        result["seconds"] = time.perf_counter() - rep.started
        _say(f"report: {os.path.abspath(result['report'])} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":   # pragma: no cover
    run_demo(sys.argv[1] if len(sys.argv) > 1 else "attribx-demo")
