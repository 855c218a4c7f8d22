"""Pixel flipping and region perturbation on models whose curves are known in closed form (numpy only).

A linear model f(x) = Σ w·x + b changes by exactly Σ_{perturbed} w·(x − replacement) when pixels are
replaced, so every curve point is derived here with plain loops over the regions, independently of the
vectorised implementation. The Quantus convention's exact behaviour (running baselines, edge padding)
is hand-derived on 2 × 2 and 3 × 3 images; tests/evaluation/test_eval_quantus.py compares it with
Quantus 0.6.0 itself.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import xarray as xr

import attribx
from attribx import GraphBuilder, InputError, MethodError
from attribx.cli import main as cli_main

C, H, W = 2, 7, 7        # 7 × 7 with patch 3: regions of 3×3, 3×1, 1×3 and 1×1
B0 = 0.75


def linear_graph(w: np.ndarray, layout: str = "NCHW"):
    """Two outputs: z0 = Σ w·x + B0 (the explained one) and z1 = 0. ``w`` is (C, H, W)."""
    b = GraphBuilder("linear")
    if layout == "NCHW":
        h = b.input("x", w.shape, layout="NCHW")
        flat_w = w.ravel()
    else:
        h = b.input("x", (w.shape[1], w.shape[2], w.shape[0]), layout="NHWC")
        flat_w = w.transpose(1, 2, 0).ravel()
    h = b.flatten(h)
    b.linear(h, np.stack([flat_w, np.zeros_like(flat_w)]), np.array([B0, 0.0]), name="fc")
    return b.build()


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(C, H, W))
    x = rng.uniform(-1, 1, size=(5, C, H, W))
    r = rng.normal(size=(5, C, H, W))
    rel = xr.DataArray(r, dims=("sample", "channel", "height", "width"), name="relevance",
                       coords={"sample": np.arange(10, 15), "target": ("sample", np.zeros(5, np.int64))},
                       attrs={"method": "made-up", "parameters": {"a": 1}})
    return linear_graph(w), w, x, r, rel


def regions(h, w, p):
    """Pixel lists of the grid's regions, row-major."""
    out = []
    for i in range(0, h, p):
        for j in range(0, w, p):
            out.append([(a, b) for a in range(i, min(i + p, h)) for b in range(j, min(j + p, w))])
    return out


def closed_form(x, w, r, p, fis, steps, replacement, order="morf"):
    """f_0..f_L of one sample, perturbing regions in relevance order with fixed replacement values."""
    regs = regions(x.shape[1], x.shape[2], p)
    score = [sum(r[:, a, b].sum() for a, b in reg) for reg in regs]
    idx = sorted(range(len(regs)), key=lambda i: -score[i] if order == "morf" else score[i])
    f = [float((w * x).sum() + B0)]
    for k in range(1, steps + 1):
        gone = [px for i in idx[:k * fis] for px in regs[i]]
        f.append(f[0] - sum(float((w[:, a, b] * (x[:, a, b] - replacement[:, a, b])).sum()) for a, b in gone))
    return np.array(f)


@pytest.mark.parametrize("order", ["morf", "lerf"])
@pytest.mark.parametrize("patch,fis", [(1, 1), (3, 1), (3, 2), (2, 3)])
def test_samek_constant_baseline_is_the_closed_form(case, order, patch, fis):
    g, w, x, r, rel = case
    n_regions = math.ceil(H / patch) * math.ceil(W / patch)
    steps = min(100, math.ceil(n_regions / fis))
    res = attribx.evaluate("region_perturbation", g, x, rel, patch_size=patch, features_in_step=fis, order=order,
                           baseline=0.25, relative_to_random=False)
    want = np.stack([closed_form(x[i], w, r[i], patch, fis, steps, np.full((C, H, W), 0.25), order)
                     for i in range(len(x))])
    np.testing.assert_allclose(res["curve"].values, want, rtol=1e-12, atol=1e-12)
    aopc = (want[:, :1] - want).sum(axis=1) / (steps + 1)          # Σ_{k=0..L} (f_0 − f_k) / (L + 1)
    np.testing.assert_allclose(res["aopc"].values, aopc, rtol=1e-12, atol=1e-12)
    assert res.attrs["aopc"] == pytest.approx(aopc.mean(), rel=1e-12)
    assert list(res["step"].values) == list(range(steps + 1))
    assert list(res["sample"].values) == list(range(10, 15))
    assert res["curve"].dims == ("sample", "step")


