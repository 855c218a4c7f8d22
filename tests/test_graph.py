"""The intermediate graph: builder, validation errors that name the node, summary, files, passes."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import Graph, GraphBuilder, GraphError, Node, Value


def small_cnn(rng):
    b = GraphBuilder("cnn")
    x = b.input("x", (3, 8, 8), layout="NCHW")
    h = b.relu(b.conv(x, rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4), padding="same", name="conv1"))
    h = b.max_pool(h, 2, name="pool1")
    h = b.flatten(h, name="flat")
    return b.build(b.linear(h, rng.normal(size=(10, 64)), name="fc"))


def test_builder_infers_shapes_and_layout(rng):
    g = small_cnn(rng)
    assert g["conv1"].shape == (None, 4, 8, 8)
    assert g["pool1"].shape == (None, 4, 4, 4)
    assert g["fc"].shape == (None, 10)
    assert g.input.dims == ("sample", "channel", "height", "width")
    assert g["conv1"].attrs["dilation"] == 1  # defaults filled in


def test_channel_last_layout_names():
    b = GraphBuilder()
    x = b.input("x", (8, 8, 3), layout="NHWC")
    g = b.build(b.transpose(x, (0, 3, 1, 2)))
    assert g.input.dims == ("sample", "height", "width", "channel")
    assert g[g.output].shape == (None, 3, 8, 8)


def test_summary_lists_nodes_shapes_and_params(rng):
    text = str(small_cnn(rng))
    lines = text.splitlines()
    assert any(line.split()[:2] == ["conv1", "conv"] and "(N, 4, 8, 8)" in line and line.rstrip().endswith("112")
               for line in lines)
    assert "fc" in text and "(N, 10)" in text and "640" in text
    assert "752 parameters" in text


@pytest.mark.parametrize("make, message", [
    (lambda: Graph([Value("x", (None, 3))], [Node("a", "relu", ("x",)), Node("a", "relu", ("a",))], ["a"]),
     "node name 'a' is used twice"),
    (lambda: Graph([Value("x", (None, 3))], [Node("a", "relu", ("b",)), Node("b", "relu", ("x",))], ["b"]),
     "node 'a': input 'b' is defined later"),
    (lambda: Graph([Value("x", (None, 3))], [Node("a", "relu", ("y",))], ["a"]),
     "node 'a': input 'y' is defined nowhere"),
    (lambda: Graph([Value("x", (None, 3))], [Node("a", "warp", ("x",))], ["a"]),
     "node 'a': unknown op 'warp'.*attribx_ops"),
    (lambda: Graph([Value("x", (None, 3))], [Node("fc", "linear", ("x",), params={"weight": np.ones((2, 4))})],
                   ["fc"]), "node 'fc': input has 3 features, weight expects 4"),
    (lambda: Graph([Value("x", (None, 3, 8, 8))],
                   [Node("c", "conv", ("x",), params={"weight": np.ones((2, 2, 3, 3))})], ["c"]),
     "node 'c': input has 3 channels, weight expects 2"),
    (lambda: Graph([Value("x", (None, 3))], [Node("a", "relu", ("x",), attrs={"alpha": 1})], ["a"]),
     r"node 'a' \(relu\): unknown attribute"),
    (lambda: Graph([Value("x", (None, 3))], [Node("a", "linear", ("x",))], ["a"]),
     r"node 'a' \(linear\): missing parameter"),
    (lambda: Graph([Value("x", (None, 6))], [Node("r", "reshape", ("x",), attrs={"shape": (4,)})], ["r"]),
     "node 'r': cannot reshape"),
    (lambda: Graph([Value("x", (None, 3))], [Node("a", "relu", ("x",))], ["zz"]),
     "output 'zz' is not a node"),
    (lambda: Graph([Value("x", (None, 3, 4))], [Node("a", "max_pool", ("x",), attrs={"kernel_size": 9})], ["a"]),
     "does not fit"),
])
def test_validation_errors_name_the_node(make, message):
    with pytest.raises(GraphError, match=message):
        make()


def test_save_load_roundtrip_and_fingerprint(rng, tmp_path):
    g = small_cnn(rng)
    path = tmp_path / "cnn.npz"
    g.save(path)
    h = attribx.load_model(str(path))
    assert h.fingerprint() == g.fingerprint()
    assert [n.name for n in h] == [n.name for n in g]
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(attribx.forward(g, x), attribx.forward(str(path), x))
    g2 = small_cnn(np.random.default_rng(99))
    assert g2.fingerprint() != g.fingerprint()


def test_load_model_errors(tmp_path):
    with pytest.raises(attribx.ModelLoadError, match="no such file"):
        attribx.load_model(str(tmp_path / "missing.onnx"))
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    with pytest.raises(attribx.ModelLoadError, match="not a model file"):
        attribx.load_model(str(bad))
    arrays = tmp_path / "arrays.npz"
    np.savez(arrays, a=np.ones(3))
    with pytest.raises(attribx.ModelLoadError, match="not a model file"):
        attribx.load_model(str(arrays))
    with pytest.raises(attribx.UnsupportedError, match="no installed backend translates a builtins.dict"):
        attribx.translate({"not": "a model"})


def test_fold_batch_norm_is_exact(rng):
    b = GraphBuilder()
    x = b.input("x", (3, 6, 6))
    h = b.conv(x, rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4), name="conv")
    h = b.batch_norm(h, rng.normal(size=4), rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4),
                     eps=0.01, name="bn")
    h = b.relu(h)
    g = b.build(b.linear(b.flatten(h), rng.normal(size=(3, 64)), name="fc"))
    folded = attribx.translate(g)
    assert "bn" not in folded and "bn" in g
    assert folded.meta["aliases"] == {"bn": "conv"}
    xs = rng.normal(size=(2, 3, 6, 6))
    np.testing.assert_allclose(attribx.forward(folded, xs), attribx.forward(g, xs, passes=False),
                               rtol=1e-10)
    # the folded batch norm's name still addresses its values: the relevance at the folded conv
    ds = attribx.explain(g, xs, "lrp.epsilon", target=0, layers=["bn", "conv"])
    np.testing.assert_array_equal(ds["bn"].values, ds["conv"].values)
    # LRP then sees one affine layer: the relevance equals the folded graph's
    r1 = attribx.explain(g, xs, "lrp.epsilon", target=0)
    r2 = attribx.explain(folded, xs, "lrp.epsilon", target=0)
    np.testing.assert_allclose(r1.values, r2.values, rtol=1e-10)


def test_fold_pad_into_conv_gives_conv_padding_semantics():
    """An explicit zero pad before a conv (Keras ZeroPadding2D) becomes the conv's own padding: same
    forward, and input-independent rules (flat) see the padding as torch-style conv padding."""
    import attribx
    from attribx.passes import fold_pad_into_conv
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3))
    b = GraphBuilder("padded")
    h = b.pad(b.input("x", (3, 7, 7)), [(1, 2), (0, 1)], name="pad")
    padded = b.build(b.conv(h, w, stride=2, padding=[(0, 1), (1, 0)], name="conv"))
    b2 = GraphBuilder("own")
    ref = b2.build(b2.conv(b2.input("x", (3, 7, 7)), w, stride=2, padding=[(1, 3), (1, 1)], name="conv"))
    folded = fold_pad_into_conv(padded)
    assert [n.op for n in folded.nodes] == ["conv"] and folded.meta["folded_pads"] == ["pad"]
    x = rng.normal(size=(2, 3, 7, 7))
    np.testing.assert_allclose(attribx.forward(folded, x), attribx.forward(padded, x), rtol=1e-12)
    np.testing.assert_allclose(attribx.explain(folded, x, "lrp.flat", target=0).values,
                               attribx.explain(ref, x, "lrp.flat", target=0).values, rtol=1e-12)
    with pytest.raises(attribx.MethodError, match="'pad' was a zero padding.*fold_pad_into_conv"):
        attribx.explain(folded, x, "lrp.flat", layers=["pad"])
    # a pad that is not zero, or that another node also reads, stays
    b3 = GraphBuilder("kept")
    h = b3.pad(b3.input("x", (3, 7, 7)), [(1, 1), (1, 1)], value=1.0, name="pad")
    kept = b3.build(b3.conv(h, w, name="conv"))
    assert fold_pad_into_conv(kept) is kept
