"""``attribx benchmark``: methods × models × evaluators, as one tidy ``xarray.Dataset`` and tables and a plot.

The default run reproduces the comparison of Samek et al., "Evaluating the visualization of what a deep
neural network has learned" (IEEE TNNLS 2017): LRP against sensitivity (squared gradient), deconvnet
and a random heatmap, scored by pixel flipping (AOPC, the paper's convention ``samek2017``: most relevant
pixels first, replaced by uniform noise, 1 × 1 regions), on the digits CNN of
:mod:`attribx.datasets.digits` (trained here in seconds); without PyTorch on the scikit-learn digits MLP
of :func:`attribx.datasets.digits.digits_graph`.

Every (model, method) cell measures:

* ``aopc`` (image models): pixel-flipping AOPC = 1/(L+1) Σ_k (f_0 − f_k), mean over samples (higher:
  the relevance found what the output depends on); ``aopc_sem`` its standard error; ``curve`` the mean
  output after k perturbation steps;
* ``deletion_accuracy`` (token-id models): Arras et al.'s word deletion, the classifier's accuracy
  averaged over 1..K deletions of the most relevant words of correctly classified sentences (lower is
  better); ``deletion_curve`` the accuracy after k deletions;
* ``seconds_per_sample``: the median over ``repeats`` timed :func:`attribx.explain` calls over all samples
  (after one warm-up call; translation excluded), divided by their number; ``seconds_per_sample_runs`` every
  timed call;
* ``peak_allocated``: the peak of the memory the engine's allocator handed out during one explain call,
  above what was allocated before it: ``tracemalloc`` for the numpy engine (numpy reports its arrays to it),
  ``torch.cuda.max_memory_allocated`` for torch on CUDA, TF's allocator statistics for TensorFlow
  (:meth:`attribx.engines.Engine.allocated_peak`); NaN where no allocator reports its peak (torch on the CPU);
* ``peak_rss``: the peak rise of the process's resident memory during one explain call (Linux): the kernel's
  high-water mark ``VmHWM``, reset by writing ``5`` to ``/proc/self/clear_refs`` just before the call,
  minus ``VmRSS`` at that moment, after glibc handed its free heap back (``malloc_trim``) so that memory
  cached from earlier calls cannot hide the rise. It sees every allocator on the host (not GPU memory);
  where the reset is refused, the resident size sampled every millisecond; NaN off Linux;
* ``conservation_error`` (LRP methods only): mean over samples of |Σ input relevance − S| / |S| from
  ``explain(..., conservation=True)``, S the relevance the pass starts from (its ``score``, the logit); 0 for a
  conserving LRP rule without bias or stabiliser leaks. Gradient methods (``Method.family == "gradient"``:
  gradient, sensitivity, gradient × input, deconvnet, guided backprop, SmoothGrad, integrated gradients) do
  not decompose a score (their relevance sums to the logit only by accident of the network, e.g. gradient ×
  input on a bias-free ReLU net), so their cell is NaN and the tables print "n/a";
* ``rank``: 1 = best, by AOPC (image) or deletion accuracy (text), per model; ``error``: the message of a
  cell that failed ("" otherwise): a failure is recorded and the run goes on.

The Dataset is written with :func:`attribx.save` after every finished cell, so an interrupted or failed
run keeps what it finished.
"""
from __future__ import annotations

import base64
import ctypes
import dataclasses
import html
import importlib
import importlib.util
import os
import threading
import time
import tracemalloc
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import xarray as xr

from . import api      # called as api.explain etc., so that tests can time or stub the calls
from .arguments import parse_value
from .datasets.digits import digits_graph, load_digits_images, train_digits_cnn
from .datasets.sentiment import make_sentiment
from .datasets.text_model import train_sentiment_lstm
from .errors import AttribxError, InputError
from .evaluators.base import Progress
from .evaluators.plots import _figure
from .input_files import read_inputs
from .inputs import takes_indices
from .methods import as_method
from .plugins import registry
from .storage import save
from .version import __version__

#: Samek et al. 2017's comparison: LRP (two composites) vs sensitivity vs deconvnet vs a random heatmap.
DEFAULT_METHODS = ("lrp.epsilon", "lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "sensitivity", "deconvnet",
                   "random")
