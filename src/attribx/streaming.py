"""Streaming, resumable explain over data sets larger than memory: sources read batch by batch, and
:func:`explain_dataset`, which explains them into one file through :class:`~attribx.stream_writer.StreamWriter`.

Public API (stable; :mod:`attribx.distributed` builds on it)
-------------------------------------------------------------
``open_source(obj, ids=None) -> Source``
    ``obj``: a ``.npy`` path (read batch by batch from the file, never whole), ``"file.h5:dataset"``
    (or an ``h5py.Dataset``), a zarr array or ``.zarr`` path (if zarr is installed), a directory of
    PNG/JPEG images (Pillow; sorted file names are the sample ids), a numpy array / ``np.memmap``,
    or any iterable of batches (arrays, or dicts ``{"x": array, "sample": ids}``).
``Source``
    ``.n`` (samples, or None for an iterable), ``.batches(batch_size, start=0)`` yielding
    ``(ids, x)`` numpy pairs from sample position ``start`` on, ``.read(start, stop)`` (sized sources
    only) and ``.fingerprint()`` (a str identifying the data, for resume checks).
``StreamWriter(path, fingerprint, resume=False, total=None, batch_size=None)``, ``STREAM_ATTR``
    The resumable writer that appends each explained batch to ONE HDF5 relevance file and commits it;
    it and the file protocol live in :mod:`attribx.stream_writer` (the storage side) and are re-exported
    here. This module schedules: it reads the batches, explains them, reports progress and resumes where
    the writer's ``.committed`` says.
``run_fingerprint(graph, method, params, target, engine, source, **extra) -> str``
    The fingerprint :func:`explain_dataset` stores in the file.
``explain_dataset(model, source, out_path, method=..., target=..., *, output=None, batch_size=256, ...)``
    Explains every sample of a source into one relevance file; resumes an interrupted run.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import sys
from typing import Any, Iterable, Iterator

import numpy as np

from .api import _select_output, explain, get_engine, load_model, translate
from .errors import InputError, UnsupportedError
from .inputs import one_signal_input
from .methods import as_method
from .relevance_format import h5py, require_h5py
from .plugins import registry
from .stream_writer import STREAM_ATTR, StreamWriter

__all__ = ["open_source", "Source", "ArraySource", "NpyFileSource", "ImageDirSource", "IterableSource",
           "StreamWriter", "run_fingerprint", "explain_dataset", "STREAM_ATTR"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


# --------------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------------

def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(np.ascontiguousarray(p).tobytes())
            h.update(str((p.dtype.str, p.shape)).encode())
        else:
            h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


class Source:
    """Samples read batch by batch. Subclasses set ``n`` and implement :meth:`read`, or :meth:`batches`."""

    n: int | None = None
    ids: np.ndarray | None = None

    def read(self, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def sample_ids(self, start: int, stop: int) -> np.ndarray:
        if self.ids is not None:
            return np.asarray(self.ids[start:stop])
        return np.arange(start, stop)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(start, self.n, batch_size):
            e = min(self.n, s + batch_size)
            yield self.sample_ids(s, e), self.read(s, e)

    def sample_shape(self) -> tuple:
        """One sample's shape (no batch axis)."""
        return tuple(self.read(0, 1).shape[1:])

    def _content(self) -> Any:
        """Shape, dtype and the first and last samples: cheap and changes when the data does."""
        if not self.n:
            return ("empty",)
        return (self.n, self.read(0, 1), self.read(self.n - 1, self.n))

    def close(self) -> None:
        """Release what the source opened (an HDF5 file named by path); a no-op for most sources."""

    def fingerprint(self) -> str:
        ids = None if self.ids is None else _hash(np.asarray(self.ids))
        return _hash(type(self).__name__, self._content(), ids)


