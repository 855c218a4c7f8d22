"""Heatmap images (attribx.render): colours worked out by hand, normalisation, layouts, inputs, grids,
``attribx render`` writing PNGs and still sending token relevance to the text heatmaps."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import attribx
from attribx import render
from attribx.cli import main
from attribx.errors import InputError

NCHW = ("sample", "channel", "height", "width")
NHWC = ("sample", "height", "width", "channel")
RED, BLUE, WHITE = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 1.0)


def image(values, dims=("sample", "height", "width"), **coords):
    values = np.asarray(values, dtype=float)
    return xr.DataArray(values, dims=dims, name="relevance",
                        coords={"sample": np.arange(len(values)), **coords})


def methods(n=3, rng=None):
    """A Dataset of two methods' NCHW relevance (one of them 10x the other) and RGB-free grey inputs."""
    rng = rng or np.random.default_rng(0)
    r = rng.normal(size=(n, 1, 6, 5))
    return xr.Dataset({"lrp.epsilon": (NCHW, r), "gradient": (NCHW, 10 * r[::-1])},
                      coords={"sample": np.arange(n), "label": ("sample", np.arange(n) % 2)})


# --- colours by hand (numpy only: bwr and coldnhot need no matplotlib) ---------------------------------

def test_bwr_zero_is_white_max_is_red_min_is_blue():
    rgb = render.heatmap(image([[[0.0, 2.0, -2.0, 1.0]]]))
    np.testing.assert_allclose(rgb[0, 0], [WHITE, RED, BLUE, (1.0, 0.5, 0.5)])


def test_coldnhot_zero_is_black_ends_are_yellow_and_cyan():
    rgb = render.heatmap(image([[[0.0, 3.0, -3.0, 1.5]]]), cmap="coldnhot")
    np.testing.assert_allclose(rgb[0, 0], [(0, 0, 0), (1, 1, 0), (0, 1, 1), (1, 0, 0)])


def test_symmetric_normalises_each_sample_global_all_of_them_none_not_at_all():
    rel = image([[[1.0, 0.0]], [[4.0, 2.0]]])
    sym = render.heatmap(rel, norm="symmetric")
    np.testing.assert_allclose(sym[:, 0, 0], [RED, RED])                # each sample's max at full colour
    np.testing.assert_allclose(sym[1, 0, 1], (1.0, 0.5, 0.5))
    glob = render.heatmap(rel, norm="global")
    np.testing.assert_allclose(glob[0, 0, 0], (1.0, 0.75, 0.75))        # 1 of 4: a quarter of full red
    np.testing.assert_allclose(glob[1, 0], [RED, (1.0, 0.5, 0.5)])
    none = render.heatmap(rel, norm="none", vmax=2.0)
    np.testing.assert_allclose(none[:, 0, 0], [(1.0, 0.5, 0.5), RED])   # 4 > vmax: clipped
    np.testing.assert_allclose(render.heatmap(rel, norm="none")[0, 0, 0], RED)   # vmax 1 by default
    assert np.all(render.heatmap(image(np.zeros((1, 2, 2))))[0] == 1.0)  # an all-zero map is white


def test_matplotlib_maps_centre_at_zero_and_end_at_the_max():
    mpl = pytest.importorskip("matplotlib")
    for name in ("seismic", "RdBu_r", "bwr"):
        cmap = mpl.colormaps[name]
        rgb = render.heatmap(image([[[0.0, 5.0, -5.0]]]), cmap=name)[0, 0]
        np.testing.assert_allclose(rgb, [cmap(0.5)[:3], cmap(1.0)[:3], cmap(0.0)[:3]], atol=1 / 127)


# --- layouts, channels, inputs -----------------------------------------------------------------------

def test_nchw_and_nhwc_draw_the_same_and_channels_are_summed():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(2, 3, 4, 5))
    nchw = image(r, NCHW)
    nhwc = image(r.transpose(0, 2, 3, 1), NHWC)
    np.testing.assert_array_equal(render.heatmap(nchw), render.heatmap(nhwc))
    np.testing.assert_allclose(render.heatmap(nchw), render.heatmap(image(r.sum(1))))
    summed = render.reduce_channels(nhwc, reduce="abs")
    np.testing.assert_allclose(summed.values, np.abs(r).sum(1))
    x = rng.random((2, 3, 4, 5))                      # RGB inputs, in both layouts
    a = render.heatmap(nchw, inputs=x, overlay=True)
    b = render.heatmap(nhwc, inputs=x.transpose(0, 2, 3, 1), overlay=True)
    np.testing.assert_allclose(a, b)


