"""Explain and pixel flipping on a dask.distributed LocalCluster of 2 worker processes give the numbers of
the single-process run (issue 10: "A test runs explain and pixel flipping on a LocalCluster with 2
workers and gets the same numbers as the single-process run")."""
import numpy as np
import pytest
import xarray as xr

pytest.importorskip("sklearn")
pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

import attribx  # noqa: E402
from attribx import distributed as D  # noqa: E402
from attribx.evaluators.perturbation import pixel_flipping, region_perturbation  # noqa: E402
from attribx.streaming import explain_dataset  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    from attribx.demo import digits_graph
    graph, x, y, _ = digits_graph()
    return graph, x[:120], y[:120]


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster) as c:
        yield c


def test_explain_on_cluster_equals_single_process(digits, client):
    graph, x, y = digits
    ref = attribx.explain(graph, x, "lrp.epsilon", batch_size=16, labels=y)
    got = D.explain_distributed(graph, x, "lrp.epsilon", scheduler=client, batch_size=16, labels=y,
                                max_in_flight=3)
    xr.testing.assert_identical(got, ref)
    np.testing.assert_array_equal(got["sample"].values, np.arange(len(x)))
    # every worker prepared the model at most once, and the 8 batches did not all run on one worker
    loads = D.worker_loads(client)
    assert len(loads) == 2 and all(v <= 1 for v in loads.values()) and sum(loads.values()) >= 1


def test_streamed_file_on_cluster_equals_single_process_file(digits, client, tmp_path):
    graph, x, _ = digits
    np.save(tmp_path / "x.npy", x)
    explain_dataset(graph, str(tmp_path / "x.npy"), tmp_path / "one.h5", "gradient_x_input", batch_size=9)
    # unequal batch times would reorder completions; the file must still be in sample order
    r = D.explain_dataset_distributed(graph, str(tmp_path / "x.npy"), tmp_path / "dask.h5", "gradient_x_input",
                                      scheduler=client, batch_size=9)
    assert r["samples"] == len(x)
    one = attribx.open_relevance(tmp_path / "one.h5", lazy=False)
    two = attribx.open_relevance(tmp_path / "dask.h5", lazy=False)
    xr.testing.assert_identical(two, one)
    np.testing.assert_array_equal(two["sample"].values, np.arange(len(x)))
    np.testing.assert_array_equal(two.values, attribx.explain(graph, x, "gradient_x_input", batch_size=9).values)


def test_pixel_flipping_on_cluster_equals_single_process(digits, client, tmp_path):
    graph, x, _ = digits
    rel = attribx.explain(graph, x, "lrp.epsilon")
    attribx.save(rel, tmp_path / "rel.h5")
    lazy = attribx.open_relevance(tmp_path / "rel.h5", lazy=True)      # dask-backed, read chunk by chunk
    assert lazy.chunks is not None
    # default: uniform noise, most relevant first, and the random-order reference (two random streams)
    ref = pixel_flipping(graph, x, rel, steps=12, batch_size=32, repeats=2)
    got = D.pixel_flipping(graph, x, lazy, scheduler=client, steps=12, batch_size=32, repeats=2)
    xr.testing.assert_identical(got.drop_attrs(), ref.drop_attrs())
    assert got.attrs["aopc"] == ref.attrs["aopc"] and got.attrs["aopc_random"] == ref.attrs["aopc_random"]
    # plain array relevance (no target coord): targets predicted on the workers; region perturbation
    ref = region_perturbation(graph, x, rel.values, patch_size=2, steps=5, batch_size=50, baseline="mean")
    got = D.region_perturbation(graph, x, rel.values, scheduler=client, patch_size=2, steps=5, batch_size=50,
                                baseline="mean")
    np.testing.assert_allclose(got["curve"].values, ref["curve"].values, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got["target"].values, ref["target"].values)
    loads = D.worker_loads(client)
    assert all(v <= 1 for v in loads.values())


def test_scheduler_argument_checked():
    with pytest.raises(attribx.errors.InputError, match="scheduler"):
        with D.client_for(0):
            pass


