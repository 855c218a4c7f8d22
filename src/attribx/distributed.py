"""Explain and evaluate on a ``dask.distributed`` cluster (issue 10): when one machine is not enough.

``scheduler`` is a scheduler address (``"tcp://host:8786"``), an int N (a ``LocalCluster`` of N worker
processes, one thread each, started and closed here, listening on 127.0.0.1 only, its dashboard too) or a
``distributed.Client``.

* :func:`explain_distributed` cuts the input into batches of ``batch_size`` samples, computes each
  batch on a worker (:func:`attribx.explain` there, the same call a single process makes per batch) and
  gathers the results in sample order, as they arrive, into one relevance (and one file with
  ``out_path``). The model is translated to an attribx :class:`~attribx.graph.Graph` once on the client,
  sent to every worker once (``Client.scatter(broadcast=True)``; not again by later calls on the same
  cluster while every worker holds it), and each worker prepares it once (a per-process cache keyed by
  the graph's fingerprint), so workers need no deep-learning framework
  unless the engine is one. At most ``2 × workers + 2`` batches are in flight, so the client's memory
  stays bounded by batches, not by the data set.
* :func:`pixel_flipping` / :func:`region_perturbation` schedule the evaluators of
  :mod:`attribx.evaluators.perturbation` (``convention="samek2017"``) on the cluster through their
  contract: the evaluator's ``plan`` (the checks a single process makes, on the client), one task per
  chunk of ``batch_size`` samples (``run_chunk``), ``combine`` on the client. The inputs and the
  relevance may be dask-backed (``attribx.open_relevance(path, lazy=True)``): each task reads only its
  chunk. Random orders and uniform noise use the random stream the single process uses: the plan
  replays the draws chunk by chunk (``Plan.rng_states``) and each task starts from its chunk's state,
  so the numbers equal the single-process run's.

* :func:`spray` schedules SpRAy the same way (:func:`attribx.evaluators.spray.plan`): the pooling
  (``features_chunk``, tasks reading blocks of the relevance) and the exact neighbour search
  (``neighbors_chunk``, tasks of query rows against all features) run on the cluster; the
  eigen-decomposition, the clustering and the prototypes (``analyse``) stay on the client.

Arrays arrive on a worker as views into dask's message frames, at any byte address; numpy takes other
kernels on unaligned float32 data and rounds differently (1 ulp). The graph's parameters
(:meth:`attribx.graph.Node.__setstate__`) and every array a task receives are therefore re-aligned
(:func:`attribx.graph.aligned_array`) before use, so a cluster reproduces the single process bit for bit.

Needs ``pip install 'attribx[distributed]'`` (dask and distributed).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import numpy as np
import xarray as xr

from .api import explain, get_engine, load_model, translate
from .errors import InputError, MethodError
from .evaluators import perturbation as P
from .evaluators import spray as S
from .evaluators.base import is_dask
from .graph import aligned_array
from .inputs import one_signal_input
from .streaming import StreamRun, open_source, opened_source, per_sample_slice, positive_batch_size

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
        # loopback only: the scheduler, the workers and the (unauthenticated) dashboard accept no connection
        # from another machine
        with LocalCluster(n_workers=scheduler, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
            yield client
        return
    with Client(scheduler) as client:
        yield client


def worker_loads(client) -> dict[str, int]:
    """How many times each worker prepared a model (for tests and benchmarks)."""
    return client.run(_loads)


def _loads():
    return LOADS["count"]


def _has_model(fingerprint: str) -> bool:
    return fingerprint in _MODELS


def _send_graph(client, graph):
    """The graph for the tasks: None when every worker already holds it (an earlier call on this cluster
    sent it; VGG16 is 553 MB), else a future of it scattered to every worker once."""
    fp = graph.fingerprint()
    have = client.run(_has_model, fp)
    if have and all(have.values()):
        return None
    return client.scatter(graph, broadcast=True, hash=False)


def _worker_graph(graph, fingerprint: str):
    """The graph prepared on this worker: once per fingerprint per process."""
    g = _MODELS.get(fingerprint)
    if g is None:
        if graph is None:
            raise RuntimeError(f"this worker joined after the model {fingerprint[:12]} was sent; run the call again")
        g = translate(graph, passes=False)      # already passed on the client: nothing to redo
        g.fingerprint()
        _MODELS[fingerprint] = g
        LOADS["count"] += 1
    return g


def _worker_engine(graph, fingerprint: str, engine: Any):
    """(graph, engine instance) on this worker; the engine made once per (model, engine name)."""
    g = _worker_graph(graph, fingerprint)
    key = (fingerprint, "engine", engine)
    eng = _RUNNERS.get(key)
    if eng is None:
        eng = _RUNNERS[key] = get_engine(engine, g)
    return g, eng


# --------------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------------

def _explain_batch(graph, fp, xb, ids, method, target, labels, engine, params):
    g, eng = _worker_engine(graph, fp, engine)
    return explain(g, aligned_array(xb), method, target, engine=eng, progress_bar=False, sample=ids, labels=labels,
                   **params)


def _in_order(client, graph_f, fp, batches, method, target, labels, engine, params, limit):
    """Submit ``(pos, ids, xb)`` batches (at most ``limit`` in flight) and yield the results in order."""
    pending = iter(batches)
    order: list = []                     # futures in submission (= sample) order

    def submit_next():
        item = next(pending, None)
        if item is None:
            return False
        pos, ids, xb = item
        stop = pos + len(xb)
        fut = client.submit(_explain_batch, graph_f, fp, np.asarray(xb), np.asarray(ids), method,
                            per_sample_slice(target, pos, stop), per_sample_slice(labels, pos, stop), engine,
                            params, pure=False)
        order.append(fut)
        return True

    for _ in range(limit):
        if not submit_next():
            break
    while order:
        head = order.pop(0)
        r = head.result()                # waits for this batch; the others keep running meanwhile
        head.release()
        submit_next()
        yield r


def _limit(client, max_in_flight):
    return max_in_flight or 2 * max(1, len(client.scheduler_info()["workers"])) + 2


def explain_dataset_distributed(model: Any, source: Any, out_path: Any, method: Any = "lrp.epsilon",
                                target: Any = "predicted", *, scheduler: Any = 2, batch_size: int = 256,
                                engine: Any = None, resume: bool = True, labels: Any = None,
                                progress_bar: bool | None = None, fingerprint: str | None = None,
                                attrs: dict | None = None, max_in_flight: int | None = None,
                                layers: Any = None, conservation: bool = False, **params: Any) -> dict:
    """:func:`attribx.streaming.explain_dataset` with the batches computed on a dask cluster: the same
    sources, the same resumable file (a run on the cluster continues a single-process file and back),
    the same result sample for sample. The client reads the batches and writes the file in sample order;
    the workers translate nothing (they get the graph) and run the engine (a name)."""
    if layers or conservation:
        raise MethodError("explain on a cluster writes the input relevance only; layers and conservation: "
                          "run attribx.explain_dataset in one process")
    if engine is not None and not isinstance(engine, str):
        raise MethodError("on a cluster, engine must be a name (engines are created on the workers)")
    batch_size = positive_batch_size(batch_size)
    with opened_source(source) as src:
        return _explain_dataset(model, src, out_path, method, target, scheduler, batch_size, engine, resume, labels,
                                progress_bar, fingerprint, attrs, max_in_flight, layers, conservation, params)


def _explain_dataset(model, src, out_path, method, target, scheduler, batch_size, engine, resume, labels,
                     progress_bar, fingerprint, attrs, max_in_flight, layers, conservation, params) -> dict:
    run = StreamRun(model, src, out_path, method, target, batch_size, engine, resume, labels, layers,
                    conservation, progress_bar, fingerprint, params)

    def batches():
        pos = run.start
        for ids, xb in src.batches(run.batch_size, run.start):
            yield pos, ids, xb
            pos += len(xb)

    try:
        with client_for(scheduler) as client:
            graph_f = _send_graph(client, run.graph)
            return run.write(_in_order(client, graph_f, run.graph.fingerprint(), batches(), run.method, target,
                                       labels, run.engine.name, params, _limit(client, max_in_flight)), attrs)
    except BaseException:
        run.abort()      # also when the cluster cannot be reached
        raise


def explain_distributed(model: Any, x: Any, method: Any = "lrp.epsilon", target: Any = "predicted", *,
                        scheduler: Any = 2, batch_size: int = 64, engine: Any = None, labels: Any = None,
                        max_in_flight: int | None = None, **params: Any) -> xr.DataArray:
    """Explain ``x`` (anything :func:`attribx.streaming.open_source` takes) on a dask cluster and return
    the relevance in sample order, in memory; equals ``attribx.explain(model, x, ..., batch_size=...)``.
    For data sets larger than memory use :func:`explain_dataset_distributed` (into a file)."""
    if params.get("layers") or params.get("conservation"):
        raise MethodError("explain on a cluster returns the input relevance only; layers and conservation: "
                          "use attribx.explain")
    if engine is not None and not isinstance(engine, str):
        raise MethodError("on a cluster, engine must be a name (engines are created on the workers)")
    src = open_source(x)
    graph = translate(load_model(model), input_shape=src.sample_shape())
    one_signal_input(graph, "explain on a dask cluster")
    eng_name = get_engine(engine, graph).name

    def batches():
        pos = 0
        for ids, xb in src.batches(int(batch_size), 0):
            yield pos, ids, xb
            pos += len(xb)

    with client_for(scheduler) as client:
        graph_f = _send_graph(client, graph)
        done = list(_in_order(client, graph_f, graph.fingerprint(), batches(), method, target, labels, eng_name,
                              params, _limit(client, max_in_flight)))
    if not done:
        raise InputError("input has no samples")
    return xr.concat(done, dim="sample", combine_attrs="override")


# --------------------------------------------------------------------------------------------------
# pixel flipping / region perturbation
# --------------------------------------------------------------------------------------------------

def _worker_runner(graph, fp, sample_shape, spec):
    """The evaluator's model runner on this worker: once per (model, runner arguments) per process."""
    key = (fp, "runner", tuple(sorted(spec.runner_args.items())))
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = _RUNNERS[key] = spec.runner(_worker_graph(graph, fp), sample_shape)
    return runner


