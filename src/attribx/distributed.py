"""Explain and evaluate on a ``dask.distributed`` cluster (issue 10): when one machine is not enough.

``scheduler`` is a scheduler address (``"tcp://host:8786"``), an int N (a ``LocalCluster`` of N worker
processes, one thread each, started and closed here) or a ``distributed.Client``.

* :func:`explain_distributed` cuts the input into batches of ``batch_size`` samples, computes each
  batch on a worker (:func:`attribx.explain` there, the same call a single process makes per batch) and
  gathers the results in sample order, as they arrive, into one relevance (and one file with
  ``out_path``). The model is translated to an attribx :class:`~attribx.graph.Graph` once on the client,
  sent to every worker once (``Client.scatter(broadcast=True)``), and each worker prepares it once
  (a per-process cache keyed by the graph's fingerprint), so workers need no deep-learning framework
  unless the engine is one. At most ``2 × workers + 2`` batches are in flight, so the client's memory
  stays bounded by batches, not by the data set.
* :func:`pixel_flipping` / :func:`region_perturbation` run the evaluators of
  :mod:`attribx.evaluators.perturbation` (``convention="samek2017"``) with one task per chunk of
  ``batch_size`` samples; the relevance may be dask-backed (``attribx.open_relevance(path, lazy=True)``):
  each task reads only its chunk. Random orders and uniform noise use the random stream the single
  process uses: the client replays the draws chunk by chunk (cheap next to the model calls) and hands
  each task the generator's state at its chunk's start, so the numbers equal the single-process run's.

Needs ``pip install 'attribx[distributed]'`` (dask and distributed).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import xarray as xr

from .errors import InputError, MethodError

#: Per worker process: fingerprint -> prepared graph; and how many times a model was prepared here.
_MODELS: dict[str, Any] = {}
_RUNNERS: dict[tuple, Any] = {}
LOADS = {"count": 0}


def _require():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ImportError("running on a dask cluster needs dask's distributed: pip install 'attribx[distributed]'") \
            from None


@contextlib.contextmanager
def client_for(scheduler: Any):
    """A ``distributed.Client`` for ``scheduler`` (address, int N for a local cluster of N processes, or a
    Client, which is used as is and left open); a cluster started here is closed on exit."""
    _require()
    from distributed import Client, LocalCluster
    if isinstance(scheduler, Client):
        yield scheduler
        return
    if isinstance(scheduler, str) and scheduler.strip().isdigit():
        scheduler = int(scheduler)
    if isinstance(scheduler, bool) or not isinstance(scheduler, (int, str)):
        raise InputError(f"scheduler must be an address ('tcp://host:port'), a number of local workers or a "
                         f"distributed.Client, got {scheduler!r}")
    if isinstance(scheduler, int):
        if scheduler < 1:
            raise InputError(f"scheduler: a local cluster needs at least 1 worker, got {scheduler}")
        with LocalCluster(n_workers=scheduler, threads_per_worker=1, processes=True, dashboard_address=None) \
                as cluster, Client(cluster) as client:
            yield client
        return
    with Client(scheduler) as client:
        yield client


def worker_loads(client) -> dict[str, int]:
    """How many times each worker prepared a model (for tests and benchmarks)."""
    return client.run(_loads)


def _loads():
    return LOADS["count"]


def _worker_graph(graph, fingerprint: str):
    """The graph prepared on this worker: once per fingerprint per process."""
    g = _MODELS.get(fingerprint)
    if g is None:
        from .api import translate
        g = translate(graph, passes=False)      # already passed on the client: nothing to redo
        g.fingerprint()
        _MODELS[fingerprint] = g
        LOADS["count"] += 1
    return g


def _ship_model(client, model: Any, sample_shape: tuple):
    """Translate on the client and send the graph to every worker once: (future, fingerprint, graph)."""
    from .api import translate
    graph = translate(model, input_shape=tuple(int(d) for d in sample_shape))
    fp = graph.fingerprint()
    return client.scatter(graph, broadcast=True, hash=False), fp, graph


# --------------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------------

def _explain_batch(graph, fp, xb, start, method, target, engine, params):
    from .api import explain
    g = _worker_graph(graph, fp)
    r = explain(g, xb, method, target, engine=engine, progress_bar=False,
                sample=np.arange(start, start + len(xb)), **params)
    return start, r


def explain_distributed(model: Any, x: Any, method: Any = "lrp.epsilon", target: Any = "predicted", *,
                        scheduler: Any = 2, batch_size: int = 64, engine: Any = None, out_path: Any = None,
                        labels: Any = None, progress_bar: bool | None = None, max_in_flight: int | None = None,
                        **params: Any) -> xr.DataArray:
    """Explain ``x`` (anything with ``len`` and slicing along samples: a numpy array or memory map, an
    h5py or dask array) on a dask cluster, batch by batch, and return the relevance in sample order
    (also written to ``out_path`` when given). Equals ``attribx.explain(model, x, ..., batch_size=...)``.

    ``engine`` is a name (engines are created on the workers). Layers and conservation are not supported
    here (they return Datasets); ask :func:`attribx.explain` for those.
    """
    from distributed import as_completed

    from .api import _batch_target, _batches, progress
    if params.get("layers") or params.get("conservation"):
        raise MethodError("explain on a cluster returns the input relevance only; layers and conservation: "
                          "use attribx.explain")
    if engine is not None and not isinstance(engine, str):
        raise MethodError("on a cluster, engine must be a name (engines are created on the workers)")
    n = len(x)
    if n == 0:
        raise InputError("input has no samples")
    chunks = _batches(n, batch_size)
    results: dict[int, xr.DataArray] = {}
    done: list[xr.DataArray] = []
    with client_for(scheduler) as client:
        first = np.asarray(x[0:1])
        graph_f, fp, _ = _ship_model(client, model, first.shape[1:])
        limit = max_in_flight or 2 * max(1, len(client.scheduler_info()["workers"])) + 2
        pending = iter(chunks)
        ac = as_completed()

        def submit_next():
            sl = next(pending, None)
            if sl is None:
                return
            xb = np.asarray(x[sl])
            ac.add(client.submit(_explain_batch, graph_f, fp, xb, sl.start, method,
                                 _batch_target(target, sl, n), engine, params, pure=False))

        for _ in range(limit):
            submit_next()
        bar = progress(range(len(chunks)), len(chunks), "explain (dask)", progress_bar)
        bar_iter = iter(bar)
        next_start = 0
        for fut in ac:
            start, r = fut.result()
            fut.release()
            results[start] = r
            while next_start in results:            # hand on in sample order, as soon as it can
                piece = results.pop(next_start)
                done.append(piece)
                next_start += piece.sizes["sample"]
                next(bar_iter, None)
            submit_next()
    out = xr.concat(done, dim="sample", combine_attrs="override")
    if labels is not None:
        out = out.assign_coords(label=("sample", np.asarray(labels)))
    if out_path is not None:
        from .storage import save
        save(out, out_path)
    return out


# --------------------------------------------------------------------------------------------------
# pixel flipping / region perturbation
# --------------------------------------------------------------------------------------------------

class _NoBar:
    def update(self, n=1):
        pass


def _worker_runner(graph, fp, sample_shape, engine, output, batch_size, evaluator):
    from .evaluators.base import ModelRunner
    g = _worker_graph(graph, fp)
    key = (fp, engine, output, batch_size)
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = ModelRunner(g, sample_shape, engine=engine, output=output, batch_size=batch_size,
                             progress_bar=False, evaluator=evaluator)
        _RUNNERS[key] = runner
    return runner


def _rng_from(state):
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


def _pf_chunk(graph, fp, spec, xb, rb, tb, states):
    """One chunk: targets (when predicted), region scores, the curves of the main and the random runs."""
    from .evaluators.perturbation import _Layout, _region_scores, _samek_chunk
    runner = _worker_runner(graph, fp, xb.shape[1:], spec["engine"], spec["output"], spec["batch_size"],
                            spec["evaluator"])
    layout = _Layout(spec["evaluator"], runner.dims)
    if tb is None:
        tb = runner.targets(xb, "predicted")
    xc = layout.to_canon(xb)
    rb = np.asarray(rb)
    if rb.dtype.kind != "f":
        rb = rb.astype(np.float64)
    scores = _region_scores(rb, spec["patch"])
    out = {"targets": tb}
    for key, order, runs, state in (("main", spec["order"], spec["runs"], states[0]),
                                    ("random", "random", spec["random_runs"], states[1])):
        if runs:
            out[key] = _samek_chunk(runner, layout, xc, tb, scores, spec["rid"], order, spec["fis"],
                                    spec["n_steps"], spec["replace"], _rng_from(state), runs, _NoBar())
    return out


def _replay_states(rng, chunks, runs, order, random_baseline, replace, regions, shape_c, dtype):
    """The generator's state at each chunk's start, replaying the single process's draws chunk by chunk."""
    from .evaluators.perturbation import _orders
    states = []
    for sl in chunks:
        states.append(copy.deepcopy(rng.bit_generator.state))
        b = sl.stop - sl.start
        for _ in range(runs):
            _orders(np.zeros((b, regions)), order, rng)
            if random_baseline:
                replace(np.broadcast_to(np.zeros((), dtype), (b,) + tuple(shape_c[1:])), rng)
    return states