DEFAULT_EVALUATORS = ("pixel_flipping", "word_deletion", "runtime", "memory", "conservation")
EVALUATORS = DEFAULT_EVALUATORS
RANDOM = "random"


@dataclasses.dataclass
class Case:
    """One model to benchmark: the model (anything :func:`attribx.translate` takes), inputs, labels."""

    name: str
    model: Any
    inputs: np.ndarray
    labels: np.ndarray | None = None
    explain: dict = dataclasses.field(default_factory=dict)    # extra explain() keywords (pad_id, ...)
    evaluate: dict = dataclasses.field(default_factory=dict)   # extra evaluator keywords
    description: str = ""


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------

def digits_cnn_case(n: int = 128, steps: int = 80) -> Case:
    """The digits CNN trained on the first 1200 digits ([-1, 1] grey levels); ``n`` held-out test digits."""
    x, y = load_digits_images("signed")
    t0 = time.perf_counter()
    model = train_digits_cnn(x[:1200], y[:1200], steps=steps)
    import torch        # optional: this case needs it
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x[1200:])).argmax(1).numpy() == y[1200:]).mean())
    return Case("digits-cnn", model, x[1200:1200 + n], y[1200:1200 + n],
                description=f"attribx.datasets.digits CNN (torch), trained {time.perf_counter() - t0:.1f} s, "
                            f"held-out accuracy {acc:.3f}")


def digits_mlp_case(n: int = 128) -> Case:
    """The demo's scikit-learn MLP on the digits as an attribx graph (numpy only); ``n`` test digits."""
    graph, x, y, acc = digits_graph()
    return Case("digits-mlp", graph, x[:n], y[:n],
                description=f"attribx.datasets.digits.digits_graph (scikit-learn MLP, numpy graph), test accuracy "
                            f"{acc:.3f}")


def sentiment_lstm_case(n: int = 200) -> Case:
    """The bidirectional LSTM of :mod:`attribx.datasets.text_model` on generated sentences (token ids)."""
    data = make_sentiment(2000, seed=0)
    model, hist = train_sentiment_lstm(data, progress_bar=False)
    test = make_sentiment(n, seed=1)
    return Case("sentiment-lstm", model, test.ids, test.labels, explain={"pad_id": 0},
                description=f"attribx.datasets.text_model BiLSTM on make_sentiment (token ids), trained "
                            f"{hist.seconds:.1f} s, "
                            f"training accuracy {hist.accuracy[-1]:.3f}")


BUILTIN_MODELS: dict[str, Callable[..., Case]] = {
    "digits-cnn": digits_cnn_case, "digits-mlp": digits_mlp_case, "sentiment-lstm": sentiment_lstm_case}


def _torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def default_models() -> list[str]:
    """The digits CNN with PyTorch, else the numpy-graph digits MLP."""
    return ["digits-cnn"] if _torch_installed() else ["digits-mlp"]


def _from_provider(spec: str, out: Any) -> Case:
    if isinstance(out, Case):
        return out
    if isinstance(out, Mapping):
        known = {f.name for f in dataclasses.fields(Case)}
        extra = set(out) - known
        if extra or "model" not in out or "inputs" not in out:
            raise InputError(f"{spec}: the function must return a Case, (model, inputs[, labels]) or a dict with "
                             f"model and inputs (and optionally {', '.join(sorted(known - {'model', 'inputs'}))}); "
                             f"got keys {sorted(out)}")
        return Case(**{"name": spec, **out})
    if isinstance(out, tuple) and len(out) in (2, 3):
        return Case(spec, out[0], out[1], out[2] if len(out) == 3 else None)
    raise InputError(f"{spec}: the function must return a Case, (model, inputs[, labels]) or a dict; "
                     f"got {type(out).__name__}")