def test_pixel_flipping_is_one_pixel_regions_with_all_channels(case):
    g, w, x, r, rel = case
    res = attribx.evaluate("pixel_flipping", g, x, rel, baseline="constant", value=-0.5, steps=30,
                           relative_to_random=False)
    want = np.stack([closed_form(x[i], w, r[i], 1, 1, 30, np.full((C, H, W), -0.5)) for i in range(len(x))])
    np.testing.assert_allclose(res["curve"].values, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res["fraction"].values, np.arange(31) / (H * W))
    # the default: 100 steps, clipped to the 49 pixels
    assert attribx.evaluate("pixel_flipping", g, x, rel, baseline=0.0, relative_to_random=False).sizes["step"] == 50


def test_mean_and_blur_baselines(case):
    g, w, x, r, rel = case
    means = x.mean(axis=(0, 2, 3))
    res = attribx.evaluate("region_perturbation", g, x, rel, patch_size=2, baseline="mean", relative_to_random=False)
    want = np.stack([closed_form(x[i], w, r[i], 2, 1, 16, np.broadcast_to(means[:, None, None], (C, H, W)))
                     for i in range(len(x))])
    np.testing.assert_allclose(res["curve"].values, want, rtol=1e-12, atol=1e-12)
    ndimage = pytest.importorskip("scipy.ndimage")
    res = attribx.evaluate("region_perturbation", g, x, rel, patch_size=3, baseline="blur", blur_sigma=1.5,
                           relative_to_random=False)
    blurred = ndimage.gaussian_filter(x, sigma=(0, 0, 1.5, 1.5), mode="reflect")
    want = np.stack([closed_form(x[i], w, r[i], 3, 1, 9, blurred[i]) for i in range(len(x))])
    np.testing.assert_allclose(res["curve"].values, want, rtol=1e-10, atol=1e-10)


def test_user_function_baseline_gets_and_returns_the_model_layout(case):
    g, w, x, r, rel = case
    seen = []

    def half(xb):
        seen.append(xb.shape)
        return xb * 0.5

    res = attribx.evaluate("region_perturbation", g, x, rel, patch_size=3, baseline=half, relative_to_random=False)
    want = np.stack([closed_form(x[i], w, r[i], 3, 1, 9, x[i] * 0.5) for i in range(len(x))])
    np.testing.assert_allclose(res["curve"].values, want, rtol=1e-12, atol=1e-12)
    assert seen and seen[0] == (5, C, H, W)
    assert res.attrs["parameters"]["baseline"].startswith("callable:")


def test_uniform_noise_over_the_data_range_averages_to_its_mean(case):
    """Repeated uniform noise: the mean curve approaches the closed form with replacement (low + high) / 2,
    within 5 standard errors computed from the noise variance (high − low)² / 12."""
    g, w, x, r, rel = case
    low, high, reps = -1.0, 2.0, 400
    res = attribx.evaluate("region_perturbation", g, x[:2], rel[:2], patch_size=3, baseline="uniform",
                           data_range=[low, high], repeats=reps, seed=3, relative_to_random=False)
    assert res.attrs["runs"] == reps
    mid = np.full((C, H, W), (low + high) / 2)
    for i in range(2):
        want = closed_form(x[i], w, r[i], 3, 1, 9, mid)
        regs = regions(H, W, 3)
        score = [sum(r[i][:, a, b].sum() for a, b in reg) for reg in regs]
        idx = sorted(range(9), key=lambda j: -score[j])
        var = [0.0] + [sum((w[:, a, b] ** 2).sum() for j in idx[:k] for a, b in regs[j]) * (high - low) ** 2 / 12
                       for k in range(1, 10)]
        se = np.sqrt(np.array(var) / reps)
        assert np.all(np.abs(res["curve"].values[i] - want) <= 5 * se + 1e-12)
        assert np.abs(res["curve"].values[i, 1:] - want[1:]).max() > 0     # it is random
    # default data range: the inputs' min and max
    res = attribx.evaluate("pixel_flipping", g, x, rel, steps=3, relative_to_random=False)
    assert res.attrs["data_range"] == [float(x.min()), float(x.max())]
    # seeded: the same seed gives the same curves, another seed others
    again = attribx.evaluate("pixel_flipping", g, x, rel, steps=3, relative_to_random=False)
    other = attribx.evaluate("pixel_flipping", g, x, rel, steps=3, relative_to_random=False, seed=1)
    np.testing.assert_array_equal(res["curve"].values, again["curve"].values)
    assert not np.array_equal(res["curve"].values, other["curve"].values)


