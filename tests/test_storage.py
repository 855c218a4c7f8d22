"""attribx.storage: HDF5 round trip, append, atomic writes, clear errors, lazy reading."""
from __future__ import annotations

import math
import os
import stat
import sys
import tempfile

import h5py
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from attribx import safe_writes, storage
from attribx.errors import StorageError
from attribx.storage import open_relevance, save


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def deep_equal(a, b) -> bool:
    """Equality of attrs values, type-exact, NaN equal to NaN, numpy arrays compared by value."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, (float, np.floating)) and math.isnan(a):
        return math.isnan(b)
    return a == b


def assert_same(got, expected):
    """Identical as xarray sees it, plus exact dtypes and attrs everywhere."""
    xr.testing.assert_identical(got, expected)
    assert type(got) is type(expected)
    assert deep_equal(dict(got.attrs), dict(expected.attrs))
    for name, var in expected.variables.items() if isinstance(expected, xr.Dataset) else \
            [(None, expected.variable)] + [(k, v.variable) for k, v in expected.coords.items()]:
        other = got.variable if name is None else got.variables[name] if isinstance(got, xr.Dataset) \
            else got.coords[name].variable
        assert other.dtype == var.dtype, (name, other.dtype, var.dtype)
        assert other.dims == var.dims
        assert deep_equal(dict(other.attrs), dict(var.attrs))


def make_relevance(n=3, start=0, channels=2, dtype="float32", seed=0, names=None):
    rng = np.random.default_rng(seed)
    sample = np.arange(start, start + n) if names is None else np.array(names)
    return xr.DataArray(
        rng.normal(size=(n, channels, 4, 5)).astype(dtype),
        dims=("sample", "channel", "height", "width"),
        coords={"sample": sample, "target": ("sample", rng.integers(0, 10, n)),
                "prediction": ("sample", rng.integers(0, 10, n)),
                "label": ("sample", np.array([f"class {i}" for i in rng.integers(0, 10, n)], dtype=str)),
                "channel": [f"c{i}" for i in range(channels)]},
        name="relevance",
        attrs={"method": "lrp.epsilon", "parameters": {"epsilon": 0.25, "low": [-1.0, 2.0]},
               "engine": "numpy", "backend": "torch", "attribx_version": "0.1.0",
               "model_fingerprint": "ab12cd34"})


def make_dataset(n=3, start=0, seed=0):
    rel = make_relevance(n, start, seed=seed)
    rng = np.random.default_rng(seed + 1)
    coords = {k: v for k, v in rel.coords.items() if k != "channel"}
    return xr.Dataset(
        {"lrp.epsilon": rel.variable,
         "lrp.z": rel.variable.copy(data=rng.normal(size=rel.shape).astype("float32")),
         "features/0": xr.Variable(("sample", "features/0:1", "features/0:2"),
                                   rng.normal(size=(n, 3, 2))),
         "conservation": xr.Variable(("sample", "node"), rng.normal(size=(n, 2)),
                                     attrs={"description": "relevance sum per sample at each node"}),
         "score": xr.Variable(("sample",), rng.integers(-5, 5, n)),
         "weights": xr.Variable(("channel",), np.array([0.5, 1.5]))},
        coords={**coords, "channel": ["r", "g"], "node": ["conv1", "fc"]},
        attrs={"method": "lrp.epsilon", "parameters": {"epsilon": 0.25, "nested": {"a": [1, {"b": None}]}}})


def listing(directory):
    return sorted(os.listdir(directory))


# ------------------------------------------------------------------------------------------------
# round trip
# ------------------------------------------------------------------------------------------------

_json_leaf = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
              | st.floats(allow_nan=False) | st.text(max_size=8))
_attrs_values = st.recursive(
    _json_leaf,
    lambda inner: (st.lists(inner, max_size=3) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
_attrs = st.dictionaries(st.text(min_size=1, max_size=8), _attrs_values, max_size=4)
# HDF5 variable-length strings are NUL-terminated and UTF-8; numpy drops trailing NULs anyway.
_labels = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
_dtypes = st.sampled_from(["float32", "float64", "int64"])


@st.composite
def relevance_objects(draw):
    ndim = draw(st.integers(1, 4))
    other_dims = draw(st.lists(st.sampled_from(["channel", "height", "width", "conv1:1", "a/b", "x y"]),
                               min_size=ndim - 1, max_size=ndim - 1, unique=True))
    dims = list(other_dims)
    dims.insert(draw(st.integers(0, ndim - 1)), "sample")
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(_dtypes))
    if dtype.kind == "f":
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=True, allow_infinity=True)
    else:
        elements = st.integers(-2**63, 2**63 - 1)
    data = draw(hnp.arrays(dtype, shape, elements=elements))
    n = shape[dims.index("sample")]
    if draw(st.booleans()):
        sample = np.array(draw(st.lists(st.integers(-2**40, 2**40), min_size=n, max_size=n)), dtype="int64")
    else:
        sample = np.array(draw(st.lists(_labels, min_size=n, max_size=n)), dtype=str)
    coords = {"sample": sample,
              "target": ("sample", np.array(draw(st.lists(st.integers(0, 999), min_size=n, max_size=n)),
                                            dtype="int64"))}
    for d, size in zip(dims, shape):
        if d != "sample" and draw(st.booleans()):
            coords[d] = (d, np.array(draw(st.lists(_labels, min_size=size, max_size=size)), dtype=str),
                         draw(_attrs))
    name = draw(st.sampled_from(["relevance", None, "lrp.epsilon", "a/b%c"]))
    rel = xr.DataArray(data, dims=tuple(dims), coords=coords, name=name, attrs=draw(_attrs))
    if draw(st.booleans()):
        return rel
    ds_name = name or "relevance"
    extra = xr.Variable(("sample",), draw(hnp.arrays(np.dtype(draw(_dtypes)), (n,))), attrs=draw(_attrs))
    return xr.Dataset({ds_name: rel, "extra": extra}, attrs=draw(_attrs))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=relevance_objects())
def test_round_trip_property(obj):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "rel.h5")
        save(obj, path)
        assert_same(open_relevance(path), obj)
        assert listing(d) == ["rel.h5"]


def test_round_trip_relevance_data_array(tmp_path):
    rel = make_relevance(5, names=["cat", "dög", "ünïcode ✓", "", "a/b"])
    path = tmp_path / "rel.h5"
    save(rel, path)
    got = open_relevance(path)
    assert_same(got, rel)
    assert got.name == "relevance"
    assert got.coords["sample"].dtype.kind == "U"
    assert got.coords["label"].dtype.kind == "U"
    assert isinstance(got.data, np.ndarray)


def test_round_trip_dataset(tmp_path):
    ds = make_dataset(4)
    path = tmp_path / "rel.h5"
    save(ds, str(path))
    assert_same(open_relevance(path), ds)


def test_round_trip_special_values(tmp_path):
    attrs = {"tuple": (1, "a", (2.5,)), "array": np.arange(6, dtype="int16").reshape(2, 3),
             "scalar": np.float32(0.25), "nan": float("nan"), "inf": -math.inf, "bytes": b"\x00\xff",
             "int keys": {1: "one", (2, 3): "pair"}, "tagged": {"__attribx__": "not a tag"},
             "big": "x" * 200_000, "nested": {"parameters": {"epsilon": 0.25, "low": [-1.0, 2.0]}}}
    ds = xr.Dataset(
        {"flag": ("sample", np.array([True, False, True])),
         "when": ("sample", np.array(["2020-01-01", "2021-06-30", "NaT"], dtype="datetime64[ns]")),
         "took": ("sample", np.array([1, 2, 3], dtype="timedelta64[ms]")),
         "words": ("sample", np.array(["a", "bb", "ccc"], dtype=object)),
         "c64": (("sample", "k"), np.ones((3, 2), dtype="complex64")),
         "f16": (("sample",), np.array([1, 2, 3], dtype="float16")),
         "u8": (("sample", "empty"), np.zeros((3, 0), dtype="uint8")),
         "scalar": ((), 3.5),
         "scalar_text": ((), "hello")},
        coords={"sample": [10, 20, 30], "note": "a scalar coordinate"}, attrs=attrs)
    path = tmp_path / "rel.h5"
    save(ds, path)
    assert_same(open_relevance(path), ds)
    unnamed = xr.DataArray(np.arange(4.0), dims="sample", attrs=attrs)
    save(unnamed, path)
    got = open_relevance(path)
    assert got.name is None
    assert_same(got, unnamed)


def test_layout_readable_with_plain_h5py(tmp_path):
    import json
    rel = make_relevance(3)
    path = tmp_path / "rel.h5"
    save(rel, path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "attribx-relevance"
        assert int(f.attrs["format_version"]) == 1
        assert f.attrs["kind"] == "DataArray"
        assert json.loads(f.attrs["name"]) == "relevance"
        assert json.loads(f.attrs["attrs"])["parameters"] == {"epsilon": 0.25, "low": [-1.0, 2.0]}
        dset = f["data/relevance"]
        assert json.loads(dset.attrs["dims"]) == ["sample", "channel", "height", "width"]
        np.testing.assert_array_equal(dset[()], rel.values)
        assert dset.compression == "gzip"
        assert dset.maxshape[0] is None and dset.maxshape[1:] == (2, 4, 5)
        assert dset.chunks is not None and dset.chunks[1:] == (2, 4, 5)
        assert f["coords/target"].maxshape == (None,)
        assert list(f["coords/label"].asstr()[()]) == list(rel.coords["label"].values)
        assert h5py.check_string_dtype(f["coords/label"].dtype).encoding == "utf-8"


# ------------------------------------------------------------------------------------------------
# append
# ------------------------------------------------------------------------------------------------

def test_append_twice_equals_concat(tmp_path):
    parts = [make_relevance(3, 0, seed=1), make_relevance(1, 3, seed=2), make_relevance(4, 4, seed=3)]
    path = tmp_path / "rel.h5"
    save(parts[0], path, mode="a")   # mode="a" on a missing file writes it
    save(parts[1], path, mode="a")
    save(parts[2], path, mode="a")
    expected = xr.concat(parts, dim="sample", coords="minimal", compat="equals", join="outer")
    assert_same(open_relevance(path), expected)
    assert listing(tmp_path) == ["rel.h5"]


def test_append_dataset_and_string_samples(tmp_path):
    parts = [make_dataset(2, seed=1), make_dataset(3, seed=2)]
    parts = [p.assign_coords(sample=names) for p, names in zip(parts, [["a", "b"], ["ccccc", "d", "é"]])]
    path = tmp_path / "rel.h5"
    save(parts[0], path)
    save(parts[1], path, mode="a")
    save(parts[0], path, mode="a")
    parts.append(parts[0])
    expected = xr.concat(parts, dim="sample", data_vars="minimal", coords="minimal", compat="equals",
                         join="outer")
    got = open_relevance(path)
    assert_same(got, expected)
    assert got.coords["sample"].dtype == np.dtype("<U5")


def test_append_lazily_opened_source(tmp_path):
    path = tmp_path / "rel.h5"
    save(make_relevance(2), path)
    lazy = open_relevance(path, lazy=True)
    save(lazy, tmp_path / "copy.h5")
    save(lazy, path, mode="a")
    assert open_relevance(path).sizes["sample"] == 4
    assert_same(open_relevance(tmp_path / "copy.h5"), make_relevance(2))
    lazy.close()


@pytest.mark.parametrize("other, match", [
    (make_relevance(2, channels=3), "dims differ"),
    (make_relevance(2, dtype="float64"), "dtype"),
    (make_relevance(2).rename("other"), "DataArray"),
    (make_relevance(2).drop_vars("label"), "coordinates differ"),
    (make_relevance(2).assign_coords(channel=["x", "y"]), "values differ"),
    (make_relevance(2).transpose("channel", "sample", "height", "width"), "dims"),
    (make_relevance(2).to_dataset(), "Dataset"),
    (make_relevance(2).isel(sample=0), "no 'sample' dim"),
])
def test_append_mismatch_errors(tmp_path, other, match):
    path = tmp_path / "rel.h5"
    save(make_relevance(3), path)
    before = path.read_bytes()
    with pytest.raises(StorageError, match=match) as info:
        save(other, path, mode="a")
    assert str(path) in str(info.value)
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["rel.h5"]


def test_append_dataset_variable_mismatch(tmp_path):
    path = tmp_path / "rel.h5"
    save(make_dataset(2), path)
    with pytest.raises(StorageError, match="data variables differ"):
        save(make_dataset(2).drop_vars("lrp.z"), path, mode="a")


def test_cannot_append_to_data_array_without_sample(tmp_path):
    path = tmp_path / "rel.h5"
    single = xr.DataArray(np.ones((2, 3)), dims=("height", "width"), name="relevance")
    save(single, path)
    assert_same(open_relevance(path), single)
    with pytest.raises(StorageError, match="no 'sample' dim"):
        save(single, path, mode="a")


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------

def _crash_on_second_write(monkeypatch, exc):
    original = storage._write_slab
    calls = []

    def failing(dset, index, values):
        calls.append(dset.name)
        original(dset, index, values)      # part of the data reaches the temporary file ...
        if len(calls) == 2:
            raise exc                      # ... then the process "dies"
    monkeypatch.setattr(storage, "_write_slab", failing)
    return calls


@pytest.mark.parametrize("mode", ["w", "a"])
@pytest.mark.parametrize("exc", [RuntimeError("simulated crash"), KeyboardInterrupt()])
def test_crash_during_write_keeps_old_file(tmp_path, monkeypatch, mode, exc):
    path = tmp_path / "rel.h5"
    save(make_relevance(3), path)
    before = path.read_bytes()
    calls = _crash_on_second_write(monkeypatch, exc)
    # an error inside a write (h5py raises RuntimeError for many HDF5 errors) is a StorageError caused by it
    # (issue 17 point 6); a KeyboardInterrupt stays one
    expected = StorageError if isinstance(exc, Exception) else type(exc)
    with pytest.raises(expected) as info:
        save(make_relevance(2, start=3, seed=5), path, mode=mode)
    if expected is StorageError:
        assert info.value.__cause__ is exc and "simulated crash" in str(info.value)
    assert len(calls) == 2
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["rel.h5"]
    monkeypatch.undo()
    assert_same(open_relevance(path), make_relevance(3))


def test_crash_during_first_write_leaves_nothing(tmp_path, monkeypatch):
    _crash_on_second_write(monkeypatch, RuntimeError("simulated crash"))
    with pytest.raises(StorageError) as info:      # a RuntimeError inside a write is a StorageError caused by it
        save(make_dataset(2), tmp_path / "new.h5")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert listing(tmp_path) == []


def test_unwritable_value_leaves_old_file(tmp_path):
    path = tmp_path / "rel.h5"
    save(make_relevance(2), path)
    before = path.read_bytes()
    bad = make_relevance(2).assign_attrs(callback=print)
    with pytest.raises(StorageError, match="callback"):
        save(bad, path)
    with pytest.raises(StorageError, match="object arrays"):
        save(xr.DataArray(np.array([1, "a"], dtype=object), dims="sample"), path)
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["rel.h5"]


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(StorageError, match="no such file") as info:
        open_relevance(path)
    assert str(path) in str(info.value)


def test_text_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not HDF5\n" * 20)
    with pytest.raises(StorageError, match="not an HDF5 file") as info:
        open_relevance(path)
    assert str(path) in str(info.value)
    with pytest.raises(StorageError, match="not an HDF5 file"):
        save(make_relevance(1), path, mode="a")
    assert path.read_text() == "this is not HDF5\n" * 20


def test_foreign_hdf5_file(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(StorageError, match="not an attribx relevance file") as info:
        open_relevance(path)
    assert str(path) in str(info.value)
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(StorageError, match="not an attribx relevance file"):
        open_relevance(path)


def test_newer_format_version(tmp_path):
    path = tmp_path / "rel.h5"
    save(make_relevance(2), path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(StorageError, match="newer") as info:
        open_relevance(path)
    assert str(path) in str(info.value)


def test_truncated_file(tmp_path):
    good = tmp_path / "good.h5"
    save(make_dataset(20), good)
    data = good.read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: len(data) // 2])
    for lazy in (False, True):
        with pytest.raises(StorageError, match="damaged|truncated") as info:
            open_relevance(path, lazy=lazy)
        assert str(path) in str(info.value)


def test_damaged_layout(tmp_path):
    path = tmp_path / "rel.h5"
    save(make_relevance(2), path)
    with h5py.File(path, "a") as f:
        del f["coords/target"]
    with pytest.raises(StorageError, match="damaged") as info:
        open_relevance(path)
    assert str(path) in str(info.value)


def test_not_xarray(tmp_path):
    with pytest.raises(StorageError, match="DataArray or xarray.Dataset"):
        save(np.zeros(3), tmp_path / "rel.h5")
    with pytest.raises(StorageError, match="mode"):
        save(make_relevance(1), tmp_path / "rel.h5", mode="x")
    assert listing(tmp_path) == []


def test_missing_directory(tmp_path):
    path = tmp_path / "no" / "such" / "dir.h5"
    with pytest.raises(StorageError) as info:
        save(make_relevance(1), path)
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------------------------
# lazy reading
# ------------------------------------------------------------------------------------------------

def test_lazy_equals_eager(tmp_path):
    import dask.array as da
    path = tmp_path / "rel.h5"
    rel = make_relevance(7)
    save(rel, path)
    with open_relevance(path, lazy=True) as lazy:
        assert isinstance(lazy.data, da.Array)
        assert lazy.chunks is not None
        assert isinstance(lazy.coords["sample"].data, np.ndarray)   # coordinates are read eagerly
        assert_same(lazy.compute(), open_relevance(path, lazy=False))
        assert float(lazy.isel(sample=slice(2, 4)).sum()) == pytest.approx(float(rel.isel(sample=slice(2, 4)).sum()))
    eager = open_relevance(path)
    assert isinstance(eager.data, np.ndarray)

    ds = make_dataset(5)
    save(ds, path)
    lazy = open_relevance(path, lazy=True)
    assert all(isinstance(v.data, da.Array) for v in lazy.data_vars.values())
    assert_same(lazy.compute(), ds)
    lazy.close()


def test_lazy_auto_uses_size_threshold(tmp_path, monkeypatch):
    import dask.array as da
    path = tmp_path / "rel.h5"
    save(make_relevance(3), path)
    assert isinstance(open_relevance(path).data, np.ndarray)
    monkeypatch.setattr(storage, "_LAZY_AUTO_BYTES", 0)
    got = open_relevance(path)
    assert isinstance(got.data, da.Array)
    assert_same(got.compute(), make_relevance(3))
    got.close()


def test_lazy_without_dask(tmp_path, monkeypatch):
    path = tmp_path / "rel.h5"
    save(make_relevance(3), path)
    with monkeypatch.context() as m:   # dask unimportable only inside this block (xarray probes it too)
        for mod in [name for name in sys.modules if name == "dask" or name.startswith("dask.")]:
            m.delitem(sys.modules, mod)
        m.setitem(sys.modules, "dask", None)
        with pytest.raises(StorageError, match="pip install dask") as info:
            open_relevance(path, lazy=True)
        assert str(path) in str(info.value)
    assert_same(open_relevance(path, lazy=False), make_relevance(3))


# ------------------------------------------------------------------------------------------------
# a relevance file never reads another file (external storage, virtual datasets, links)
# ------------------------------------------------------------------------------------------------

_SECRET = bytes(range(7, 7 + 120))   # 30 float32 values


def _secret_file(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(_SECRET)
    return secret


def _relevance_pointing_at(tmp_path, how):
    """A valid relevance file whose data variable (30 float32 = 120 bytes) is replaced by one that reads
    the secret file (or another place) through ``how``."""
    secret = _secret_file(tmp_path)
    rel = xr.DataArray(np.zeros((3, 10), np.float32), dims=("sample", "feature"), name="relevance",
                       coords={"sample": np.arange(3)})
    path = tmp_path / "evil.h5"
    save(rel, path)
    other = tmp_path / "other.h5"
    with h5py.File(path, "r+") as f:
        dset = f["data"]["relevance"]
        attrs = dict(dset.attrs)
        del f["data"]["relevance"]
        if how == "external":
            new = f["data"].create_dataset("relevance", shape=(3, 10), dtype="<f4",
                                           external=[(str(secret), 0, len(_SECRET))])
        elif how == "virtual":
            with h5py.File(other, "w") as g:
                g["x"] = np.frombuffer(_SECRET, dtype="<f4").reshape(3, 10)
            layout = h5py.VirtualLayout(shape=(3, 10), dtype="<f4")
            layout[:] = h5py.VirtualSource(str(other), "x", shape=(3, 10))
            new = f["data"].create_virtual_dataset("relevance", layout)
        elif how in ("external_link", "external_link_elsewhere"):
            with h5py.File(other, "w") as g:
                g["x"] = np.frombuffer(_SECRET, dtype="<f4").reshape(3, 10)
                for k, v in attrs.items():
                    g["x"].attrs[k] = v
            if how == "external_link":
                f["data"]["relevance"] = h5py.ExternalLink(str(other), "/x")
            else:
                f["data"].create_dataset("relevance", data=np.zeros((3, 10), np.float32))
                f["extra"] = h5py.ExternalLink(str(other), "/x")
            new = None
        elif how == "soft_link":
            f["hidden"] = np.frombuffer(_SECRET, dtype="<f4").reshape(3, 10)
            f["data"]["relevance"] = h5py.SoftLink("/hidden")
            new = None
        if new is not None:
            for k, v in attrs.items():
                new.attrs[k] = v
        elif how == "external_link_elsewhere":
            for k, v in attrs.items():
                f["data"]["relevance"].attrs[k] = v
    return path


@pytest.mark.parametrize("how, match", [
    ("external", "/data/relevance .*external files"),
    ("virtual", "/data/relevance .*virtual dataset"),
    ("external_link", "/data/relevance .*external link"),
    ("external_link_elsewhere", "/extra .*external link"),
    ("soft_link", "/data/relevance .*soft link"),
])
def test_a_relevance_file_never_reads_another_file(tmp_path, how, match, capsys):
    """An untrusted .h5 whose data lies in another file (external storage, a virtual dataset, an external
    link) or elsewhere (a soft link) is refused by name before any data is read: open_relevance (and so
    render, spray, evaluate), sample_count, append and resume."""
    from attribx.cli import main
    from attribx.streaming import StreamWriter
    path = _relevance_pointing_at(tmp_path, how)
    before = path.read_bytes()
    for lazy in (False, True):
        with pytest.raises(StorageError, match=match) as info:
            open_relevance(path, lazy=lazy)
        assert "\n" not in str(info.value)
    with pytest.raises(StorageError, match=match):
        storage.sample_count(path)
    with pytest.raises(StorageError, match=match):
        save(xr.DataArray(np.zeros((1, 10), np.float32), dims=("sample", "feature"), name="relevance",
                          coords={"sample": [3]}), path, mode="a")
    with pytest.raises(StorageError, match=match):
        StreamWriter(path, "fp", resume=True)
    assert main(["render", str(path), "-o", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "refused" in err
    assert path.read_bytes() == before and not (tmp_path / "r.png").exists()


def test_the_secret_file_is_what_an_unchecked_reader_would_return(tmp_path):
    """The test files above do reach the secret when read without the check (the test is not vacuous)."""
    path = _relevance_pointing_at(tmp_path, "external")
    with h5py.File(path, "r") as f:
        assert f["data"]["relevance"][()].tobytes() == _SECRET


# ------------------------------------------------------------------------------------------------
# output paths that are symbolic links, FIFOs or devices
# ------------------------------------------------------------------------------------------------

def _writers(tmp_path):
    """Every way attribx writes a file: relevance (save, streamed), a graph, a text heatmap page."""
    from attribx.streaming import explain_dataset
    from attribx.textviz import _write_atomically

    def graph_save(path):
        from attribx.demo import digits_graph
        digits_graph()[0].save(path)

    def streamed(path):
        from attribx.demo import digits_graph
        graph, x, _, _ = digits_graph()
        explain_dataset(graph, x[:8], path, "lrp.epsilon", batch_size=4, resume=False)

    return {"save": lambda p: save(make_relevance(), p), "check_writable": safe_writes.check_writable,
            "graph": graph_save, "stream": streamed,
            "text": lambda p: _write_atomically(p, lambda tmp: open(tmp, "w").write("<html></html>"))}


@pytest.mark.parametrize("writer", ["save", "check_writable", "graph", "stream", "text"])
def test_writing_through_a_symlink_updates_its_target_and_keeps_the_link(tmp_path, writer):
    write = _writers(tmp_path)[writer]
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "out.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    write(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    if writer != "check_writable":
        assert target.read_bytes() != b"old"
    else:
        assert target.read_bytes() == b"old"
    assert sorted(os.listdir(real_dir)) == ["out.bin"] and sorted(os.listdir(tmp_path)) == ["link.bin", "real"]


def _special_nodes(tmp_path):
    nodes = {}
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    nodes["FIFO"] = fifo
    try:
        dev = tmp_path / "null"
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))   # as /dev/null
        nodes["character device"] = dev
    except (PermissionError, OSError):
        pass
    link = tmp_path / "link-to-fifo"
    link.symlink_to(fifo)
    nodes["link to a FIFO"] = link
    return nodes


@pytest.mark.parametrize("writer", ["save", "check_writable", "graph", "stream", "text"])
def test_fifo_and_device_outputs_are_refused_and_left_alone(tmp_path, writer):
    """`-o /dev/full` as root replaced the device node by a regular file: FIFOs, devices and sockets (or a
    link to one) are refused with one line, the node unchanged."""
    write = _writers(tmp_path)[writer]
    for what, node in _special_nodes(tmp_path).items():
        before = os.lstat(node)
        with pytest.raises(StorageError, match="not a regular file") as info:
            write(node)
        assert "\n" not in str(info.value)
        after = os.lstat(node)
        assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev), what
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_cli_refuses_a_fifo_output_before_computing(tmp_path, capsys):
    from attribx.cli import main
    fifo = tmp_path / "out.h5"
    os.mkfifo(fifo)
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    from attribx.demo import digits_graph
    digits_graph()[0].save(tmp_path / "m.npz")
    for extra in ([], ["--stream"]):
        assert main(["explain", str(tmp_path / "m.npz"), str(tmp_path / "x.npy"), "-o", str(fifo)] + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "FIFO" in err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ------------------------------------------------------------------------------------------------
# appending another run is refused (issue 17 point 5)
# ------------------------------------------------------------------------------------------------

def _run(rng_seed=0, **changes):
    rel = make_relevance(2, 3, seed=rng_seed)
    rel.attrs.update(output_init="logit", explained_output="fc2", timing_s=0.5)
    rel.attrs.update(changes)
    return rel


@pytest.mark.parametrize("changes, what", [
    ({"model_fingerprint": "ffff0000"}, "model"),
    ({"method": "lrp.z_plus"}, "method"),
    ({"parameters": {"epsilon": 0.5, "low": [-1.0, 2.0]}}, "parameters"),
    ({"output_init": "softmax"}, "target kind"),
    ({"contrast": True}, "target kind"),
])
def test_append_of_another_run_is_refused_and_the_file_kept(tmp_path, changes, what):
    path = tmp_path / "rel.h5"
    save(_run(), path)
    save(_run(1, timing_s=9.0, attribx_version="9.9"), path, mode="a")  # same run: OK
    assert open_relevance(path).sizes["sample"] == 4
    before = path.read_bytes()
    with pytest.raises(StorageError, match=f"another run: {what}") as info:
        save(_run(2, **changes), path, mode="a")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert path.read_bytes() == before
    assert listing(tmp_path) == ["rel.h5"]


def test_append_of_another_explain_run_is_refused(tmp_path, rng):
    import attribx
    from conftest import build_mlp, mlp_weights
    graph = build_mlp(*mlp_weights(rng))
    other_model = build_mlp(*mlp_weights(np.random.default_rng(1)))
    x = rng.normal(size=(3, 6))
    path = tmp_path / "rel.h5"
    save(attribx.explain(graph, x, "lrp.epsilon", target=1, epsilon=0.25), path)
    save(attribx.explain(graph, x, "lrp.epsilon", target=2, epsilon=0.25, sample=[3, 4, 5]), path, mode="a")
    before = path.read_bytes()
    for model, method, params, what in ((graph, "lrp.epsilon", {"epsilon": 0.5}, "parameters"),
                                        (graph, "gradient", {}, "method"),
                                        (other_model, "lrp.epsilon", {"epsilon": 0.25}, "model")):
        with pytest.raises(StorageError, match=what):
            save(attribx.explain(model, x, method, target=1, sample=[6, 7, 8], **params), path, mode="a")
        assert path.read_bytes() == before


def _explained(graph, x, target, start, drop_kind=False):
    import attribx
    rel = attribx.explain(graph, x, "lrp.epsilon", target=target, epsilon=0.25,
                          sample=np.arange(start, start + len(x)))
    if drop_kind:      # as relevance written before attribx recorded the target kind
        del rel.attrs["target_kind"]
    return rel


def test_append_refuses_another_target_kind(tmp_path, rng):
    """"predicted" and given class ids fill the target coord alike: the target kind tells them apart."""
    import attribx
    from conftest import build_mlp, mlp_weights
    graph = build_mlp(*mlp_weights(rng))
    x = rng.normal(size=(3, 6))
    predicted = np.argmax(np.asarray(attribx.forward(graph, x)), axis=1)
    kinds = {"predicted": "predicted", "class": 1, "class ids": predicted, "contrast": ("contrast", 0, 1)}
    for first, first_target in kinds.items():
        path = tmp_path / f"{first.replace(' ', '_')}.h5"
        save(_explained(graph, x, first_target, 0), path)
        before = path.read_bytes()
        for second, second_target in kinds.items():
            rel = _explained(graph, x, second_target, 3)
            if (first == "predicted") == (second == "predicted") and (first == "contrast") == (second == "contrast"):
                continue   # the same kind (one class or one per sample): appended below
            with pytest.raises(StorageError, match="another run: target kind .*target_kind") as info:
                save(rel, path, mode="a")
            assert "\n" not in str(info.value)
            assert path.read_bytes() == before
    path = tmp_path / "class.h5"
    save(_explained(graph, x, predicted, 3), path, mode="a")     # class ids: one class or one per sample
    save(_explained(graph, x, "predicted", 0), tmp_path / "p.h5")
    save(_explained(graph, x, "predicted", 3), tmp_path / "p.h5", mode="a")
    assert open_relevance(tmp_path / "p.h5").attrs["target_kind"] == "predicted"
    assert open_relevance(path).sizes["sample"] == 6


def test_append_to_a_file_without_target_kind(tmp_path, rng):
    """Files from before the attr: the kind is read from the target and prediction coords where they tell
    (a target other than the prediction: given class ids), else the append is accepted (undecidable)."""
    import attribx
    from conftest import build_mlp, mlp_weights
    graph = build_mlp(*mlp_weights(rng))
    x = rng.normal(size=(3, 6))
    predicted = np.argmax(np.asarray(attribx.forward(graph, x)), axis=1)
    other = (predicted + 1) % 3
    old_class = tmp_path / "old_class.h5"
    save(_explained(graph, x, other, 0, drop_kind=True), old_class)
    before = old_class.read_bytes()
    with pytest.raises(StorageError, match='target_kind: file "class" vs new "predicted"'):
        save(_explained(graph, x, "predicted", 3), old_class, mode="a")
    assert old_class.read_bytes() == before
    save(_explained(graph, x, 1, 3), old_class, mode="a")                   # the same kind: accepted
    old_predicted = tmp_path / "old_predicted.h5"
    save(_explained(graph, x, "predicted", 0, drop_kind=True), old_predicted)
    save(_explained(graph, x, "predicted", 3), old_predicted, mode="a")     # undecidable: accepted
    assert open_relevance(old_predicted).sizes["sample"] == 6
    # an object without the attr appended to a file with it: read from the object's coords the same way
    new_file = tmp_path / "new.h5"
    save(_explained(graph, x, "predicted", 0), new_file)
    with pytest.raises(StorageError, match='target_kind: file "predicted" vs new "class"'):
        save(_explained(graph, x, other, 3, drop_kind=True), new_file, mode="a")
    save(_explained(graph, x, "predicted", 3, drop_kind=True), new_file, mode="a")
    assert open_relevance(new_file).sizes["sample"] == 6


def test_cli_append_refuses_another_target_kind(tmp_path, capsys):
    from attribx.cli import main
    from attribx.demo import digits_graph
    graph, x, _, _ = digits_graph()
    graph.save(tmp_path / "m.npz")
    np.save(tmp_path / "x.npy", x[:4])
    out = tmp_path / "rel.h5"
    args = ["explain", str(tmp_path / "m.npz"), str(tmp_path / "x.npy"), "-o", str(out)]
    assert main(args + ["--target", "predicted"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(args + ["--append", "--target", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "target kind" in err and '"predicted" vs new "class"' in err, err
    assert out.read_bytes() == before
    assert main(args + ["--append"]) == 0            # the same kind again: appended
    assert open_relevance(out).sizes["sample"] == 8


# ------------------------------------------------------------------------------------------------
# a full disk (issue 17 point 6): StorageError, the earlier file unchanged, no crash in a finaliser
# ------------------------------------------------------------------------------------------------

_SAVE_FULL_DISK = """
import errno, gc, sys
import h5py, numpy as np, xarray as xr
from attribx.errors import StorageError
from attribx.storage import save

