"""Reading relevance files: the checks every read makes first (the file is HDF5, attribx's format, a
version this attribx reads, and holds all its data itself) and the DataArray or Dataset rebuilt from it,
eagerly or as dask arrays chunked along ``sample``. :func:`attribx.open_relevance` is the entry point;
the writers (:mod:`attribx.storage`, :mod:`attribx.stream_writer`) run the same checks before appending.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import xarray as xr

from .errors import StorageError
from .relevance_format import (COORDS_GROUP, DATA_GROUP, FORMAT_NAME, FORMAT_VERSION, SAMPLE_DIM, attr_str,
                               from_stored, h5py, link_name, loads_attrs, logical_dtype, slab_samples)
from .safe_writes import being_written, writer_pid


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


def open_h5(path: str):
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


def check_format(f, path: str) -> int:
    """The format version of the open file ``f``; :class:`StorageError` unless it is an attribx relevance file
    of a version this attribx reads."""
    fmt = f.attrs.get("format")
    try:
        fmt = attr_str(fmt) if fmt is not None else None
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


def read_dataset(dset, tag: str | None) -> np.ndarray:
    """A whole dataset in memory as stored (strings as an object array; :func:`from_stored` decodes it)."""
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
    step = max(h5chunk, (slab_samples(per_sample) // h5chunk) * h5chunk)
    return tuple(min(max(n, 1), step) if i == sample_axis else max(n, 1) for i, n in enumerate(shape))


def _read_variable(dset, path: str, lazy_ctx, n_samples: int | None = None) -> tuple[str, xr.Variable]:
    """One stored variable; along ``sample`` only the first ``n_samples`` (the committed ones: a streamed
    write stopped by a full disk or a kill can leave an uncommitted tail beyond them)."""
    name = attr_str(dset.attrs["name"])
    dims = tuple(json.loads(attr_str(dset.attrs["dims"])))
    attrs = loads_attrs(dset.attrs["attrs"])
    tag = attr_str(dset.attrs["attribx_dtype"]) if "attribx_dtype" in dset.attrs else None
    if len(dims) != dset.ndim:
        raise ValueError(f"dataset {dset.name} has {dset.ndim} axes but dims {dims}")
    sample_axis = dims.index(SAMPLE_DIM) if SAMPLE_DIM in dims else None
    cut = None
    if sample_axis is not None and n_samples is not None and dset.shape[sample_axis] != n_samples:
        if dset.shape[sample_axis] < n_samples:
            raise ValueError(f"dataset {dset.name} holds {dset.shape[sample_axis]} samples, the file says "
                             f"{n_samples}")
        cut = tuple(slice(0, n_samples) if i == sample_axis else slice(None) for i in range(dset.ndim))
    is_string = h5py.check_string_dtype(dset.dtype) is not None
    if lazy_ctx is not None and not is_string:
        da, token = lazy_ctx
        data = da.from_array(dset, chunks=_lazy_chunks(dset, sample_axis),
                             name=f"open_relevance-{token}-{dset.name}")
        if cut is not None:
            data = data[cut]
        if tag is not None:
            data = data.astype(logical_dtype(tag, dset.dtype))
    else:
        data = from_stored(read_dataset(dset, tag), tag)
        if cut is not None:
            data = data[cut]
    return name, xr.Variable(dims, data, attrs=attrs)


def lazy_context(path: str):
    """What a lazy read needs: ``dask.array`` and a token naming this version of the file (its path, mtime,
    size and inode), so that dask never mixes up the chunks of two files."""
    try:  # dask is optional: only lazy reading needs it
        import dask.array as da
        from dask.base import tokenize
    except ImportError as exc:
        raise StorageError(f"{path}: reading lazily needs dask: pip install dask "
                           "(or pass lazy=False to read the file into memory)") from exc
    st = os.stat(path)
    return da, tokenize(os.path.abspath(path), st.st_mtime_ns, st.st_size, st.st_ino)


def read_object(f, path: str, lazy_ctx):
    """The DataArray or Dataset in the checked file ``f``; data variables as dask arrays when ``lazy_ctx``
    (:func:`lazy_context`) is given, coordinates always in memory."""
    kind = attr_str(f.attrs["kind"])
    attrs = loads_attrs(f.attrs["attrs"])
    data_names = json.loads(attr_str(f.attrs["data_vars"]))
    coord_names = json.loads(attr_str(f.attrs["coords"]))
    n_samples = json.loads(attr_str(f.attrs["dims"])).get(SAMPLE_DIM)   # the committed samples
    coords = {}
    for cname in coord_names:  # coordinates are small and needed for indexes: always read eagerly
        _, var = _read_variable(f[COORDS_GROUP][link_name(cname)], path, None, n_samples)
        coords[cname] = var
    data = {}
    for dname in data_names:
        _, var = _read_variable(f[DATA_GROUP][link_name(dname)], path, lazy_ctx, n_samples)
        data[dname] = var
    if kind == "DataArray":
        if len(data) != 1:
            raise ValueError(f"a DataArray file must hold one data variable, found {len(data)}")
        name = json.loads(attr_str(f.attrs["name"]))
        (var,) = data.values()
        return xr.DataArray(var, coords=coords, name=name, attrs=attrs)
    if kind == "Dataset":
        return xr.Dataset(data, coords=coords, attrs=attrs)
    raise ValueError(f"unknown kind {kind!r}")
