"""``attribx benchmark`` on a tiny numpy model: the Dataset's layout, its numbers against direct evaluator
calls and closed forms, the tables against the Dataset, the ranking by AOPC, failures kept, the CLI."""
from __future__ import annotations

import re
import sys
import textwrap
import time

import numpy as np
import pytest

import attribx
from attribx import benchmark as B
from attribx.builder import GraphBuilder
from attribx.cli import main


def tiny_graph(seed=0, bias=False):
    """(1, 4, 4) image -> linear 8 -> ReLU -> linear 3; bias-free unless asked (then ReLU nets are
    positively homogeneous and gradient x input sums exactly to the logit)."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("tiny-image")
    h = b.flatten(b.input("image", (1, 4, 4), layout="NCHW"))
    h = b.relu(b.linear(h, rng.normal(size=(8, 16)).astype(np.float32),
                        rng.normal(size=8).astype(np.float32) if bias else None, name="fc1"), name="relu1")
    b.linear(h, rng.normal(size=(3, 8)).astype(np.float32), None, name="fc2")
    return b.build()


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(12, 1, 4, 4)).astype(np.float32)
    return B.Case("tiny", tiny_graph(), x, np.arange(12) % 3, description="hand-built bias-free MLP")


@pytest.fixture(scope="module")
def ds(case):
    return B.run_benchmark(["gradient_x_input", "lrp.zero", "random"], [case], n=None, progress_bar=False,
                           repeats=3)


def test_dataset_dims_and_variables(ds):
    assert ds.sizes["model"] == 1 and ds.sizes["method"] == 3
    assert list(ds["method"].values) == ["gradient_x_input", "lrp.zero", "random"]
    for var in ("aopc", "aopc_sem", "seconds_per_sample", "peak_allocated", "peak_rss", "conservation_error",
                "rank", "error"):
        assert ds[var].dims == ("model", "method"), var
    assert ds["curve"].dims == ("model", "method", "step")
    assert ds["seconds_per_sample_runs"].dims == ("model", "method", "repeat")
    assert ds.sizes["repeat"] == 3 and ds.attrs["repeats"] == 3
    assert list(ds["family"].values) == ["gradient", "lrp", "random"]
    assert ds.sizes["step"] == 17                     # 16 pixels: k = 0..16
    assert "deletion_accuracy" not in ds              # an image model: no word deletion
    assert ds.attrs["model_kind"] == ["image"] and ds.attrs["samples"] == [12]
    assert (ds["error"].values == "").all()
    real = ds.sel({"method": ["gradient_x_input", "lrp.zero"]})
    assert (real["seconds_per_sample"] > 0).all() and (real["peak_allocated"] > 0).all()
    # the random heatmap is not an explain() call: no runtime, memory or conservation
    for var in ("seconds_per_sample", "seconds_per_sample_runs", "peak_allocated", "peak_rss", "conservation_error"):
        assert np.isnan(ds[var].sel({"method": "random"})).all(), var


def test_runtime_is_the_median_of_the_timed_runs(case, monkeypatch):
    # every timed explain() call is stored: make the three timed calls (after the warm-up) take known extra
    # times; the stored runs follow them, in order, and seconds_per_sample is their median
    real, calls = attribx.api.explain, []
    extra = [0.12, 0.0, 0.06]                       # seconds added to timed calls 1, 2, 3

    def slow(*args, **kw):
        calls.append(kw.get("conservation", False))
        if 2 <= len(calls) <= 4:
            time.sleep(extra[len(calls) - 2])
        return real(*args, **kw)

    monkeypatch.setattr(attribx.api, "explain", slow)
    ds = B.run_benchmark(["lrp.zero"], [case], ["runtime"], n=None, progress_bar=False, repeats=3)
    assert len(calls) == 1 + 3                       # the warm-up and three timed calls, nothing else
    runs = ds["seconds_per_sample_runs"].sel({"model": "tiny", "method": "lrp.zero"}).values * len(case.inputs)
    assert runs.shape == (3,)
    np.testing.assert_array_less(extra, runs)       # each run took at least its extra time ...
    assert runs[1] < runs[2] < runs[0]               # ... in the order of the calls
    median = float(ds["seconds_per_sample"].sel({"model": "tiny", "method": "lrp.zero"}))
    assert median == np.median(ds["seconds_per_sample_runs"].values[0, 0]) and median * len(case.inputs) == runs[2]
    with pytest.raises(attribx.errors.InputError, match="repeats"):
        B.run_benchmark(["lrp.zero"], [case], ["runtime"], n=None, progress_bar=False, repeats=0)


def test_aopc_equals_the_evaluator_and_its_curve(ds, case):
    rel = attribx.explain(case.model, case.inputs, "gradient_x_input", labels=case.labels)
    res = attribx.evaluate("pixel_flipping", case.model, case.inputs, rel, relative_to_random=False, seed=0)
    got = ds.sel({"model": "tiny", "method": "gradient_x_input"})
    np.testing.assert_allclose(float(got["aopc"]), float(res["aopc"].mean()), rtol=1e-12)
    np.testing.assert_allclose(float(got["aopc_sem"]), float(res["aopc"].std(ddof=1) / np.sqrt(12)), rtol=1e-12)
    # AOPC is linear in the curve: mean over samples of 1/(L+1) sum_k (f0 - fk) from the mean curve
    c = ds["curve"].values[0]
    np.testing.assert_allclose(ds["aopc"].values[0], (c[:, :1] - c).mean(axis=1), rtol=1e-10)


def test_conservation_error_against_hand_computed(ds, case):
    # bias-free ReLU net: LRP-0 conserves the logit exactly
    err = ds["conservation_error"].sel(model="tiny")
    assert float(err.sel({"method": "lrp.zero"})) < 1e-5
    # gradient methods do not conserve relevance: no number, although gradient x input on this bias-free
    # net would even sum to the logit (Euler)
    assert np.isnan(float(err.sel({"method": "gradient_x_input"})))


def test_conservation_error_with_biases_and_none_for_gradient_methods():
    # fc1 has biases, fc2 none: LRP-0 gives the hidden units R_j = h_j w2_cj (summing to the logit f_c), and
    # the input sum_j R_j (z_j - b_j) / z_j over the active units, so the bias leak is sum_{j active} b_j w2_cj
    g = tiny_graph(seed=4, bias=True)
    x = np.random.default_rng(5).uniform(-1, 1, size=(10, 1, 4, 4)).astype(np.float32)
    methods = ["lrp.zero", "gradient", "sensitivity", "deconvnet", "integrated_gradients", "smoothgrad:samples=2"]
    got = B.run_benchmark(methods, [B.Case("biased", g, x)], ["conservation"], n=None, progress_bar=False)
    assert (got["error"].values == "").all()          # smoothgrad and IG refuse conservation=True: not asked
    w1, b1, w2 = (np.asarray(v, np.float64) for v in (g["fc1"].params["weight"], g["fc1"].params["bias"],
                                                        g["fc2"].params["weight"]))
    z = x.reshape(10, 16).astype(np.float64) @ w1.T + b1
    f = np.maximum(z, 0) @ w2.T
    c = f.argmax(1)
    leak = ((z > 0) * b1 * w2[c]).sum(1)
    want = np.mean(np.abs(leak) / np.abs(f[np.arange(10), c]))
    assert want > 1e-3                                  # the biases do leak
    err = got["conservation_error"].sel(model="biased")
    np.testing.assert_allclose(float(err.sel({"method": "lrp.zero"})), want, rtol=1e-4)
    assert list(got["family"].values) == ["lrp"] + ["gradient"] * 5
    assert np.isnan(err.sel({"method": methods[1:]}).values).all()
    header, rows = _md_rows(B.markdown_table(got))
    col = header.index("conservation error")
    shown = {r[0]: r[col] for r in rows}
    assert float(shown.pop("lrp.zero")) == pytest.approx(want, rel=1e-2)
    assert shown == {m: B.NOT_CONSERVING for m in methods[1:]}
    assert "gradient methods do not conserve relevance" in B.markdown_table(got)


def conv_graph(channels=32, seed=0):
    """(1, 32, 32) image -> conv 3x3 to ``channels`` (padding 1) -> ReLU -> global average -> linear 10: the
    conv's and the ReLU's outputs, ``channels`` x 32 x 32 floats per sample, dominate the memory."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("conv-memory")
    h = b.input("image", (1, 32, 32), layout="NCHW")
    h = b.conv(h, rng.normal(size=(channels, 1, 3, 3)).astype(np.float32), rng.normal(size=channels).astype(np.float32),
               padding=1, name="conv")
    h = b.flatten(b.global_avg_pool(b.relu(h, name="relu"), name="pool"))
    b.linear(h, rng.normal(size=(10, channels)).astype(np.float32), None, name="fc")
    return b.build()


