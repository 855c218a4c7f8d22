"""SpRAy at data-set scale: attribx against CoRelAy on synthetic heatmaps.

Synthetic relevance: ``n`` heatmaps of 1×20×20 (float32) in ``--groups`` planted groups, each group
hot in its own square, plus Gaussian noise. Both pipelines do the same analysis: sum over channels,
normalise by the sum, kNN graph (k=10, symmetrised), symmetric normalised Laplacian, 32 eigenvalues,
k-means (seed 0, n_init=10) with as many clusters as planted groups. CoRelAy's pipeline is its
``SpectralClustering`` with ``SciPyPDist`` (a dense N×N distance matrix), ``SparseKNN``,
``SymmetricNormalLaplacian`` and ``EigenDecomposition(which='LA')`` (the smallest eigenvalues, as
attribx's default) and its ``KMeans`` on all 32 row-normalised eigenvectors (attribx with
``n_components='all'``, the same clustering input). CoRelAy is run only up to ``--corelay-max``
samples: its dense distance matrix needs 8·N² bytes (80 GB at 100k) and its argsort as much again.

    python benchmarks/spray.py --sizes 10000 100000 --out benchmarks/RESULTS.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np


def synthetic(n: int, groups: int = 5, hw: int = 20, noise: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, groups, n)
    x = rng.normal(0.0, noise, (n, 1, hw, hw)).astype(np.float32)
    x += 0.05   # keep each heatmap's sum clearly positive (normalisation by the sum)
    side = hw // 4
    for g in range(groups):
        r, c = divmod(g, 3)
        y0, x0 = 1 + r * (side + 2), 1 + c * (side + 2)
        x[labels == g, :, y0:y0 + side, x0:x0 + side] += 1.0
    return x, labels


def run_ours(x, groups, approximate=False, embedding=None):
    import xarray as xr
    from attribx.evaluators.spray import spray
    rel = xr.DataArray(x, dims=("sample", "channel", "height", "width"), name="relevance")
    t = time.perf_counter()
    res = spray(relevance=rel, n_clusters=groups, n_components="all", embedding=embedding, approximate=approximate,
                progress_bar=False)
    return time.perf_counter() - t, res


def run_corelay(x, groups):
    from corelay.pipeline.spectral import SpectralClustering
    from corelay.processor.affinity import SparseKNN
    from corelay.processor.base import Processor
    from corelay.processor.clustering import KMeans
    from corelay.processor.embedding import EigenDecomposition
    from corelay.processor.flow import Sequential

    class SumChannel(Processor):
        def function(self, data):
            return data.sum(axis=1)

    class Normalize(Processor):
        def function(self, data):
            return data / data.sum((1, 2), keepdims=True)

    class Flatten(Processor):
        def function(self, data):
            return data.reshape(data.shape[0], -1)

    pipe = SpectralClustering(
        preprocessing=Sequential([SumChannel(), Normalize(), Flatten()]),
        affinity=SparseKNN(n_neighbors=10, symmetric=True),
        embedding=EigenDecomposition(n_eigval=32, which="LA", is_output=True),
        clustering=KMeans(n_clusters=groups, kwargs={"random_state": 0, "n_init": 10}, is_output=True))
    t = time.perf_counter()
    (ev, _), labels = pipe(x.astype(np.float64))
    return time.perf_counter() - t, np.sort(ev), labels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--groups", type=int, default=5)
    ap.add_argument("--corelay-max", type=int, default=20000)
    ap.add_argument("--tsne", type=int, default=10000, help="also time the t-SNE embedding up to this many samples")
    ap.add_argument("--approximate", action="store_true", help="also time approximate=True (needs pynndescent)")
    ap.add_argument("--out", default=None, help="append a section to this Markdown file")
    args = ap.parse_args(argv)
    from sklearn.metrics import adjusted_rand_score

    rows = []
    notes = []
    for n in args.sizes:
        x, truth = synthetic(n, args.groups)
        t_ours, res = run_ours(x, args.groups)
        tm = res.attrs["timings"]
        ari = adjusted_rand_score(truth, res["cluster"].values)
        stages = ", ".join(f"{k} {v:.1f}" for k, v in tm.items() if k != "embedding")
        rows.append((n, "attribx, n_components='all' (CoRelAy's clustering input)", t_ours, None,
                     f"{stages}; ARI vs planted {ari:.3f}"))
        print(rows[-1], flush=True)
        # attribx's default clustering: the first k eigenvectors, row-normalised (rescaling a row of the
        # stored embedding does not change that), on the same graph and eigenvectors
        from attribx.evaluators.spray import cluster_embedding, row_normalize
        t = time.perf_counter()
        emb = np.asarray(res["spectral_embedding"].values)
        njw = cluster_embedding(row_normalize(emb[:, :args.groups]), "kmeans", args.groups, 0)
        t_njw = time.perf_counter() - t
        rows.append((n, "attribx default (first k eigenvectors)", t_ours - tm["clustering"] + t_njw, None,
                     f"clustering {t_njw:.1f}; ARI vs planted {adjusted_rand_score(truth, njw):.3f}; "
                     f"eigengap suggests {res.attrs['n_clusters']}"))
        print(rows[-1], flush=True)
        if args.approximate:
            t_apx, res_apx = run_ours(x, args.groups, approximate=True)
            emb_apx = np.asarray(res_apx["spectral_embedding"].values)
            njw_apx = cluster_embedding(row_normalize(emb_apx[:, :args.groups]), "kmeans", args.groups, 0)
            rows.append((n, "attribx, approximate=True (pynndescent)", t_apx, None,
                         f"knn {res_apx.attrs['timings']['knn']:.1f}; neighbour recall {_recall(x, n):.4f} "
                         f"(1000 samples); ARI vs planted {adjusted_rand_score(truth, njw_apx):.3f} (default "
                         f"clustering); max abs Δeigenvalue vs exact "
                         f"{np.abs(res_apx.eigenvalues.values - res.eigenvalues.values).max():.2g}"))
            print(rows[-1], flush=True)
        if n <= args.tsne:
            from attribx.evaluators.spray import embed_2d
            t = time.perf_counter()
            embed_2d(np.asarray(res["spectral_embedding"].values), "tsne", 0)
            rows.append((n, "attribx t-SNE embedding (extra)", time.perf_counter() - t, None, "sklearn TSNE on the 32-d embedding"))
            print(rows[-1], flush=True)
        if n <= args.corelay_max:
            try:
                t_cr, ev_cr, lab_cr = run_corelay(x, args.groups)
            except ImportError:
                notes.append("CoRelAy is not installed: no CoRelAy timings.")
            else:
                d_ev = np.abs(ev_cr - res.eigenvalues.values).max()
                ari_cr = adjusted_rand_score(lab_cr, res["cluster"].values)
                rows.append((n, "CoRelAy 1.0.0", t_cr, t_cr / t_ours,
                             f"max abs Δeigenvalue vs attribx {d_ev:.2g}; ARI vs attribx {ari_cr:.3f}"))
                print(rows[-1], flush=True)
        else:
            notes.append(f"CoRelAy not run at {n} samples: its dense distance matrix alone needs "
                         f"{8 * n * n / 1e9:.0f} GB (this machine has {_mem_gb():.0f} GB).")

    lines = [f"\n## {datetime.date.today().isoformat()}: SpRAy, attribx vs CoRelAy "
             f"({os.cpu_count()}-core {platform.machine()}, {_mem_gb():.0f} GB)\n",
             "Produced by `benchmarks/spray.py` (synthetic 1×20×20 float32 heatmaps in "
             f"{args.groups} planted groups plus noise; k=10, 32 eigenvalues, k-means with "
             f"{args.groups} clusters on all 32 row-normalised eigenvectors; one run each, wall-clock "
             "seconds on a shared machine).\n",
             "Stage times (s) are from the result's `timings` attr: features (read, pool, normalise), "
             "knn (graph), eigen (32 eigenpairs), clustering (k-means, n_init=10), prototypes (second pass).\n",
             "| samples | implementation | time (s) | CoRelAy / attribx | notes |",
             "|---|---|---|---|---|"]
    for n, impl, t, ratio, note in rows:
        lines.append(f"| {n} | {impl} | {t:.1f} | {'' if ratio is None else f'{ratio:.1f}×'} | {note} |")
    lines += [""] + [f"- {s}" for s in dict.fromkeys(notes)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text)


def _recall(x, n, k=10, rows=1000):
    """Share of the exact 10 nearest neighbours that approximate=True finds, over ``rows`` samples."""
    import xarray as xr
    from sklearn.neighbors import NearestNeighbors
    from attribx.evaluators import spray as S
    rel = xr.DataArray(x, dims=("sample", "channel", "height", "width"))
    f, _ = S.heatmap_features(rel, S._Layout(rel, 20))
    approx = S.nearest_neighbors(f, k, approximate=True)
    pick = np.random.default_rng(0).choice(n, min(rows, n), replace=False)
    exact = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(f).kneighbors(f[pick], return_distance=False)
    exact = [e[e != i][:k] for e, i in zip(exact, pick)]
    return float(np.mean([len(np.intersect1d(e, a)) / k for e, a in zip(exact, approx[pick])]))


def _mem_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return float("nan")


if __name__ == "__main__":
    sys.exit(main())