class ArraySource(Source):
    """Anything sliceable along axis 0: numpy arrays, ``np.memmap``, ``h5py.Dataset``, zarr arrays.

    Pages of an ``np.memmap`` are dropped (``madvise(MADV_DONTNEED)``) after each batch, so the
    process's resident memory stays flat however large the mapped file is.
    """

    def __init__(self, array: Any, ids: Any = None):
        if not hasattr(array, "shape") or len(array.shape) < 1:
            raise InputError(f"a source array needs a batch axis, got {type(array).__name__}")
        self.array = array
        self.n = int(array.shape[0])
        self.ids = None if ids is None else np.asarray(ids)
        if self.ids is not None and len(self.ids) != self.n:
            raise InputError(f"ids has {len(self.ids)} entries for {self.n} samples")

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.array(self.array[start:stop])
        self._drop_pages(start, stop)
        return out

    def _drop_pages(self, start: int, stop: int) -> None:
        mm = getattr(self.array, "_mmap", None)
        if not isinstance(self.array, np.memmap) or mm is None or not hasattr(mm, "madvise"):
            return
        try:
            row = int(np.prod(self.array.shape[1:])) * self.array.dtype.itemsize
            base = int(self.array.offset)  # the offset of the array in the file; the mmap starts page-aligned
            lo = (base % mmap.ALLOCATIONGRANULARITY) + start * row
            hi = (base % mmap.ALLOCATIONGRANULARITY) + stop * row
            lo -= lo % mmap.PAGESIZE
            mm.madvise(mmap.MADV_DONTNEED, lo, max(0, hi - lo))
        except (OSError, ValueError, AttributeError):
            pass


class NpyFileSource(Source):
    """A ``.npy`` file read batch by batch with plain file reads (no mapping, resident memory flat)."""

    def __init__(self, path: str, ids: Any = None):
        self.path = os.path.abspath(path)
        try:
            header = np.load(path, mmap_mode="r")
        except Exception as err:
            raise InputError(f"{path}: not a .npy array file ({err})") from None
        if not header.flags.c_contiguous or header.ndim < 1:
            raise InputError(f"{path}: streaming needs a C-ordered .npy array with a batch axis")
        self.shape, self.dtype, self.offset = header.shape, header.dtype, int(header.offset)
        self.row = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        del header
        self.n = int(self.shape[0])
        self.ids = None if ids is None else np.asarray(ids)

    def read(self, start: int, stop: int) -> np.ndarray:
        count = (stop - start) * int(np.prod(self.shape[1:]))
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.row)
            data = np.fromfile(f, dtype=self.dtype, count=count)
        return data.reshape((stop - start,) + tuple(self.shape[1:]))


