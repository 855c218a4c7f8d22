"""Text heatmaps: colours by sign and size, escaping, padding, HTML and PNG files, and ``attribx render``."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import xarray as xr

import attribx
from attribx import textviz
from attribx.cli import main
from attribx.errors import InputError

STYLE = re.compile(r'<span class="attribx-token( attribx-padding)?" style="([^"]*)"[^>]*>([^<]*)</span>')


def spans(page: str) -> list[tuple[str, str | None, bool]]:
    """(text, background colour as '#rrggbb' or None, is padding) for every token span."""
    out = []
    for pad, style, text in STYLE.findall(page):
        m = re.search(r"background-color:(#[0-9a-f]{6})", style)
        out.append((text, m.group(1) if m else None, bool(pad)))
    return out


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def text_relevance(n_samples=2, names=("good", "<b>", "bad", "plain", "pad")):
    """Relevance of sentences with token strings, padding at the end of the second, target and score."""
    tokens = np.array([list(names)] * n_samples)
    values = np.tile([2.0, 1.0, -4.0, 0.0, 0.0], (n_samples, 1)) * (1 + np.arange(n_samples))[:, None]
    padding = np.zeros(tokens.shape, bool)
    padding[1:, -1] = True
    values[1:, -1] = 9.0                    # relevance on padding: shown grey, not in the colour scale
    return xr.DataArray(values, dims=("sample", "token"), name="relevance",
                        coords={"sample": np.arange(10, 10 + n_samples), "token_text": (("sample", "token"), tokens),
                                "padding": (("sample", "token"), padding),
                                "target": ("sample", np.arange(n_samples) % 2),
                                "score": ("sample", np.full(n_samples, 3.25))},
                        attrs={"method": "lrp.epsilon"})


def test_colours_are_matplotlibs_bwr_symmetric_around_white():
    from matplotlib import colormaps
    v = np.linspace(-1.5, 1.5, 61)
    ours = textviz.relevance_colors(v, 1.5)
    np.testing.assert_allclose(ours, colormaps["bwr"]((v + 1.5) / 3.0)[:, :3], atol=0.01)
    np.testing.assert_array_equal(textviz.relevance_colors(0.0, 2.0), [1.0, 1.0, 1.0])
    # symmetric: +r is red by as much as -r is blue
    np.testing.assert_allclose(ours[::-1], ours[:, ::-1])


def test_one_sentence_colours_by_sign_and_size_and_escapes():
    page = textviz.text_heatmap_html(["good", "<b>", "bad", "plain"], [2.0, 1.0, -4.0, 0.0],
                                     label="target 1", score=3.25)
    (good, c_good, _), (tag, c_tag, _), (bad, c_bad, _), (plain, c_plain, _) = spans(page)
    assert (good, tag, bad, plain) == ("good", "&lt;b&gt;", "bad", "plain")
    assert "<b>" not in page
    r, g, b = rgb(c_good)
    assert r == 255 and b < r and g == b               # positive: red, half strength (2 of max |R| 4)
    assert abs(g - 128) <= 1
    assert rgb(c_bad) == (0, 0, 255)                   # the largest |R|, negative: full blue
    assert rgb(c_plain) == (255, 255, 255)             # zero: white
    assert rgb(c_tag)[1] > rgb(c_good)[1]              # smaller relevance, paler
    assert "target 1" in page and "score 3.25" in page and "±4" in page


def test_scale_is_per_sentence_unless_given():
    auto = spans(textviz.text_heatmap_html(["a", "b"], [1.0, -0.5]))
    assert rgb(auto[0][1]) == (255, 0, 0) and rgb(auto[1][1]) == (128, 128, 255)
    fixed = spans(textviz.text_heatmap_html(["a", "b"], [1.0, -0.5], scale=2.0))
    assert rgb(fixed[0][1]) == (255, 128, 128) and rgb(fixed[1][1]) == (191, 191, 255)
    with pytest.raises(InputError, match="scale"):
        textviz.text_heatmap_html(["a"], [1.0], scale=0)


def test_many_sentences_one_block_each_padding_grey(tmp_path):
    rel = text_relevance(3)
    out = tmp_path / "t.html"
    page = textviz.render_html(rel, out, class_names=["neg", "pos"])
    assert out.read_text(encoding="utf-8") == page
    assert page.startswith("<!DOCTYPE html>") and page.count('class="attribx-sentence"') == 3
    assert "attribx-legend" in page and "linear-gradient" in page and "lrp.epsilon" in page
    tokens = spans(page)
    assert len(tokens) == 15
    pads = [t for t in tokens if t[2]]
    assert len(pads) == 2 and all(colour is None for _, colour, _ in pads)
    # padding's relevance (9) stays out of the scale: in every sentence 'bad' is the full blue
    assert [rgb(c) for text, c, _ in tokens if text == "bad"] == [(0, 0, 255)] * 3
    for sample, target in ((10, "0 (neg)"), (11, "1 (pos)"), (12, "0 (neg)")):
        assert f"sample {sample} · target {target} · score 3.25" in page
    # select by sample id
    two = textviz.render_html(rel, samples=[12, 10])
    assert two.index("sample 12") < two.index("sample 10") and "sample 11" not in two
    with pytest.raises(InputError, match="not there"):
        textviz.render_html(rel, samples=[3])


def test_token_indices_without_strings_and_extra_dims_summed():
    values = np.arange(24.0).reshape(2, 3, 4) - 10
    rel = xr.DataArray(values, dims=("sample", "token", "embedding"))
    (first, *_), _ = textviz._as_sentences(rel, None, None, None)
    assert first.tokens == ["#0", "#1", "#2"]
    np.testing.assert_allclose(first.relevance, values[0].sum(-1))
    # a Dataset: "relevance" by default, the score variable in the caption
    ds = xr.Dataset({"relevance": rel.sum("embedding"), "score": ("sample", [1.5, 2.5]),
                     "other": rel.sum("embedding"), "third": rel.sum("embedding")})
    assert "score 2.5" in textviz.render_html(ds)
    assert textviz.render_html(ds, variable="other") == textviz.render_html(ds, title="attribx text heatmaps: other")
    with pytest.raises(InputError, match="several variables"):
        textviz.render_html(ds.drop_vars("relevance"))
    with pytest.raises(InputError, match="no variable 'nope'"):
        textviz.render_html(ds, variable="nope")


def test_png_is_a_picture_with_red_and_blue_words(tmp_path):
    from matplotlib.image import imread
    out = tmp_path / "t.png"
    textviz.render_png([(["up", "down", "flat"], [1.0, -1.0, 0.0])], out, width=8, dpi=100)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(out)[..., :3]
    assert img.shape[1] == 800 and 100 < img.shape[0] < 400
    red = (img[..., 0] > 0.95) & (img[..., 1] < 0.05) & (img[..., 2] < 0.05)
    blue = (img[..., 2] > 0.95) & (img[..., 0] < 0.05) & (img[..., 1] < 0.05)
    assert red.sum() > 300 and blue.sum() > 300          # the words' boxes, more than the colour bar's ends


def test_png_wraps_long_sentences(tmp_path):
    from matplotlib.image import imread
    short, long = tmp_path / "s.png", tmp_path / "l.png"
    textviz.render_png([(["word"] * 3, [1.0, -1.0, 0.5])], short, width=4)
    textviz.render_png([(["word"] * 60, np.linspace(-1, 1, 60))], long, width=4)
    assert imread(long).shape[1] == imread(short).shape[1]
    assert imread(long).shape[0] > imread(short).shape[0] + 100


def test_relevance_of_a_token_model_renders_with_its_words(tmp_path):
    """The real labeled output of explain(tokens=, pad_id=): dims sample, token; words, padding, target, prediction."""
    from test_embedding import IDS, token_graph
    vocab = np.array([f"w{i}" for i in range(11)])
    ids = IDS.copy()
    ids[0, -2:] = 0                                      # id 0 pads
    rel = attribx.explain(token_graph(), ids, "lrp.epsilon", target="predicted", tokens=vocab[ids], pad_id=0)
    page = textviz.render_html(rel)
    assert page.count('class="attribx-sentence"') == len(ids)
    first = spans(page)[:ids.shape[1]]
    assert [t for t, _, _ in first] == list(vocab[ids[0]])
    assert [pad for _, _, pad in first] == list(ids[0] == 0) and first[-1][2]
    for i in range(len(IDS)):
        assert f"sample {i} · target {int(rel.target[i])} · prediction {int(rel.prediction[i])}" in page


def test_nan_relevance_and_missing_matplotlib_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="NaN"):
        textviz.text_heatmap_html(["a", "b"], [1.0, np.nan], label="sample 3")
    textviz.text_heatmap_html(["a", "b"], [1.0, np.nan], padding=[False, True])   # NaN on padding is drawn grey
    with pytest.raises(InputError, match="NaN"):      # not hidden by summing over an embedding axis
        textviz.render_html(xr.DataArray([[[1.0, np.nan]]], dims=("sample", "token", "embedding")))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(attribx.AttribxError, match="need matplotlib"):
        textviz.render_png([(["a"], [1.0])], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_no_token_axis_is_a_clear_error():
    with pytest.raises(InputError, match="no 'token' axis"):
        textviz.render_html(xr.DataArray(np.ones((2, 3)), dims=("sample", "feature")))


def test_cli_render_round_trip(tmp_path, capsys):
    path = tmp_path / "rel.h5"
    attribx.save(text_relevance(3), path)
    for name in ("out.html", "out.png"):
        out = tmp_path / name
        assert main(["render", str(path), "-o", str(out), "--samples", "10", "12"]) == 0
        assert out.stat().st_size > 500
    page = (tmp_path / "out.html").read_text(encoding="utf-8")
    assert page.count('class="attribx-sentence"') == 2 and "&lt;b&gt;" in page
    assert "wrote text heatmaps" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"), ("suffix", "unknown output type"), ("no_token", "no 'token' axis"),
    ("sample", "not there"),
])
def test_cli_render_errors_are_one_line(tmp_path, capsys, case, message):
    path = tmp_path / "rel.h5"
    attribx.save(text_relevance(2) if case != "no_token" else
                 xr.DataArray(np.ones((2, 3)), dims=("sample", "feature"), name="relevance"), path)
    args = {"missing": [str(tmp_path / "nope.h5"), "-o", str(tmp_path / "o.html")],
            "suffix": [str(path), "-o", str(tmp_path / "o.pdf")],
            "no_token": [str(path), "-o", str(tmp_path / "o.html")],
            "sample": [str(path), "-o", str(tmp_path / "o.png"), "--samples", "99"]}[case]
    assert main(["render", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attribx: error:") and message in err
    assert not (tmp_path / "o.html").exists() and not (tmp_path / "o.png").exists()
