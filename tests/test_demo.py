"""The README's main command: the demo trains, explains, saves and draws (needs the demo extra)."""
from __future__ import annotations

import numpy as np
import pytest

import attribx

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def test_demo_writes_relevance_and_heatmaps(tmp_path, capsys):
    from attribx.demo import DEMO_METHODS, run_demo
    result = run_demo(str(tmp_path))
    assert result["accuracy"] > 0.9
    ds = attribx.open_relevance(result["relevance"])
    assert list(ds.data_vars) == list(DEMO_METHODS)
    assert ds["lrp.epsilon"].dims == ("sample", "channel", "height", "width")
    # the labels are the true digits and the model mostly predicts them
    assert (ds.prediction.values == ds.label.values).mean() > 0.9
    # LRP relevance decomposes the logit up to what the biases absorb: strongly correlated with it
    graph = attribx.load_model(result["graph"])
    x = np.zeros((1, 1, 8, 8), np.float32)
    assert attribx.forward(graph, x).shape == (1, 10)
    png = tmp_path / "heatmaps.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "relevance (HDF5)" in capsys.readouterr().out
