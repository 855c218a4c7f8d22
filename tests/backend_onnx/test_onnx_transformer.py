"""Transformers from ONNX (issue 19): the ops they are made of translate exactly (forward equals onnxruntime),
attention as the exporters write it (the batch merged with the heads inside nn.MultiheadAttention), the
class token, the decomposed layer norm and GELU; a torchvision ViT exported with torch.onnx.export (the
tests that need torch import it lazily: the onnx tox env has none)."""
from __future__ import annotations

import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

from onnx import TensorProto, helper  # noqa: E402

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from onnx_builders import CURRENT, assert_matches, model, run_ort, weights  # noqa: E402

node = helper.make_node


def _x(rng, *shape, dtype=np.float32):
    return rng.normal(size=(2, *shape)).astype(dtype)


def _ops(g):
    return [n.op for n in g.nodes if n.op != "constant"]


def _as_float64(m):
    """The model with its input, outputs and initializers in float64 (onnxruntime runs most ops so)."""
    from onnx import numpy_helper
    m = onnx.ModelProto.FromString(m.SerializeToString())
    for v in list(m.graph.input) + list(m.graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    for i, t in enumerate(m.graph.initializer):
        if t.data_type == TensorProto.FLOAT:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64),
                                                                    t.name))
    return m


# ----------------------------------------------------------------------------------------------
# single ops


@pytest.mark.parametrize("opset", [17, 18, CURRENT])
@pytest.mark.parametrize("axis,bias", [(-1, True), (-1, False), (2, True), (-2, True)])
def test_layer_normalization(rng, opset, axis, bias):
    ins = ["x", "scale", "b"] if bias else ["x", "scale"]
    nodes = [node("LayerNormalization", ins, ["y"], name="ln", axis=axis, epsilon=1e-3)]
    shape = (3, 4, 5)
    normed = shape[axis % 4 - 1:]
    inits = [("scale", rng.uniform(0.5, 1.5, normed)), ("b", weights(rng, *normed))][:2 if bias else 1]
    m = model(nodes, inits, shape, opset=opset)
    g = assert_matches(m, _x(rng, *shape) * 3 + 1)
    assert _ops(g) == ["layer_norm"]
    assert_matches(_as_float64(m), _x(rng, *shape, dtype=np.float64), tol=1e-12)


def test_layer_normalization_over_the_batch_axis_is_refused(rng):
    m = model([node("LayerNormalization", ["x", "s"], ["y"], name="ln", axis=0)], [("s", np.ones((2, 3)))],
              (3,), opset=17, batch=2)
    with pytest.raises(attribx.UnsupportedError, match=r"'ln' \(LayerNormalization.*batch axis"):
        attribx.translate(m)


def test_decomposed_layer_norm_is_one_layer_norm(rng):
    """What exporters wrote before opset 17: ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div, Mul, Add."""
    nodes = [node("ReduceMean", ["x"], ["mu"], name="mean", axes=[-1]),
             node("Sub", ["x", "mu"], ["d"], name="sub"),
             node("Pow", ["d", "two"], ["sq"], name="pow"),
             node("ReduceMean", ["sq"], ["var"], name="var", axes=[-1]),
             node("Add", ["var", "eps"], ["ve"], name="add_eps"),
             node("Sqrt", ["ve"], ["sd"], name="sqrt"),
             node("Div", ["d", "sd"], ["n"], name="div"),
             node("Mul", ["n", "g"], ["s"], name="scale"),
             node("Add", ["s", "b"], ["y"], name="shift")]
    inits = [("two", np.array(2.0, np.float32)), ("eps", np.array(1e-5, np.float32)),
             ("g", rng.uniform(0.5, 1.5, 6)), ("b", weights(rng, 6))]
    g = assert_matches(model(nodes, inits, (4, 6)), _x(rng, 4, 6) * 2)
    assert _ops(g) == ["layer_norm"]


def test_a_lone_pow_is_refused_naming_the_pattern(rng):
    m = model([node("Pow", ["x", "two"], ["y"], name="pow")], [("two", np.array(2.0, np.float32))], (3,))
    with pytest.raises(attribx.UnsupportedError, match=r"'pow' \(Pow.*decomposed layer norm"):
        attribx.translate(m)


