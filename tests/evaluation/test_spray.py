"""SpRAy (attribx.evaluators.spray) without CoRelAy: each step against a hand-derived or brute-force
reference, a planted cluster structure it must recover, lazy (dask) input, HDF5 round trip, plots,
the ViRelAy layout, the command line, and clear errors for bad parameters.

The CoRelAy anchor tests are in test_spray_corelay.py.
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("sklearn")
pytest.importorskip("scipy")

import attribx  # noqa: E402
from attribx.errors import InputError, MethodError  # noqa: E402
from attribx.evaluators import spray as S  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from spray_cases import REGIONS, planted  # noqa: E402

FAST = {"embedding": "spectral"}


@pytest.fixture(scope="module")
def case():
    return planted()


@pytest.fixture(scope="module")
def result(case):
    rel, _ = case
    return S.spray(relevance=rel, **FAST)


# --------------------------------------------------------------------------------------------------
# the steps
# --------------------------------------------------------------------------------------------------

def test_pooling_weights_by_hand():
    # 3 cells -> 2: output 0 covers [0, 1.5): all of cell 0, half of cell 1
    np.testing.assert_array_equal(S.pooling_matrix(3, 2), [[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]])
    np.testing.assert_array_equal(S.pooling_matrix(4, 2), [[1, 1, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(S.pooling_matrix(5, 5), np.eye(5))
    w = S.pooling_matrix(224, 20)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-12)    # every input cell counted once
    np.testing.assert_allclose(w.sum(axis=1), 224 / 20, rtol=1e-12)      # every output cell the same area


def test_sum_pool_against_loops(rng):
    x = rng.normal(size=(4, 12, 10))
    ref = np.array([[[x[b, 3 * i:3 * i + 3, 2 * j:2 * j + 2].sum() for j in range(5)] for i in range(4)]
                    for b in range(4)])
    np.testing.assert_allclose(S.sum_pool(x, (4, 5)), ref, rtol=1e-13, atol=1e-13)
    y = rng.normal(size=(2, 3, 3))
    out = S.sum_pool(y, (2, 2))
    ref00 = y[:, 0, 0] + 0.5 * y[:, 0, 1] + 0.5 * y[:, 1, 0] + 0.25 * y[:, 1, 1]
    np.testing.assert_allclose(out[:, 0, 0], ref00, rtol=1e-13)
    np.testing.assert_allclose(out.sum(axis=(1, 2)), y.sum(axis=(1, 2)), rtol=1e-12)


@pytest.mark.parametrize("normalize", S.NORMALIZE)
@pytest.mark.parametrize("channels", S.CHANNELS)
def test_features_by_hand(rng, channels, normalize):
    x = rng.normal(size=(7, 3, 8, 6)) + 0.2
    da = xr.DataArray(x, dims=("sample", "channel", "height", "width"))
    layout = S.HeatmapLayout(da, (4, 3))
    feats, factors = S.heatmap_features(da, layout, channels, normalize, batch_size=3)
    h = (np.abs(x) if channels == "abs" else x).sum(axis=1)
    pooled = h.reshape(7, 4, 2, 3, 2).sum(axis=(2, 4)).reshape(7, -1)
    ref_f = {"sum": pooled.sum(1), "abs": np.abs(pooled).sum(1), "max": np.abs(pooled).max(1),
             "l2": np.sqrt((pooled ** 2).sum(1)), None: np.ones(7)}[normalize]
    np.testing.assert_allclose(factors, ref_f, rtol=1e-12)
    np.testing.assert_allclose(feats, pooled / ref_f[:, None], rtol=1e-12, atol=1e-14)


def test_size_never_upsamples_and_layouts(rng):
    da = xr.DataArray(rng.normal(size=(5, 8, 8)), dims=("sample", "height", "width"))
    assert S.HeatmapLayout(da, 20).shape == (8, 8)
    assert S.HeatmapLayout(da, (4, 20)).shape == (4, 8)
    nhwc = xr.DataArray(rng.normal(size=(5, 6, 4, 3)), dims=("sample", "height", "width", "channel"))
    lay = S.HeatmapLayout(nhwc, 2)
    assert lay.spatial_dims == ["height", "width"] and lay.channel_dims == ["channel"]


def test_knn_affinity_equals_brute_force(rng):
    f = rng.normal(size=(40, 6))
    k = 4
    d = ((f[:, None] - f[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)                          # itself excluded
    a = np.zeros((40, 40))
    for i in range(40):
        a[i, np.argsort(d[i])[:k]] = 1.0
    ref = (a + a.T) / 2
    ours = S.knn_affinity(f, k)
    np.testing.assert_array_equal(ours.toarray(), ref)
    assert set(np.unique(ref)) <= {0.0, 0.5, 1.0} and not ours.diagonal().any()


def test_laplacian_by_hand():
    import scipy.sparse as sp
    # path graph 0-1-2 with weights 1 and 0.5: degrees 1, 1.5, 0.5
    a = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0.5], [0, 0.5, 0]]))
    d = np.array([1.0, 1.5, 0.5])
    ref = np.eye(3) - np.array([[0, 1 / np.sqrt(1.5), 0], [1 / np.sqrt(1.5), 0, 0.5 / np.sqrt(0.75)],
                                [0, 0.5 / np.sqrt(0.75), 0]])
    np.testing.assert_allclose(S.laplacian(a).toarray(), ref, rtol=1e-14)
    np.testing.assert_allclose(S.laplacian(a) @ np.sqrt(d), 0.0, atol=1e-15)   # D^1/2 1 spans the null space


@pytest.mark.parametrize("eigensolver", S.EIGENSOLVERS)
def test_spectrum_against_dense_eigvalsh(rng, eigensolver):
    a = S.knn_affinity(rng.normal(size=(120, 50)), 6)
    lam, v = S.spectrum(a, 12, eigensolver)
    full = np.linalg.eigvalsh(S.laplacian(a).toarray())
    if eigensolver == "smallest":
        ref = full[:12]
    else:   # CoRelAy's which='LM' on S = I - L: largest |1 - lambda|, from both ends of the spectrum
        ref = np.sort(full[np.argsort(-np.abs(1 - full))[:12]])
        assert ref.max() > 1.0                        # some come from the top of the spectrum
    np.testing.assert_allclose(lam, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(S.laplacian(a) @ v, v * lam, atol=1e-10)
    np.testing.assert_allclose(v.T @ v, np.eye(12), atol=1e-10)


def test_sparse_solver_finds_every_component(monkeypatch, case):
    """Past DENSE_MAX, ARPACK solves each connected component alone: the eigenvalue 0 comes once per
    component (the planted groups are three components of the kNN graph at this noise)."""
    from scipy.sparse.csgraph import connected_components
    rel, _ = case
    layout = S.HeatmapLayout(rel, 20)
    f, _ = S.heatmap_features(rel, layout)
    a = S.knn_affinity(f, 10)
    n_comp = connected_components(a, directed=False)[0]
    assert n_comp == 3
    dense = S.spectrum(a, 16, "smallest")
    monkeypatch.setattr(S, "DENSE_MAX", 20)
    for eigensolver in S.EIGENSOLVERS:
        lam, v = S.spectrum(a, 16, eigensolver)
        assert (np.abs(lam) < 1e-9).sum() == n_comp
        np.testing.assert_allclose(S.laplacian(a) @ v, v * lam, atol=1e-9)
        if eigensolver == "smallest":
            np.testing.assert_allclose(lam, dense[0], atol=1e-10)


def test_eigengap_by_hand():
    assert S.eigengap(np.array([0.0, 0.01, 0.02, 0.5, 0.55]))[0] == 3
    assert S.eigengap(np.array([0.0, 0.4, 0.45]))[0] == 1
    # corelay selection: only the eigenvalues below 1 count, not the jump to the top of the spectrum
    assert S.eigengap(np.array([0.0, 0.0, 0.3, 0.35, 1.9, 1.95]), "corelay")[0] == 2
    assert S.eigengap(np.array([0.0, 0.0, 0.3, 0.35, 1.9, 1.95]), "smallest")[0] == 4


# --------------------------------------------------------------------------------------------------
# the evaluator
# --------------------------------------------------------------------------------------------------

def test_planted_structure_recovered(case, result):
    rel, truth = case
    assert result.attrs["n_clusters"] == 3 and result.attrs["n_clusters_used"] == 3
    assert adjusted_rand_score(truth, result["cluster"].values) == 1.0
    lam = result["eigenvalues"].values
    assert np.all(np.diff(lam) >= 0) and np.abs(lam[:3]).max() < 1e-9 and lam[3] > 0.3
    assert int(np.nanargmax(result["eigengap"].values)) == 2
    # each prototype is hot in its group's square and nearly zero elsewhere
    for i in range(3):
        proto = result["prototype"].isel(cluster=i).values
        members = result["cluster"].values == result["cluster_label"].values[i]
        ry, rx = REGIONS[np.bincount(truth[members]).argmax()]
        inside = np.zeros(proto.shape, bool)
        inside[ry, rx] = True
        assert proto[inside].mean() > 20 * np.abs(proto[~inside]).mean()
    np.testing.assert_array_equal(result["cluster_size"].values, [60, 60, 60])


def test_result_layout_and_provenance(case, result):
    rel, _ = case
    assert result["cluster"].dims == ("sample",)
    assert result["embedding"].dims == ("sample", "axis") and result.sizes["axis"] == 2
    assert result["prototype"].dims == ("cluster", "height", "width")
    assert result["eigenvalues"].dims == ("eigen",) and result.sizes["eigen"] == 32
    assert result["spectral_embedding"].shape == (180, 32)
    np.testing.assert_allclose(np.linalg.norm(result["spectral_embedding"].values, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(result["sample"].values, rel["sample"].values)
    np.testing.assert_array_equal(result["label"].values, rel["label"].values)     # sample coords travel
    # prototypes by hand: channel sums divided by their totals (sum pooling keeps the total), averaged
    h = rel.values.sum(axis=1)
    h = h / h.sum(axis=(1, 2), keepdims=True)
    labels = result["cluster"].values
    for i, c in enumerate(result["cluster_label"].values):
        np.testing.assert_allclose(result["prototype"].values[i], h[labels == c].mean(axis=0), rtol=1e-10, atol=1e-15)
    a = result.attrs
    assert a["evaluator"] == "spray" and a["seed"] == 0 and a["relevance_method"] == "synthetic"
    assert a["parameters"]["size"] == 20 and a["parameters"]["n_neighbors"] == 10 and a["pooled_shape"] == [20, 20]


def test_evaluate_needs_no_model(case):
    rel, truth = case
    res = attribx.evaluate("spray", relevance=rel, n_clusters=3, embedding=None, seed=3)
    assert "embedding" not in res and res.attrs["seed"] == 3
    assert adjusted_rand_score(truth, res["cluster"].values) == 1.0


def test_same_seed_same_result_and_tsne(case):
    rel, _ = case
    a = S.spray(relevance=rel, seed=5)               # default embedding: t-SNE at this size
    b = S.spray(relevance=rel, seed=5)
    assert a["embedding"].attrs["method"] == "tsne"
    xr.testing.assert_equal(a, b)                       # values and coords (attrs hold timings)


@pytest.mark.slow
def test_umap_embedding_separates_the_planted_groups(case):
    """embedding='umap' where umap-learn is installed (CI's torch environment): a 2-D map in which every
    sample's nearest neighbour belongs to its own group; without umap-learn, a clear error."""
    rel, truth = case
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(MethodError, match="umap-learn"):
            S.spray(relevance=rel, embedding="umap")
        pytest.skip("umap-learn is not installed")
    res = S.spray(relevance=rel, embedding="umap", seed=0)
    emb = res["embedding"].values
    assert emb.shape == (len(truth), 2) and np.isfinite(emb).all()
    assert res["embedding"].attrs["method"] == "umap"
    d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(truth[d.argmin(1)] == truth) == 1.0


@pytest.mark.parametrize("clustering,params", [("dbscan", {"eps": 0.3}), ("agglomerative", None), ("kmeans", None)])
def test_clusterings(case, clustering, params):
    rel, truth = case
    res = S.spray(relevance=rel, clustering=clustering, clustering_params=params, **FAST)
    assert adjusted_rand_score(truth, res["cluster"].values) == 1.0


def test_estimator_object_and_all_components(case):
    from sklearn.cluster import KMeans
    rel, truth = case
    res = S.spray(relevance=rel, clustering=KMeans(3, n_init=10, random_state=0), n_components=3, **FAST)
    assert adjusted_rand_score(truth, res["cluster"].values) == 1.0
    assert "KMeans" in res.attrs["parameters"]["clustering"]
    res = S.spray(relevance=rel, n_components="all", n_clusters=3, **FAST)
    assert res["cluster"].shape == (180,)


def test_channels_last_and_arrays_give_the_same(case, result):
    rel, _ = case
    nhwc = S.spray(relevance=rel.transpose("sample", "height", "width", "channel"), **FAST)
    np.testing.assert_allclose(nhwc["eigenvalues"].values, result["eigenvalues"].values, atol=1e-12)
    np.testing.assert_array_equal(nhwc["cluster"].values, result["cluster"].values)
    arr = S.spray(relevance=rel.values, **FAST)     # a plain (N, C, H, W) array
    np.testing.assert_array_equal(arr["cluster"].values, result["cluster"].values)


def test_sequences(rng):
    """1-D heatmaps (sample, token): pooled along the one axis."""
    x = rng.normal(0, 0.2, (90, 30))
    for g in range(3):
        x[g * 30:(g + 1) * 30, g * 10:(g + 1) * 10] += 1.0
    res = S.spray(relevance=xr.DataArray(x, dims=("sample", "token")), size=15, **FAST)
    assert res.attrs["n_clusters"] == 3 and res.attrs["pooled_shape"] == [15]
    assert adjusted_rand_score(np.repeat(np.arange(3), 30), res["cluster"].values) == 1.0
    assert res["prototype"].dims == ("cluster", "token")


def test_lazy_file_equals_in_memory(tmp_path, case, result):
    """A relevance file is opened lazily (dask) and pooled chunk by chunk; the result is the same."""
    pytest.importorskip("dask")
    rel, _ = case
    path = tmp_path / "rel.h5"
    attribx.save(rel, path)
    res = S.spray(relevance=str(path), **FAST)
    assert res.attrs["relevance_file"] == str(path)
    np.testing.assert_allclose(res["eigenvalues"].values, result["eigenvalues"].values, atol=1e-12)
    np.testing.assert_array_equal(res["cluster"].values, result["cluster"].values)
    np.testing.assert_allclose(res["prototype"].values, result["prototype"].values, rtol=1e-9, atol=1e-12)
    # a dask-backed DataArray in small chunks: each chunk is read once per pass, never the whole array
    lazy = rel.chunk({"sample": 16})
    seen = []
    real = S.reduced_heatmaps

    def spy(da, *args, **kw):
        for sl, block in real(da, *args, **kw):
            seen.append(sl.stop - sl.start)
            yield sl, block
    S.reduced_heatmaps = spy
    try:
        res2 = S.spray(relevance=lazy, **FAST)
    finally:
        S.reduced_heatmaps = real
    assert max(seen) == 16 and sum(seen) == 2 * 180        # pooling and prototypes, 16 samples at a time
    np.testing.assert_array_equal(res2["cluster"].values, result["cluster"].values)


def test_hdf5_round_trip(tmp_path, result):
    path = tmp_path / "spray.h5"
    attribx.save(result, path)
    back = attribx.open_relevance(path)
    xr.testing.assert_identical(back, result)


def test_zero_heatmaps_warn(case):
    rel, _ = case
    x = rel.values.copy()
    x[:2] = 0.0
    with pytest.warns(UserWarning, match="2 heatmap"):
        S.spray(relevance=rel.copy(data=x), **FAST)


@pytest.mark.parametrize("params,err,match", [
    ({"bogus": 1}, MethodError, "unknown parameter"),
    ({"channels": "max"}, MethodError, "channels"),
    ({"normalize": "mean"}, MethodError, "normalize"),
    ({"eigensolver": "LM"}, MethodError, "eigensolver"),
    ({"n_neighbors": 0}, MethodError, "n_neighbors"),
    ({"n_neighbors": 500}, InputError, "more samples than n_neighbors"),
    ({"n_eigenvalues": 1}, MethodError, "at least 2"),
    ({"n_eigenvalues": 1000}, MethodError, "exceeds the number of samples"),
    ({"n_clusters": 0}, MethodError, "n_clusters"),
    ({"size": 0}, MethodError, "size"),
    ({"size": (2, 2, 2)}, MethodError, "size"),
    ({"clustering": "spectral"}, MethodError, "clustering"),
    ({"clustering_params": [1]}, MethodError, "clustering_params"),
    ({"clustering": "kmeans", "clustering_params": {"nope": 1}}, MethodError, "nope"),
    ({"embedding": "pca"}, MethodError, "embedding"),
    ({"n_components": "most"}, MethodError, "n_components"),
    ({"n_components": 40}, MethodError, "n_components"),
    ({"seed": -1}, MethodError, "seed"),
    ({"approximate": "yes"}, MethodError, "approximate"),
])
def test_bad_parameters(case, params, err, match):
    rel, _ = case
    with pytest.raises(err, match=match):
        S.spray(relevance=rel, **{"embedding": None, **params})


def test_bad_relevance(case):
    rel, _ = case
    x = rel.values.copy()
    x[7, 0, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        S.spray(relevance=rel.copy(data=x))
    with pytest.raises(InputError, match="name the channel dim"):
        S.spray(relevance=rel.rename(channel="colour"))
    with pytest.raises(InputError, match="needs relevance"):
        S.spray()
    if not _installed("pynndescent"):
        with pytest.raises(MethodError, match="pynndescent"):
            S.spray(relevance=rel, approximate=True)


@pytest.mark.slow     # pynndescent compiles with numba on first use (~25 s)
def test_approximate_neighbours(case, result):
    """approximate=True (pynndescent's nearest-neighbour descent, when installed) finds nearly every exact
    neighbour, and the planted groups all the same."""
    pytest.importorskip("pynndescent")
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2000, 20))
    exact = S.nearest_neighbors(f, 10)
    approx = S.nearest_neighbors(f, 10, approximate=True)
    assert not (approx == np.arange(2000)[:, None]).any()
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(exact, approx)])
    assert recall > 0.95, recall
    rel, truth = case
    res = S.spray(relevance=rel, approximate=True, **FAST)
    assert adjusted_rand_score(truth, res["cluster"].values) == 1.0


