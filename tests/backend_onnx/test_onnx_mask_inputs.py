"""ONNX models with an ``attention_mask`` input (issue 19): an integer or boolean input that only decides is a
mask input (it takes no relevance); what the exporters compute from it (casts, comparisons, Where conditions,
the large-negative additive mask on the attention scores, HF's whole-tensor ScatterND) translates, so a HF BERT
and GPT-2 config exported with ``(input_ids, attention_mask)`` by both exporters give torch's forward, torch
autograd's gradient x input and the torch translation's lrp.attn / lrp.cp on padded inputs."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("attribx_onnx")

from onnx import TensorProto, helper  # noqa: E402

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from onnx_builders import model, run_ort, weights  # noqa: E402
from test_onnx_transformer import _in_subprocess  # noqa: E402

node = helper.make_node


def _inputs(x_shape, m_shape, m_type=TensorProto.INT64, x_type=TensorProto.FLOAT):
    return [helper.make_tensor_value_info("x", x_type, ["N", *x_shape]),
            helper.make_tensor_value_info("m", m_type, ["N", *m_shape])]


def _ort(m, x, mask):
    import onnxruntime as ort
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x, "m": mask})[0]


def masked_attention(rng, m_type=TensorProto.INT64, gate=False):
    """softmax(x xᵀ + (1 - m) * -1e9) x, keys masked by an (N, T) 0/1 input, as a BERT export writes it
    (Unsqueeze, Cast, Sub, Cast to bool, Where); ``gate``: the output times the mask (padded rows zeroed)."""
    nodes = [node("MatMul", ["x", "w"], ["h"], name="proj"),
             node("Transpose", ["h"], ["ht"], name="keys_t", perm=[0, 2, 1]),
             node("MatMul", ["h", "ht"], ["scores"], name="scores"),
             node("Unsqueeze", ["m", "one"], ["m1"], name="unsqueeze"),
             node("Cast", ["m1"], ["mf"], name="to_float", to=TensorProto.FLOAT),
             node("Sub", ["c1", "mf"], ["inv"], name="invert"),
             node("Cast", ["inv"], ["invb"], name="to_bool", to=TensorProto.BOOL),
             node("Where", ["invb", "neg", "inv"], ["add_mask"], name="fill"),
             node("Add", ["scores", "add_mask"], ["masked"], name="masked"),
             node("Softmax", ["masked"], ["att"], name="softmax", axis=-1),
             node("MatMul", ["att", "h"], ["ctx" if gate else "y"], name="context")]
    if gate:
        nodes += [node("Cast", ["m"], ["mb"], name="gate_bool", to=TensorProto.BOOL),
                  node("Cast", ["mb"], ["mg"], name="gate_float", to=TensorProto.FLOAT),
                  node("Unsqueeze", ["mg", "two"], ["mg2"], name="gate_axis"),
                  node("Mul", ["ctx", "mg2"], ["y"], name="gate")]
    inits = [("w", weights(rng, 4, 4)), ("one", [1]), ("two", [2]), ("c1", np.array(1.0, np.float32)),
             ("neg", np.array(np.finfo(np.float32).min, np.float32))]
    return model(nodes, inits, inputs=_inputs((5, 4), (5,), m_type), opset=17)


def _padded(rng, n=3):
    x = rng.normal(size=(n, 5, 4)).astype(np.float32)
    mask = np.ones((n, 5), np.int64)
    mask[1, 3:] = 0
    mask[2, 1] = 0
    return x, mask


@pytest.mark.parametrize("gate", [False, True])
def test_an_integer_input_that_only_decides_is_a_mask_input(rng, gate):
    m = masked_attention(rng, gate=gate)
    g = attribx.translate(m)
    assert [v.name for v in g.mask_inputs] == ["m"] and g.input.name == "x"
    x, mask = _padded(rng)
    assert relative_error(np.asarray(attribx.forward(g, (x, mask), engine="numpy")), _ort(m, x, mask)) <= 1e-6
    ones = np.ones_like(mask)                          # no mask given: everything attends
    assert relative_error(np.asarray(attribx.forward(g, x, engine="numpy")), _ort(m, x, ones)) <= 1e-6


def test_masked_keys_take_no_relevance_and_gates_share_none(rng):
    """A masked key's attention weight is 0; a 0/1 gate (the output times the mask) is a selection (``where``),
    so the mask takes no share of the relevance: ε-free CP-LRP (attention weights constant, no biases)
    conserves the explained output per sample, and masked positions (keys, gated rows) get exactly none."""
    m = masked_attention(rng, gate=True)
    g = attribx.translate(m)
    assert g["gate"].op == "where"
    x, mask = _padded(rng)
    out = np.asarray(attribx.forward(g, (x, mask), engine="numpy"))
    rel = np.asarray(attribx.explain(g, (x, mask), "lrp.cp", output_init=out, epsilon=0.0, engine="numpy"))
    assert relative_error(rel.sum(axis=(1, 2)), out.sum(axis=(1, 2))) <= 1e-5
    assert not rel[mask == 0].any() and np.abs(rel[mask == 1]).sum(-1).all()


def test_bool_mask_input(rng):
    m = masked_attention(rng, m_type=TensorProto.BOOL)
    g = attribx.translate(m)
    x, mask = _padded(rng)
    got = np.asarray(attribx.forward(g, (x, mask.astype(bool)), engine="numpy"))
    assert relative_error(got, _ort(m, x, mask.astype(bool))) <= 1e-6


def test_an_integer_input_read_as_token_ids_is_no_mask():
    """token_type_ids: an embedding reads it, so it is a second explained input, refused for now."""
    nodes = [node("Gather", ["table", "m"], ["e"], name="types"), node("Add", ["x", "e"], ["y"], name="add")]
    m = model(nodes, [("table", np.ones((2, 4), np.float32))], inputs=_inputs((5, 4), (5,)), opset=17)
    with pytest.raises(attribx.UnsupportedError, match="2 inputs .*besides its mask inputs"):
        attribx.translate(m)


def test_an_op_on_a_mask_without_translation_is_refused_naming_it(rng):
    """Position ids counted from the mask (CumSum) have no translation: the error names the op."""
    nodes = [node("Cast", ["m"], ["mf"], name="to_float", to=TensorProto.FLOAT),
             node("CumSum", ["mf", "axis"], ["pos"], name="positions"),
             node("Unsqueeze", ["pos", "two"], ["p2"], name="unsqueeze"),
             node("Add", ["x", "p2"], ["y"], name="add")]
    m = model(nodes, [("axis", np.array(1)), ("two", [2])], inputs=_inputs((5, 4), (5,)), opset=17)
    with pytest.raises(attribx.UnsupportedError, match=r"'positions' \(CumSum"):
        attribx.translate(m)


def test_a_condition_computed_from_the_signal_is_refused(rng):
    """x > 0 decides on the signal itself (a ReLU written as Where): no translation, the error names the op."""
    nodes = [node("Greater", ["x", "zero"], ["pos"], name="positive"),
             node("Where", ["pos", "x", "zero"], ["y"], name="select")]
    m = model(nodes, [("zero", np.array(0.0, np.float32))], (4,), opset=17)
    with pytest.raises(attribx.UnsupportedError, match=r"'positive' \(Greater"):
        attribx.translate(m)


# ----------------------------------------------------------------------------------------------
# HF BERT and GPT-2 configs exported with (input_ids, attention_mask)


# the HF model as a module of (ids, mask) returning the logits, for torch.onnx.export (in the scripts below)
LOGITS_WITH_MASK = """