def test_overlay_shows_the_input_where_relevance_is_zero():
    rel = image([[[0.0, 2.0]]])
    x = np.array([[[0.25, 1.0]], [[0.0, 0.5]]])[:1]     # grey input, stretched to [0, 1]: 0 and 1
    rgb = render.heatmap(rel, inputs=x, overlay=True, alpha=1.0)
    np.testing.assert_allclose(rgb[0, 0], [(0, 0, 0), RED])
    half = render.heatmap(rel, inputs=x, overlay=True, alpha=0.5)
    np.testing.assert_allclose(half[0, 0, 1], (0.5 * 1 + 0.5 * 1, 0.5 * 1, 0.5 * 1))


def test_samples_are_picked_by_id_and_inputs_matched_by_id():
    rel = image(np.arange(1.0, 4.0)[:, None, None] * np.ones((3, 2, 2))).assign_coords(sample=[10, 11, 12])
    x = np.zeros((13, 2, 2))
    x[11, 0, 0] = 1.0                                   # the input of sample id 11
    rgb = render.heatmap(rel, samples=[11], inputs=x, overlay=True, alpha=0.0)
    np.testing.assert_allclose(rgb[0, :, :, 0], [[1, 0], [0, 0]])
    with pytest.raises(InputError, match="not there"):
        render.heatmap(rel, samples=[3])
    with pytest.raises(InputError, match="5 inputs for 3"):
        render.heatmap(rel, inputs=np.zeros((5, 2, 2)), overlay=True)


def test_stored_inputs_are_used_and_bad_options_are_clear_errors():
    ds = methods().assign(input=(NCHW, np.ones((3, 1, 6, 5))))
    assert [name for name, _ in render.image_variables(ds)] == ["lrp.epsilon", "gradient"]
    assert render.heatmap(ds, "gradient", overlay=True).shape == (3, 6, 5, 3)
    cases = [
        (dict(norm="per-pixel"), "unknown normalisation"),
        (dict(norm="symmetric", vmax=2.0), "cannot go with"),
        (dict(vmax=-1.0), "positive"),
        (dict(reduce="median"), "unknown channel reduction"),
        (dict(channel=None), "neither sample"),
        (dict(cmap=3), "cmap must be"),
    ]
    for kw, message in cases:
        with pytest.raises(InputError, match=message):
            render.heatmap(ds, "gradient", **kw)
    with pytest.raises(InputError, match="several image variables"):
        render.heatmap(ds)
    with pytest.raises(InputError, match="overlay needs the inputs"):
        render.heatmap(methods(), "gradient", overlay=True)
    with pytest.raises(InputError, match="do not fit"):
        render.heatmap(methods(), "gradient", overlay=True, inputs=np.ones((3, 5, 6)))
    with pytest.raises(InputError, match="no variable 'nope'"):
        render.heatmap(ds, "nope")


# --- grids and the command line (matplotlib) ---------------------------------------------------------

def test_grid_has_a_picture_per_method_and_sample_plus_inputs():
    pytest.importorskip("matplotlib")
    ds = methods(4)
    x = np.random.default_rng(2).random((4, 1, 6, 5))
    fig = render.heatmap_grid(ds, x)
    pictures = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(pictures) == 3 * 4                       # input row + two methods, 4 samples each
    assert pictures[0].get_ylabel() == "input" and pictures[0].get_title() == "#0 y=0"
    np.testing.assert_allclose(pictures[4].images[0].get_array()[..., :3], render.heatmap(ds, "lrp.epsilon")[0])
    over = render.heatmap_grid(ds, x, overlay=True, rows="samples", samples=[1, 3], colorbar=False)
    assert len([ax for ax in over.axes if ax.images]) == 2 * 2 and over.axes[0].get_title() == "lrp.epsilon"
    with pytest.raises(InputError, match="rows must be"):
        render.heatmap_grid(ds, rows="columns")


