"""Save and load relevance (``xarray.DataArray`` / ``xarray.Dataset``) as HDF5 files.

Why this layout
---------------
The files are plain HDF5 written with h5py, not netCDF: one dataset per variable under ``/data``
and ``/coords``, with names, dims and attrs kept as small HDF5 attributes (JSON text where the value
is structured). Any HDF5 tool (h5py, h5dump, HDFView, MATLAB, Julia's HDF5.jl) can read the arrays
without attribx or xarray, and the layout is documented in ``docs/hdf5-format.md``. netCDF-4 would
need its own conventions for nested attrs (which it cannot store) and for variable-length strings.

Every variable that has a ``sample`` dim is chunked along that axis, gzip-compressed, and resizable
along it (``maxshape`` ``None``), so an explanation run over a large data set can be streamed into
one file batch by batch with ``save(batch, path, mode="a")`` and read back one chunk of samples at a
time with ``open_relevance(path, lazy=True)``.

Writes are atomic: the new content is written (for an append: a copy of the old file is extended)
in a temporary file beside the target, flushed to disk, and renamed over the target. An error, a
crash or a ``KeyboardInterrupt`` in the middle leaves the earlier file as it was.

Where the format lives
----------------------
This module writes whole files (:func:`save`) and is the entry point for reading them
(:func:`open_relevance`, :func:`sample_count`). :mod:`attribx.relevance_format` holds the encoding both
sides share, :mod:`attribx.relevance_reader` the checks and the (lazy) reading, and
:mod:`attribx.stream_writer` the resumable writer that appends one batch at a time. That writer builds on
the steps here, which are public for it: :func:`write_new` (a new file's content), :func:`plan_append`
(the checks of an append, :data:`RUN_ATTRS` among them), :func:`append_samples` and
:func:`set_sample_count` (the data, then the commit), :func:`atomic_write`, :func:`close_quietly` and
:func:`write_error_text`.
"""
from __future__ import annotations

import errno
import gc
import json
import math
import os
import shutil
import sys
import traceback
from typing import Any, Callable

import numpy as np

from .errors import StorageError
from .relevance_format import (COORDS_GROUP, DATA_GROUP, FORMAT_NAME, FORMAT_VERSION, SAMPLE_DIM, ObjectSpec,
                               VariableSpec, attr_str, chunk_shape, from_stored, h5py, link_name, logical_dtype,
                               merged_string_tag, require_h5py, same_kind_for_append, slab_samples,
                               stored_itemsize, to_storable, writer_version)
from .relevance_reader import check_format, lazy_context, open_h5, read_dataset, read_object
from .safe_writes import being_written, check_space, temp_file_beside, write_target, writer_lock, writer_pid

__all__ = ["save", "open_relevance", "FORMAT_NAME", "FORMAT_VERSION", "SAMPLE_DIM"]

_LAZY_AUTO_BYTES = 1 << 30     # lazy="auto": files larger than this are opened lazily


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------

def _write_slab(dset, index: tuple, values: np.ndarray) -> None:
    """Write one block of values into an HDF5 dataset (a function of its own so tests can break it)."""
    dset[index] = to_storable(np.asarray(values))


def _fill(dset, var: VariableSpec, offset: int = 0) -> None:
    """Copy ``var``'s values into ``dset``, starting at sample ``offset``, ~64 MiB at a time. HDF5 keeps
    chunks in a cache that is written when the dataset is closed, and an h5py dataset closed by the garbage
    collector only prints a write error (a full disk) and drops the data: callers keep the datasets open
    until the file is flushed (:func:`write_new`, :func:`append_samples`), where an error is raised."""
    data = var.variable.data
    if var.sample_axis is None:
        values = np.asarray(var.variable.values)
        if values.size:
            _write_slab(dset, () if values.ndim == 0 else (Ellipsis,), values)
        return
    ax = var.sample_axis
    n = var.shape[ax]
    step = slab_samples(var.per_sample_bytes())
    for start in range(0, n, step):
        stop = min(n, start + step)
        src = [slice(None)] * len(var.shape)
        dst = [slice(None)] * len(var.shape)
        src[ax] = slice(start, stop)
        dst[ax] = slice(offset + start, offset + stop)
        block = data[tuple(src)]
        if hasattr(block, "compute") and not isinstance(block, np.ndarray):
            block = block.compute()
        _write_slab(dset, tuple(dst), np.asarray(block))