def resolve_model(spec: Any, n: int | None = None, inputs: str | None = None) -> Case:
    """A :class:`Case` from a built-in name (``digits-cnn``, ``digits-mlp``, ``sentiment-lstm``), an import
    path ``"pkg.module:function"`` (the function returns a Case, ``(model, inputs[, labels])`` or a dict),
    a model file with its inputs (``"model.onnx@inputs.npz"``, or ``inputs`` for all files), or a Case."""
    if isinstance(spec, Case):
        case = spec
    elif not isinstance(spec, str):
        raise InputError(f"a model is a name, an import path, a file or a Case; got {type(spec).__name__}")
    elif spec in BUILTIN_MODELS:
        case = BUILTIN_MODELS[spec](**({"n": n} if n else {}))
    else:
        path, _, data = spec.partition("@")
        if os.path.exists(path):
            data = data or inputs
            if not data:
                raise InputError(f"{spec}: a model file needs inputs: write {path}@inputs.npz or give --inputs")
            x, y = read_inputs(data)
            case = Case(os.path.basename(path), api.load_model(path), x, y, description=f"{path} on {data}")
        elif ":" in spec:
            mod, _, fn = spec.partition(":")
            try:
                func = getattr(importlib.import_module(mod), fn)
            except (ImportError, AttributeError) as err:
                raise InputError(f"{spec}: cannot import {fn!r} from {mod!r} ({err})") from None
            case = _from_provider(spec, func())
        else:
            raise InputError(f"{spec}: not a built-in model ({', '.join(BUILTIN_MODELS)}), an existing file, "
                             f"or an import path 'pkg.module:function'")
    if n is not None and len(case.inputs) > n:
        case = dataclasses.replace(case, inputs=case.inputs[:n],
                                   labels=None if case.labels is None else case.labels[:n])
    return case


# --------------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------------

def parse_method(spec: str) -> tuple[str, str, dict]:
    """``"name"`` or ``"name:key=value,key=value"`` (values as JSON) → (label, name, params)."""
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        k, sep, v = item.partition("=")
        if not sep:
            raise InputError(f"method {spec!r}: write name:key=value,key=value")
        params[k.strip()] = parse_value(v.strip())
    return spec, name.strip(), params


def _method_params(name: str, params: dict, x: np.ndarray) -> dict:
    """Box rules get the inputs' range as their bounds unless given."""
    if name == RANDOM:
        return params
    defaults = as_method(name, registry().methods).defaults
    out = dict(params)
    if "low" in defaults and "low" not in out:
        out["low"] = float(np.min(x))
    if "high" in defaults and "high" not in out:
        out["high"] = float(np.max(x))
    return out


#: written to by :class:`PeakRSS` to reset the kernel's resident-memory high-water mark (Linux >= 4.0)
_CLEAR_REFS = "/proc/self/clear_refs"


def _proc_status(key: str) -> int | None:
    """A memory line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _trim_heap() -> None:
    """Hand glibc's free heap memory back to the kernel, so that reusing it shows up as resident again."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """The peak rise (bytes) of the process's resident memory while the block runs, in ``.peak``.

    Linux: the kernel's high-water mark ``VmHWM`` is reset to the current ``VmRSS`` by writing ``5`` to
    ``/proc/self/clear_refs``; the peak is ``VmHWM`` at the end minus ``VmRSS`` at the reset. Free heap is
    handed back first (``malloc_trim``), so memory that glibc cached from earlier calls cannot hide the rise.
    Where the reset is refused, the resident size is sampled every millisecond instead (``.how`` says
    which: ``"VmHWM"`` or ``"sampled"``); off Linux ``.peak`` stays NaN.
    """

    def __init__(self):
        self.peak = float("nan")
        self.how = None
        self._thread = None

    def __enter__(self):
        _trim_heap()
        try:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")
            self.how = "VmHWM"
        except OSError:
            self.how = "sampled"
        self._base = _proc_status("VmRSS")
        if self.how == "VmHWM" and (_proc_status("VmHWM") or 2 ** 62) > (self._base or 0) + 2 ** 20:
            self.how = "sampled"        # the write was taken but the mark not reset (some sandboxed kernels)
        if self._base is None:
            self.how = None
        elif self.how == "sampled":
            self._max = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.001):
            r = _proc_status("VmRSS")
            if r is not None and r > self._max:
                self._max = r

    def __exit__(self, *exc):
        if self.how == "VmHWM":
            hwm = _proc_status("VmHWM")
            if hwm is not None:
                self.peak = float(max(hwm - self._base, 0))
        elif self.how == "sampled":
            self._stop.set()
            self._thread.join()
            self.peak = float(max(self._max, _proc_status("VmRSS") or 0) - self._base)


def _traced_peak(run: Callable[[], Any]) -> float:
    """The ``tracemalloc`` peak (bytes) above what was traced before, while ``run()`` runs."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        run()
        return float(tracemalloc.get_traced_memory()[1] - base)
    finally:
        if started:
            tracemalloc.stop()


