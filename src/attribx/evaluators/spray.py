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
:func:`plot_clusters` and :func:`plot_spray`, exported for CoRelAy's viewer ViRelAy by
:func:`export_virelay`.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import xarray as xr

from ..errors import InputError, MethodError
from .base import check_params, choice, positive_int, read_relevance, result_attrs, seed_of

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
CHANNEL_DIMS = ("channel", "embedding")   # dims summed away by the channel reduction

DENSE_MAX = 1000            # up to this many samples the eigenproblem is solved densely (exact, all at once)
_BLOCK_BYTES = 32 << 20     # relevance read ~32 MiB (as float64 heatmaps) at a time when not chunked by dask


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


class _Layout:
    """Which dims of the relevance are channels and which are spatial, and the pooled shape."""

    def __init__(self, da: xr.DataArray, size: Any):
        other = [d for d in da.dims if d != "sample"]
        self.channel_dims = [d for d in other if d in CHANNEL_DIMS]
        self.spatial_dims = [d for d in other if d not in CHANNEL_DIMS]
        if len(self.spatial_dims) not in (1, 2):
            raise InputError(f"SpRAy analyses 2-D heatmaps (or 1-D sequences): the relevance has dims {da.dims}; "
                             f"name the channel dim 'channel' (relevance.rename(...)) so that two spatial dims remain")
        self.spatial_shape = tuple(int(da.sizes[d]) for d in self.spatial_dims)
        self.shape = self._pooled_shape(size)
        self.order = ["sample"] + self.channel_dims + self.spatial_dims

    def _pooled_shape(self, size: Any) -> tuple[int, ...]:
        nd = len(self.spatial_dims)
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            want = (int(size),) * nd
        elif isinstance(size, (list, tuple)) and len(size) == nd and all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size):
            want = tuple(int(s) for s in size)
        else:
            raise MethodError(f"evaluator {EVALUATOR!r}: size must be a positive integer or {nd} of them "
                              f"(one per spatial dim {tuple(self.spatial_dims)}), got {size!r}")
        if min(want) < 1:
            raise MethodError(f"evaluator {EVALUATOR!r}: size must be positive, got {size!r}")
        # never up-sample: a heatmap smaller than ``size`` keeps its own resolution along that axis
        return tuple(min(w, n) for w, n in zip(want, self.spatial_shape))


def _sample_blocks(da: xr.DataArray, batch_size: int | None, per_sample_bytes: int) -> list[slice]:
    """Blocks of samples to read: ``batch_size`` each, else ~32 MiB (as float64) each, never across a
    dask chunk boundary (a lazily opened file is read chunk by chunk, a large chunk in parts)."""
    n = int(da.sizes["sample"])
    step = batch_size or max(1, _BLOCK_BYTES // max(per_sample_bytes, 1))
    bounds = [0, n]
    if getattr(da, "chunks", None) is not None and hasattr(da, "chunksizes") and da.chunksizes.get("sample"):
        bounds = [0] + [int(b) for b in np.cumsum(da.chunksizes["sample"])]
    return [slice(i, min(b, i + step)) for a, b in zip(bounds[:-1], bounds[1:]) for i in range(a, b, step)]


def reduced_heatmaps(da: xr.DataArray, layout: _Layout, channels: str, batch_size: int | None = None,
                     progress_bar: bool | None = None, desc: str = "spray: pooling"
                     ) -> Iterator[tuple[slice, np.ndarray]]:
    """Blocks of ``(samples, channel-reduced float64 heatmaps)``, read one block at a time."""
    from ..progress import progress
    da = da.transpose(*layout.order)
    per_sample = 8 * int(np.prod([da.sizes[d] for d in layout.order[1:]], dtype=np.int64))
    blocks = _sample_blocks(da, batch_size, per_sample)
    caxes = tuple(range(1, 1 + len(layout.channel_dims)))
    for sl in progress(blocks, len(blocks), desc, progress_bar if len(blocks) > 1 else False):
        block = np.asarray(da.isel(sample=sl).values)          # the stored dtype: no float64 copy of it all
        yield sl, _reduce_block(block, sl.start, caxes, channels)


def _reduce_block(block: np.ndarray, start: int, caxes: tuple, channels: str) -> np.ndarray:
    """One block of read relevance checked and reduced over its channels, as float64."""
    if block.dtype.kind != "f" or not np.isfinite(block).all():
        block = block.astype(np.float64)
        if not np.isfinite(block).all():
            bad = int(np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0]) + start
            raise InputError(f"relevance of sample {bad} (position {bad} along 'sample') contains NaN or "
                             "infinite values")
    if channels == "abs":
        block = np.abs(block)
    # channel sums accumulate in float64 (numpy casts in small buffers, not the whole block)
    return block.sum(axis=caxes, dtype=np.float64) if caxes else block.astype(np.float64, copy=False)