def create_dataset(group, var: VariableSpec, chunks: tuple | None = None):
    """The empty dataset of ``var`` in ``group``, with its attributes: chunked, gzip-compressed and resizable
    along ``sample`` (docs/hdf5-format.md). ``chunks``: the chunk shape where the caller knows a better one
    (the stream writer aligns chunks with its batches); default :func:`chunk_shape`'s."""
    shape = var.shape
    kwargs: dict[str, Any] = {}
    if len(shape) > 0 and (var.sample_axis is not None or math.prod(shape) > 0):
        maxshape = tuple(None if (i == var.sample_axis or n == 0) else n for i, n in enumerate(shape))
        if chunks is None:
            chunks = chunk_shape(shape, stored_itemsize(var.stored_dtype), var.sample_axis)
        kwargs = dict(chunks=chunks, maxshape=maxshape, compression="gzip", compression_opts=4, shuffle=True)
    dset = group.create_dataset(var.link, shape=shape, dtype=var.stored_dtype, **kwargs)
    dset.attrs["name"] = var.link if var.name is None and var.group == DATA_GROUP else var.name
    dset.attrs["dims"] = json.dumps(list(var.dims), ensure_ascii=False)
    dset.attrs["attrs"] = var.attrs_json
    if var.tag is not None:
        dset.attrs["attribx_dtype"] = var.tag
    return dset


def write_new(f, spec: ObjectSpec, create=None) -> None:
    """Write ``spec`` into the empty open file ``f``; ``create(group, var)`` makes each dataset (default
    :func:`create_dataset`; streamed files pass one with batch-aligned chunks)."""
    create = create_dataset if create is None else create
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = np.int64(FORMAT_VERSION)
    f.attrs["kind"] = spec.kind
    f.attrs["name"] = json.dumps(spec.name, ensure_ascii=False)
    f.attrs["attrs"] = spec.attrs_json
    f.attrs["data_vars"] = json.dumps([v.link if v.name is None else v.name for v in spec.data],
                                      ensure_ascii=False)
    f.attrs["coords"] = json.dumps([v.name for v in spec.coords], ensure_ascii=False)
    f.attrs["dims"] = json.dumps(spec.dims, ensure_ascii=False)
    f.attrs["sample_dim"] = SAMPLE_DIM
    f.attrs["attribx_version"] = writer_version()
    groups = {DATA_GROUP: f.create_group(DATA_GROUP), COORDS_GROUP: f.create_group(COORDS_GROUP)}
    keep = []          # open until the flush, which raises a write error their caches would hit on closing
    for var in spec.variables:
        dset = create(groups[var.group], var)
        keep.append(dset)
        _fill(dset, var)
    f.flush()