def _cuda_device(eng) -> Any:
    """The CUDA device a torch engine computes on, else None."""
    if getattr(eng, "name", None) != "torch" or not hasattr(eng, "target_device"):
        return None
    dev = eng.target_device()
    return dev if getattr(dev, "type", None) == "cuda" else None


def measure_memory(eng, run: Callable[[], Any]) -> dict:
    """``peak_allocated`` and ``peak_rss`` (bytes, NaN where unmeasured) of ``run()``, an explain call on
    engine ``eng``: see the module docstring. The numpy engine is run twice (once under ``tracemalloc``,
    whose own bookkeeping would otherwise count as resident memory)."""
    out = {"peak_allocated": float("nan")}
    cuda = _cuda_device(eng)
    if cuda is not None:
        import torch    # optional: only with a CUDA engine
        torch.cuda.synchronize(cuda)
        torch.cuda.reset_peak_memory_stats(cuda)
        base = torch.cuda.memory_allocated(cuda)
    with PeakRSS() as rss:
        run()
        if cuda is not None:
            torch.cuda.synchronize(cuda)
    out["peak_rss"] = rss.peak
    if cuda is not None:
        out["peak_allocated"] = float(torch.cuda.max_memory_allocated(cuda) - base)
    elif getattr(eng, "name", None) == "numpy":
        out["peak_allocated"] = _traced_peak(run)
    else:
        peak = eng.allocated_peak(run) if hasattr(eng, "allocated_peak") else None
        out["peak_allocated"] = float("nan") if peak is None else float(peak)
    return out


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------

def _family(name: str) -> str:
    if name == RANDOM:
        return RANDOM
    return as_method(name, registry().methods).family


def _cell(case: Case, graph, is_text: bool, label: str, name: str, params: dict, evaluators: Sequence[str],
          engine: Any, batch_size: int | None, seed: int, repeats: int = 5) -> dict:
    """Every measurement of one (model, method) cell, as plain numbers and arrays."""
    x, y = case.inputs, case.labels
    target = y if (is_text and y is not None) else "predicted"
    kw = dict(batch_size=batch_size, labels=y, progress_bar=False, **case.explain)
    out: dict = {}
    if name == RANDOM:
        rng = np.random.default_rng(seed)
        ref = api.explain(graph, x, "gradient", target, engine=engine, **kw)
        rel = ref.copy(data=rng.uniform(-1.0, 1.0, ref.shape).astype(ref.dtype))
        if "padding" in rel.coords:
            rel = rel.where(~rel.coords["padding"], 0.0)
        rel.attrs.update(method=RANDOM, parameters={"seed": seed, "distribution": "uniform(-1, 1)"})
    else:
        params = _method_params(name, params, x)
        eng = api.get_engine(engine, graph)     # one instance for every call: measured on the device it uses
        run = lambda **extra: api.explain(graph, x, name, target, engine=eng, **kw, **extra, **params)  # noqa: E731
        rel = run()                                   # warm-up: kernels, caches, allocator
        if "runtime" in evaluators:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                run()
                times.append((time.perf_counter() - t0) / len(x))
            out["seconds_per_sample_runs"] = np.asarray(times)
            out["seconds_per_sample"] = float(np.median(times))
        if "memory" in evaluators:
            out.update(measure_memory(eng, run))
        if "conservation" in evaluators and _family(name) != "gradient":
            ds = run(conservation=True)
            total = ds["relevance"].sum([d for d in ds["relevance"].dims if d != "sample"]).values.astype(np.float64)
            score = ds["score"].values.astype(np.float64)
            out["conservation_error"] = float(np.mean(np.abs(total - score) / np.maximum(np.abs(score), 1e-12)))
    ev = dict(engine=engine, progress_bar=False, seed=seed, **case.evaluate)
    if batch_size:
        ev["batch_size"] = batch_size
    if "pixel_flipping" in evaluators and not is_text:
        res = api.evaluate("pixel_flipping", graph, x, rel, convention="samek2017", relative_to_random=False, **ev)
        a = res["aopc"].values
        out["aopc"] = float(a.mean())
        out["aopc_sem"] = float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")
        out["curve"] = res["curve"].mean("sample").values
    if "word_deletion" in evaluators and is_text:
        res = api.evaluate("word_deletion", graph, x, rel, labels=y, random_baseline=False, **ev)
        acc = res["accuracy"].values
        out["deletion_accuracy"] = float(acc[1:].mean())
        out["deletion_curve"] = acc
    return out


