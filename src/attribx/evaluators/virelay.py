"""Export a SpRAy result as a project for CoRelAy's viewer ViRelAy (``virelay project.yaml``).

Re-exported by :mod:`attribx.evaluators.spray`; the relevance is read block by block
(:mod:`attribx.evaluators.heatmaps`), so a file larger than memory can be exported.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import h5py
import numpy as np
import xarray as xr

from ..errors import InputError
from .heatmaps import BLOCK_BYTES, HeatmapLayout, open_heatmaps, reduced_heatmaps


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
    da, _ = open_heatmaps(relevance, variable)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    n = int(da.sizes["sample"])
    if int(result.sizes["sample"]) != n:
        raise InputError(f"the SpRAy result has {int(result.sizes['sample'])} samples, the relevance {n}")
    layout = HeatmapLayout(da, 1)
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
        step = max(1, BLOCK_BYTES // max(4 * c * int(np.prod(shape[1:])), 1))
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
