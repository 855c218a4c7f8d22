"""The command line: inspect, explain, plugins; bad input gives one clear line and a non-zero exit."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from attribx.cli import main

from conftest import build_mlp, mlp_weights


@pytest.fixture
def files(tmp_path, rng):
    ws, bs = mlp_weights(rng)
    graph = build_mlp(ws, bs)
    model = tmp_path / "mlp.npz"
    graph.save(model)
    x = rng.normal(size=(5, 6))
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "data.npz", images=x, labels=np.arange(5) % 3)
    return tmp_path, model, x, graph


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "attribx.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)


def test_inspect_prints_summary(files, capsys):
    _, model, _, graph = files
    assert main(["inspect", str(model)]) == 0
    out = capsys.readouterr().out
    assert "fc1" in out and "linear" in out and graph.fingerprint() in out


def test_explain_writes_labeled_relevance(files):
    import attribx
    tmp, model, x, graph = files
    out = tmp / "rel.h5"
    assert main(["explain", str(model), str(tmp / "data.npz"), "--method", "lrp.epsilon", "-p", "epsilon=0.5",
                 "--target", "1", "-o", str(out)]) == 0
    rel = attribx.open_relevance(out)
    expected = attribx.explain(graph, x, "lrp.epsilon", target=1, epsilon=0.5)
    np.testing.assert_allclose(rel.values, expected.values, rtol=1e-12)
    assert list(rel.label.values) == [0, 1, 2, 0, 1]
    assert rel.attrs["parameters"] == {"epsilon": 0.5, "zero_bias": False, "bias_factor": 0.0}
    # --append adds samples to the same file; their ids continue
    assert main(["explain", str(model), str(tmp / "data.npz"), "-p", "epsilon=0.5", "-t", "1", "-o", str(out),
                 "--append"]) == 0
    both = attribx.open_relevance(out)
    assert list(both.sample.values) == list(range(10))
    np.testing.assert_allclose(both.values[5:], expected.values, rtol=1e-12)
    # appending data without labels to a file with labels is refused, and the file is kept
    res = run_cli("explain", model, tmp / "x.npy", "-p", "epsilon=0.5", "-t", "1", "-o", out, "--append")
    assert res.returncode == 2 and "cannot append" in res.stderr
    assert attribx.open_relevance(out).sizes["sample"] == 10


def test_append_needs_no_dask(files):
    """The demo's install has no dask: --append counts the file's samples from its header alone."""
    tmp, model, x, graph = files
    out = tmp / "rel.h5"
    blocker = ("import sys\n"
               "sys.modules.update(dask=None, distributed=None)   # as if not installed\n"
               "from attribx.cli import main\n"
               "raise SystemExit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for extra in ([], ["--append"]):
        res = subprocess.run([sys.executable, "-c", blocker, "explain", str(model), str(tmp / "x.npy"), "-t", "1",
                              "-o", str(out), *extra], capture_output=True, text=True, env=env, timeout=120,
                             stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
    import attribx
    both = attribx.open_relevance(out, lazy=False)
    assert list(both.sample.values) == list(range(10))
    np.testing.assert_array_equal(both.values[:5], both.values[5:])


@pytest.mark.parametrize("args, message", [
    (["--method", "lrp.nope"], "unknown method 'lrp.nope'"),
    (["-p", "gamma=0.25"], "unknown parameter(s) gamma"),
    (["-p", "epsilon"], "write name=value"),
    (["--target", "banana"], "--target 'banana'"),
])
def test_bad_arguments_one_line(files, args, message):
    tmp, model, _, _ = files
    res = run_cli("explain", model, tmp / "x.npy", "-o", tmp / "o.h5", *args)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp / "o.h5").exists()


def test_wrong_shape_and_nan_inputs(files):
    tmp, model, x, _ = files
    np.save(tmp / "wrong.npy", x[:, :4])
    bad = x.copy()
    bad[2, 1] = np.nan
    np.save(tmp / "nan.npy", bad)
    np.save(tmp / "one.npy", x[0])
    for name, message in (("wrong.npy", "the model expects (N, 6)"), ("nan.npy", "NaN"),
                          ("one.npy", "input has shape (6,), the model expects (N, 6) (add a batch axis: x[None])")):
        res = run_cli("explain", model, tmp / name, "-o", tmp / "o.h5")
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
        assert res.stderr.count("\n") == 1


def test_not_a_model(files):
    tmp, _, _, _ = files
    (tmp / "model.txt").write_text("not a model")
    res = run_cli("inspect", tmp / "model.txt")
    assert res.returncode == 2 and "not a model file" in res.stderr and "Traceback" not in res.stderr


def test_plugins_command(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "attribx.builtin  (built-in)" in out
    assert "lrp.epsilon" in out and "numpy" in out


def test_help_lists_the_choices(capsys):
    import re

    from attribx.plugins import registry
    reg = registry()

    def help_of(*command) -> str:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0
        return " ".join(capsys.readouterr().out.split())      # argparse's line breaks undone

    def listed(text, start, end) -> set:
        return set(re.findall(r"[\w.]+", text[text.index(start):text.index(end, text.index(start))]))

    text = help_of("explain")
    assert set(reg.methods) <= listed(text, "method (default: lrp.epsilon", "--target TARGET, -t")
    assert set(reg.engines) <= listed(text, "engine that runs the graph", "--layers [LAYERS")
    assert ("a class index (e.g. 3), 'predicted' (default: each sample's predicted class), or a .npy file of one "
            "class index per sample") in text
    assert "model file, of a format an installed plugin reads: " + ", ".join(reg.formats) in text
    assert set(reg.evaluators) <= listed(help_of("evaluate"), "evaluator:", "options:")


def test_plugins_lists_translators_and_formats(capsys):
    import attribx
    from attribx import plugins

    class Backend:
        @attribx.hookimpl
        def attribx_model_types(self):
            return {"mylib.Net": "mylib networks, traced by mylib"}

        @attribx.hookimpl
        def attribx_model_formats(self):
            return {".myl": "a mylib checkpoint", ".myz": "a zipped one"}

    name = plugins.register(Backend(), name="mylib-backend")
    try:
        assert plugins.registry().translators["mylib.Net"] == "mylib networks, traced by mylib"
        assert main(["plugins"]) == 0
        out = capsys.readouterr().out
    finally:
        plugins.unregister(name)
    block = out[out.index("mylib-backend  (registered at run time)"):]
    assert "    translators mylib.Net: mylib networks, traced by mylib\n" in block
    assert "    formats     .myl: a mylib checkpoint; .myz: a zipped one\n" in block
    assert "    formats     .npz: an attribx graph written by Graph.save\n" in out     # the built-in format
    with pytest.raises(attribx.UnsupportedError, match=r"the installed ones translate: [^;]*\); backends"):
        attribx.translate(object())


@pytest.mark.parametrize("command", ["explain", "evaluate"])
@pytest.mark.parametrize("where", ["under a file", "missing folder"])
def test_unwritable_output_is_refused_before_computing(files, monkeypatch, capsys, command, where):
    import attribx.api
    tmp, model, _, _ = files
    (tmp / "somefile.txt").write_text("a file, not a folder")
    out = tmp / "somefile.txt" / "out.h5" if where == "under a file" else tmp / "no" / "such" / "out.h5"
    calls = []
    monkeypatch.setattr(attribx.api, command, lambda *a, **k: calls.append(a))
    args = (["explain", str(model), str(tmp / "x.npy")] if command == "explain" else
            ["evaluate", "pixel_flipping", "--model", str(model), "--inputs", str(tmp / "x.npy")])
    assert main([*args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    why = (f"{tmp / 'somefile.txt'} is a file, not a folder" if where == "under a file" else
           f"the folder {tmp / 'no' / 'such'} does not exist")
    assert err == f"attribx: error: {out}: cannot write there: {why}\n"
    assert calls == []          # nothing was computed
    assert not (tmp / "no").exists() and (tmp / "somefile.txt").read_text() == "a file, not a folder"


@pytest.mark.parametrize("args, message", [
    (["-p", "epsilon=abc"], "method 'lrp.epsilon': parameter epsilon must be a finite number >= 0, got 'abc'"),
    (["-p", "epsilon=-1"], "parameter epsilon must be a finite number >= 0, got -1"),
    (["-p", "epsilon=NaN"], "parameter epsilon must be a finite number >= 0, got nan"),
    (["-m", "lrp.z_box", "-p", "low=[1,2"], "--param low=[1,2: not a valid JSON list or object"),
    (["-m", "lrp.z_box", "-p", "low=1", "-p", "high=-1"], "parameters must satisfy low <= high"),
    (["-m", "integrated_gradients", "-p", "steps=2.5"], "parameter steps must be an integer >= 1, got 2.5"),
    (["-m", "smoothgrad", "-p", "noise=-0.1"], "parameter noise must be a finite number >= 0"),
    (["--key", "images"], "--key 'images': "),
    (["--key", "images", "--stream"], "--key 'images': streaming reads one array"),
    (["--labels-key", "labels"], "--labels-key 'labels': "),
])
def test_bad_parameters_and_options_one_line(files, args, message):
    tmp, model, _, _ = files
    res = run_cli("explain", model, tmp / "x.npy", "-o", tmp / "o.h5", *args)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp / "o.h5").exists()


def test_unusable_input_and_target_files_one_line(files):
    tmp, model, x, _ = files
    np.save(tmp / "scalar.npy", np.float64(1.0))
    np.save(tmp / "empty.npy", np.zeros((0, 6)))
    np.savez(tmp / "objects.npz", x=np.array([1, "a", None], dtype=object))
    np.savez(tmp / "objlabels.npz", x=x, labels=np.array([1, "a", None, 2, 3], dtype=object))
    np.save(tmp / "objtarget.npy", np.array([0, "a", 1, 0, 1], dtype=object), allow_pickle=True)
    np.savez(tmp / "objtarget.npz", t=np.array([0, "a", 1, 0, 1], dtype=object))
    np.savez(tmp / "twotargets.npz", a=np.zeros(5, int), b=np.ones(5, int))
    for inputs, extra, message in (
            ("scalar.npy", [], "scalar.npy: holds a single number (a 0-d array)"),
            ("scalar.npy", ["--stream"], "scalar.npy: holds a single number (a 0-d array)"),
            ("empty.npy", ["--stream"], "empty.npy: input has no samples"),
            ("objects.npz", [], "objects.npz: array 'x' holds Python objects (dtype object)"),
            ("objlabels.npz", [], "objlabels.npz: labels 'labels' holds Python objects"),
            ("x.npy", ["-t", tmp / "objtarget.npy"], "objtarget.npy: holds Python objects (dtype object)"),
            ("x.npy", ["-t", tmp / "objtarget.npz"], "objtarget.npz: array 't' holds Python objects"),
            ("x.npy", ["-t", tmp / "twotargets.npz"], "holds ['a', 'b']; give a .npy file")):
        res = run_cli("explain", model, tmp / inputs, "-o", tmp / "o.h5", *extra)
        assert res.returncode == 2, (inputs, extra, res.stderr)
        assert res.stderr.count("\n") == 1 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not (tmp / "o.h5").exists()


def test_target_npz_with_one_array(files):
    tmp, model, x, _ = files
    np.savez(tmp / "t.npz", t=np.array([0, 1, 2, 0, 1]))
    np.save(tmp / "t.npy", np.array([0, 1, 2, 0, 1]))
    assert main(["explain", str(model), str(tmp / "x.npy"), "-t", str(tmp / "t.npz"), "-o", str(tmp / "a.h5")]) == 0
    assert main(["explain", str(model), str(tmp / "x.npy"), "-t", str(tmp / "t.npy"), "-o", str(tmp / "b.h5")]) == 0
    import attribx
    a, b = attribx.open_relevance(tmp / "a.h5"), attribx.open_relevance(tmp / "b.h5")
    np.testing.assert_array_equal(a.values, b.values)


@pytest.mark.parametrize("how", [["--append"], ["--resume"], ["--stream"], []])
def test_a_second_writer_of_one_output_is_refused(files, how):
    """Issue 17 point 10: while another attribx run writes the output, explain refuses with one line."""
    tmp, model, x, graph = files
    out = tmp / "rel.h5"
    assert main(["explain", str(model), str(tmp / "x.npy"), "-t", "1", "-o", str(out)]) == 0
    before = out.read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom attribx.safe_writes import acquire_lock\n"
                               "acquire_lock(sys.argv[1]); print('READY', flush=True); sys.stdin.readline()", str(out)],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "READY"
        res = run_cli("explain", model, tmp / "x.npy", "-t", "1", "-o", out, *how)
        assert res.returncode == 2, res.stderr
        assert f"is being written by another attribx run (pid {holder.pid})" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "delete" not in res.stderr
        assert out.read_bytes() == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert run_cli("explain", model, tmp / "x.npy", "-t", "1", "-o", out, "--append").returncode == 0
    assert sorted(p.name for p in tmp.iterdir() if p.name.startswith(".")) == []