def test_grid_finds_the_inputs_file_that_explain_notes(tmp_path):
    pytest.importorskip("matplotlib")
    x = np.zeros((2, 6, 5, 1))
    x[1, 2, 3] = 1.0
    np.save(tmp_path / "x.npy", x)
    rel = image(np.ones((2, 6, 5, 1)), NHWC).assign_attrs(inputs_file=str(tmp_path / "x.npy"))
    fig = render.heatmap_grid(rel, colorbar=False)
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == ["input", "relevance"]
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array()[..., 0], x[1, ..., 0])
    (tmp_path / "x.npy").unlink()                       # moved away: heatmaps alone
    assert len(render.heatmap_grid(rel, colorbar=False).axes) == 2


def test_cli_writes_a_readable_png_of_the_expected_size(tmp_path, capsys):
    plt_image = pytest.importorskip("matplotlib.image")
    rng = np.random.default_rng(3)
    r = rng.normal(size=(3, 6, 5, 1))
    ds = xr.Dataset({"lrp.epsilon": (NHWC, r), "gradient": (NHWC, -r)}, coords={"sample": np.arange(3)})
    attribx.save(ds, tmp_path / "rel.h5")
    np.save(tmp_path / "x.npy", rng.random((3, 6, 5, 1)))
    out = tmp_path / "grid.png"
    assert main(["render", str(tmp_path / "rel.h5"), "-o", str(out), "--inputs", str(tmp_path / "x.npy"),
                 "--cmap", "coldnhot", "--norm", "global"]) == 0
    assert "wrote image heatmaps" in capsys.readouterr().out
    png = plt_image.imread(out)
    w, h = render.heatmap_grid(ds, rng.random((3, 6, 5, 1))).get_size_inches() * 100
    assert png.shape[:2] == (round(h), round(w))
    colours = {tuple(c) for c in (png[..., :3].reshape(-1, 3) * 255).round().astype(int)}
    assert (255, 255, 0) in colours and (0, 255, 255) in colours      # coldnhot's ends: the global max, min
    assert main(["render", str(tmp_path / "rel.h5"), "-o", str(tmp_path / "one.png"), "--variable", "gradient",
                 "--overlay", "--inputs", str(tmp_path / "x.npy"), "--rows", "samples", "--samples", "2"]) == 0
    assert plt_image.imread(tmp_path / "one.png").shape[0] < png.shape[0]


def test_cli_token_relevance_still_goes_to_text_heatmaps(tmp_path, capsys):
    rel = xr.DataArray([[1.0, -2.0, 0.5]], dims=("sample", "token"), name="relevance",
                       coords={"sample": [0], "token_text": (("sample", "token"), [["a", "b", "c"]])})
    attribx.save(rel, tmp_path / "text.h5")
    assert main(["render", str(tmp_path / "text.h5"), "-o", str(tmp_path / "t.html")]) == 0
    assert "wrote text heatmaps" in capsys.readouterr().out
    assert (tmp_path / "t.html").read_text(encoding="utf-8").count('class="attribx-sentence"') == 1
    assert main(["render", str(tmp_path / "text.h5"), "-o", str(tmp_path / "t2.html"), "--norm", "none"]) == 0
    assert main(["render", str(tmp_path / "text.h5"), "-o", str(tmp_path / "t3.html"), "--overlay"]) == 2
    assert "only for image relevance" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--cmap", "no-such-map"], "unknown colour map"),
    (["--norm", "symmetric", "--scale", "2"], "cannot go with"),
    (["--overlay"], "overlay needs the inputs"),
    (["--variable", "nope"], "no variable 'nope'"),
    (["-o", "{tmp}/grid.html"], "written as .png"),
    (["--class-names", "a", "b"], "only for text"),
])
def test_cli_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    pytest.importorskip("matplotlib")
    attribx.save(methods(), tmp_path / "rel.h5")
    args = [a.format(tmp=tmp_path) for a in args]
    out = [] if "-o" in args else ["-o", str(tmp_path / "grid.png")]
    assert main(["render", str(tmp_path / "rel.h5"), *out, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "grid.png").exists() and not (tmp_path / "grid.html").exists()
