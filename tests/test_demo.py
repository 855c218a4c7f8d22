"""The README's main command, ``attribx demo``, on the numpy backend (the core environment: no torch).

The torch demo (digits CNN and sentiment BiLSTM) is tested in tests/backend_torch/test_demo_torch.py.
Each check reads the written files back independently: HDF5 through attribx.open_relevance, PNGs through
matplotlib's reader, the report's numbers against the stored results.
"""
from __future__ import annotations

import base64
import io
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

import attribx

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from attribx.demo import NUMPY_IMAGE_METHODS, PF_STEPS, SPRAY_METHOD, TORCH_INSTALL  # noqa: E402

NUMPY_FILES = ["digits-mlp.npz", "relevance_digits.h5", "heatmaps_digits.png", "eval_pixel_flipping.h5",
               "pixel_flipping.png", "eval_spray.h5", "spray.png", "report.html"]


def read_png(data: bytes) -> np.ndarray:
    import matplotlib.image
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.partial*"))
    rel = attribx.open_relevance(str(out / "relevance_digits.h5"))
    assert list(rel.data_vars) == list(NUMPY_IMAGE_METHODS)
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
    # files get the mode the umask gives, like any tool's (not a temporary file's 0600)
    for name in NUMPY_FILES:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~current_umask(), name


def test_numpy_demo_heatmaps_differ_within_and_between_digits_and_spray_gets_distinct_ones(numpy_demo):
    rel = attribx.open_relevance(str(numpy_demo / "relevance_digits.h5"))
    for m in NUMPY_IMAGE_METHODS:
        v = rel[m].values.reshape(120, -1)
        # not one colour per heatmap (a flat first layer on an MLP splits the relevance equally over all pixels)
        assert (v.std(axis=1) > 1e-3 * np.abs(v).max(axis=1)).all(), m
        # and not the same heatmap for every digit
        unit = v / np.linalg.norm(v, axis=1, keepdims=True)
        assert len(np.unique(unit.round(4), axis=0)) == 120, m
        assert np.abs(unit - unit.mean(0)).max() > 0.1, m
    # where the digits have no ink (pixel 0) LRP-z+, LRP-ε and gradient×input give no relevance, z-box does
    from attribx.demo import SEED, digits_graph
    x = digits_graph(seed=SEED)[1][:120]
    blank = x == 0
    assert blank.mean() > 0.3
    for m in ("lrp.z_plus", "lrp.epsilon", "gradient_x_input", "lrp.alpha_beta", "integrated_gradients"):
        assert not rel[m].values[blank].any(), m
    assert (rel["lrp.epsilon_gamma_box_mlp"].values[blank] != 0).mean() > 0.5
    sp = attribx.open_relevance(str(numpy_demo / "eval_spray.h5"))
    assert sp.attrs["relevance_method"] == SPRAY_METHOD["numpy"] == "lrp.z_plus"
    heat = rel[SPRAY_METHOD["numpy"]].values.reshape(120, -1)
    assert len(np.unique(heat, axis=0)) == 120                          # SpRAy's input: no two alike
    assert sp.attrs["n_clusters"] >= 5 and int((sp["cluster_size"] > 0).sum()) >= 5
    # the prototypes differ: each cluster's mean heatmap is its own
    proto = sp["prototype"].values.reshape(sp.sizes["cluster"], -1)
    assert np.abs(proto[:, None] - proto[None]).max(-1)[~np.eye(len(proto), dtype=bool)].min() > 1e-3


def test_numpy_demo_evaluations_are_stored_and_lrp_beats_random(numpy_demo):
    out = numpy_demo
    pf = attribx.open_relevance(str(out / "eval_pixel_flipping.h5"))
    assert list(pf["method"].values) == list(NUMPY_IMAGE_METHODS)
    assert pf["curve"].sizes["step"] == PF_STEPS + 1
    # AOPC is the mean drop of the stored curve (recomputed here from the curve itself)
    curve = pf["curve"].values                              # (method, sample, step)
    np.testing.assert_allclose(pf["aopc"].values, (curve[..., :1] - curve).mean(-1), rtol=1e-5, atol=1e-6)
    aopc = pf["aopc"].mean("sample").to_series()
    assert aopc["lrp.epsilon"] > aopc["random"] + 0.5
    assert aopc["lrp.epsilon_gamma_box_mlp"] > aopc["random"] + 5                # measured 14.8 vs 4.0
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
    for m in NUMPY_IMAGE_METHODS:
        value = float(pf["aopc"].sel({"method": m}).mean())
        assert f"<td>{m}</td><td class=\"num\">{value:.4f}</td>" in page, m
    # every file the demo wrote is listed, as a link relative to the report
    for name in NUMPY_FILES[:-1]:
        assert f'<td><a href="{name}">{name}</a></td>' in page, name


