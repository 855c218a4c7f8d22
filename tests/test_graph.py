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


def _conv1d_as_exported(w, bias):
    """tf2onnx's Conv1D: channels-last input, unsqueeze, transpose, conv without bias, transpose back,
    squeeze, then the bias added over the last axis."""
    b = GraphBuilder("exported")
    x = b.input("x", (9, 3), layout="NLC")
    h = b.reshape(x, (1, 9, 3), name="unsqueeze")
    h = b.transpose(h, (0, 3, 1, 2), name="to_cf")
    h = b.conv(h, w[:, :, None, :], name="conv")
    h = b.transpose(h, (0, 2, 3, 1), name="to_cl")
    h = b.reshape(h, (7, 4), name="squeeze")
    h = b.add(h, b.constant(bias, name="bias"), name="bias_add")
    return b.build(b.linear(b.flatten(b.relu(h, name="relu")), np.ones((2, 28)) * 0.1, name="fc"))


def test_fold_bias_add_folds_a_bias_added_after_rearrangements():
    """The exported conv's bias goes back into the conv (same forward, and LRP-ε with the bias in z equals
    the native layer's), also for MatMul-then-Add linears; a constant that is not one value per output
    channel stays an addition."""
    import attribx
    from attribx.passes import fold_bias_add
    rng = np.random.default_rng(1)
    w, bias = rng.normal(size=(4, 3, 3)), rng.normal(size=4)
    g = _conv1d_as_exported(w, bias)
    folded = fold_bias_add(g)
    assert "bias_add" not in folded and "bias" not in folded
    np.testing.assert_array_equal(folded["conv"].params["bias"], bias)
    assert folded.meta["aliases"]["bias_add"] == "squeeze"
    x = rng.normal(size=(2, 9, 3))
    np.testing.assert_allclose(attribx.forward(folded, x, passes=False), attribx.forward(g, x, passes=False),
                               rtol=1e-12)
    # reference: the same network with a native channels-first conv that has the bias
    b = GraphBuilder("native")
    h = b.transpose(b.input("x", (9, 3), layout="NLC"), (0, 2, 1), name="to_cf")
    h = b.transpose(b.conv(h, w, bias, name="conv"), (0, 2, 1), name="to_cl")
    native = b.build(b.linear(b.flatten(b.relu(h)), np.ones((2, 28)) * 0.1, name="fc"))
    want = attribx.explain(native, x, "lrp.epsilon", target=0).values
    np.testing.assert_allclose(attribx.explain(g, x, "lrp.epsilon", target=0).values, want, rtol=1e-10)
    # one value per position, not per channel: kept
    g2 = _conv1d_as_exported(w, rng.normal(size=(7, 4)))
    assert fold_bias_add(g2) is g2
    # a linear on a sequence with its bias added afterwards
    b = GraphBuilder("matmul_add")
    h = b.linear(b.input("x", (5, 3)), rng.normal(size=(6, 3)), name="matmul")
    lin = b.build(b.add(b.constant(np.arange(6.0), name="c"), h, name="add"))
    folded = fold_bias_add(lin)
    assert [n.op for n in folded.nodes] == ["linear"] and folded.outputs == ["matmul"]
    np.testing.assert_array_equal(folded["matmul"].params["bias"], np.arange(6.0))


def test_first_and_last_follow_the_data_flow(rng):
    """Two parallel convs that both read the input are both the first layer, whichever is listed first."""
    from attribx import composite as C
    from attribx.plugins import registry
    w, w2, w3 = rng.normal(size=(2, 1, 3, 3)), rng.normal(size=(2, 4, 3, 3)), rng.normal(size=(3, 32))
    graphs = []
    for order in ((0, 1), (1, 0)):
        b = GraphBuilder("parallel")
        x = b.input("x", (1, 6, 6))
        convs = {i: b.conv(x, w, padding=1, name=f"conv{i}") for i in order}
        h = b.conv(b.relu(b.concat(convs[0], convs[1])), w2, name="conv_after")
        graphs.append(b.build(b.linear(b.flatten(h), w3, name="fc")))
    for g in graphs:
        pos = C.GraphPositions.of(g, registry().ops)
        assert pos.first["layer"] == {"conv0", "conv1"} and pos.first["conv"] == {"conv0", "conv1"}
        assert pos.last["layer"] == {"fc"} and pos.last["conv"] == {"conv_after"}
    xs = rng.normal(size=(2, 1, 6, 6))
    a, b_ = (attribx.explain(g, xs, "lrp.epsilon_plus_flat", target=0).values for g in graphs)
    np.testing.assert_allclose(a, b_, rtol=1e-12)


def test_input_channel_axis_is_traced_through_transposes():
    from attribx.axes import input_channel_axis
    rng = np.random.default_rng(0)
    g = _conv1d_as_exported(rng.normal(size=(4, 3, 3)), rng.normal(size=4))
    assert input_channel_axis(g) == 2
    b = GraphBuilder("cf")
    plain = b.build(b.conv(b.input("x", (3, 5, 5)), rng.normal(size=(2, 3, 3, 3))))
    assert input_channel_axis(plain) == 1
    b = GraphBuilder("mlp")
    assert input_channel_axis(b.build(b.linear(b.input("x", (3,)), np.ones((2, 3))))) is None


def _loads_at_odd_addresses(obj):
    """Pickle ``obj`` with protocol 5 and load it with every out-of-band buffer one byte past an aligned
    address, as dask's message frames can hand them back."""
    import pickle
    buffers = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    odd = []
    for pb in buffers:
        raw = pb.raw()
        store = bytearray(len(raw) + 1)
        store[1:] = raw
        odd.append(memoryview(store)[1:])
    return pickle.loads(data, buffers=odd)


def test_unpickled_graph_parameters_are_aligned_whatever_the_transport_gives(rng):
    g = small_cnn(rng)
    for n in g.nodes:
        n.params = {k: v.astype(np.float32) for k, v in n.params.items()}
    w = g["fc"].params["weight"]
    # the transport really hands back unaligned views (the cause of the 1-ulp differences on dask workers)
    raw = _loads_at_odd_addresses(w)
    assert not raw.flags.aligned or raw.ctypes.data % 16
    g2 = _loads_at_odd_addresses(g)
    for n, n2 in zip(g.nodes, g2.nodes):
        for k, p in n.params.items():
            q = n2.params[k]
            assert q.flags.aligned and q.ctypes.data % attribx.graph.ALIGNMENT == 0, (n.name, k)
            assert q.dtype == p.dtype and np.array_equal(q, p)
    x = rng.normal(size=(5, 3, 8, 8)).astype(np.float32)
    assert np.array_equal(attribx.forward(g2, x, engine="numpy"), attribx.forward(g, x, engine="numpy"))


def test_aligned_array_copies_only_what_is_misplaced():
    a = np.arange(12, dtype=np.float32)
    assert attribx.graph.aligned_array(a) is a
    store = np.zeros(13 * 4 + 1, dtype=np.uint8)
    odd = store[1:49].view(np.float32)
    odd[:] = np.arange(12)
    fixed = attribx.graph.aligned_array(odd)
    assert fixed is not odd and fixed.ctypes.data % attribx.graph.ALIGNMENT == 0 and np.array_equal(fixed, a)