class Logits(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, ids, mask):
        return self.m(input_ids=ids, attention_mask=mask, return_dict=False)[0]
"""

HF_SCRIPT = """
import sys, numpy as np, torch, transformers
import attribx
METHODS = ("lrp.attn", "lrp.cp")
out = sys.argv[1]
torch.manual_seed(0)
gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=50,
                                                            n_positions=16)).eval()
bert = transformers.BertForSequenceClassification(transformers.BertConfig(
    num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64, vocab_size=50,
    max_position_embeddings=16, num_labels=3)).eval()
for net in (gpt, bert):
    with torch.no_grad():                   # random everything (biases and norms too, not their init)
        for p in net.parameters():
            p.normal_(0, 0.2)

""" + LOGITS_WITH_MASK + """

rng = np.random.default_rng(2)
for name, net, embed in (("gpt2", gpt, gpt.transformer.wte), ("bert", bert, bert.bert.embeddings.word_embeddings)):
    ids = torch.randint(0, 50, (2, 8))
    example = (ids, torch.ones_like(ids))
    batch = torch.export.Dim("batch")
    torch.onnx.export(Logits(net).eval(), example, f"{out}/{name}_dynamo.onnx", dynamo=True, opset_version=18,
                      external_data=False, dynamic_shapes={"ids": {0: batch}, "mask": {0: batch}})
    torch.onnx.export(Logits(net).eval(), example, f"{out}/{name}_torchscript.onnx", dynamo=False,
                      opset_version=17, input_names=["ids", "mask"],
                      dynamic_axes={"ids": {0: "N"}, "mask": {0: "N"}})
    ids = torch.tensor(rng.integers(0, 50, (3, 8)))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0                          # right padding; BERT's [CLS] (position 0) and GPT-2's position 4 stay
    mask[2, 6:] = 0
    if name == "bert":
        mask[2, 2:4] = 0                     # holes too: only keys are masked
    targets = torch.tensor([1, 2, 0]) if name == "bert" else torch.tensor([3, 7, 11])
    kw = {} if name == "bert" else {"position": 4}
    emb = embed(ids).detach().requires_grad_(True)
    logits = net(inputs_embeds=emb, attention_mask=mask, return_dict=False)[0]
    chosen = logits[torch.arange(3), targets] if name == "bert" else logits[torch.arange(3), 4, targets]
    chosen.sum().backward()
    ref = {"ids": ids.numpy(), "mask": mask.numpy(), "targets": targets.numpy(), "logits": logits.detach().numpy(),
           "grad_x_input": (emb.grad * emb).sum(-1).detach().numpy()}
    for method in METHODS:
        ref[method] = np.asarray(attribx.explain(net, (ids, mask), method, target=targets.tolist(), **kw))
    np.savez(f"{out}/{name}_reference.npz", **ref)
