"""Every ONNX op the backend translates, with attribute variants and opsets: same output as onnxruntime.

Each case builds a small model with onnx.helper (random weights, fixed seed), translates it and compares
the graph's numpy forward pass with onnxruntime's (relative error <= 1e-5, float32 inputs).
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

from onnx import TensorProto, helper  # noqa: E402

import attribx  # noqa: E402
from onnx_builders import CURRENT, OPSETS, assert_matches, has_op, model, weights  # noqa: E402

node = helper.make_node
INT64_MAX = np.iinfo(np.int64).max


def _x(rng, *shape):
    return rng.normal(size=(2, *shape)).astype(np.float32)


def _ops(graph):
    return [n.op for n in graph.nodes]


# ----------------------------------------------------------------------------------------------
# weighted layers


@pytest.mark.parametrize("trans_b,alpha,beta,c_shape", [
    (1, 1.0, 1.0, (5,)), (0, 1.0, 1.0, (1, 5)), (1, 0.5, 2.0, ()), (0, 1.5, 1.0, None), (1, 1.0, 0.5, (1, 1)),
])
def test_gemm(rng, trans_b, alpha, beta, c_shape):
    w = weights(rng, 5, 4) if trans_b else weights(rng, 4, 5)
    inputs = ["x", "w"] + ([] if c_shape is None else ["c"])
    inits = [("w", w)] + ([] if c_shape is None else [("c", weights(rng, *c_shape) if c_shape else np.float32(0.3))])
    m = model([node("Gemm", inputs, ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta)], inits, (4,))
    g = assert_matches(m, _x(rng, 4))
    assert _ops(g) == ["linear"] and g.nodes[0].name == "fc"


@pytest.mark.parametrize("bias_shape", [(5,), (1, 1, 5), None])
def test_matmul_with_bias_folds_into_one_linear(rng, bias_shape):
    nodes = [node("MatMul", ["x", "w"], ["mm"], name="proj")]
    inits = [("w", weights(rng, 4, 5))]
    if bias_shape:
        nodes.append(node("Add", ["b", "mm"], ["y"], name="proj_bias"))
        inits.append(("b", weights(rng, *bias_shape)))
    else:
        nodes[0].output[0] = "y"
    m = model(nodes, inits, (3, 4))                   # (N, T, K) @ (K, M): linear over the last axis
    g = assert_matches(m, _x(rng, 3, 4))
    assert _ops(g) == ["linear"] and ("bias" in g["proj"].params) == bool(bias_shape)
    if bias_shape:
        assert g.meta["aliases"]["proj_bias"] == "proj"


def test_matmul_bias_not_folded_when_the_product_is_read_twice(rng):
    nodes = [node("MatMul", ["x", "w"], ["mm"], name="proj"), node("Add", ["mm", "b"], ["a"], name="bias"),
             node("Add", ["a", "mm"], ["y"], name="skip")]
    m = model(nodes, [("w", weights(rng, 4, 4)), ("b", weights(rng, 4))], (4,))
    g = assert_matches(m, _x(rng, 4))
    assert "bias" not in g["proj"].params


@pytest.mark.parametrize("variant", [
    dict(pads=[1, 0, 2, 1]), dict(auto_pad="VALID"), dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 2]), dict(auto_pad="SAME_LOWER", kernel_shape=[3, 3], strides=[1, 2]),
    dict(strides=[2, 1], dilations=[1, 2], pads=[1, 1, 1, 1]), dict(group=2), dict(group=4, depthwise=True),
    dict(bias=False),
])
def test_conv2d(rng, variant):
    v = dict(variant)
    group = v.get("group", 1)
    bias = v.pop("bias", True)
    out = 4 if v.pop("depthwise", False) else 6
    w = weights(rng, out, 4 // group, 3, 3)
    inputs = ["x", "w"] + (["b"] if bias else [])
    m = model([node("Conv", inputs, ["y"], name="conv", **v)], [("w", w), ("b", weights(rng, out))], (4, 9, 8))
    g = assert_matches(m, _x(rng, 4, 9, 8))
    assert _ops(g) == ["conv"]
    if v.get("auto_pad") == "SAME_UPPER":
        assert g["conv"].attrs["padding"] == "same"


@pytest.mark.parametrize("dims,attrs", [(1, dict(pads=[2, 1], strides=[2])), (3, dict(pads=[1, 0, 1, 1, 1, 0]))])
def test_conv_1d_3d(rng, dims, attrs):
    spatial = (7,) * dims
    m = model([node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)],
              [("w", weights(rng, 3, 2, *(3,) * dims)), ("b", weights(rng, 3))], (2, *spatial))
    assert_matches(m, _x(rng, 2, *spatial))


needs_conv_transpose = pytest.mark.skipif(not has_op("conv_transpose"), reason="core lacks conv_transpose")


@needs_conv_transpose
@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2]), dict(strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 0]),
    dict(group=2, dilations=[2, 1]), dict(strides=[2, 2], output_shape=[10, 11]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"), dict(strides=[2, 1], auto_pad="SAME_LOWER"),
])
def test_conv_transpose(rng, attrs):
    group = attrs.get("group", 1)
    m = model([node("ConvTranspose", ["x", "w", "b"], ["y"], name="up", **attrs)],
              [("w", weights(rng, 4, 6 // group, 3, 3)), ("b", weights(rng, 6))], (4, 5, 5))
    g = assert_matches(m, _x(rng, 4, 5, 5))
    assert _ops(g) == ["conv_transpose"]


@pytest.mark.parametrize("opset", [13, 15])
@pytest.mark.parametrize("rank", [2, 4])
def test_batch_norm(rng, opset, rank):
    shape = (5,) if rank == 2 else (5, 3, 4)
    inits = [("s", rng.uniform(0.5, 1.5, 5)), ("b", weights(rng, 5)), ("m", weights(rng, 5)),
             ("v", rng.uniform(0.2, 2.0, 5))]
    m = model([node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn", epsilon=1e-2)], inits,
              shape, opset=opset)
    g = assert_matches(m, _x(rng, *shape))
    assert g["bn"].attrs["eps"] == pytest.approx(1e-2, rel=1e-7)


# ----------------------------------------------------------------------------------------------
# pooling


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[2, 2]), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1), dict(kernel_shape=[2, 2], dilations=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[3, 3], ceil_mode=1),
])
def test_max_pool(rng, attrs):
    m = model([node("MaxPool", ["x"], ["y"], name="pool", **attrs)], (), (3, 8, 9))
    g = assert_matches(m, _x(rng, 3, 8, 9))
    assert _ops(g) == ["max_pool"]


@pytest.mark.parametrize("opset", [13, 19, CURRENT])
@pytest.mark.parametrize("attrs,size", [
    (dict(kernel_shape=[2, 2]), (7, 8)), (dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1), (7, 8)),
    (dict(kernel_shape=[3, 3], pads=[1, 0, 1, 2], count_include_pad=0, strides=[2, 2]), (7, 8)),
    (dict(kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1), (8, 9)),
    (dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, count_include_pad=1), (8, 8)),  # ceil adds nothing
    (dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), (7, 8)),
])
def test_avg_pool(rng, opset, attrs, size):
    m = model([node("AveragePool", ["x"], ["y"], name="pool", **attrs)], (), (3, *size), opset=opset)
    g = assert_matches(m, _x(rng, 3, *size))
    assert _ops(g) == ["avg_pool"]


def test_avg_pool_ceil_mode_counting_padding_is_a_clear_error(rng):
    m = model([node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1,
                    count_include_pad=1)], (), (3, 8, 9))
    with pytest.raises(attribx.UnsupportedError, match=r"'pool' \(AveragePool, opset 13\).*count_include_pad"):
        attribx.translate(m)


def test_max_pool_1d_and_global_pools(rng):
    nodes = [node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[3], strides=[1], pads=[1, 1]),
             node("GlobalAveragePool", ["p"], ["ga"], name="gap"), node("GlobalMaxPool", ["p"], ["gm"], name="gmp"),
             node("Add", ["ga", "gm"], ["y"], name="sum")]
    g = assert_matches(model(nodes, (), (3, 9)), _x(rng, 3, 9))
    assert g["gap"].op == "global_avg_pool" and g["gmp"].op == "max_pool" and g.shape_of("sum") == (None, 3, 1)


# ----------------------------------------------------------------------------------------------
# activations


@pytest.mark.parametrize("op,attrs,graph_op", [
    ("Relu", {}, "relu"), ("LeakyRelu", dict(alpha=0.2), "leaky_relu"), ("LeakyRelu", {}, "leaky_relu"),
    ("Sigmoid", {}, "sigmoid"), ("Tanh", {}, "tanh"), ("Elu", dict(alpha=0.7), "elu"),
    ("Softmax", {}, "softmax"), ("Softmax", dict(axis=1), "softmax"),
])
@pytest.mark.parametrize("opset", OPSETS)
def test_activations(rng, op, attrs, graph_op, opset):
    m = model([node(op, ["x"], ["y"], name="act", **attrs)], (), (3, 4), opset=opset)
    g = assert_matches(m, _x(rng, 3, 4) * 2)
    assert _ops(g) == [graph_op]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_opset20(rng, approximate):
    m = model([node("Gelu", ["x"], ["y"], name="gelu", approximate=approximate)], (), (6,), opset=20)
    g = assert_matches(m, _x(rng, 6) * 2)
    assert g["gelu"].attrs["approximate"] == approximate


@pytest.mark.parametrize("form", ["x_first", "half_first", "half_last"])
def test_exporter_gelu_pattern_becomes_one_gelu(rng, form):
    """As the TorchScript exporter writes it: Constant nodes right before their readers, after the Erf."""
    def const(name, value):
        return node("Constant", [], [name], name=f"/{name}/Constant",
                    value=onnx.numpy_helper.from_array(np.array(value, np.float32)))
    nodes = [node("MatMul", ["x", "w"], ["h"], name="fc"), const("sqrt2", np.sqrt(2.0)),
             node("Div", ["h", "sqrt2"], ["d"], name="div"), node("Erf", ["d"], ["e"], name="erf"),
             const("one", 1.0), node("Add", ["e", "one"], ["a"], name="add"), const("half", 0.5)]
    if form == "x_first":
        nodes += [node("Mul", ["h", "a"], ["m"], name="mul"), node("Mul", ["m", "half"], ["y"], name="mul_1")]
    elif form == "half_first":
        nodes = nodes[:2] + nodes[-1:] + [node("Mul", ["h", "half"], ["hh"], name="mul")] + nodes[2:-1]
        nodes += [node("Mul", ["hh", "a"], ["y"], name="mul_1")]
    else:
        nodes += [node("Mul", ["a", "half"], ["m"], name="mul"), node("Mul", ["h", "m"], ["y"], name="mul_1")]
    g = assert_matches(model(nodes, [("w", weights(rng, 4, 5))], (4,), opset=17), _x(rng, 4) * 2)
    assert _ops(g) == ["linear", "gelu"] and g.outputs == ["mul_1"]


def test_lone_erf_is_the_erf_op(rng):
    """(Refused while the graph had no erf op; issue 19 added it.)"""
    g = assert_matches(model([node("Erf", ["x"], ["y"], name="erf")], (), (4,)), _x(rng, 4))
    assert _ops(g) == ["erf"]


def test_exporter_silu_becomes_silu(rng):
    nodes = [node("Sigmoid", ["x"], ["s"], name="sig"), node("Mul", ["x", "s"], ["y"], name="silu")]
    g = assert_matches(model(nodes, (), (5,)), _x(rng, 5))
    assert _ops(g) == ["silu"]


@pytest.mark.parametrize("bounds", [(0.0, 6.0), (-0.5, None), (None, 0.3), (None, None)])
@pytest.mark.parametrize("opset", [13, CURRENT])
def test_clip(rng, bounds, opset):
    lo, hi = bounds
    inputs = ["x", "" if lo is None else "lo"] + ([] if hi is None else ["hi"])
    inits = [("lo", np.float32(lo or 0)), ("hi", np.float32(hi or 0))]
    m = model([node("Clip", inputs, ["y"], name="clip")], inits, (6,), opset=opset)
    g = assert_matches(m, _x(rng, 6) * 4)
    assert g["clip"].attrs["min"] == (lo if lo is None else pytest.approx(lo))
    assert g["clip"].attrs["max"] == (hi if hi is None else pytest.approx(hi))


def test_prelu_with_one_slope(rng):
    m = model([node("PRelu", ["x", "a"], ["y"], name="prelu")], [("a", np.float32([0.25]))], (6,))
    assert _ops(assert_matches(m, _x(rng, 6))) == ["leaky_relu"]


# ----------------------------------------------------------------------------------------------
# arithmetic


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("const_shape", [(), (1, 3, 1, 1), (4,)])
@pytest.mark.parametrize("const_first", [False, True])
def test_binary_with_constants(rng, op, const_shape, const_first):
    if op == "Div" and const_first and not has_op("div"):
        pytest.skip("core lacks div")
    c = rng.uniform(0.5, 2.0, const_shape).astype(np.float32)
    inputs = ["c", "x"] if const_first else ["x", "c"]
    m = model([node(op, inputs, ["y"], name="op")], [("c", c)], (3, 2, 4))
    x = _x(rng, 3, 2, 4)
    if op == "Div" and const_first:
        x = np.abs(x) + 0.5
    assert_matches(m, x)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_of_two_tensors(rng, op):
    if op == "Div" and not has_op("div"):
        pytest.skip("core lacks div")
    nodes = [node("Sigmoid", ["x"], ["s"], name="sig"), node("Add", ["s", "one"], ["d"], name="denominator"),
             node(op, ["x", "d"], ["y"], name="op")]
    g = assert_matches(model(nodes, [("one", np.float32(1))], (3, 4)), _x(rng, 3, 4))
    assert g.outputs == ["op"]


def test_sum_and_neg(rng):
    nodes = [node("Relu", ["x"], ["r"], name="relu"), node("Neg", ["x"], ["n"], name="neg"),
             node("Sum", ["x", "r", "n"], ["y"], name="sum")]
    assert_matches(model(nodes, (), (5,)), _x(rng, 5))


# ----------------------------------------------------------------------------------------------
# shapes and routing


@pytest.mark.parametrize("axis", [1, -1])
def test_concat(rng, axis):
    nodes = [node("Relu", ["x"], ["a"], name="relu"), node("Tanh", ["x"], ["b"], name="tanh"),
             node("Concat", ["a", "b", "x"], ["y"], name="cat", axis=axis)]
    assert_matches(model(nodes, (), (3, 4)), _x(rng, 3, 4))


@pytest.mark.parametrize("opset,attrs,split", [
    (13, dict(axis=1), [1, 3, 2]), (13, dict(axis=-1), None), (18, dict(axis=2, num_outputs=3), None),
    (CURRENT, dict(axis=1), [4, 2]),
])
def test_split(rng, opset, attrs, split):
    n = len(split) if split else attrs.get("num_outputs", 2)
    outs = [f"s{i}" for i in range(n)]
    nodes = [node("Split", ["x", "split"] if split else ["x"], outs, name="split", **attrs)]
    nodes += [node("Relu", [o], [f"y{i}"], name=f"relu{i}") for i, o in enumerate(outs)]
    inits = [("split", np.array(split, np.int64))] if split else []
    m = model(nodes, inits, (6, 8), opset=opset, outputs=[f"y{i}" for i in range(n)])
    x = _x(rng, 6, 8)
    for i in range(n):
        g = assert_matches(m, x, output=i)
    assert g["split:0"].op == "slice"


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [3], [1], None), ([0, 1, 0], [INT64_MAX, -1, 5], None, [1, 1, 2]),
    ([-3, 1], [INT64_MAX, 100], [3, -3], [1, 2]),
    ([0], [INT64_MAX], [1], None),
])
def test_slice(rng, starts, ends, axes, steps):
    inputs = ["x", "st", "en"] + (["ax"] if axes is not None else ([""] if steps else [])) + (["sp"] if steps else [])
    inits = [("st", np.array(starts)), ("en", np.array(ends)), ("ax", np.array(axes or [0])),
             ("sp", np.array(steps or [1]))]
    nodes = [node("Slice", inputs, ["s"], name="slice"), node("Relu", ["s"], ["y"], name="relu")]
    assert_matches(model(nodes, inits, (4, 6, 7)), _x(rng, 4, 6, 7))


def test_slice_with_negative_step_is_unsupported(rng):
    inits = [("st", np.array([3])), ("en", np.array([0])), ("ax", np.array([1])), ("sp", np.array([-1]))]
    m = model([node("Slice", ["x", "st", "en", "ax", "sp"], ["y"], name="rev")], inits, (4, 5))
    with pytest.raises(attribx.UnsupportedError, match="'rev' \\(Slice, opset 13\\).*positive steps"):
        attribx.translate(m)


@pytest.mark.parametrize("target", [[0, -1], [-1, 12], [0, 3, 4], [0, 0, 2, 2]])
def test_reshape_and_flatten(rng, target):
    nodes = [node("Reshape", ["x", "shape"], ["r"], name="reshape"), node("Flatten", ["r"], ["y"], name="flatten")]
    assert_matches(model(nodes, [("shape", np.array(target))], (3, 4)), _x(rng, 3, 4))


def test_transpose_squeeze_unsqueeze(rng):
    nodes = [node("Transpose", ["x"], ["t"], name="transpose", perm=[0, 2, 1, 3]),
             node("Squeeze", ["t", "ax1"], ["s"], name="squeeze"),
             node("Unsqueeze", ["s", "ax2"], ["u"], name="unsqueeze"), node("Relu", ["u"], ["y"], name="relu")]
    inits = [("ax1", np.array([-1])), ("ax2", np.array([1, -1]))]
    g = assert_matches(model(nodes, inits, (3, 4, 1)), _x(rng, 3, 4, 1))
    assert g.shape_of("unsqueeze") == (None, 1, 4, 3, 1)


def test_transpose_of_the_batch_axis_is_unsupported():
    m = model([node("Transpose", ["x"], ["y"], name="t", perm=[1, 0])], (), (3,))
    with pytest.raises(attribx.UnsupportedError, match="batch axis"):
        attribx.translate(m)


@pytest.mark.parametrize("opset,axes", [(13, None), (18, [2, 3]), (CURRENT, [-1])])
def test_pad(rng, opset, axes):
    n = 4 if axes is None else len(axes)
    pads = ([0, 0, 1, 2] + [0, 0, 2, 0]) if axes is None else list(range(1, n + 1)) + [1] * n
    inputs = ["x", "pads", "value"] + (["axes"] if axes else [])
    inits = [("pads", np.array(pads)), ("value", np.float32(0.5)), ("axes", np.array(axes or [0]))]
    nodes = [node("Pad", inputs, ["p"], name="pad"), node("Relu", ["p"], ["y"], name="relu")]
    g = assert_matches(model(nodes, inits, (2, 4, 5), opset=opset), _x(rng, 2, 4, 5))
    assert g["pad"].attrs["value"] == 0.5


def test_reflect_pad_is_unsupported():
    m = model([node("Pad", ["x", "pads"], ["y"], name="pad", mode="reflect")], [("pads", np.array([0, 1, 0, 1]))], (4,))
    with pytest.raises(attribx.UnsupportedError, match="'reflect'"):
        attribx.translate(m)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("opset", [13, 18, CURRENT])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce(rng, op, opset, keepdims):
    axes_as_input = op == "ReduceSum" or opset >= 18
    attrs = {"keepdims": keepdims} if axes_as_input else {"keepdims": keepdims, "axes": [2, -1]}
    inputs = ["x", "axes"] if axes_as_input else ["x"]
    m = model([node(op, inputs, ["y"], name="reduce", **attrs)], [("axes", np.array([2, -1]))], (2, 3, 4), opset=opset)
    g = assert_matches(m, _x(rng, 2, 3, 4))
    assert g["reduce"].attrs["axes"] == (2, 3)


def test_reduce_noop_with_empty_axes(rng):
    nodes = [node("ReduceSum", ["x"], ["r"], name="reduce", noop_with_empty_axes=1),
             node("Relu", ["r"], ["y"], name="relu")]
    g = assert_matches(model(nodes, (), (4,)), _x(rng, 4))
    assert _ops(g) == ["relu"]


def test_gather_constant_index_from_a_tensor(rng):
    nodes = [node("Gather", ["x", "i0"], ["a"], name="first", axis=1),         # x[:, 0]: (N, 5)
             node("ReduceSum", ["a", "ax1"], ["as"], name="sum_a", keepdims=1),  # (N, 1)
             node("Gather", ["x", "run"], ["b"], name="every_other", axis=2),   # x[:, :, [0, 2, 4]]: (N, 3, 3)
             node("ReduceSum", ["b", "ax2"], ["bs"], name="sum_b", keepdims=0),  # (N, 3)
             node("Gather", ["x", "last"], ["c"], name="last", axis=-1),        # x[:, :, -1]: (N, 3)
             node("Sum", ["as", "bs", "c"], ["y"], name="add")]
    inits = [("i0", np.array(0)), ("run", np.array([0, 2, 4])), ("ax1", np.array([1])), ("ax2", np.array([2])),
             ("last", np.array(-1))]
    g = assert_matches(model(nodes, inits, (3, 5)), _x(rng, 3, 5))
    assert [g[n].op for n in ("first", "every_other", "last")] == ["reshape", "slice", "reshape"]


@pytest.mark.skipif(not has_op("embedding"), reason="core lacks embedding")
def test_gather_from_a_constant_table_is_an_embedding(rng):
    table = weights(rng, 10, 4)
    nodes = [node("Gather", ["emb", "x"], ["e"], name="embed"), node("ReduceMean", ["e", "ax"], ["m"], name="mean",
                                                                     keepdims=0),
             node("Gemm", ["m", "w"], ["y"], name="fc", transB=1)]
    m = model(nodes, [("emb", table), ("ax", np.array([1])), ("w", weights(rng, 3, 4))], (6,),
              in_dtype=TensorProto.INT64, opset=18)
    ids = rng.integers(0, 10, size=(3, 6)).astype(np.int64)
    g = assert_matches(m, ids)
    assert g.input.dtype == "int64" and g["embed"].op == "embedding" and g.input.dims == ("sample", "token")


def test_identity_dropout_and_cast_pass_through(rng):
    nodes = [node("Identity", ["x"], ["i"], name="ident"), node("Dropout", ["i", "ratio"], ["d"], name="drop"),
             node("Cast", ["d"], ["c"], name="cast", to=TensorProto.FLOAT), node("Relu", ["c"], ["y"], name="relu")]
    g = assert_matches(model(nodes, [("ratio", np.float32(0.3))], (4,)), _x(rng, 4))
    assert _ops(g) == ["relu"]
    assert attribx.api._resolve_alias(g, "drop") == "x" and attribx.api._resolve_alias(g, "y") == "relu"


def test_constants_are_folded(rng):
    """Constant, ConstantOfShape of a Shape, Cast of an int constant, Range: evaluated at translation."""
    nodes = [node("Constant", [], ["k"], name="k", value=onnx.numpy_helper.from_array(np.arange(4, dtype=np.int64))),
             node("Cast", ["k"], ["kf"], name="cast", to=TensorProto.FLOAT),
             node("Shape", ["x"], ["sh"], name="shape", start=1),
             node("ConstantOfShape", ["sh"], ["ones"], name="ones",
                  value=onnx.numpy_helper.from_array(np.array([2.0], np.float32))),
             node("Mul", ["x", "ones"], ["m"], name="scale"), node("Add", ["m", "kf"], ["y"], name="shift")]
    g = assert_matches(model(nodes, (), (3, 4), opset=15), _x(rng, 3, 4))
    assert _ops(g) == ["constant", "mul", "constant", "add"]


def test_old_opset_is_converted(rng):
    """Opset 11 (Clip bounds and Unsqueeze axes as attributes... as converted): onnx's version converter."""
    nodes = [node("Clip", ["x", "lo", "hi"], ["c"], name="clip"),
             node("Unsqueeze", ["c"], ["y"], name="unsqueeze", axes=[1])]
    m = model(nodes, [("lo", np.float32(-0.5)), ("hi", np.float32(0.5))], (4,), opset=11)
    g = assert_matches(m, _x(rng, 4))
    assert _ops(g) == ["clip", "reshape"]


