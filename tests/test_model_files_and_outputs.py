"""Damaged graph files and models with several outputs (issue 17 point 17)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx.errors import GraphError, InputError, ModelLoadError


def cnn(rng):
    b = GraphBuilder("cnn")
    x = b.input("x", (3, 8, 8), layout="NCHW")
    h = b.relu(b.conv(x, rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4), padding=1, name="conv1"))
    return b.build(b.linear(b.flatten(h), rng.normal(size=(5, 256)), name="fc"))


def two_heads(rng):
    b = GraphBuilder("two")
    x = b.input("x", (6,))
    h = b.relu(b.linear(x, rng.normal(size=(8, 6)).astype("f4"), rng.normal(size=8).astype("f4"), name="body"))
    a = b.linear(h, rng.normal(size=(3, 8)).astype("f4"), name="head_a")
    c = b.linear(h, rng.normal(size=(4, 8)).astype("f4"), name="head_b")
    return b.build(a, c)


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "attribx.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL, cwd=cwd)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_graph_is_called_a_damaged_graph(tmp_path, keep):
    path = tmp_path / "g.npz"
    cnn(np.random.default_rng(0)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match="damaged attribx graph") as err:
        attribx.load_model(str(path))
    assert "\n" not in str(err.value)
    res = cli("inspect", path)
    assert res.returncode == 2 and "damaged attribx graph" in res.stderr and "Traceback" not in res.stderr


def test_npz_that_is_no_graph_is_still_not_a_model(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ModelLoadError, match="not a model file"):
        attribx.load_model(str(path))


def test_two_outputs_name_the_one_to_explain(tmp_path):
    rng = np.random.default_rng(0)
    g = two_heads(rng)
    x = rng.normal(size=(4, 6)).astype("f4")
    with pytest.raises(GraphError, match=r"2 outputs \('head_a', 'head_b'\).*output="):
        attribx.explain(g, x)
    for name, k in (("head_a", 3), ("head_b", 4)):
        y = attribx.forward(g, x, output=name)
        assert y.shape == (4, k)
        r = attribx.explain(g, x, "lrp.epsilon", output=name, conservation=True)
        assert r.attrs["explained_output"] == name
        np.testing.assert_allclose(r.score.values, y[np.arange(4), y.argmax(1)], rtol=1e-5)
        one = g.with_nodes(g.nodes, outputs=[name])
        np.testing.assert_array_equal(r.relevance.values, attribx.explain(one, x, "lrp.epsilon").values)
    with pytest.raises(InputError, match="no node named 'head_c'.*'head_a', 'head_b'"):
        attribx.explain(g, x, output="head_c")
    path, xs = tmp_path / "two.npz", tmp_path / "x.npy"
    g.save(path)
    np.save(xs, x)
    res = cli("explain", path, xs, "-o", tmp_path / "r.h5")
    assert res.returncode == 2 and "--output-node" in res.stderr and "Traceback" not in res.stderr
    res = cli("explain", path, xs, "--output-node", "head_b", "-o", tmp_path / "r.h5")
    assert res.returncode == 0, res.stderr
    with attribx.open_relevance(tmp_path / "r.h5") as rel:
        assert rel.attrs["explained_output"] == "head_b"


def test_large_input_is_batched_automatically(monkeypatch):
    """Without batch_size, an input whose pass would not fit in memory is explained batch by batch, with the
    same numbers (issue 17 point 17)."""
    import attribx.batching as batching
    rng = np.random.default_rng(0)
    g = cnn(rng)
    x = rng.normal(size=(10, 3, 8, 8)).astype("f4")
    whole = attribx.explain(g, x, "lrp.epsilon")
    per = batching.per_sample_bytes(g, x)
    assert per >= 2 * 4 * (3 * 64 + 4 * 64 * 2 + 256 + 5)
    seen = []
    real = batching.batches
    monkeypatch.setattr(batching, "batches", lambda n, b: seen.append(b) or real(n, b))
    monkeypatch.setattr(batching, "memory_budget", lambda: 3 * per)
    batched = attribx.explain(g, x, "lrp.epsilon")
    assert seen == [3]
    np.testing.assert_allclose(batched.values, whole.values, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(batched.values, attribx.explain(g, x, "lrp.epsilon", batch_size=3).values)
    assert (batched.target.values == whole.target.values).all()
    monkeypatch.setattr(batching, "memory_budget", lambda: 100 * per)
    seen.clear()
    attribx.explain(g, x, "lrp.epsilon")
    assert seen == [None]