class ImageDirSource(Source):
    """A directory of PNG/JPEG images (Pillow), in sorted file-name order; the file names are the ids.

    Images become float32 in [0, 1] (``scale``), ``layout="NCHW"`` (default) or ``"NHWC"``; grayscale
    images get one channel. ``mode``: a Pillow mode to convert to (``"L"``, ``"RGB"``).
    """

    def __init__(self, directory: str, layout: str = "NCHW", mode: str | None = None, scale: float = 1 / 255):
        try:
            from PIL import Image  # noqa: F401
        except ImportError:
            raise InputError("reading a directory of images needs Pillow: pip install pillow") from None
        self.directory = os.path.abspath(directory)
        self.files = sorted(f for f in os.listdir(directory) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not self.files:
            raise InputError(f"{directory}: no .png/.jpg/.jpeg images")
        if layout not in ("NCHW", "NHWC"):
            raise InputError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        self.layout, self.mode, self.scale = layout, mode, scale
        self.n = len(self.files)
        self.ids = np.array(self.files)

    def read(self, start: int, stop: int) -> np.ndarray:
        from PIL import Image
        out = []
        for name in self.files[start:stop]:
            with Image.open(os.path.join(self.directory, name)) as img:
                if self.mode is not None:
                    img = img.convert(self.mode)
                a = np.asarray(img, dtype=np.float32) * np.float32(self.scale)
            if a.ndim == 2:
                a = a[..., None]
            out.append(a.transpose(2, 0, 1) if self.layout == "NCHW" else a)
        shapes = {a.shape for a in out}
        if len(shapes) > 1:
            raise InputError(f"{self.directory}: images of different sizes {sorted(shapes)}; resize them first")
        return np.stack(out)

    def fingerprint(self) -> str:
        return _hash("images", self.directory, self.files, self.layout, self.mode, self.scale)


class IterableSource(Source):
    """Any iterable of batches: arrays (ids count on from 0) or dicts ``{"x": array, "sample": ids}``.

    Its length is unknown; resuming skips (reads and drops) the samples already in the file. Its
    fingerprint is only ``"iterable"`` unless one is given: the caller vouches for the data.
    """

    def __init__(self, iterable: Iterable, fingerprint: str | None = None):
        self.iterable = iterable
        self._fp = fingerprint
        self._peeked: list = []
        self._shape: tuple | None = None

    def _items(self):
        it = iter(self.iterable)
        if self._peeked:   # a one-pass iterator whose first item sample_shape() took
            yield self._peeked.pop()
        yield from it

    def sample_shape(self) -> tuple:
        if self._shape is None:
            it = iter(self.iterable)
            try:
                first = next(it)
            except StopIteration:
                raise InputError("the source holds no samples") from None
            if it is self.iterable:   # a one-pass iterator: keep the item for batches()
                self._peeked.append(first)
            x = first["x"] if isinstance(first, dict) else first
            self._shape = tuple(np.asarray(x).shape[1:])
        return self._shape

    def batches(self, batch_size: int, start: int = 0):
        """Batches of exactly ``batch_size`` samples (the last may be smaller), however the items are cut."""
        pos = 0
        buf_ids: list = []
        buf_x: list = []
        held = 0
        for item in self._items():
            if isinstance(item, dict):
                x = np.asarray(item["x"])
                ids = np.asarray(item["sample"]) if item.get("sample") is not None else np.arange(pos, pos + len(x))
            else:
                x = np.asarray(item)
                ids = np.arange(pos, pos + len(x))
            end = pos + len(x)
            if end > start:
                cut = max(0, start - pos)
                buf_x.append(x[cut:])
                buf_ids.append(ids[cut:])
                held += len(x) - cut
                while held >= batch_size:
                    xs, ids_all = np.concatenate(buf_x), np.concatenate(buf_ids)
                    yield ids_all[:batch_size], xs[:batch_size]
                    buf_x, buf_ids, held = [xs[batch_size:]], [ids_all[batch_size:]], held - batch_size
            pos = end
        if held:
            yield np.concatenate(buf_ids), np.concatenate(buf_x)

    def fingerprint(self) -> str:
        return self._fp or "iterable"


def open_source(obj: Any, ids: Any = None, **kwargs: Any) -> Source:
    """A :class:`Source` for ``obj`` (see the module docstring); ``kwargs`` go to :class:`ImageDirSource`."""
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if os.path.isdir(path) and not path.rstrip("/").endswith(".zarr"):
            return ImageDirSource(path, **kwargs)
        if path.endswith(".npy"):
            if not os.path.exists(path):
                raise InputError(f"{path}: no such file")
            return NpyFileSource(path, ids)
        if ".zarr" in path:
            try:
                import zarr
            except ImportError:
                raise InputError(f"{path}: reading zarr needs zarr: pip install zarr") from None
            return ArraySource(zarr.open(path, mode="r"), ids)
        file, sep, name = path.rpartition(":")
        if sep and file and os.path.exists(file):
            require_h5py()
            try:
                f = h5py.File(file, "r")
                src = ArraySource(f[name], ids)
            except (OSError, KeyError) as err:
                raise InputError(f"{path}: no HDF5 dataset {name!r} in {file} ({err})") from None
            src.close = f.close   # explain_dataset closes the file it opened
            return src
        if path.endswith((".h5", ".hdf5")):
            raise InputError(f"{path}: name the dataset: {path}:DATASET")
        raise InputError(f"{path}: not a streaming source (.npy, file.h5:dataset, .zarr, a directory of images)")
    if isinstance(obj, dict) or isinstance(obj, tuple) and len(obj) > 1 and all(hasattr(a, "shape") for a in obj):
        raise UnsupportedError(f"a {type(obj).__name__} of arrays is several inputs, which streaming does not take "
                               f"yet (use attribx.explain in memory; batches to stream come as a list or a generator)")
    if hasattr(obj, "shape") and hasattr(obj, "__getitem__") and len(getattr(obj, "shape")) >= 1:
        return ArraySource(obj, ids)
    if hasattr(obj, "__iter__"):
        return IterableSource(obj)
    raise InputError(f"cannot stream from a {type(obj).__module__}.{type(obj).__name__}")


# --------------------------------------------------------------------------------------------------
# explain_dataset
# --------------------------------------------------------------------------------------------------

def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return {"ndarray": _hash(v)}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (np.generic,)):
        return v.item()
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return repr(v)