def test_local_cluster_listens_on_loopback_only():
    """--scheduler N: the scheduler, the workers and the unauthenticated dashboard accept connections from
    this machine only (the dashboard was bound to every interface, 0.0.0.0)."""
    with D.client_for(1) as client:
        scheduler = client.cluster.scheduler
        assert scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in client.scheduler_info()["workers"])
        bound = [sock.getsockname()[0] for sock in scheduler.http_server._sockets.values()]
        assert bound and set(bound) == {"127.0.0.1"}, bound
        assert "127.0.0.1" in client.dashboard_link


def test_cli_scheduler_writes_the_streamed_file(digits, tmp_path):
    from attribx.cli import main
    graph, x, _ = digits
    graph.save(tmp_path / "g.npz")
    np.save(tmp_path / "x.npy", x)
    assert main(["explain", str(tmp_path / "g.npz"), str(tmp_path / "x.npy"), "--batch-size", "25",
                 "--scheduler", "2", "-o", str(tmp_path / "d.h5")]) == 0
    assert main(["explain", str(tmp_path / "g.npz"), str(tmp_path / "x.npy"), "--batch-size", "25",
                 "--stream", "-o", str(tmp_path / "s.h5")]) == 0
    xr.testing.assert_identical(attribx.open_relevance(tmp_path / "d.h5", lazy=False),
                                attribx.open_relevance(tmp_path / "s.h5", lazy=False))


def test_cluster_resumes_an_interrupted_single_process_file(digits, client, tmp_path):
    """A single-process run stops after 3 batches (an exception from the source); the cluster continues
    the same file and the result equals an uninterrupted single-process run's, sample for sample."""
    graph, x, _ = digits

    class Stop(Exception):
        pass

    def batches(stop_after=None):
        for i, s in enumerate(range(0, len(x), 10)):
            if stop_after is not None and i == stop_after:
                raise Stop
            yield x[s:s + 10]

    explain_dataset(graph, batches(), tmp_path / "ref.h5", "lrp.epsilon", batch_size=10, fingerprint="digits")
    with pytest.raises(Stop):
        explain_dataset(graph, batches(stop_after=3), tmp_path / "cut.h5", "lrp.epsilon", batch_size=10,
                        fingerprint="digits")
    r = D.explain_dataset_distributed(graph, batches(), tmp_path / "cut.h5", "lrp.epsilon", scheduler=client,
                                      batch_size=10, fingerprint="digits")
    assert r["resumed_at"] == 30 and r["new"] == len(x) - 30
    xr.testing.assert_identical(attribx.open_relevance(tmp_path / "cut.h5", lazy=False),
                                attribx.open_relevance(tmp_path / "ref.h5", lazy=False))


def test_spray_on_cluster_equals_single_process(client, tmp_path):
    """SpRAy's pooling (tasks reading blocks of a lazily opened file) and exact neighbour search (tasks of
    query rows) on the cluster: the same spectrum, embedding, clusters and prototypes as one process."""
    from attribx.evaluators.spray import spray
    rng = np.random.default_rng(0)
    n = 2500                           # > 2048: the neighbour search runs as two tasks
    groups = rng.integers(0, 4, n)
    base = rng.standard_normal((4, 1, 12, 12))
    heat = (base[groups] + 0.8 * rng.standard_normal((n, 1, 12, 12))).astype(np.float32)
    attribx.save(xr.DataArray(heat, dims=("sample", "channel", "height", "width"), name="relevance"),
                 tmp_path / "r.h5")
    lazy = attribx.open_relevance(tmp_path / "r.h5", lazy=True)
    params = dict(size=(6, 6), embedding=None, batch_size=300, n_clusters=4)
    ref = spray(relevance=attribx.open_relevance(tmp_path / "r.h5", lazy=False), **params)
    got = D.spray(relevance=lazy, scheduler=client, **params)
    xr.testing.assert_identical(got.drop_attrs(), ref.drop_attrs())
    assert got.attrs["n_edges"] == ref.attrs["n_edges"] and got.attrs["n_clusters"] == ref.attrs["n_clusters"]


