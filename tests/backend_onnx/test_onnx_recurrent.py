"""ONNX LSTM and GRU nodes (attribx_onnx.recurrent), built with onnx.helper: no torch, no TensorFlow.

Forward passes are compared with onnxruntime for every direction, layout, bias and initial-state variant,
GRU's two linear_before_reset forms, sequence_lens (constant, and computed from padded token ids), and the
sequence-first tensors around the nodes as torch.onnx's two exporters and tf2onnx write them (Transpose,
Shape-computed Reshape, Reshape [0, 0, -1], Gather/Slice/Squeeze/Concat on the time and direction axes).
The SST BiLSTM written as one bidirectional ONNX LSTM node gives Arras et al.'s LRP (arras_reference).
What is refused names the node.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

from onnx import TensorProto, helper  # noqa: E402

import attribx  # noqa: E402
from attribx.plugins import registry  # noqa: E402
from attribx.recurrent import reorder_gates  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from arras_reference import arras_lrp, sst_net  # noqa: E402
from onnx_builders import CURRENT, assert_matches, model, run_ort, tensor, weights  # noqa: E402

node = helper.make_node
ENGINES = ["numpy"] + (["torch"] if "torch" in registry().engines else [])    # torch: where installed
GATES = {"LSTM": 4, "GRU": 3}
DIRS = {"forward": 1, "reverse": 1, "bidirectional": 2}


def rnn_model(rng, op="LSTM", direction="forward", layout=0, T=5, E=3, H=4, bias=True, h0=None, c0=None,
              lens=None, opset=17, extra=None, inits_extra=(), **attrs):
    """x (N, T, E) -> [Transpose] -> op -> outputs y (N, T, dirs, H), yh (N, dirs, H)[, yc], batch first.

    ``h0``/``c0``: initial-state initializers (dirs, N, H) (layout 0) or (N, dirs, H); ``lens`` the name of a
    sequence_lens tensor (an initializer in ``inits_extra`` or computed by ``extra`` nodes)."""
    dirs, g = DIRS[direction], GATES[op]
    inits = [("W", weights(rng, dirs, g * H, E)), ("R", weights(rng, dirs, g * H, H))]
    if bias:
        inits.append(("B", weights(rng, dirs, 2 * g * H)))
    inits += list(inits_extra)
    ins = ["X", "W", "R", "B" if bias else "", lens or ""]
    for name, value in (("h0", h0), ("c0", c0)):
        if value is not None:
            inits.append((name, value))
    ins.append("h0" if h0 is not None else "")
    if op == "LSTM":
        ins.append("c0" if c0 is not None else "")
    while ins and not ins[-1]:
        ins.pop()
    if opset >= 14:
        attrs["layout"] = layout
    nodes = list(extra or [])
    if layout == 0:
        nodes.append(node("Transpose", ["x"], ["X"], name="to_seq_first", perm=[1, 0, 2]))
    else:
        nodes.append(node("Identity", ["x"], ["X"], name="x_id"))
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    nodes.append(node(op, ins, outs, name="rnn", direction=direction, hidden_size=H, **attrs))
    names = ["y", "yh"] + (["yc"] if op == "LSTM" else [])
    for o, name in zip(outs, names):
        if layout == 1:
            nodes.append(node("Identity", [o], [name], name=f"{name}_out"))
        else:
            perm = [2, 0, 1, 3] if o == "Y" else [1, 0, 2]
            nodes.append(node("Transpose", [o], [name], name=f"{name}_out", perm=perm))
    return model(nodes, inits, (T, E), opset=opset, outputs=names)


def _x(rng, n=3, T=5, E=3):
    return rng.normal(size=(n, T, E)).astype(np.float32)


def seq_first_equivalent(m):
    """The same model with each layout=1 LSTM/GRU written as layout 0 between Transposes, as the ONNX spec
    defines layout 1 (onnxruntime's CPU kernels run layout 0 only): the reference for layout 1."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    nodes = []
    for n in m.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type not in GATES or not attrs.get("layout"):
            nodes.append(n)
            continue
        ins, outs = list(n.input), list(n.output)
        for i in [0] + [j for j in (5, 6) if j < len(ins) and ins[j]]:
            nodes.append(node("Transpose", [ins[i]], [f"{ins[i]}__seq_first"], perm=[1, 0, 2]))
            ins[i] = f"{ins[i]}__seq_first"
        renamed = [f"{o}__seq_first" if o else "" for o in outs]
        nodes.append(node(n.op_type, ins, renamed, name=n.name, **{**attrs, "layout": 0}))
        for k, (o, r) in enumerate(zip(outs, renamed)):
            if o:
                nodes.append(node("Transpose", [r], [o], perm=[2, 0, 1, 3] if k == 0 else [1, 0, 2]))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def reference(m, x):
    return run_ort(seq_first_equivalent(m), x)


def assert_all_outputs(m, x, tol=1e-5):
    """Every output of the translated graph equals onnxruntime's, on numpy (and torch where installed)."""
    g = attribx.translate(m, input_shape=x.shape[1:])
    for k, want in enumerate(reference(m, x)):
        for engine in ENGINES:
            ours = np.asarray(attribx.forward(g, x, engine=engine, output=g.outputs[k]), dtype=np.float64)
            assert ours.shape == want.shape, (k, ours.shape, want.shape)
            err = relative_error(ours, want)
            assert err <= tol, f"output {k}, {engine}: relative error {err:.1e}"
    return g


# ----------------------------------------------------------------------------------------------
# forward equals onnxruntime


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_every_direction_and_layout(rng, op, direction, layout):
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    m = rnn_model(rng, op, direction, layout, **extra)
    g = assert_all_outputs(m, _x(rng))
    fwd = "reverse" if direction == "reverse" else "forward"
    assert g[f"rnn/{fwd}/t0/gates"].op == "linear" and g["rnn"].op in ("reshape", "concat")
    assert g.input.dims == ("sample", "token", "embedding")


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_gru_reset_forms_and_biases(rng, linear_before_reset, bias):
    m = rnn_model(rng, "GRU", "bidirectional", 0, bias=bias, linear_before_reset=linear_before_reset)
    g = assert_all_outputs(m, _x(rng))
    # linear_before_reset=0 multiplies h by r before R_h (one linear over [x, r*h]); 1 multiplies R_h h + Rb_h
    assert ("rnn/forward/t0/r*h" in g) == (not linear_before_reset)
    assert ("rnn/forward/t0/r*n_h" in g) == bool(linear_before_reset)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("layout", [0, 1])
def test_constant_initial_states(rng, op, layout):
    n, H = 3, 4
    per_dir = rng.normal(size=(2, H)).astype(np.float32)

    def states(v):
        s = np.broadcast_to(v[:, None, :], (2, n, H))
        return np.ascontiguousarray(s if layout == 0 else s.transpose(1, 0, 2))
    c0 = states(rng.normal(size=(2, H)).astype(np.float32)) if op == "LSTM" else None
    m = rnn_model(rng, op, "bidirectional", layout, h0=states(per_dir), c0=c0)
    g = assert_all_outputs(m, _x(rng, n))
    np.testing.assert_array_equal(g["rnn/reverse/h0"].params["value"], per_dir[1])


def test_initial_states_computed_from_the_batch_size_like_the_exporters(rng):
    """torch.onnx writes Expand(0, [dirs, Shape(x)[0], H]) (a batch-dependent constant): zeros per sample."""
    extra = [node("Shape", ["x"], ["shape"], name="shape", start=0, end=1),
             node("Concat", ["two", "shape", "four"], ["dims"], name="dims", axis=0),
             node("Expand", ["half", "dims"], ["h0"], name="h0")]
    inits = [("two", np.array([2])), ("four", np.array([4])), ("half", np.array(0.5, np.float32))]
    m = rnn_model(rng, "LSTM", "bidirectional", 0, extra=extra, inits_extra=inits)
    lstm = m.graph.node[-4]
    lstm.input.extend(["", "h0", "h0"])          # sequence_lens left out
    g = assert_all_outputs(m, _x(rng))
    np.testing.assert_array_equal(g["rnn/forward/c0"].params["value"], np.full(4, 0.5, np.float32))


@pytest.mark.parametrize("opset", [9, 13, 14, CURRENT])
def test_opsets(rng, opset):
    """Opset 9 (LSTM-7 semantics) is converted to 13 first; layout exists from opset 14."""
    m = rnn_model(rng, "LSTM", "bidirectional", 0, opset=opset)
    assert_all_outputs(m, _x(rng))


def test_default_activations_written_out_are_accepted(rng):
    """tf2onnx writes activations=[Sigmoid, Tanh, Tanh] (per direction)."""
    m = rnn_model(rng, "LSTM", "bidirectional", 0, activations=["Sigmoid", "Tanh", "Tanh"] * 2)
    assert_all_outputs(m, _x(rng))


def test_any_batch_size(rng):
    m = rnn_model(rng, "GRU", "bidirectional", 0, linear_before_reset=1)
    g = attribx.translate(m, input_shape=(5, 3))
    for n in (1, 4):
        x = _x(rng, n)
        ours = attribx.forward(g, x, engine="numpy", output=g.outputs[0])
        assert relative_error(ours, run_ort(m, x)[0]) <= 1e-5


# ----------------------------------------------------------------------------------------------
# sequence_lens


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_constant_sequence_lens(rng, op, direction):
    """One length for every sample (< T): outputs beyond it are zero, reverse starts at step length-1."""
    n = 3
    m = rnn_model(rng, op, direction, 0, lens="lens", inits_extra=[tensor("lens", np.full(n, 3), np.int32)],
                  **({"linear_before_reset": 1} if op == "GRU" else {}))
    g = assert_all_outputs(m, _x(rng, n))
    assert g["rnn:mask"].op == "length_mask"
    y = attribx.forward(g, _x(rng, n), engine="numpy", output=g.outputs[0])
    assert np.all(y[:, 3:] == 0)


def _token_model(rng, op, direction, layout, T=6, V=10, E=3, H=4, cast_first=True):
    """ids (N, T) -> embedding -> op with sequence_lens = ReduceSum(Cast(Not(Equal(ids, 0)))) (or the Cast
    after the ReduceSum); the outputs as in rnn_model."""
    table = weights(rng, V, E)
    lens_nodes = [node("Equal", ["ids", "pad"], ["is_pad"], name="is_pad"),
                  node("Not", ["is_pad"], ["is_token"], name="is_token")]
    if cast_first:
        lens_nodes += [node("Cast", ["is_token"], ["tok32"], name="tok32", to=TensorProto.INT32),
                       node("ReduceSum", ["tok32", "ax1"], ["lens"], name="lens", keepdims=0)]
    else:
        lens_nodes += [node("Cast", ["is_token"], ["tokf"], name="tokf", to=TensorProto.FLOAT),
                       node("ReduceSum", ["tokf", "ax1"], ["lensf"], name="lensf", keepdims=0),
                       node("Cast", ["lensf"], ["lens"], name="lens", to=TensorProto.INT32)]
    extra = [node("Gather", ["table", "ids"], ["x"], name="embed")] + lens_nodes
    m = rnn_model(rng, op, direction, layout, T=T, E=E, H=H, lens="lens", extra=extra,
                  inits_extra=[("table", table), ("pad", np.array(0)), ("ax1", np.array([1]))],
                  **({"linear_before_reset": 1} if op == "GRU" else {}))
    m.graph.input[0].CopyFrom(helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"]))
    return m


def _padded_ids(rng, lengths, T=6, V=10):
    ids = np.zeros((len(lengths), T), np.int64)
    for k, n in enumerate(lengths):
        ids[k, :n] = rng.integers(1, V, size=n)
    return ids


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_sequence_lens_computed_from_padded_ids(rng, op, direction, layout):
    m = _token_model(rng, op, direction, layout, cast_first=layout == 0)
    ids = _padded_ids(rng, [6, 3, 1, 4])
    g = assert_all_outputs(m, ids)
    assert g.input.dtype == "int64"
    y = attribx.forward(g, ids, engine="numpy", output=g.outputs[0])
    assert np.all(y[1, 3:] == 0) and np.all(y[2, 1:] == 0)


def test_padded_batch_relevance_equals_each_sequence_alone(rng):
    """LRP-ε of a padded bidirectional LSTM (masked by sequence_lens) equals that of each sequence run alone
    with its own length, through a different graph without a mask; padding gets nothing."""
    T = 6
    m = _token_model(rng, "LSTM", "bidirectional", 0, T=T)
    # explain y_h's first unit of each direction: the model's second output, made the only one
    head = helper.make_node("Gemm", ["yh_flat", "w_head"], ["score"], name="head", transB=1)
    flat = helper.make_node("Reshape", ["yh", "flat_shape"], ["yh_flat"], name="flat")
    m.graph.node.extend([flat, head])
    m.graph.initializer.extend([tensor("flat_shape", np.array([0, -1])), tensor("w_head", weights(rng, 2, 8))])
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, None))
    lengths = [6, 3, 1]
    ids = _padded_ids(rng, lengths, T)
    rel = attribx.explain(m, ids, "lrp.epsilon", target=1, engine="numpy", epsilon=1e-3)
    for k, n in enumerate(lengths):
        alone = attribx.explain(m, ids[k:k + 1, :n] if n < T else ids[k:k + 1], "lrp.epsilon", target=1,
                                engine="numpy", epsilon=1e-3)
        assert np.abs(alone.values[0]).max() > 1e-3                 # something to compare
        assert relative_error(rel.values[k, :n], alone.values[0, :n]) <= 1e-5
        assert np.all(rel.values[k, n:] == 0)


