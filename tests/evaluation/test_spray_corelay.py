"""SpRAy against CoRelAy 1.0.0 (the anchor) and ViRelAy 0.6.1 (the viewer reading our export).

CoRelAy's pipeline is assembled from its own processors (``Pooling``, ``SciPyPDist``, ``SparseKNN``,
``SymmetricNormalLaplacian``, ``EigenDecomposition``, ``KMeans``) plus the channel sum, absolute value,
normalisation and flattening processors of CoRelAy's documentation example (``virelay_analysis.py``),
written out here. The same relevance goes through both:

* pooled features equal (to rounding: the block sums add in another order), the kNN affinity and the
  normalised affinity ``D^-1/2 A D^-1/2`` (CoRelAy's "Laplacian") exactly, element for element;
* eigenvalues within 1e-6 (relative; 1e-9 absolute for the zeros), for ``which='LA'`` (our default,
  the smallest eigenvalues of ``L``) and ``which='LM'`` (CoRelAy's default, ``eigensolver="corelay"``);
* the same clusters up to a permutation of the labels, with the same k-means seed, for CoRelAy started
  from several ARPACK vectors (its eigenvectors differ by a rotation within repeated eigenvalues; where
  that changes CoRelAy's own clusters, the comparison would be meaningless, so the cases here are ones
  where CoRelAy agrees with itself).

On synthetic relevance (three planted groups, 40x40 pooled to 20x20) and on the LRP heatmaps of a CNN
trained here on scikit-learn's digits. Where the kNN graph falls apart into components, CoRelAy's ARPACK
call finds the repeated eigenvalue 0 only partly (a different number of times per run); ours finds it
once per component (test_disconnected_graph).
"""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("corelay")
pytest.importorskip("sklearn")

from corelay.processor.affinity import SparseKNN  # noqa: E402
from corelay.processor.base import Processor  # noqa: E402
from corelay.processor.clustering import KMeans  # noqa: E402
from corelay.processor.distance import SciPyPDist  # noqa: E402
from corelay.processor.embedding import EigenDecomposition  # noqa: E402
from corelay.processor.flow import Sequential  # noqa: E402
from corelay.processor.laplacian import SymmetricNormalLaplacian  # noqa: E402
from corelay.processor.preprocessing import Pooling  # noqa: E402
from scipy.sparse.csgraph import connected_components  # noqa: E402
from sklearn.metrics import adjusted_rand_score  # noqa: E402

from attribx.datasets.digits import load_digits_images, train_digits_cnn  # noqa: E402
from attribx.evaluators import spray as S  # noqa: E402
from spray_cases import planted  # noqa: E402


class SumChannel(Processor):
    def function(self, data):
        return data.sum(axis=1)


class Absolute(Processor):
    def function(self, data):
        return np.absolute(data)


class Normalize(Processor):
    def function(self, data):
        return data / data.sum((1, 2), keepdims=True)


class Flatten(Processor):
    def function(self, data):
        return data.reshape(data.shape[0], -1)


def corelay_steps(x, channels="sum", stride=1, n_neighbors=10):
    """CoRelAy's features, affinity and normalised affinity of (N, C, H, W) relevance."""
    steps = ([Absolute()] if channels == "abs" else []) + [SumChannel()]
    if stride > 1:
        steps.append(Pooling(stride=(1, stride, stride)))
    features = Sequential(steps + [Normalize(), Flatten()])(x)
    affinity = SparseKNN(n_neighbors=n_neighbors, symmetric=True)(SciPyPDist(metric="euclidean")(features))
    return features, affinity, SymmetricNormalLaplacian()(affinity)


def corelay_clusters(s, n_eigval, which, n_clusters, seed=0, v0_seed=None):
    kwargs = {} if v0_seed is None else {"v0": np.random.default_rng(v0_seed).uniform(-1, 1, s.shape[0])}
    eigval, eigvec = EigenDecomposition(n_eigval=n_eigval, which=which, kwargs=kwargs)(s)
    labels = KMeans(n_clusters=n_clusters, kwargs={"random_state": seed, "n_init": 10})(eigvec)
    return np.sort(eigval), labels


def assert_same_clusters(a, b):
    assert adjusted_rand_score(a, b) == 1.0


def check_against_corelay(rel, size, stride, n_neighbors, k, channels="sum"):
    x = np.asarray(rel.values, dtype=np.float64)
    f_c, a_c, s_c = corelay_steps(x, channels, stride, n_neighbors)
    layout = S.HeatmapLayout(rel, size)
    f_o, _ = S.heatmap_features(rel, layout, channels, "sum")
    np.testing.assert_allclose(f_o, f_c, rtol=1e-12, atol=1e-15)
    a_o = S.knn_affinity(f_o, n_neighbors)
    assert a_o.shape == a_c.shape and (a_o != a_c).nnz == 0                  # exactly equal
    s_o = S.normalized_affinity(a_o)
    assert (s_o != s_c).nnz == 0                                             # exactly equal
    assert connected_components(a_o, directed=False)[0] == 1
    for eigensolver, which in (("smallest", "LA"), ("corelay", "LM")):
        lam, _ = S.spectrum(a_o, 32, eigensolver)
        ev_c, _ = corelay_clusters(s_c, 32, which, k)
        np.testing.assert_allclose(lam, ev_c, rtol=1e-6, atol=1e-9)
        assert (lam > 1).any() == (eigensolver == "corelay")
    # the clustering both compute: k-means on the first k row-normalised eigenvectors (CoRelAy with
    # n_eigval=k) and on all 32 of CoRelAy's default selection (ours: eigensolver="corelay", n_components="all")
    ours = S.spray(relevance=rel, size=size, channels=channels, n_neighbors=n_neighbors, n_clusters=k, embedding=None)
    ours_all = S.spray(relevance=rel, size=size, channels=channels, n_neighbors=n_neighbors, n_clusters=k,
                       eigensolver="corelay", n_components="all", embedding=None)
    for v0_seed in (None, 1, 2):
        assert_same_clusters(corelay_clusters(s_c, k, "LA", k, v0_seed=v0_seed)[1], ours["cluster"].values)
        assert_same_clusters(corelay_clusters(s_c, 32, "LM", k, v0_seed=v0_seed)[1], ours_all["cluster"].values)
    return ours


