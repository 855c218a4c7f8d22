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
* :func:`pixel_flipping` / :func:`region_perturbation` run the evaluators of
  :mod:`attribx.evaluators.perturbation` (``convention="samek2017"``) with one task per chunk of
  ``batch_size`` samples; the relevance may be dask-backed (``attribx.open_relevance(path, lazy=True)``):
  each task reads only its chunk. Random orders and uniform noise use the random stream the single
  process uses: the client replays the draws chunk by chunk (cheap next to the model calls) and hands
  each task the generator's state at its chunk's start, so the numbers equal the single-process run's.

* :func:`spray` runs SpRAy's pooling (tasks reading blocks of the relevance) and its exact neighbour
  search (tasks of query rows against all features) on the cluster; the eigen-decomposition, the
  clustering and the prototypes stay on the client.

Arrays arrive on a worker as views into dask's message frames, at any byte address; numpy takes other
kernels on unaligned float32 data and rounds differently (1 ulp). The graph's parameters
(:meth:`attribx.graph.Node.__setstate__`) and every array a task receives are therefore re-aligned
(:func:`attribx.graph.aligned_array`) before use, so a cluster reproduces the single process bit for bit.

Needs ``pip install 'attribx[distributed]'`` (dask and distributed).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
import xarray as xr

from .errors import InputError, MethodError
from .graph import aligned_array

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
        from .api import translate
        g = translate(graph, passes=False)      # already passed on the client: nothing to redo
        g.fingerprint()
        _MODELS[fingerprint] = g
        LOADS["count"] += 1
    return g


def _worker_engine(graph, fingerprint: str, engine: Any):
    """(graph, engine instance) on this worker; the engine made once per (model, engine name)."""
    from .api import get_engine
    g = _worker_graph(graph, fingerprint)
    key = (fingerprint, "engine", engine)
    eng = _RUNNERS.get(key)
    if eng is None:
        eng = _RUNNERS[key] = get_engine(engine, g)
    return g, eng


def _ship_model(client, model: Any, sample_shape: tuple):
    """Translate on the client and send the graph to every worker once: (future, fingerprint, graph)."""
    from .api import translate
    graph = translate(model, input_shape=tuple(int(d) for d in sample_shape))
    return _send_graph(client, graph), graph.fingerprint(), graph


# --------------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------------

def _explain_batch(graph, fp, xb, ids, method, target, labels, engine, params):
    from .api import explain
    g, eng = _worker_engine(graph, fp, engine)
    return explain(g, aligned_array(xb), method, target, engine=eng, progress_bar=False, sample=ids, labels=labels,
                   **params)


def _in_order(client, graph_f, fp, batches, method, target, labels, engine, params, limit):
    """Submit ``(pos, ids, xb)`` batches (at most ``limit`` in flight) and yield the results in order."""
    from .streaming import per_sample_slice
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
    from .streaming import opened_source, positive_batch_size
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
    from .streaming import StreamRun
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
    from .api import get_engine, load_model, translate
    from .streaming import open_source
    if params.get("layers") or params.get("conservation"):
        raise MethodError("explain on a cluster returns the input relevance only; layers and conservation: "
                          "use attribx.explain")
    if engine is not None and not isinstance(engine, str):
        raise MethodError("on a cluster, engine must be a name (engines are created on the workers)")
    src = open_source(x)
    graph = translate(load_model(model), input_shape=src.sample_shape())
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
    xb, rb = aligned_array(xb), aligned_array(rb)
    spec = {k: aligned_array(v) if isinstance(v, np.ndarray) else v for k, v in spec.items()}
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
    from .evaluators.base import ModelRunner, as_numpy_inputs, read_relevance
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
    relative, main_rng, random_rng, runs, random_runs = P.random_plan(p, random_baseline)
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
    return P.result_dataset(evaluator, p, rel, path, runner, targets, data, np.arange(n_steps + 1), fraction,
                            extra)


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

_KNN_ROWS = 2048     # query rows per task: a multiple of scikit-learn's 256-row chunks, so each row's
                     # distances are computed as in the single-process search


def _pool_block(block, start, caxes, channels, shape, normalize):
    from .evaluators.spray import _reduce_block, normalization_factors, sum_pool
    pooled = sum_pool(_reduce_block(aligned_array(block), start, caxes, channels), shape)
    f = normalization_factors(pooled, normalize)
    safe = np.where(f == 0, 1.0, f)
    return pooled.reshape(len(pooled), -1) / safe[:, None], f


def _knn_block(features, a, b, k):
    """Rows a..b-1's k nearest other rows, as ``NearestNeighbors.kneighbors()`` on the fitted data gives them."""
    from sklearn.neighbors import NearestNeighbors
    features = aligned_array(features)
    idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(features).kneighbors(
        features[a:b], n_neighbors=k + 1, return_distance=False)
    mask = idx != np.arange(a, b)[:, None]          # drop the row itself, as scikit-learn does
    mask[:, 0][np.all(mask, axis=1)] = False
    return idx[mask].reshape(b - a, k)


def _spray_fns(client):
    from .evaluators import spray as S

    def features_fn(da, layout, channels, normalize, batch_size, progress_bar):
        da = da.transpose(*layout.order)
        per_sample = 8 * int(np.prod([da.sizes[d] for d in layout.order[1:]], dtype=np.int64))
        caxes = tuple(range(1, 1 + len(layout.channel_dims)))
        futures = []
        for sl in S._sample_blocks(da, batch_size, per_sample):
            data = da.isel(sample=sl).data
            block = client.compute(data) if hasattr(data, "dask") else np.asarray(data)
            futures.append(client.submit(_pool_block, block, sl.start, caxes, channels, tuple(layout.shape),
                                         normalize, pure=False))
        parts = client.gather(futures)
        features = np.concatenate([q[0] for q in parts])
        factors = np.concatenate([q[1] for q in parts])
        return features, S.unit_zero_factors(factors, normalize)

    def knn_fn(features, n_neighbors, approximate=False, seed=0):
        if approximate:                              # pynndescent: one process
            return S.knn_affinity(features, n_neighbors, approximate=True, seed=seed)
        import scipy.sparse as sp
        n = len(features)
        f = client.scatter(features, broadcast=True, hash=False)
        futures = [client.submit(_knn_block, f, a, min(n, a + _KNN_ROWS), n_neighbors, pure=False)
                   for a in range(0, n, _KNN_ROWS)]
        idx = np.concatenate(client.gather(futures))
        rows = np.repeat(np.arange(n), n_neighbors)
        a = sp.csr_matrix((np.ones(n * n_neighbors, dtype=np.float64), (rows, idx.ravel())), shape=(n, n))
        return (a + a.T) / 2.0

    return features_fn, knn_fn


def spray(model: Any = None, inputs: Any = None, relevance: Any = None, *, scheduler: Any = 2,
          **params: Any) -> xr.Dataset:
    """:func:`attribx.evaluators.spray.spray` with the pooling (one task per block of samples, each reading
    its block of a lazily opened relevance file) and the exact neighbour search (one task per 2048 query
    rows against all features) on a dask cluster; the eigen-decomposition and the clustering run on the
    client. The same result as the single-process run."""
    from .evaluators.spray import _spray
    with client_for(scheduler) as client:
        features_fn, knn_fn = _spray_fns(client)
        return _spray(relevance, params, features_fn, knn_fn)
