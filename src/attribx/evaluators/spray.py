"""SpRAy, spectral relevance analysis (Lapuschkin et al., Nature Communications 2019), over many heatmaps.

The analysis, step by step (each step is a function of its own here, so that it can be checked
against CoRelAy's processor of the same name):

1. :func:`heatmap_features`: every heatmap is reduced over its channels (``channels="sum"``, or
   ``"abs"``: the sum of absolute values), sum-pooled to a small uniform size (``size``, default
   20×20; :func:`pooling_matrix`), normalised (``normalize``: by its sum as CoRelAy's examples do,
   by its absolute sum, its largest absolute value, its L2 norm, or not at all) and flattened. The
   relevance is read one block of samples at a time, so a lazily opened (dask) relevance file larger
   than memory is pooled block by block and never loaded whole.
2. :func:`knn_affinity`: the k-nearest-neighbour graph of the pooled heatmaps (Euclidean distance,
   each heatmap's ``n_neighbors`` nearest others, itself excluded), as a sparse 0/1 matrix ``A``,
   symmetrised to ``(A + Aᵀ)/2`` (CoRelAy's ``SparseKNN``). Exact neighbours come from
   scikit-learn's brute-force search (BLAS, chunked); ``approximate=True`` uses ``pynndescent`` when it
   is installed.
3. :func:`normalized_affinity` ``S = D^-1/2 A D^-1/2`` (``D`` the degrees) and the symmetric
   normalised Laplacian :func:`laplacian` ``L = I - S``. (CoRelAy's ``SymmetricNormalLaplacian``
   returns ``S``, and its ``EigenDecomposition`` reports ``1 - λ(S)``, the eigenvalues of ``L``.)
4. :func:`spectrum`: eigenvalues and eigenvectors of ``L``. ``eigensolver="smallest"`` (default) gives
   the ``n_eigenvalues`` smallest, which are the ones spectral clustering and the eigengap are about.
   ``eigensolver="corelay"`` gives what CoRelAy's default ``EigenDecomposition(which='LM')`` gives:
   the eigenvalues of ``S`` largest in magnitude, which are those of ``L`` nearest 0 *and* nearest 2
   (the top of ``L``'s spectrum), mixed. Either way the eigenvectors are normalised per sample (row)
   as CoRelAy does; that is the spectral embedding everything below works on.
5. :func:`eigengap`: the largest gap between consecutive small eigenvalues suggests the number of
   clusters (``attrs["n_clusters"]``); with ``eigensolver="corelay"`` only the eigenvalues below 1
   (those from the bottom of the spectrum) count.
6. :func:`cluster_embedding`: k-means (seeded), DBSCAN or agglomerative clustering of the spectral
   embedding, with ``n_clusters`` clusters (None: the eigengap's suggestion). The embedding clustered is
   the first ``n_components`` eigenvectors (None: as many as clusters), each row normalised (Ng, Jordan
   and Weiss); ``n_components="all"`` takes all of them, as CoRelAy's ``KMeans`` does.
7. :func:`embed_2d`: a 2-D embedding of the spectral embedding for plotting: t-SNE (seeded), UMAP when
   ``umap-learn`` is installed, or the first two non-trivial eigenvectors (``"spectral"``: instant at
   any size); ``"auto"`` is t-SNE up to :data:`TSNE_MAX` samples, ``"spectral"`` beyond.
8. The per-cluster mean heatmap (``prototype``): the channel-reduced heatmaps at full resolution, each
   divided by the factor it was normalised with in step 1, averaged over each cluster's members.

The result is an ``xarray.Dataset`` (:func:`spray`), plotted by :func:`plot_spectrum`,
:func:`plot_clusters` and :func:`plot_spray` (:mod:`attribx.evaluators.spray_plots`), exported for
CoRelAy's viewer ViRelAy by :func:`export_virelay` (:mod:`attribx.evaluators.virelay`); all four are
importable from here. The relevance is read through :mod:`attribx.evaluators.heatmaps`.

Scheduling (the evaluator contract): :func:`plan` checks the parameters and the relevance once;
steps 1 and 2 run in chunks (:func:`features_chunk` per block of samples, :func:`neighbors_chunk` per
block of query rows), one after another in one process or as tasks on a dask cluster
(:mod:`attribx.distributed`); :func:`analyse` does the rest on their joined results.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..errors import InputError, MethodError
from .base import check_params, choice, positive_int, result_attrs, seed_of
from .heatmaps import CHANNEL_DIMS  # noqa: F401  (its earlier home was here)
from .heatmaps import HeatmapLayout, open_heatmaps, reduce_block, reduced_heatmaps, sample_blocks
# the plots and the ViRelAy export live in modules of their own; users import them from here
from .spray_plots import plot_clusters, plot_spectrum, plot_spray  # noqa: F401
from .virelay import export_virelay  # noqa: F401


EVALUATOR = "spray"

DEFAULTS: dict[str, Any] = {
    "size": 20,
    "channels": "sum",
    "normalize": "sum",
    "n_neighbors": 10,
    "n_eigenvalues": 32,
    "eigensolver": "smallest",
    "n_clusters": None,
    "clustering": "kmeans",
    "clustering_params": None,
    "n_components": None,
    "embedding": "auto",
    "seed": 0,
    "approximate": False,
    "variable": None,
    "batch_size": None,
    "progress_bar": None,
}

CHANNELS = ("sum", "abs")
NORMALIZE = ("sum", "abs", "max", "l2", None)
EIGENSOLVERS = ("smallest", "corelay")
CLUSTERINGS = ("kmeans", "dbscan", "agglomerative")
EMBEDDINGS = ("auto", "tsne", "umap", "spectral", None)
TSNE_MAX = 5000             # embedding="auto": t-SNE up to this many samples, the spectral coordinates beyond

DENSE_MAX = 1000            # up to this many samples the eigenproblem is solved densely (exact, all at once)
NEIGHBOR_ROWS = 2048        # query rows per chunk of the exact neighbour search: a multiple of scikit-learn's
                            # 256-row chunks, so each row's distances are computed as in one search of all rows
_Layout = HeatmapLayout     # its earlier name (benchmarks/spray.py uses it)


# --------------------------------------------------------------------------------------------------
# step 1: heatmaps -> pooled, normalised feature vectors
# --------------------------------------------------------------------------------------------------

def pooling_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` sum-pooling weights along one axis.

    Output cell ``j`` covers the input interval ``[j·n_in/n_out, (j+1)·n_in/n_out)`` and sums each
    input cell with the length of its overlap with that interval, so the total is kept exactly and
    every output cell covers the same area. When ``n_out`` divides ``n_in`` these are plain 0/1 block
    sums (CoRelAy's ``Pooling`` with ``numpy.sum``).
    """
    if n_out > n_in:
        raise MethodError(f"evaluator {EVALUATOR!r}: cannot sum-pool {n_in} cells to {n_out}")
    edges = np.arange(n_out + 1, dtype=np.float64) * n_in / n_out
    cells = np.arange(n_in + 1, dtype=np.float64)
    lo = np.maximum(edges[:-1, None], cells[None, :-1])
    hi = np.minimum(edges[1:, None], cells[None, 1:])
    return np.clip(hi - lo, 0.0, None)


