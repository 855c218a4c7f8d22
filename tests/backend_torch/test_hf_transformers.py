"""HuggingFace transformers (BERT, GPT-2, Llama, ViT from small configs) through torch.export: the graph's forward
equals HF's, gradients equal torch autograd, AttnLRP / CP-LRP equal LXT 2.1's (issue 19), and the language-model
API (position=, contrast targets, layers=) gives what a hand derivation says."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import attribx  # noqa: E402
from attribx.errors import InputError, InputShapeError, UnsupportedError  # noqa: E402

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from hf_models import SEQ, VOCAB, build  # noqa: E402


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def ids(seed: int = 3, n: int = 2, length: int = SEQ):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, length), generator=g)


def hf_logits(model, x):
    name = model.main_input_name
    extra = {"use_cache": False} if name == "input_ids" and "use_cache" in model.forward.__code__.co_varnames else {}
    return model(**{name: x}, **extra).logits


def inputs_for(name, dtype=torch.float64):
    if name == "vit":
        return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return ids()


# ----------------------------------------------------------------------------------------------
# translation


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "vit"])
def test_forward_equals_hf(name, attn):
    for dtype, tol in ((torch.float64, 1e-5), (torch.float32, 1e-4)):
        model = build(name, attn, str(dtype).split(".")[1])
        x = inputs_for(name, dtype)
        ref = hf_logits(model, x).detach().numpy()
        out = attribx.forward(model, x)
        assert out.dtype == ref.dtype
        assert rel_err(out, ref) <= tol, (name, attn, dtype)


@pytest.mark.parametrize("name", ["qwen2", "gemma"])
def test_relatives_forward_equals_hf(name):
    """Relatives of Llama: Qwen2 (biases on q, k, v) and Gemma (RMSNorm scaled by 1 + weight: fused as such only
    because the module is checked to compute it), with and without padding."""
    model = build(name, "sdpa")
    x, mask = padded(name, "sdpa")
    assert rel_err(attribx.forward(model, x), hf_logits(model, x).detach().numpy()) <= 1e-5
    ref = model(input_ids=x, attention_mask=mask, use_cache=False).logits.detach().numpy()
    keep = mask.bool().numpy()
    assert rel_err(attribx.forward(model, (x, mask))[keep], ref[keep]) <= 1e-5
    rel = attribx.explain(model, (x, mask), "lrp.attn", target=1, position=4)
    assert np.isfinite(rel.values).all()


def test_a_norm_that_only_shares_the_name_is_not_fused(monkeypatch):
    """An *RMSNorm class computing something else keeps its pieces: an error naming the op, never a wrong norm."""
    import transformers.models.llama.modeling_llama as llama

    def other(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * hidden_states * torch.rsqrt(variance + self.variance_epsilon) * 2.0
    monkeypatch.setattr(llama.LlamaRMSNorm, "forward", other)
    with pytest.raises(UnsupportedError, match="aten.pow"):
        attribx.translate(build("llama"), input_shape=(SEQ,))


def test_fused_modules_and_names():
    """RMSNorm, gelu_new and Conv1D are one op each, named by the module's path."""
    llama = attribx.translate(build("llama"), input_shape=(SEQ,))
    assert llama["model.layers.0.input_layernorm"].op == "rms_norm"
    assert llama["model.layers.0.mlp.act_fn"].op == "silu"
    gpt2 = attribx.translate(build("gpt2"), input_shape=(SEQ,))
    assert gpt2["transformer.h.0.mlp.act"].op == "gelu"
    assert gpt2["transformer.h.0.mlp.act"].attrs["approximate"] == "tanh"
    assert gpt2["transformer.h.0.attn.c_attn"].op == "linear"
    assert not any(n.op == "matmul" and "c_attn" in n.name for n in gpt2.nodes)


