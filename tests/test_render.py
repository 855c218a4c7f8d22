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


def test_overlay_shows_a_dimmed_grey_input_where_relevance_is_zero_and_full_colour_at_the_max():
    rel = image([[[0.0, 2.0, 0.5]]])
    x = np.array([[[0.25, 1.0, 1.0]]])                   # grey input, stretched to [0, 1]: 0, 1, 1
    rgb = render.heatmap(rel, inputs=x, overlay=True, alpha=1.0)
    # zero relevance: the input in grey, contrast halved (0.25 + 0.5 * grey), so no colour is hidden
    np.testing.assert_allclose(rgb[0, 0, 0], (0.25, 0.25, 0.25))
    np.testing.assert_allclose(rgb[0, 0, 1], RED)         # the largest |R|: the map's end, opaque
    # a quarter of the max: opacity min(1, 2 * 0.25) ** 0.7, colour bwr(0.5 + 0.5 * 0.25)
    a, colour = 0.5 ** 0.7, np.array([1.0, 0.375, 0.375])
    np.testing.assert_allclose(rgb[0, 0, 2], (1 - a) * 0.75 + a * colour)
    half = render.heatmap(rel, inputs=x, overlay=True, alpha=0.5)
    np.testing.assert_allclose(half[0, 0, 1], 0.5 * 0.75 + 0.5 * np.array(RED))
    with pytest.raises(InputError, match="alpha must lie"):
        render.heatmap(rel, inputs=x, overlay=True, alpha=1.5)


def test_overlay_is_clearly_visible_at_a_tenth_of_the_largest_relevance():
    # a sparse heatmap, as LRP gives: one strong pixel, the rest a tenth of it or less; white input there
    rel = image([[[1.0, 0.1, -0.1, 0.0]]])
    x = np.array([[[0.0, 1.0, 1.0, 1.0]]])
    rgb = render.heatmap(rel, inputs=x, overlay=True)[0, 0]
    redness = rgb[:, 0] - rgb[:, 1]
    blueness = rgb[:, 2] - rgb[:, 1]
    assert redness[1] > 0.1 and blueness[2] > 0.1        # the blend at opacity 0.8 * |R| gave 0.008
    assert abs(redness[3]) < 1e-12 and abs(blueness[3]) < 1e-12
    assert rgb[3].max() < 0.8                            # a white input is drawn grey under the colours
    for cmap in ("coldnhot", "bwr"):                     # the colour is the map's outer half: not pale
        strong = render.heatmap(rel, inputs=x, overlay=True, cmap=cmap, alpha=1.0)[0, 0, 1]
        np.testing.assert_allclose(strong, (1 - 0.2 ** 0.7) * 0.75 + 0.2 ** 0.7 * render.colorize(0.55, cmap))


def test_samples_are_picked_by_id_and_inputs_matched_by_id():
    rel = image(np.arange(1.0, 4.0)[:, None, None] * np.ones((3, 2, 2))).assign_coords(sample=[10, 11, 12])
    x = np.zeros((13, 2, 2))
    x[11, 0, 0] = 1.0                                   # the input of sample id 11
    rgb = render.heatmap(rel, samples=[11], inputs=x, overlay=True, alpha=0.0)
    np.testing.assert_allclose(rgb[0, :, :, 0], [[0.75, 0.25], [0.25, 0.25]])     # the dimmed grey input
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


# --- picture size and resolution ----------------------------------------------------------------------

def red_extent(png: np.ndarray) -> tuple[int, int]:
    """The widest run of pure-red pixels in a row and the tallest in a column: a drawn picture's size."""
    red = (png[..., 0] > 0.99) & (png[..., 1] < 0.01) & (png[..., 2] < 0.01)

    def longest(mask):
        best = 0
        for line in mask:
            padded = np.concatenate([[0], line.astype(np.int8), [0]])
            edges = np.flatnonzero(np.diff(padded))
            if edges.size:
                best = max(best, int((edges[1::2] - edges[::2]).max()))
        return best
    return longest(red), longest(red.T)


def test_picture_size_defaults_to_the_input_resolution_small_inputs_by_whole_factors():
    assert render.picture_size(224) == 224 and render.picture_size(640) == 640
    assert render.picture_size(8) == 152 and render.picture_size(28) == 168     # 19 and 6 pixels per pixel
    assert render.picture_size(224, 100) == 100
    for bad in (0, -3, 2.5, True, 10 ** 6):
        with pytest.raises(InputError, match="size"):
            render.picture_size(224, bad)


@pytest.mark.parametrize("shape, args, expect", [
    ((224, 160), [], (224, 160)),                        # one picture pixel per input pixel
    ((224, 160), ["--size", "80"], (112, 80)),           # --size: the width, height in proportion
    ((224, 160), ["--dpi", "200"], (224, 160)),          # --dpi: larger text, same picture pixels
    ((8, 8), [], (152, 152)),                            # a digit: 19 screen pixels per input pixel
])
def test_cli_draws_each_heatmap_at_the_input_resolution_or_size(tmp_path, shape, args, expect):
    plt_image = pytest.importorskip("matplotlib.image")
    rel = image(np.ones((2,) + shape))                   # positive everywhere: two pure-red pictures
    attribx.save(rel, tmp_path / "rel.h5")
    out = tmp_path / "grid.png"
    assert main(["render", str(tmp_path / "rel.h5"), "-o", str(out), *args]) == 0
    png = plt_image.imread(out)[..., :3]
    h, w = red_extent(png)[::-1]
    # the frame (0.6 pt, antialiased) may take the outermost pixel row or column of a side
    assert expect[0] - 2 <= h <= expect[0] and expect[1] - 2 <= w <= expect[1], (h, w, expect)
    assert png.shape[1] >= 2 * expect[1]                 # both pictures side by side, none shrunk to fit


