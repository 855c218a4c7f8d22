"""LXT's input relevance for the models issue 19 compares against (a numerical reference, never copied code).

LXT 2.1 (Achtibat et al., AttnLRP, ICML 2024; licence: personal and scientific use only) explains a model by
patching its classes so that gradient × input *is* the LRP relevance: every function keeps the invariant
"relevance of a value = value × its gradient". Which rule each part gets (read from lxt/efficient/*):

- linear layers, convolutions, embeddings, residual sums, rotary position mixing: the plain gradient, i.e.
  LRP-0 (no ε; biases keep their share);
- GELU / SiLU / any elementwise non-linearity it patches: the identity rule (gradient scaled by
  f(x) / (x + 1e-10), so x · grad_in = f(x) · grad_out);
- LayerNorm and RMSNorm: the standard deviation (RMS) is detached, so the normalisation is a linear map with
  zero bias (centering included for LayerNorm) and relevance passes by LRP-0 through it; the affine weight is a
  product with a constant (relevance unchanged), the bias keeps its share;
- softmax: not patched: the plain gradient of softmax times its input is Proposition 3.1
  (R_in = x ⊙ (R_out − s ⊙ Σ R_out));
- AttnLRP attention (HF models): query and key gradients divided by 4, value by 2: the uniform rule on the two
  matmuls (q·kᵀ: half each; softmax·v: half each) in the gradient × input form;
- AttnLRP gated MLP (Llama): the product gate·up divided by 2 (uniform rule), the activation by the identity rule;
- CP-LRP: query and key detached (attention weights are constants: relevance flows through the values only);
  the gate of a gated MLP detached; norms and activations as above;
- torchvision ViT (``vit_torch.cp_LRP``): GELU identity, LayerNorm as above, ``nn.MultiheadAttention`` with query
  and key detached.
- Dropout: patched to the identity (HF), eval mode otherwise.

The input relevance: for pixels, input × gradient; for tokens, the token embeddings (``inputs_embeds``) ×
gradient summed over the embedding axis (position embeddings keep their own share and are not counted).

BERT differs: LXT 2.1 replaces the whole ``modeling_bert`` module (a patched copy of transformers' code: the
uniform rule as a division by 2 on the attention scores and the context, the identity rule on the intermediate
and pooler activations), so a BERT model must be *built after* patching, and LXT has no CP-LRP for BERT (CP-LRP
there is ours alone: query and key detached, as for the other models).

Run in a venv with ``transformers==4.52.4`` and ``lxt==2.1`` (``--no-deps``). Patching changes the transformers /
torchvision module *classes* for the whole process (LXT's design): run the reference in a subprocess
(``python -m tests.anchors.lxt_reference`` style) and give it the weights through a state dict file, so that the
process translating the model for attribx never sees patched classes.
"""
from __future__ import annotations

import numpy as np


def _patch(module, variant: str) -> None:
    from lxt.efficient import monkey_patch
    from lxt.efficient.models import DEFAULT_MAP
    import importlib
    family = {m.__name__: m for m in DEFAULT_MAP}
    name = module.__name__
    lxt_module = {
        "transformers.models.llama.modeling_llama": "lxt.efficient.models.llama",
        "transformers.models.gpt2.modeling_gpt2": "lxt.efficient.models.gpt2",
        "transformers.models.bert.modeling_bert": "lxt.efficient.models.bert",
        "torchvision.models.vision_transformer": "lxt.efficient.models.vit_torch",
    }[name]
    patch_map = getattr(importlib.import_module(lxt_module), variant)
    assert name in family
    monkey_patch(module, patch_map)


def patched_model(build, module, variant: str, state_dict=None):
    """``build()`` called after LXT's ``variant`` was patched into ``module`` (BERT needs it built after), in eval
    mode, with ``state_dict`` loaded when given."""
    _patch(module, variant)
    model = build()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model.eval()


def token_relevance(model, input_ids, target: int, position: int = -1, variant: str = "attnLRP",
                    attention_mask=None, patch: bool = True) -> np.ndarray:
    """Relevance per token (N, T) of the logit ``target`` (at ``position`` for a causal LM; a sequence
    classifier's class logit otherwise), LXT's ``variant`` ("attnLRP" or "cp_LRP") patched into the model's
    transformers module first."""
    import sys
    import torch
    import inspect
    if patch:
        _patch(sys.modules[type(model).__module__], variant)
    model.eval()
    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    out = model(inputs_embeds=embeds, attention_mask=attention_mask, **extra).logits
    score = out[:, position, target] if out.dim() == 3 else out[:, target]
    grad, = torch.autograd.grad(score.sum(), embeds)
    return (embeds * grad).sum(-1).detach().cpu().numpy(), score.detach().cpu().numpy()


def vit_relevance(model, images, target: int, variant: str = "cp_LRP") -> np.ndarray:
    """Relevance per pixel (N, C, H, W) of a torchvision ViT's class logit ``target``, LXT's CP-LRP patches."""
    import torch
    import torchvision.models.vision_transformer as vt
    _patch(vt, variant)
    model.eval()
    x = images.detach().clone().requires_grad_(True)
    logits = model(x)
    grad, = torch.autograd.grad(logits[:, target].sum(), x)
    return (x * grad).detach().cpu().numpy(), logits[:, target].detach().cpu().numpy()