def test_translation_is_per_sequence_length():
    """Causal masks and rotary tables are constants of the length: each length its own (cached) translation."""
    model = build("llama")
    for length in (5, 9, 5):
        x = ids(length=length)
        assert rel_err(attribx.forward(model, x), hf_logits(model, x).detach().numpy()) <= 1e-5
    assert attribx.translate(model, input_shape=(5,)).input.shape == (None, 5)
    assert attribx.translate(model, input_shape=(9,)).input.shape == (None, 9)


def test_hf_model_needs_a_shape():
    with pytest.raises(InputShapeError, match="input_shape=\\(T,\\)"):
        attribx.translate(build("gpt2"))


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_gradient_equals_autograd(name):
    """The gradient method's relevance at the token embeddings is torch's gradient of the logit there."""
    model = build(name)
    x = ids()
    emb_name = {"gpt2": "transformer.wte", "llama": "model.embed_tokens", "bert": "bert.embeddings.word_embeddings"}
    kw = {} if name == "bert" else {"position": -1}
    ours = attribx.explain(model, x, "gradient", target=2, layers=[emb_name[name]], **kw)
    embeds = model.get_input_embeddings()(x).detach().requires_grad_(True)
    extra = {} if name == "bert" else {"use_cache": False}
    out = model(inputs_embeds=embeds, **extra).logits
    score = out[:, 2] if out.dim() == 2 else out[:, -1, 2]
    grad, = torch.autograd.grad(score.sum(), embeds)
    assert rel_err(ours[emb_name[name]].values, grad.numpy()) <= 1e-6


def test_vit_gradient_x_input_equals_autograd():
    model = build("vit")
    x = inputs_for("vit")
    ours = attribx.explain(model, x, "gradient_x_input", target=3)
    xr = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(model(pixel_values=xr).logits[:, 3].sum(), xr)
    assert rel_err(ours.values, (x * grad).numpy()) <= 1e-6


# ----------------------------------------------------------------------------------------------
# equal to LXT 2.1 (a subprocess: LXT patches transformers' classes)