def test_memory_is_that_of_the_activations():
    # 64 samples: the conv output alone is 64 * 32 * 32 * 32 float32 = 8 MiB, and an explanation must hold it
    # (the ReLU's output, of the same size, too); everything the pass keeps or computes, with the input
    # (0.25 MiB) and the parameters (~1 KiB), is a few such arrays, not 0.1 MiB and not hundreds of MiB
    g = conv_graph()
    x = np.random.default_rng(2).uniform(-1, 1, size=(128, 1, 32, 32)).astype(np.float32)
    act = 64 * 32 * 32 * 32 * 4
    total = 2 * act + x[:64].nbytes
    got = {}
    for n in (64, 128):
        ds = B.run_benchmark(["gradient", "lrp.epsilon"], [B.Case("conv", g, x[:n])], ["memory"], n=None,
                             progress_bar=False)
        assert attribx.api.get_engine(None, g).name == "numpy"
        got[n] = ds.sel(model="conv")
        alloc = got[n]["peak_allocated"].values
        assert (alloc >= n / 64 * act).all() and (alloc <= 8 * n / 64 * total).all(), (n, alloc / 2 ** 20)
        if sys.platform.startswith("linux"):
            rss = got[n]["peak_rss"].values
            assert (rss >= 0.9 * n / 64 * act).all() and (rss <= 8 * n / 64 * total).all(), (n, rss / 2 ** 20)
    # twice the samples, twice the memory: it is the explanation's data that is measured
    ratio = got[128]["peak_allocated"].values / got[64]["peak_allocated"].values
    assert ((ratio > 1.8) & (ratio < 2.2)).all(), ratio


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_peak_rss_sees_allocations_and_falls_back_to_sampling(monkeypatch, tmp_path):
    for how in ("VmHWM", "sampled", "not reset"):
        if how == "sampled":                          # where the kernel refuses the reset: sampled every ms
            monkeypatch.setattr(B, "_CLEAR_REFS", "/nonexistent/clear_refs")
        elif how == "not reset":                      # the write is taken, the mark stays (here: a plain file)
            monkeypatch.setattr(B, "_CLEAR_REFS", str(tmp_path / "clear_refs"))
            a = np.ones(64 * 2 ** 20 // 8)           # a high-water mark well above what stays resident
            del a
            how = "sampled"
        with B.PeakRSS() as small:
            pass
        with B.PeakRSS() as big:
            a = np.ones(64 * 2 ** 20 // 8)           # 64 MiB, touched
            time.sleep(0.05)
            del a
        assert small.how == big.how == how
        assert 0 <= small.peak < 4 * 2 ** 20
        assert 60 * 2 ** 20 <= big.peak <= 80 * 2 ** 20, big.peak / 2 ** 20


def test_ranking_is_by_aopc(ds):
    aopc = ds["aopc"].values[0]
    expected = [str(m) for m in ds["method"].values[np.argsort(-aopc)]]
    assert B.ranking(ds) == expected
    assert sorted(ds["rank"].values[0]) == [1, 2, 3]
    assert ds["rank"].values[0][np.argmax(aopc)] == 1


def _md_rows(md):
    lines = [ln for ln in md.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return header, [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[1:]]


def test_markdown_and_html_tables_match_the_dataset(ds, tmp_path):
    header, rows = _md_rows(B.markdown_table(ds))
    assert [r[0] for r in rows] == B.ranking(ds)         # rows in rank order
    col = {h: i for i, h in enumerate(header)}
    for r in rows:
        cell = ds.sel({"model": "tiny", "method": r[0]})
        assert float(r[col["AOPC ↑"]]) == pytest.approx(float(cell["aopc"]), abs=5e-4 + 1e-9)
        assert int(r[col["rank"]]) == int(cell["rank"])
        if r[0] != "random":
            assert float(r[col["ms / sample (median)"]]) == pytest.approx(1e3 * float(cell["seconds_per_sample"]),
                                                                         abs=5e-4 + 1e-9)
            for var, head in (("peak_allocated", "peak allocated (MiB)"), ("peak_rss", "peak RSS rise (MiB)")):
                if np.isfinite(float(cell[var])):
                    # two decimals: off by at most half a unit of the last (a tie such as 0.125 MiB = 32 pages
                    # prints 0.12), plus rounding of the float itself
                    assert float(r[col[head]]) == pytest.approx(float(cell[var]) / 2 ** 20, abs=5e-3 + 1e-9)
        if r[0] == "lrp.zero":
            assert float(r[col["conservation error"]]) == pytest.approx(float(cell["conservation_error"]), rel=1e-2,
                                                                      abs=1e-300)
        else:                                           # gradient x input does not conserve; random: no explain()
            assert r[col["conservation error"]] == {"random": "–", "gradient_x_input": B.NOT_CONSERVING}[r[0]]
    paths = B.write_reports(ds, str(tmp_path))
    with open(paths["html"]) as f:
        page = f.read()
    for r in rows:
        assert f"<td>{r[0]}</td>" in page and f"<td>{r[col['AOPC ↑']]}</td>" in page
    assert "data:image/png;base64," in page
    with open(paths["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_failures_are_recorded_and_finished_cells_kept(case, tmp_path, monkeypatch):
    out = tmp_path / "b.h5"
    ds = B.run_benchmark(["gradient", "no_such_method", "random"], [case], ["pixel_flipping"], n=None,
                         output=str(out), progress_bar=False)
    err = ds["error"].sel(model="tiny")
    assert "no_such_method" in str(err.sel({"method": "no_such_method"}).values)
    assert err.sel({"method": "gradient"}) == ""
    assert np.isnan(float(ds["aopc"].sel({"model": "tiny", "method": "no_such_method"})))
    assert int(ds["rank"].sel({"model": "tiny", "method": "no_such_method"})) == 0
    assert B.ranking(ds) == [m for m in B.ranking(ds) if m != "no_such_method"]
    saved = attribx.open_relevance(str(out))
    np.testing.assert_array_equal(saved["aopc"].values, ds["aopc"].values)
    assert list(saved["error"].values[0]) == list(ds["error"].values[0])

    # a crash (not an attribx error) in the second cell: the first cell is on disk, the error propagates
    real = B._cell
    calls = []

    def crashing(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kw)

    monkeypatch.setattr(B, "_cell", crashing)
    crash = tmp_path / "crash.h5"
    with pytest.raises(RuntimeError, match="boom"):
        B.run_benchmark(["gradient", "gradient_x_input", "random"], [case], ["pixel_flipping"], n=None,
                        output=str(crash), progress_bar=False)
    kept = attribx.open_relevance(str(crash))
    assert np.isfinite(float(kept["aopc"].sel({"model": "tiny", "method": "gradient"})))
    assert np.isnan(kept["aopc"].sel({"model": "tiny", "method": ["gradient_x_input", "random"]}).values).all()


def test_hdf5_round_trip(ds, tmp_path):
    attribx.save(ds, tmp_path / "b.h5")
    back = attribx.open_relevance(str(tmp_path / "b.h5"))
    for var in ds.data_vars:
        np.testing.assert_array_equal(back[var].values, ds[var].values)
    assert back.attrs["model_kind"] == ds.attrs["model_kind"]


def test_method_parameters_and_box_bounds(case):
    assert B.parse_method("lrp.epsilon:epsilon=0.5") == ("lrp.epsilon:epsilon=0.5", "lrp.epsilon", {"epsilon": 0.5})
    p = B._method_params("lrp.z_box", {}, case.inputs)
    assert p == {"low": float(case.inputs.min()), "high": float(case.inputs.max())}
    assert B._method_params("lrp.z_box", {"low": -3.0}, case.inputs)["low"] == -3.0
    with pytest.raises(attribx.errors.InputError):
        B.parse_method("lrp.epsilon:epsilon")


def test_cli_with_an_import_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "bench_provider.py").write_text(textwrap.dedent("""
        import numpy as np
        from test_benchmark_command import tiny_graph

        def make():
            x = np.random.default_rng(3).uniform(-1, 1, size=(6, 1, 4, 4)).astype(np.float32)
            return {"name": "provided", "model": tiny_graph(), "inputs": x, "labels": np.zeros(6, int)}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    assert main(["benchmark", "--models", "bench_provider:make", "--methods", "gradient_x_input", "random",
                 "--evaluators", "pixel_flipping", "-n", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    ds = attribx.open_relevance(str(out / "benchmark.h5"))
    assert ds.attrs["samples"] == [4] and list(ds["model"].values) == ["provided"]
    line = re.search(r"provided: ranking by AOPC: (.*?)  \(", text).group(1)
    assert line.split(" > ") == B.ranking(ds, "provided")
    for suffix in ("md", "html", "png"):
        assert (out / f"benchmark.{suffix}").stat().st_size > 0
    assert main(["benchmark", "--models", "no_such_module:make", "--out", str(out)]) == 2
    assert "cannot import" in capsys.readouterr().err
    # --repeats: that many timed runs stored, their median reported
    assert main(["benchmark", "--models", "bench_provider:make", "--methods", "gradient", "--evaluators", "runtime",
                 "--repeats", "2", "--out", str(out)]) == 0
    ds = attribx.open_relevance(str(out / "benchmark.h5"))
    assert ds.attrs["repeats"] == 2 and ds.sizes["repeat"] == 2
    assert float(ds["seconds_per_sample"][0, 0]) == np.median(ds["seconds_per_sample_runs"].values[0, 0])
    assert main(["benchmark", "--models", "bench_provider:make", "--repeats", "0", "--out", str(out)]) == 2
    assert "repeats must be a positive integer" in capsys.readouterr().err


def test_model_file_needs_inputs(case, tmp_path, capsys):
    path = tmp_path / "tiny.npz"
    case.model.save(path)
    with pytest.raises(attribx.errors.InputError, match="needs inputs"):
        B.resolve_model(str(path))
    np.save(tmp_path / "x.npy", case.inputs)
    got = B.resolve_model(f"{path}@{tmp_path / 'x.npy'}", n=5)
    assert got.name == "tiny.npz" and got.inputs.shape == (5, 1, 4, 4)
