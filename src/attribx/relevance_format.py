"""How relevance maps onto the HDF5 layout of ``docs/hdf5-format.md``: the format's names and constants,
the JSON encoding of attrs, the dtype encodings, link names, chunk shapes, and :class:`ObjectSpec` (what
one DataArray or Dataset becomes in the file).

The pieces the format's reader (:mod:`attribx.relevance_reader`) and writers (:mod:`attribx.storage`,
:mod:`attribx.stream_writer`) share, kept in one place so that both sides encode alike. Users call
:func:`attribx.save` and :func:`attribx.open_relevance`.
"""
from __future__ import annotations

import base64
import json
import math
import sys
from typing import Any

import numpy as np
import xarray as xr

from .errors import StorageError

# h5py is a core dependency, but give a clear message (require_h5py) when it is broken or missing; the
# reader and the writers take h5py from here, so that the check is made once
try:
    import h5py
except ImportError as _exc:  # pragma: no cover - depends on the environment
    h5py = None
    _H5PY_IMPORT_ERROR: ImportError | None = _exc
else:
    _H5PY_IMPORT_ERROR = None

FORMAT_NAME = "attribx-relevance"
FORMAT_VERSION = 1
SAMPLE_DIM = "sample"

DATA_GROUP = "data"
COORDS_GROUP = "coords"
UNNAMED = "__xarray_dataarray_variable__"   # HDF5 name of a DataArray whose name is None
TAG = "__attribx__"                          # marker key of the tagged JSON values (see _to_json)

_CHUNK_TARGET = 1 << 20        # aim for ~1 MiB (uncompressed) HDF5 chunks
CHUNK_MAX = 4 << 20            # and never more than ~4 MiB for a single sample
_SLAB_BYTES = 64 << 20         # write (and lazily read) ~64 MiB of samples at a time
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


def loads_attrs(text: Any) -> Any:
    """The attr value (or any JSON attribute, such as ``attrs``) that ``_dumps`` wrote, tagged values decoded."""
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


def logical_dtype(tag: str | None, stored: np.dtype) -> np.dtype:
    """The numpy dtype a dataset holds: its ``attribx_dtype`` tag's, or the stored HDF5 dtype when untagged."""
    if tag is None:
        return stored
    if tag == "StringDType":
        return np.dtypes.StringDType()
    return np.dtype(tag)


def to_storable(values: np.ndarray) -> np.ndarray:
    """``values`` as h5py writes them: strings as objects (variable-length UTF-8), datetimes as int64."""
    kind = values.dtype.kind
    if kind in "UTO":
        return values.astype(object)
    if kind in "mM":
        return values.view("<i8") if values.dtype.itemsize == 8 else values.astype("<i8")
    return values


def from_stored(values: np.ndarray, tag: str | None) -> np.ndarray:
    """Values read from a dataset turned back into the dtype its ``attribx_dtype`` tag names."""
    if tag is None:
        return values
    dtype = logical_dtype(tag, values.dtype)
    if dtype.kind in "mM":
        return np.asarray(values).astype("<i8").view(dtype)
    if dtype.kind == "O":
        return np.asarray(values, dtype=object)
    return np.asarray(values).astype(dtype)


def same_kind_for_append(stored_tag: str | None, stored_dtype: np.dtype, new: np.dtype) -> bool:
    """Whether values of dtype ``new`` may be appended to a dataset (strings of any width to strings)."""
    logical = logical_dtype(stored_tag, stored_dtype)
    if logical.kind in "UTO":
        return new.kind in "UT" or (new.kind == "O" and logical.kind == "O")
    return logical == new


def merged_string_tag(stored_tag: str | None, new: np.dtype) -> str | None:
    """Widen a fixed-width unicode tag so values appended later keep their full length."""
    if stored_tag is None or not stored_tag.startswith(("<U", ">U", "|U", "=U")) or new.kind != "U":
        return stored_tag
    return np.result_type(np.dtype(stored_tag), new).str


# --------------------------------------------------------------------------------------------------
# names and layout helpers
# --------------------------------------------------------------------------------------------------

def link_name(name: str) -> str:
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


def chunk_shape(shape: tuple[int, ...], itemsize: int, sample_axis: int | None) -> tuple[int, ...]:
    """Chunk shape: whole samples (other axes halved only if one sample exceeds ~4 MiB), ~1 MiB each."""
    chunk = [max(1, n) for n in shape]
    if sample_axis is not None:
        chunk[sample_axis] = 1
    limit = CHUNK_MAX if sample_axis is not None else _CHUNK_TARGET
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


def stored_itemsize(stored_dtype) -> int:
    """Bytes per element for chunk sizes (a variable-length string counts as 16)."""
    dt = np.dtype(stored_dtype)
    return 16 if dt.kind == "O" else max(dt.itemsize, 1)


def slab_samples(n_per_sample_bytes: int) -> int:
    """Samples per block that writes (and lazy reads) handle at once: about 64 MiB, so memory stays flat."""
    return max(1, _SLAB_BYTES // max(n_per_sample_bytes, 1))


def writer_version() -> str:
    """The attribx version recorded in the ``attribx_version`` root attribute."""
    pkg = sys.modules.get(__name__.rpartition(".")[0])
    return str(getattr(pkg, "__version__", "unknown"))


# --------------------------------------------------------------------------------------------------
# describing the object to write
# --------------------------------------------------------------------------------------------------

class VariableSpec:
    """One variable to write: where it goes and what it is."""

    def __init__(self, group: str, name: str, variable: xr.Variable):
        self.group = group
        self.name = name
        self.link = link_name(name)
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
        return math.prod(rest) * stored_itemsize(self.stored_dtype)


class ObjectSpec:
    """A DataArray or Dataset checked for storing and described as its variables and coordinates
    (:class:`VariableSpec`), root attrs and dims: a value that cannot be stored is refused here, before
    any file is touched."""

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
            var = VariableSpec(DATA_GROUP, UNNAMED if name is None else name, variable)
            var.name = name  # may be None for an unnamed DataArray
            self.data.append(var)
        self.coords = [VariableSpec(COORDS_GROUP, _check_name(k, "coordinate"), v.variable)
                       for k, v in coords.items()]
        self.attrs_json = _dumps(dict(obj.attrs), "attrs")
        self.dims = {str(_check_name(d, "dimension")): int(n) for d, n in obj.sizes.items()}

    @property
    def variables(self):
        return self.data + self.coords

    @property
    def has_sample(self) -> bool:
        return SAMPLE_DIM in self.dims


# --------------------------------------------------------------------------------------------------
# h5py and string attributes
# --------------------------------------------------------------------------------------------------

def require_h5py() -> None:
    """Raise :class:`StorageError` (how to fix it) when h5py cannot be imported; every file access calls it."""
    if h5py is None:  # pragma: no cover
        raise StorageError(f"h5py cannot be imported ({_H5PY_IMPORT_ERROR}); pip install h5py")


def attr_str(value: Any) -> str:
    """An HDF5 string attribute as str, whichever form h5py returns (bytes, a 0-d array); ValueError if none."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return attr_str(value[()])
    if not isinstance(value, str):
        raise ValueError(f"expected a string attribute, got {value!r}")
    return value
