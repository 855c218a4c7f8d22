"""Small HuggingFace models from configs (2 layers, hidden 32, random weights; nothing is downloaded), shared by
the tests and by the LXT subprocess (run as ``python hf_models.py request.json``): both build the same model, the
subprocess with LXT's patches applied first (see tests/anchors/lxt_reference.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

SEQ = 7
VOCAB = 50


def build(name: str, attn: str = "eager", dtype: str = "float64", seed: int = 0):
    """The model ``name`` (bert, gpt2, llama, qwen2, gemma, vit) with attention implementation ``attn``, in eval
    mode."""
    import torch
    import transformers as tr
    torch.manual_seed(seed)
    common = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=64)
    if name == "bert":
        cfg = tr.BertConfig(vocab_size=VOCAB, max_position_embeddings=32, num_labels=3, **common)
        cls = tr.BertForSequenceClassification
    elif name == "gpt2":
        cfg = tr.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=32)
        cls = tr.GPT2LMHeadModel
    elif name == "llama":
        cfg = tr.LlamaConfig(vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=32, **common)
        cls = tr.LlamaForCausalLM
    elif name == "qwen2":
        cfg = tr.Qwen2Config(vocab_size=VOCAB, num_key_value_heads=2, max_position_embeddings=32, **common)
        cls = tr.Qwen2ForCausalLM
    elif name == "gemma":       # RMSNorm scaled by (1 + weight), tanh-GELU gate, embeddings times sqrt(hidden)
        cfg = tr.GemmaConfig(vocab_size=VOCAB, num_key_value_heads=2, head_dim=8, max_position_embeddings=32,
                             **common)
        cls = tr.GemmaForCausalLM
    elif name == "vit":
        cfg = tr.ViTConfig(image_size=16, patch_size=4, num_channels=3, num_labels=5, **common)
        cls = tr.ViTForImageClassification
    else:
        raise ValueError(name)
    cfg._attn_implementation = attn
    model = cls(cfg)
    model.config._attn_implementation = attn
    return model.to(getattr(torch, dtype)).eval()


def module_of(name: str):
    import importlib
    return importlib.import_module({"bert": "transformers.models.bert.modeling_bert",
                                    "gpt2": "transformers.models.gpt2.modeling_gpt2",
                                    "llama": "transformers.models.llama.modeling_llama"}[name])


def lxt_main(request_path: str) -> None:
    """LXT's token relevance for each request (model, attn, variant, weights, ids, target, position) -> its npz
    (``relevance``, ``score``; with ``hidden``: the relevance of each hidden state, ``hidden{i}``, as x × gradient).
    The requests share one model (LXT's patches apply once per process)."""
    import numpy as np
    import torch
    requests = json.loads(Path(request_path).read_text())
    first = requests[0]
    sys.path.insert(0, first["anchors"])
    from lxt_reference import patched_model, token_relevance
    state = torch.load(first["weights"])
    model = patched_model(lambda: build(first["model"], first["attn"]), module_of(first["model"]), first["variant"],
                          state)
    for req in requests:
        ids = torch.as_tensor(np.load(req["ids"]))
        mask = torch.as_tensor(np.load(req["mask"])) if req.get("mask") else None
        rel, score = token_relevance(model, ids, req["target"], req.get("position", -1), req["variant"],
                                     attention_mask=mask, patch=False)
        hidden = {}
        if req.get("hidden"):
            embeds = model.get_input_embeddings()(ids).detach()
            res = model(inputs_embeds=embeds, output_hidden_states=True, use_cache=False)
            for h in res.hidden_states:
                h.retain_grad()
            res.logits[:, req.get("position", -1), req["target"]].sum().backward()
            hidden = {f"hidden{i}": (h * h.grad).detach().numpy() for i, h in enumerate(res.hidden_states)}
        np.savez(req["out"], relevance=rel, score=score, **hidden)


if __name__ == "__main__":
    lxt_main(sys.argv[1])
