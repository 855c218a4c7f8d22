"""Token-level relevance: token strings and padding as coords, per-token sums of embedded inputs, HDF5."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import attribx
from attribx import GraphBuilder

R = np.random.default_rng(11)
VOCAB, E, T, C = 9, 4, 6, 3
W = R.normal(size=(VOCAB, E))
HEAD = R.normal(size=(C, E))
FLAT = R.normal(size=(C, T * E)) * 0.5
IDS = R.integers(1, VOCAB, size=(4, T))
IDS[0, 4:] = IDS[2, 3:] = 0                       # right padding with id 0
WORDS = np.array([f"w{i}" for i in range(VOCAB)])
WORDS[0] = "<pad>"
TEXT = WORDS[IDS]


def ids_graph(head="mean"):
    """ids -> embedding -> mean over tokens -> linear, or -> flatten -> linear; zero biases."""
    b = GraphBuilder("ids")
    e = b.add_node("embedding", b.input("ids", (T,), layout="NT", dtype="int64"), name="emb", params={"weight": W})
    if head == "mean":
        b.linear(b.reduce_mean(e, axes=1), HEAD, np.zeros(C), name="head")
    else:
        b.linear(b.flatten(e), FLAT, np.zeros(C), name="head")
    return b.build()


def embedded_graph(layout="NTE"):
    """(N, T, E) floats (or (N, E, T) for layout "NET") -> flatten -> linear; the same function as
    ``ids_graph("flat")`` on looked-up vectors."""
    b = GraphBuilder("embedded")
    x = b.input("e", (E, T) if layout == "NET" else (T, E), layout=layout, dtype="float64")
    if layout == "NET":
        x = b.transpose(x, (0, 2, 1))
    b.linear(b.flatten(x), FLAT, np.zeros(C), name="head")
    return b.build()


def embedded(layout="NTE"):
    return W[IDS].transpose(0, 2, 1) if layout == "NET" else W[IDS]


def test_token_strings_become_a_coord_on_sample_and_token():
    plain = attribx.explain(ids_graph(), IDS, "lrp.epsilon")
    rel = attribx.explain(ids_graph(), IDS, "lrp.epsilon", tokens=TEXT.tolist())
    assert rel.dims == ("sample", "token")
    assert rel.coords["token_text"].dims == ("sample", "token")
    np.testing.assert_array_equal(rel.coords["token_text"].values, TEXT)
    np.testing.assert_array_equal(rel.values, plain.values)
    xr.testing.assert_identical(rel, attribx.explain(ids_graph(), IDS, "lrp.epsilon", tokens=TEXT))
    assert "padding" not in rel.coords


def test_pad_id_zeroes_the_padding_and_marks_it():
    plain = attribx.explain(ids_graph(), IDS, "lrp.epsilon")
    rel = attribx.explain(ids_graph(), IDS, "lrp.epsilon", pad_id=0, batch_size=3)
    pad = IDS == 0
    assert np.abs(plain.values[pad]).min() > 0          # the model does give the padding relevance
    assert (rel.values[pad] == 0).all() and not np.signbit(rel.values[pad]).any()
    np.testing.assert_array_equal(rel.values[~pad], plain.values[~pad])
    np.testing.assert_array_equal(rel.coords["padding"].values, pad)
    assert rel.coords["padding"].dims == ("sample", "token") and rel.attrs["pad_id"] == 0


def test_a_padding_mask_zeroes_whole_tokens_of_embedded_inputs():
    pad = IDS == 0
    plain = attribx.explain(embedded_graph(), embedded(), "lrp.epsilon")
    rel = attribx.explain(embedded_graph(), embedded(), "lrp.epsilon", padding=pad, tokens=TEXT)
    assert rel.dims == ("sample", "token", "embedding")
    assert (rel.values[pad] == 0).all()
    np.testing.assert_array_equal(rel.values[~pad], plain.values[~pad])
    np.testing.assert_array_equal(rel.coords["padding"], pad)


@pytest.mark.parametrize("layout", ["NTE", "NET", None])
@pytest.mark.parametrize("method", ["lrp.epsilon", "gradient", "gradient_x_input"])
def test_per_token_sums_the_embedding_axis(layout, method):
    g, x = embedded_graph(layout), embedded(layout)
    full = attribx.explain(g, x, method)
    rel = attribx.explain(g, x, method, per_token=True, tokens=TEXT)
    assert rel.dims == ("sample", "token") and rel.attrs["per_token"] is True
    axis = 1 if layout == "NET" else 2                   # unlabelled (N, T, E) reads as its dims say nothing
    np.testing.assert_allclose(rel.values, full.values.sum(axis=axis), rtol=1e-12)


def test_per_token_embedded_equals_the_token_id_model():
    for method in ("lrp.epsilon", "lrp.z_plus", "gradient"):
        ids = attribx.explain(ids_graph("flat"), IDS, method, target=1)
        emb = attribx.explain(embedded_graph(), embedded(), method, target=1, per_token=True)
        np.testing.assert_allclose(ids.values, emb.values, rtol=1e-10, atol=1e-14)
    # token ids already give one score per token: per_token changes nothing there
    np.testing.assert_array_equal(attribx.explain(ids_graph(), IDS, per_token=True).values,
                                  attribx.explain(ids_graph(), IDS).values)


@pytest.mark.parametrize("head", ["mean", "flat"])
def test_lrp_epsilon_conserves_the_score_down_to_the_tokens(head):
    # epsilon absorbs about epsilon·Σ|w| per layer; the mean's own stabiliser (1e-6, which lrp.epsilon
    # does not expose) absorbs up to 1e-6·Σ|w| more, whatever epsilon is
    g = ids_graph(head)
    ds = attribx.explain(g, IDS, "lrp.epsilon", target=2, tokens=TEXT, epsilon=1e-9, conservation=True)
    rel = ds["relevance"]
    assert rel.dtype == np.float64
    np.testing.assert_allclose(rel.sum("token"), ds["conservation"].sel(node="ids"), rtol=1e-13)
    atol = 1e-6 * (1 + np.abs(HEAD[2]).sum()) if head == "mean" else 1e-6
    np.testing.assert_allclose(rel.sum("token").values, attribx.forward(g, IDS)[:, 2], rtol=0, atol=atol)
    x = embedded()
    rel = attribx.explain(embedded_graph(), x, "lrp.epsilon", target=2, per_token=True, epsilon=1e-9)
    np.testing.assert_allclose(rel.sum("token").values, attribx.forward(embedded_graph(), x)[:, 2], rtol=0,
                               atol=1e-6)


def test_datasets_with_layers_and_conservation_carry_the_token_coords():
    ds = attribx.explain(ids_graph(), IDS, "lrp.epsilon", tokens=TEXT, pad_id=0, layers=["emb"],
                         conservation=True)
    assert ds["relevance"].dims == ("sample", "token")
    assert ds["emb"].dims == ("sample", "emb:1", "emb:2") and "token_text" not in ds["emb"].coords
    np.testing.assert_array_equal(ds["relevance"].coords["token_text"], TEXT)
    assert "token_text" not in ds["conservation"].coords


def test_hdf5_round_trip_keeps_token_text_and_padding(tmp_path):
    rel = attribx.explain(ids_graph(), IDS, "lrp.epsilon", tokens=TEXT, pad_id=0)
    attribx.save(rel, tmp_path / "r.h5")
    back = attribx.open_relevance(tmp_path / "r.h5")
    xr.testing.assert_identical(back, rel)
    assert back.coords["padding"].dtype == bool and back.coords["token_text"].dtype == TEXT.dtype
    ds = attribx.explain(ids_graph(), IDS, "lrp.epsilon", tokens=TEXT, pad_id=0, conservation=True)
    attribx.save(ds, tmp_path / "d.h5")
    xr.testing.assert_identical(attribx.open_relevance(tmp_path / "d.h5"), ds)
    # appended batches may hold longer words
    longer = np.where(IDS == 0, "<pad>", "a-much-longer-word")
    more = attribx.explain(ids_graph(), IDS, "lrp.epsilon", tokens=longer, pad_id=0, sample=np.arange(4, 8))
    attribx.save(more, tmp_path / "r.h5", mode="a")
    both = attribx.open_relevance(tmp_path / "r.h5")
    np.testing.assert_array_equal(both.coords["token_text"].values, np.concatenate([TEXT, longer]))
    np.testing.assert_array_equal(both.coords["padding"].values, np.concatenate([IDS == 0, IDS == 0]))


def test_bad_token_options_are_clear_errors():
    g, ge = ids_graph(), embedded_graph()
    cases = [
        (g, IDS, {"tokens": TEXT[:3].tolist()}, "3 rows for 4 samples"),
        (g, IDS, {"tokens": TEXT[:, :5]}, r"shape \(4, 5\).*\(4, 6\)"),
        (g, IDS, {"tokens": [row[:5] for row in TEXT.tolist()]}, "row 0 has 5 entries.*6 tokens"),
        (g, IDS, {"tokens": IDS.tolist()}, "must be str"),
        (g, IDS, {"tokens": "w1 w2"}, "list of lists"),
        (g, IDS, {"pad_id": 0, "padding": IDS == 0}, "either pad_id"),
        (g, IDS, {"pad_id": True}, "int token id"),
        (g, IDS, {"padding": (IDS == 0).astype(int)}, "boolean"),
        (g, IDS, {"padding": np.zeros((4, 5), bool)}, r"shape \(4, 5\)"),
        (g, IDS, {"per_token": "yes"}, "True or False"),
        (ge, embedded(), {"pad_id": 0}, "padding="),
        (embedded_graph(None), embedded(), {"tokens": TEXT}, "per_token=True"),
    ]
    for graph, x, kwargs, match in cases:
        with pytest.raises(attribx.InputError, match=match):
            attribx.explain(graph, x, "lrp.epsilon", **kwargs)
    # sensitivity sums the channel axis, which an unlabelled (N, T, E) input has where its tokens are
    with pytest.raises(attribx.MethodError, match="token axis"):
        attribx.explain(embedded_graph(None), embedded(), "sensitivity", per_token=True)