def test_position_table_from_range_folds_to_a_constant(rng):
    """pos = table[arange(T)] with T from Shape(x): Range and a Gather of constants fold away."""
    nodes = [node("Shape", ["x"], ["sh"], name="shape"),
             node("Gather", ["sh", "one"], ["t"], name="seq_len", axis=0),
             node("Range", ["zero", "t", "one"], ["pos"], name="range"),
             node("Gather", ["table", "pos"], ["p"], name="pos_embed"),
             node("Add", ["x", "p"], ["y"], name="add_pos")]
    inits = [("one", np.array(1)), ("zero", np.array(0)), ("table", weights(rng, 9, 4))]
    g = assert_matches(model(nodes, inits, (5, 4)), _x(rng, 5, 4))
    assert _ops(g) == ["constant", "add"] and g.nodes[0].params["value"].shape == (5, 4)


def test_float64_model(rng):
    w = rng.normal(size=(3, 4))
    nodes = [node("Gemm", ["x", "w"], ["h"], name="fc", transB=1), node("Tanh", ["h"], ["y"], name="tanh")]
    m = model(nodes, [onnx.numpy_helper.from_array(w, "w")], (4,), in_dtype=TensorProto.DOUBLE)
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    g = assert_matches(m, rng.normal(size=(2, 4)), tol=1e-12)
    assert g.input.dtype == "float64" and g["fc"].params["weight"].dtype == np.float64
