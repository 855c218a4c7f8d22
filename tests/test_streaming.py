"""Streaming explain (attribx.explain_dataset / `attribx explain --stream --resume`): a run killed with
SIGKILL and resumed equals an uninterrupted one; memory stays flat on inputs larger than it allows;
the sources (HDF5 dataset, directory of PNGs, iterable of batches)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import xarray as xr

import attribx
from attribx.errors import InputError, StorageError
from attribx.streaming import STREAM_ATTR, StreamWriter, explain_dataset, open_source

pytest.importorskip("sklearn")

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


@pytest.fixture(scope="module")
def digits():
    from attribx.demo import digits_graph
    graph, x, _, _ = digits_graph()
    return graph, x


def _reference(graph, x, path, batch_size, method="lrp.epsilon", **kw):
    """The independent reference: attribx.explain over the whole array, saved with attribx.save."""
    ref = attribx.explain(graph, x, method, batch_size=batch_size, **kw)
    attribx.save(ref, path)
    return attribx.open_relevance(path, lazy=False)


def _identical(a, b):
    xr.testing.assert_identical(a, b)
    assert a.attrs == b.attrs


def _committed(path):
    """The committed sample count of a file being written (None while it cannot be read)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(json.loads(f.attrs["dims"])["sample"])
    except Exception:
        return None


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_sigkill_and_resume_equals_uninterrupted_run(digits, tmp_path):
    graph, x = digits
    x = np.concatenate([x] * 8)[:3000]            # 3000 samples, 300 batches of 10
    xpath, mpath, out = tmp_path / "x.npy", tmp_path / "model.npz", tmp_path / "out.h5"
    np.save(xpath, x)
    graph.save(mpath)
    cmd = [sys.executable, "-m", "attribx.cli", "explain", str(mpath), str(xpath), "-o", str(out),
           "-m", "lrp.epsilon", "-p", "epsilon=0.1", "--batch-size", "10", "--resume"]
    kills = []
    rng = np.random.default_rng(0)
    # kill after at least this many committed samples, then after a random 0-10 ms (often inside a write)
    for at_least in (100, 500, 900, 1300, 1700, 2100, 2500):
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            n = _committed(out)
            if n is not None and n >= at_least:
                time.sleep(rng.uniform(0, 0.01))
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        proc.wait()
        kills.append((at_least, proc.returncode, _committed(out)))
    assert sum(rc == -signal.SIGKILL for _, rc, _ in kills) >= 4, kills   # really killed midway
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = attribx.open_relevance(out, lazy=False)
    ref = _reference(graph, x, tmp_path / "ref.h5", 10, epsilon=0.1)
    ref.attrs["inputs_file"] = os.path.abspath(xpath)
    _identical(got, ref)
    np.testing.assert_array_equal(got["sample"].values, np.arange(len(x)))   # no sample twice
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs[STREAM_ATTR])["complete"] is True


def test_resume_refuses_another_run_and_cuts_an_uncommitted_tail(digits, tmp_path):
    graph, x = digits
    out = tmp_path / "out.h5"
    explain_dataset(graph, x[:100], out, "lrp.epsilon", batch_size=30)
    with pytest.raises(StorageError, match="fingerprint"):
        explain_dataset(graph, x[:100], out, "lrp.epsilon", batch_size=30, epsilon=0.5)
    with pytest.raises(StorageError, match="fingerprint"):
        explain_dataset(graph, x[1:101], out, "lrp.epsilon", batch_size=30)
    # simulate a crash after a batch's data was written but before its commit
    with h5py.File(out, "r+") as f:
        dims = json.loads(f.attrs["dims"])
        dims["sample"] = 60
        f.attrs["dims"] = json.dumps(dims)
    r = explain_dataset(graph, x[:100], out, "lrp.epsilon", batch_size=30)
    assert r["resumed_at"] == 60 and r["new"] == 40 and r["samples"] == 100
    ref = attribx.explain(graph, x[:100], "lrp.epsilon", batch_size=30)
    got = attribx.open_relevance(out, lazy=False)
    np.testing.assert_array_equal(got.values, ref.values)
    np.testing.assert_array_equal(got["sample"].values, np.arange(100))
    # resume=False starts again
    r = explain_dataset(graph, x[:50], out, "lrp.epsilon", batch_size=30, resume=False)
    assert r["samples"] == 50 and r["resumed_at"] == 0


_MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, time, numpy as np
    from attribx.demo import digits_graph
    from attribx.streaming import explain_dataset

    def status(key):   # kB -> bytes, from /proc/self/status (Linux)
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    graph, x, _, _ = digits_graph()
    xpath, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    src = {"path": xpath, "memmap": np.load(xpath, mmap_mode="r")}.get(mode)
    explain_dataset(graph, x[:2000], out, "lrp.epsilon", batch_size=2000, resume=False)   # warm up
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:   # reset the peak (VmHWM) to the current RSS
        f.write("5")
    if src is None:   # "load": the control, which reads the whole input into memory
        src = np.load(xpath)
    t = time.perf_counter()
    r = explain_dataset(graph, src, out, "lrp.epsilon", batch_size=2000, resume=False)
    dt = time.perf_counter() - t
    print(before, status("VmHWM"), r["samples"], dt)
""")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures the peak RSS through Linux /proc")
@pytest.mark.parametrize("mode", ["path", "memmap", "load"])
def test_memory_stays_flat_on_a_memory_mapped_input(tmp_path, mode):
    n = 400_000                                     # 400k digits: 102 MB of float32 input
    xpath = tmp_path / "big.npy"
    big = np.lib.format.open_memmap(xpath, mode="w+", dtype=np.float32, shape=(n, 1, 8, 8))
    rng = np.random.default_rng(0)
    for s in range(0, n, 50_000):
        big[s:s + 50_000] = rng.random((min(50_000, n - s), 1, 8, 8), dtype=np.float32)
    big.flush()
    del big
    size = os.path.getsize(xpath)
    done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(xpath), str(tmp_path / "out.h5"), mode],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    before, after, samples, dt = done.stdout.split()[-4:]
    grew = int(after) - int(before)
    print(f"input {size / 1e6:.0f} MB, peak RSS grew {grew / 1e6:.1f} MB, {int(samples) / float(dt):.0f} samples/s")
    assert int(samples) == n
    if mode == "load":                            # the control: the measurement sees an input in memory
        assert grew > size / 2, (grew, size)
        return
    assert grew < size / 4, (grew, size)          # the input never sits in memory (measured: 5-20 MB)
    with attribx.open_relevance(tmp_path / "out.h5", lazy=True) as rel:
        assert rel.sizes["sample"] == n


def test_hdf5_dataset_source(digits, tmp_path):
    graph, x = digits
    h5 = tmp_path / "inputs.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("images/x", data=x[:95])
    ref = _reference(graph, x[:95], tmp_path / "ref.h5", 20)
    explain_dataset(graph, f"{h5}:images/x", tmp_path / "a.h5", batch_size=20)
    _identical(attribx.open_relevance(tmp_path / "a.h5", lazy=False), ref)
    with h5py.File(h5, "r") as f:                    # an h5py object
        explain_dataset(graph, f["images/x"], tmp_path / "b.h5", batch_size=20)
    _identical(attribx.open_relevance(tmp_path / "b.h5", lazy=False), ref)
    with pytest.raises(InputError, match="DATASET"):
        open_source(str(h5))


def test_directory_of_pngs(digits, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    graph, x = digits
    images = np.round(x[:25, 0] * 255).astype(np.uint8)
    d = tmp_path / "pngs"
    d.mkdir()
    names = [f"digit_{i:03d}.png" for i in range(25)]
    for name, img in zip(names, images):
        Image.fromarray(img, mode="L").save(d / name)
    (d / "notes.txt").write_text("not an image")
    explain_dataset(graph, d, tmp_path / "out.h5", batch_size=7)
    got = attribx.open_relevance(tmp_path / "out.h5", lazy=False)
    xs = images[:, None].astype(np.float32) * np.float32(1 / 255)
    ref = attribx.explain(graph, xs, batch_size=7, sample=np.array(names))
    np.testing.assert_array_equal(got.values, ref.values)
    assert list(got["sample"].values) == names      # sorted file names are the sample ids
    np.testing.assert_array_equal(got["prediction"].values, ref["prediction"].values)


def test_iterable_of_batches_and_a_one_pass_generator(digits, tmp_path):
    graph, x = digits
    ref = _reference(graph, x[:90], tmp_path / "ref.h5", 30)
    batches = [x[0:30], x[30:60], x[60:90]]
    explain_dataset(graph, batches, tmp_path / "a.h5", batch_size=30)
    _identical(attribx.open_relevance(tmp_path / "a.h5", lazy=False), ref)
    explain_dataset(graph, (b for b in batches), tmp_path / "b.h5", batch_size=30)
    _identical(attribx.open_relevance(tmp_path / "b.h5", lazy=False), ref)
    # resume over an iterable skips the samples already in the file
    with StreamWriter(tmp_path / "c.h5", "x") as w:
        assert w.committed == 0
    explain_dataset(graph, batches[:1], tmp_path / "c.h5", batch_size=30, fingerprint="digits-90")
    r = explain_dataset(graph, iter(batches), tmp_path / "c.h5", batch_size=30, fingerprint="digits-90")
    assert r["resumed_at"] == 30 and r["samples"] == 90
    _identical(attribx.open_relevance(tmp_path / "c.h5", lazy=False), ref)


def test_cli_streams_an_hdf5_dataset(digits, tmp_path):
    from attribx.cli import main
    graph, x = digits
    graph.save(tmp_path / "m.npz")
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["x"] = x[:64]
    assert main(["explain", str(tmp_path / "m.npz"), f"{tmp_path / 'in.h5'}:x", "-o", str(tmp_path / "o.h5"),
                 "--batch-size", "16"]) == 0
    got = attribx.open_relevance(tmp_path / "o.h5", lazy=False)
    ref = attribx.explain(graph, x[:64], batch_size=16)
    np.testing.assert_array_equal(got.values, ref.values)
    assert main(["explain", str(tmp_path / "m.npz"), f"{tmp_path / 'in.h5'}:x", "-o", str(tmp_path / "o.h5"),
                 "--batch-size", "16", "--resume", "-p", "epsilon=0.3"]) == 2     # another run: refused


def test_a_failed_run_keeps_the_earlier_file(digits, tmp_path):
    """resume=False replaces the file only when its first batch is committed: a NaN input, a bad target or
    a bad parameter leaves the earlier result byte for byte (it was deleted before the first batch)."""
    from attribx.cli import main
    from attribx.errors import AttribxError
    graph, x = digits
    out = tmp_path / "out.h5"
    explain_dataset(graph, x[:40], out, "lrp.epsilon", batch_size=20)
    before = out.read_bytes()
    bad = x[:40].copy()
    bad[3, 0] = np.nan
    for args, kw in [((bad,), {}), ((x[:40],), {"target": 10_000}), ((x[:40],), {"no_such_param": 1.0})]:
        with pytest.raises(AttribxError):
            explain_dataset(graph, *args, out, "lrp.epsilon", batch_size=20, resume=False, **kw)
        assert out.read_bytes() == before
    graph.save(tmp_path / "m.npz")
    np.save(tmp_path / "bad.npy", bad)
    assert main(["explain", str(tmp_path / "m.npz"), str(tmp_path / "bad.npy"), "-o", str(out),
                 "--stream", "--batch-size", "20"]) == 2
    assert out.read_bytes() == before
    r = explain_dataset(graph, x[:10], out, "lrp.epsilon", batch_size=20, resume=False)   # a good run replaces it
    assert r["samples"] == 10 and attribx.open_relevance(out, lazy=False).sizes["sample"] == 10


# ------------------------------------------------------------------------------------------------
# a full disk (issue 17 point 6): an error, nothing committed that was not written, no crash at exit
# ------------------------------------------------------------------------------------------------

_FULL_DISK_SCRIPT = textwrap.dedent("""
    import errno, gc, sys
    import h5py, numpy as np, xarray as xr
    from attribx.errors import StorageError
    from attribx.streaming import StreamWriter

    path, how, fail_from = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def batch(i, n=4, width=3):
        rng = np.random.default_rng(i)
        return xr.DataArray(rng.normal(size=(n, width)).astype(np.float32) + i, dims=("sample", "f"),
                            coords={"sample": np.arange(4 * i, 4 * i + n)}, name="relevance",
                            attrs={"method": "m", "model_fingerprint": "x"})

    if how != "tmpfs":
        state = {"on": False}
        def breaking(original):
            def call(self, *a, **k):
                if state["on"]:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return original(self, *a, **k)
            return call
        if how == "flush":
            h5py.File.flush = breaking(h5py.File.flush)
        else:
            h5py.Dataset.__setitem__ = breaking(h5py.Dataset.__setitem__)
    w = StreamWriter(path, "fp", batch_size=4, total=64)
    try:
        for i in range(16 if how == "tmpfs" else 4):
            if i == fail_from and how != "tmpfs":
                state["on"] = True
            w.append(batch(i, width=20000 if how == "tmpfs" else 3))
            print("APPENDED", i, w.committed, flush=True)
    except StorageError as e:
        print("ERROR", e, flush=True)
    try:
        w.close(complete=True)
        print("COMPLETE", flush=True)
    except StorageError as e:
        print("NOT COMPLETE", e, flush=True)
    if how != "tmpfs":
        state["on"] = False
    del w
    gc.collect()
    print("COMMITTED-END", flush=True)
