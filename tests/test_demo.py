"""The README's main command, ``attribx demo``, on the numpy backend (the core environment: no torch).

The torch demo (digits CNN and sentiment BiLSTM) is tested in tests/backend_torch/test_demo_torch.py.
Each check reads the written files back independently: HDF5 through attribx.open_relevance, PNGs through
matplotlib's reader, the report's numbers against the stored results.
"""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

import attribx

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from attribx.demo import IMAGE_METHODS, PF_STEPS  # noqa: E402

NUMPY_FILES = ["digits-mlp.npz", "relevance_digits.h5", "heatmaps_digits.png", "eval_pixel_flipping.h5",
               "pixel_flipping.png", "eval_spray.h5", "spray.png", "report.html"]


def read_png(data: bytes) -> np.ndarray:
    import matplotlib.image
    return matplotlib.image.imread(io.BytesIO(data), format="png")


@pytest.fixture(scope="module")
def numpy_demo(tmp_path_factory):
    from attribx.cli import main
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", "--out", str(out), "--backend", "numpy", "--images", "120", "--no-progress"])
    assert rc == 0
    return out


def test_numpy_demo_writes_every_file(numpy_demo, capsys):
    out = numpy_demo
    for name in NUMPY_FILES:
        assert (out / name).stat().st_size > 1000, name
    assert not list(out.glob("*.partial*"))
    rel = attribx.open_relevance(str(out / "relevance_digits.h5"))
    assert list(rel.data_vars) == list(IMAGE_METHODS)
    assert rel["lrp.epsilon"].dims == ("sample", "channel", "height", "width")
    assert rel["lrp.epsilon"].shape == (120, 1, 8, 8)
    assert (rel.prediction.values == rel.label.values).mean() > 0.9      # the MLP learned the digits
    # the random baseline is seeded N(0, 1): reproducible and uncorrelated with LRP
    r = rel["random"].values.ravel()
    assert abs(r.mean()) < 0.1 and 0.9 < r.std() < 1.1
    assert abs(np.corrcoef(r, rel["lrp.epsilon"].values.ravel())[0, 1]) < 0.1
    # the graph reloads and its LRP-ε relevance is what explain gives again
    graph = attribx.load_model(str(out / "digits-mlp.npz"))
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    assert attribx.forward(graph, x).shape == (3, 10)
    for name in ("heatmaps_digits.png", "pixel_flipping.png", "spray.png"):
        img = read_png((out / name).read_bytes())
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 0.05, name


def test_numpy_demo_evaluations_are_stored_and_lrp_beats_random(numpy_demo):
    out = numpy_demo
    pf = attribx.open_relevance(str(out / "eval_pixel_flipping.h5"))
    assert list(pf["method"].values) == list(IMAGE_METHODS)
    assert pf["curve"].sizes["step"] == PF_STEPS + 1
    # AOPC is the mean drop of the stored curve (recomputed here from the curve itself)
    curve = pf["curve"].values                              # (method, sample, step)
    np.testing.assert_allclose(pf["aopc"].values, (curve[..., :1] - curve).mean(-1), rtol=1e-5, atol=1e-6)
    aopc = pf["aopc"].mean("sample").to_series()
    assert aopc["lrp.epsilon"] > aopc["random"] + 0.5
    sp = attribx.open_relevance(str(out / "eval_spray.h5"))
    assert sp["cluster"].sizes["sample"] == 120 and int(sp["cluster_size"].sum()) == 120
    assert sp.attrs["evaluator"] == "spray"


def test_numpy_demo_report_is_self_contained_and_shows_every_part(numpy_demo):
    page = (numpy_demo / "report.html").read_text(encoding="utf-8")
    for part in ("Models", "Heatmaps", "Pixel flipping", "SpRAy", "Files"):
        assert f">{part}</h2>" in page, part
    assert "backend <b>numpy</b>" in page and "text part skipped" in page
    # every picture embedded, nothing fetched from elsewhere
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert read_png(base64.b64decode(s.split(",", 1)[1])).shape[0] > 200
    assert "href=\"http" not in page and "<link" not in page and "<script" not in page
    # the AOPC table holds the stored numbers
    pf = attribx.open_relevance(str(numpy_demo / "eval_pixel_flipping.h5"))
    for m in IMAGE_METHODS:
        value = float(pf["aopc"].sel({"method": m}).mean())
        assert f"<td>{m}</td><td>{value:.4f}</td>" in page, m
    for name in NUMPY_FILES[:-1]:
        assert f"<td>{name}</td>" in page


def test_a_failure_midway_leaves_finished_files_and_a_report(tmp_path, monkeypatch):
    import attribx.evaluators.spray as spray_module
    from attribx import demo

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")
    monkeypatch.setattr(spray_module, "plot_spray", broken)
    with pytest.raises(RuntimeError, match="planted failure"):
        demo.run_demo(str(tmp_path), backend="numpy", n_images=40, progress_bar=False)
    # what finished before the failure is complete and readable
    pf = attribx.open_relevance(str(tmp_path / "eval_pixel_flipping.h5"))
    assert pf["aopc"].shape == (len(IMAGE_METHODS), 40)
    assert attribx.open_relevance(str(tmp_path / "relevance_digits.h5"))["lrp.epsilon"].shape == (40, 1, 8, 8)
    assert (tmp_path / "eval_spray.h5").exists() and not (tmp_path / "spray.png").exists()
    assert not list(tmp_path.glob("*.partial*"))
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "The demo stopped early" in page and "planted failure" in page and ">Pixel flipping</h2>" in page


def test_unknown_backend_is_a_clear_error(tmp_path):
    from attribx.demo import run_demo
    with pytest.raises(attribx.AttribxError, match="backend must be"):
        run_demo(str(tmp_path), backend="jax")