def heatmap_features(da: xr.DataArray, layout: _Layout, channels: str = "sum", normalize: str | None = "sum",
                     batch_size: int | None = None, progress_bar: bool | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(pooled, normalised, flattened heatmaps ``(N, prod(shape))`` float64, normalisation factors ``(N,)``).

    A heatmap whose factor is 0 (all zero, or summing to exactly 0 under ``normalize="sum"``) is left
    unnormalised; a warning says how many there were.
    """
    n = int(da.sizes["sample"])
    features = np.empty((n, int(np.prod(layout.shape))), dtype=np.float64)
    factors = np.empty(n, dtype=np.float64)
    for sl, block in reduced_heatmaps(da, layout, channels, batch_size, progress_bar):
        pooled = sum_pool(block, layout.shape)
        f = normalization_factors(pooled, normalize)
        factors[sl] = f
        safe = np.where(f == 0, 1.0, f)
        features[sl] = pooled.reshape(len(pooled), -1) / safe[:, None]
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
        from sklearn.neighbors import NearestNeighbors
        nn = NearestNeighbors(n_neighbors=n_neighbors, algorithm="brute").fit(features)
        return nn.kneighbors(return_distance=False)
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


def knn_affinity(features: np.ndarray, n_neighbors: int = 10, approximate: bool = False, seed: int = 0):
    """The symmetrised k-nearest-neighbour affinity ``(A + Aᵀ)/2`` (scipy CSR), ``A[i, j] = 1`` when
    ``j`` is one of the ``n_neighbors`` nearest other heatmaps of ``i``."""
    import scipy.sparse as sp
    n = len(features)
    if n_neighbors >= n:
        raise InputError(f"SpRAy needs more samples than n_neighbors: {n} sample(s), n_neighbors={n_neighbors}")
    idx = nearest_neighbors(features, n_neighbors, approximate=approximate, seed=seed)
    rows = np.repeat(np.arange(n), n_neighbors)
    a = sp.csr_matrix((np.ones(n * n_neighbors, dtype=np.float64), (rows, idx.ravel())), shape=(n, n))
    return (a + a.T) / 2.0


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


def prototypes(da: xr.DataArray, layout: _Layout, labels: np.ndarray, factors: np.ndarray, channels: str = "sum",
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

def _open(relevance: Any, variable: str | None) -> tuple[xr.DataArray, str | None]:
    """The relevance as a DataArray without reading it into memory when it is lazy (dask) or a file."""
    path = None
    if isinstance(relevance, (str, os.PathLike)):
        from ..storage import open_relevance
        path = os.path.abspath(os.fspath(relevance))
        try:
            import dask.array  # noqa: F401
            lazy: Any = True
        except ImportError:
            lazy = "auto"
        relevance = open_relevance(path, lazy=lazy)
    if isinstance(relevance, xr.Dataset) and not relevance.chunks:
        return read_relevance(relevance, variable)[0], path
    if isinstance(relevance, xr.DataArray) and relevance.chunks is None:
        return read_relevance(relevance, variable)[0], path
    if isinstance(relevance, xr.Dataset):            # lazy: pick the variable as read_relevance does
        names = list(relevance.data_vars)
        if variable is None:
            variable = "relevance" if "relevance" in names else (names[0] if len(names) == 1 else None)
            if variable is None:
                raise InputError(f"the relevance holds several variables {names}; choose one with variable=")
        if variable not in names:
            raise InputError(f"the relevance has no variable {variable!r}; it holds {names}")
        da = relevance[variable]
        da.attrs = {**relevance.attrs, **da.attrs}
        relevance = da
    if isinstance(relevance, xr.DataArray):
        if "sample" not in relevance.dims:
            raise InputError(f"relevance has dims {relevance.dims}; it needs a 'sample' dim")
        if relevance.dtype.kind not in "fiub":
            raise InputError(f"relevance must be numeric, got dtype {relevance.dtype}")
        return relevance, path                       # finiteness is checked block by block
    arr = relevance.detach().cpu().numpy() if hasattr(relevance, "detach") else relevance
    ndim = np.ndim(arr)
    dims = {2: ("sample", "length"), 3: ("sample", "height", "width"),
            4: ("sample", "channel", "height", "width")}.get(ndim)
    if relevance is not None and dims is None:
        raise InputError(f"SpRAy takes relevance arrays of 2, 3 or 4 axes (sample first), got shape {np.shape(arr)}")
    return read_relevance(arr, variable, dims=dims)[0], path


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
    return _spray(relevance, params, heatmap_features, knn_affinity)


def _spray(relevance: Any, params: dict, features_fn: Any, knn_fn: Any) -> xr.Dataset:
    """:func:`spray` with the pooling and the neighbour search given (``attribx.distributed`` runs them on
    a dask cluster; same arguments and results as :func:`heatmap_features` and :func:`knn_affinity`)."""
    p = _check(params)
    da, path = _open(relevance, p["variable"])
    layout = _Layout(da, p["size"])
    n = int(da.sizes["sample"])
    if n <= p["n_neighbors"]:
        raise InputError(f"SpRAy needs more samples than n_neighbors: {n} sample(s), n_neighbors={p['n_neighbors']}")
    if p["n_eigenvalues"] > n:
        raise MethodError(f"evaluator {EVALUATOR!r}: n_eigenvalues={p['n_eigenvalues']} exceeds the number of "
                          f"samples ({n})")
    if p["n_clusters"] is not None and p["n_clusters"] > n:
        raise MethodError(f"evaluator {EVALUATOR!r}: n_clusters={p['n_clusters']} exceeds the number of samples ({n})")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    features, factors = features_fn(da, layout, p["channels"], p["normalize"], p["batch_size"], p["progress_bar"])
    timings["features"] = time.perf_counter() - t
    t = time.perf_counter()
    affinity = knn_fn(features, p["n_neighbors"], approximate=p["approximate"], seed=p["seed"])
    timings["knn"] = time.perf_counter() - t
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


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo") and not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(n: int):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_spectrum(result: xr.Dataset, ax=None):
    """The eigenvalue spectrum with its gaps; the largest gap (the eigengap's suggestion) is marked.

    Returns the ``matplotlib.figure.Figure`` (the one of ``ax`` when given).
    """
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
    else:
        fig = ax.figure
    lam = np.asarray(result["eigenvalues"].values)
    gaps = np.diff(lam)
    idx = np.arange(1, len(lam) + 1)
    ax.plot(idx, lam, "o", color="C0", ms=4, label="eigenvalue")
    k = int(result.attrs.get("n_clusters", 1))
    ax2 = ax.twinx()
    bar_colors = ["C3" if i + 1 == k else "0.7" for i in range(len(gaps))]
    ax2.bar(idx[:-1] + 0.5, gaps, width=0.6, color=bar_colors, alpha=0.6, label="gap")
    ax2.set_ylabel("gap to the next eigenvalue")
    if 1 <= k < len(lam):
        ax.axvline(k + 0.5, color="C3", ls="--", lw=1)
        ax.annotate(f"largest gap: {k} cluster{'s' if k != 1 else ''}", xy=(k + 0.5, lam[k]),
                    xytext=(6, -14), textcoords="offset points", color="C3", fontsize=8)
    ax.set_xlabel("index (ascending)")
    ax.set_ylabel("eigenvalue of L")
    ax.set_title(f"SpRAy spectrum ({result.attrs.get('eigensolver', 'smallest')})", fontsize=10)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    return fig


def plot_clusters(result: xr.Dataset, fig=None, max_prototypes: int = 20):
    """The 2-D embedding coloured by cluster, and each cluster's prototype heatmap beside it (its
    frame in the cluster's colour). Without an ``embedding`` variable the first two non-trivial
    spectral coordinates are drawn. Returns the ``matplotlib.figure.Figure``."""
    plt = _pyplot()
    ids = np.asarray(result["cluster_label"].values)
    shown = ids[:max_prototypes]
    ncols = int(math.ceil(len(shown) / 4)) if len(shown) > 4 else 1
    nrows = min(4, len(shown))
    if fig is None:
        fig = plt.figure(figsize=(5.0 + 1.6 * ncols, 4.4))
    # room between the prototypes for their titles (without it a title sits on the frame above)
    gs = fig.add_gridspec(max(nrows, 1), 1 + ncols, width_ratios=[3.2 * max(nrows, 1) / 2] + [1] * ncols,
                          hspace=0.5, wspace=0.3)
    ax = fig.add_subplot(gs[:, 0])
    if "embedding" in result:
        xy = np.asarray(result["embedding"].values)
        name = str(result["embedding"].attrs.get("method", "embedding"))
    else:
        emb = np.asarray(result["spectral_embedding"].values)
        xy = emb[:, [1, 2]] if emb.shape[1] >= 3 else emb[:, :2]
        name = "spectral"
    labels = np.asarray(result["cluster"].values)
    colors = _colors(len(ids))
    for c, col in zip(ids, colors):
        sel = labels == c
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color="0.6" if c < 0 else col,
                   label=f"{'noise' if c < 0 else c} ({int(sel.sum())})")
    ax.set_title(f"{name} embedding, {len(ids)} cluster(s)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(ids) <= 12:
        ax.legend(fontsize=7, markerscale=2, loc="best")
    proto = result["prototype"]
    for i, c in enumerate(shown):
        pax = fig.add_subplot(gs[i % nrows, 1 + i // nrows])
        img = np.asarray(proto.isel(cluster=i).values)
        if img.ndim == 1:
            img = img[None, :]
        lim = float(np.abs(img).max()) or 1.0
        pax.imshow(img, cmap="bwr", vmin=-lim, vmax=lim, interpolation="nearest",
                   aspect="auto" if img.shape[0] == 1 else "equal")      # a heatmap keeps its shape
        pax.set_xticks([])
        pax.set_yticks([])
        for spine in pax.spines.values():
            spine.set_edgecolor("0.6" if c < 0 else colors[i])
            spine.set_linewidth(2.5)
        pax.set_title(f"{'noise' if c < 0 else f'cluster {c}'}", fontsize=8)
    return fig


def plot_spray(result: xr.Dataset):
    """One figure: the spectrum (left) and the clusters with their prototypes (right)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(13.0, 4.6))
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.7])
    plot_spectrum(result, ax=left.subplots())
    plot_clusters(result, fig=right)
    return fig