@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 4, 5)), ((3, 4), (4, 2)), ((2, 3, 4), (1, 4, 5))])
def test_matmul_of_two_signals(rng, shapes):
    """Both factors computed from the input (attention's q @ k^T): the graph's matmul."""
    (a, b) = shapes
    size_a, size_b = math.prod(a), math.prod(b)
    nodes = [node("Slice", ["x", "s0", "e0", "ax"], ["fa"], name="take_a"),
             node("Slice", ["x", "s1", "e1", "ax"], ["fb"], name="take_b"),
             node("Reshape", ["fa", "sa"], ["ra"], name="shape_a"),
             node("Reshape", ["fb", "sb"], ["rb"], name="shape_b"),
             node("MatMul", ["ra", "rb"], ["y"], name="mm")]
    inits = [("s0", [0]), ("e0", [size_a]), ("s1", [size_a]), ("e1", [size_a + size_b]), ("ax", [1]),
             ("sa", [0, *a]), ("sb", [0, *b])]
    g = assert_matches(model(nodes, inits, (size_a + size_b,)), _x(rng, size_a + size_b))
    assert "matmul" in _ops(g)


def test_matmul_with_a_constant_on_the_left(rng):
    nodes = [node("MatMul", ["w", "x"], ["y"], name="mm")]
    g = assert_matches(model(nodes, [("w", weights(rng, 5, 3))], (3, 4)), _x(rng, 3, 4))
    assert _ops(g) == ["matmul"]


@pytest.mark.parametrize("axis", [1, 2, -1, -2])
def test_softmax_on_any_axis(rng, axis):
    g = assert_matches(model([node("Softmax", ["x"], ["y"], name="sm", axis=axis)], (), (3, 4, 5)),
                       _x(rng, 3, 4, 5) * 3)
    assert g.nodes[0].attrs["axis"] == axis % 4


def test_softmax_over_the_batch_axis_is_refused(rng):
    m = model([node("Softmax", ["x"], ["y"], name="sm", axis=0)], (), (3,))
    with pytest.raises(attribx.UnsupportedError, match=r"'sm' \(Softmax.*batch axis"):
        attribx.translate(m)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_op(rng, approximate):
    g = assert_matches(model([node("Gelu", ["x"], ["y"], name="gelu", approximate=approximate)], (), (7,),
                             opset=20), _x(rng, 7) * 3)
    assert g.nodes[0].op == "gelu" and g.nodes[0].attrs["approximate"] == approximate


@pytest.mark.parametrize("order", ["half_first", "half_last"])
def test_decomposed_gelu_is_exact(rng, order):
    """x * 0.5 * (1 + erf(x / sqrt 2)): one gelu (approximate none), equal to onnxruntime in float64."""
    nodes = [node("Div", ["x", "sqrt2"], ["d"], name="div"), node("Erf", ["d"], ["e"], name="erf"),
             node("Add", ["e", "one"], ["a"], name="add")]
    if order == "half_first":
        nodes += [node("Mul", ["x", "half"], ["h"], name="half"), node("Mul", ["h", "a"], ["y"], name="gelu")]
    else:
        nodes += [node("Mul", ["x", "a"], ["p"], name="prod"), node("Mul", ["p", "half"], ["y"], name="gelu")]
    inits = [("sqrt2", np.array(math.sqrt(2), np.float32)), ("one", np.array(1.0, np.float32)),
             ("half", np.array(0.5, np.float32))]
    m = model(nodes, inits, (6,))
    g = assert_matches(m, _x(rng, 6) * 3)
    assert _ops(g) == ["gelu"]
    g64 = attribx.translate(_as_float64(m))                # onnxruntime has no float64 Erf: the formula itself
    x = _x(rng, 6, dtype=np.float64) * 3
    exact = x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    assert relative_error(np.asarray(attribx.forward(g64, x, engine="numpy")), exact) <= 1e-12


@pytest.mark.parametrize("alpha,beta", [(None, None), (0.25, 0.4)])
def test_hard_sigmoid(rng, alpha, beta):
    kw = {} if alpha is None else {"alpha": alpha, "beta": beta}
    g = assert_matches(model([node("HardSigmoid", ["x"], ["y"], name="hs", **kw)], (), (9,)), _x(rng, 9) * 4)
    assert _ops(g) == ["hard_sigmoid"]


