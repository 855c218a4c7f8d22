"""HDF5 write errors that reach HDF5 (issue 17 point 6): a full disk or another write error at any stage of
:func:`attribx.save` (new file and append) and of the streamed writer (write, flush, close) is a
StorageError before anything is committed, the earlier file is kept, and no h5py object is left to fail in a
finaliser: each case runs in a subprocess that collects garbage and exits, and a crash (a segfault in HDF5,
as a file whose flush failed did on closing) shows as a negative exit status.

The faults: injected in h5py (``Dataset.__setitem__``, the low-level ``h5py.h5f.flush``, ``File.close``) as
``OSError(ENOSPC)`` and as the ``RuntimeError`` h5py raises for HDF5's own errors; and a real full disk, a
1 MiB tmpfs that another program fills between attribx's free-space check and the write (skipped where a
tmpfs cannot be mounted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import xarray as xr

import attribx
from attribx.streaming import STREAM_ATTR, StreamWriter

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

_PRELUDE = textwrap.dedent("""
    import errno, gc, os, sys
    import h5py, numpy as np, xarray as xr
    from attribx import safe_writes, storage, stream_writer
    from attribx.errors import StorageError

    def inject(stage, error):
        '''Make h5py fail at ``stage`` from now on: a write, a flush (the low-level call File.flush makes)
        or a close (once, leaving the file open, as HDF5 does when its close fails).'''
        def fault():
            if error == "enospc":
                return OSError(errno.ENOSPC, "No space left on device")
            return RuntimeError("Can't flush cache (file write failed: errno = 28, error message = 'No space "
                                "left on device')" if stage != "write" else "Can't write data (HDF5 error)")
        if stage == "write":
            def setitem(self, *a, **k):
                raise fault()
            h5py.Dataset.__setitem__ = setitem
        elif stage == "flush":
            def flush(*a, **k):
                raise fault()
            h5py.h5f.flush = flush
        else:
            original, calls = h5py.File.close, []
            def close(self):
                if self.id.valid and self.mode == "r+":   # a file being written (not one read to check)
                    calls.append(1)
                    if len(calls) == 1:
                        raise fault()
                return original(self)
            h5py.File.close = close

    def fill_disk(folder, room):
        '''Another program fills the file system of ``folder``, leaving about ``room`` bytes.'''
        fd = os.open(os.path.join(folder, "filler"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            block = b"\\0" * 4096
            for _ in range(max(0, free - room) // 4096):
                os.write(fd, block)
        except OSError:
            pass
        finally:
            os.close(fd)

    def race(module, room):
        '''The disk fills between attribx's free-space check (which passes) and the write.'''
        check = module.check_space
        def checked_then_filled(path, nbytes):
            check(path, nbytes)
            fill_disk(os.path.dirname(os.path.abspath(path)), room)
        module.check_space = checked_then_filled
""")

_SAVE = _PRELUDE + textwrap.dedent("""
    path, how, arg, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    rel = xr.DataArray(np.random.default_rng(1).normal(size=(n, 5000)).astype(np.float32), dims=("sample", "f"),
                       coords={"sample": np.arange(100, 100 + n)}, name="relevance", attrs={"method": "m"})
    if how == "race":
        race(storage, int(arg))
    else:
        inject(how, arg)
    try:
        storage.save(rel, path, mode=mode)
        print("SAVED", flush=True)
    except StorageError as e:
        print("ERROR", e, flush=True)
    del rel
    gc.collect()
    print("END", flush=True)
""")


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC] + sys.path)}


def _run(script, *args):
    res = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)    # < 0: crashed (HDF5, at GC or exit)
    assert "END" in res.stdout, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr   # no finaliser failed
    return res.stdout


def _listing(folder):
    return sorted(n for n in os.listdir(folder) if n not in ("filler",) and not n.endswith(".lock"))


def _small(n=2):
    return xr.DataArray(np.ones((n, 5000), np.float32), dims=("sample", "f"), coords={"sample": np.arange(n)},
                        name="relevance", attrs={"method": "m"})


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only: skipped where it cannot be mounted)."""
    folder = tmp_path / "small"
    folder.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs privileges): {res.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


# ------------------------------------------------------------------------------------------------
# save(): new file and append
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["w", "a"])
@pytest.mark.parametrize("error", ["enospc", "runtime"])
@pytest.mark.parametrize("stage", ["write", "flush", "close"])
def test_a_write_error_at_any_stage_of_save_is_a_storage_error(tmp_path, stage, error, mode):
    path = tmp_path / "rel.h5"
    attribx.save(_small(), path)
    before = path.read_bytes()
    out = _run(_SAVE, path, stage, error, mode, 4)
    assert "ERROR" in out and "SAVED" not in out, out
    assert "earlier file is unchanged" in out, out
    if error == "enospc" or stage == "flush":
        assert "no space left on the device" in out, out
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["rel.h5"]


@pytest.mark.parametrize("mode", ["w", "a"])
@pytest.mark.parametrize("room", [0, 8192, 65536, 200_000])
def test_a_disk_filled_after_the_space_check_in_save(small_tmpfs, mode, room):
    """The real race: the free-space check passes, then another program fills the disk, so ENOSPC reaches
    HDF5 (in a write, the flush or the close, depending on the room left): the process survives it."""
    path = small_tmpfs / "rel.h5"
    attribx.save(_small(), path)
    before = path.read_bytes()
    out = _run(_SAVE, path, "race", room, mode, 40)
    assert "ERROR" in out and "no space left on the device" in out, out
    assert path.read_bytes() == before
    assert _listing(small_tmpfs) == ["rel.h5"]


# ------------------------------------------------------------------------------------------------
# the streamed writer
# ------------------------------------------------------------------------------------------------

_STREAM = _PRELUDE + textwrap.dedent("""
    path, how, arg, fail_at, width = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])

    def batch(i, n=4):
        rng = np.random.default_rng(i)
        return xr.DataArray(rng.normal(size=(n, width)).astype(np.float32) + i, dims=("sample", "f"),
                            coords={"sample": np.arange(4 * i, 4 * i + n)}, name="relevance",
                            attrs={"method": "m"})

    w = stream_writer.StreamWriter(path, "fp", batch_size=4, total=64)
    try:
        for i in range(16):
            if i == fail_at:
                if how == "race":
                    race(stream_writer, int(arg))
                elif how != "close":
                    inject(how, arg)
            w.append(batch(i))
            print("APPENDED", i, w.committed, flush=True)
        if how == "close":
            inject("close", arg)
    except StorageError as e:
        print("ERROR", e, flush=True)
    try:
        w.close(complete=True)
        print("COMPLETE", flush=True)
    except StorageError as e:
        print("NOT COMPLETE", e, flush=True)
    del w
    gc.collect()
    print("END", flush=True)
""")


def _expected_batch(i, width):
    return np.random.default_rng(i).normal(size=(4, width)).astype(np.float32) + i


def _check_committed(path, width, complete=False):
    """The file holds whole committed batches, exactly as written, and a resume continues after them."""
    with h5py.File(path, "r") as f:
        info = json.loads(f.attrs[STREAM_ATTR])
        committed = json.loads(f.attrs["dims"])["sample"]
    assert info["committed"] == committed and info["complete"] is complete
    rel = attribx.open_relevance(path, lazy=False)
    assert rel.sizes["sample"] == committed and committed % 4 == 0
    assert list(rel.sample.values) == list(range(committed))
    for i in range(committed // 4):
        np.testing.assert_array_equal(rel.values[4 * i:4 * i + 4], _expected_batch(i, width))
    w = StreamWriter(path, "fp", resume=True)
    try:
        assert w.committed == committed
    finally:
        w.close()
    return committed


@pytest.mark.parametrize("error", ["enospc", "runtime"])
@pytest.mark.parametrize("stage", ["write", "flush"])
def test_a_write_error_in_a_streamed_batch_commits_nothing_unwritten(tmp_path, stage, error):
    path = tmp_path / "rel.h5"
    out = _run(_STREAM, path, stage, error, 2, 3)
    assert "ERROR" in out and "NOT COMPLETE" in out and "\nCOMPLETE" not in out, out
    assert "holds the 8 samples committed before" in out, out
    assert _check_committed(path, 3) == 8
    assert _listing(tmp_path) == ["rel.h5"]


@pytest.mark.parametrize("error", ["enospc", "runtime"])
@pytest.mark.parametrize("stage", ["write", "flush"])
def test_a_write_error_in_the_first_streamed_batch_keeps_the_earlier_file(tmp_path, stage, error):
    path = tmp_path / "rel.h5"
    attribx.save(_small(), path)
    before = path.read_bytes()
    out = _run(_STREAM, path, stage, error, 0, 3)
    assert "ERROR" in out and "earlier file is unchanged" in out and "NOT COMPLETE" in out, out
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["rel.h5"]


@pytest.mark.parametrize("error", ["enospc", "runtime"])
def test_a_close_error_of_a_streamed_file_is_a_storage_error(tmp_path, error):
    path = tmp_path / "rel.h5"
    out = _run(_STREAM, path, "close", error, 99, 3)
    assert "APPENDED 15 64" in out and "NOT COMPLETE" in out and "closing the file failed" in out, out
    rel = attribx.open_relevance(path, lazy=False)      # everything was flushed before the close
    assert rel.sizes["sample"] == 64
    np.testing.assert_array_equal(rel.values[60:], _expected_batch(15, 3))


@pytest.mark.parametrize("room", [0, 8192, 65536])
@pytest.mark.parametrize("fail_at", [0, 1])
def test_a_disk_filled_after_the_space_check_in_a_streamed_run(small_tmpfs, fail_at, room):
    """The real race in a streamed run: ENOSPC reaches HDF5 in the middle of a batch; the committed batches
    stay readable and exact (an uncommitted tail HDF5 wrote is not read), a resume continues after them."""
    path = small_tmpfs / "rel.h5"
    out = _run(_STREAM, path, "race", room, fail_at, 20000)
    assert "ERROR" in out and "no space left on the device" in out and "NOT COMPLETE" in out, out
    os.unlink(small_tmpfs / "filler")
    if fail_at == 0:
        assert _listing(small_tmpfs) == [], out
    else:
        assert _check_committed(path, 20000) == 4 * fail_at
        assert _listing(small_tmpfs) == ["rel.h5"]


def test_a_reader_stops_at_the_committed_samples(tmp_path):
    """A streamed file whose datasets hold an uncommitted tail (a kill or a full disk in the middle of a
    batch) reads as its committed samples, eagerly and lazily."""
    path = tmp_path / "rel.h5"
    w = StreamWriter(path, "fp", batch_size=2)
    for i in range(2):
        w.append(xr.DataArray(np.full((2, 3), i, np.float32), dims=("sample", "f"),
                              coords={"sample": [2 * i, 2 * i + 1]}, name="relevance"))
    w.close()
    with h5py.File(path, "r+") as f:           # what HDF5 may have written of a third batch before it stopped
        for group in ("data", "coords"):
            for dset in f[group].values():
                dset.resize(6, axis=0)
    for lazy in (False, True):
        rel = attribx.open_relevance(path, lazy=lazy)
        assert rel.sizes["sample"] == 4 and list(rel.sample.values) == [0, 1, 2, 3]
        np.testing.assert_array_equal(np.asarray(rel.values), np.repeat([0, 1], 2)[:, None] * np.ones((1, 3)))
        rel.close()