# --------------------------------------------------------------------------------------------------
# ViRelAy export
# --------------------------------------------------------------------------------------------------

def _yaml_str(s: str) -> str:
    return json.dumps(str(s), ensure_ascii=False)      # a JSON string is a valid YAML scalar


def export_virelay(result: xr.Dataset, relevance: Any, directory: str | os.PathLike, inputs: Any = None,
                   project_name: str = "attribx SpRAy", class_names: Sequence[str] | None = None,
                   variable: str | None = None) -> str:
    """Write a ViRelAy project: ``attribution.h5``, ``analysis.h5``, ``dataset.h5``, ``label-map.json``
    and ``project.yaml`` in ``directory``; returns the project file's path.

    The layout is the one ViRelAy reads (``virelay.model``): the attribution database holds
    ``attribution`` (samples × channel × height × width, float32), ``label``, ``prediction`` (samples
    × classes; one-hot of the predicted class, attribx keeps the class, not the scores) and ``index``;
    the analysis database one group per category (here one, named after the explained class when all
    samples share it, else ``"all"``) with ``index``, ``embedding/spectral`` (the spectral embedding,
    ``eigenvalue`` attribute), ``embedding/<tsne|umap|spectral-2d>`` and ``cluster/<name>`` (the
    cluster labels). ``dataset.h5`` holds the inputs when given; without them it holds the
    channel-summed heatmaps scaled to [0, 1] so that the project opens (ViRelAy requires a data set).
    """
    import h5py
    da, _ = _open(relevance, variable)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    n = int(da.sizes["sample"])
    if int(result.sizes["sample"]) != n:
        raise InputError(f"the SpRAy result has {int(result.sizes['sample'])} samples, the relevance {n}")
    layout = _Layout(da, 1)
    if len(layout.spatial_dims) != 2:
        raise InputError("ViRelAy shows images: export_virelay needs relevance with two spatial dims")
    da = da.transpose("sample", *layout.channel_dims, *layout.spatial_dims)

    def coord(name):
        return np.asarray(da.coords[name].values).astype(np.int64) if name in da.coords else None

    target, label, prediction = coord("target"), coord("label"), coord("prediction")
    label_values = label if label is not None else (target if target is not None else np.zeros(n, np.int64))
    known = [a for a in (target, label, prediction) if a is not None]
    n_classes = int(max([int(a.max()) for a in known] + [0])) + 1
    if class_names is not None:
        n_classes = max(n_classes, len(class_names))
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    names += [str(i) for i in range(len(names), n_classes)]
    with open(os.path.join(directory, "label-map.json"), "w", encoding="utf-8") as f:
        json.dump([{"index": i, "word_net_id": f"{i:08d}", "name": names[i]} for i in range(n_classes)], f, indent=1)

    shape = (n,) + tuple(int(da.sizes[d]) for d in layout.spatial_dims)
    with h5py.File(os.path.join(directory, "attribution.h5"), "w") as f:
        c = int(np.prod([da.sizes[d] for d in layout.channel_dims])) if layout.channel_dims else 1
        att = f.create_dataset("attribution", (n, c) + shape[1:], dtype=np.float32)
        step = max(1, _BLOCK_BYTES // max(4 * c * int(np.prod(shape[1:])), 1))
        for start in range(0, n, step):
            block = np.asarray(da.isel(sample=slice(start, start + step)).values, dtype=np.float32)
            att[start:start + len(block)] = block.reshape((len(block), c) + shape[1:])
        f["label"] = label_values.astype(np.uint16)
        pred = np.zeros((n, n_classes), np.float32)
        if prediction is not None:
            pred[np.arange(n), prediction] = 1.0
        f["prediction"] = pred
        f["index"] = np.arange(n, dtype=np.uint32)

    with h5py.File(os.path.join(directory, "dataset.h5"), "w") as f:
        if inputs is not None:
            x = np.asarray(inputs.values if isinstance(inputs, xr.DataArray) else inputs, dtype=np.float32)
            if len(x) != n:
                raise InputError(f"inputs hold {len(x)} samples, the relevance {n}")
            if x.ndim == 3:
                x = x[:, None]
            f["data"] = x
        else:
            data = f.create_dataset("data", (n, 1) + shape[1:], dtype=np.float32)
            for sl, block in reduced_heatmaps(da, layout, "sum", None, False):
                lim = np.abs(block).reshape(len(block), -1).max(axis=1)
                lim = np.where(lim == 0, 1.0, lim).reshape(-1, 1, 1)
                data[sl] = ((block / lim + 1.0) / 2.0)[:, None].astype(np.float32)
        f["label"] = label_values.astype(np.uint16)

    if target is not None and len(np.unique(target)) == 1:
        category = f"{int(target[0]):08d}"
    else:
        category = "all"
    clustering = str(result["cluster"].attrs.get("clustering", "cluster"))
    k = int(result.attrs.get("n_clusters_used", len(np.unique(result["cluster"].values))))
    with h5py.File(os.path.join(directory, "analysis.h5"), "w") as f:
        g = f.require_group(category)
        g["name"] = category
        g["index"] = np.arange(n, dtype=np.uint32)
        e = g.require_group("embedding")
        spectral = np.asarray(result["spectral_embedding"].values, dtype=np.float32)
        e["spectral"] = spectral
        e["spectral"].attrs["eigenvalue"] = np.asarray(result["eigenvalues"].values, dtype=np.float32)
        if "embedding" in result:
            name = str(result["embedding"].attrs.get("method", "embedding"))
            name = "spectral-2d" if name == "spectral" else name
            e[name] = np.asarray(result["embedding"].values, dtype=np.float32)
            e[name].attrs["embedding"] = "spectral"
            e[name].attrs["index"] = np.array([0, 1])
        cl = g.require_group("cluster")
        cname = f"{clustering}-{k:02d}"
        cl[cname] = np.asarray(result["cluster"].values, dtype=np.int64)
        cl[cname].attrs["embedding"] = "spectral"
        cl[cname].attrs["k"] = k
        cl[cname].attrs["index"] = np.arange(spectral.shape[1], dtype=np.uint32)

    method = str(da.attrs.get("method", "relevance"))
    project = os.path.join(directory, "project.yaml")
    lines = [
        "project:",
        f"  name: {_yaml_str(project_name)}",
        f"  model: {_yaml_str(da.attrs.get('model_name', 'model'))}",
        f"  label_map: {_yaml_str('label-map.json')}",
        "  dataset:",
        f"    name: {_yaml_str('inputs' if inputs is not None else 'heatmaps (no inputs given)')}",
        "    type: hdf5",
        f"    path: {_yaml_str('dataset.h5')}",
        f"    input_width: {shape[2]}",
        f"    input_height: {shape[1]}",
        "    down_sampling_method: none",
        "    up_sampling_method: none",
        "  attributions:",
        f"    attribution_method: {_yaml_str(method)}",
        "    attribution_strategy: true_label",
        "    sources:",
        f"      - {_yaml_str('attribution.h5')}",
        "  analyses:",
        f"    - analysis_method: {_yaml_str('spray-' + str(result.attrs.get('eigensolver', 'smallest')))}",
        "      sources:",
        f"        - {_yaml_str('analysis.h5')}",
    ]
    with open(project, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return project
