"""
Heatmaps of a digits classifier
===============================

A small multilayer perceptron is trained by scikit-learn on its 8×8 digits (a second or two), written
into an attribx graph with the public builder, and explained with LRP-ε, LRP-0, gradient × input and
the plain gradient. Red is evidence for the explained class (the predicted one), blue against it; each
heatmap is coloured on its own symmetric scale, so white is exactly zero.
"""
import matplotlib.pyplot as plt
import numpy as np

import attribx
from attribx.demo import digits_graph

graph, images, labels, accuracy = digits_graph(hidden=(64, 32), seed=0)
print(graph)
print(f"test accuracy: {accuracy:.3f}")

# %%
# Explain 8 test digits with four methods. Each call returns an ``xarray.DataArray`` with dims
# ``(sample, channel, height, width)`` and the explained target as a coordinate.
x = images[:8]
methods = {"LRP-ε": ("lrp.epsilon", {"epsilon": 0.1}), "LRP-0": ("lrp.zero", {}),
           "gradient × input": ("gradient_x_input", {}), "gradient": ("gradient", {})}
relevance = {name: attribx.explain(graph, x, method, target="predicted", **params)
             for name, (method, params) in methods.items()}
print(relevance["LRP-ε"].dims, relevance["LRP-ε"].coords["target"].values)

# %%
# One row per method, the input in the first row.
fig, axes = plt.subplots(len(methods) + 1, len(x), figsize=(1.2 * len(x), 1.3 * (len(methods) + 1)))
for j in range(len(x)):
    axes[0, j].imshow(x[j, 0], cmap="gray_r")
    axes[0, j].set_title(f"label {labels[j]}", fontsize=8)
    for i, (name, rel) in enumerate(relevance.items(), start=1):
        r = rel.values[j].sum(0)
        lim = np.abs(r).max() or 1.0
        axes[i, j].imshow(r, cmap="bwr", vmin=-lim, vmax=lim)
for i, name in enumerate(["input", *methods]):
    axes[i, 0].set_ylabel(name, fontsize=8)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()

# %%
# LRP conserves the explained score: with LRP-0 and a network without biases the heatmap sums to the
# logit exactly; with biases (as here) part of the score goes to them.
scores = attribx.forward(graph, x)
target = relevance["LRP-0"].coords["target"].values
print("logit of the target:", np.round(scores[np.arange(len(x)), target], 2))
print("sum of LRP-0       :", np.round(relevance["LRP-0"].sum(["channel", "height", "width"]).values, 2))

# %%
# The same relevance drawn by :mod:`attribx.render` (what ``attribx render`` uses for saved files), now
# with one colour scale per method over all samples (``norm="global"``), so that weak and strong
# evidence can be told apart from sample to sample.
import xarray as xr

from attribx import render

methods_ds = xr.Dataset({name: rel for name, rel in relevance.items()})
grid = render.heatmap_grid(methods_ds, x, norm="global", input_cmap="gray_r", cell=1.1)
