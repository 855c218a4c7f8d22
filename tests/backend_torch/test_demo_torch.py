"""``attribx demo`` on the torch backend: the digits CNN, the sentiment BiLSTM and the sentiment transformer,
every file, every part of the report, and the evaluations' verdicts (LRP beats the random baseline on every
model; AttnLRP beats gradient x input, attention rollout and random on the transformer)."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("attribx_torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import attribx  # noqa: E402
from attribx.demo import IMAGE_METHODS, PF_STEPS, TEXT_METHODS, TRANSFORMER_METHODS, WD_STEPS  # noqa: E402

pytestmark = pytest.mark.slow     # trains both demo models

FILES = ["relevance_digits.h5", "heatmaps_digits.png", "eval_pixel_flipping.h5", "pixel_flipping.png",
         "eval_spray.h5", "spray.png", "relevance_text.h5", "eval_word_deletion.h5", "word_deletion.png",
         "text_heatmaps.html", "text_heatmaps.png", "relevance_transformer.h5", "eval_word_deletion_transformer.h5",
         "word_deletion_transformer.png", "report.html"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from attribx.demo import run_demo
    out = tmp_path_factory.mktemp("demo")
    result = run_demo(str(out), n_images=150, n_sentences=300, progress_bar=False)
    return out, result


def test_torch_demo_writes_every_file(demo):
    import matplotlib.image
    out, result = demo
    assert result["backend"] == "torch"
    for name in FILES:
        assert (out / name).stat().st_size > 1000, name
    for name in FILES:
        if name.endswith(".png"):
            img = matplotlib.image.imread(io.BytesIO((out / name).read_bytes()), format="png")
            assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 0.05, name
    rel = attribx.open_relevance(str(out / "relevance_digits.h5"))
    assert list(rel.data_vars) == list(IMAGE_METHODS) and rel["lrp.epsilon"].shape == (150, 1, 8, 8)
    assert result["accuracy"] > 0.9 and (rel.prediction.values == rel.label.values).mean() > 0.9
    assert rel.attrs["backend"] == "torch"
    text = attribx.open_relevance(str(out / "relevance_text.h5"))
    assert list(text.data_vars) == list(TEXT_METHODS)
    assert text["lrp.epsilon"].dims == ("sample", "token") and text.sizes["sample"] == 300
    assert not text["lrp.epsilon"].values[text["padding"].values].any()      # padding gets no relevance
    assert result["text_accuracy"] > 0.9 and result["transformer_accuracy"] > 0.85


def test_torch_demo_evaluations_lrp_beats_random(demo):
    out, _ = demo
    pf = attribx.open_relevance(str(out / "eval_pixel_flipping.h5"))
    assert list(pf["method"].values) == list(IMAGE_METHODS) and pf["curve"].sizes["step"] == PF_STEPS + 1
    curve = pf["curve"].values
    np.testing.assert_allclose(pf["aopc"].values, (curve[..., :1] - curve).mean(-1), rtol=1e-5, atol=1e-6)
    aopc = pf["aopc"].mean("sample").to_series()
    for lrp in ("lrp.epsilon", "lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "lrp.epsilon_alpha2_beta1"):
        assert aopc[lrp] > aopc["random"] + 3, (lrp, aopc.to_dict())         # measured ≥ 18 vs 7.7
    wd = attribx.open_relevance(str(out / "eval_word_deletion.h5"))
    acc = wd["accuracy"].to_pandas()                                          # (method, step)
    assert acc.shape == (len(TEXT_METHODS), WD_STEPS + 1) and (acc[0] == 1.0).all()
    mean = acc.loc[:, 1:].mean(axis=1)
    assert mean["lrp.epsilon"] < mean["random"] - 0.2                       # measured 0.35 vs 0.74
    sp = attribx.open_relevance(str(out / "eval_spray.h5"))
    assert int(sp["cluster_size"].sum()) == 150 and sp.attrs["n_clusters"] >= 2
    wd = attribx.open_relevance(str(out / "eval_word_deletion_transformer.h5"))
    acc = wd["accuracy"].to_pandas()
    assert acc.shape == (len(TRANSFORMER_METHODS), WD_STEPS + 1) and (acc[0] == 1.0).all()
    mean = acc.loc[:, 1:].mean(axis=1)
    for other in ("gradient_x_input", "attention_rollout", "random"):
        assert mean["lrp.attn"] < mean[other], (other, mean.to_dict())
    rel = attribx.open_relevance(str(out / "relevance_transformer.h5"))
    assert list(rel.data_vars) == list(TRANSFORMER_METHODS)
    assert not rel["lrp.attn"].values[rel["padding"].values].any()


def test_torch_demo_report_shows_every_part(demo):
    out, result = demo
    page = (out / "report.html").read_text(encoding="utf-8")
    for part in ("Models", "Heatmaps", "Pixel flipping", "SpRAy", "Text: word deletion", "Text heatmaps",
                 "Transformer: word deletion and heatmaps", "Files"):
        assert f">{part}</h2>" in page, part
    assert "backend <b>torch</b>" in page and "stopped early" not in page
    assert "<th>AOPC</th>" in page and "sentiment BiLSTM" in page
    # heatmap grid, pixel-flipping curves, SpRAy, word deletion twice: the text heatmaps are inline HTML, once
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert 'alt="text heatmaps"' not in page
    labels = re.findall(r'class="attribx-caption"[^>]*>([^<]*)<', page)
    # 4 sentences × 2 methods of the BiLSTM, 3 × 3 of the transformer, once each
    assert len(labels) == 17 and len(set(labels)) == 17
    assert page.count('class="attribx-token"') > 20
    assert '<a href="text_heatmaps.html">' in page and '<a href="text_heatmaps.png">' in page
    pf = attribx.open_relevance(str(out / "eval_pixel_flipping.h5"))
    for m in IMAGE_METHODS:
        value = float(pf['aopc'].sel({'method': m}).mean())
        assert f'<td>{m}</td><td class="num">{value:.4f}</td>' in page, m
    # three models trained, three listed, the text says three
    models = page.split(">Models</h2>", 1)[1].split("<h2", 1)[0]
    assert "Three small models are trained" in models and models.count("<tr>") == 4
    assert "digits CNN" in models and "sentiment BiLSTM" in models and "sentiment transformer" in models
    # why lrp.epsilon's curve lies on gradient × input: said, and measured
    assert "LRP-ε equals gradient × input" in page and "stroke-shaped" not in page
    assert result["epsilon_vs_gradient_x_input"] < 0.1
    for name in FILES[:-1]:
        assert f'<td><a href="{name}">{name}</a></td>' in page, name