def _rng_from(state):
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


def _pf_chunk(graph, fp, spec, xb, rb, tb, states):
    """One chunk of a perturbation run: :func:`attribx.evaluators.perturbation.run_chunk` on this worker."""
    spec = dataclasses.replace(spec, rid=aligned_array(spec.rid))
    runner = _worker_runner(graph, fp, xb.shape[1:], spec)
    return P.run_chunk(spec, runner, aligned_array(xb), aligned_array(rb), tb, tuple(_rng_from(s) for s in states))


def _evaluate(evaluator: str, model, inputs, relevance, scheduler, params: dict) -> xr.Dataset:
    """The evaluator's plan (the checks a single process makes, inputs and relevance kept lazy), one task per
    chunk, the chunks combined on the client."""
    plan = P.plan(evaluator, model, inputs, relevance, params, lazy=True)
    p = plan.p
    if plan.spec is None:
        raise MethodError(f"evaluator {evaluator!r} on a cluster: convention='samek2017' only (Quantus's draws "
                          f"follow the perturbed images); run convention='quantus' in one process")
    if callable(p["baseline"]):
        raise MethodError(f"evaluator {evaluator!r} on a cluster: a function baseline runs in one process only")
    if p["engine"] is not None and not isinstance(p["engine"], str):
        raise MethodError("on a cluster, engine must be a name (engines are created on the workers)")
    states = plan.rng_states()
    graph = plan.runner.graph
    with client_for(scheduler) as client:
        graph_f = _send_graph(client, graph)
        spec_f = client.scatter(plan.spec, broadcast=True, hash=False)
        futures = []
        for sl, state in zip(plan.chunks, states):
            xb, rb = plan.x[sl], plan.rc[sl]
            xb = client.compute(xb) if is_dask(xb) else np.asarray(xb)
            rb = client.compute(rb) if is_dask(rb) else rb
            tb = None if plan.targets is None else plan.targets[sl]
            futures.append(client.submit(_pf_chunk, graph_f, graph.fingerprint(), spec_f, xb, rb, tb, state,
                                         pure=False))
        parts = client.gather(futures)
    return P.combine(plan, parts)