# --------------------------------------------------------------------------------------------------
# synthetic relevance
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", ["sum", "abs"])
def test_synthetic_equals_corelay(channels):
    rel, truth = planted(noise=2.0, seed=1)         # noisy enough that the kNN graph is connected
    if channels == "abs":
        rel = rel + 0.1                             # |x| summed: positive, like the squares
    ours = check_against_corelay(rel, 20, 2, 10, 3, channels)
    if channels == "sum":     # (the absolute noise drowns the squares: abs finds the groups only partly)
        assert adjusted_rand_score(truth, ours["cluster"].values) > 0.9    # measured 0.92


# --------------------------------------------------------------------------------------------------
# a CNN trained on digits, LRP heatmaps
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_relevance():
    """LRP (epsilon-plus) heatmaps of 300 held-out digits, for their true class, from a small CNN
    trained here (60 full-batch Adam steps on 1200 digits, one torch thread: a few seconds)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("attribx_torch")
    pytest.importorskip("sklearn.datasets")
    import attribx
    x, y = load_digits_images()
    model = train_digits_cnn(x[:1200], y[:1200], steps=60)
    xs, ys = x[1200:1500], y[1200:1500]
    with torch.no_grad():
        acc = float((model(torch.tensor(xs)).argmax(1).numpy() == ys).mean())
    assert acc > 0.9, acc
    rel = attribx.explain(model, xs, "lrp.epsilon_plus", target=ys)
    rel = rel.astype(np.float64)
    return rel, ys


@pytest.mark.parametrize("size,stride", [(8, 1), (4, 2)])
def test_digits_cnn_equals_corelay(digits_relevance, size, stride):
    rel, y = digits_relevance
    ours = check_against_corelay(rel, size, stride, 30, 10)       # k=30: the kNN graph is connected
    # the eigengap finds the ten digits, and the clusters are the digits (measured ARI 0.97 / 0.98)
    assert ours.attrs["n_clusters"] == 10
    assert adjusted_rand_score(y, ours["cluster"].values) > 0.9


def test_disconnected_graph(digits_relevance):
    """With k=5 the digits' kNN graph has several components: ours has the eigenvalue 0 once per
    component and equals the dense spectrum of CoRelAy's own normalised affinity; every eigenvalue
    CoRelAy's ARPACK call returns lies on that spectrum, but it may find fewer zeros (measured: 3 or 4 of
    the 6, varying from call to call)."""
    rel, y = digits_relevance
    x = np.asarray(rel.values)
    _, a_c, s_c = corelay_steps(x, "sum", 1, 5)
    n_comp = connected_components(a_c, directed=False)[0]
    assert n_comp >= 3
    exact = np.sort(1.0 - np.linalg.eigvalsh(s_c.toarray()))
    res = S.spray(relevance=rel, size=8, n_neighbors=5, n_eigenvalues=16, embedding=None)
    lam = res["eigenvalues"].values
    np.testing.assert_allclose(lam, exact[:16], atol=1e-9)
    assert (np.abs(lam) < 1e-9).sum() == n_comp
    ev_c, _ = corelay_clusters(s_c, 16, "LA", 2)
    assert np.abs(ev_c[:, None] - exact[None, :]).min(axis=1).max() < 1e-6
    assert (np.abs(ev_c) < 1e-9).sum() <= n_comp


# --------------------------------------------------------------------------------------------------
# ViRelAy reads the export
# --------------------------------------------------------------------------------------------------

def test_virelay_opens_the_export(tmp_path, digits_relevance):
    model = pytest.importorskip("virelay.model")
    rel, y = digits_relevance
    res = S.spray(relevance=rel, size=8, n_neighbors=30, embedding="spectral")
    path = S.export_virelay(res, rel, tmp_path / "vr", inputs=np.zeros((300, 1, 8, 8), np.float32))
    project = model.Project(path)
    try:
        (method,) = project.get_analysis_methods()
        (category,) = project.get_analysis_categories(method)
        (clustering,) = project.get_analysis_clustering_names(method)
        assert clustering == f"kmeans-{res.attrs['n_clusters_used']:02d}"
        assert set(project.get_analysis_embedding_names(method)) == {"spectral", "spectral-2d"}
        analysis = project.get_analysis(method, category.name, clustering, "spectral")
        np.testing.assert_array_equal(analysis.clustering, res["cluster"].values)
        np.testing.assert_allclose(analysis.eigenvalues, res["eigenvalues"].values, atol=1e-6)
        assert analysis.embedding.shape == (300, 32)
        att = project.get_attribution(7)
        np.testing.assert_allclose(att.data[..., 0], rel.values[7, 0], rtol=1e-6)   # ViRelAy moves channels last
        assert att.labels[0].index == int(y[7])
        assert project.get_sample(7).data.shape == (8, 8, 1)
    finally:
        project.close()