def lxt_relevance(tmp_path, name, variant, x, targets, position=-1, attn="eager", mask=None):
    """LXT's token relevance (N, T) per target, and its explained scores, from a subprocess."""
    pytest.importorskip("lxt")
    model = build(name, attn)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    np.save(tmp_path / "ids.npy", x.numpy())
    if mask is not None:
        np.save(tmp_path / "mask.npy", mask.numpy())
    out = []
    for k, t in enumerate(targets):
        req = dict(model=name, attn=attn, variant=variant, weights=str(tmp_path / "w.pt"), ids=str(tmp_path / "ids.npy"),
                   target=int(t), position=position, anchors=str(HERE.parent / "anchors"), out=str(tmp_path / f"{k}.npz"),
                   mask=None if mask is None else str(tmp_path / "mask.npy"))
        out.append(req)
    (tmp_path / "req.json").write_text(json.dumps(out))
    run = subprocess.run([sys.executable, str(HERE / "hf_models.py"), str(tmp_path / "req.json")], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return [np.load(r["out"]) for r in out], model


LXT_CASES = [("gpt2", "attnLRP", "lrp.attn"), ("gpt2", "cp_LRP", "lrp.cp"), ("llama", "attnLRP", "lrp.attn"),
             ("llama", "cp_LRP", "lrp.cp"), ("bert", "attnLRP", "lrp.attn")]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::attribx.errors.ConservationWarning")   # AttnLRP does not conserve
@pytest.mark.parametrize("name,variant,method", LXT_CASES)
def test_equal_to_lxt(tmp_path, name, variant, method):
    """Input relevance (token embeddings × gradient, LXT's definition) equals ours with ε = 0, to 1e-4 relative,
    for several inputs, targets and positions."""
    x = torch.cat([ids(3), ids(4)])
    targets = [0, 2] if name == "bert" else [1, 7, 23]     # BERT has 3 classes
    position = -1 if name == "bert" else 4
    refs, model = lxt_relevance(tmp_path, name, variant, x, targets, position)
    for t, ref in zip(targets, refs):
        kw = {} if name == "bert" else {"position": position}
        ours = attribx.explain(model, x, method, target=t, epsilon=0.0, **kw)
        assert ours.dims == ("sample", "token")
        assert rel_err(ours.values, ref["relevance"]) <= 1e-4, (name, variant, t)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::attribx.errors.ConservationWarning")
def test_latent_relevance_equals_lxt(tmp_path):
    """layers=: the relevance of GPT-2's residual stream after the embeddings and after block 0, in the same pass,
    equals LXT's hidden-state x gradient there."""
    x = ids(5)
    pytest.importorskip("lxt")
    model = build("gpt2")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    np.save(tmp_path / "ids.npy", x.numpy())
    req = dict(model="gpt2", attn="eager", variant="attnLRP", weights=str(tmp_path / "w.pt"),
               ids=str(tmp_path / "ids.npy"), target=9, position=-1, anchors=str(HERE.parent / "anchors"),
               out=str(tmp_path / "h.npz"), hidden=True)
    (tmp_path / "req.json").write_text(json.dumps([req]))
    run = subprocess.run([sys.executable, str(HERE / "hf_models.py"), str(tmp_path / "req.json")], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = np.load(tmp_path / "h.npz")
    graph = attribx.translate(model, input_shape=(SEQ,))
    # the residual stream: token + position embeddings, and after block 0 (the sum its MLP's output joins)
    first = next(n.name for n in graph.nodes if n.op == "add" and "transformer.wte" in n.inputs)
    block0 = next(n.name for n in graph.nodes if n.op == "add" and "transformer.h.0.mlp.c_proj" in n.inputs)
    ours = attribx.explain(model, x, "lrp.attn", target=9, position=-1, epsilon=0.0, layers=[first, block0])
    assert rel_err(ours[first].values, ref["hidden0"]) <= 1e-4
    assert rel_err(ours[block0].values, ref["hidden1"]) <= 1e-4
    assert rel_err(ours["relevance"].values, ref["relevance"]) <= 1e-4


# ----------------------------------------------------------------------------------------------
# the language-model API


@pytest.fixture(scope="module")
def gpt2():
    return build("gpt2")


def test_position_equals_explaining_that_output(gpt2):
    """position=p explains output[:, p, target]: the same as starting from an output_init that is the logit at
    (p, target) and zero elsewhere on the whole (N, T, V) output."""
    x = ids()
    logits = hf_logits(gpt2, x).detach().numpy()
    for p, t in ((-1, 5), (2, 11)):
        init = np.zeros_like(logits)
        init[:, p, t] = logits[:, p, t]
        ours = attribx.explain(gpt2, x, "lrp.attn", target=t, position=p, epsilon=0.0)
        whole = attribx.explain(gpt2, x, "lrp.attn", output_init=init, epsilon=0.0)
        assert rel_err(ours.values, whole.values) <= 1e-10
        assert list(ours.coords["target"].values) == [t, t]
        assert ours.attrs["position"] == p % SEQ


def test_contrast_is_the_difference(gpt2):
    """With LRP-0 on the linears every rule is linear in the relevance it receives, so explaining z_a − z_b is
    explaining z_a minus explaining z_b."""
    x = ids()
    for method in ("lrp.attn", "lrp.cp"):
        a = attribx.explain(gpt2, x, method, target=3, position=-1, epsilon=0.0).values
        b = attribx.explain(gpt2, x, method, target=8, position=-1, epsilon=0.0).values
        both = attribx.explain(gpt2, x, method, target=("contrast", 3, 8), position=-1, epsilon=0.0)
        assert rel_err(both.values, a - b) <= 1e-10


def test_layers_in_the_same_pass(gpt2):
    """layers=: the token embeddings' relevance summed over the embedding is the token relevance."""
    x = ids()
    res = attribx.explain(gpt2, x, "lrp.attn", target=3, position=-1, epsilon=0.0, layers=["transformer.wte"])
    assert res["transformer.wte"].shape == (2, SEQ, 32)
    assert rel_err(res["transformer.wte"].values.sum(-1), res["relevance"].values) <= 1e-12


def test_token_strings_as_coords(gpt2):
    x = ids()
    words = np.array([[f"t{int(i)}" for i in row] for row in x])
    res = attribx.explain(gpt2, x, "lrp.attn", target=3, position=-1, tokens=words)
    assert res.dims == ("sample", "token")
    assert res.coords["token_text"].values.tolist() == words.tolist()


def test_bad_positions_are_refused(gpt2):
    x = ids()
    with pytest.raises(InputError, match="out of range for an output with 7 positions"):
        attribx.explain(gpt2, x, "lrp.attn", target=3, position=7)
    with pytest.raises(InputError, match="position must be an int"):
        attribx.explain(gpt2, x, "lrp.attn", target=3, position="last")
    with pytest.raises(InputError, match="leave position out"):
        attribx.explain(build("bert"), x, "lrp.attn", target=1, position=-1)


def test_lm_output_needs_a_position(gpt2):
    with pytest.raises(InputError, match="position="):
        attribx.explain(gpt2, ids(), "lrp.attn", target=3)


def test_cp_lrp_on_bert_conserves_without_biases():
    """BERT's CP-LRP is ours alone (LXT 2.1 has none): attention weights constant, norms with constant std, GELU
    and the pooler's tanh by the identity rule. Without biases and position/type embeddings, with ε = 0 it
    conserves: the token relevance sums to the explained logit."""
    model = build("bert")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "position_embeddings" in name or "token_type" in name:
                p.zero_()
    x = ids()
    res = attribx.explain(model, x, "lrp.cp", target=1, epsilon=0.0)
    logit = hf_logits(model, x).detach().numpy()[:, 1]
    assert np.allclose(res.values.sum(1), logit, rtol=1e-8, atol=1e-12)


def test_docs_example_runs():
    """docs/transformers.md's first example runs as written."""
    text = (HERE.parents[1] / "docs" / "transformers.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "docs/transformers.md", "exec"), scope)
    assert scope["rel"].dims == ("sample", "token")
    assert scope["res"]["transformer.wte"].shape == (1, 7, 32)
    assert np.isfinite(scope["diff"].values).all()


# ----------------------------------------------------------------------------------------------
# attention_mask: a mask input (it decides, takes no relevance)


def padded(name, attn="eager"):
    """ids and an attention mask with right padding (sample 1) and left padding (sample 2; HF's own eager Llama
    turns fully masked rows into NaN, so right padding only there; BERT reads position 0 ([CLS]), which stays)."""
    x = torch.cat([ids(3), ids(4)[:1]])
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    if name == "bert":
        mask[2, 3:] = 0
    elif not (name == "llama" and attn == "eager"):
        mask[2, :2] = 0
    return x, mask


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_forward_with_attention_mask_equals_hf(name, attn):
    model = build(name, attn)
    x, mask = padded(name, attn)
    extra = {} if name == "bert" else {"use_cache": False}
    ref = model(input_ids=x, attention_mask=mask, **extra).logits.detach().numpy()
    graph = attribx.translate(model, input_shape=(SEQ,))
    assert [v.name for v in graph.mask_inputs] == ["attention_mask"] and graph.input.name == "input"
    for given in ((x, mask), {"input_ids": x, "attention_mask": mask}):
        out = attribx.forward(model, given)
        keep = slice(None) if name == "bert" else mask.bool().numpy()     # an LM's padded positions: anything
        assert rel_err(out[keep], ref[keep]) <= 1e-5
    # no mask given: everything attends
    assert rel_err(attribx.forward(model, x), hf_logits(model, x).detach().numpy()) <= 1e-5


def test_mask_input_takes_no_relevance_and_masks():
    """BERT's classification reads the [CLS] position; masked tokens reach it only as attention keys, whose
    weights the mask makes exactly 0: their relevance is exactly 0, and a mask of ones equals no mask."""
    model = build("bert")
    x, mask = padded("bert")
    rel = attribx.explain(model, (x, mask), "lrp.attn", target=1, epsilon=0.0).values
    assert not rel[mask.numpy() == 0].any() and rel[mask.numpy() == 1].all()
    ones = attribx.explain(model, (x, torch.ones_like(x)), "lrp.attn", target=1, epsilon=0.0).values
    assert np.array_equal(ones, attribx.explain(model, x, "lrp.attn", target=1, epsilon=0.0).values)


def test_several_inputs_are_checked(gpt2):
    x = ids()
    with pytest.raises(InputError, match="takes the explained input and the mask input"):
        attribx.explain(gpt2, (x, torch.ones_like(x), x), "lrp.attn", target=3, position=-1)
    with pytest.raises(InputError, match="'token_type_ids'"):
        attribx.explain(gpt2, {"input_ids": x, "token_type_ids": x}, "lrp.attn", target=3, position=-1)
    with pytest.raises(InputError, match="shaped like the explained input"):
        attribx.explain(gpt2, (x, torch.ones(2, 3)), "lrp.attn", target=3, position=-1)
    vit = build("vit")
    with pytest.raises(InputError, match="several signal inputs are not supported yet"):
        attribx.explain(vit, (inputs_for("vit"), inputs_for("vit")), "lrp.attn", target=3)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::attribx.errors.ConservationWarning")
@pytest.mark.parametrize("name,variant,method", LXT_CASES)
def test_equal_to_lxt_with_attention_mask(tmp_path, name, variant, method):
    """With padding and its attention_mask, at a position every sequence keeps (4), equal to LXT."""
    x, mask = padded(name)
    targets = [0, 2] if name == "bert" else [1, 23]
    refs, model = lxt_relevance(tmp_path, name, variant, x, targets, 4, mask=mask)
    for t, ref in zip(targets, refs):
        kw = {} if name == "bert" else {"position": 4}
        ours = attribx.explain(model, (x, mask), method, target=t, epsilon=0.0, **kw)
        assert rel_err(ours.values, ref["relevance"]) <= 1e-4, (name, variant, t)


def test_causal_lm_right_padding_does_not_reach_earlier_positions(gpt2):
    """The documented workaround without attention_mask: a position before right padding sees no padding."""
    x = ids()
    padded = x.clone()
    padded[:, 5:] = 0
    a = attribx.explain(gpt2, x, "lrp.attn", target=3, position=4, epsilon=0.0).values
    b = attribx.explain(gpt2, padded, "lrp.attn", target=3, position=4, epsilon=0.0).values
    assert np.array_equal(a[:, :5], b[:, :5]) and not a[:, 5:].any() and not b[:, 5:].any()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # numpy: the dtype's minimum added twice is -inf
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_numpy_engine_equals_torch_engine(name):
    """The rules run on every engine: the numpy engine gives the torch engine's relevance, masks included."""
    model = build(name)
    x, mask = padded(name)
    a = attribx.explain(model, (x, mask), "lrp.attn", target=1, position=4, engine="numpy", epsilon=0.0)
    b = attribx.explain(model, (x, mask), "lrp.attn", target=1, position=4, epsilon=0.0)
    assert rel_err(a.values, b.values) <= 1e-10


def test_saved_graph_keeps_its_mask_input(tmp_path, gpt2):
    x, mask = padded("gpt2")
    attribx.translate(gpt2, input_shape=(SEQ,)).save(tmp_path / "gpt2.npz")
    loaded = attribx.load_model(str(tmp_path / "gpt2.npz"))
    assert [v.name for v in loaded.mask_inputs] == ["attention_mask"]
    a = attribx.explain(loaded, (x.numpy(), mask.numpy()), "lrp.cp", target=2, position=4)
    b = attribx.explain(gpt2, (x, mask), "lrp.cp", target=2, position=4)
    assert rel_err(a.values, b.values) <= 1e-12