""")


def _full_disk_run(path, how, fail_from):
    res = subprocess.run([sys.executable, "-c", _FULL_DISK_SCRIPT, str(path), how, str(fail_from)], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)   # < 0: crashed (a segfault at GC)
    assert "COMMITTED-END" in res.stdout and "Traceback" not in res.stderr, (res.stdout, res.stderr)
    return res.stdout


@pytest.mark.parametrize("how", ["flush", "setitem"])
def test_a_full_disk_in_a_streamed_run_commits_nothing_unwritten(tmp_path, how):
    path = tmp_path / "rel.h5"
    out = _full_disk_run(path, how, fail_from=2)
    assert "ERROR" in out and "no space left" in out and "NOT COMPLETE" in out and "\nCOMPLETE" not in out, out
    with h5py.File(path, "r") as f:
        info = json.loads(f.attrs[STREAM_ATTR])
        assert info["committed"] == 8 and not info["complete"]
        assert json.loads(f.attrs["dims"])["sample"] == 8
    rel = attribx.open_relevance(path, lazy=False)
    assert list(rel.sample.values) == list(range(8))
    assert np.all(rel.values[:4] != 0) and np.all(rel.values[4:] != 0)
    w = StreamWriter(path, "fp", resume=True)          # the resume continues after the committed samples
    assert w.committed == 8
    w.close()
    assert listing_h5(tmp_path) == ["rel.h5"]


def test_a_full_disk_on_the_first_batch_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "rel.h5"
    attribx.save(xr.DataArray(np.ones((2, 3), np.float32), dims=("sample", "f"), name="relevance"), path)
    before = path.read_bytes()
    out = _full_disk_run(path, "setitem", fail_from=0)
    assert "ERROR" in out and "earlier file is unchanged" in out and "NOT COMPLETE" in out, out
    assert path.read_bytes() == before
    assert listing_h5(tmp_path) == ["rel.h5"]


def listing_h5(directory):
    return sorted(n for n in os.listdir(directory) if not n.endswith(".lock"))


def test_a_really_full_disk_tmpfs(tmp_path):
    """A 1 MiB tmpfs filled by a streamed run: a StorageError, the committed samples readable and intact."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs privileges): {res.stderr.strip()}")
    try:
        out = _full_disk_run(mnt / "rel.h5", "tmpfs", 0)
        assert "ERROR" in out and "NOT COMPLETE" in out, out
        if (mnt / "rel.h5").exists():
            rel = attribx.open_relevance(mnt / "rel.h5", lazy=False)
            n = rel.sizes["sample"]
            assert n > 0 and n % 4 == 0
            for i in range(n // 4):
                expected = np.random.default_rng(i).normal(size=(4, 20000)).astype(np.float32) + i
                np.testing.assert_array_equal(rel.values[4 * i:4 * i + 4], expected)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ------------------------------------------------------------------------------------------------
# two writers on one file (issue 17 point 10): the second is refused while the first runs
# ------------------------------------------------------------------------------------------------

_HOLDER_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, xarray as xr
    from attribx.streaming import StreamWriter

    path = sys.argv[1]
    def batch(i):
        return xr.DataArray(np.full((4, 3), i + 1, np.float32), dims=("sample", "f"),
                            coords={"sample": np.arange(4 * i, 4 * i + 4)}, name="relevance", attrs={"method": "m"})
    w = StreamWriter(path, "fp", batch_size=4, resume=True)
    w.append(batch(w.committed // 4))
    print("READY", flush=True)
    sys.stdin.readline()                 # the run goes on until the test says so (or kills it)
    w.append(batch(w.committed // 4))
    w.close(complete=True)
    print("DONE", flush=True)
""")


def _batch(i):
    return xr.DataArray(np.full((4, 3), i + 1, np.float32), dims=("sample", "f"),
                        coords={"sample": np.arange(4 * i, 4 * i + 4)}, name="relevance", attrs={"method": "m"})


def _holder(path, env):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER_SCRIPT, str(path)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "READY", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


@pytest.mark.parametrize("hdf5_locking", ["default", "FALSE"])
def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, monkeypatch, hdf5_locking):
    env = _env()
    if hdf5_locking == "FALSE":
        env["HDF5_USE_FILE_LOCKING"] = "FALSE"
        monkeypatch.setenv("HDF5_USE_FILE_LOCKING", "FALSE")
    path = tmp_path / "rel.h5"
    proc = _holder(path, env)
    try:
        pid = str(proc.pid)
        for attempt in (lambda: attribx.save(_batch(5), path),
                        lambda: attribx.save(_batch(5), path, mode="a"),
                        lambda: StreamWriter(path, "fp", resume=True),
                        lambda: StreamWriter(path, "fp", resume=False)):
            with pytest.raises(StorageError, match=f"being written by another attribx run \\(pid {pid}\\)") as info:
                attempt()
            assert "delete" not in str(info.value) and "\n" not in str(info.value)
        try:                       # a reader is told the file is being written, never that it is damaged
            rel = attribx.open_relevance(path, lazy=False)
            assert rel.sizes["sample"] in (4, 8)
        except StorageError as err:
            assert "being written" in str(err) and "damaged" not in str(err), err
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "DONE"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rel = attribx.open_relevance(path, lazy=False)          # the first run's output is whole
    assert list(rel.sample.values) == list(range(8)) and float(rel.values[-1, 0]) == 2.0
    w = StreamWriter(path, "fp", resume=True)              # after it ended the next run works
    w.append(_batch(2))
    w.close(complete=True)
    attribx.save(_batch(3), path, mode="a")
    assert attribx.open_relevance(path, lazy=False).sizes["sample"] == 16
    assert sorted(os.listdir(tmp_path)) == ["rel.h5"]      # no lock file left behind


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "rel.h5"
    proc = _holder(path, _env())
    with pytest.raises(StorageError, match="being written"):
        StreamWriter(path, "fp", resume=True)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stdout.close(), proc.stdin.close(), proc.stderr.close()
    w = StreamWriter(path, "fp", resume=True)              # the OS released the lock with the process
    assert w.committed == 4
    w.append(_batch(1))
    w.close(complete=True)
    assert attribx.open_relevance(path, lazy=False).sizes["sample"] == 8
    assert sorted(os.listdir(tmp_path)) == ["rel.h5"]


# ------------------------------------------------------------------------------------------------
# output= (--output-node) with streaming: the node explained is part of the run
# ------------------------------------------------------------------------------------------------

def _two_heads():
    from attribx.builder import GraphBuilder
    rng = np.random.default_rng(0)
    b = GraphBuilder("two")
    x = b.input("x", (6,))
    h = b.relu(b.linear(x, rng.normal(size=(8, 6)).astype("f4"), rng.normal(size=8).astype("f4"), name="body"))
    a = b.linear(h, rng.normal(size=(3, 8)).astype("f4"), name="head_a")
    c = b.linear(h, rng.normal(size=(4, 8)).astype("f4"), name="head_b")
    return b.build(a, c), rng.normal(size=(10, 6)).astype("f4")


def test_streamed_explain_of_a_named_output_equals_explain(tmp_path):
    from attribx.errors import GraphError
    graph, x = _two_heads()
    for name in ("head_a", "head_b"):
        out = tmp_path / f"{name}.h5"
        r = explain_dataset(graph, x, out, "lrp.epsilon", output=name, batch_size=4)
        assert r["samples"] == 10
        got = attribx.open_relevance(out, lazy=False)
        ref = _reference(graph, x, tmp_path / f"ref_{name}.h5", 4, output=name)
        _identical(got, ref)
        assert got.attrs["explained_output"] == name
    with pytest.raises(GraphError, match="2 outputs.*output="):
        explain_dataset(graph, x, tmp_path / "none.h5", "lrp.epsilon", batch_size=4)
    assert not (tmp_path / "none.h5").exists()


def _stopping(x, n=None):
    """Batches of 4 of ``x``; with ``n``, the source fails after n batches (an interrupted run)."""
    for i in range(0, len(x), 4):
        if n is not None and i >= 4 * n:
            raise KeyboardInterrupt
        yield x[i:i + 4]


def test_resume_with_another_output_node_is_refused(tmp_path):
    graph, x = _two_heads()
    out = tmp_path / "rel.h5"
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(graph, _stopping(x, 1), out, "lrp.epsilon", output="head_b", batch_size=4, fingerprint="x")
    before = out.read_bytes()
    with pytest.raises(StorageError, match="output node"):
        explain_dataset(graph, _stopping(x), out, "lrp.epsilon", output="head_a", batch_size=4, fingerprint="x")
    assert out.read_bytes() == before
    r = explain_dataset(graph, _stopping(x), out, "lrp.epsilon", output="head_b", batch_size=4, fingerprint="x")
    assert r["resumed_at"] == 4 and r["samples"] == 10
    ref = _reference(graph, x, tmp_path / "ref.h5", 4, output="head_b")
    np.testing.assert_array_equal(attribx.open_relevance(out, lazy=False).values, ref.values)


def test_a_named_output_that_is_the_only_one_resumes_a_file_without_it(digits, tmp_path):
    """Naming the graph's only output is the same run as naming none (files of older versions resume)."""
    graph, x = digits
    out = tmp_path / "rel.h5"
    with pytest.raises(KeyboardInterrupt):
        explain_dataset(graph, _stopping(x[:12], 2), out, "lrp.epsilon", batch_size=4, fingerprint="x")
    r = explain_dataset(graph, _stopping(x[:12]), out, "lrp.epsilon", batch_size=4, fingerprint="x",
                        output=graph.outputs[0])
    assert r["resumed_at"] == 8 and r["samples"] == 12


def test_cli_output_node_with_stream_and_resume(tmp_path, capsys):
    from attribx.cli import main
    graph, x = _two_heads()
    graph.save(tmp_path / "two.npz")
    np.save(tmp_path / "x.npy", x)
    args = ["explain", str(tmp_path / "two.npz"), str(tmp_path / "x.npy"), "--batch-size", "4"]
    assert main(args + ["--stream", "--output-node", "head_b", "-o", str(tmp_path / "s.h5")]) == 0
    assert main(args + ["--output-node", "head_b", "-o", str(tmp_path / "p.h5")]) == 0
    _identical(attribx.open_relevance(tmp_path / "s.h5", lazy=False).drop_attrs(),
               attribx.open_relevance(tmp_path / "p.h5", lazy=False).drop_attrs())
    assert attribx.open_relevance(tmp_path / "s.h5", lazy=False).attrs["explained_output"] == "head_b"
    before = (tmp_path / "s.h5").read_bytes()
    capsys.readouterr()
    assert main(args + ["--resume", "--output-node", "head_a", "-o", str(tmp_path / "s.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "output node" in err, err
    assert (tmp_path / "s.h5").read_bytes() == before
    assert main(args + ["--resume", "--output-node", "head_b", "-o", str(tmp_path / "s.h5")]) == 0


def test_output_node_on_a_cluster(tmp_path):
    pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    from attribx.distributed import explain_dataset_distributed
    graph, x = _two_heads()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        r = explain_dataset_distributed(graph, x, tmp_path / "d.h5", "lrp.epsilon", output="head_b",
                                        scheduler=client, batch_size=4)
    assert r["samples"] == 10
    explain_dataset(graph, x, tmp_path / "s.h5", "lrp.epsilon", output="head_b", batch_size=4)
    _identical(attribx.open_relevance(tmp_path / "d.h5", lazy=False),
               attribx.open_relevance(tmp_path / "s.h5", lazy=False))