# --------------------------------------------------------------------------------------------------
# one evaluator, two schedulers: the cluster plans with the evaluator's own checks (issue 18)
# --------------------------------------------------------------------------------------------------

def _refusal(call):
    with pytest.raises(attribx.AttribxError) as info:
        call()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("bad", ["relevance_axes", "relevance_size", "relevance_nan", "inputs_axes", "inputs_nan",
                                 "inputs_nan_dask", "patch_size"])
def test_cluster_refuses_what_one_process_refuses(digits, client, bad):
    """The same bad input gets the same error on a cluster as in one process (the cluster's copy of the
    set-up had drifted: it lacked the check of the relevance's axes)."""
    import dask.array as da
    graph, x, _ = digits
    x = x[:20]
    rel = attribx.explain(graph, x, "lrp.epsilon").values
    inputs, relevance, params = x, rel, {"steps": 2}
    if bad == "relevance_axes":
        relevance = rel[:, 0, 0]                       # (sample, width): an axis too few after the channel
    elif bad == "relevance_size":
        relevance = rel[:, :, :7]
    elif bad == "relevance_nan":
        relevance = rel.copy()
        relevance[3, 0, 2, 2] = np.nan
    elif bad == "inputs_axes":
        inputs = x[None]
    elif bad.startswith("inputs_nan"):
        inputs = x.copy()
        inputs[5, 0, 1, 1] = np.inf
        if bad == "inputs_nan_dask":
            inputs = da.from_array(inputs, chunks=8)
    else:
        params = {"patch_size": 9}
    local = _refusal(lambda: pixel_flipping(graph, inputs, relevance, **params))
    assert _refusal(lambda: D.pixel_flipping(graph, inputs, relevance, scheduler=client, **params)) == local


@pytest.mark.parametrize("bad", ["axes", "nan", "n_neighbors"])
def test_cluster_spray_refuses_what_one_process_refuses(client, bad):
    from attribx.evaluators.spray import spray
    rel = np.random.default_rng(0).standard_normal((30, 1, 8, 8)).astype(np.float32)
    params = {"embedding": None}
    if bad == "axes":
        rel = rel[:, None]
    elif bad == "nan":
        rel[7, 0, 3, 3] = np.nan
    else:
        params["n_neighbors"] = 30
    local = _refusal(lambda: spray(relevance=rel, **params))
    assert _refusal(lambda: D.spray(relevance=rel, scheduler=client, **params)) == local


def test_cluster_reads_a_relevance_file_given_as_path_like(digits, client, tmp_path):
    """An os.PathLike relevance file is read on a cluster as in one process, with the same numbers."""
    from attribx.evaluators.spray import spray
    graph, x, _ = digits
    x = x[:40]
    path = tmp_path / "rel.h5"                        # a pathlib.Path, not a str
    attribx.save(attribx.explain(graph, x, "lrp.epsilon"), path)
    ref = region_perturbation(graph, x, path, patch_size=2, steps=4, batch_size=16)
    got = D.region_perturbation(graph, x, path, scheduler=client, patch_size=2, steps=4, batch_size=16)
    xr.testing.assert_identical(got.drop_attrs(), ref.drop_attrs())
    assert got.attrs["relevance_file"] == ref.attrs["relevance_file"] == str(path)
    params = dict(size=(4, 4), embedding=None, n_eigenvalues=8, batch_size=16)
    ref = spray(relevance=path, **params)
    got = D.spray(relevance=path, scheduler=client, **params)
    xr.testing.assert_identical(got.drop_attrs(), ref.drop_attrs())
    assert got.attrs["relevance_file"] == ref.attrs["relevance_file"] == str(path)


def test_cluster_uses_the_evaluators_contract_only():
    """attribx.distributed schedules the evaluators through their public contract (plan, run a chunk,
    combine), not through their private names."""
    import inspect
    import re
    source = inspect.getsource(D)
    assert not re.findall(r"\b[PS]\._\w+", source)
    assert not re.findall(r"from \.evaluators[\w.]* import [^\n]*\b_\w+", source)
