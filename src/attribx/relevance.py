"""Labeled relevance: numpy results of a relevance pass -> xarray with dims, coords and provenance."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from .version import __version__


def provenance(graph, method, params: Mapping[str, Any], engine, **extra) -> dict:
    """The attrs every relevance object carries: what made it, from which model."""
    attrs = {
        "method": method.name,
        "parameters": dict(params),
        "engine": engine.name,
        "backend": graph.meta.get("backend", "unknown"),
        "attribx_version": __version__,
        "model_fingerprint": graph.fingerprint(),
        "model_name": graph.meta.get("name", "model"),
    }
    attrs.update(extra)
    return attrs


def sample_coords(n: int, sample=None, targets=None, prediction=None, label=None) -> dict:
    coords: dict[str, Any] = {"sample": np.arange(n) if sample is None else np.asarray(sample)}
    for key, val in (("target", targets), ("prediction", prediction), ("label", label)):
        if val is not None:
            coords[key] = ("sample", np.asarray(val))
    return coords


def node_dims(node: str, ndim: int) -> tuple[str, ...]:
    """Dims for the relevance at an inner node: the sample axis, then ``node:1``, ``node:2``, ..."""
    return ("sample",) + tuple(f"{node}:{i}" for i in range(1, ndim))


def _fitting(coords: dict, dims: tuple) -> dict:
    """The coords whose dims a variable with ``dims`` has (per-token coords do not fit an inner layer)."""
    def coord_dims(key, value):
        d = value[0] if isinstance(value, tuple) else key
        return {d} if isinstance(d, str) else set(d)
    return {k: v for k, v in coords.items() if coord_dims(k, v) <= set(dims)}


def labeled(input_relevance: np.ndarray, dims: tuple, coords: dict, attrs: dict,
          layers: Mapping[str, np.ndarray] | None = None,
          conservation: Mapping[str, np.ndarray] | None = None, score: np.ndarray | None = None):
    """A DataArray named ``relevance``; a Dataset when inner layers or a conservation report are asked."""
    rel = xr.DataArray(input_relevance, dims=dims, coords=coords, name="relevance", attrs=attrs)
    if not layers and conservation is None:
        return rel
    data = {"relevance": rel}
    for name, values in (layers or {}).items():
        layer_dims = node_dims(name, values.ndim)
        data[name] = xr.DataArray(values, dims=layer_dims, coords=_fitting(coords, layer_dims))
    if conservation is not None:
        coords = _fitting(coords, ("sample",))
        names = list(conservation)
        data["conservation"] = xr.DataArray(np.stack([conservation[k] for k in names], axis=1),
                                            dims=("sample", "node"), coords={**coords, "node": names},
                                            attrs={"description": "relevance sum per sample at each node's output"})
        if score is not None:
            data["score"] = xr.DataArray(score, dims=("sample",), coords=coords,
                                         attrs={"description": "the relevance the pass started from, summed"})
    return xr.Dataset(data, attrs=attrs)


def concat_batches(pieces: Sequence[dict]) -> dict:
    """Join per-batch numpy results along the sample axis."""
    return {k: np.concatenate([p[k] for p in pieces], axis=0) for k in pieces[0]}
