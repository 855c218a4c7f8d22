"""``attribx benchmark``'s default run (Samek et al. 2017 on the digits CNN) and a text model, with torch."""
from __future__ import annotations

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
