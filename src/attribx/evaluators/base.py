"""What every evaluator shares: reading relevance, parameter checks, provenance, batched model calls.

An evaluator is a callable ``f(model=None, inputs=None, relevance=None, **params) -> xarray.Dataset``
registered through the ``attribx_evaluators`` hook. The pieces here make every evaluator behave the
same way:

* :func:`read_relevance` takes a DataArray, a Dataset holding a ``relevance`` variable (or one named
  by ``variable``), a numpy array, or the path of a file written by :func:`attribx.save`, and returns
  a labeled DataArray and the file it came from (or None).
* :func:`check_params` overlays the user's parameters on the evaluator's defaults; an unknown name is
  a :class:`~attribx.errors.MethodError` that lists the accepted ones.
* :class:`ModelRunner` translates a model once and runs it through an engine in batches (any backend:
  the graph's own forward pass, :func:`attribx.forward`), with a tqdm bar on a terminal, returning the
  logits (the scores before a final softmax) or the softmax probabilities.
* :func:`result_attrs` writes the provenance every result carries: evaluator, parameters, seed, the
  relevance file and the method that made the relevance, the model's fingerprint, the engine, the
  attribx version. Results are ``xarray.Dataset`` objects that :func:`attribx.save` writes to HDF5.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import xarray as xr

from ..errors import InputError, MethodError
from ..api import get_engine, translate, forward
from ..batching import batches as _batches
from ..graph import layout_dims
from ..inputs import one_signal_input
from ..progress import progress
from ..storage import open_relevance
from ..targets import resolve_targets
from ..version import __version__

OUTPUTS = ("logit", "probability")


# --------------------------------------------------------------------------------------------------
# relevance and parameters
# --------------------------------------------------------------------------------------------------

def read_relevance(relevance: Any, variable: str | None = None, dims: Sequence[str] | None = None
                   ) -> tuple[xr.DataArray, str | None]:
    """(relevance as a labeled DataArray, absolute path of the file it was read from or None).

    ``relevance``: an ``xarray.DataArray``; an ``xarray.Dataset`` (its ``relevance`` variable, the one
    named ``variable``, or its only variable); a path to a file written by :func:`attribx.save`; or an
    array, labeled with ``dims`` (default: the layout's names by number of axes, as for a graph input).
    """
    path = None
    if isinstance(relevance, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(relevance))
        relevance = open_relevance(path, lazy=False)
    if relevance is None:
        raise InputError("this evaluator needs relevance (a DataArray, a Dataset, an array or a relevance file)")
    if isinstance(relevance, xr.Dataset):
        names = list(relevance.data_vars)
        if variable is None:
            if "relevance" in names:
                variable = "relevance"
            elif len(names) == 1:
                variable = names[0]
            else:
                raise InputError(f"the relevance holds several variables {names}; choose one with variable= (--variable "
                                 f"on the command line)")
        if variable not in names:
            raise InputError(f"the relevance has no variable {variable!r}; it holds {names}")
        da = relevance[variable]
        da = da.copy()
        da.attrs = {**relevance.attrs, **da.attrs}
        if variable != "relevance":
            da.attrs.setdefault("method", variable)
    elif isinstance(relevance, xr.DataArray):
        da = relevance
    else:
        if hasattr(relevance, "detach"):
            relevance = relevance.detach().cpu().numpy()
        try:
            arr = np.asarray(relevance)
        except Exception as err:
            raise InputError(f"relevance cannot be read as an array: {err}") from None
        if arr.dtype.kind not in "fiub" or arr.ndim < 1:
            raise InputError(f"relevance must be a numeric array with a sample axis, got dtype {arr.dtype}, "
                             f"shape {arr.shape}")
        names = tuple(dims) if dims is not None else layout_dims(None, arr.ndim)
        if len(names) != arr.ndim:
            raise InputError(f"relevance has shape {arr.shape} but {len(names)} dims {tuple(names)} were given")
        da = xr.DataArray(arr, dims=names, name="relevance")
    if "sample" not in da.dims:
        raise InputError(f"relevance has dims {da.dims}; it needs a 'sample' dim")
    if da.dtype.kind not in "fiub":
        raise InputError(f"relevance must be numeric, got dtype {da.dtype}")
    if da.chunks is not None:       # dask-backed: checked where it is computed (on the cluster, if one is the default)
        finite = bool(np.isfinite(da.data).all().compute())
    else:
        finite = bool(np.isfinite(np.asarray(da.values)).all())
    if not finite:
        raise InputError("relevance contains NaN or infinite values")
    return da, path


def check_params(evaluator: str, params: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """The defaults overlaid with ``params``; unknown names are a :class:`MethodError`."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise MethodError(f"evaluator {evaluator!r}: unknown parameter(s) {', '.join(unknown)}; it accepts "
                          f"{', '.join(sorted(defaults))}")
    return {**defaults, **params}