def test_hard_swish(rng):
    g = assert_matches(model([node("HardSwish", ["x"], ["y"], name="hs")], (), (9,), opset=14), _x(rng, 9) * 4)
    assert _ops(g) == ["hard_swish"]


RESIZES = [
    ({"mode": "nearest"}, "scales", [1, 1, 2, 2]),                         # ONNX defaults, whole factor
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, "scales",
     [1, 1, 2, 3]),                                                         # torch's nearest export
    ({"mode": "linear"}, "scales", [1, 1, 2, 2]),                          # half_pixel: torch's bilinear
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, "sizes", [2, 3, 7, 9]),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, "sizes", [2, 3, 9, 11]),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, "sizes",
     [2, 3, 3, 2]),                                                         # downsampling
]


@pytest.mark.parametrize("attrs,by,target", RESIZES)
def test_resize(rng, attrs, by, target):
    ins = ["x", "", "scales"] if by == "scales" else ["x", "", "", "sizes"]
    init = ("scales", np.array(target, np.float32)) if by == "scales" else ("sizes", np.array(target, np.int64))
    g = assert_matches(model([node("Resize", ins, ["y"], name="up", **attrs)], [init], (3, 4, 5), opset=13),
                       _x(rng, 3, 4, 5))
    assert _ops(g) == ["resize"]


@pytest.mark.parametrize("attrs", [{"mode": "cubic"},
                                   {"mode": "linear", "coordinate_transformation_mode": "asymmetric"},
                                   {"mode": "nearest", "nearest_mode": "ceil"}])
def test_resize_without_exact_translation_is_refused(rng, attrs):
    m = model([node("Resize", ["x", "", "scales"], ["y"], name="up", **attrs)],
              [("scales", np.array([1, 1, 2, 2], np.float32))], (3, 4, 5))
    with pytest.raises(attribx.UnsupportedError, match=r"'up' \(Resize, opset 13\): mode="):
        attribx.translate(m)


# ----------------------------------------------------------------------------------------------
# what exporters write for transformers


def test_class_token_concatenated_with_patches(rng):
    """A constant expanded to the batch (Expand(token, (N, 1, D))) concatenated with the patches: ``fill``."""
    nodes = [node("Shape", ["x"], ["sx"], name="shape", end=1),
             node("Concat", ["sx", "ones"], ["target"], name="target", axis=0),
             node("Expand", ["token", "target"], ["tokens"], name="expand"),
             node("Concat", ["tokens", "x"], ["y"], name="cat", axis=1)]
    inits = [("ones", [1, 1]), ("token", weights(rng, 1, 1, 4))]
    g = assert_matches(model(nodes, inits, (3, 4), opset=17), _x(rng, 3, 4))
    assert _ops(g) == ["fill", "concat"]


def test_a_constant_not_expanded_to_the_batch_is_refused(rng):
    m = model([node("Concat", ["token", "x"], ["y"], name="cat", axis=1)], [("token", weights(rng, 2, 1, 4))],
              (3, 4), batch=2)
    with pytest.raises(attribx.UnsupportedError, match=r"'cat' \(Concat.*expanded to the batch"):
        attribx.translate(m)


