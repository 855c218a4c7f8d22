"""Pixel flipping and region perturbation: does removing what the relevance calls important change the output?

Two conventions (``docs/evaluators.md`` lists every difference):

``convention="samek2017"`` (default), Samek et al., "Evaluating the visualization of what a deep neural
network has learned", IEEE TNNLS 2017 (seeds 000 and 002): the image is cut into a non-overlapping grid
of ``patch_size`` × ``patch_size`` regions (the last row and column of regions are smaller when the size
does not divide the image); a region's score is the sum of its channel-summed relevance; the regions
are perturbed in the chosen order (most relevant first, least relevant first, or random), cumulatively,
``features_in_step`` regions per step; the curve is the explained output f_k after k = 0..L steps
(f_0 the unperturbed input) and

    AOPC = 1/(L+1) Σ_{k=0..L} (f_0 − f_k)          per sample; its mean over samples in the attrs,

also for a random order (``aopc_random``) and as the difference (``aopc_relative``). A perturbed pixel
takes its value from a replacement image drawn once per run: uniform noise per pixel and channel over the
data range (default), a constant, each channel's mean over the inputs, a blurred copy of the image, or a
user function. Random orders and noise are seeded and repeated (``repeats``), the curves averaged.
``pixel_flipping`` is the same with 1 × 1 regions.

``convention="quantus"`` reproduces Quantus 0.6.0's ``PixelFlipping`` and ``RegionPerturbation``
numerically: entry-wise flipping (every channel of every pixel is its own feature) ``features_in_step``
entries per step, the relevance divided by its largest absolute value over all samples (Quantus's
``normalise=True``), an 8 × 8 grid on the image padded to a multiple of the patch size (the image with
edge padding, the relevance with zeros), no k = 0 point, and Quantus's baselines computed on the
current (perturbed, padded) image each step: ``"black"`` its minimum, ``"white"`` its maximum,
``"mean"`` its mean, ``"uniform"`` one scalar per sample and step from U(0, 1). Quantus draws its
random numbers from numpy's global generator; here a ``numpy.random.RandomState(seed)`` draws the same
numbers in the same order, so ``np.random.seed(seed)`` before a Quantus call gives the same result.
The curve is what Quantus returns: the output f_k (pixel flipping) or the drop f_0 − f_k (region
perturbation), k = 1..L; ``auc`` is Quantus's area (the trapezoid rule over the curve) and ``aopc``
the mean drop 1/L Σ_{k=1..L} (f_0 − f_k).

Scheduling (the evaluator contract): :func:`plan` checks every input once and decides the chunks of
``batch_size`` samples, :func:`run_chunk` runs one chunk (samek2017), :func:`combine` joins the chunks'
results. One process runs the chunks in turn; :mod:`attribx.distributed` runs them as tasks on a dask
cluster, with the same checks and the same numbers. ``convention="quantus"`` draws one random stream
through all samples in order, so it runs in one process.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import xarray as xr

from ..errors import InputError, MethodError
from .base import (ModelRunner, Progress, as_numpy_inputs, check_params, choice, is_dask, positive_int,
                   read_relevance, result_attrs, seed_of)

CONVENTIONS = ("samek2017", "quantus")
ORDERS = ("morf", "lerf", "random")
SAMEK_BASELINES = ("uniform", "constant", "mean", "blur")
QUANTUS_BASELINES = ("black", "white", "mean", "uniform")
CANONICAL = ("sample", "channel", "height", "width")

DEFAULTS = {
    "convention": "samek2017",
    "patch_size": None,          # samek2017: 1 (pixel flipping) / 9 (region perturbation); quantus RP: 8
    "steps": None,               # samek2017: 100; quantus: all features (PF) / 100 regions (RP)
    "order": "morf",
    "baseline": None,            # samek2017: "uniform"; quantus: "black"
    "value": 0.0,                # the constant of baseline="constant"
    "data_range": None,          # (low, high) of baseline="uniform"; samek2017: the inputs' min and max, quantus: (0, 1)
    "blur_sigma": None,          # baseline="blur": Gaussian sigma in pixels (default patch_size / 2, at least 1)
    "output": None,              # samek2017: "logit"; quantus: "probability" (Quantus's softmax=True)
    "features_in_step": 1,
    "repeats": 1,
    "relative_to_random": None,  # samek2017: True unless order="random"; quantus: False
    "normalise": None,           # quantus only (Quantus's normalise, default True)
    "abs": None,                 # quantus only (Quantus's abs, default False)
    "seed": 0,
    "target": None,              # default: the relevance's target coord, else the predicted class
    "engine": None,
    "batch_size": 64,
    "progress_bar": None,
    "variable": None,            # which variable of a Dataset of relevance
}


# --------------------------------------------------------------------------------------------------
# layouts: the model's input layout <-> (sample, channel, height, width)
# --------------------------------------------------------------------------------------------------

class _Layout:
    """Moves arrays between the model's input layout and (sample, channel, height, width)."""

    def __init__(self, evaluator: str, dims: tuple[str, ...]):
        missing = [d for d in ("height", "width") if d not in dims]
        extra = [d for d in dims if d not in CANONICAL]
        if missing or extra:
            raise InputError(f"evaluator {evaluator!r} perturbs images: the model's input has dims {dims}, it "
                             f"needs 'height' and 'width' (and optionally 'channel') besides 'sample'")
        self.dims = tuple(dims)
        self.has_channel = "channel" in dims
        present = [d for d in CANONICAL if d in dims]
        self.to_canon_perm = [dims.index(d) for d in present]
        self.from_canon_perm = [present.index(d) for d in dims]

    def to_canon(self, x: np.ndarray) -> np.ndarray:
        x = np.transpose(x, self.to_canon_perm)
        return x if self.has_channel else x[:, None]

    def to_model(self, xc: np.ndarray) -> np.ndarray:
        x = xc if self.has_channel else xc[:, 0]
        return np.ascontiguousarray(np.transpose(x, self.from_canon_perm))