SCALARS = {
    "aopc": ("pixel-flipping AOPC (samek2017, most relevant first, uniform noise), mean over samples; higher is better",
             "output units"),
    "aopc_sem": ("standard error of the mean AOPC", "output units"),
    "deletion_accuracy": ("word deletion: accuracy averaged over 1..K deletions, most relevant first; lower is better",
                          "1"),
    "seconds_per_sample": ("median over the repeats of explain() wall time over all samples / samples (after a "
                           "warm-up call)", "s"),
    "peak_allocated": ("peak allocated during one explain() call above what was allocated before: tracemalloc "
                       "(numpy engine), torch.cuda.max_memory_allocated (torch on CUDA), TF's allocator statistics "
                       "(TensorFlow); NaN on other engines",
                       "bytes"),
    "peak_rss": ("peak rise of the process's resident memory during one explain() call (VmHWM after a reset "
                 "through /proc/self/clear_refs, minus VmRSS then)", "bytes"),
    "conservation_error": (("mean |sum of input relevance - starting relevance| / |starting relevance| (the "
                            "logit); NaN for gradient methods, which do not conserve relevance"), "1"),
}


def _dataset(results: dict, models: list[str], methods: list[str], info: dict, attrs: dict,
             families: list[str]) -> xr.Dataset:
    """The tidy Dataset from the finished cells (missing cells and measurements are NaN)."""
    shape = (len(models), len(methods))
    data = {}
    for var, (desc, unit) in SCALARS.items():
        vals = np.full(shape, np.nan)
        for (i, j), cell in results.items():
            if var in cell:
                vals[i, j] = cell[var]
        if not np.isnan(vals).all():
            data[var] = xr.DataArray(vals, dims=("model", "method"), attrs={"description": desc, "units": unit})
    for var, dim in (("curve", "step"), ("deletion_curve", "deletion"), ("seconds_per_sample_runs", "repeat")):
        n = max((len(c[var]) for c in results.values() if var in c), default=0)
        if n:
            vals = np.full(shape + (n,), np.nan)
            for (i, j), cell in results.items():
                if var in cell:
                    vals[i, j, :len(cell[var])] = cell[var]
            data[var] = xr.DataArray(vals, dims=("model", "method", dim), coords={dim: np.arange(n)})
    err = np.full(shape, "", dtype=object)
    for (i, j), cell in results.items():
        err[i, j] = cell.get("error", "")
    data["error"] = xr.DataArray(err.astype(str), dims=("model", "method"))
    if "seconds_per_sample_runs" in data:
        data["seconds_per_sample_runs"].attrs.update(
            description="explain() wall time over all samples / samples, every timed call (after a warm-up call)",
            units="s")
    ds = xr.Dataset(data, coords={"model": models, "method": methods, "family": ("method", families)},
                    attrs=attrs)
    ds = ds.assign(rank=_ranks(ds, info))
    ds["rank"].attrs["description"] = "1 = best per model: by AOPC (images, descending) or deletion accuracy (text)"
    ds.attrs["model_kind"] = [info[m]["kind"] for m in models]
    ds.attrs["model_description"] = [info[m]["description"] for m in models]
    return ds


def _ranks(ds: xr.Dataset, info: dict) -> xr.DataArray:
    rank = np.zeros((ds.sizes["model"], ds.sizes["method"]), np.int64)
    for i, m in enumerate(ds["model"].values):
        text = info[str(m)]["kind"] == "text"
        var = "deletion_accuracy" if text else "aopc"
        if var not in ds:
            continue
        v = ds[var].values[i]
        key = np.where(np.isnan(v), np.inf, v if text else -v)
        order = np.argsort(key, kind="stable")
        rank[i, order] = np.arange(1, len(v) + 1)
        rank[i, np.isnan(v)] = 0
    return xr.DataArray(rank, dims=("model", "method"))