def mha_model(rng, length=4, embed=6, heads=2, opset=17):
    """nn.MultiheadAttention (batch_first) as torch.onnx.export writes it: sequence-first projections, the
    batch merged with the heads ((L, N * heads, hd), (N * heads, L, hd)), an output projection on
    (L * N, E), a causal mask added to the scores; the shapes computed from Shape(x)."""
    hd = embed // heads
    nodes = [
        node("Shape", ["x"], ["sx"], name="shape"),
        node("Gather", ["sx", "zero"], ["n"], name="batch_size", axis=0),
        node("Mul", ["n", "heads"], ["nh"], name="n_heads"),
        node("Unsqueeze", ["nh", "axis0"], ["nh1"], name="nh1"),
        node("Unsqueeze", ["n", "axis0"], ["n1"], name="n1"),
        node("Concat", ["len", "nh1", "hd"], ["split_target"], name="split_target", axis=0),
        node("Concat", ["n1", "heads1", "len", "hd"], ["heads_target"], name="heads_target", axis=0),
        node("Transpose", ["x"], ["xt"], name="seq_first", perm=[1, 0, 2]),
        node("MatMul", ["xt", "w_in"], ["proj"], name="in_proj"),
        node("Add", ["proj", "b_in"], ["qkv"], name="in_bias"),
        node("Split", ["qkv", "thirds"], ["q", "k", "v"], name="split", axis=-1),
    ]
    for t in ("q", "k", "v"):
        nodes += [node("Reshape", [t, "split_target"], [f"{t}m"], name=f"{t}_merge"),
                  node("Transpose", [f"{t}m"], [f"{t}t"], name=f"{t}_batch_first", perm=[1, 0, 2]),
                  node("Reshape", [f"{t}t", "heads_target"], [f"{t}h"], name=f"{t}_heads")]
    nodes += [
        node("Reshape", ["kh", "minus_one_l_hd"], ["k3"], name="k_merge_heads"),         # -1 merges batch and heads
        node("Transpose", ["k3"], ["k3t"], name="k_transpose", perm=[0, 2, 1]),
        node("Concat", ["n1", "heads1", "hd", "len"], ["kt_target"], name="kt_target", axis=0),
        node("Reshape", ["k3t", "kt_target"], ["kth"], name="kt_heads"),
        node("Mul", ["qh", "scale"], ["qs"], name="q_scale"),
        node("MatMul", ["qs", "kth"], ["scores"], name="scores"),
        node("Add", ["scores", "causal"], ["masked"], name="mask"),
        node("Softmax", ["masked"], ["attn"], name="softmax", axis=-1),
        node("MatMul", ["attn", "vh"], ["ctx"], name="context"),
        node("Transpose", ["ctx"], ["ctx_t"], name="ctx_seq_first", perm=[2, 0, 1, 3]),
        node("Concat", ["len_n", "embed"], ["flat_target"], name="flat_target", axis=0),
        node("Reshape", ["ctx_t", "flat_target"], ["flat"], name="flat"),          # (L * N, E)
        node("Gemm", ["flat", "w_out", "b_out"], ["o"], name="out_proj", transB=1),
        node("Concat", ["len", "n1", "embed"], ["back_target"], name="back_target", axis=0),
        node("Reshape", ["o", "back_target"], ["ob"], name="unflat"),
        node("Transpose", ["ob"], ["y"], name="batch_first", perm=[1, 0, 2]),
    ]
    causal = np.triu(np.full((length, length), -1e4, np.float32), 1)
    inits = [("zero", np.array(0)), ("heads", np.array(heads)), ("axis0", [0]), ("heads1", [heads]),
             ("len", [length]), ("hd", [hd]), ("embed", [embed]), ("thirds", [embed] * 3),
             ("minus_one_l_hd", [-1, length, hd]), ("len_n", [-1]),
             ("w_in", weights(rng, embed, 3 * embed)), ("b_in", weights(rng, 3 * embed, scale=0.1)),
             ("scale", np.array(1 / math.sqrt(hd), np.float32)), ("causal", causal),
             ("w_out", weights(rng, embed, embed)), ("b_out", weights(rng, embed, scale=0.1))]
    return model(nodes, inits, (length, embed), opset=opset, name="mha")


def test_exported_attention_with_the_batch_merged_into_the_heads(rng):
    g = assert_matches(mha_model(rng), _x(rng, 4, 6))
    assert {"matmul", "softmax", "linear"} <= set(_ops(g))
    assert_matches(mha_model(rng), rng.normal(size=(5, 4, 6)).astype(np.float32))   # any batch size


def test_a_tensor_with_a_merged_batch_is_refused_where_it_has_no_meaning(rng):
    m = mha_model(rng)
    for n in m.graph.node:
        if n.name == "k_transpose":                          # Softmax over (N * heads, L, hd) mixes samples' rows?
            n.CopyFrom(node("Relu", ["k3"], ["k3t"], name="k_transpose"))
    with pytest.raises(attribx.UnsupportedError, match=r"'k_transpose' \(Relu.*merged with other axes"):
        attribx.translate(m)