def sum_pool(heatmaps: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Sum-pool ``(B, *spatial)`` heatmaps to ``(B, *shape)`` (block sums when the sizes divide)."""
    spatial = heatmaps.shape[1:]
    if tuple(spatial) == tuple(shape):
        return heatmaps
    if all(n % m == 0 for n, m in zip(spatial, shape)):
        split = [heatmaps.shape[0]]
        for n, m in zip(spatial, shape):
            split += [m, n // m]
        return heatmaps.reshape(split).sum(axis=tuple(range(2, 2 + 2 * len(shape), 2)))
    out = heatmaps
    for axis, (n, m) in enumerate(zip(spatial, shape), start=1):
        if n != m:
            out = np.moveaxis(np.tensordot(out, pooling_matrix(n, m), axes=([axis], [1])), -1, axis)
    return out


def normalization_factors(pooled: np.ndarray, normalize: str | None) -> np.ndarray:
    """The number each pooled heatmap is divided by (one per sample)."""
    flat = pooled.reshape(len(pooled), -1)
    if normalize is None:
        return np.ones(len(flat))
    if normalize == "sum":
        return flat.sum(axis=1)
    if normalize == "abs":
        return np.abs(flat).sum(axis=1)
    if normalize == "max":
        return np.abs(flat).max(axis=1)
    if normalize == "l2":
        return np.sqrt((flat * flat).sum(axis=1))
    raise MethodError(f"evaluator {EVALUATOR!r}: normalize={normalize!r}; use one of "
                      f"{', '.join(repr(a) for a in NORMALIZE)}")


def heatmap_features(da: xr.DataArray, layout: HeatmapLayout, channels: str = "sum", normalize: str | None = "sum",
                     batch_size: int | None = None, progress_bar: bool | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(pooled, normalised, flattened heatmaps ``(N, prod(shape))`` float64, normalisation factors ``(N,)``).

    A heatmap whose factor is 0 (all zero, or summing to exactly 0 under ``normalize="sum"``) is left
    unnormalised; a warning says how many there were. One process: :func:`features_chunk` on each block.
    """
    parts = ((sl, pooled_features(block, layout, normalize))
             for sl, block in reduced_heatmaps(da, layout, channels, batch_size, progress_bar))
    return combine_features(int(da.sizes["sample"]), layout, parts, normalize)


def features_chunk(block: np.ndarray, start: int, layout: HeatmapLayout, channels: str = "sum",
                   normalize: str | None = "sum") -> tuple[np.ndarray, np.ndarray]:
    """Step 1 for one block of relevance as read (sample first, in ``layout.order``; its first sample is
    sample ``start``): its features and normalisation factors (a factor 0 is kept)."""
    return pooled_features(reduce_block(block, start, layout.channel_axes, channels), layout, normalize)


def pooled_features(heatmaps: np.ndarray, layout: HeatmapLayout, normalize: str | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Channel-reduced heatmaps pooled, normalised and flattened, and their normalisation factors."""
    pooled = sum_pool(heatmaps, layout.shape)
    f = normalization_factors(pooled, normalize)
    safe = np.where(f == 0, 1.0, f)
    return pooled.reshape(len(pooled), -1) / safe[:, None], f


def combine_features(n: int, layout: HeatmapLayout, parts: Any, normalize: str | None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Step 1's blocks ``(samples, (features, factors))`` joined into ``(N, prod(shape))`` features and
    ``(N,)`` factors, the zero factors set to 1 (:func:`unit_zero_factors`)."""
    features = np.empty((n, int(np.prod(layout.shape))), dtype=np.float64)
    factors = np.empty(n, dtype=np.float64)
    for sl, (f, fac) in parts:
        features[sl] = f
        factors[sl] = fac
    return features, unit_zero_factors(factors, normalize)


def unit_zero_factors(factors: np.ndarray, normalize: str | None) -> np.ndarray:
    """Factors of heatmaps left unnormalised (factor 0) set to 1, in place, with a warning saying how many."""
    zero = int((factors == 0).sum())
    if zero:
        warnings.warn(f"SpRAy: {zero} heatmap(s) have normalisation factor 0 under normalize={normalize!r} "
                      "and were left unnormalised", stacklevel=4)
        factors[factors == 0] = 1.0
    return factors


# --------------------------------------------------------------------------------------------------
# steps 2-4: kNN graph, Laplacian, spectrum
# --------------------------------------------------------------------------------------------------

def nearest_neighbors(features: np.ndarray, n_neighbors: int, approximate: bool = False, seed: int = 0) -> np.ndarray:
    """``(N, n_neighbors)`` indices of each row's nearest other rows (Euclidean), nearest first.

    Exact: scikit-learn's brute-force search (BLAS, chunked; each sample itself is excluded, as
    scikit-learn does when asked for the neighbours of the fitted data). ``approximate=True``: the
    nearest-neighbour descent of ``pynndescent`` (seeded), when it is installed.
    """
    n = len(features)
    if not approximate:
        return neighbors_chunk(features, 0, n, n_neighbors)
    try:
        from pynndescent import NNDescent
    except ImportError:
        raise MethodError(f"evaluator {EVALUATOR!r}: approximate=True needs pynndescent, which is not installed "
                          "(pip install pynndescent); the exact search (approximate=False) needs nothing more") from None
    # a wider search graph than asked for (30 neighbours, pynndescent's default) keeps the recall high
    index = NNDescent(features, n_neighbors=max(n_neighbors + 1, 30), random_state=seed, metric="euclidean")
    idx, _ = index.neighbor_graph
    out = np.empty((n, n_neighbors), dtype=np.int64)
    for i in range(n):                                 # drop the sample itself (or, if absent, the farthest)
        row = idx[i][idx[i] != i]
        out[i] = row[:n_neighbors]
    return out


def neighbors_chunk(features: np.ndarray, a: int, b: int, n_neighbors: int) -> np.ndarray:
    """Rows ``a..b-1``'s exact nearest other rows, as scikit-learn's ``kneighbors()`` of the fitted data
    gives them (one process searches all rows at once, a cluster :data:`NEIGHBOR_ROWS` per task)."""
    from sklearn.neighbors import NearestNeighbors   # optional (SpRAy's extra), as scipy below
    idx = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(features).kneighbors(
        features[a:b], n_neighbors=n_neighbors + 1, return_distance=False)
    mask = idx != np.arange(a, b)[:, None]          # drop the row itself, as scikit-learn does
    mask[:, 0][np.all(mask, axis=1)] = False        # (absent among equal rows: drop the farthest)
    return idx[mask].reshape(b - a, n_neighbors)


def affinity_from_neighbors(idx: np.ndarray):
    """The symmetrised 0/1 affinity ``(A + Aᵀ)/2`` (scipy CSR) of ``(N, k)`` neighbour indices."""
    import scipy.sparse as sp
    n, k = idx.shape
    rows = np.repeat(np.arange(n), k)
    a = sp.csr_matrix((np.ones(n * k, dtype=np.float64), (rows, idx.ravel())), shape=(n, n))
    return (a + a.T) / 2.0


def knn_affinity(features: np.ndarray, n_neighbors: int = 10, approximate: bool = False, seed: int = 0):
    """The symmetrised k-nearest-neighbour affinity ``(A + Aᵀ)/2`` (scipy CSR), ``A[i, j] = 1`` when
    ``j`` is one of the ``n_neighbors`` nearest other heatmaps of ``i``."""
    n = len(features)
    if n_neighbors >= n:
        raise InputError(f"SpRAy needs more samples than n_neighbors: {n} sample(s), n_neighbors={n_neighbors}")
    return affinity_from_neighbors(nearest_neighbors(features, n_neighbors, approximate=approximate, seed=seed))


def normalized_affinity(affinity):
    """``D^-1/2 A D^-1/2`` with ``D`` the degrees (row sums) of ``A`` (what CoRelAy's
    ``SymmetricNormalLaplacian`` returns)."""
    import scipy.sparse as sp
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    if (degree <= 0).any():
        raise InputError("the affinity graph has isolated vertices (degree 0); the normalised Laplacian is undefined")
    d = sp.diags(degree ** -0.5, 0)
    return d @ affinity @ d


def laplacian(affinity):
    """The symmetric normalised Laplacian ``L = I - D^-1/2 A D^-1/2``."""
    import scipy.sparse as sp
    return sp.identity(affinity.shape[0], format="csr") - normalized_affinity(affinity)


def spectrum(affinity, n_eigenvalues: int = 32, eigensolver: str = "smallest", seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues of the normalised Laplacian in ascending order, their eigenvectors as columns).

    ``"smallest"``: the ``n_eigenvalues`` smallest eigenvalues of ``L``. ``"corelay"``: the
    eigenvalues of ``S = I - L`` largest in magnitude (CoRelAy's ``eigsh(S, which='LM')``), reported as
    ``1 - λ(S)``. Up to :data:`DENSE_MAX` samples the problem is solved densely (LAPACK), beyond that by
    ARPACK (``scipy.sparse.linalg.eigsh``) from a seeded start vector. Each eigenvector's sign is fixed
    so that its largest-magnitude entry is positive.
    """
    from scipy.sparse.csgraph import connected_components
    s = normalized_affinity(affinity)
    n = s.shape[0]
    m = int(n_eigenvalues)
    if m > n:
        raise InputError(f"n_eigenvalues={m} exceeds the number of samples ({n})")
    if n <= DENSE_MAX:
        w, v = _eigen_select(s, m, eigensolver, seed)
    else:
        # A disconnected graph has the eigenvalue 0 once per component; Lanczos (ARPACK) from one start
        # vector finds repeated eigenvalues unreliably (CoRelAy's eigsh misses some), so each component
        # is solved alone and the results are merged (the spectrum of a block-diagonal matrix).
        n_comp, comp = connected_components(affinity, directed=False)
        if n_comp == 1:
            w, v = _eigen_select(s, m, eigensolver, seed)
        else:
            ws, cols = [], []
            for c in range(n_comp):
                idx = np.flatnonzero(comp == c)
                if len(idx) == 1:
                    wc, vc = np.ones(1), np.ones((1, 1))
                else:
                    wc, vc = _eigen_select(s[idx][:, idx], min(m, len(idx)), eigensolver, seed)
                for j in range(len(wc)):
                    ws.append(wc[j])
                    cols.append((idx, vc[:, j]))
            ws = np.asarray(ws)
            key = -ws if eigensolver == "smallest" else -np.abs(ws)
            pick = np.argsort(key, kind="stable")[:m]
            w = ws[pick]
            v = np.zeros((n, m))
            for j, p in enumerate(pick):
                idx, col = cols[p]
                v[idx, j] = col
    lam = 1.0 - w
    order = np.argsort(lam, kind="stable")
    lam, v = lam[order], np.array(v[:, order])
    big = np.abs(v).argmax(axis=0)
    v *= np.where(v[big, np.arange(v.shape[1])] < 0, -1.0, 1.0)
    return lam, v


def _eigen_select(s, m: int, eigensolver: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``m`` eigenpairs of the symmetric ``s``: the largest (``"smallest"`` of ``I - s``) or the largest
    in magnitude (``"corelay"``); dense LAPACK up to :data:`DENSE_MAX` rows, else ARPACK."""
    n = s.shape[0]
    if n <= DENSE_MAX or m >= n - 1:
        from scipy.linalg import eigh
        w, v = eigh(s.toarray())                       # ascending eigenvalues of S
        if eigensolver == "smallest":
            pick = np.arange(n - m, n)
        else:
            pick = np.argsort(-np.abs(w), kind="stable")[:m]
        return w[pick], v[:, pick]
    from scipy.sparse.linalg import eigsh
    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
    return eigsh(s, k=m, which="LA" if eigensolver == "smallest" else "LM", v0=v0)


def row_normalize(vectors: np.ndarray) -> np.ndarray:
    """Each row divided by its Euclidean norm (CoRelAy's ``EigenDecomposition(normalize=True)``)."""
    norm = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norm == 0, 1.0, norm)


def eigengap(eigenvalues: np.ndarray, eigensolver: str = "smallest") -> tuple[int, np.ndarray]:
    """(suggested number of clusters, gaps ``λ[i+1] - λ[i]`` between the ascending eigenvalues).

    The suggestion is the number of eigenvalues below the largest gap. With ``"corelay"`` only the
    eigenvalues below 1 are considered (the rest come from the top of the spectrum).
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    gaps = np.diff(lam)
    use = lam < 1.0 if eigensolver == "corelay" else np.ones(len(lam), bool)
    low = lam[use]
    if len(low) < 2:
        return 1, gaps
    return int(np.argmax(np.diff(low))) + 1, gaps


# --------------------------------------------------------------------------------------------------
# steps 6-7: clustering and 2-D embedding
# --------------------------------------------------------------------------------------------------

def cluster_embedding(embedding: np.ndarray, clustering: Any = "kmeans", n_clusters: int = 2, seed: int = 0,
                      params: dict | None = None) -> np.ndarray:
    """Cluster labels (ints, DBSCAN's noise -1) of the rows of the spectral embedding.

    ``"kmeans"``: scikit-learn ``KMeans(n_clusters, random_state=seed, n_init=10)``; ``"dbscan"``:
    ``DBSCAN()`` (``eps``, ``min_samples`` through ``params``; ``n_clusters`` is not used);
    ``"agglomerative"``: ``AgglomerativeClustering(n_clusters)`` (Ward). ``params`` override the
    estimator's arguments. Any object with ``fit_predict`` (a scikit-learn clusterer) is used as is.
    """
    params = dict(params or {})
    if hasattr(clustering, "fit_predict"):
        return np.asarray(clustering.fit_predict(embedding), dtype=np.int64)
    import sklearn.cluster as skc
    try:
        if clustering == "kmeans":
            est = skc.KMeans(**{"n_clusters": n_clusters, "random_state": seed, "n_init": 10, **params})
        elif clustering == "dbscan":
            est = skc.DBSCAN(**params)
        elif clustering == "agglomerative":
            est = skc.AgglomerativeClustering(**{"n_clusters": n_clusters, **params})
        else:
            raise MethodError(f"evaluator {EVALUATOR!r}: clustering={clustering!r}; use one of "
                              f"{', '.join(repr(c) for c in CLUSTERINGS)} or a scikit-learn clusterer")
        return np.asarray(est.fit_predict(embedding), dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise MethodError(f"evaluator {EVALUATOR!r}: clustering={clustering!r} with clustering_params {params}: "
                          f"{err}") from None


def embed_2d(embedding: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """A ``(N, 2)`` embedding of the spectral embedding's rows for plotting."""
    n = len(embedding)
    if method == "auto":
        method = "tsne" if n <= TSNE_MAX else "spectral"
    if method == "spectral":
        cols = [1, 2] if embedding.shape[1] >= 3 else [0, min(1, embedding.shape[1] - 1)]
        return np.array(embedding[:, cols], dtype=np.float64)
    if method == "tsne":
        from sklearn.manifold import TSNE
        if n < 3:
            raise InputError(f"t-SNE needs at least 3 samples, got {n}")
        perplexity = float(min(30.0, (n - 1) / 3.0))
        return TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(embedding)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise MethodError(f"evaluator {EVALUATOR!r}: embedding='umap' needs umap-learn, which is not installed "
                              "(pip install umap-learn); use 'tsne' or 'spectral'") from None
        return np.asarray(umap.UMAP(n_components=2, random_state=seed).fit_transform(embedding), dtype=np.float64)
    raise MethodError(f"evaluator {EVALUATOR!r}: embedding={method!r}; use one of "
                      f"{', '.join(repr(e) for e in EMBEDDINGS)}")


def prototypes(da: xr.DataArray, layout: HeatmapLayout, labels: np.ndarray, factors: np.ndarray, channels: str = "sum",
               batch_size: int | None = None, progress_bar: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(cluster ids, ``(clusters, *spatial)`` mean of each cluster's normalised full-resolution heatmaps)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(ids), int(np.prod(layout.spatial_shape))), dtype=np.float64)
    for sl, block in reduced_heatmaps(da, layout, channels, batch_size, progress_bar, desc="spray: prototypes"):
        member = np.zeros((len(ids), len(block)))
        member[inverse[sl], np.arange(len(block))] = 1.0 / factors[sl]
        sums += member @ block.reshape(len(block), -1)        # each cluster's sum of normalised heatmaps
    counts = np.bincount(inverse, minlength=len(ids))
    return ids, (sums / counts[:, None]).reshape((len(ids),) + layout.spatial_shape)


# --------------------------------------------------------------------------------------------------
# the evaluator
# --------------------------------------------------------------------------------------------------

def _check(params: dict) -> dict:
    p = check_params(EVALUATOR, params, DEFAULTS)
    if p["channels"] not in CHANNELS:
        raise MethodError(f"evaluator {EVALUATOR!r}: channels={p['channels']!r}; use one of "
                          f"{', '.join(repr(c) for c in CHANNELS)}")
    if p["normalize"] not in NORMALIZE:
        raise MethodError(f"evaluator {EVALUATOR!r}: normalize={p['normalize']!r}; use one of "
                          f"{', '.join(repr(c) for c in NORMALIZE)}")
    choice(EVALUATOR, "eigensolver", p["eigensolver"], EIGENSOLVERS)
    p["n_neighbors"] = positive_int(EVALUATOR, "n_neighbors", p["n_neighbors"])
    p["n_eigenvalues"] = positive_int(EVALUATOR, "n_eigenvalues", p["n_eigenvalues"])
    if p["n_eigenvalues"] < 2:
        raise MethodError(f"evaluator {EVALUATOR!r}: n_eigenvalues must be at least 2 (the eigengap needs two)")
    p["n_clusters"] = positive_int(EVALUATOR, "n_clusters", p["n_clusters"], allow_none=True)
    p["batch_size"] = positive_int(EVALUATOR, "batch_size", p["batch_size"], allow_none=True)
    p["seed"] = seed_of(EVALUATOR, p["seed"])
    if not hasattr(p["clustering"], "fit_predict") and p["clustering"] not in CLUSTERINGS:
        raise MethodError(f"evaluator {EVALUATOR!r}: clustering={p['clustering']!r}; use one of "
                          f"{', '.join(repr(c) for c in CLUSTERINGS)} or a scikit-learn clusterer")
    if p["clustering_params"] is not None and not isinstance(p["clustering_params"], dict):
        raise MethodError(f"evaluator {EVALUATOR!r}: clustering_params must be a dict, got {p['clustering_params']!r}")
    nc = p["n_components"]
    if not (nc is None or nc == "all" or (isinstance(nc, (int, np.integer)) and not isinstance(nc, bool) and nc >= 1)):
        raise MethodError(f"evaluator {EVALUATOR!r}: n_components must be None (as many eigenvectors as clusters), "
                          f"'all' or a positive integer, got {nc!r}")
    if p["embedding"] not in EMBEDDINGS:
        raise MethodError(f"evaluator {EVALUATOR!r}: embedding={p['embedding']!r}; use one of "
                          f"{', '.join(repr(e) for e in EMBEDDINGS)}")
    if not isinstance(p["approximate"], bool):
        raise MethodError(f"evaluator {EVALUATOR!r}: approximate must be True or False, got {p['approximate']!r}")
    return p


@dataclass
class SprayPlan:
    """SpRAy's inputs checked once, before a heatmap is read: the contract between the analysis and its
    schedulers. One process (:func:`spray`) runs steps 1 and 2 with :func:`heatmap_features` and
    :func:`knn_affinity`; ``attribx.distributed`` runs their chunks as tasks (:func:`features_chunk` per
    block of :meth:`blocks`, :func:`neighbors_chunk` per rows of :meth:`neighbor_rows`); both hand the
    features and the affinity to :func:`analyse`, so the checks and the numbers are the same."""
    p: dict                      # the checked parameters
    da: xr.DataArray             # the relevance: lazy when it is a file or dask-backed
    path: str | None             # the relevance file, when the relevance was given as one
    layout: HeatmapLayout

    @property
    def n(self) -> int:
        return int(self.da.sizes["sample"])

    def heatmaps(self) -> xr.DataArray:
        """The relevance in the layout's order (sample, channels, spatial), as step 1 reads it."""
        return self.da.transpose(*self.layout.order)

    def blocks(self) -> list[slice]:
        """Step 1's blocks of samples, as :func:`heatmap_features` reads them."""
        return sample_blocks(self.heatmaps(), self.p["batch_size"], self.layout.sample_bytes(self.da))

    def neighbor_rows(self) -> list[tuple[int, int]]:
        """Step 2's chunks of query rows ``(a, b)``, :data:`NEIGHBOR_ROWS` each."""
        return [(a, min(self.n, a + NEIGHBOR_ROWS)) for a in range(0, self.n, NEIGHBOR_ROWS)]


def plan(relevance: Any, params: dict) -> SprayPlan:
    """Check the parameters and the relevance (an array, a DataArray, a Dataset, a dask-backed one or a
    file by ``str`` or ``os.PathLike`` path, opened lazily) once, before any heatmap is read."""
    p = _check(params)
    da, path = open_heatmaps(relevance, p["variable"])
    layout = HeatmapLayout(da, p["size"])
    n = int(da.sizes["sample"])
    if n <= p["n_neighbors"]:
        raise InputError(f"SpRAy needs more samples than n_neighbors: {n} sample(s), n_neighbors={p['n_neighbors']}")
    if p["n_eigenvalues"] > n:
        raise MethodError(f"evaluator {EVALUATOR!r}: n_eigenvalues={p['n_eigenvalues']} exceeds the number of "
                          f"samples ({n})")
    if p["n_clusters"] is not None and p["n_clusters"] > n:
        raise MethodError(f"evaluator {EVALUATOR!r}: n_clusters={p['n_clusters']} exceeds the number of samples ({n})")
    return SprayPlan(p, da, path, layout)


def spray(model: Any = None, inputs: Any = None, relevance: Any = None, **params: Any) -> xr.Dataset:
    """Spectral relevance analysis of many heatmaps; no model is needed (``model`` and ``inputs`` are
    ignored). See the module docstring for the steps and ``docs/evaluators.md`` for the parameters.

    Returns an ``xarray.Dataset`` with ``eigenvalues`` (``eigen``) and ``eigengap`` (``eigen``: the gap
    to the next eigenvalue), ``spectral_embedding`` (``sample, eigen``: all eigenvectors, each row
    normalised; the clustering sees the first ``n_components`` of them, row-normalised again),
    ``cluster`` (``sample``), ``embedding`` (``sample, axis``; absent with ``embedding=None``),
    ``prototype`` (``cluster`` and the spatial dims; the coordinate ``cluster_label`` says which cluster
    each is) and ``cluster_size`` (``cluster``); ``attrs["n_clusters"]`` is the eigengap's suggestion and
    ``attrs["n_clusters_used"]`` the number of clusters found (DBSCAN's noise not counted).
    """
    sp = plan(relevance, params)
    p = sp.p
    timings: dict[str, float] = {}
    t = time.perf_counter()
    features, factors = heatmap_features(sp.da, sp.layout, p["channels"], p["normalize"], p["batch_size"],
                                         p["progress_bar"])
    timings["features"] = time.perf_counter() - t
    t = time.perf_counter()
    affinity = knn_affinity(features, p["n_neighbors"], approximate=p["approximate"], seed=p["seed"])
    timings["knn"] = time.perf_counter() - t
    return analyse(sp, features, factors, affinity, timings)


def analyse(plan: SprayPlan, features: np.ndarray, factors: np.ndarray, affinity: Any,
            timings: dict | None = None) -> xr.Dataset:
    """Steps 3-8 and the result Dataset, from step 1's features and factors and step 2's affinity
    (``timings``: seconds the caller spent on steps 1 and 2, kept in the attrs)."""
    p, da, path, layout, n = plan.p, plan.da, plan.path, plan.layout, plan.n
    timings = dict(timings or {})
    t = time.perf_counter()
    lam, vectors = spectrum(affinity, p["n_eigenvalues"], p["eigensolver"], p["seed"])
    timings["eigen"] = time.perf_counter() - t
    suggested, gaps = eigengap(lam, p["eigensolver"])
    emb = row_normalize(vectors)
    k = p["n_clusters"] or suggested
    if p["n_components"] == "all":
        space = emb
    else:
        n_comp = p["n_components"] or k
        if n_comp > len(lam):
            raise MethodError(f"evaluator {EVALUATOR!r}: the clustering needs {n_comp} eigenvectors (n_components, "
                              f"else n_clusters), only n_eigenvalues={len(lam)} were computed")
        space = row_normalize(vectors[:, :n_comp])
    t = time.perf_counter()
    labels = cluster_embedding(space, p["clustering"], k, p["seed"], p["clustering_params"])
    timings["clustering"] = time.perf_counter() - t
    t = time.perf_counter()
    emb_method = p["embedding"]
    if emb_method == "auto":
        emb_method = "tsne" if n <= TSNE_MAX else "spectral"
    xy = None
    if emb_method is not None:   # of all eigenvectors (as ViRelAy shows them): the first k collapse each cluster
        xy = embed_2d(emb, emb_method, p["seed"])
    timings["embedding"] = time.perf_counter() - t
    t = time.perf_counter()
    ids, protos = prototypes(da, layout, labels, factors, p["channels"], p["batch_size"], p["progress_bar"])
    timings["prototypes"] = time.perf_counter() - t

    sample_coords = {name: c.variable for name, c in da.coords.items() if c.dims == ("sample",)}
    if "sample" not in sample_coords:
        sample_coords["sample"] = xr.Variable(("sample",), np.arange(n))
    spatial_coords = {d: da.coords[d].variable for d in layout.spatial_dims if d in da.coords}
    m = len(lam)
    data = {
        "eigenvalues": xr.Variable(("eigen",), lam, {"description": "smallest eigenvalues of the symmetric normalised "
                                                                    "Laplacian I - D^-1/2 A D^-1/2, ascending"
                                                     if p["eigensolver"] == "smallest" else
                                                     "eigenvalues of I - D^-1/2 A D^-1/2 selected as CoRelAy does "
                                                     "(largest |1 - lambda|), ascending"}),
        "eigengap": xr.Variable(("eigen",), np.append(gaps, np.nan),
                                {"description": "eigenvalues[i + 1] - eigenvalues[i] (NaN after the last)"}),
        "spectral_embedding": xr.Variable(("sample", "eigen"), emb,
                                          {"description": "eigenvectors, each row (sample) normalised to length 1"}),
        "cluster": xr.Variable(("sample",), labels, {"clustering": str(p["clustering"])}),
        "prototype": xr.Variable(("cluster",) + tuple(layout.spatial_dims), protos,
                                 {"description": f"mean of each cluster's heatmaps ({p['channels']} over channels, "
                                                 f"divided by their normalisation factor), full resolution"}),
        "cluster_size": xr.Variable(("cluster",), np.bincount(np.searchsorted(ids, labels), minlength=len(ids))),
    }
    if xy is not None:
        data["embedding"] = xr.Variable(("sample", "axis"), np.asarray(xy, dtype=np.float64),
                                        {"method": emb_method})
    attrs = result_attrs(EVALUATOR, {k2: v for k2, v in p.items() if k2 != "progress_bar"}, relevance=da,
                         relevance_file=path, seed=p["seed"], n_clusters=int(suggested),
                         n_clusters_used=int((ids >= 0).sum()), eigensolver=p["eigensolver"],
                         pooled_shape=list(layout.shape), n_samples=n,
                         n_edges=int(affinity.nnz), timings=timings)
    # ``cluster`` names both the per-sample labels and the prototypes' dim (the issue's vocabulary); xarray
    # keeps a variable named like a dim as a coordinate, so the labels of the prototypes are ``cluster_label``
    coords = {**sample_coords, "eigen": np.arange(m), "cluster_label": ("cluster", ids), **spatial_coords}
    if xy is not None:
        coords["axis"] = np.arange(2)
    return xr.Dataset(data, coords=coords, attrs=attrs)