def test_dpi_scales_the_text_not_the_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    ds = methods(2)
    small = render.heatmap_grid(ds, size=60, dpi=100)
    large = render.heatmap_grid(ds, size=60, dpi=200)
    ax_small = [a for a in small.axes if a.images][0]
    ax_large = [a for a in large.axes if a.images][0]
    assert round(ax_small.get_position().width * small.get_figwidth() * small.dpi) == 60
    assert round(ax_large.get_position().width * large.get_figwidth() * large.dpi) == 60
    assert large.get_figwidth() * large.dpi > small.get_figwidth() * small.dpi    # wider labels
    assert render.heatmap_grid(ds, cell=1.1, dpi=100).get_figwidth() > 0          # the older cell= (inches)
    with pytest.raises(InputError, match="not both"):
        render.heatmap_grid(ds, cell=1.1, size=60)
    with pytest.raises(InputError, match="dpi"):
        render.heatmap_grid(ds, dpi=0)


def test_cli_size_and_dpi_errors_are_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    attribx.save(methods(), tmp_path / "rel.h5")
    assert main(["render", str(tmp_path / "rel.h5"), "-o", str(tmp_path / "g.png"), "--size", "0"]) == 2
    assert main(["render", str(tmp_path / "rel.h5"), "-o", str(tmp_path / "g.png"), "--dpi", "-5"]) == 2
    rel = xr.DataArray([[1.0, -2.0]], dims=("sample", "token"), name="relevance", coords={"sample": [0]})
    attribx.save(rel, tmp_path / "text.h5")
    assert main(["render", str(tmp_path / "text.h5"), "-o", str(tmp_path / "t.png"), "--size", "50"]) == 2
    assert main(["render", str(tmp_path / "text.h5"), "-o", str(tmp_path / "t.html"), "--dpi", "150"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4
    assert "size" in err[0] and "dpi" in err[1] and "only for image relevance" in err[2] and "HTML" in err[3]
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.html"))
    assert main(["render", str(tmp_path / "text.h5"), "-o", str(tmp_path / "t.png"), "--dpi", "150"]) == 0


# --- file permissions: the umask decides, as for any tool ------------------------------------------------

_WRITE_ALL = r"""
import os, sys
import numpy as np, xarray as xr
os.umask(int(sys.argv[2], 8))
import attribx
from attribx.render import render
out = sys.argv[1]
img = xr.DataArray(np.ones((1, 4, 4)), dims=("sample", "height", "width"), name="relevance", coords={"sample": [0]})
txt = xr.DataArray([[1.0, -2.0]], dims=("sample", "token"), name="relevance", coords={"sample": [0]})
attribx.save(img, os.path.join(out, "rel.h5"))
attribx.save(img, os.path.join(out, "rel.h5"), mode="a")
render(img, os.path.join(out, "grid.png"))
render(txt, os.path.join(out, "text.html"))
render(txt, os.path.join(out, "text.png"))
"""


@pytest.mark.parametrize("umask, mode", [("022", 0o644), ("077", 0o600), ("002", 0o664)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    import stat
    import subprocess
    import sys
    pytest.importorskip("matplotlib")
    result = subprocess.run([sys.executable, "-c", _WRITE_ALL, str(tmp_path), umask], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["grid.png", "rel.h5", "text.html", "text.png"]             # no temporary file left
    for name in names:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, (name, oct((tmp_path / name).stat().st_mode))


def test_a_replaced_file_keeps_its_mode(tmp_path):
    import stat
    pytest.importorskip("matplotlib")
    path = tmp_path / "grid.png"
    path.write_bytes(b"old")
    path.chmod(0o640)
    render.render(image(np.ones((1, 4, 4))), path)
    assert path.read_bytes()[:4] == b"\x89PNG" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_captions_wider_than_a_heatmap_wrap_instead_of_overlapping():
    pytest.importorskip("matplotlib")
    rel = image(np.ones((3, 8, 8)), target=("sample", [2, 8, 2]), prediction=("sample", [2, 8, 2]),
                label=("sample", [2, 8, 7]))
    fig = render.heatmap_grid(rel, size=48, colorbar=False)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 and all("\n" in t.get_text() for t in titles)
    boxes = [t.get_window_extent(renderer) for t in titles]
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))                 # side by side, apart
    assert all(box.y0 >= ax.get_window_extent(renderer).y1 for box, ax in zip(boxes, fig.axes))   # above
    wide = render.heatmap_grid(rel, colorbar=False)                              # 152 pixels: one line
    assert [ax.get_title() for ax in wide.axes] == ["#0 y=2 ŷ=2 t=2", "#1 y=8 ŷ=8 t=8", "#2 y=7 ŷ=2 t=2"]