# ----------------------------------------------------------------------------------------------
# the exporters' sequence-first tensors around the nodes


def _stack_model(rng, style, op="LSTM", T=5, E=3, H=4):
    """Two bidirectional layers and a head on out[:, -1] and h_n[-1], written as the exporters write them:
    ``dynamo`` (Reshape target from Shape of a sequence-first tensor), ``legacy`` (Reshape [0, 0, -1]) or
    ``tf2onnx`` (Slice/Squeeze on the time axis, a forward/backward Slice on the direction axis)."""
    g = GATES[op]
    inits = []
    nodes = [node("Transpose", ["x"], ["X"], name="/rnn/Transpose", perm=[1, 0, 2])]
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    seq, hs = "X", []
    for layer, e in enumerate((E, 2 * H)):
        w, r, b = f"W{layer}", f"R{layer}", f"B{layer}"
        inits += [(w, weights(rng, 2, g * H, e)), (r, weights(rng, 2, g * H, H)), (b, weights(rng, 2, 2 * g * H))]
        y, yh = f"Y{layer}", f"Yh{layer}"
        nodes.append(node(op, [seq, w, r, b], [y, yh], name=f"/rnn/{op}_{layer}", direction="bidirectional",
                          hidden_size=H, **extra))
        hs.append(yh)
        t = f"Yt{layer}"
        nodes.append(node("Transpose", [y], [t], name=f"/rnn/Transpose_{layer}", perm=[0, 2, 1, 3]))  # (T, N, 2, H)
        seq = f"seq{layer}"
        if style == "dynamo":
            nodes += [node("Shape", [t], [f"shape{layer}"], name=f"/rnn/Shape_{layer}"),
                      node("Slice", [f"shape{layer}", "s0", "s2"], [f"tn{layer}"], name=f"/rnn/tn_{layer}"),
                      node("Slice", [f"shape{layer}", "s2", "s4"], [f"dh{layer}"], name=f"/rnn/dh_{layer}"),
                      node("ReduceProd", [f"dh{layer}"], [f"dhp{layer}"], name=f"/rnn/dhp_{layer}", keepdims=1),
                      node("Concat", [f"tn{layer}", f"dhp{layer}"], [f"target{layer}"], name=f"/rnn/target_{layer}",
                           axis=0),
                      node("Reshape", [t, f"target{layer}"], [seq], name=f"/rnn/Reshape_{layer}")]
        else:
            nodes.append(node("Reshape", [t, "copy2"], [seq], name=f"/rnn/Reshape_{layer}"))  # (T, N, 2H)
    if style == "tf2onnx":     # Keras: the forward half's last step and the backward half's first step
        nodes += [node("Slice", ["Y1", "s0", "s1", "s1"], ["fwd"], name="fwd"),     # (T, 1, N, H)
                  node("Squeeze", ["fwd", "s1"], ["fwd_s"], name="fwd_s"),
                  node("Slice", ["fwd_s", "m1", "big", "s0"], ["fwd_last"], name="fwd_last"),
                  node("Squeeze", ["fwd_last", "s0"], ["f"], name="f"),                 # (N, H)
                  node("Slice", ["Y1", "s1", "s2", "s1"], ["bwd"], name="bwd"),
                  node("Squeeze", ["bwd", "s1"], ["bwd_s"], name="bwd_s"),
                  node("Slice", ["bwd_s", "s0", "s1", "s0"], ["bwd_first"], name="bwd_first"),
                  node("Squeeze", ["bwd_first", "s0"], ["b"], name="b"),
                  node("Concat", ["f", "b"], ["feat"], name="feat", axis=1)]
    else:                      # torch: out[:, -1] after Transpose back, and h_n[-1] of the concatenated Y_h
        nodes += [node("Transpose", [seq], ["out"], name="/Transpose", perm=[1, 0, 2]),
                  node("Gather", ["out", "m1s"], ["last"], name="/Gather", axis=1),           # (N, 2H)
                  node("Concat", hs, ["h_n"], name="/rnn/Concat", axis=0),                   # (4, N, H)
                  node("Gather", ["h_n", "m1s"], ["h_last"], name="/Gather_1", axis=0),       # (N, H)
                  node("Concat", ["last", "h_last"], ["feat"], name="/Concat", axis=1)]
    width = 2 * H if style == "tf2onnx" else 3 * H
    nodes.append(node("Gemm", ["feat", "fc"], ["y"], name="/fc/Gemm", transB=1))
    inits += [("fc", weights(rng, 3, width)), ("s0", np.array([0])), ("s1", np.array([1])), ("s2", np.array([2])),
              ("s4", np.array([4])), ("m1", np.array([-1])), ("m1s", np.array(-1)),
              ("big", np.array([2 ** 31 - 1])), ("copy2", np.array([0, 0, -1]))]
    return model(nodes, inits, (T, E), opset=17)


