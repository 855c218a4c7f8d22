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
"""
from __future__ import annotations

import base64
import json
import math
import os
import shutil
import sys
from typing import Any, Callable

import numpy as np
import xarray as xr

from .errors import StorageError
from .safe_writes import being_written, check_space, temp_file_beside, write_target, writer_lock, writer_pid

try:  # h5py is a core dependency, but give a clear message when it is broken or missing
    import h5py
except ImportError as _exc:  # pragma: no cover - depends on the environment
    h5py = None
    _H5PY_IMPORT_ERROR: ImportError | None = _exc
else:
    _H5PY_IMPORT_ERROR = None

__all__ = ["save", "open_relevance", "FORMAT_NAME", "FORMAT_VERSION", "SAMPLE_DIM"]

FORMAT_NAME = "attribx-relevance"
FORMAT_VERSION = 1
SAMPLE_DIM = "sample"

DATA_GROUP = "data"
COORDS_GROUP = "coords"
UNNAMED = "__xarray_dataarray_variable__"   # HDF5 name of a DataArray whose name is None
TAG = "__attribx__"                          # marker key of the tagged JSON values (see _to_json)

_CHUNK_TARGET = 1 << 20        # aim for ~1 MiB (uncompressed) HDF5 chunks
_CHUNK_MAX = 4 << 20           # and never more than ~4 MiB for a single sample
_SLAB_BYTES = 64 << 20         # write (and lazily read) ~64 MiB of samples at a time
_LAZY_AUTO_BYTES = 1 << 30     # lazy="auto": files larger than this are opened lazily
_MIN_SAMPLE_CHUNK = 64         # chunks along sample hold at least this many samples (if small enough)


# --------------------------------------------------------------------------------------------------
# JSON encoding of attrs
# --------------------------------------------------------------------------------------------------

def _to_json(value: Any, where: str) -> Any:
    """A JSON-ready form of an attr value that :func:`_from_json` turns back into an equal value.

    Plain JSON (dict with str keys, list, str, int, float, bool, None) is written as is; tuples,
    numpy arrays and scalars, bytes, non-finite floats and dicts with non-str keys become tagged
    objects ``{"__attribx__": kind, ...}`` so that they round-trip exactly.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):
        return {TAG: "scalar", "dtype": value.dtype.str, "value": _to_json(value.item(), where)}
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {TAG: "float", "value": repr(float(value))}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and TAG not in value:
            return {k: _to_json(v, f"{where}.{k}") for k, v in value.items()}
        return {TAG: "dict", "items": [[_to_json(k, where), _to_json(v, f"{where}[{k!r}]")]
                                       for k, v in value.items()]}
    if isinstance(value, list):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, (bytes, bytearray)):
        return {TAG: "bytes", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufU":
            raise StorageError(f"attr {where}: numpy arrays of dtype {value.dtype} cannot be stored")
        return {TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape),
                "data": [_to_json(v, where) for v in value.ravel().tolist()]}
    raise StorageError(f"attr {where}: values of type {type(value).__name__} cannot be stored "
                       "(use str, int, float, bool, None, list, tuple, dict, bytes or numpy values)")


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(TAG)
    if kind is None:
        return {k: _from_json(v) for k, v in value.items()}
    if kind == "float":
        return float(value["value"])
    if kind == "scalar":
        return np.dtype(value["dtype"]).type(_from_json(value["value"]))
    if kind == "tuple":
        return tuple(_from_json(v) for v in value["items"])
    if kind == "dict":
        return {_from_json(k): _from_json(v) for k, v in value["items"]}
    if kind == "bytes":
        return base64.b64decode(value["base64"])
    if kind == "ndarray":
        data = [_from_json(v) for v in value["data"]]
        return np.array(data, dtype=np.dtype(value["dtype"])).reshape(value["shape"])
    raise ValueError(f"unknown tagged JSON value {kind!r}")


def _dumps(value: Any, where: str) -> str:
    return json.dumps(_to_json(value, where), ensure_ascii=False, allow_nan=False)


def _loads(text: Any) -> Any:
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _from_json(json.loads(text))


# --------------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------------