def test_a_reshape_that_mixes_samples_is_still_refused(rng):
    """(N, 4) -> (2, 2N): the batch would not stay apart (data of one sample on both sides)."""
    nodes = [node("Shape", ["x"], ["sx"], name="shape", end=1), node("Mul", ["sx", "two"], ["n2"], name="n2"),
             node("Concat", ["two", "n2"], ["t"], name="t", axis=0),
             node("Reshape", ["x", "t"], ["r"], name="mix"), node("Relu", ["r"], ["y"], name="relu")]
    m = model(nodes, [("two", [2])], (4,), opset=17)
    with pytest.raises(attribx.UnsupportedError, match=r"'mix' \(Reshape.*move data between samples"):
        attribx.translate(m)


# ----------------------------------------------------------------------------------------------
# a torchvision ViT exported with torch.onnx.export


#: Methods whose relevance on the ONNX export must equal the torch translation's (same torch model).
METHODS = ("lrp.attn", "lrp.cp", "gradient_x_input")

VIT_SCRIPT = """
import sys, numpy as np, torch, torchvision
torch.manual_seed(0)
net = NET.eval().to(DTYPE)
with torch.no_grad():                       # torchvision zero-initialises the head and the class token
    for p in (net.heads.head.weight, net.heads.head.bias, net.class_token):
        p.normal_(0, 0.5 / net.hidden_dim ** 0.5 * 4)
out, x = sys.argv[1], torch.randn(2, 3, SIZE, SIZE, dtype=DTYPE)
torch.onnx.export(net, (x,), out + "/dynamo.onnx", dynamo=True, opset_version=18, external_data=False,
                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
if TORCHSCRIPT:
    torch.onnx.export(net, (x,), out + "/torchscript.onnx", dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}})
x = torch.tensor(np.random.default_rng(1).normal(size=(2, 3, SIZE, SIZE)), dtype=DTYPE, requires_grad=True)
y = net(x)
y[torch.arange(2), torch.tensor([1, 3])].sum().backward()
ref = {"x": x.detach().numpy(), "autograd_x_input": (x.grad * x).detach().numpy(), "logits": y.detach().numpy()}
try:                                        # the torch translation's relevance, where attribx translates torch ViTs
    import attribx
    g = attribx.translate(net, input_shape=(3, SIZE, SIZE))
    for method in METHODS:
        ref[method] = np.asarray(attribx.explain(g, ref["x"], method, target=[1, 3], engine=ENGINE))
except attribx.UnsupportedError as err:
    print("no torch translation:", err)
np.savez(out + "/reference.npz", **ref)
"""


def vit_script(net: str, size: int, torchscript: bool, engine: str | None, dtype: str = "float32") -> str:
    """The export script for a torchvision ViT (``net``: its constructor call)."""
    head = f"METHODS, SIZE, TORCHSCRIPT, ENGINE = {METHODS!r}, {size}, {torchscript}, {engine!r}\n"
    return head + VIT_SCRIPT.replace("NET", net).replace("import sys,", f"import torch\nDTYPE = torch.{dtype}\nimport sys,")


SMALL_VIT = ("torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, "
             "hidden_dim=32, mlp_dim=64, num_classes=5)")