"""


@pytest.fixture(scope="module")
def hf_exports(tmp_path_factory):
    """2-layer BERT (sequence classifier) and GPT-2 configs with random weights, exported with (ids, mask) by
    both exporters; torch autograd's embedding x gradient and the torch translation's lrp.attn / lrp.cp on
    padded inputs (targets per sample; GPT-2 at position 4, which every sequence keeps)."""
    return _in_subprocess(tmp_path_factory, HF_SCRIPT, "hf_masks", ("torch", "transformers", "onnxscript"))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_exported_hf_model_with_attention_mask_equals_torch(hf_exports, name, exporter):
    ref = np.load(hf_exports / f"{name}_reference.npz")
    m = onnx.load(str(hf_exports / f"{name}_{exporter}.onnx"))
    ids, mask = ref["ids"].astype(np.int64), ref["mask"].astype(np.int64)
    g = attribx.translate(m)
    assert [v.name for v in g.mask_inputs] == ["mask"]
    out = np.asarray(attribx.forward(g, (ids, mask), engine="numpy"))
    keep = mask.astype(bool) if out.ndim == 3 else slice(None)     # an LM's padded positions: anything
    assert relative_error(out[keep], ref["logits"][keep]) <= 1e-5
    import onnxruntime as ort
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    assert relative_error(out[keep], sess.run(None, {"ids": ids, "mask": mask})[0][keep]) <= 1e-5
    rows = np.arange(3)
    init = np.zeros(out.shape, np.float32)
    at = (rows, ref["targets"]) if name == "bert" else (rows, 4, ref["targets"])
    init[at] = 1.0
    lookup = [n for n in g.nodes if n.op == "embedding"][0]
    ds = attribx.explain(g, (ids, mask), "gradient", output_init=init, engine="numpy", layers=[lookup.name])
    per_token = (np.asarray(ds[lookup.name]) * lookup.params["weight"][ids]).sum(-1)
    assert relative_error(per_token, ref["grad_x_input"]) <= 1e-4
    init[at] = out[at]                                             # LRP starts from the explained logit
    for method in ("lrp.attn", "lrp.cp"):
        for engine in ("numpy", "torch"):
            rel = np.asarray(attribx.explain(g, (ids, mask), method, output_init=init, engine=engine))
            assert relative_error(rel, ref[method]) <= 1e-4, (method, engine)
            if name == "bert":
                assert not rel[mask == 0].any()                    # masked keys: no attention, no relevance


# ----------------------------------------------------------------------------------------------
# equal to LXT 2.1 on the ONNX export (LXT in its own subprocess: it patches transformers' classes)


LXT_EXPORT = """
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[2])
from hf_models import build