def _storage_dtype(dtype: np.dtype, values_for_check=None, where: str = "") -> tuple[Any, str | None]:
    """(dtype stored in HDF5, logical dtype tag or None when the stored dtype is the logical one)."""
    kind = dtype.kind
    if kind in "biufc" or kind == "S":
        return dtype, None
    if kind == "U":
        return h5py.string_dtype("utf-8"), dtype.str
    if kind == "T":
        return h5py.string_dtype("utf-8"), "StringDType"
    if kind == "O":
        if values_for_check is not None:
            flat = np.asarray(values_for_check, dtype=object).ravel()
            if not all(isinstance(v, str) for v in flat):
                raise StorageError(f"{where}: object arrays can be stored only when every element is a str")
        return h5py.string_dtype("utf-8"), "object"
    if kind in "mM":
        return np.dtype("<i8"), dtype.str
    raise StorageError(f"{where}: dtype {dtype} cannot be stored")


def _logical_dtype(tag: str | None, stored: np.dtype) -> np.dtype:
    if tag is None:
        return stored
    if tag == "StringDType":
        return np.dtypes.StringDType()
    return np.dtype(tag)


def _to_storable(values: np.ndarray) -> np.ndarray:
    kind = values.dtype.kind
    if kind in "UTO":
        return values.astype(object)
    if kind in "mM":
        return values.view("<i8") if values.dtype.itemsize == 8 else values.astype("<i8")
    return values


def _from_stored(values: np.ndarray, tag: str | None) -> np.ndarray:
    if tag is None:
        return values
    dtype = _logical_dtype(tag, values.dtype)
    if dtype.kind in "mM":
        return np.asarray(values).astype("<i8").view(dtype)
    if dtype.kind == "O":
        return np.asarray(values, dtype=object)
    return np.asarray(values).astype(dtype)


def _same_kind_for_append(stored_tag: str | None, stored_dtype: np.dtype, new: np.dtype) -> bool:
    logical = _logical_dtype(stored_tag, stored_dtype)
    if logical.kind in "UTO":
        return new.kind in "UT" or (new.kind == "O" and logical.kind == "O")
    return logical == new


def _merged_string_tag(stored_tag: str | None, new: np.dtype) -> str | None:
    """Widen a fixed-width unicode tag so values appended later keep their full length."""
    if stored_tag is None or not stored_tag.startswith(("<U", ">U", "|U", "=U")) or new.kind != "U":
        return stored_tag
    return np.result_type(np.dtype(stored_tag), new).str


# --------------------------------------------------------------------------------------------------
# names and layout helpers
# --------------------------------------------------------------------------------------------------

def _link_name(name: str) -> str:
    """A valid, unique HDF5 link name for a variable name ('%' and '/' percent-escaped)."""
    escaped = name.replace("%", "%25").replace("/", "%2F")
    if escaped == "":
        return "%"
    if escaped == ".":
        return "%2E"
    return escaped


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise StorageError(f"{what} names must be str to be stored, got {name!r}")
    return name