def _in_subprocess(tmp_path_factory, script: str, name: str, modules) -> object:
    """Run ``script`` with a fresh folder as its argument and return the folder; torch runs there, never
    next to TensorFlow in the test process (torch.export's imports crash there)."""
    import importlib.util
    import subprocess
    import sys
    for mod in modules:
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    out = tmp_path_factory.mktemp(name)
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def vit_exports(tmp_path_factory):
    """A small torchvision ViT exported by both torch exporters, torch autograd's gradient x input
    (targets 1, 3) and the torch translation's relevance."""
    return _in_subprocess(tmp_path_factory, vit_script(SMALL_VIT, 32, True, "numpy"), "vit",
                          ("torch", "torchvision", "onnxscript"))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_exported_torchvision_vit_translates(rng, vit_exports, exporter):
    m = onnx.load(str(vit_exports / f"{exporter}.onnx"))
    x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    g = assert_matches(m, x)
    ops = _ops(g)
    assert ops.count("layer_norm") == 5 and ops.count("softmax") == 2 and ops.count("gelu") == 2
    assert "fill" in ops and ops.count("matmul") == 4


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_exported_vit_gradient_times_input_equals_torch_autograd(vit_exports, exporter):
    ref = np.load(vit_exports / "reference.npz")
    m = onnx.load(str(vit_exports / f"{exporter}.onnx"))
    rel = attribx.explain(m, ref["x"], "gradient_x_input", target=[1, 3])
    assert relative_error(np.asarray(rel), ref["autograd_x_input"]) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_exported_vit_relevance_equals_the_torch_translation(vit_exports, exporter, method):
    """The ONNX export and the torch model itself: the same relevance (≤1e-4 in float32), AttnLRP and
    CP-LRP included, although the export packs q, k, v into one projection and merges batch and heads."""
    ref = np.load(vit_exports / "reference.npz")
    if method not in ref:
        pytest.skip("this attribx does not translate torchvision's ViT from torch")
    m = onnx.load(str(vit_exports / f"{exporter}.onnx"))
    rel = np.asarray(attribx.explain(m, ref["x"], method, target=[1, 3], engine="numpy"))
    assert np.abs(ref[method]).max() > 0 and np.isfinite(rel).all()
    assert relative_error(rel, ref[method]) <= 1e-5     # the scale is taken after q @ k, as torch's graph does


@pytest.fixture(scope="module")
def vit_b_16_export(tmp_path_factory):
    """torchvision's vit_b_16 in float64, exported with the dynamo exporter."""
    return _in_subprocess(tmp_path_factory, vit_script("torchvision.models.vit_b_16()", 224, False, None, "float64"),
                          "vit_b_16", ("torch", "torchvision", "onnxscript"))


@pytest.mark.slow
def test_exported_vit_b_16_relevance_equals_the_torch_translation(vit_b_16_export):
    """torchvision's vit_b_16 (random weights, float64: onnxruntime has no float64 Erf, torch is the
    reference): forward equal to torch, and lrp.attn, lrp.cp, gradient x input equal to the torch
    translation's (≤1e-8: the two graphs compute the same). In float32 the exported graph and torch's
    round differently: lrp.attn then differs by 6e-5 to 2e-4 over 12 blocks (measured by hand)."""
    ref = np.load(vit_b_16_export / "reference.npz")
    if "lrp.attn" not in ref:
        pytest.skip("this attribx does not translate torchvision's ViT from torch")
    g = attribx.translate(onnx.load(str(vit_b_16_export / "dynamo.onnx")))
    assert relative_error(np.asarray(attribx.forward(g, ref["x"])), ref["logits"]) <= 1e-10
    for method in METHODS:
        rel = np.asarray(attribx.explain(g, ref["x"], method, target=[1, 3]))
        assert relative_error(rel, ref[method]) <= 1e-8, method


# ----------------------------------------------------------------------------------------------
# a HuggingFace GPT-2 config exported with torch.onnx.export


GPT2_SCRIPT = """
import sys, numpy as np, torch, transformers
cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=50, n_positions=16)
torch.manual_seed(0)
net = transformers.GPT2LMHeadModel(cfg).eval()
with torch.no_grad():                       # random everything (biases and norms too, not their init)
    for p in net.parameters():
        p.normal_(0, 0.2)


class Logits(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids):
        return self.m(input_ids=ids, use_cache=False).logits


out, ids = sys.argv[1], torch.randint(0, 50, (2, 8))
torch.onnx.export(Logits(net).eval(), (ids,), out + "/dynamo.onnx", dynamo=True, opset_version=18,
                  dynamic_shapes={"ids": {0: torch.export.Dim("batch")}})
torch.onnx.export(Logits(net).eval(), (ids,), out + "/torchscript.onnx", dynamo=False, opset_version=17,
                  input_names=["ids"], dynamic_axes={"ids": {0: "N"}})
ids = torch.tensor(np.random.default_rng(2).integers(0, 50, (2, 8)))
targets = torch.tensor([3, 7])
emb = net.transformer.wte(ids).detach().requires_grad_(True)
logits = net(inputs_embeds=emb, use_cache=False).logits
logits[torch.arange(2), -1, targets].sum().backward()
np.savez(out + "/reference.npz", ids=ids.numpy(), targets=targets.numpy(), logits=logits.detach().numpy(),
         grad_x_input=(emb.grad * emb).sum(-1).detach().numpy())
"""