def ranking(ds: xr.Dataset, model: str | None = None) -> list[str]:
    """The methods of ``model`` (default: the first) best first, as the Dataset's ``rank`` orders them."""
    r = ds["rank"].sel(model=model if model is not None else ds["model"].values[0])
    ranked = [(int(k), str(m)) for k, m in zip(r.values, r["method"].values) if k > 0]
    return [m for _, m in sorted(ranked)]


def run_benchmark(methods: Sequence[str] = DEFAULT_METHODS, models: Sequence[Any] | None = None,
                  evaluators: Sequence[str] = DEFAULT_EVALUATORS, *, n: int | None = 128, engine: Any = None,
                  batch_size: int | None = None, seed: int = 0, output: str | None = None,
                  inputs: str | None = None, progress_bar: bool | None = None, repeats: int = 5) -> xr.Dataset:
    """Run every method on every model with every evaluator; return (and, with ``output``, save after
    every cell) the tidy Dataset with dims ``(model, method)`` (and ``step`` / ``deletion`` for curves,
    ``repeat`` for the ``repeats`` timed explain calls of each cell, whose median is ``seconds_per_sample``);
    the coord ``family`` names each method's family (``lrp``, ``gradient``, ``random``)."""
    unknown = set(evaluators) - set(EVALUATORS)
    if unknown:
        raise InputError(f"unknown evaluator(s) {', '.join(sorted(unknown))}; choose from {', '.join(EVALUATORS)}")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise InputError(f"repeats must be a positive integer, got {repeats!r}")
    parsed = [parse_method(m) for m in methods]
    labels = [p[0] for p in parsed]
    if len(set(labels)) != len(labels):
        raise InputError(f"methods repeat: {labels}")
    families = []
    for _, name, _ in parsed:
        try:
            families.append(_family(name))
        except AttribxError:              # an unknown method: its cell records the error
            families.append("")
    cases, graphs, info = [], [], {}
    for spec in (models if models is not None else default_models()):
        case = resolve_model(spec, n, inputs)
        graph = api.translate(case.model, input_shape=np.asarray(case.inputs).shape[1:])
        kind = "text" if takes_indices(graph) else "image"
        if case.name in info:
            raise InputError(f"two models are named {case.name!r}")
        info[case.name] = {"kind": kind, "description": case.description or case.name}
        cases.append(case)
        graphs.append(graph)
    names = [c.name for c in cases]
    attrs = {"title": "attribx benchmark", "attribx_version": __version__, "evaluators": list(evaluators),
             "samples": [int(len(c.inputs)) for c in cases], "engine": str(engine or "default"), "seed": seed,
             "repeats": int(repeats),
             "reference": "Samek et al., Evaluating the visualization of what a deep neural network has learned, "
                          "IEEE TNNLS 2017", "pixel_flipping": "convention samek2017, 1x1 regions, most relevant "
                          "first, uniform noise over the data range, AOPC over k = 0..L"}
    results: dict = {}
    with Progress(len(cases) * len(parsed), "benchmark", progress_bar) as bar:
        try:
            for i, (case, graph) in enumerate(zip(cases, graphs)):
                for j, (label, name, params) in enumerate(parsed):
                    try:
                        results[i, j] = _cell(case, graph, info[case.name]["kind"] == "text", label, name, params,
                                              evaluators, engine, batch_size, seed, repeats)
                    except AttribxError as err:      # a method that does not apply: recorded, the run goes on
                        results[i, j] = {"error": f"{type(err).__name__}: {err}"}
                    bar.update()
                    if output:
                        save(_dataset(results, names, labels, info, attrs, families), output)
        finally:
            ds = _dataset(results, names, labels, info, attrs, families)
            if output and results:
                save(ds, output)
    return ds


# --------------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------------

COLUMNS = (("rank", "rank", "{:d}"), ("aopc", "AOPC ↑", "{:.3f}"), ("aopc_sem", "± SEM", "{:.3f}"),
           ("deletion_accuracy", "deletion acc. ↓", "{:.3f}"), ("seconds_per_sample", "ms / sample (median)", None),
           ("peak_allocated", "peak allocated (MiB)", None), ("peak_rss", "peak RSS rise (MiB)", None),
           ("conservation_error", "conservation error", "{:.2e}"))