def pixel_flipping(model: Any = None, inputs: Any = None, relevance: Any = None, *, scheduler: Any = 2,
                   **params: Any) -> xr.Dataset:
    """:func:`attribx.evaluators.perturbation.pixel_flipping` (samek2017) with one task per chunk of
    ``batch_size`` samples on a dask cluster; the same numbers as the single-process run."""
    return _evaluate("pixel_flipping", model, inputs, relevance, scheduler, params)


def region_perturbation(model: Any = None, inputs: Any = None, relevance: Any = None, *, scheduler: Any = 2,
                        **params: Any) -> xr.Dataset:
    """:func:`attribx.evaluators.perturbation.region_perturbation` (samek2017) on a dask cluster."""
    return _evaluate("region_perturbation", model, inputs, relevance, scheduler, params)


# --------------------------------------------------------------------------------------------------
# SpRAy: pooling and the exact neighbour search on the cluster
# --------------------------------------------------------------------------------------------------

def _features_block(block, start, layout, channels, normalize):
    return S.features_chunk(aligned_array(block), start, layout, channels, normalize)


def _neighbors_block(features, a, b, k):
    return S.neighbors_chunk(aligned_array(features), a, b, k)


def spray(model: Any = None, inputs: Any = None, relevance: Any = None, *, scheduler: Any = 2,
          **params: Any) -> xr.Dataset:
    """:func:`attribx.evaluators.spray.spray` with the pooling (one task per block of samples, each reading
    its block of a lazily opened relevance file) and the exact neighbour search (one task per 2048 query
    rows against all features) on a dask cluster; the eigen-decomposition and the clustering run on the
    client. The same checks and the same result as the single-process run."""
    sp = S.plan(relevance, params)
    p = sp.p
    timings: dict[str, float] = {}
    with client_for(scheduler) as client:
        t = time.perf_counter()
        heatmaps, blocks = sp.heatmaps(), sp.blocks()
        futures = []
        for sl in blocks:
            data = heatmaps.isel(sample=sl).data
            block = client.compute(data) if is_dask(data) else np.asarray(data)
            futures.append(client.submit(_features_block, block, sl.start, sp.layout, p["channels"], p["normalize"],
                                         pure=False))
        features, factors = S.combine_features(sp.n, sp.layout, zip(blocks, client.gather(futures)), p["normalize"])
        timings["features"] = time.perf_counter() - t
        t = time.perf_counter()
        if p["approximate"]:                         # pynndescent: one process
            affinity = S.knn_affinity(features, p["n_neighbors"], approximate=True, seed=p["seed"])
        else:
            f = client.scatter(features, broadcast=True, hash=False)
            futures = [client.submit(_neighbors_block, f, a, b, p["n_neighbors"], pure=False)
                       for a, b in sp.neighbor_rows()]
            affinity = S.affinity_from_neighbors(np.concatenate(client.gather(futures)))
        timings["knn"] = time.perf_counter() - t
    return S.analyse(sp, features, factors, affinity, timings)
