"""Relevance read as heatmaps, one block of samples at a time: what SpRAy's analysis and its ViRelAy
export share.

A lazily opened (dask) relevance file larger than memory is never loaded whole: :func:`open_heatmaps`
opens it lazily, :class:`HeatmapLayout` says which dims are channels and which are spatial, and
:func:`read_blocks` / :func:`reduced_heatmaps` read it block by block (:func:`sample_blocks`), each block
checked and reduced over its channels by :func:`reduce_block`.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np
import xarray as xr

from ..errors import InputError, MethodError
from ..progress import progress
from ..storage import open_relevance
from .base import read_relevance

_WHO = "spray"              # the evaluator named in errors
CHANNEL_DIMS = ("channel", "embedding")   # dims summed away by the channel reduction
BLOCK_BYTES = 32 << 20      # relevance read ~32 MiB (as float64 heatmaps) at a time when not chunked by dask


def open_heatmaps(relevance: Any, variable: str | None) -> tuple[xr.DataArray, str | None]:
    """The relevance as a DataArray without reading it into memory when it is lazy (dask) or a file
    (a ``str`` or ``os.PathLike`` path), and the file's absolute path (or None)."""
    path = None
    if isinstance(relevance, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(relevance))
        try:
            import dask.array  # noqa: F401  (optional: without dask the file is read whole)
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


class HeatmapLayout:
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
        self.channel_axes = tuple(range(1, 1 + len(self.channel_dims)))    # in ``order``

    def sample_bytes(self, da: xr.DataArray) -> int:
        """One sample's heatmap as float64, in bytes (blocks are sized by it)."""
        return 8 * int(np.prod([da.sizes[d] for d in self.order[1:]], dtype=np.int64))

    def _pooled_shape(self, size: Any) -> tuple[int, ...]:
        nd = len(self.spatial_dims)
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            want = (int(size),) * nd
        elif isinstance(size, (list, tuple)) and len(size) == nd and all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size):
            want = tuple(int(s) for s in size)
        else:
            raise MethodError(f"evaluator {_WHO!r}: size must be a positive integer or {nd} of them "
                              f"(one per spatial dim {tuple(self.spatial_dims)}), got {size!r}")
        if min(want) < 1:
            raise MethodError(f"evaluator {_WHO!r}: size must be positive, got {size!r}")
        # never up-sample: a heatmap smaller than ``size`` keeps its own resolution along that axis
        return tuple(min(w, n) for w, n in zip(want, self.spatial_shape))


def sample_blocks(da: xr.DataArray, batch_size: int | None, per_sample_bytes: int) -> list[slice]:
    """Blocks of samples to read: ``batch_size`` each, else ~32 MiB (as float64) each, never across a
    dask chunk boundary (a lazily opened file is read chunk by chunk, a large chunk in parts)."""
    n = int(da.sizes["sample"])
    step = batch_size or max(1, BLOCK_BYTES // max(per_sample_bytes, 1))
    bounds = [0, n]
    if getattr(da, "chunks", None) is not None and hasattr(da, "chunksizes") and da.chunksizes.get("sample"):
        bounds = [0] + [int(b) for b in np.cumsum(da.chunksizes["sample"])]
    return [slice(i, min(b, i + step)) for a, b in zip(bounds[:-1], bounds[1:]) for i in range(a, b, step)]


def read_blocks(da: xr.DataArray, layout: HeatmapLayout, batch_size: int | None = None,
                progress_bar: bool | None = None, desc: str = "spray: pooling") -> Iterator[tuple[slice, np.ndarray]]:
    """Blocks of ``(samples, relevance as read)`` in the layout's order (sample, channels, spatial), one at a time."""
    da = da.transpose(*layout.order)
    blocks = sample_blocks(da, batch_size, layout.sample_bytes(da))
    for sl in progress(blocks, len(blocks), desc, progress_bar if len(blocks) > 1 else False):
        yield sl, np.asarray(da.isel(sample=sl).values)        # the stored dtype: no float64 copy of it all


def reduced_heatmaps(da: xr.DataArray, layout: HeatmapLayout, channels: str, batch_size: int | None = None,
                     progress_bar: bool | None = None, desc: str = "spray: pooling"
                     ) -> Iterator[tuple[slice, np.ndarray]]:
    """Blocks of ``(samples, channel-reduced float64 heatmaps)``, read one block at a time."""
    for sl, block in read_blocks(da, layout, batch_size, progress_bar, desc):
        yield sl, reduce_block(block, sl.start, layout.channel_axes, channels)


def reduce_block(block: np.ndarray, start: int, caxes: tuple, channels: str) -> np.ndarray:
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