def _installed(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# plots, ViRelAy, command line
# --------------------------------------------------------------------------------------------------

def test_plots(result, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    fig = S.plot_spectrum(result)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), result["eigenvalues"].values)
    assert any("3 clusters" in t.get_text() for t in ax.texts)
    fig = S.plot_clusters(result)
    assert isinstance(fig, Figure) and len(fig.axes) == 1 + 3            # embedding + one prototype each
    assert len(fig.axes[0].collections) == 3
    fig = S.plot_spray(result)
    fig.savefig(tmp_path / "spray.png")
    assert (tmp_path / "spray.png").stat().st_size > 10_000


def test_virelay_layout(tmp_path, case, result):
    """The files are laid out as ViRelAy's reader (virelay.model) expects (checked with ViRelAy itself in
    test_spray_corelay.py when it is installed)."""
    h5py = pytest.importorskip("h5py")
    rel, _ = case
    project = S.export_virelay(result, rel, tmp_path / "vr")
    text = open(project, encoding="utf-8").read()
    assert "analysis.h5" in text and "attribution.h5" in text and "dataset.h5" in text
    with h5py.File(tmp_path / "vr" / "attribution.h5") as f:
        assert f["attribution"].shape == (180, 3, 40, 40) and f["attribution"].dtype == np.float32
        np.testing.assert_array_equal(f["attribution"][5], rel.values[5].astype(np.float32))
        np.testing.assert_array_equal(f["label"][:], rel["label"].values)
    with h5py.File(tmp_path / "vr" / "analysis.h5") as f:
        (cat,) = list(f)
        g = f[cat]
        np.testing.assert_array_equal(g["index"][:], np.arange(180))
        np.testing.assert_allclose(g["embedding/spectral"].attrs["eigenvalue"], result["eigenvalues"].values, atol=1e-6)
        (cname,) = list(g["cluster"])
        assert cname == "kmeans-03"
        np.testing.assert_array_equal(g["cluster"][cname][:], result["cluster"].values)
        assert g["embedding"]["spectral-2d"].attrs["embedding"] == "spectral"
    labels = json.load(open(tmp_path / "vr" / "label-map.json"))
    assert [entry["index"] for entry in labels] == [0, 1, 2]


def test_cli(tmp_path, case):
    pytest.importorskip("matplotlib")
    from attribx.cli import main
    rel, truth = case
    path = tmp_path / "rel.h5"
    attribx.save(rel, path)
    out = tmp_path / "spray.h5"
    rc = main(["spray", str(path), "-o", str(out), "-p", "embedding=\"spectral\"", "-p", "n_clusters=3",
               "--plot", str(tmp_path / "s.png"), "--virelay", str(tmp_path / "vr")])
    assert rc == 0
    res = attribx.open_relevance(out)
    assert adjusted_rand_score(truth, res["cluster"].values) == 1.0
    assert res.attrs["relevance_file"] == os.path.abspath(path)
    assert (tmp_path / "s.png").exists() and (tmp_path / "vr" / "project.yaml").exists()
    assert main(["spray", str(path), "-o", str(out), "-p", "normalize=mean"]) == 2
    assert main(["spray", str(tmp_path / "missing.h5"), "-o", str(out)]) == 2