def test_random_order_and_aopc_relative_to_it(case):
    """Random orders average to f_0 − (k / R) Σ_regions contribution (every region equally likely first)."""
    g, w, x, r, rel = case
    res = attribx.evaluate("region_perturbation", g, x, rel, patch_size=3, baseline=0.0, repeats=300, seed=5)
    regs = regions(H, W, 3)
    for i in range(len(x)):
        contrib = np.array([sum(float((w[:, a, b] * x[i][:, a, b]).sum()) for a, b in reg) for reg in regs])
        f0 = float((w * x[i]).sum() + B0)
        want = f0 - np.arange(10) / 9 * contrib.sum()
        spread = np.abs(contrib).sum()
        np.testing.assert_allclose(res["curve_random"].values[i], want, atol=0.25 * spread)
    np.testing.assert_allclose(res["aopc_relative"].values, res["aopc"].values - res["aopc_random"].values)
    assert res.attrs["aopc_relative"] == pytest.approx(res.attrs["aopc"] - res.attrs["aopc_random"])
    # deterministic order and baseline: repeats collapse to one run; the random order is repeated
    assert res.attrs["runs"] == 1
    rand = attribx.evaluate("region_perturbation", g, x, rel, patch_size=3, baseline=0.0, order="random", seed=5)
    assert "curve_random" not in rand


def test_layouts_nhwc_and_channel_free_relevance(case):
    """A channels-last model gives the same curves as the channels-first one; relevance without a channel
    dim (like sensitivity's) orders regions as the same relevance repeated over channels."""
    g, w, x, r, rel = case
    ref = attribx.evaluate("region_perturbation", g, x, rel, patch_size=2, seed=1)
    g_nhwc = linear_graph(w, "NHWC")
    rel_nhwc = rel.transpose("sample", "height", "width", "channel")
    got = attribx.evaluate("region_perturbation", g_nhwc, x.transpose(0, 2, 3, 1), rel_nhwc, patch_size=2, seed=1)
    np.testing.assert_allclose(got["curve"].values, ref["curve"].values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["curve_random"].values, ref["curve_random"].values, rtol=1e-12, atol=1e-12)
    # a plain array in the model's layout is read with the model's dims (no target coord: pass the target)
    got = attribx.evaluate("region_perturbation", g_nhwc, x.transpose(0, 2, 3, 1), rel_nhwc.values, patch_size=2,
                           seed=1, target=0)
    np.testing.assert_allclose(got["curve"].values, ref["curve"].values, rtol=1e-12, atol=1e-12)
    flat = rel.sum("channel")
    a = attribx.evaluate("pixel_flipping", g, x, flat, baseline=0.0, relative_to_random=False)
    b = attribx.evaluate("pixel_flipping", g, x, xr.concat([flat, flat], "channel").transpose(*rel.dims),
                         baseline=0.0, relative_to_random=False)
    np.testing.assert_array_equal(a["curve"].values, b["curve"].values)


@pytest.mark.parametrize("evaluator,params", [("pixel_flipping", {"features_in_step": 7}),
                                               ("region_perturbation", {"patch_size": 3, "order": "random"})])
def test_quantus_convention_channels_last_equals_channels_first(case, evaluator, params):
    g, w, x, r, rel = case
    kw = dict(convention="quantus", baseline="uniform", seed=2, batch_size=3, **params)
    ref = attribx.evaluate(evaluator, g, x, rel, **kw)
    got = attribx.evaluate(evaluator, linear_graph(w, "NHWC"), x.transpose(0, 2, 3, 1),
                           rel.transpose("sample", "height", "width", "channel"), **kw)
    np.testing.assert_allclose(got["curve"].values, ref["curve"].values, rtol=1e-12, atol=1e-12)


def test_probability_output(case):
    g, w, x, r, rel = case
    logit = attribx.evaluate("pixel_flipping", g, x, rel, baseline=0.0, steps=10, relative_to_random=False)
    prob = attribx.evaluate("pixel_flipping", g, x, rel, baseline=0.0, steps=10, relative_to_random=False,
                            output="probability")
    # z1 = 0, so p0 = sigmoid(z0)
    np.testing.assert_allclose(prob["curve"].values, 1 / (1 + np.exp(-logit["curve"].values)), rtol=1e-12)
    assert prob.attrs["output"] == "probability" and logit.attrs["output"] == "logit"


def test_targets_from_the_relevance_or_given(case):
    g, w, x, r, rel = case
    other = rel.assign_coords(target=("sample", np.ones(5, np.int64)))
    res = attribx.evaluate("pixel_flipping", g, x, other, baseline=0.0, steps=4, relative_to_random=False)
    np.testing.assert_array_equal(res["curve"].values, 0.0)     # class 1's logit is 0 whatever the input
    np.testing.assert_array_equal(res["target"].values, 1)
    res = attribx.evaluate("pixel_flipping", g, x, other.values, baseline=0.0, steps=4, relative_to_random=False,
                           target=0)
    np.testing.assert_array_equal(res["target"].values, 0)
    assert np.abs(res["curve"].values).max() > 0