def _evaluate(evaluator: str, model, inputs, relevance, scheduler, params: dict) -> xr.Dataset:
    from .evaluators import perturbation as P
    from .evaluators.base import ModelRunner, as_numpy_inputs, read_relevance, result_attrs
    p = P._resolve(evaluator, params)
    if p["convention"] != "samek2017":
        raise MethodError(f"evaluator {evaluator!r} on a cluster: convention='samek2017' only (Quantus's draws "
                          f"follow the perturbed images); run convention='quantus' in one process")
    if callable(p["baseline"]):
        raise MethodError(f"evaluator {evaluator!r} on a cluster: a function baseline runs in one process only")
    if p["engine"] is not None and not isinstance(p["engine"], str):
        raise MethodError("on a cluster, engine must be a name (engines are created on the workers)")
    lazy_x = P._is_dask(inputs)
    x = inputs if lazy_x else as_numpy_inputs(inputs)
    if lazy_x and x.dtype.kind != "f":
        x = x.astype(np.float32)
    runner = ModelRunner(model, x.shape[1:], engine=p["engine"], output=p["output"], batch_size=p["batch_size"],
                         progress_bar=False, evaluator=evaluator)
    layout = P._Layout(evaluator, runner.dims)
    if x.ndim != len(layout.dims):
        raise InputError(f"evaluator {evaluator!r}: inputs have shape {x.shape}, the model expects dims {layout.dims}")
    rel_dims = None
    if not isinstance(relevance, (xr.DataArray, xr.Dataset, str)) and relevance is not None:
        ndim = np.ndim(relevance)
        rel_dims = layout.dims if ndim == len(layout.dims) else \
            tuple(d for d in layout.dims if d != "channel")
    rel, path = read_relevance(relevance, p["variable"], rel_dims)
    xc = layout.to_canon(x)
    n, c, h, w = xc.shape
    rc = P._canonical_relevance(evaluator, rel, layout, xc.shape)
    # targets: given, else the relevance's coord, else predicted (on the workers)
    targets = None
    if p["target"] is not None or ("target" in rel.coords and rel.coords["target"].shape == (n,)
                                   and rel.coords["target"].dtype.kind in "iu"):
        if not (isinstance(p["target"], str) and p["target"] == "predicted"):
            targets = runner.targets(np.zeros((n, 0)), p["target"], rel)
    patch = p["patch_size"]
    if patch > h or patch > w:
        raise MethodError(f"evaluator {evaluator!r}: patch_size {patch} is larger than the image ({h} × {w})")
    rid, regions = P._grid(h, w, patch)
    fis = p["features_in_step"]
    possible = -(-regions // fis)
    n_steps = min(100, possible) if p["steps"] is None else p["steps"]
    if n_steps > possible:
        raise MethodError(f"evaluator {evaluator!r}: steps={n_steps}, but {regions} regions of {patch} × {patch} "
                          f"({fis} per step) are gone after {possible} steps")
    replace, random_baseline, info = P._replacement_fn(evaluator, p, xc, layout)
    relative = p["relative_to_random"]
    if relative is None:
        relative = p["order"] != "random"
    main_rng, random_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(p["seed"]).spawn(2))
    runs = p["repeats"] if (random_baseline or p["order"] == "random") else 1
    random_runs = p["repeats"] if relative else 0
    chunks = P._chunks(n, p["batch_size"])
    s_main = _replay_states(main_rng, chunks, runs, p["order"], random_baseline, replace, regions, xc.shape, xc.dtype)
    s_rand = _replay_states(random_rng, chunks, random_runs, "random", random_baseline, replace, regions, xc.shape,
                            xc.dtype)
    spec = {"evaluator": evaluator, "engine": p["engine"], "output": p["output"], "batch_size": p["batch_size"],
            "patch": patch, "rid": rid, "order": p["order"], "fis": fis, "n_steps": n_steps, "replace": replace,
            "runs": runs, "random_runs": random_runs}
    with client_for(scheduler) as client:
        graph_f, fp, _ = _ship_model(client, model, x.shape[1:])
        spec_f = client.scatter(spec, broadcast=True, hash=False)
        futures = []
        for i, sl in enumerate(chunks):
            xb = x[sl]
            rb = rc[sl]
            xb = client.compute(xb) if lazy_x else np.asarray(xb)
            rb = client.compute(rb) if P._is_dask(rb) else rb
            tb = None if targets is None else targets[sl]
            futures.append(client.submit(_pf_chunk, graph_f, fp, spec_f, xb, rb, tb, (s_main[i], s_rand[i]),
                                         pure=False))
        parts = client.gather(futures)
    targets = np.concatenate([np.asarray(q["targets"]) for q in parts]).astype(np.int64)
    curve = np.concatenate([q["main"][0] for q in parts])
    fraction = np.zeros(n_steps + 1, np.float64)
    for q in parts:
        fraction += q["main"][1]
    fraction = fraction / n
    f0 = curve[:, 0]
    aopc = (f0[:, None] - curve).mean(axis=1)
    data = {"curve": (("sample", "step"), curve), "aopc": (("sample",), aopc), "f0": (("sample",), f0.copy())}
    if relative:
        curve_random = np.concatenate([q["random"][0] for q in parts])
        aopc_random = (curve_random[:, :1] - curve_random).mean(axis=1)
        data.update({"curve_random": (("sample", "step"), curve_random),
                     "aopc_random": (("sample",), aopc_random),
                     "aopc_relative": (("sample",), aopc - aopc_random)})
    extra = {"regions": regions, "steps_run": n_steps, "runs": runs, "curve_quantity": "output",
             "aopc_definition": "1/(L+1) sum_{k=0..L} (f_0 - f_k)", **info}
    coords = {"sample": rel.coords["sample"].values if "sample" in rel.coords else np.arange(n),
              "target": ("sample", targets), "step": np.arange(n_steps + 1), "fraction": ("step", fraction)}
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
    ds["curve"].attrs["quantity"] = extra["curve_quantity"]
    ds.attrs["method"] = rel.attrs.get("method") or ds.attrs.get("relevance_method")
    return ds


def pixel_flipping(model: Any = None, inputs: Any = None, relevance: Any = None, *, scheduler: Any = 2,
                   **params: Any) -> xr.Dataset:
    """:func:`attribx.evaluators.perturbation.pixel_flipping` (samek2017) with one task per chunk of
    ``batch_size`` samples on a dask cluster; the same numbers as the single-process run."""
    return _evaluate("pixel_flipping", model, inputs, relevance, scheduler, params)


def region_perturbation(model: Any = None, inputs: Any = None, relevance: Any = None, *, scheduler: Any = 2,
                        **params: Any) -> xr.Dataset:
    """:func:`attribx.evaluators.perturbation.region_perturbation` (samek2017) on a dask cluster."""
    return _evaluate("region_perturbation", model, inputs, relevance, scheduler, params)
