"""The resumable streamed writer: relevance appended to ONE HDF5 relevance file batch by batch, each batch
committed before the next, so that a run killed at any point is continued where it stopped.
:mod:`attribx.streaming` (one process) and :mod:`attribx.distributed` (a dask cluster) schedule the
batches; this module owns what reaches the file.

``StreamWriter(path, fingerprint, resume=False, total=None, batch_size=None)``
    Appends relevance batches (``xarray.DataArray``/``Dataset`` with a ``sample`` dim, as
    :func:`attribx.explain` returns) to ONE HDF5 file in the format of :func:`attribx.save`.
    ``.committed`` is the number of samples safely in the file; ``.append(batch)`` writes a batch and
    commits it; ``.close(complete=False)`` (or ``with``). Chunks along ``sample`` divide ``batch_size``
    (default: the first batch's size): append batches of exactly that size (the last may be smaller) so
    no committed chunk is ever rewritten; a resumed writer takes ``batch_size`` from the file. With
    ``resume=True`` an existing file is continued after a fingerprint check
    (:class:`~attribx.errors.StorageError` when it belongs to another run), any uncommitted tail is cut
    off; with ``resume=False`` an existing file is replaced when the first batch is committed (atomically;
    until then, and on any failure before it, the earlier file is kept unchanged).
    The writer holds the file's writer lock (:func:`attribx.safe_writes.acquire_lock`) from its creation
    until :meth:`StreamWriter.close`: a second run writing the same file is refused. A batch of another
    run (attrs that differ in :data:`attribx.storage.RUN_ATTRS`) is refused with nothing of it written.

The file protocol
-----------------
The first batch is written like :func:`attribx.save` (atomically: a temporary file renamed over the
target) with every ``sample`` variable resizable. Each later batch: the sample datasets are resized
and filled, the file is flushed, then the commit (the root attr ``dims["sample"]`` and the
``attribx_streaming`` attr) is written and flushed. A run killed at any point leaves at most an
uncommitted tail beyond ``dims["sample"]``, which a resumed run cuts off before continuing; a file is
never extended by a batch before the previous one is committed, so no sample is held twice.
The root attr ``attribx_streaming`` (:data:`STREAM_ATTR`; JSON: fingerprint, committed, total, batch
size, complete) stays in the final file; :func:`attribx.open_relevance` ignores it.
Limit: HDF5 updates its own metadata in place; the protocol protects against a kill between and
during batch writes, but a kill in the middle of HDF5's metadata flush (a few ms per batch) or a power
loss can still leave a file HDF5 cannot open.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .errors import StorageError
from .relevance_format import (CHUNK_MAX, COORDS_GROUP, DATA_GROUP, SAMPLE_DIM, ObjectSpec, attr_str, chunk_shape,
                               h5py, require_h5py, stored_itemsize)
from .relevance_reader import check_format, check_self_contained
from .safe_writes import acquire_lock, check_space, release_lock, write_target
from .storage import (append_samples, atomic_write, close_quietly, create_dataset, plan_append, set_sample_count,
                      write_error_text, write_new)

__all__ = ["StreamWriter", "STREAM_ATTR"]

STREAM_ATTR = "attribx_streaming"


def _sample_chunk(batch_size: int, per_sample_bytes: int) -> int:
    """Samples per HDF5 chunk: the largest divisor of the batch size with chunks of at most ~4 MiB, so a
    batch fills whole chunks of its own and a committed chunk is never rewritten (nor read to be cut)."""
    best = 1
    for d in range(1, batch_size + 1):
        if batch_size % d == 0 and d * per_sample_bytes <= CHUNK_MAX:
            best = d
    return best


def _create(group, var, batch_size: int):
    """:func:`attribx.storage.create_dataset`, with chunks along ``sample`` aligned to the batches."""
    if var.sample_axis is None:
        return create_dataset(group, var)
    itemsize = stored_itemsize(var.stored_dtype)
    chunk = list(chunk_shape(var.shape, itemsize, var.sample_axis))
    per_sample = int(np.prod([c for i, c in enumerate(chunk) if i != var.sample_axis])) * itemsize
    chunk[var.sample_axis] = _sample_chunk(batch_size, per_sample)
    return create_dataset(group, var, chunks=tuple(chunk))


def _read_stream_attr(f) -> dict:
    """The run record (:data:`STREAM_ATTR`) of an open file; empty when no streamed run wrote it."""
    if STREAM_ATTR not in f.attrs:
        return {}
    return json.loads(attr_str(f.attrs[STREAM_ATTR]))


class StreamWriter:
    """Append relevance batches to one HDF5 relevance file, committing after each (module docstring)."""

    def __init__(self, path: str | os.PathLike, fingerprint: str, resume: bool = False, total: int | None = None,
                 batch_size: int | None = None):
        require_h5py()
        self.path = os.fspath(path)
        self.fingerprint = fingerprint
        self.total = total
        self.batch_size = batch_size
        self.committed = 0
        self._f = None
        self._failed: str | None = None    # the write error that stopped this writer
        write_target(self.path)   # a folder, FIFO, device or socket: refused (a link: its target)
        # one writer per file for the whole run: a second run (a --resume, a save) is refused, not mixed in
        self._lock = acquire_lock(self.path)
        if resume and os.path.exists(self.path):
            try:
                self._reopen()
            except BaseException:
                self._release()
                raise
        # resume=False: an existing file stays untouched until the first batch is committed, which
        # replaces it atomically (a bad input, target or parameter leaves the earlier file as it was)

    def _reopen(self) -> None:
        """Resume: check the file belongs to this run, take its committed count, cut the uncommitted tail."""
        try:
            f = h5py.File(self.path, "r")   # checked read-only first: a refused file is left byte for byte
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot resume, the HDF5 file cannot be opened ({exc}); "
                               "delete it to start again") from exc
        try:
            check_self_contained(f, self.path)   # never write into (or read) another file
            check_format(f, self.path)
            info = _read_stream_attr(f)
            if not info:
                raise StorageError(f"{self.path}: cannot resume: not written by a streaming explain "
                                   "(no attribx_streaming attr); delete it or choose another output")
            if info.get("fingerprint") != self.fingerprint:
                raise StorageError(f"{self.path}: cannot resume: the file was written for another model, "
                                   "method, parameters, target, output node or input (fingerprint differs); "
                                   "delete it or choose another output")
            self.committed = int(json.loads(attr_str(f.attrs["dims"]))[SAMPLE_DIM])
            if info.get("batch_size"):
                self.batch_size = int(info["batch_size"])   # the file's chunks follow its batches
        finally:
            f.close()
        try:
            f = h5py.File(self.path, "r+")
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot resume, the HDF5 file cannot be opened for writing "
                               f"({exc})") from exc
        try:
            self._truncate(f, self.committed)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            close_quietly(f)
            raise StorageError(f"{self.path}: cannot resume: cutting the uncommitted tail failed: "
                               f"{write_error_text(exc)}") from exc
        except BaseException:
            close_quietly(f)
            raise
        self._f = f

    @staticmethod
    def _sample_dsets(f):
        for group in (DATA_GROUP, COORDS_GROUP):
            for dset in f[group].values():
                dims = json.loads(attr_str(dset.attrs["dims"]))
                if SAMPLE_DIM in dims:
                    yield dset, dims.index(SAMPLE_DIM)

    def _truncate(self, f, n: int) -> None:
        cut = False
        for dset, ax in self._sample_dsets(f):
            if dset.shape[ax] != n:
                dset.resize(n, axis=ax)
                cut = True
        if cut:
            f.flush()

    def _stream_info(self, complete: bool = False, committed: int | None = None) -> str:
        committed = self.committed if committed is None else committed
        return json.dumps({"fingerprint": self.fingerprint, "committed": committed, "total": self.total,
                           "batch_size": self.batch_size, "complete": complete})

    def append(self, batch) -> None:
        """Write ``batch``'s samples after those in the file, then commit them. A write error (a full disk)
        raises :class:`~attribx.errors.StorageError` with nothing of the batch committed; the writer is
        then closed (what was committed before stays, ``--resume`` continues after it)."""
        if self._failed is not None:
            raise StorageError(f"{self.path}: the writer stopped after a write error ({self._failed}); "
                               "continue with --resume (resume=True)")
        spec = ObjectSpec(batch)
        if not spec.has_sample:
            raise StorageError(f"{self.path}: a streamed batch needs a {SAMPLE_DIM!r} dim")
        n_new = spec.dims[SAMPLE_DIM]
        if self.batch_size is None:   # the first batch's size sets the chunks; recorded for resumes
            self.batch_size = n_new
        try:
            check_space(self.path, sum(v.variable.nbytes for v in spec.variables))
        except StorageError:
            self._failed = "no space left on the device"   # a batch is missing: the run cannot complete
            raise
        if self._f is None:
            def write(h5):
                write_new(h5, spec, lambda group, var: _create(group, var, self.batch_size))
                h5.attrs[STREAM_ATTR] = self._stream_info(committed=n_new)
            try:
                atomic_write(self.path, write)
            except StorageError:
                raise
            except (OSError, RuntimeError, ValueError) as exc:
                self._failed = write_error_text(exc)
                raise StorageError(f"{self.path}: cannot write the first batch: {self._failed}; nothing was "
                                   "written" + ("" if not os.path.exists(self.path) else
                                                ", the earlier file is unchanged")) from exc
            self.committed = n_new
            try:
                self._f = h5py.File(self.path, "r+")
            except OSError as exc:
                self._failed = write_error_text(exc)
                raise StorageError(f"{self.path}: cannot reopen the file after its first batch: "
                                   f"{self._failed}") from exc
            return
        f = self._f
        plan = plan_append(f, spec, self.path)   # a refusal (another run's batch) changes nothing
        old_dims, old_info = f.attrs["dims"], f.attrs[STREAM_ATTR]
        try:
            n = append_samples(f, spec, plan)
            f.flush()                      # the data is in the file before the commit says so
            set_sample_count(f, n)
            f.attrs[STREAM_ATTR] = self._stream_info(committed=n)
            f.flush()
        except (OSError, RuntimeError, ValueError, TypeError, KeyError) as exc:   # h5py's forms of HDF5 errors
            self._fail(exc, old_dims, old_info)
        self.committed = n

    def _fail(self, exc: BaseException, old_dims, old_info) -> None:
        """After a write error: put the commit back as it was and cut the uncommitted tail (in HDF5's caches;
        they reach the file only if it has room again), close the file so that no h5py object is left to fail
        in a finaliser (:func:`~attribx.storage.close_quietly`), and raise a one-line :class:`StorageError`."""
        self._failed = write_error_text(exc)
        f, self._f = self._f, None
        try:
            f.attrs["dims"] = old_dims
            f.attrs[STREAM_ATTR] = old_info
            for dset, ax in self._sample_dsets(f):    # the tail goes (a resume would cut it too)
                if dset.shape[ax] != self.committed:
                    dset.resize(self.committed, axis=ax)
        except Exception:
            pass
        close_quietly(f, exc)
        raise StorageError(f"{self.path}: writing relevance failed: {self._failed}; the file holds the "
                           f"{self.committed} samples committed before, continue with --resume "
                           "(resume=True) once there is room") from exc

    def _release(self) -> None:
        lock, self._lock = getattr(self, "_lock", None), None
        release_lock(lock)

    def close(self, complete: bool = False) -> None:
        """Close the file and release the writer lock; ``complete=True`` marks the run complete, after
        checking that everything written reached the file (a write error raises :class:`StorageError` and
        marks nothing)."""
        try:
            self._close(complete)
        finally:
            self._release()

    def _close(self, complete: bool = False) -> None:
        if complete and self._failed is not None:
            raise StorageError(f"{self.path}: not complete: writing failed ({self._failed}); the file holds "
                               f"{self.committed} committed samples, continue with --resume")
        if self._f is None:
            return
        f = self._f
        try:
            if complete:
                f.flush()
                f.attrs[STREAM_ATTR] = self._stream_info(complete=True)
            f.flush()
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            self._failed = write_error_text(exc)
            self._f = None
            try:
                f.attrs[STREAM_ATTR] = self._stream_info()
            except Exception:
                pass
            close_quietly(f, exc)
            raise StorageError(f"{self.path}: closing the file failed: {self._failed}; the file holds "
                               f"{self.committed} committed samples, continue with --resume") from exc
        self._f = None
        try:
            f.close()
        except (OSError, RuntimeError, ValueError) as exc:
            self._failed = write_error_text(exc)
            close_quietly(f, exc)
            raise StorageError(f"{self.path}: closing the file failed: {self._failed}") from exc
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._failed = write_error_text(exc)
            raise StorageError(f"{self.path}: closing the file failed: {self._failed}") from exc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