@pytest.fixture(scope="module")
def gpt2_exports(tmp_path_factory):
    """A 2-layer GPT-2 config with random weights, exported by both exporters, and torch autograd's
    embedding x gradient per token for the last position's target logit."""
    return _in_subprocess(tmp_path_factory, GPT2_SCRIPT, "gpt2", ("torch", "transformers", "onnxscript"))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_exported_gpt2_translates_and_its_relevance_equals_torch(gpt2_exports, exporter):
    """Token ids in; the causal mask (an expanded constant, or Trilu/Where folded), the tanh GELU written
    with Pow 3, Conv1D's (N * T, E) Gemm: forward equal to onnxruntime and to torch, and embedding x gradient
    per token equal to torch autograd's (the explained logit: each sample's target at the last position)."""
    ref = np.load(gpt2_exports / "reference.npz")
    m = onnx.load(str(gpt2_exports / f"{exporter}.onnx"))
    ids = ref["ids"].astype(np.int64)
    g = assert_matches(m, ids)
    assert _ops(g).count("gelu") == 2 and _ops(g).count("softmax") == 2 and "embedding" in _ops(g)
    assert relative_error(np.asarray(attribx.forward(g, ids, engine="numpy")), ref["logits"]) <= 1e-5
    init = np.zeros(ref["logits"].shape, np.float32)
    init[[0, 1], -1, ref["targets"]] = 1.0
    lookup = [n for n in g.nodes if n.op == "embedding"][0]
    ds = attribx.explain(g, ids, "gradient", output_init=init, engine="numpy", layers=[lookup.name])
    grad = np.asarray(ds[lookup.name])                           # the gradient at the token embeddings
    per_token = (grad * lookup.params["weight"][ids]).sum(-1)    # embedding x gradient, as LXT defines it
    assert relative_error(per_token, ref["grad_x_input"]) <= 1e-4


def test_tanh_gelu_written_with_pow_is_one_gelu(rng):
    """0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), as HuggingFace's gelu_new is exported."""
    nodes = [node("Mul", ["x", "half"], ["h"], name="half"), node("Pow", ["x", "three"], ["p"], name="cube"),
             node("Mul", ["p", "c"], ["pc"], name="coef"), node("Add", ["x", "pc"], ["s"], name="inner"),
             node("Mul", ["s", "k"], ["sk"], name="scale"), node("Tanh", ["sk"], ["t"], name="tanh"),
             node("Add", ["t", "one"], ["a"], name="plus_one"), node("Mul", ["h", "a"], ["y"], name="gelu")]
    consts = {"half": 0.5, "three": 3.0, "c": 0.044715, "k": math.sqrt(2 / math.pi), "one": 1.0}
    m = model(nodes, [(k, np.array(v), np.float32) for k, v in consts.items()], (6,))
    g = assert_matches(m, _x(rng, 6) * 3)
    assert _ops(g) == ["gelu"] and g.nodes[-1].attrs["approximate"] == "tanh"
    m64 = _as_float64(model(nodes, [(k, np.array(v), np.float64) for k, v in consts.items()], (6,)))
    assert_matches(m64, _x(rng, 6, dtype=np.float64) * 3, tol=1e-12)    # exact constants in float64


def test_class_token_of_a_model_exported_with_batch_one(rng):
    """torch.export specialises a batch of 1: the token is a (1, 1, D) constant, the input (1, ...); the
    graph runs any batch size."""
    nodes = [node("Concat", ["token", "x"], ["y"], name="cat", axis=1)]
    m = model(nodes, [("token", weights(rng, 1, 1, 4))], (3, 4), batch=1)
    g = attribx.translate(m)
    x = _x(rng, 3, 4)
    ref = np.concatenate([np.asarray(run_ort(m, x[i:i + 1])[0]) for i in range(2)])
    assert relative_error(np.asarray(attribx.forward(g, x, engine="numpy")), ref) <= 1e-6
