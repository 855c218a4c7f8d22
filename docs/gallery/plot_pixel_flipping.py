"""
Pixel flipping: which explanation points at what matters?
=========================================================

Pixel flipping (Samek et al., IEEE TNNLS 2017) replaces the pixels an explanation calls most relevant
first, step by step, and records how the explained score falls. A good explanation makes it fall fast,
faster than a random order; AOPC, the area over that curve, is the number to compare.
Here LRP-ε, LRP-z⁺, the gradient and sensitivity (the squared gradient) explain the digits MLP, and
all 64 pixels are flipped, one per step. (On a ReLU network LRP-0 equals gradient × input, and LRP-ε
with a small ε nearly so.)
"""
import attribx
from attribx.demo import digits_graph
from attribx.evaluators import plot_curves

graph, images, labels, accuracy = digits_graph(hidden=(64, 32), seed=0)
x = images[:48]

results = {}
for name, method, params in [("LRP-ε (ε=1)", "lrp.epsilon", {"epsilon": 1.0}), ("LRP-z⁺", "lrp.z_plus", {}),
                             ("gradient", "gradient", {}), ("sensitivity", "sensitivity", {})]:
    rel = attribx.explain(graph, x, method, target="predicted", **params)
    results[name] = attribx.evaluate("pixel_flipping", graph, x, rel, repeats=2, seed=0)
    print(f"{name:18s} AOPC {results[name].attrs['aopc']:.3f}   random order {results[name].attrs['aopc_random']:.3f}")

# %%
# The mean curves, with the random order drawn dashed.
fig = plot_curves(results, title="pixel flipping on the digits MLP (MoRF)")

# %%
# The result is an ``xarray.Dataset`` (curves per sample, AOPC per sample, provenance in the attrs)
# that ``attribx.save`` writes to the same HDF5 format as relevance.
print(results["LRP-ε (ε=1)"])