#: what a table cell shows for a gradient method's conservation error (and the note under the table)
NOT_CONSERVING = "n/a"


def _fmt(var: str, fmt: str | None, v: Any) -> str:
    if var == "rank":
        return str(int(v)) if v else "–"
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if var == "seconds_per_sample":
        return f"{1e3 * v:.3f}"
    if var.startswith("peak"):
        return f"{v / 2 ** 20:.2f}"
    return fmt.format(v)


def table_notes(ds: xr.Dataset, model: str | None = None) -> list[str]:
    """The sentences printed under a model's table: what the runtime and memory columns measured and why a
    conservation error is missing."""
    sub = ds.sel(model=model if model is not None else ds["model"].values[0])
    notes = []
    if "seconds_per_sample" in ds and not np.isnan(sub["seconds_per_sample"].values).all():
        notes.append(f"ms / sample: the median of {ds.attrs.get('repeats', '?')} timed explain() calls over all "
                     f"samples (after a warm-up call), per sample.")
    if "peak_allocated" in ds and not np.isnan(sub["peak_allocated"].values).all():
        notes.append("peak allocated: the allocator's peak during one explain() call above what it held before "
                     "(tracemalloc on the numpy engine, torch.cuda.max_memory_allocated on CUDA, TF's allocator "
                     "statistics for TensorFlow).")
    if "peak_rss" in ds and not np.isnan(sub["peak_rss"].values).all():
        notes.append("peak RSS rise: the process's resident-memory high-water mark during one explain() call minus "
                     "its resident memory before (Linux VmHWM, reset through /proc/self/clear_refs); host memory "
                     "of every allocator, not GPU memory.")
    if "conservation_error" in ds and "family" in ds.coords and (ds["family"].values == "gradient").any():
        notes.append(f"conservation error {NOT_CONSERVING}: gradient methods do not conserve relevance, so no "
                     "error is computed for them.")
    return notes