def _chunks(shape: tuple[int, ...], itemsize: int, sample_axis: int | None) -> tuple[int, ...]:
    """Chunk shape: whole samples (other axes halved only if one sample exceeds ~4 MiB), ~1 MiB each."""
    chunk = [max(1, n) for n in shape]
    if sample_axis is not None:
        chunk[sample_axis] = 1
    limit = _CHUNK_MAX if sample_axis is not None else _CHUNK_TARGET
    while math.prod(chunk) * itemsize > limit:
        axes = [i for i in range(len(chunk)) if i != sample_axis and chunk[i] > 1]
        if not axes:
            break
        big = max(axes, key=lambda i: chunk[i])
        chunk[big] = (chunk[big] + 1) // 2
    if sample_axis is not None:
        per_sample = math.prod(chunk) * itemsize
        n = shape[sample_axis]
        chunk[sample_axis] = max(1, min(_CHUNK_TARGET // max(per_sample, 1), max(n, _MIN_SAMPLE_CHUNK)))
    return tuple(chunk)


def _itemsize(stored_dtype) -> int:
    dt = np.dtype(stored_dtype)
    return 16 if dt.kind == "O" else max(dt.itemsize, 1)


def _slab(n_per_sample_bytes: int) -> int:
    return max(1, _SLAB_BYTES // max(n_per_sample_bytes, 1))


def _writer_version() -> str:
    pkg = sys.modules.get(__name__.rpartition(".")[0])
    return str(getattr(pkg, "__version__", "unknown"))


# --------------------------------------------------------------------------------------------------
# describing the object to write
# --------------------------------------------------------------------------------------------------

class _Var:
    """One variable to write: where it goes and what it is."""

    def __init__(self, group: str, name: str, variable: xr.Variable):
        self.group = group
        self.name = name
        self.link = _link_name(name)
        self.variable = variable
        self.dims = tuple(_check_name(d, "dimension") for d in variable.dims)
        self.shape = tuple(int(n) for n in variable.shape)
        self.sample_axis = self.dims.index(SAMPLE_DIM) if SAMPLE_DIM in self.dims else None
        where = f"{'coordinate' if group == COORDS_GROUP else 'variable'} {name!r}"
        check = variable.values if variable.dtype.kind == "O" else None
        self.stored_dtype, self.tag = _storage_dtype(variable.dtype, check, where)
        self.attrs_json = _dumps(dict(variable.attrs), f"{where}.attrs")
        self.where = where

    def per_sample_bytes(self) -> int:
        rest = [n for i, n in enumerate(self.shape) if i != self.sample_axis]
        return math.prod(rest) * _itemsize(self.stored_dtype)


class _Spec:
    def __init__(self, obj):
        if isinstance(obj, xr.DataArray):
            self.kind = "DataArray"
            if obj.name is not None:
                _check_name(obj.name, "DataArray")
            self.name = obj.name
            data_items = [(obj.name, obj.variable)]
            coords = obj.coords
        elif isinstance(obj, xr.Dataset):
            self.kind = "Dataset"
            self.name = None
            data_items = [(_check_name(k, "variable"), v.variable) for k, v in obj.data_vars.items()]
            coords = obj.coords
        else:
            raise StorageError(f"save() writes an xarray.DataArray or xarray.Dataset, not "
                               f"{type(obj).__module__}.{type(obj).__qualname__}")
        for index_name, index in obj.indexes.items():
            if getattr(index, "nlevels", 1) > 1:
                raise StorageError(f"coordinate {index_name!r} is a pandas MultiIndex, which cannot be "
                                   "stored; call .reset_index() first")
        self.data = []
        for name, variable in data_items:
            link_name = UNNAMED if name is None else name
            var = _Var(DATA_GROUP, link_name, variable)
            var.name = name  # may be None for an unnamed DataArray
            self.data.append(var)
        self.coords = [_Var(COORDS_GROUP, _check_name(k, "coordinate"), v.variable) for k, v in coords.items()]
        self.attrs_json = _dumps(dict(obj.attrs), "attrs")
        self.dims = {str(_check_name(d, "dimension")): int(n) for d, n in obj.sizes.items()}

    @property
    def variables(self):
        return self.data + self.coords

    @property
    def has_sample(self) -> bool:
        return SAMPLE_DIM in self.dims


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------

def _write_slab(dset, index: tuple, values: np.ndarray) -> None:
    """Write one block of values into an HDF5 dataset (a function of its own so tests can break it)."""
    dset[index] = _to_storable(np.asarray(values))


def _fill(dset, var: _Var, offset: int = 0) -> None:
    """Copy ``var``'s values into ``dset``, starting at sample ``offset``, ~64 MiB at a time. HDF5 keeps
    chunks in a cache that is written when the dataset is closed, and an h5py dataset closed by the garbage
    collector only prints a write error (a full disk) and drops the data: callers keep the datasets open
    until the file is flushed (:func:`_write_new`, :func:`_append_data`), where an error is raised."""
    data = var.variable.data
    if var.sample_axis is None:
        values = np.asarray(var.variable.values)
        if values.size:
            _write_slab(dset, () if values.ndim == 0 else (Ellipsis,), values)
        return
    ax = var.sample_axis
    n = var.shape[ax]
    step = _slab(var.per_sample_bytes())
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


def _create(group, var: _Var):
    shape = var.shape
    kwargs: dict[str, Any] = {}
    if len(shape) > 0 and (var.sample_axis is not None or math.prod(shape) > 0):
        maxshape = tuple(None if (i == var.sample_axis or n == 0) else n for i, n in enumerate(shape))
        kwargs = dict(chunks=_chunks(shape, _itemsize(var.stored_dtype), var.sample_axis),
                      maxshape=maxshape, compression="gzip", compression_opts=4, shuffle=True)
    dset = group.create_dataset(var.link, shape=shape, dtype=var.stored_dtype, **kwargs)
    dset.attrs["name"] = var.link if var.name is None and var.group == DATA_GROUP else var.name
    dset.attrs["dims"] = json.dumps(list(var.dims), ensure_ascii=False)
    dset.attrs["attrs"] = var.attrs_json
    if var.tag is not None:
        dset.attrs["attribx_dtype"] = var.tag
    return dset


def _write_new(f, spec: _Spec, create=None) -> None:
    """Write ``spec`` into the empty open file ``f``; ``create(group, var)`` makes each dataset (default
    :func:`_create`; streamed files pass one with batch-aligned chunks)."""
    create = _create if create is None else create
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
    f.attrs["attribx_version"] = _writer_version()
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
RUN_ATTRS = (("model_fingerprint", "model"), ("method", "method"), ("parameters", "parameters"),
             ("output_init", "target kind"), ("contrast", "target kind"), ("explained_output", "explained output"),
             ("layers", "layers"))
_MISSING = object()


def _short(value: Any, limit: int = 60) -> str:
    text = "(none)" if value is _MISSING else json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_same_run(f, spec: _Spec, path: str) -> None:
    """Refuse to append relevance of another run (model, method, parameters, target kind) to ``f``."""
    try:
        stored = json.loads(_attr_str(f.attrs["attrs"]))
        new = json.loads(spec.attrs_json)
    except (KeyError, ValueError, TypeError) as exc:
        raise StorageError(f"{path}: cannot append: the file's attrs are damaged ({exc})") from None
    if not isinstance(stored, dict) or not isinstance(new, dict):
        return
    differ = []
    for key, what in RUN_ATTRS:
        a, b = stored.get(key, _MISSING), new.get(key, _MISSING)
        if a != b:
            differ.append(f"{what} ({key}: file {_short(a)} vs new {_short(b)})")
    if differ:
        raise StorageError(f"{path}: cannot append relevance of another run: {'; '.join(differ)}; the file keeps "
                           "one run's provenance, write this run to another file")


def _plan_append(f, spec: _Spec, path: str) -> dict:
    """Check ``spec`` can be appended to the open attribx file ``f``; the sample count to append after."""
    _check_format(f, path)
    kind = _attr_str(f.attrs["kind"])
    if kind != spec.kind:
        raise StorageError(f"{path}: cannot append a {spec.kind} to a file holding a {kind}")
    if kind == "DataArray":
        stored_name = json.loads(_attr_str(f.attrs["name"]))
        if stored_name != spec.name:
            raise StorageError(f"{path}: cannot append DataArray {spec.name!r} to a file holding "
                               f"DataArray {stored_name!r}")
    stored_dims = json.loads(_attr_str(f.attrs["dims"]))
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
        stored_names = json.loads(_attr_str(f.attrs["data_vars" if group_name == DATA_GROUP else "coords"]))
        new_names = [v.link if v.name is None else v.name for v in new_vars]
        if sorted(stored_names) != sorted(new_names):
            raise StorageError(f"{path}: cannot append: {what} differ (file {sorted(stored_names)} vs "
                               f"new {sorted(new_names)})")
        group = f[group_name]
        for var in new_vars:
            dset = group[var.link]
            stored_var_dims = tuple(json.loads(_attr_str(dset.attrs["dims"])))
            if stored_var_dims != var.dims:
                raise StorageError(f"{path}: cannot append: {var.where} has dims {var.dims}, "
                                   f"the file has {stored_var_dims}")
            tag = _attr_str(dset.attrs["attribx_dtype"]) if "attribx_dtype" in dset.attrs else None
            if not _same_kind_for_append(tag, dset.dtype, var.variable.dtype):
                raise StorageError(f"{path}: cannot append: {var.where} has dtype {var.variable.dtype}, "
                                   f"the file has {_logical_dtype(tag, dset.dtype)}")
            if var.sample_axis is None:
                stored = _from_stored(_read_h5(dset, tag), tag)
                if not _values_equal(stored, np.asarray(var.variable.values)):
                    raise StorageError(f"{path}: cannot append: {var.where} has no {SAMPLE_DIM!r} dim "
                                       "and its values differ from those in the file")
            elif dset.maxshape[var.sample_axis] is not None:
                raise StorageError(f"{path}: cannot append: {var.where} is not resizable in the file")
    return {"n_old": int(stored_dims[SAMPLE_DIM])}


def _append(f, spec: _Spec, plan: dict) -> None:
    _set_sample_count(f, _append_data(f, spec, plan))


def _append_data(f, spec: _Spec, plan: dict) -> int:
    """Extend every sample-wise dataset by ``spec``'s samples; returns the new sample count, which the
    file's ``dims`` say only after :func:`_set_sample_count` (streamed files flush in between)."""
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
            tag = _attr_str(dset.attrs["attribx_dtype"])
            merged = _merged_string_tag(tag, var.variable.dtype)
            if merged != tag:
                dset.attrs["attribx_dtype"] = merged
        _fill(dset, var, offset=n_old)
    f.flush()          # the data is in the file before a commit (the sample count) says so
    return n_old + n_new


def _set_sample_count(f, n: int) -> None:
    dims = json.loads(_attr_str(f.attrs["dims"]))
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


def _atomic_write(path: str, write: Callable[[Any], None], copy_from: str | None = None) -> None:
    """Run ``write(h5file)`` on a temporary file beside ``path`` and rename it over ``path`` (over the file
    it points to when ``path`` is a symbolic link, which stays; see :func:`write_target`)."""
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
        except BaseException as exc:
            close_quietly(f, exc)
            raise
        f.close()
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


def close_quietly(f, exc: BaseException | None = None) -> None:
    """Close the h5py file ``f`` after an error (its own errors, such as a full disk, are not raised over the
    first): the h5py objects the failed write still holds (in ``exc``'s traceback) are released first, while
    the file is open, and every object of the file is closed now; none is left to fail (or crash HDF5) later
    in a finaliser."""
    import gc
    import traceback
    hook = sys.unraisablehook
    sys.unraisablehook = lambda *_: None      # a dataset that cannot write its cache says so in __dealloc__
    try:
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
    _require_h5py()
    try:
        path = os.fspath(path)
    except TypeError:
        raise StorageError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if mode not in ("w", "a"):
        raise StorageError(f"{path}: mode must be 'w' (write) or 'a' (append), got {mode!r}")
    try:
        spec = _Spec(obj)
    except StorageError as exc:
        raise StorageError(f"{path}: {exc}") from None
    write_target(path)   # refuses a folder, FIFO, device or socket before reading or writing
    with writer_lock(path):   # another attribx run writing this file: refused (one of the two would be lost)
        _save_locked(spec, path, mode)


def _save_locked(spec: _Spec, path: str, mode: str) -> None:
    # room for the new data (and, for an append, the copy of the file) before HDF5 writes anything: HDF5
    # cannot close a file whose writes failed and can crash the process trying
    appending = mode == "a" and os.path.exists(path)
    check_space(write_target(path), sum(v.variable.nbytes for v in spec.variables)
                + (os.path.getsize(path) if appending else 0))
    try:
        if mode == "a" and os.path.exists(path):
            f = _open_h5(path)
            try:
                plan = _plan_append(f, spec, path)
            except StorageError:
                raise
            except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
                raise StorageError(f"{path}: cannot append: the file is damaged ({exc})") from exc
            finally:
                f.close()
            _atomic_write(path, lambda h5: _append(h5, spec, plan), copy_from=path)
        else:
            _atomic_write(path, lambda h5: _write_new(h5, spec))
    except StorageError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise StorageError(f"{path}: cannot write relevance: {_why(exc)}; the earlier file is unchanged"
                           if os.path.exists(path) else f"{path}: cannot write relevance: {_why(exc)}") from exc


def _why(exc: BaseException) -> str:
    """One line for a write error: a full disk (ENOSPC) said plainly, HDF5's own message on one line."""
    import errno as _errno
    err = exc
    while err is not None:
        if isinstance(err, OSError) and err.errno in (_errno.ENOSPC, _errno.EDQUOT):
            return "no space left on the device (or quota exceeded)"
        err = err.__cause__ or err.__context__
    text = " ".join(str(exc).split())
    if "No space left" in text or "ENOSPC" in text:
        return "no space left on the device"
    return text or type(exc).__name__


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------

def _require_h5py() -> None:
    if h5py is None:  # pragma: no cover
        raise StorageError(f"h5py cannot be imported ({_H5PY_IMPORT_ERROR}); pip install h5py")


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value[()])
    if not isinstance(value, str):
        raise ValueError(f"expected a string attribute, got {value!r}")
    return value


def check_self_contained(f, path: str) -> None:
    """Refuse (:class:`StorageError`, naming the object) an HDF5 file that would make a reader read another
    file or another place: a dataset whose data lies in external files (HDF5 external storage), a virtual
    dataset (mapped from other datasets or files), an external link or a soft link. Checked over the
    whole file, before any data is read: a relevance file from elsewhere must not hand back the bytes of
    a local file (``/etc/shadow``, an SSH key) as relevance."""
    seen: set = set()

    def walk(group, prefix: str) -> None:
        for key in group.keys():
            name = f"{prefix}/{key}" if prefix != "/" else f"/{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise StorageError(f"{path}: {name} is an external link (to {link.filename}:{link.path}); "
                                   "refused: an attribx relevance file holds all its data itself")
            if not isinstance(link, h5py.HardLink):
                kind = "a soft link" if isinstance(link, h5py.SoftLink) else "a user-defined link"
                raise StorageError(f"{path}: {name} is {kind}; refused: an attribx relevance file holds its "
                                   "datasets directly, without links")
            obj = group.get(key)
            addr = h5py.h5o.get_info(obj.id).addr
            if addr in seen:
                continue
            seen.add(addr)
            if isinstance(obj, h5py.Group):
                walk(obj, name)
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    raise StorageError(f"{path}: dataset {name} is a virtual dataset (its data is mapped from "
                                       "other datasets or files); refused: an attribx relevance file holds "
                                       "all its data itself")
                if obj.id.get_create_plist().get_external_count() > 0:
                    raise StorageError(f"{path}: dataset {name} keeps its data in external files (HDF5 "
                                       "external storage); refused: an attribx relevance file holds all "
                                       "its data itself")

    walk(f, "/")


def _open_h5(path: str):
    """The HDF5 file ``path`` opened for reading, checked by :func:`check_self_contained`."""
    f = _open_h5_unchecked(path)
    try:
        check_self_contained(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _open_h5_unchecked(path: str):
    if not os.path.exists(path):
        raise StorageError(f"{path}: no such file")
    if os.path.isdir(path):
        raise StorageError(f"{path}: is a directory, not a relevance file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        try:
            is_hdf5 = h5py.is_hdf5(path)
        except OSError:
            is_hdf5 = False
        pid = writer_pid(path)
        if pid is not None:
            raise StorageError(being_written(path, pid, "wait for it to finish and read it then")) from exc
        if not is_hdf5:
            raise StorageError(f"{path}: not an HDF5 file (so not an attribx relevance file)") from exc
        raise StorageError(f"{path}: the HDF5 file is damaged or truncated and cannot be opened "
                           f"({exc})") from exc


def _check_format(f, path: str) -> int:
    fmt = f.attrs.get("format")
    try:
        fmt = _attr_str(fmt) if fmt is not None else None
    except ValueError:
        fmt = None
    if fmt != FORMAT_NAME:
        raise StorageError(f"{path}: not an attribx relevance file (an HDF5 file without the root "
                           f"attribute format={FORMAT_NAME!r})")
    version = f.attrs.get("format_version")
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise StorageError(f"{path}: damaged attribx relevance file: bad format_version {version!r}") from None
    if version > FORMAT_VERSION:
        raise StorageError(f"{path}: written in attribx relevance format version {version}, newer than "
                           f"the version {FORMAT_VERSION} this attribx reads; upgrade attribx")
    if version < 1:
        raise StorageError(f"{path}: damaged attribx relevance file: bad format_version {version}")
    return version


def _read_h5(dset, tag: str | None) -> np.ndarray:
    if h5py.check_string_dtype(dset.dtype) is not None:
        values = dset.asstr()[()]
        return np.asarray(values, dtype=object)
    return np.asarray(dset[()])


def _lazy_chunks(dset, sample_axis: int | None):
    shape = dset.shape
    if sample_axis is None or not shape:
        return "auto" if shape else ()
    per_sample = math.prod(n for i, n in enumerate(shape) if i != sample_axis) * dset.dtype.itemsize
    h5chunk = dset.chunks[sample_axis] if dset.chunks else 1
    step = max(h5chunk, (_slab(per_sample) // h5chunk) * h5chunk)
    return tuple(min(max(n, 1), step) if i == sample_axis else max(n, 1) for i, n in enumerate(shape))


def _read_variable(dset, path: str, lazy_ctx) -> tuple[str, xr.Variable]:
    name = _attr_str(dset.attrs["name"])
    dims = tuple(json.loads(_attr_str(dset.attrs["dims"])))
    attrs = _loads(dset.attrs["attrs"])
    tag = _attr_str(dset.attrs["attribx_dtype"]) if "attribx_dtype" in dset.attrs else None
    if len(dims) != dset.ndim:
        raise ValueError(f"dataset {dset.name} has {dset.ndim} axes but dims {dims}")
    is_string = h5py.check_string_dtype(dset.dtype) is not None
    if lazy_ctx is not None and not is_string:
        da, token = lazy_ctx
        sample_axis = dims.index(SAMPLE_DIM) if SAMPLE_DIM in dims else None
        data = da.from_array(dset, chunks=_lazy_chunks(dset, sample_axis),
                             name=f"open_relevance-{token}-{dset.name}")
        if tag is not None:
            data = data.astype(_logical_dtype(tag, dset.dtype))
    else:
        data = _from_stored(_read_h5(dset, tag), tag)
    return name, xr.Variable(dims, data, attrs=attrs)


def _build(f, path: str, lazy_ctx):
    kind = _attr_str(f.attrs["kind"])
    attrs = _loads(f.attrs["attrs"])
    data_names = json.loads(_attr_str(f.attrs["data_vars"]))
    coord_names = json.loads(_attr_str(f.attrs["coords"]))
    coords = {}
    for cname in coord_names:  # coordinates are small and needed for indexes: always read eagerly
        _, var = _read_variable(f[COORDS_GROUP][_link_name(cname)], path, None)
        coords[cname] = var
    data = {}
    for dname in data_names:
        _, var = _read_variable(f[DATA_GROUP][_link_name(dname)], path, lazy_ctx)
        data[dname] = var
    if kind == "DataArray":
        if len(data) != 1:
            raise ValueError(f"a DataArray file must hold one data variable, found {len(data)}")
        name = json.loads(_attr_str(f.attrs["name"]))
        (var,) = data.values()
        return xr.DataArray(var, coords=coords, name=name, attrs=attrs)
    if kind == "Dataset":
        return xr.Dataset(data, coords=coords, attrs=attrs)
    raise ValueError(f"unknown kind {kind!r}")


def sample_count(path) -> int:
    """How many samples a relevance file holds (0 when there is no file): read from its header alone, so
    appending to a large file needs neither dask nor the data in memory."""
    _require_h5py()
    path = os.fspath(path)
    if not os.path.exists(path):
        return 0
    with _open_h5(path) as f:
        _check_format(f, path)
        try:
            return int(json.loads(_attr_str(f.attrs["dims"])).get(SAMPLE_DIM, 0))
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
    _require_h5py()
    try:
        path = os.fspath(path)
    except TypeError:
        raise StorageError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if lazy not in (True, False, "auto"):
        raise StorageError(f"{path}: lazy must be True, False or 'auto', got {lazy!r}")
    f = _open_h5(path)
    try:
        _check_format(f, path)
        if lazy == "auto":
            lazy = os.path.getsize(path) > _LAZY_AUTO_BYTES
        lazy_ctx = None
        if lazy:
            try:
                import dask.array as da
                from dask.base import tokenize
            except ImportError as exc:
                raise StorageError(f"{path}: reading lazily needs dask: pip install dask "
                                   "(or pass lazy=False to read the file into memory)") from exc
            st = os.stat(path)
            lazy_ctx = (da, tokenize(os.path.abspath(path), st.st_mtime_ns, st.st_size, st.st_ino))
        obj = _build(f, path, lazy_ctx)
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