def _values_equal(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    try:
        return bool(np.array_equal(a, b, equal_nan=True))
    except TypeError:
        return bool(np.array_equal(a, b))


# The provenance attrs that make relevance "the same run": what was explained, by which model, method and
# parameters (not timings, sample ids, versions, engines or file names). Appending relevance that differs in
# one of them would file it under the first run's provenance; :func:`_check_same_run` refuses it.
# ``target_kind`` ("predicted", "class" for given class ids, "contrast"; attribx.targets.target_kind) tells
# a run that explained each sample's predicted class from one given class ids (both fill the ``target`` coord).
RUN_ATTRS = (("model_fingerprint", "model"), ("method", "method"), ("parameters", "parameters"),
             ("output_init", "target kind"), ("contrast", "target kind"), ("target_kind", "target kind"),
             ("explained_output", "explained output"), ("layers", "layers"))
_MISSING = object()


def _short(value: Any, limit: int = 60) -> str:
    text = "(none)" if value is _MISSING else json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _kind_from_coords(attrs: dict, target, prediction) -> Any:
    """The target kind of relevance that does not record it (written before attribx stored ``target_kind``),
    where its coords tell: a contrast says so, a target other than the prediction for some sample means
    given class ids. Otherwise undecidable (given ids may equal the predictions): :data:`_MISSING`."""
    if attrs.get("contrast"):
        return "contrast"
    if target is not None and prediction is not None:
        t, p = np.asarray(target), np.asarray(prediction)
        if t.shape == p.shape and t.dtype.kind in "iu" and p.dtype.kind in "iu" and bool((t != p).any()):
            return "class"
    return _MISSING


def _stored_coord(f, name: str, n: int):
    """The first ``n`` values of the file's coordinate ``name`` (None where it has none)."""
    if name not in json.loads(attr_str(f.attrs["coords"])):
        return None
    dset = f[COORDS_GROUP][link_name(name)]
    return np.asarray(dset[:n]) if dset.ndim == 1 else None


def _new_coord(spec: ObjectSpec, name: str):
    var = next((v for v in spec.coords if v.name == name), None)
    return None if var is None or var.sample_axis is None else np.asarray(var.variable.values)


def _check_same_run(f, spec: ObjectSpec, path: str) -> None:
    """Refuse to append relevance of another run (model, method, parameters, target kind) to ``f``.

    Relevance without a ``target_kind`` attr (a file or object from before attribx recorded it, or made by
    hand) has its kind read from its ``target`` and ``prediction`` coords where they tell
    (:func:`_kind_from_coords`); where they do not (every target equals the prediction), the kind is
    undecidable and the append is accepted, as it was before the attr existed: refusing would make every
    older file impossible to extend, also with the right run."""
    try:
        stored = json.loads(attr_str(f.attrs["attrs"]))
        new = json.loads(spec.attrs_json)
    except (KeyError, ValueError, TypeError) as exc:
        raise StorageError(f"{path}: cannot append: the file's attrs are damaged ({exc})") from None
    if not isinstance(stored, dict) or not isinstance(new, dict):
        return
    a_kind, b_kind = stored.get("target_kind", _MISSING), new.get("target_kind", _MISSING)
    if (a_kind is _MISSING) != (b_kind is _MISSING):
        if a_kind is _MISSING:
            n = int(json.loads(attr_str(f.attrs["dims"])).get(SAMPLE_DIM, 0))
            a_kind = _kind_from_coords(stored, _stored_coord(f, "target", n), _stored_coord(f, "prediction", n))
        else:
            b_kind = _kind_from_coords(new, _new_coord(spec, "target"), _new_coord(spec, "prediction"))
    differ = []
    for key, what in RUN_ATTRS:
        a, b = stored.get(key, _MISSING), new.get(key, _MISSING)
        if key == "target_kind":
            if a_kind is _MISSING or b_kind is _MISSING:
                continue          # undecidable on one side: accepted (docstring)
            a, b = a_kind, b_kind
        if a != b:
            differ.append(f"{what} ({key}: file {_short(a)} vs new {_short(b)})")
    if differ:
        raise StorageError(f"{path}: cannot append relevance of another run: {'; '.join(differ)}; the file keeps "
                           "one run's provenance, write this run to another file")


def plan_append(f, spec: ObjectSpec, path: str) -> dict:
    """Check ``spec`` can be appended to the open attribx file ``f``; the sample count to append after."""
    check_format(f, path)
    kind = attr_str(f.attrs["kind"])
    if kind != spec.kind:
        raise StorageError(f"{path}: cannot append a {spec.kind} to a file holding a {kind}")
    if kind == "DataArray":
        stored_name = json.loads(attr_str(f.attrs["name"]))
        if stored_name != spec.name:
            raise StorageError(f"{path}: cannot append DataArray {spec.name!r} to a file holding "
                               f"DataArray {stored_name!r}")
    stored_dims = json.loads(attr_str(f.attrs["dims"]))
    if SAMPLE_DIM not in stored_dims:
        raise StorageError(f"{path}: cannot append: the stored object has no {SAMPLE_DIM!r} dim")
    if not spec.has_sample:
        raise StorageError(f"{path}: cannot append: the object to append has no {SAMPLE_DIM!r} dim "
                           f"(dims {tuple(spec.dims)})")
    mismatch = []
    for d in sorted(set(stored_dims) | set(spec.dims)):
        if d == SAMPLE_DIM:
            continue
        if stored_dims.get(d) != spec.dims.get(d):
            mismatch.append(f"{d!r}: file {stored_dims.get(d)} vs new {spec.dims.get(d)}")
    if mismatch:
        raise StorageError(f"{path}: cannot append: dims differ ({'; '.join(mismatch)})")
    _check_same_run(f, spec, path)
    for group_name, new_vars in ((DATA_GROUP, spec.data), (COORDS_GROUP, spec.coords)):
        what = "data variables" if group_name == DATA_GROUP else "coordinates"
        stored_names = json.loads(attr_str(f.attrs["data_vars" if group_name == DATA_GROUP else "coords"]))
        new_names = [v.link if v.name is None else v.name for v in new_vars]
        if sorted(stored_names) != sorted(new_names):
            raise StorageError(f"{path}: cannot append: {what} differ (file {sorted(stored_names)} vs "
                               f"new {sorted(new_names)})")
        group = f[group_name]
        for var in new_vars:
            dset = group[var.link]
            stored_var_dims = tuple(json.loads(attr_str(dset.attrs["dims"])))
            if stored_var_dims != var.dims:
                raise StorageError(f"{path}: cannot append: {var.where} has dims {var.dims}, "
                                   f"the file has {stored_var_dims}")
            tag = attr_str(dset.attrs["attribx_dtype"]) if "attribx_dtype" in dset.attrs else None
            if not same_kind_for_append(tag, dset.dtype, var.variable.dtype):
                raise StorageError(f"{path}: cannot append: {var.where} has dtype {var.variable.dtype}, "
                                   f"the file has {logical_dtype(tag, dset.dtype)}")
            if var.sample_axis is None:
                stored = from_stored(read_dataset(dset, tag), tag)
                if not _values_equal(stored, np.asarray(var.variable.values)):
                    raise StorageError(f"{path}: cannot append: {var.where} has no {SAMPLE_DIM!r} dim "
                                       "and its values differ from those in the file")
            elif dset.maxshape[var.sample_axis] is not None:
                raise StorageError(f"{path}: cannot append: {var.where} is not resizable in the file")
    return {"n_old": int(stored_dims[SAMPLE_DIM])}


def _append(f, spec: ObjectSpec, plan: dict) -> None:
    set_sample_count(f, append_samples(f, spec, plan))


def append_samples(f, spec: ObjectSpec, plan: dict) -> int:
    """Extend every sample-wise dataset by ``spec``'s samples; returns the new sample count, which the
    file's ``dims`` say only after :func:`set_sample_count` (streamed files flush in between)."""
    n_old = plan["n_old"]
    n_new = spec.dims[SAMPLE_DIM]
    keep = []          # open until the flush, which raises a write error their caches would hit on closing
    for var in spec.variables:
        if var.sample_axis is None:
            continue
        dset = f[var.group][var.link]
        keep.append(dset)
        dset.resize(n_old + n_new, axis=var.sample_axis)
        if "attribx_dtype" in dset.attrs:
            tag = attr_str(dset.attrs["attribx_dtype"])
            merged = merged_string_tag(tag, var.variable.dtype)
            if merged != tag:
                dset.attrs["attribx_dtype"] = merged
        _fill(dset, var, offset=n_old)
    f.flush()          # the data is in the file before a commit (the sample count) says so
    return n_old + n_new


def set_sample_count(f, n: int) -> None:
    """Commit an append: the root ``dims`` say the file holds ``n`` samples (readers read no further)."""
    dims = json.loads(attr_str(f.attrs["dims"]))
    dims[SAMPLE_DIM] = n
    f.attrs["dims"] = json.dumps(dims, ensure_ascii=False)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: directories cannot be opened; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[Any], None], copy_from: str | None = None) -> None:
    """Run ``write(h5file)`` on a temporary file beside ``path`` and rename it over ``path`` (over the file
    it points to when ``path`` is a symbolic link, which stays; see :func:`write_target`). The file is
    flushed before it is closed: a write error (a full disk) surfaces there, where the file can still be
    let go (:func:`close_quietly`), and never in HDF5's close, which cannot recover from one."""
    path = write_target(path)
    tmp = temp_file_beside(path)
    try:
        if copy_from is not None:
            shutil.copyfile(copy_from, tmp)
            h5mode = "r+"
        else:
            h5mode = "w"
        f = h5py.File(tmp, h5mode)
        try:
            write(f)
            f.flush()            # a write error (a full disk) surfaces here, not in a finaliser later
            f.close()
        except BaseException as exc:
            close_quietly(f, exc)
            raise
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def detach_file(f) -> None:
    """Point the file descriptor HDF5 writes the open file ``f`` through at a scratch file in memory (or
    ``/dev/null``), so that HDF5 can close a file whose writes fail: what it still holds goes nowhere
    instead of failing again. HDF5 cannot close a file whose flush fails (a full disk), and a second try, a
    dataset's finaliser or the interpreter's exit then crashes the process; what reached the disk before
    stays as it was (a temporary file is deleted anyway, a streamed file keeps its committed samples)."""
    try:
        fd = f.id.get_vfd_handle() if f.id.valid and f.driver == "sec2" else None
    except Exception:
        return
    if not isinstance(fd, int) or fd < 0:
        return
    try:
        scratch = os.memfd_create("attribx-discard")   # Linux: HDF5 may read back what it wrote
    except (AttributeError, OSError):
        try:
            scratch = os.open(os.devnull, os.O_RDWR)
        except OSError:
            return
    try:
        os.dup2(scratch, fd)
    except OSError:
        pass
    finally:
        os.close(scratch)