def table_rows(ds: xr.Dataset) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per model: (model, header, rows in rank order) with the numbers formatted as the tables show them."""
    out = []
    gradient = ds["family"].values == "gradient" if "family" in ds.coords else np.zeros(ds.sizes["method"], bool)
    for m in ds["model"].values:
        sub = ds.sel(model=m)
        cols = [c for c in COLUMNS if c[0] in ds and not (c[0] != "rank" and np.isnan(sub[c[0]].values).all())]
        header = ["method"] + [c[1] for c in cols] + (["error"] if (sub["error"].values != "").any() else [])
        order = sorted(range(ds.sizes["method"]), key=lambda j: (int(sub["rank"].values[j]) or 10 ** 6, j))
        rows = []
        for j in order:
            row = [str(ds["method"].values[j])]
            for v, _, f in cols:
                na = v == "conservation_error" and gradient[j] and not sub["error"].values[j]
                row.append(NOT_CONSERVING if na else _fmt(v, f, sub[v].values[j].item()))
            if len(header) > len(cols) + 1:
                row.append(str(sub["error"].values[j]))
            rows.append(row)
        out.append((str(m), header, rows))
    return out


def markdown_table(ds: xr.Dataset) -> str:
    lines = []
    for k, (model, header, rows) in enumerate(table_rows(ds)):
        desc = ds.attrs.get("model_description", [""] * ds.sizes["model"])[k]
        lines += [f"### {model}", "", f"{desc}; {ds.attrs['samples'][k]} samples.", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
        notes = table_notes(ds, model)
        if notes:
            lines += [" ".join(notes), ""]
    return "\n".join(lines)


def html_report(ds: xr.Dataset, plot: str | None = None) -> str:
    parts = [("<!doctype html><html><head><meta charset='utf-8'><title>attribx benchmark</title><style>"
              "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
              "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
              "</style></head><body><h1>attribx benchmark</h1>"),
             (f"<p>{html.escape(ds.attrs.get('pixel_flipping', ''))}. Reference: "
              f"{html.escape(ds.attrs.get('reference', ''))}.</p>")]
    for k, (model, header, rows) in enumerate(table_rows(ds)):
        desc = ds.attrs.get("model_description", [""] * ds.sizes["model"])[k]
        parts.append(f"<h2>{html.escape(model)}</h2><p>{html.escape(desc)}; {ds.attrs['samples'][k]} samples.</p>"
                     "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
        notes = table_notes(ds, model)
        if notes:
            parts.append("<p><small>" + html.escape(" ".join(notes)) + "</small></p>")
    if plot:
        with open(plot, "rb") as f:
            parts.append(f"<p><img alt='benchmark plot' src='data:image/png;base64,"
                         f"{base64.b64encode(f.read()).decode()}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def plot_benchmark(ds: xr.Dataset):
    """Per model: a bar chart of the ranking score (AOPC or deletion accuracy, ±SEM) and the mean curves."""
    nm = ds.sizes["model"]
    fig = _figure((11, 3.8 * nm))
    axes = fig.subplots(nm, 2, squeeze=False)
    for i, m in enumerate(ds["model"].values):
        text = ds.attrs["model_kind"][i] == "text"
        var, curve = ("deletion_accuracy", "deletion_curve") if text else ("aopc", "curve")
        ax, cax = axes[i]
        if var in ds:
            v = ds[var].values[i]
            err = ds["aopc_sem"].values[i] if (not text and "aopc_sem" in ds) else None
            order = [j for j in np.argsort(np.where(np.isnan(v), np.inf, v if text else -v)) if not np.isnan(v[j])]
            meths = [str(ds["method"].values[j]) for j in order]
            ax.barh(meths[::-1], v[order][::-1], xerr=None if err is None else err[order][::-1],
                    color=["0.6" if s == RANDOM else "C0" for s in meths[::-1]])
            ax.set_xlabel("mean accuracy after 1..K deletions (lower is better)" if text
                          else "AOPC (higher is better)")
        ax.set_title(str(m))
        if curve in ds:
            for j, meth in enumerate(ds["method"].values):
                c = ds[curve].values[i, j]
                if not np.isnan(c).all():
                    cax.plot(np.arange(len(c)), c, label=str(meth), ls="--" if meth == RANDOM else "-")
            cax.set_xlabel("words deleted" if text else "pixels perturbed (most relevant first)")
            cax.set_ylabel("accuracy" if text else "explained output (mean)")
            cax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_reports(ds: xr.Dataset, out: str, stem: str = "benchmark") -> dict:
    """Markdown, HTML (the plot embedded) and PNG next to the HDF5 file; returns their paths."""
    paths = {k: os.path.join(out, f"{stem}.{k}") for k in ("md", "html", "png")}
    fig = plot_benchmark(ds)
    fig.savefig(paths["png"], dpi=110)
    with open(paths["md"], "w") as f:
        f.write("# attribx benchmark\n\n" + markdown_table(ds))
    with open(paths["html"], "w") as f:
        f.write(html_report(ds, paths["png"]))
    return paths


def main(out: str = "attribx-benchmark", methods: Sequence[str] | None = None, models: Sequence[str] | None = None,
         evaluators: Sequence[str] | None = None, **kw) -> xr.Dataset:
    """The command: run, write ``benchmark.h5`` / ``.md`` / ``.html`` / ``.png`` into ``out``, print the ranking."""
    os.makedirs(out, exist_ok=True)
    h5 = os.path.join(out, "benchmark.h5")
    ds = run_benchmark(methods or DEFAULT_METHODS, models, evaluators or DEFAULT_EVALUATORS, output=h5, **kw)
    paths = write_reports(ds, out)
    for i, m in enumerate(ds["model"].values):
        what = "deletion accuracy" if ds.attrs["model_kind"][i] == "text" else "AOPC"
        var = "deletion_accuracy" if what != "AOPC" else "aopc"
        rk = ranking(ds, str(m))
        if var in ds and rk:
            vals = ", ".join(f"{meth} {float(ds[var].sel({'model': m, 'method': meth})):.3f}" for meth in rk)
            print(f"{m}: ranking by {what}: {' > '.join(rk)}  ({vals})")
        for meth, e in zip(ds["method"].values, ds["error"].sel(model=m).values):
            if e:
                print(f"{m}: {meth} failed: {e}")
    print(f"results (HDF5): {h5}\ntable: {paths['md']}\nreport: {paths['html']}\nplot: {paths['png']}")
    return ds