def run_fingerprint(graph, method_name: str, params: dict, target: Any, engine_name: str, source: Source,
                    **extra: Any) -> str:
    """What a resumed run must share with the file: model, method, parameters, target, engine, data."""
    payload = {"model": graph.fingerprint(), "method": method_name, "params": _jsonable(params),
               "target": _jsonable(target), "engine": engine_name, "source": source.fingerprint(),
               "extra": _jsonable(extra)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def per_sample_slice(target: Any, start: int, stop: int):
    """The per-sample entries of ``target`` (or labels) for sample positions [start, stop)."""
    def part(t):
        if t is None or isinstance(t, (str, int, np.integer)):
            return t
        a = np.asarray(t)
        if a.ndim == 1:
            return a[start:stop]
        return a
    if isinstance(target, tuple) and len(target) == 3 and target[0] == "contrast":
        return ("contrast", part(target[1]), part(target[2]))
    return part(target)


def explain_dataset(model: Any, source: Any, out_path: str | os.PathLike, method: Any = "lrp.epsilon",
                    target: Any = "predicted", *, output: str | None = None, batch_size: int = 256, engine: Any = None,
                    resume: bool = True, labels: Any = None, layers: Any = None, conservation: bool = False,
                    progress_bar: bool | None = None, fingerprint: str | None = None, attrs: dict | None = None,
                    **params: Any) -> dict:
    """Explain every sample of ``source`` batch by batch into one HDF5 relevance file ``out_path``.

    ``source``: anything :func:`open_source` takes. The file equals ``attribx.save(attribx.explain(model,
    all_inputs, ...), out_path)`` when read with :func:`attribx.open_relevance`. ``resume=True`` (default)
    continues a file an interrupted run left (checking it was written for the same model, method,
    parameters, target, engine and data), ``False`` starts again. ``target`` / ``labels``: as in
    :func:`attribx.explain`; per-sample arrays are sliced with the batches. ``output``: the node whose values
    are explained, as in :func:`attribx.explain` (a model with several outputs needs it); a resume with
    another output is refused (it is part of the run's fingerprint). ``fingerprint``: override
    the data's fingerprint (iterables have none). ``attrs``: added to the file's attrs.
    Returns ``{"path", "samples", "new", "resumed_at"}``.
    """
    batch_size = positive_batch_size(batch_size)
    with opened_source(source) as src:
        return _explain_dataset(model, src, out_path, method, target, batch_size, engine, resume, labels, layers,
                                conservation, progress_bar, fingerprint, attrs, params, output)


def positive_batch_size(batch_size: Any) -> int:
    if batch_size is None or int(batch_size) < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    return int(batch_size)


@contextlib.contextmanager
def opened_source(source: Any) -> Iterator[Source]:
    """:func:`open_source`, closing on exit what it opened (a source object given is the caller's)."""
    src = open_source(source)
    try:
        yield src
    finally:
        if src is not source and not isinstance(source, Source):
            src.close()


class StreamRun:
    """What one streaming run (here or on a dask cluster) sets up before its first batch: the method, the
    translated graph (with ``output`` as its only output, as :func:`attribx.explain` selects it), the engine,
    the writer (resumed where the file stopped) and the progress bar. ``output`` may also come in ``params``
    (:func:`attribx.distributed.explain_dataset_distributed` passes its keywords on so); the graph the batches
    are explained with already has it as its output, so passing it on to ``explain`` changes nothing."""

    def __init__(self, model, src, out_path, method, target, batch_size, engine, resume, labels, layers,
                 conservation, progress_bar, fingerprint, params, output=None):
        if fingerprint is not None and isinstance(src, IterableSource):
            src._fp = fingerprint
        params = dict(params)
        output = params.pop("output", output)
        self.method = as_method(method, registry().methods)
        resolved = self.method.resolve(params)
        self.path = os.fspath(out_path)
        graph = translate(load_model(model), input_shape=src.sample_shape())   # tracing backends need it
        one_signal_input(graph, "explaining a data set (streaming to a file)")
        self.graph = _select_output(graph, output)
        self.engine = get_engine(engine, self.graph)
        # the explained node, where it is not the graph's own output (the graph's fingerprint has it too); left
        # out otherwise, so that files written without it (and by older versions) resume
        chosen = {} if self.graph is graph else {"output": self.graph.outputs[0]}
        fp = run_fingerprint(self.graph, self.method.name, resolved, target, self.engine.name, src, layers=layers,
                             conservation=conservation, labels=labels, source_override=fingerprint, **chosen)
        self.writer = StreamWriter(self.path, fp, resume=resume, total=src.n, batch_size=batch_size)
        self.batch_size = self.writer.batch_size   # a resumed file keeps its own (its chunks follow its batches)
        self.start = self.writer.committed
        self.bar = _bar(src.n, self.start, progress_bar)

    def write(self, rels: Iterable, attrs: dict | None = None) -> dict:
        """Append every explained batch of ``rels`` in order; on any failure the writer and bar are closed
        with what was committed kept. Returns ``{"path", "samples", "new", "resumed_at"}``."""
        writer, bar = self.writer, self.bar
        n_done = 0
        try:
            for rel in rels:
                if attrs:
                    rel.attrs.update(attrs)
                writer.append(rel)
                n_done += rel.sizes["sample"]
                if bar is not None:
                    bar.update(rel.sizes["sample"])
        except BaseException:
            self.abort()
            raise
        if bar is not None:
            bar.close()
        if writer.committed == 0:
            raise InputError("the source holds no samples")
        total = writer.committed
        writer.close(complete=True)
        return {"path": self.path, "samples": total, "new": n_done, "resumed_at": self.start}

    def abort(self) -> None:
        """Close the writer (what was committed stays) and the bar; safe to call twice."""
        self.writer.close()
        if self.bar is not None:
            self.bar.close()


def _explain_dataset(model, src, out_path, method, target, batch_size, engine, resume, labels, layers,
                     conservation, progress_bar, fingerprint, attrs, params, output=None) -> dict:
    run = StreamRun(model, src, out_path, method, target, batch_size, engine, resume, labels, layers,
                    conservation, progress_bar, fingerprint, params, output)

    def explained():
        for ids, xb in src.batches(run.batch_size, run.start):
            pos = run.writer.committed
            stop = pos + len(xb)
            yield explain(run.graph, xb, run.method, per_sample_slice(target, pos, stop), engine=run.engine,
                          layers=layers, conservation=conservation, sample=ids,
                          labels=per_sample_slice(labels, pos, stop), progress_bar=False, **params)

    return run.write(explained(), attrs)


def _bar(total, initial, enabled):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="explain", unit="sample")