path, how, mode = sys.argv[1], sys.argv[2], sys.argv[3]
n = 64 if how == "tmpfs" else 4
rel = xr.DataArray(np.random.default_rng(1).normal(size=(n, 5000)).astype(np.float32), dims=("sample", "f"),
                   coords={"sample": np.arange(100, 100 + n)}, name="relevance", attrs={"method": "m"})
if how == "setitem":
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    h5py.Dataset.__setitem__ = full
elif how == "flush":
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    h5py.File.flush = full
try:
    save(rel, path, mode=mode)
    print("SAVED", flush=True)
except StorageError as e:
    print("ERROR", e, flush=True)
del rel
gc.collect()
print("END", flush=True)
"""


@pytest.mark.parametrize("how", ["setitem", "flush", "tmpfs"])
@pytest.mark.parametrize("mode", ["w", "a"])
def test_a_full_disk_in_save_keeps_the_earlier_file(tmp_path, how, mode):
    import subprocess
    folder = tmp_path
    if how == "tmpfs":
        folder = tmp_path / "small"
        folder.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs privileges): {res.stderr.strip()}")
    try:
        path = folder / "rel.h5"
        small = xr.DataArray(np.ones((2, 5000), np.float32), dims=("sample", "f"),
                             coords={"sample": [0, 1]}, name="relevance", attrs={"method": "m"})
        save(small, path)
        before = path.read_bytes()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        res = subprocess.run([sys.executable, "-c", _SAVE_FULL_DISK, str(path), how, mode], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)   # < 0: crashed
        assert "ERROR" in res.stdout and "END" in res.stdout and "Traceback" not in res.stderr, (res.stdout,
                                                                                                 res.stderr)
        assert "no space left" in res.stdout, res.stdout
        assert "earlier file is unchanged" in res.stdout or "nothing of it was written" in res.stdout, res.stdout
        assert path.read_bytes() == before
        assert listing(folder) == ["rel.h5"]
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(folder)], capture_output=True)