def close_quietly(f, exc: BaseException | None = None) -> None:
    """Close the h5py file ``f`` after an error without writing to it again. The file is detached first
    (:func:`detach_file`): what the failed write left in HDF5's caches is dropped, and the file keeps what
    reached it before (HDF5 fails for good after a second failed flush of a file, "slist already enabled",
    and crashes later). Then the h5py objects the failed write still holds (in ``exc``'s traceback) are
    released while the file is open, and every object of the file is closed now: none is left to fail (or
    crash HDF5) later in a finaliser. Errors of its own are not raised over the first."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda *_: None      # a dataset that cannot write its cache says so in __dealloc__
    try:
        detach_file(f)                        # before any dataset is let go: closing one writes its cache
        if exc is not None and exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)
        gc.collect()
        for _ in range(3):
            try:
                ids = h5py.h5f.get_obj_ids(f.id, h5py.h5f.OBJ_LOCAL | h5py.h5f.OBJ_DATASET | h5py.h5f.OBJ_GROUP
                                           | h5py.h5f.OBJ_DATATYPE | h5py.h5f.OBJ_ATTR) if f.id.valid else []
            except Exception:
                break
            if not ids:
                break
            for oid in ids:
                for _ in range(64):
                    try:
                        if not oid.valid:
                            break
                        h5py.h5i.dec_ref(oid)
                    except Exception:
                        pass
        try:
            f.close()
        except Exception:
            try:
                f.id.close()
            except Exception:
                pass
        gc.collect()
    finally:
        sys.unraisablehook = hook


def save(obj, path, mode: str = "w") -> None:
    """Write relevance (a DataArray or Dataset) to the HDF5 file ``path``.

    ``mode="w"`` replaces the file. ``mode="a"`` appends ``obj``'s samples (along the ``sample``
    dim) to a file written earlier by :func:`save`; the other dims, variables, coordinates and dtypes
    must match, coordinates along ``sample`` are appended too, and attrs of the file are kept (as
    ``xarray.concat`` keeps the first object's). When the file does not exist, ``"a"`` acts as ``"w"``.
    Either way the file is replaced atomically: on any error the earlier file is left unchanged.

    Raises :class:`~attribx.errors.StorageError` when the object or the file cannot be written.
    """
    require_h5py()
    try:
        path = os.fspath(path)
    except TypeError:
        raise StorageError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if isinstance(obj, (tuple, list, dict)):
        raise StorageError(f"{path}: the relevance of several inputs (a {type(obj).__name__} of DataArrays) is not "
                           f"saved in one file yet; save each input's relevance to a file of its own")
    if mode not in ("w", "a"):
        raise StorageError(f"{path}: mode must be 'w' (write) or 'a' (append), got {mode!r}")
    try:
        spec = ObjectSpec(obj)
    except StorageError as exc:
        raise StorageError(f"{path}: {exc}") from None
    write_target(path)   # refuses a folder, FIFO, device or socket before reading or writing
    with writer_lock(path):   # another attribx run writing this file: refused (one of the two would be lost)
        _save_locked(spec, path, mode)


def _save_locked(spec: ObjectSpec, path: str, mode: str) -> None:
    # room for the new data (and, for an append, the copy of the file) before HDF5 writes anything: HDF5
    # cannot close a file whose writes failed and can crash the process trying
    appending = mode == "a" and os.path.exists(path)
    check_space(write_target(path), sum(v.variable.nbytes for v in spec.variables)
                + (os.path.getsize(path) if appending else 0))
    try:
        if mode == "a" and os.path.exists(path):
            f = open_h5(path)
            try:
                plan = plan_append(f, spec, path)
            except StorageError:
                raise
            except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise StorageError(f"{path}: cannot append: the file is damaged ({exc})") from exc
            finally:
                f.close()
            atomic_write(path, lambda h5: _append(h5, spec, plan), copy_from=path)
        else:
            atomic_write(path, lambda h5: write_new(h5, spec))
    except StorageError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError, KeyError) as exc:   # what h5py raises for HDF5's errors
        why = write_error_text(exc)
        raise StorageError(f"{path}: cannot write relevance: {why}; the earlier file is unchanged"
                           if os.path.exists(path) else f"{path}: cannot write relevance: {why}") from exc


def write_error_text(exc: BaseException) -> str:
    """One line for a write error: a full disk (ENOSPC) said plainly, HDF5's own message on one line."""
    err = exc
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return "no space left on the device (or quota exceeded)"
        err = err.__cause__ or err.__context__
    text = " ".join(str(exc).split())
    if "No space left" in text or "ENOSPC" in text:
        return "no space left on the device"
    return text or type(exc).__name__


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------

def sample_count(path) -> int:
    """How many samples a relevance file holds (0 when there is no file): read from its header alone, so
    appending to a large file needs neither dask nor the data in memory."""
    require_h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        return 0
    with open_h5(path) as f:
        check_format(f, path)
        try:
            return int(json.loads(attr_str(f.attrs["dims"])).get(SAMPLE_DIM, 0))
        except (KeyError, ValueError, TypeError) as exc:
            raise StorageError(f"{path}: damaged attribx relevance file: bad dims attribute ({exc})") from None


def open_relevance(path, lazy: bool | str = "auto"):
    """Read a relevance file written by :func:`save`: the DataArray or Dataset exactly as saved.

    ``lazy=False`` reads everything into memory and closes the file. ``lazy=True`` wraps each data
    variable in a dask array chunked along ``sample`` (coordinates are read eagerly), so a file larger
    than memory is read only as far as it is computed; the HDF5 file then stays open as long as the
    returned object (or anything computed lazily from it) lives. Call ``.close()`` on the result, or
    use it as a context manager, to close it earlier. ``lazy="auto"`` (default) is lazy for files
    larger than 1 GiB and eager otherwise. Lazy reading needs dask (``pip install dask``).

    Raises :class:`~attribx.errors.StorageError` when the file is missing, not HDF5, not written by
    attribx, written by a newer attribx, or damaged.
    """
    require_h5py()
    try:
        path = os.fspath(path)
    except TypeError:
        raise StorageError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if lazy not in (True, False, "auto"):
        raise StorageError(f"{path}: lazy must be True, False or 'auto', got {lazy!r}")
    f = open_h5(path)
    try:
        check_format(f, path)
        if lazy == "auto":
            lazy = os.path.getsize(path) > _LAZY_AUTO_BYTES
        obj = read_object(f, path, lazy_context(path) if lazy else None)
    except StorageError:
        f.close()
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        f.close()
        pid = writer_pid(path)
        if pid is not None:
            raise StorageError(being_written(path, pid, "wait for it to finish and read it then")) from exc
        raise StorageError(f"{path}: damaged attribx relevance file, cannot be read ({exc})") from exc
    except BaseException:
        f.close()
        raise
    if lazy:
        # The dask graph holds the h5py datasets (which keep the file open); set_close lets the
        # caller close the file explicitly with obj.close() or `with open_relevance(...) as rel:`.
        obj.set_close(f.close)
    else:
        f.close()
    return obj