""" + LOGITS_WITH_MASK + """

out = sys.argv[1]
for name in ("bert", "gpt2"):
    net = build(name, "eager")                                   # float64: LXT's reference runs on these weights
    torch.save(net.state_dict(), f"{out}/{name}.pt")
    ids = torch.randint(0, 50, (2, 7))
    batch = torch.export.Dim("batch")
    torch.onnx.export(Logits(net.float()).eval(), (ids, torch.ones_like(ids)), f"{out}/{name}.onnx", dynamo=True,
                      opset_version=18, external_data=False, dynamic_shapes={"ids": {0: batch}, "mask": {0: batch}})
"""

LXT_CASES = [("bert", "attnLRP", "lrp.attn"), ("gpt2", "attnLRP", "lrp.attn"), ("gpt2", "cp_LRP", "lrp.cp")]


@pytest.fixture(scope="module")
def lxt_exports(tmp_path_factory):
    import importlib.util
    from pathlib import Path
    if importlib.util.find_spec("lxt") is None:
        pytest.skip("lxt is not installed")
    script = LXT_EXPORT.replace("sys.argv[2]", repr(str(Path(__file__).parent.parent / "backend_torch")))
    return _in_subprocess(tmp_path_factory, script, "hf_lxt", ("torch", "transformers", "onnxscript"))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::attribx.errors.ConservationWarning")   # AttnLRP does not conserve
@pytest.mark.parametrize("name,variant,method", LXT_CASES)
def test_exported_hf_model_with_attention_mask_equals_lxt(lxt_exports, tmp_path, name, variant, method):
    """The ONNX export (float32) of the HF configs LXT is tested on, padded (right padding; BERT reads [CLS],
    GPT-2 position 4, which every sequence keeps): ε-free relevance equal to LXT's on the float64 model (≤1e-4)."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    here = Path(__file__).parent.parent
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 50, (3, 7)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 6:] = 0
    targets, position = [1, 2], 4 if name == "gpt2" else -1
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "mask.npy", mask)
    reqs = [dict(model=name, attn="eager", variant=variant, weights=str(lxt_exports / f"{name}.pt"),
                 ids=str(tmp_path / "ids.npy"), mask=str(tmp_path / "mask.npy"), target=t, position=position,
                 anchors=str(here / "anchors"), out=str(tmp_path / f"{k}.npz")) for k, t in enumerate(targets)]
    (tmp_path / "req.json").write_text(json.dumps(reqs))
    run = subprocess.run([sys.executable, str(here / "backend_torch" / "hf_models.py"), str(tmp_path / "req.json")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    g = attribx.translate(onnx.load(str(lxt_exports / f"{name}.onnx")))
    out = np.asarray(attribx.forward(g, (ids, mask), engine="numpy"))
    for req, t in zip(reqs, targets):
        ref = np.load(req["out"])
        init = np.zeros(out.shape, np.float32)
        at = (slice(None), t) if name == "bert" else (slice(None), position, t)
        init[at] = out[at]
        rel = np.asarray(attribx.explain(g, (ids, mask), method, output_init=init, epsilon=0.0, engine="numpy"))
        assert relative_error(rel, ref["relevance"]) <= 1e-4, t