def _canonical_relevance(evaluator: str, rel: xr.DataArray, layout: _Layout, shape_c: tuple) -> np.ndarray:
    """The relevance as (sample, channel or 1, height, width), checked against the inputs."""
    extra = [d for d in rel.dims if d not in layout.dims]
    if extra:
        raise InputError(f"evaluator {evaluator!r}: the relevance has dims {rel.dims}; {extra} are not dims of "
                         f"the model's input {layout.dims}")
    for d in ("sample", "height", "width"):
        if d not in rel.dims:
            raise InputError(f"evaluator {evaluator!r}: the relevance has dims {rel.dims}; it needs {d!r}")
    present = [d for d in CANONICAL if d in rel.dims]
    values = rel.transpose(*present).data
    if not is_dask(values):                 # dask-backed relevance stays lazy (plan(lazy=True))
        values = np.asarray(values)
    if "channel" not in rel.dims:
        values = values[:, None]
    n, c, h, w = shape_c
    if values.shape[0] != n or values.shape[2:] != (h, w) or values.shape[1] not in (1, c):
        pretty = dict(zip(CANONICAL, values.shape))
        raise InputError(f"evaluator {evaluator!r}: relevance of sizes {pretty} does not match inputs of sizes "
                         f"{dict(zip(CANONICAL, shape_c))} (sample, channel, height, width)")
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    return values


# --------------------------------------------------------------------------------------------------
# replacement values (samek2017)
# --------------------------------------------------------------------------------------------------

def _gaussian_blur(xc: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over height and width, each channel on its own; borders reflect (``abccba``) and the
    kernel reaches 4 sigma, as ``scipy.ndimage.gaussian_filter``'s defaults do."""
    radius = max(1, int(4.0 * sigma + 0.5))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    out = xc.astype(np.float64)
    for axis in (2, 3):
        size = out.shape[axis]
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        acc = np.zeros_like(out)
        for i, kv in enumerate(k):
            sl = [slice(None)] * 4
            sl[axis] = slice(i, i + size)
            acc += kv * padded[tuple(sl)]
        out = acc
    return out.astype(xc.dtype)


def _replacement_fn(evaluator: str, p: dict, xc_all: np.ndarray, layout: _Layout) -> tuple[Callable, bool, dict]:
    """(f(xc_batch, rng) -> replacement values, whether it is random, attrs describing it)."""
    baseline = p["baseline"]
    dtype = xc_all.dtype
    if callable(baseline):
        def user(xb, rng):
            r = np.asarray(baseline(layout.to_model(xb)))
            want = layout.to_model(xb).shape
            if r.shape != want:
                raise InputError(f"evaluator {evaluator!r}: the baseline function returned shape {r.shape}, "
                                 f"expected the inputs' {want}")
            if not np.isfinite(r).all():
                raise InputError(f"evaluator {evaluator!r}: the baseline function returned NaN or infinite values")
            return layout.to_canon(r.astype(dtype, copy=False))
        return user, True, {}
    if isinstance(baseline, (int, float, np.number)) and not isinstance(baseline, bool):
        baseline, p["value"] = "constant", float(baseline)
    if not isinstance(baseline, str) or baseline not in SAMEK_BASELINES:
        raise MethodError(f"evaluator {evaluator!r}: baseline is one of "
                          f"{', '.join(repr(b) for b in SAMEK_BASELINES)}, a number or a function, got {baseline!r}")
    if baseline == "uniform":
        low, high = _data_range(evaluator, p["data_range"], (float(xc_all.min()), float(xc_all.max())))
        return (lambda xb, rng: rng.uniform(low, high, size=xb.shape).astype(dtype)), True, \
            {"data_range": [low, high]}
    if baseline == "constant":
        v = p["value"]
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
            raise MethodError(f"evaluator {evaluator!r}: value must be a finite number, got {v!r}")
        return (lambda xb, rng: np.full(xb.shape, v, dtype)), False, {"value": float(v)}
    if baseline == "mean":
        means = np.asarray(xc_all.mean(axis=(0, 2, 3), dtype=np.float64))   # computed, when xc_all is dask
        return (lambda xb, rng: np.broadcast_to(means[None, :, None, None], xb.shape).astype(dtype)), False, \
            {"channel_mean": means.tolist()}
    sigma = p["blur_sigma"]
    if sigma is None:
        sigma = max(1.0, p["patch_size"] / 2)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.number)) or not sigma > 0:
        raise MethodError(f"evaluator {evaluator!r}: blur_sigma must be a positive number, got {sigma!r}")
    return (lambda xb, rng: _gaussian_blur(xb, float(sigma))), False, {"blur_sigma": float(sigma)}