# --------------------------------------------------------------------------------------------------
# the quantus convention, hand-derived
# --------------------------------------------------------------------------------------------------

def sum_graph(h, w):
    b = GraphBuilder("sum")
    v = b.flatten(b.input("x", (1, h, w), layout="NCHW"))
    b.linear(v, np.stack([np.ones(h * w), np.zeros(h * w)]), np.zeros(2), name="fc")
    return b.build()


def test_quantus_pixel_flipping_running_minimum_by_hand():
    """f = Σ x on [[3, 1], [2, 4]], relevance order (0,0), (0,1), (1,0), (1,1); "black" sets each entry
    to the current minimum (1): f = 8, 8, 7, 4; no k = 0 point; AOPC = mean(10 − f) = 3.25; AUC
    (trapezoid) = 21."""
    x = np.array([[[[3.0, 1.0], [2.0, 4.0]]]])
    r = np.array([[[[4.0, 3.0], [2.0, 1.0]]]])
    res = attribx.evaluate("pixel_flipping", sum_graph(2, 2), x, r, convention="quantus", output="logit")
    np.testing.assert_allclose(res["curve"].values, [[8, 8, 7, 4]])
    np.testing.assert_allclose(res["aopc"].values, [3.25])
    np.testing.assert_allclose(res["auc"].values, [21.0])
    np.testing.assert_allclose(res["f0"].values, [10.0])
    assert list(res["step"].values) == [1, 2, 3, 4]
    white = attribx.evaluate("pixel_flipping", sum_graph(2, 2), x, r, convention="quantus", output="logit",
                             baseline="white")
    np.testing.assert_allclose(white["curve"].values, [[11, 14, 16, 16]])


def test_quantus_region_perturbation_edge_padding_by_hand():
    """3 × 3 image 1..9, patch 2: Quantus pads to 4 × 4 (one row and column at the end, edge values),
    regions TL, TR, BL, BR with relevance sums 1, 0.5, 0.25, 5 (order BR, TL, TR, BL). "mean" is the
    running mean of the padded image: 96/16 = 6, then 84/16 = 5.25, 93/16 = 5.8125, 98.25/16; the curve
    is the drop f_0 − f_k of f = Σ x: 3, −6, −8.625, −5.90625."""
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    r = np.array([[[[1.0, 0, 0.5], [0, 0, 0], [0.25, 0, 5.0]]]])
    res = attribx.evaluate("region_perturbation", sum_graph(3, 3), x, r, convention="quantus", output="logit",
                           baseline="mean", patch_size=2)
    np.testing.assert_allclose(res["curve"].values, [[3.0, -6.0, -8.625, -5.90625]])
    np.testing.assert_allclose(res["aopc"].values, [np.mean([3.0, -6.0, -8.625, -5.90625])])
    assert res.attrs["regions"] == 4 and res["curve"].attrs["quantity"].startswith("drop")


# --------------------------------------------------------------------------------------------------
# errors, provenance, files, command line, plots
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params,match", [
    ({"nonsense": 1}, "unknown parameter"),
    ({"convention": "zennit"}, "convention"),
    ({"order": "best"}, "order"),
    ({"baseline": "black"}, "baseline"),
    ({"convention": "quantus", "baseline": "blur"}, "baseline"),
    ({"patch_size": 0}, "patch_size"),
    ({"patch_size": 8}, "larger than the image"),
    ({"steps": 50, "patch_size": 3}, "steps=50"),
    ({"output": "softmax"}, "output"),
    ({"convention": "quantus", "repeats": 3}, "repeats"),
    ({"convention": "quantus", "patch_size": 2}, "patch_size"),
    ({"convention": "quantus", "features_in_step": 3}, "features_in_step"),
    ({"normalise": False}, "quantus"),
    ({"data_range": [1, 0]}, "data_range"),
    ({"seed": -1}, "seed"),
])
def test_bad_parameters_are_clear_errors(case, params, match):
    g, w, x, r, rel = case
    with pytest.raises(MethodError, match=match):
        attribx.evaluate("pixel_flipping", g, x, rel, **params)