def test_numpy_demo_report_says_what_it_ran(numpy_demo):
    page = (numpy_demo / "report.html").read_text(encoding="utf-8")
    models = page.split(">Models</h2>", 1)[1].split("<h2", 1)[0]
    # one model trained, one model listed, and the text says one
    assert "One small model is trained" in models and "Two small models" not in page
    assert models.count("<tr>") == 2 and "digits MLP" in models and "BiLSTM (torch" not in models
    # the install hint is one that installs the torch plugin (a package of the repository, not an extra)
    assert TORCH_INSTALL in page and "attribx[torch]" not in page
    assert TORCH_INSTALL == "python3 -m pip install -e plugins/attribx-torch torch"
    assert (Path(__file__).parents[1] / "plugins" / "attribx-torch" / "pyproject.toml").exists()
    # the methods drawn are the ones that mean something on an MLP (no flat first layer)
    assert "lrp.epsilon_plus_flat</td>" not in page and "lrp.epsilon_gamma_box_mlp" in page
    assert "deconvnet</td>" not in page and "guided_backprop</td>" not in page    # one heatmap per class
    # why LRP-ε and gradient×input coincide is said, and no claim the pictures do not show
    assert "LRP-ε equals gradient × input" in page and "stroke-shaped" not in page
    assert "SpRAy of the lrp.z_plus heatmaps" in page and "(here 1)" not in page


def test_pixel_flipping_curves_that_coincide_are_both_drawn():
    import xarray as xr

    from attribx.demo import _distinguish
    from attribx.evaluators import plot_curves
    curve = xr.Dataset({"curve": (("sample", "step"), np.tile(np.linspace(1, 0, 5), (6, 1))),
                        "aopc": ("sample", np.full(6, 0.5))}, coords={"fraction": ("step", np.linspace(0, 0.5, 5))})
    fig = plot_curves({"gradient_x_input": curve, "lrp.epsilon": curve, "gradient": curve}, random=False)
    _distinguish(fig, under="gradient_x_input", over="lrp.epsilon")
    lines = {ln.get_label().split(" ")[0]: ln for ln in fig.axes[0].get_lines()}
    under, over, other = lines["gradient_x_input"], lines["lrp.epsilon"], lines["gradient"]
    assert over.get_linestyle() == "--" and over.get_marker() == "o" and under.get_linestyle() == "-"
    assert under.get_linewidth() >= 3 * over.get_linewidth() and over.get_zorder() > under.get_zorder()
    assert other.get_linestyle() == "-" and other.get_marker() in ("None", None, "")
    legend = {t.get_text().split(" ")[0]: h for t, h in zip(fig.axes[0].get_legend().get_texts(),
                                                             fig.axes[0].get_legend().legend_handles)}
    assert legend["lrp.epsilon"].get_linestyle() == "--" and legend["gradient_x_input"].get_linewidth() >= 3


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
    assert pf["aopc"].shape == (len(NUMPY_IMAGE_METHODS), 40)
    assert attribx.open_relevance(str(tmp_path / "relevance_digits.h5"))["lrp.epsilon"].shape == (40, 1, 8, 8)
    assert (tmp_path / "eval_spray.h5").exists() and not (tmp_path / "spray.png").exists()
    assert not list(tmp_path.glob(".*.tmp"))                            # no temporary file left
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "The demo stopped early" in page and "planted failure" in page and ">Pixel flipping</h2>" in page


def test_unknown_backend_is_a_clear_error(tmp_path):
    from attribx.demo import run_demo
    with pytest.raises(attribx.AttribxError, match="backend must be"):
        run_demo(str(tmp_path), backend="jax")