def choice(evaluator: str, name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``, else a :class:`MethodError` naming the choices."""
    if not isinstance(value, str) or value not in allowed:
        raise MethodError(f"evaluator {evaluator!r}: {name}={value!r}; use one of "
                          f"{', '.join(repr(a) for a in allowed)}")
    return value


def positive_int(evaluator: str, name: str, value: Any, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MethodError(f"evaluator {evaluator!r}: {name} must be a positive integer, got {value!r}")
    return int(value)


def jsonable(value: Any) -> Any:
    """A parameter value as something :func:`attribx.save` stores (callables by their qualified name)."""
    if value is None or isinstance(value, (bool, int, float, str, np.generic)):
        return value
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value if value.dtype.kind in "biuf" else value.astype(str)
    if callable(value):
        mod = getattr(value, "__module__", None) or ""
        name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None) or type(value).__name__
        return f"callable:{mod}.{name}" if mod else f"callable:{name}"
    return repr(value)


def seed_of(evaluator: str, seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MethodError(f"evaluator {evaluator!r}: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------------------------------
# provenance
# --------------------------------------------------------------------------------------------------

def result_attrs(evaluator: str, params: Mapping[str, Any], *, relevance: xr.DataArray | None = None,
                 relevance_file: str | None = None, runner: "ModelRunner | None" = None,
                 seed: int | None = None, **extra: Any) -> dict:
    """The attrs of an evaluator's result: what was evaluated, how, and on which model."""
    ra = dict(relevance.attrs) if relevance is not None else {}
    attrs: dict[str, Any] = {
        "evaluator": evaluator,
        "parameters": {k: jsonable(v) for k, v in params.items()},
        "seed": seed,
        "relevance_file": relevance_file,
        "relevance_method": ra.get("method"),
        "relevance_parameters": jsonable(ra.get("parameters")) if "parameters" in ra else None,
        "relevance_model_fingerprint": ra.get("model_fingerprint"),
        "attribx_version": __version__,
    }
    if "inputs_file" in ra:
        attrs["relevance_inputs_file"] = ra["inputs_file"]
    if runner is not None:
        attrs.update({
            "model_fingerprint": runner.graph.fingerprint(),
            "model_name": runner.graph.meta.get("name", "model"),
            "backend": runner.graph.meta.get("backend", "unknown"),
            "engine": runner.engine.name,
            "output": runner.output,
            "explained_output": runner.start,
        })
        rel_fp = ra.get("model_fingerprint")
        if rel_fp and rel_fp != attrs["model_fingerprint"]:
            warnings.warn(f"the relevance was computed on a model with fingerprint {rel_fp}, the evaluated model "
                          f"has {attrs['model_fingerprint']}: evaluating another model's relevance", stacklevel=3)
    attrs.update(extra)
    return attrs


# --------------------------------------------------------------------------------------------------
# model calls
# --------------------------------------------------------------------------------------------------

def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in ``z``'s dtype."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class ModelRunner:
    """A model translated once and run through an engine in batches.

    ``output="logit"`` returns the scores the methods explain (the graph's output, or the input of a
    final softmax node); ``"probability"`` their softmax. ``batch_size`` (None: everything at once)
    splits every call; ``progress_bar`` (None: on a terminal only) shows a tqdm bar per call when a
    call has more than one batch.
    """

    def __init__(self, model: Any, sample_shape: Sequence[int], engine: Any = None, output: str = "logit",
                 batch_size: int | None = None, progress_bar: bool | None = None, evaluator: str = "evaluator"):
        if model is None:
            raise InputError(f"evaluator {evaluator!r} needs a model")
        self.output = choice(evaluator, "output", output, OUTPUTS)
        self.batch_size = positive_int(evaluator, "batch_size", batch_size, allow_none=True)
        self.progress_bar = progress_bar
        self.graph = translate(model, input_shape=tuple(int(d) for d in sample_shape))
        one_signal_input(self.graph, f"evaluator {evaluator!r}")
        self.engine = get_engine(engine, self.graph)
        out = self.graph.output
        node = self.graph[out] if out in self.graph else None
        self.start = node.inputs[0] if node is not None and node.op == "softmax" else out
        self.calls = 0          # forward passes run (batches), for tests and benchmarks

    @property
    def dims(self) -> tuple[str, ...]:
        """The dims of the model's input (its layout)."""
        return tuple(self.graph.input.dims)

    def scores(self, x: np.ndarray, desc: str | None = None) -> np.ndarray:
        """The chosen output for every sample of ``x`` (numpy), run in batches."""
        n = len(x)
        chunks = _batches(n, self.batch_size)
        pieces = []
        bar = progress(chunks, len(chunks), desc or "forward", self.progress_bar if len(chunks) > 1 else False)
        for sl in bar:
            pieces.append(np.asarray(forward(self.graph, x[sl], engine=self.engine, output=self.start, passes=False)))
            self.calls += 1
        z = np.concatenate(pieces, axis=0)
        return softmax(z) if self.output == "probability" else z

    def target_scores(self, x: np.ndarray, targets: np.ndarray, desc: str | None = None) -> np.ndarray:
        """The chosen output of each sample's target class, shape (N,)."""
        z = self.scores(x, desc)
        if z.ndim != 2:
            raise InputError(f"the model's output has shape {z.shape}; evaluators need (N, classes) scores")
        targets = np.asarray(targets)
        return z[np.arange(len(z)), targets]

    def targets(self, x: np.ndarray, target: Any, relevance: xr.DataArray | None = None) -> np.ndarray:
        """The class each sample is evaluated for: ``target`` if given (an int, ints per sample or
        ``"predicted"``), else the relevance's ``target`` coord, else the predicted class."""
        if target is None and relevance is not None and "target" in relevance.coords:
            t = np.asarray(relevance.coords["target"].values)
            if t.shape == (len(x),) and t.dtype.kind in "iu":
                return t.astype(np.int64)
        if target is None:
            target = "predicted"
        if isinstance(target, str) and target == "predicted":
            z = self.scores(x, "predict")
            return resolve_targets("predicted", z)[0]
        t = np.asarray(target)
        if t.dtype.kind not in "iu":
            raise InputError(f"target must be an int, ints per sample or 'predicted', got {target!r}")
        if t.ndim == 0:
            t = np.full(len(x), int(t))
        if t.shape != (len(x),):
            raise InputError(f"target has shape {t.shape}; give one class per sample ({len(x)})")
        return t.astype(np.int64)


def is_dask(a: Any) -> bool:
    """Whether ``a`` is a dask collection (kept lazy, read chunk by chunk), without importing dask."""
    return type(a).__module__.split(".")[0] == "dask"


def host_array(inputs: Any, who: str = "this evaluator") -> np.ndarray:
    """Inputs as a numpy array of any dtype: torch and TensorFlow tensors copied to the host, DataArrays
    unwrapped; ``who`` names the caller in errors."""
    if inputs is None:
        raise InputError(f"{who} needs inputs")
    if hasattr(inputs, "detach"):
        inputs = inputs.detach().cpu().numpy()
    elif hasattr(inputs, "numpy") and not isinstance(inputs, np.ndarray):
        inputs = inputs.numpy()
    if isinstance(inputs, xr.DataArray):
        inputs = inputs.values
    try:
        return np.asarray(inputs)
    except Exception as err:
        raise InputError(f"{who}: inputs cannot be read as an array: {err}") from None


def as_numpy_inputs(inputs: Any) -> np.ndarray:
    """Inputs as a finite floating numpy array (torch and TensorFlow tensors are copied to the host)."""
    x = host_array(inputs)
    if x.dtype.kind not in "fiub":
        raise InputError(f"inputs must be numeric, got dtype {x.dtype}")
    if x.dtype.kind != "f":
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise InputError("inputs contain NaN or infinite values")
    return x


class Progress:
    """A progress bar over ``total`` units of work: tqdm on a terminal (or when ``enabled``), else silent."""

    def __init__(self, total: int, desc: str, enabled: bool | None = None):
        if enabled is None:
            enabled = total > 1 and sys.stderr.isatty()
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


Evaluator = Callable[..., xr.Dataset]