def _data_range(evaluator: str, given: Any, default: tuple[float, float]) -> tuple[float, float]:
    if given is None:
        return default
    try:
        low, high = (float(v) for v in given)
    except (TypeError, ValueError):
        raise MethodError(f"evaluator {evaluator!r}: data_range must be (low, high), got {given!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise MethodError(f"evaluator {evaluator!r}: data_range must be finite with low < high, got {given!r}")
    return low, high


# --------------------------------------------------------------------------------------------------
# samek2017
# --------------------------------------------------------------------------------------------------

def _grid(h: int, w: int, patch: int) -> tuple[np.ndarray, int]:
    """Region id of every pixel (row-major over the grid) and the number of regions."""
    nh, nw = -(-h // patch), -(-w // patch)
    rid = (np.arange(h)[:, None] // patch) * nw + (np.arange(w)[None, :] // patch)
    return rid, nh * nw


def _region_scores(rc: np.ndarray, patch: int) -> np.ndarray:
    """Sum of channel-summed relevance per region, (N, regions)."""
    s = rc.sum(axis=1, dtype=np.float64)
    n, h, w = s.shape
    nh, nw = -(-h // patch), -(-w // patch)
    s = np.pad(s, ((0, 0), (0, nh * patch - h), (0, nw * patch - w)))
    return s.reshape(n, nh, patch, nw, patch).sum(axis=(2, 4)).reshape(n, nh * nw)


def _orders(scores: np.ndarray, order: str, rng: np.random.Generator) -> np.ndarray:
    """Region indices in perturbation order per sample; ties keep the grid's row-major order."""
    if order == "morf":
        return np.argsort(-scores, axis=1, kind="stable")
    if order == "lerf":
        return np.argsort(scores, axis=1, kind="stable")
    return np.stack([rng.permutation(scores.shape[1]) for _ in range(len(scores))])


@dataclass(frozen=True, eq=False)
class ChunkSpec:
    """What running one chunk of samek2017 needs besides its samples: decided once by :func:`plan`, the
    same for every chunk (``attribx.distributed`` sends it to every worker once)."""
    evaluator: str
    runner_args: dict            # the ModelRunner's engine, output and batch size (a worker builds its own)
    patch: int
    rid: np.ndarray              # region id of every pixel
    regions: int
    order: str
    fis: int                     # regions perturbed per step
    n_steps: int
    replace: Callable            # f(canonical chunk, rng) -> replacement values
    random_baseline: bool
    runs: int                    # runs in the chosen order (repeated when anything is random)
    random_runs: int             # runs of the random-order reference (0: none)

    def runner(self, model: Any, sample_shape: Sequence[int]) -> ModelRunner:
        """The model runner a chunk calls (a worker builds one from the graph it was sent)."""
        return _model_runner(self.evaluator, self.runner_args, model, sample_shape)


def _runner_args(p: dict) -> dict:
    return {k: p[k] for k in ("engine", "output", "batch_size")}


def _model_runner(evaluator: str, runner_args: dict, model: Any, sample_shape: Sequence[int]) -> ModelRunner:
    return ModelRunner(model, sample_shape, progress_bar=False, evaluator=evaluator, **runner_args)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def run_chunk(spec: ChunkSpec, runner: ModelRunner, xb: np.ndarray, rb: np.ndarray, tb: np.ndarray | None,
              rngs: tuple, bar: Any = None) -> dict:
    """Run one chunk of samples: ``xb`` in the model's layout, ``rb`` its canonical relevance (:attr:`Plan.rc`),
    ``tb`` its targets (None: predicted here), ``rngs`` the main and the reference run's generators where
    this chunk starts. Returns ``{"targets", "main": (curves, summed fraction perturbed per step)}`` and
    ``"random"`` alike when the reference runs; :func:`combine` joins the chunks."""
    layout = _Layout(spec.evaluator, runner.dims)
    if tb is None:
        tb = runner.targets(xb, "predicted")
    xc = layout.to_canon(xb)
    rb = np.asarray(rb)
    if rb.dtype.kind != "f":
        rb = rb.astype(np.float64)
    scores = _region_scores(rb, spec.patch)
    out = {"targets": tb}
    for key, order, runs, rng in (("main", spec.order, spec.runs, rngs[0]),
                                  ("random", "random", spec.random_runs, rngs[1])):
        if runs:
            out[key] = _samek_chunk(runner, layout, xc, tb, scores, spec.rid, order, spec.fis, spec.n_steps,
                                    spec.replace, rng, runs, bar or _NoBar())
    return out


def _samek_chunk(runner, layout, xb, tb, scores_b, rid, order, fis, n_steps, replace, rng, runs, bar):
    """``runs`` runs over one canonical chunk: its curves (averaged over the runs) and its summed fraction of
    pixels perturbed per step."""
    b, c, h, w = xb.shape
    regions = scores_b.shape[1]
    curves = np.zeros((b, n_steps + 1), np.float64)
    fraction = np.zeros(n_steps + 1, np.float64)
    for rep in range(runs):
        ordr = _orders(scores_b, order, rng)
        rank = np.empty_like(ordr)
        np.put_along_axis(rank, ordr, np.arange(regions)[None, :].repeat(len(ordr), 0), axis=1)
        pixel_rank = rank[:, rid]                              # (b, h, w): when each pixel goes
        repl = replace(xb, rng)
        for k in range(n_steps + 1):
            mask = pixel_rank < k * fis
            xk = np.where(mask[:, None], repl, xb)
            curves[:, k] += runner.target_scores(layout.to_model(xk), tb) / runs
            if rep == 0:
                fraction[k] += mask.sum() / (h * w)
            bar.update()
    return curves, fraction


def _samek_spec(evaluator: str, p: dict, layout: _Layout, xc: Any) -> tuple[ChunkSpec, dict]:
    """samek2017's grid, steps and replacement checked against the image size: (the chunk spec, attrs
    describing the replacement)."""
    n, c, h, w = xc.shape
    patch = p["patch_size"]
    if patch > h or patch > w:
        raise MethodError(f"evaluator {evaluator!r}: patch_size {patch} is larger than the image ({h} × {w})")
    rid, regions = _grid(h, w, patch)
    fis = p["features_in_step"]
    possible = -(-regions // fis)
    if p["steps"] is None:
        n_steps = min(100, possible)
    else:
        n_steps = p["steps"]
        if n_steps > possible:
            raise MethodError(f"evaluator {evaluator!r}: steps={n_steps}, but {regions} regions of {patch} × {patch} "
                              f"({fis} per step) are gone after {possible} steps")
    replace, random_baseline, info = _replacement_fn(evaluator, p, xc, layout)
    _, _, _, runs, random_runs = random_plan(p, random_baseline)
    spec = ChunkSpec(evaluator, _runner_args(p), patch, rid, regions, p["order"], fis, n_steps, replace,
                     random_baseline, runs, random_runs)
    return spec, info


# --------------------------------------------------------------------------------------------------
# quantus 0.6.0
# --------------------------------------------------------------------------------------------------

def _quantus_fill(arr: np.ndarray, baseline, low: float, high: float, rs: np.random.RandomState) -> np.ndarray:
    """Quantus's per-sample fill value for a (B, F) array: its get_baseline_dict draws the uniform
    numbers for every string baseline (so the random stream advances the same way), then picks one."""
    if not isinstance(baseline, str):
        return np.full((len(arr), 1), baseline)
    u = rs.uniform(low=low, high=high, size=len(arr))
    fill = {"mean": lambda: arr.mean(axis=(1,)), "uniform": lambda: u,
            "black": lambda: arr.min(axis=(1,)), "white": lambda: arr.max(axis=(1,))}[baseline]()
    return fill[:, None]


def _quantus_attributions(p, rc: np.ndarray, shape_c: tuple) -> np.ndarray:
    a = rc
    if p["normalise"] and not np.all(a == 0.0):
        a = np.divide(a, np.max(np.abs(a), axis=tuple(range(a.ndim)), keepdims=True))
    if p["abs"]:
        a = np.abs(a)
    return np.broadcast_to(a, shape_c) if a.shape != shape_c else a


def _quantus_pixel_flipping(evaluator, p, runner, layout, xc, a, targets, bar_desc):
    n, c, h, w = xc.shape
    fis = p["features_in_step"]
    if (h * w) % fis:
        raise MethodError(f"evaluator {evaluator!r}: Quantus needs features_in_step to divide height × width "
                          f"({h * w} % {fis} != 0)")
    n_features = c * h * w
    n_steps = math.ceil(n_features / fis)
    if p["steps"] is not None:
        n_steps = min(n_steps, p["steps"])
    rs = np.random.RandomState(p["seed"])
    low, high = _data_range(evaluator, p["data_range"], (0.0, 1.0))
    chunks = _chunks(n, p["batch_size"])
    curve = np.zeros((n, n_steps), np.float64)
    f0 = np.zeros(n, np.float64)
    with Progress(len(chunks) * (n_steps + 1), bar_desc, p["progress_bar"]) as bar:
        for sl in chunks:
            xb, tb = xc[sl], targets[sl]
            b = len(xb)
            af = a[sl].reshape(b, -1)
            if p["order"] == "morf":
                idx = np.argsort(-af, axis=1)
            elif p["order"] == "lerf":
                idx = np.argsort(af, axis=1)
            else:
                idx = np.stack([rs.permutation(n_features) for _ in range(b)])
            f0[sl] = runner.target_scores(layout.to_model(xb), tb)
            bar.update()
            xp = xb.copy()
            for k in range(n_steps):
                ix = idx[:, k * fis:(k + 1) * fis]
                flat = xp.reshape(b, -1).copy()
                flat[np.arange(b)[:, None], ix] = _quantus_fill(flat, p["baseline"], low, high, rs)
                xp = flat.reshape(xb.shape)
                curve[sl, k] = runner.target_scores(layout.to_model(xp), tb)
                bar.update()
    return curve, f0, n_steps


def _quantus_padding(dim: int, patch: int) -> tuple[int, int]:
    rem = dim % patch
    if rem == 0:
        return 0, 0
    total = patch - rem
    return math.floor(total / 2), math.ceil(total / 2)


def _quantus_region_perturbation(evaluator, p, runner, layout, xc, a, targets, bar_desc):
    n, c, h, w = xc.shape
    patch = p["patch_size"]
    ph, pw = _quantus_padding(h, patch), _quantus_padding(w, patch)
    pad = ((0, 0), (0, 0), ph, pw)
    hp, wp = h + sum(ph), w + sum(pw)
    nh, nw = hp // patch, wp // patch
    regions = nh * nw
    # the flat indices of each block in a (C, Hp, Wp) sample, in C order (channel, row, column)
    ids = np.arange(c * hp * wp).reshape(c, hp, wp)
    blocks = np.stack([ids[:, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].reshape(-1)
                       for i in range(nh) for j in range(nw)])          # (regions, C·p·p)
    n_steps = min(p["steps"] if p["steps"] is not None else 100, regions)
    rs = np.random.RandomState(p["seed"])
    low, high = _data_range(evaluator, p["data_range"], (0.0, 1.0))
    chunks = _chunks(n, p["batch_size"])
    curve = np.zeros((n, n_steps), np.float64)
    f0 = np.zeros(n, np.float64)
    with Progress(len(chunks) * (n_steps + 1), bar_desc, p["progress_bar"]) as bar:
        for sl in chunks:
            xb, tb = xc[sl], targets[sl]
            b = len(xb)
            rows = np.arange(b)[:, None]
            y0 = runner.target_scores(layout.to_model(xb), tb)
            f0[sl] = y0
            bar.update()
            a_pad = np.pad(a[sl], pad, mode="constant").reshape(b, -1)
            sums = np.stack([a_pad[rows, np.broadcast_to(blk, (b, blk.size))].sum(axis=-1) for blk in blocks], -1)
            if p["order"] == "random":
                ordr = np.array([rs.permutation(regions) for _ in range(b)])
            elif p["order"] == "morf":
                ordr = np.argsort(-sums, -1)
            else:
                ordr = np.argsort(sums, -1)
            x_pad = np.pad(xb, pad, mode="edge")
            shape_pad = x_pad.shape
            for k in range(n_steps):
                ix = blocks[ordr[:, k]]                                 # (b, C·p·p)
                flat = x_pad.reshape(b, -1).copy()
                flat[rows, ix] = _quantus_fill(flat, p["baseline"], low, high, rs)
                x_pad = flat.reshape(shape_pad)
                xk = x_pad[:, :, ph[0]:hp - ph[1], pw[0]:wp - pw[1]]
                yk = runner.target_scores(layout.to_model(xk), tb)
                curve[sl, k] = y0 - yk
                bar.update()
    return curve, f0, n_steps, regions


def _quantus(evaluator, p, runner, layout, xc, rc, targets, bar_desc):
    if p["repeats"] != 1:
        raise MethodError(f"evaluator {evaluator!r}: repeats applies to convention='samek2017' (Quantus runs once)")
    baseline = p["baseline"]
    if isinstance(baseline, (int, float, np.number)) and not isinstance(baseline, bool):
        baseline = float(baseline)
    elif not isinstance(baseline, str) or baseline not in QUANTUS_BASELINES:
        raise MethodError(f"evaluator {evaluator!r}: with convention='quantus' baseline is one of "
                          f"{', '.join(repr(b) for b in QUANTUS_BASELINES)} or a number, got {baseline!r}")
    p["baseline"] = baseline
    a = _quantus_attributions(p, rc, xc.shape)
    if evaluator == "pixel_flipping":
        curve, f0, n_steps = _quantus_pixel_flipping(evaluator, p, runner, layout, xc, a, targets, bar_desc)
        drop = f0[:, None] - curve
        quantity, total = "output", xc[0].size
        fraction = np.minimum(np.arange(1, n_steps + 1) * p["features_in_step"], total) / total
        extra = {"features": total}
    else:
        curve, f0, n_steps, regions = _quantus_region_perturbation(evaluator, p, runner, layout, xc, a, targets,
                                                                   bar_desc)
        drop = curve
        quantity = "drop f_0 - f_k"
        fraction = np.arange(1, n_steps + 1) / regions
        extra = {"regions": regions}
    aopc = drop.mean(axis=1)
    auc = np.trapezoid(curve, dx=1, axis=1)
    data = {"curve": (("sample", "step"), curve), "aopc": (("sample",), aopc), "auc": (("sample",), auc),
            "f0": (("sample",), f0)}
    relative = bool(p["relative_to_random"])
    if relative:
        q = dict(p, order="random", seed=p["seed"] + 1)
        if evaluator == "pixel_flipping":
            rcurve, rf0, _ = _quantus_pixel_flipping(evaluator, q, runner, layout, xc, a, targets, bar_desc)
            rdrop = rf0[:, None] - rcurve
        else:
            rcurve, _, _, _ = _quantus_region_perturbation(evaluator, q, runner, layout, xc, a, targets, bar_desc)
            rdrop = rcurve
        aopc_random = rdrop.mean(axis=1)
        data.update({"curve_random": (("sample", "step"), rcurve), "aopc_random": (("sample",), aopc_random),
                     "aopc_relative": (("sample",), aopc - aopc_random)})
    extra.update({"steps_run": n_steps, "curve_quantity": quantity,
                  "aopc_definition": "1/L sum_{k=1..L} (f_0 - f_k)",
                  "auc_definition": "trapezoid rule over the curve (Quantus calculate_auc)"})
    return data, np.arange(1, n_steps + 1), fraction, extra


# --------------------------------------------------------------------------------------------------
# the evaluators
# --------------------------------------------------------------------------------------------------

def _chunks(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _resolve(evaluator: str, params: dict) -> dict:
    p = check_params(evaluator, params, DEFAULTS)
    conv = choice(evaluator, "convention", p["convention"], CONVENTIONS)
    choice(evaluator, "order", p["order"], ORDERS)
    quantus = conv == "quantus"
    if p["output"] is None:
        p["output"] = "probability" if quantus else "logit"
    if p["baseline"] is None:
        p["baseline"] = "black" if quantus else "uniform"
    if quantus and evaluator == "pixel_flipping" and p["patch_size"] is not None:
        raise MethodError(f"evaluator {evaluator!r}: Quantus's PixelFlipping flips single entries; patch_size "
                          f"applies to convention='samek2017' (or use region_perturbation)")
    if not (quantus and evaluator == "pixel_flipping"):
        if p["patch_size"] is None:
            p["patch_size"] = 8 if quantus else (1 if evaluator == "pixel_flipping" else 9)
        p["patch_size"] = positive_int(evaluator, "patch_size", p["patch_size"])
    p["steps"] = positive_int(evaluator, "steps", p["steps"], allow_none=True)
    p["features_in_step"] = positive_int(evaluator, "features_in_step", p["features_in_step"])
    if quantus and evaluator == "region_perturbation" and p["features_in_step"] != 1:
        raise MethodError(f"evaluator {evaluator!r}: Quantus's RegionPerturbation perturbs one region per step; "
                          f"features_in_step applies to pixel_flipping and to convention='samek2017'")
    p["repeats"] = positive_int(evaluator, "repeats", p["repeats"])
    p["batch_size"] = positive_int(evaluator, "batch_size", p["batch_size"])
    p["seed"] = seed_of(evaluator, p["seed"])
    for key, default in (("normalise", True), ("abs", False)):
        if p[key] is None:
            p[key] = default if quantus else None
        elif not quantus:
            raise MethodError(f"evaluator {evaluator!r}: {key} applies to convention='quantus' only")
        elif not isinstance(p[key], bool):
            raise MethodError(f"evaluator {evaluator!r}: {key} must be true or false, got {p[key]!r}")
    if p["relative_to_random"] is not None and not isinstance(p["relative_to_random"], bool):
        raise MethodError(f"evaluator {evaluator!r}: relative_to_random must be true or false, got "
                          f"{p['relative_to_random']!r}")
    if quantus and p["relative_to_random"] is None:
        p["relative_to_random"] = False
    if quantus and (p["blur_sigma"] is not None or callable(p["baseline"])):
        raise MethodError(f"evaluator {evaluator!r}: blur and function baselines belong to convention='samek2017'")
    return p


@dataclass
class Plan:
    """A perturbation run with its inputs checked and its chunks decided, before any perturbed input is
    run: the contract between the evaluator and whatever schedules it. One process (:func:`pixel_flipping`)
    runs :func:`run_chunk` on each chunk in turn; ``attribx.distributed`` runs one task per chunk on a dask
    cluster; both end in :func:`combine`, so a bad input is refused, and a number computed, the same way."""
    evaluator: str
    p: dict                      # the checked parameters
    runner: ModelRunner          # the model translated once (on a cluster's client: the graph sent to the workers)
    layout: _Layout
    x: Any                       # inputs in the model's layout (numpy; dask when planned lazily)
    xc: Any                      # the same as (sample, channel, height, width)
    rel: xr.DataArray
    path: str | None             # the relevance file, when the relevance was given as one
    rc: Any                      # the relevance as (sample, channel or 1, height, width), float
    targets: np.ndarray | None   # the classes given (or the relevance's); None: each chunk predicts its own
    chunks: list[slice]
    spec: ChunkSpec | None       # samek2017; None for convention="quantus" (one sequential random stream)
    info: dict                   # attrs describing the replacement values (samek2017)

    @property
    def relative(self) -> bool:
        return bool(self.spec.random_runs)

    def generators(self) -> tuple[np.random.Generator, np.random.Generator]:
        """The main and the reference run's generators, fresh; drawn from chunk after chunk."""
        return random_plan(self.p, self.spec.random_baseline)[1:3]

    def rng_states(self) -> list[tuple[dict, dict]]:
        """Each chunk's generator states where it starts, so that chunks run anywhere, in any order, draw what
        one process drawing chunk after chunk draws: the draws are replayed (cheap next to the model calls)."""
        spec = self.spec
        gens = self.generators()
        zeros = np.zeros((), self.xc.dtype)
        states = []
        for sl in self.chunks:
            states.append(tuple(copy.deepcopy(g.bit_generator.state) for g in gens))
            b = sl.stop - sl.start
            for rng, order, runs in ((gens[0], spec.order, spec.runs), (gens[1], "random", spec.random_runs)):
                for _ in range(runs):
                    _orders(np.zeros((b, spec.regions)), order, rng)
                    if spec.random_baseline:
                        spec.replace(np.broadcast_to(zeros, (b,) + tuple(self.xc.shape[1:])), rng)
        return states


def _inputs(inputs: Any, lazy: bool) -> Any:
    """Inputs as a finite float array: numpy, or dask left lazy when ``lazy`` (checked here all the same)."""
    if not (lazy and is_dask(inputs)):
        return as_numpy_inputs(inputs)
    if inputs.dtype.kind not in "fiub":
        raise InputError(f"inputs must be numeric, got dtype {inputs.dtype}")
    x = inputs if inputs.dtype.kind == "f" else inputs.astype(np.float32)
    if not bool(np.isfinite(x).all().compute()):
        raise InputError("inputs contain NaN or infinite values")
    return x


def _relevance_dims(evaluator: str, relevance: Any, layout: _Layout, x: Any) -> tuple | None:
    """The dims of a plain array of relevance (with or without the channel axis); None for anything labeled."""
    if isinstance(relevance, (xr.DataArray, xr.Dataset, str, os.PathLike)) or relevance is None:
        return None
    ndim = np.ndim(relevance)
    if ndim == len(layout.dims):
        return layout.dims
    if ndim == len(layout.dims) - 1:
        return tuple(d for d in layout.dims if d != "channel")
    raise InputError(f"evaluator {evaluator!r}: relevance has {ndim} axes, the inputs {x.ndim} (dims {layout.dims})")


def _given_targets(runner: ModelRunner, n: int, target: Any, rel: xr.DataArray) -> np.ndarray | None:
    """The classes given (``target``, else the relevance's ``target`` coord), checked; None when they are
    predicted (each chunk predicts its own: the same batches, so the same classes as all at once)."""
    if isinstance(target, str) and target == "predicted":
        return None
    if target is None:
        t = rel.coords["target"] if "target" in rel.coords else None
        if t is None or t.shape != (n,) or t.dtype.kind not in "iu":
            return None
    return runner.targets(np.zeros((n, 0)), target, rel)


def plan(evaluator: str, model: Any, inputs: Any, relevance: Any, params: dict, lazy: bool = False) -> Plan:
    """Check everything once (parameters, inputs against the model, relevance against the inputs: arrays,
    DataArrays, Datasets and files by ``str`` or ``os.PathLike`` path) and decide the chunks of
    ``batch_size`` samples. ``lazy``: dask inputs and relevance stay dask (each chunk is read where it runs)."""
    p = _resolve(evaluator, params)
    x = _inputs(inputs, lazy)
    runner = _model_runner(evaluator, _runner_args(p), model, x.shape[1:])
    layout = _Layout(evaluator, runner.dims)
    if x.ndim != len(layout.dims):
        raise InputError(f"evaluator {evaluator!r}: inputs have shape {x.shape}, the model expects dims {layout.dims}")
    rel, path = read_relevance(relevance, p["variable"], _relevance_dims(evaluator, relevance, layout, x))
    xc = layout.to_canon(x)
    rc = _canonical_relevance(evaluator, rel, layout, xc.shape)
    targets = _given_targets(runner, len(x), p["target"], rel)
    spec, info = (None, {}) if p["convention"] == "quantus" else _samek_spec(evaluator, p, layout, xc)
    return Plan(evaluator, p, runner, layout, x, xc, rel, path, rc, targets, _chunks(len(x), p["batch_size"]), spec,
                info)


def combine(plan: Plan, parts: Sequence[dict]) -> xr.Dataset:
    """The result Dataset from every chunk's :func:`run_chunk` output, in chunk order."""
    spec, n = plan.spec, len(plan.x)
    targets = np.concatenate([np.asarray(q["targets"]) for q in parts]).astype(np.int64)
    curve = np.concatenate([q["main"][0] for q in parts])
    fraction = np.zeros(spec.n_steps + 1, np.float64)
    for q in parts:
        fraction += q["main"][1]
    fraction = fraction / n
    f0 = curve[:, 0]
    aopc = (f0[:, None] - curve).mean(axis=1)
    data = {"curve": (("sample", "step"), curve), "aopc": (("sample",), aopc), "f0": (("sample",), f0.copy())}
    if plan.relative:
        curve_random = np.concatenate([q["random"][0] for q in parts])
        aopc_random = (curve_random[:, :1] - curve_random).mean(axis=1)
        data.update({"curve_random": (("sample", "step"), curve_random),
                     "aopc_random": (("sample",), aopc_random),
                     "aopc_relative": (("sample",), aopc - aopc_random)})
    extra = {"regions": spec.regions, "steps_run": spec.n_steps, "runs": spec.runs, "curve_quantity": "output",
             "aopc_definition": "1/(L+1) sum_{k=0..L} (f_0 - f_k)", **plan.info}
    return result_dataset(plan.evaluator, plan.p, plan.rel, plan.path, plan.runner, targets, data,
                          np.arange(spec.n_steps + 1), fraction, extra)


def _evaluate(evaluator: str, model, inputs, relevance, params: dict) -> xr.Dataset:
    """One process: plan, the chunks in turn, combine (quantus: its own sequential run)."""
    pl = plan(evaluator, model, inputs, relevance, params)
    p = pl.p
    desc = f"{evaluator} ({p['convention']}, {p['order']})"
    if pl.spec is None:
        targets = pl.targets if pl.targets is not None else pl.runner.targets(pl.x, "predicted")
        data, steps, fraction, extra = _quantus(evaluator, p, pl.runner, pl.layout, pl.xc, pl.rc, targets, desc)
        return result_dataset(evaluator, p, pl.rel, pl.path, pl.runner, targets, data, steps, fraction, extra)
    spec = pl.spec
    rngs = pl.generators()
    with Progress(len(pl.chunks) * (spec.runs + spec.random_runs) * (spec.n_steps + 1), desc,
                  p["progress_bar"]) as bar:
        parts = [run_chunk(spec, pl.runner, pl.x[sl], pl.rc[sl], None if pl.targets is None else pl.targets[sl],
                           rngs, bar) for sl in pl.chunks]
    return combine(pl, parts)


def random_plan(p: dict, random_baseline: bool) -> tuple:
    """samek2017's random streams and run counts (:meth:`Plan.rng_states` replays them): whether a
    random-order reference runs, the generators of the main and the reference runs (one seed, two
    independent streams), and how many runs each makes (repeated when anything is random)."""
    relative = p["relative_to_random"]
    if relative is None:
        relative = p["order"] != "random"
    main_rng, random_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(p["seed"]).spawn(2))
    runs = p["repeats"] if (random_baseline or p["order"] == "random") else 1
    random_runs = p["repeats"] if relative else 0
    return relative, main_rng, random_rng, runs, random_runs


def result_dataset(evaluator, p, rel, path, runner, targets, data, steps, fraction, extra) -> xr.Dataset:
    """The result Dataset of a perturbation run (both conventions): curves and
    AOPC per sample with their means in the attrs, coords from the relevance, provenance attrs."""
    n = len(targets)
    coords = {"sample": rel.coords["sample"].values if "sample" in rel.coords else np.arange(n),
              "target": ("sample", targets), "step": steps, "fraction": ("step", fraction)}
    if "label" in rel.coords and rel.coords["label"].dims == ("sample",):
        coords["label"] = ("sample", rel.coords["label"].values)
    stored = {k: v for k, v in p.items() if k not in ("progress_bar",)}
    attrs = result_attrs(evaluator, stored, relevance=rel, relevance_file=path, runner=runner, seed=p["seed"],
                         convention=p["convention"], order=p["order"], **extra)
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    for name in ("aopc", "aopc_random", "aopc_relative"):
        if name in ds:
            mean = float(ds[name].mean())
            ds.attrs[name] = mean
            ds[name].attrs["mean"] = mean
    if "auc" in ds:
        ds.attrs["auc"] = float(ds["auc"].mean())
    ds["curve"].attrs["quantity"] = extra["curve_quantity"]
    ds.attrs["method"] = rel.attrs.get("method") or ds.attrs.get("relevance_method")
    return ds


def pixel_flipping(model: Any = None, inputs: Any = None, relevance: Any = None, **params: Any) -> xr.Dataset:
    """Pixel flipping: perturb pixels (samek2017: all channels of a pixel; quantus: single entries) in the
    order the relevance gives and record the explained output. See the module docstring and
    ``docs/evaluators.md`` for the parameters and both conventions."""
    return _evaluate("pixel_flipping", model, inputs, relevance, params)


def region_perturbation(model: Any = None, inputs: Any = None, relevance: Any = None, **params: Any) -> xr.Dataset:
    """Region perturbation (Samek et al. 2017): perturb ``patch_size`` × ``patch_size`` regions in the
    order of their summed relevance and record the explained output. See the module docstring and
    ``docs/evaluators.md``."""
    return _evaluate("region_perturbation", model, inputs, relevance, params)