def test_bad_shapes_and_values_are_clear_errors(case):
    g, w, x, r, rel = case
    with pytest.raises(InputError, match="does not match"):
        attribx.evaluate("pixel_flipping", g, x, rel[:3])
    with pytest.raises(InputError, match="does not match"):
        attribx.evaluate("pixel_flipping", g, x, rel.isel(height=slice(0, 5)))
    bad = rel.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        attribx.evaluate("pixel_flipping", g, x, bad)
    with pytest.raises(InputError, match="needs a model"):
        attribx.evaluate("pixel_flipping", None, x, rel)
    with pytest.raises(InputError, match="needs relevance"):
        attribx.evaluate("pixel_flipping", g, x, None)
    with pytest.raises(InputError, match="not dims of the model"):
        attribx.evaluate("pixel_flipping", g, x, rel.rename(channel="token"))
    with pytest.raises(InputError, match="axes"):
        attribx.evaluate("pixel_flipping", g, x, r[:, 0, 0])
    with pytest.raises(MethodError, match="unknown evaluator"):
        attribx.evaluate("pixel_flipper", g, x, rel)
    mlp = GraphBuilder("mlp")
    mlp.linear(mlp.input("x", (4,)), np.ones((2, 4)), name="fc")
    with pytest.raises(InputError, match="height"):
        attribx.evaluate("pixel_flipping", mlp.build(), np.ones((2, 4)), np.ones((2, 4)))


def test_result_is_saved_with_provenance(case, tmp_path):
    g, w, x, r, rel = case
    rel_path = tmp_path / "rel.h5"
    attribx.save(rel, rel_path)
    res = attribx.evaluate("region_perturbation", g, x, str(rel_path), patch_size=3, seed=4)
    attrs = res.attrs
    assert attrs["relevance_file"] == os.path.abspath(rel_path)
    assert attrs["relevance_method"] == "made-up" and attrs["relevance_parameters"] == {"a": 1}
    assert attrs["model_fingerprint"] == g.fingerprint() and attrs["seed"] == 4
    assert attrs["attribx_version"] == attribx.__version__ and attrs["evaluator"] == "region_perturbation"
    assert attrs["parameters"]["patch_size"] == 3 and attrs["parameters"]["convention"] == "samek2017"
    out = tmp_path / "res.h5"
    attribx.save(res, out)
    back = attribx.open_relevance(out)
    xr.testing.assert_identical(back, res)


def test_cli_evaluate_writes_result_and_plot(case, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    g, w, x, r, rel = case
    model, inputs, rel_path = tmp_path / "m.npz", tmp_path / "x.npy", tmp_path / "rel.h5"
    g.save(model)
    np.save(inputs, x)
    attribx.save(rel, rel_path)
    out, png = tmp_path / "pf.h5", tmp_path / "pf.png"
    code = cli_main(["evaluate", "region_perturbation", "--model", str(model), "--inputs", str(inputs),
                     "--relevance", str(rel_path), "-p", "patch_size=3", "-p", "baseline=0.5", "-o", str(out),
                     "--plot", str(png)])
    assert code == 0
    res = attribx.open_relevance(out)
    assert res.attrs["relevance_file"] == os.path.abspath(rel_path)
    assert res.attrs["inputs_file"] == os.path.abspath(inputs)
    assert res.attrs["parameters"]["baseline"] == 0.5
    want = attribx.evaluate("region_perturbation", g, x, rel, patch_size=3, baseline=0.5)
    np.testing.assert_allclose(res["curve"].values, want["curve"].values)
    assert png.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "wrote region_perturbation of 5 samples" in printed and f"aopc {want.attrs['aopc']:.4g}" in printed
    code = cli_main(["evaluate", "region_perturbation", "--model", str(model), "--inputs", str(inputs),
                     "--relevance", str(rel_path), "-p", "wrong=1", "-o", str(out)])
    assert code == 2 and "unknown parameter" in capsys.readouterr().err


def test_plot_curves_has_every_method_and_aopc(case):
    pytest.importorskip("matplotlib")
    from attribx.evaluators import plot_curves
    g, w, x, r, rel = case
    a = attribx.evaluate("pixel_flipping", g, x, rel, baseline=0.0)
    b = attribx.evaluate("pixel_flipping", g, x, -rel, baseline=0.0)
    fig = plot_curves({"relevance": a, "negated": b})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == f"relevance (AOPC {a.attrs['aopc']:.3g})"
    assert labels[1] == f"negated (AOPC {b.attrs['aopc']:.3g})"
    assert labels[2].startswith("random order (AOPC")
    assert len(fig.axes[0].lines) == 3
    with pytest.raises(InputError):
        plot_curves({"x": xr.Dataset()})


def test_no_progress_output_off_terminal(case, capsys):
    g, w, x, r, rel = case
    attribx.evaluate("pixel_flipping", g, x, rel, batch_size=2)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
