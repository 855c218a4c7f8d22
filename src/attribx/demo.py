"""``attribx demo``: train a small network on scikit-learn's digits, explain it, save and draw the result.

Nothing is downloaded: the digits ship with scikit-learn. The network is trained by scikit-learn
(``MLPClassifier``) and written into an attribx graph with the public builder, which is exactly how
a model from any other framework reaches attribx (a backend plugin does the writing).
"""
from __future__ import annotations

import os
import time

import numpy as np
import xarray as xr

from .errors import AttribxError

DEMO_METHODS = ("lrp.epsilon", "lrp.zero", "gradient_x_input", "gradient")


def digits_graph(hidden=(64, 32), seed=0):
    """Train an MLP on 8x8 digits (a few seconds) and return (graph, test images, test labels, accuracy)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        raise AttribxError("the demo needs scikit-learn: pip install 'attribx[demo]'") from None
    from .builder import GraphBuilder

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)   # (n, 8, 8) in [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=seed)
    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=300, random_state=seed)
    clf.fit(x_train.reshape(len(x_train), -1), y_train)
    b = GraphBuilder("digits-mlp", trained_by="scikit-learn MLPClassifier")
    h = b.flatten(b.input("image", (1, 8, 8), layout="NCHW"))
    n_layers = len(clf.coefs_)
    for k, (w, bias) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        h = b.linear(h, w.T.astype(np.float32), bias.astype(np.float32), name=f"fc{k + 1}")
        if k < n_layers - 1:
            h = b.relu(h, name=f"relu{k + 1}")
    graph = b.build()
    acc = float(clf.score(x_test.reshape(len(x_test), -1), y_test))
    return graph, x_test[:, None], y_test, acc


def heatmap_grid(images: np.ndarray, relevance: xr.Dataset, path: str, n: int = 8) -> None:
    """One row per method, input in the first row; diverging colours centred at zero per heatmap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(relevance.data_vars)
    fig, axes = plt.subplots(len(methods) + 1, n, figsize=(1.3 * n, 1.4 * (len(methods) + 1)))
    for j in range(n):
        axes[0, j].imshow(images[j, 0], cmap="gray_r")
        axes[0, j].set_title(f"y={int(relevance.label[j])}", fontsize=8)
        for i, m in enumerate(methods, start=1):
            r = relevance[m].values[j].sum(0)
            lim = np.abs(r).max() or 1.0
            axes[i, j].imshow(r, cmap="bwr", vmin=-lim, vmax=lim)
    for i, m in enumerate(["input"] + methods):
        axes[i, 0].set_ylabel(m, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(out: str) -> dict:
    from .api import explain
    from .storage import save

    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    graph, x, y, acc = digits_graph()
    print(f"trained {graph.meta['name']} on scikit-learn digits: test accuracy {acc:.3f} "
          f"({time.perf_counter() - t0:.1f} s)")
    graph_path = os.path.join(out, "digits-mlp.npz")
    graph.save(graph_path)
    print(graph.summary())
    rels = {}
    for m in DEMO_METHODS:
        r = explain(graph, x, m, target="predicted", labels=y, engine="numpy")
        rels[m] = r
    ds = xr.Dataset({m: r.drop_attrs() if hasattr(r, "drop_attrs") else r for m, r in rels.items()})
    ds.attrs.update({k: v for k, v in rels[DEMO_METHODS[0]].attrs.items() if k not in ("method", "parameters")})
    ds.attrs["methods"] = list(DEMO_METHODS)
    ds.attrs["parameters"] = {m: r.attrs["parameters"] for m, r in rels.items()}
    rel_path = os.path.join(out, "relevance.h5")
    save(ds, rel_path)
    png = os.path.join(out, "heatmaps.png")
    heatmap_grid(x, ds, png)
    score = ds["lrp.epsilon"].sum(("channel", "height", "width"))
    print(f"explained {len(x)} test digits with {', '.join(DEMO_METHODS)} on the numpy engine")
    print(f"relevance (HDF5): {rel_path}\nheatmaps (PNG):   {png}\nmodel graph:      {graph_path}")
    return {"relevance": rel_path, "heatmaps": png, "graph": graph_path, "accuracy": acc,
            "lrp_sum": score.values}
