"""``attribx benchmark``'s default run (Samek et al. 2017 on the digits CNN) and a text model, with torch."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from attribx import benchmark as B  # noqa: E402


@pytest.mark.slow
def test_default_run_ranks_lrp_above_random(tmp_path, capsys):
    assert B.default_models() == ["digits-cnn"]
    ds = B.main(str(tmp_path), evaluators=["pixel_flipping"], n=64)
    assert list(ds["model"].values) == ["digits-cnn"]
    assert list(ds["method"].values) == list(B.DEFAULT_METHODS)
    a, sem = ds["aopc"].sel(model="digits-cnn"), ds["aopc_sem"].sel(model="digits-cnn")
    get = lambda v, m: float(v.sel({"method": m}))  # noqa: E731
    # measured (64 held-out digits): lrp.epsilon 33.1 +- 1.4, random 15.3 +- 0.9: a margin of ~11 SEM
    for lrp in ("lrp.epsilon", "lrp.epsilon_gamma_box", "lrp.epsilon_plus_flat"):
        margin = get(a, lrp) - get(a, "random")
        assert margin > 5 * np.hypot(get(sem, lrp), get(sem, "random")), (lrp, margin)
    assert get(a, "sensitivity") > get(a, "random")            # Samek et al.: LRP > sensitivity > random
    assert B.ranking(ds)[0].startswith("lrp.")
    assert max(get(a, m) for m in ("lrp.epsilon", "lrp.epsilon_gamma_box")) > get(a, "sensitivity")
    out = capsys.readouterr().out
    assert "digits-cnn: ranking by AOPC: " + " > ".join(B.ranking(ds)) in out
    assert (tmp_path / "benchmark.h5").exists() and (tmp_path / "benchmark.html").exists()


def test_text_model_by_word_deletion():
    ds = B.run_benchmark(["lrp.epsilon", "gradient_x_input", "random"], ["sentiment-lstm"], ["word_deletion"],
                         n=100, progress_bar=False)
    acc = ds["deletion_accuracy"].sel(model="sentiment-lstm")
    assert ds.attrs["model_kind"] == ["text"] and "aopc" not in ds
    # measured: LRP-eps 0.37 vs random 0.61 mean accuracy over 1..K deletions (lower is better)
    assert float(acc.sel({"method": "lrp.epsilon"})) < float(acc.sel({"method": "random"})) - 0.1
    assert B.ranking(ds, "sentiment-lstm") == ["lrp.epsilon", "random"]
    # gradient x input is meaningless on token ids: recorded, not fatal
    assert "MethodError" in str(ds["error"].sel({"model": "sentiment-lstm", "method": "gradient_x_input"}).values)
    assert ds["deletion_curve"].sel({"model": "sentiment-lstm", "method": "lrp.epsilon"}).values[0] == 1.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from Linux's /proc")
def test_memory_runtime_and_conservation_on_the_torch_engine():
    # The digits CNN's activations for 512 8x8 digits: conv1 and its ReLU 512*8*64 floats (1 MiB each), conv2 and
    # its ReLU 512*16*64 (2 MiB each), the pool 0.5 MiB: several MiB, which an explanation has to hold (at least
    # the largest, conv2's output). Trained in this process first, as the benchmark's own model is: the freed
    # training memory stays in glibc's heap, where a naive resident-memory reading saw the explanation as 0.00 MiB.
    import torch
    from attribx.datasets.digits import build_digits_cnn
    model = build_digits_cnn(seed=0)
    xb = torch.randn(1200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        model(xb).square().sum().backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    x = np.random.default_rng(2).uniform(-1, 1, size=(512, 1, 8, 8)).astype(np.float32)
    methods = ["gradient", "deconvnet", "lrp.epsilon"]
    ds = B.run_benchmark(methods, [B.Case("cnn", model, x)], ["runtime", "memory", "conservation"], n=None,
                         progress_bar=False, repeats=3)
    cell = ds.sel(model="cnn")
    assert (cell["error"].values == "").all()
    conv2 = 512 * 16 * 8 * 8 * 4
    activations = 2 * (512 * 8 * 64 * 4) + 2 * conv2 + conv2 // 4 + x.nbytes
    rss = cell["peak_rss"].values
    assert (rss >= conv2).all() and (rss <= 10 * activations).all(), rss / 2 ** 20
    # torch's CPU allocator reports no peak: no allocated-memory figure rather than a wrong one
    assert "peak_allocated" not in ds or np.isnan(cell["peak_allocated"].values).all()
    # runtime: the median of the 3 stored runs
    runs = cell["seconds_per_sample_runs"].values
    assert runs.shape == (3, 3) and (runs > 0).all()
    np.testing.assert_array_equal(cell["seconds_per_sample"].values, np.median(runs, axis=1))
    # conservation: a number for LRP, none for the gradient family
    cons = cell["conservation_error"]
    assert np.isnan(cons.sel({"method": ["gradient", "deconvnet"]}).values).all()
    assert np.isfinite(float(cons.sel({"method": "lrp.epsilon"})))
    header, *rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in B.markdown_table(ds).splitlines()
                     if ln.startswith("|") and not ln.startswith("|---")]
    shown = {r[0]: r[header.index("conservation error")] for r in rows}
    assert shown["gradient"] == shown["deconvnet"] == B.NOT_CONSERVING
    assert float(shown["lrp.epsilon"]) == pytest.approx(float(cons.sel({"method": "lrp.epsilon"})), rel=1e-2)
    assert "peak allocated (MiB)" not in header and float(rows[0][header.index("peak RSS rise (MiB)")]) > 1.9