@pytest.mark.parametrize("style", ["dynamo", "legacy", "tf2onnx"])
@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_exporter_patterns_around_the_nodes(rng, style, op):
    m = _stack_model(rng, style, op)
    g = assert_matches(m, _x(rng))
    assert not any(n.op == "transpose" for n in g.nodes)      # the sequence-first axes cost no node


def test_unsqueeze_before_the_batch_and_transpose_back(rng):
    """Batch bookkeeping on its own: (N, 3) -> Unsqueeze 0 -> (1, N, 3) -> Transpose -> (N, 3, 1)."""
    nodes = [node("Unsqueeze", ["x", "ax0"], ["u"], name="u"),
             node("Transpose", ["u"], ["t"], name="t", perm=[1, 2, 0]), node("Relu", ["t"], ["y"], name="relu")]
    g = assert_matches(model(nodes, [("ax0", np.array([0]))], (3,)), rng.normal(size=(2, 3)).astype(np.float32))
    assert g.shape_of("relu") == (None, 3, 1)


# ----------------------------------------------------------------------------------------------
# the SST BiLSTM as one ONNX LSTM node: Arras et al.'s LRP


def _sst_onnx(net, layout, dtype=np.float64):
    """x (N, T, 60) -> bidirectional LSTM (60) -> [h_left, h_right] -> (120 -> 5), no output bias."""
    W = np.stack([reorder_gates(net[f"Wxh_{s}"], "arras", "onnx") for s in ("Left", "Right")])
    R = np.stack([reorder_gates(net[f"Whh_{s}"], "arras", "onnx") for s in ("Left", "Right")])
    B = np.stack([np.concatenate([reorder_gates(net[f"bxh_{s}"], "arras", "onnx"),
                                  reorder_gates(net[f"bhh_{s}"], "arras", "onnx")]) for s in ("Left", "Right")])
    why = np.hstack([net["Why_Left"], net["Why_Right"]]).T                     # (120, 5)
    inits = [tensor(k, v, dtype) for k, v in (("W", W), ("R", R), ("B", B), ("why", why))]
    if layout == 0:
        inits += [tensor("i0", np.array(0)), tensor("i1", np.array(1))]
        nodes = [node("Transpose", ["x"], ["X"], name="to_seq_first", perm=[1, 0, 2]),
                 node("LSTM", ["X", "W", "R", "B"], ["", "Y_h"], name="bilstm", direction="bidirectional",
                      hidden_size=60),
                 node("Gather", ["Y_h", "i0"], ["left"], name="left", axis=0),
                 node("Gather", ["Y_h", "i1"], ["right"], name="right", axis=0),
                 node("Concat", ["left", "right"], ["h"], name="h", axis=1)]
    else:
        inits.append(tensor("flat", np.array([0, -1])))
        nodes = [node("LSTM", ["x", "W", "R", "B"], ["", "Y_h"], name="bilstm", direction="bidirectional",
                      hidden_size=60, layout=1),
                 node("Reshape", ["Y_h", "flat"], ["h"], name="h")]
    nodes.append(node("MatMul", ["h", "why"], ["y"], name="out"))
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    graph = helper.make_graph(nodes, "sst", [helper.make_tensor_value_info("x", elem, ["N", "T", 60])],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sst_bilstm_as_one_onnx_lstm_equals_arras(layout, bias_factor, dtype):
    """Forward equal to onnxruntime (float32: its LSTM has no float64 kernel), LRP-ε per sample equal to
    Arras et al.'s for 1, 4 and 9 steps."""
    net = sst_net()
    m = _sst_onnx(net, layout, dtype)
    m32 = _sst_onnx(net, layout, np.float32)
    for steps in (1, 4, 9):
        x = np.random.default_rng(steps).normal(size=(2, steps, 60)) * 0.3
        g = attribx.translate(m, input_shape=(steps, 60))
        assert g.input.dims == ("sample", "token", "embedding")
        want = reference(m32, x.astype(np.float32))[0]
        assert relative_error(attribx.forward(g, x.astype(dtype), engine="numpy"), want) <= 1e-5
        targets = [1, 3]
        for engine in ENGINES:
            ours = attribx.explain(g, x.astype(dtype), "lrp.epsilon", target=targets, epsilon=0.001,
                                   bias_factor=bias_factor, engine=engine)
            for k, target in enumerate(targets):
                want, _, _ = arras_lrp(x[k], net, target, 0.001, bias_factor)
                err = relative_error(ours.values[k], want)
                assert err <= 1e-4, f"{engine}, layout {layout}, {steps} steps, sample {k}: relative error {err:.1e}"


# ----------------------------------------------------------------------------------------------
# refused, naming the node


def _refused(m, match, shape=(5, 3)):
    with pytest.raises(attribx.UnsupportedError, match=match) as err:
        attribx.translate(m, input_shape=shape)
    return str(err.value)


def test_peepholes_are_refused(rng):
    m = rnn_model(rng, "LSTM", "forward", 0, h0=np.zeros((1, 3, 4), np.float32), c0=np.zeros((1, 3, 4), np.float32))
    m.graph.node[1].input.append("P")
    m.graph.initializer.append(tensor("P", weights(rng, 1, 12)))
    assert "'rnn' (LSTM, opset 17)" in _refused(m, "peephole")


@pytest.mark.parametrize("attrs, match", [
    ({"clip": 3.0}, "clip=3.0"),
    ({"input_forget": 1}, "input_forget=1"),
    ({"activations": ["HardSigmoid", "Tanh", "Tanh"]}, "activations.*HardSigmoid"),
])
def test_cell_variants_are_refused(rng, attrs, match):
    assert "'rnn' (LSTM" in _refused(rnn_model(rng, "LSTM", "forward", 0, **attrs), match)


def test_gru_activations_other_than_the_defaults_are_refused(rng):
    m = rnn_model(rng, "GRU", "forward", 0, activations=["Sigmoid", "Relu"])
    _refused(m, "'rnn' \\(GRU.*activations")


def test_initial_states_that_differ_per_sample_are_refused(rng):
    h0 = rng.normal(size=(1, 3, 4)).astype(np.float32)
    _refused(rnn_model(rng, "GRU", "forward", 0, h0=h0), "'rnn' \\(GRU.*initial_h differs between samples")


def test_initial_states_computed_from_the_input_are_refused(rng):
    extra = [node("Slice", ["x", "s0", "s4", "s2"], ["first"], name="first"),    # x[:, 0:1, :] -> (N, 1, 3)
             node("Transpose", ["first"], ["h0"], name="h0", perm=[1, 0, 2])]   # (1, N, 3): hidden 3
    m = rnn_model(rng, "GRU", "forward", 0, H=3, extra=extra,
                  inits_extra=[("s0", np.array([0])), ("s4", np.array([1])), ("s2", np.array([1]))])
    m.graph.node[3].input.extend(["", "h0"])
    _refused(m, "'rnn' \\(GRU.*initial_h 'h0' is computed from the model's input")


def test_per_sample_constant_lengths_are_refused(rng):
    m = rnn_model(rng, "LSTM", "forward", 0, lens="lens", inits_extra=[tensor("lens", [5, 2, 3], np.int32)])
    _refused(m, "'rnn' \\(LSTM.*different lengths per sample")


def test_sequence_first_input_is_refused(rng):
    """layout=0 reading the model's (batch-first) input directly would take the batch for time."""
    m = rnn_model(rng, "LSTM", "forward", 0)
    m.graph.node[0].CopyFrom(node("Identity", ["x"], ["X"], name="x_id"))
    _refused(m, "'rnn' \\(LSTM.*must be a sequence \\(T, N, E\\).*batch axis is 0")


def test_sequence_first_output_is_refused(rng):
    m = rnn_model(rng, "LSTM", "forward", 0)
    m.graph.node[2].CopyFrom(node("Identity", ["Y"], ["y"], name="y_out"))   # Y (T, 1, N, H) as it is
    _refused(m, "output 'y' has the batch on its axis 2")


def test_other_ops_on_sequence_first_tensors_are_refused(rng):
    m = rnn_model(rng, "LSTM", "forward", 0)
    m.graph.node[2].CopyFrom(node("Softmax", ["Y"], ["y"], name="soft", axis=0))
    msg = _refused(m, "'soft' \\(Softmax, opset 17\\) reads 'Y', whose batch is on its axis 2")
    assert "Transpose" in msg and "Reshape" in msg


def test_loop_is_refused_with_a_reason(rng):
    """tf2onnx writes Keras GRU layers as a Loop whose body reads the transposed input."""
    body = helper.make_graph(
        [node("Identity", ["cond_in"], ["cond_out"]), node("Add", ["state_in", "X"], ["state_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, None)])
    nodes = [node("Transpose", ["x"], ["X"], name="t", perm=[1, 0, 2]),
             node("Loop", ["trip", "cond", "zero"], ["y"], name="while_loop", body=body)]
    m = model(nodes, [("trip", np.array(2)), ("cond", np.array(True)), ("zero", np.float32(0))], (5, 3))
    _refused(m, "'while_loop' \\(Loop, opset 13\\): control flow.*tf2onnx writes Keras GRU")


def test_loop_is_named_before_ops_without_translation_ahead_of_it(rng):
    """tf2onnx's masked LSTM: a Greater (no translation) computes the mask the Loop reads; the Loop is the reason."""
    body = helper.make_graph(
        [node("Identity", ["cond_in"], ["cond_out"]), node("Add", ["state_in", "gt_f"], ["state_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, None)])
    nodes = [node("Greater", ["x", "zero"], ["gt"], name="gt"),
             node("Cast", ["gt"], ["gt_f"], name="gt_f", to=TensorProto.FLOAT),
             node("Loop", ["trip", "cond", "zero"], ["y"], name="while_loop", body=body)]
    m = model(nodes, [("trip", np.array(2)), ("cond", np.array(True)), ("zero", np.float32(0))], (5, 3))
    _refused(m, "'while_loop' \\(Loop, opset 13\\): control flow")


def test_loop_on_constants_is_folded(rng):
    """A Loop whose body reads only constants (from the outer scope too) is evaluated at translation time."""
    body = helper.make_graph(
        [node("Identity", ["cond_in"], ["cond_out"]), node("Add", ["state_in", "step"], ["state_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, None)])
    nodes = [node("Loop", ["trip", "cond", "zero"], ["scale"], name="loop", body=body),
             node("Mul", ["x", "scale"], ["y"], name="scaled")]
    inits = [("trip", np.array(3)), ("cond", np.array(True)), ("zero", np.zeros(3, np.float32)),
             ("step", np.array([0.5, 1.0, -2.0], np.float32))]
    g = assert_matches(model(nodes, inits, (3,)), rng.normal(size=(2, 3)).astype(np.float32))
    assert [n.op for n in g.nodes] == ["constant", "mul"]
