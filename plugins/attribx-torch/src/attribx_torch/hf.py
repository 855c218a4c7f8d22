"""HuggingFace ``transformers`` models, translated through ``torch.export`` (torch.fx cannot trace them).

torch.fx stops on every HF model issue 19 names (GPT-2: ``torch.finfo`` on a proxy; Llama: ``co_varnames is
too small``; BERT: slice indices), while ``torch.export`` runs the real forward on example data and records
its aten ops. So an HF model (a ``PreTrainedModel``) is exported with one example of the data's shape, its
main input (``input_ids``, ``pixel_values``) as the only program input and ``use_cache=False``, and the program
goes through the same walk as any exported program (:mod:`attribx_torch.export`). Everything computed from
positions alone (causal masks, rotary cos/sin, position ids) then holds for that sequence length: the
translation is per input shape, as every torch translation is (the cache keys on it).

Some HF modules export as aten pieces that only together are one graph op; they are recognised by the module
class that made them (the ``nn_module_stack`` of the program's nodes), never by approximating the pieces:

- ``*RMSNorm`` (Llama's ``pow``/``mean``/``add``/``rsqrt``/``mul``) -> ``aten.rms_norm`` (its float32 upcast is
  dropped: the graph computes in the model's dtype), scaled by ``weight`` or Gemma's ``1 + weight``, whichever the
  module computes (checked on a random input: a class that only shares the name stays its pieces);
- ``NewGELUActivation`` (GPT-2's ``gelu_new``: ``pow``/``tanh``/``mul``/``add``) -> GELU with ``approximate='tanh'``
  (the same formula);
- ``Conv1D`` (GPT-2's linear with a transposed weight, ``view``/``addmm``/``view``) -> ``aten.linear``.
"""
from __future__ import annotations

import copy
import inspect

import torch
import torch.fx as fx
import torch.nn as nn

from attribx.errors import UnsupportedError

from .export import ProgramWalker, input_dependent, prepared_module
from .values import first_line

__all__ = ["is_hf_model", "export_hf", "fuse_modules"]


def is_hf_model(model) -> bool:
    """A transformers ``PreTrainedModel``, checked by class path (transformers is not imported for others)."""
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
               for c in type(model).__mro__)


def _example(model: nn.Module, input_shape: tuple, dtype) -> torch.Tensor:
    name = getattr(model, "main_input_name", "input_ids")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if name in ("input_ids", "decoder_input_ids"):
        return torch.zeros((1, *input_shape), dtype=torch.long, device=device)
    return torch.zeros((1, *input_shape), dtype=dtype, device=device)


#: encoder families whose ``attention_mask`` may be (N, 1, T) (``get_extended_attention_mask``)
_ENCODERS = {"bert"}


def mask_kind(model: nn.Module) -> str | None:
    """How the model's ``attention_mask`` input is given to it: "causal" (a causal LM: the (N, 1, T, T) additive
    mask, causality included), "encoder" ((N, 1, T): padding only), None (no attention_mask input)."""
    if getattr(model, "main_input_name", None) != "input_ids":
        return None
    if "attention_mask" not in inspect.signature(model.forward).parameters:
        return None
    if getattr(model, "can_generate", lambda: False)():
        return "causal"
    return "encoder" if getattr(model.config, "model_type", None) in _ENCODERS else None


class _WithMask(nn.Module):
    """``model(input_ids, attention_mask)`` with the (N, T) 0/1 mask made the additive mask the model takes as
    it is, in the traced ops: ``ne``, products with the (constant) causal triangle, ``1 - m``, times the dtype's
    minimum (HF's own convention). HF's own mask code is data-dependent and in-place; this form is not."""

    def __init__(self, model: nn.Module, kind: str, dtype, flags: dict):
        super().__init__()
        self.model, self.kind, self.dtype, self.flags = model, kind, dtype, flags

    def forward(self, input_ids, attention_mask):
        keep = (attention_mask != 0).to(self.dtype)
        if self.kind == "encoder":
            return self.model(input_ids=input_ids, attention_mask=keep[:, None, :], **self.flags)[0]
        length = input_ids.shape[1]
        causal = torch.tril(torch.ones(length, length, dtype=self.dtype, device=keep.device))
        additive = (1.0 - causal[None, None] * keep[:, None, None, :]) * torch.finfo(self.dtype).min
        return self.model(input_ids=input_ids, attention_mask=additive, **self.flags)[0]


def _strip_prefix(graph: fx.Graph, prefix: str) -> None:
    """Module paths as in the user's model: the wrapper's attribute ``prefix`` dropped from every node's stack."""
    for n in graph.nodes:
        stack = n.meta.get("nn_module_stack")
        if stack:
            n.meta["nn_module_stack"] = {k: (p[len(prefix):] if p.startswith(prefix) else
                                             "" if p == prefix[:-1] else p, c) for k, (p, c) in stack.items()}


def export_hf(model: nn.Module, input_shape: tuple, dtype):
    """The exported program of an HF model on one example of ``input_shape`` (one sample, no batch axis), and the
    names of its mask inputs (``attention_mask`` where :func:`mask_kind` knows how to give it)."""
    name = getattr(model, "main_input_name", "input_ids")
    params = inspect.signature(model.forward).parameters
    flags = {"return_dict": False, **({"use_cache": False} if "use_cache" in params else {})}
    example = _example(model, input_shape, dtype)
    kind = mask_kind(model)
    try:
        if kind is None:
            return torch.export.export(model, (), {name: example, **flags}, strict=False), ()
        ep = torch.export.export(_WithMask(model, kind, dtype, flags), (example, torch.ones_like(example)),
                                 strict=False)
        return ep, ("attention_mask",)
    except Exception as err:
        raise UnsupportedError(
            f"torch.export cannot export {type(model).__name__} on an input of shape {(1, *input_shape)} "
            f"({type(err).__name__}: {first_line(err)}); attribx translates HuggingFace models through "
            f"torch.export, as torch.fx cannot trace them") from None


# ----------------------------------------------------------------------------------------------
# module classes whose aten pieces are one op


def _region(graph: fx.Graph, key: str):
    """The nodes one module call made (its ``nn_module_stack`` key), in order."""
    return [n for n in graph.nodes if key in (n.meta.get("nn_module_stack") or {})]


_CASTS = {torch.ops.aten.to.dtype, torch.ops.aten.alias.default, torch.ops.aten._to_copy.default}


def _same_value(n: fx.Node) -> fx.Node | None:
    """The input a cast to its own dtype passes on (``x.to(float32)`` of a float32 x), else None."""
    if n.target not in _CASTS or not n.args or not isinstance(n.args[0], fx.Node):
        return None
    a, b = n.args[0].meta.get("val"), n.meta.get("val")
    same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
    return n.args[0] if same else None


def _unalias_exits(region) -> None:
    """Uses outside the region of a no-op cast of the region's input read the input itself (float32 Llama: the
    residual reads RMSNorm's ``x.to(float32)``)."""
    inside = set(region)
    for n in region:
        source = _same_value(n)
        if source is not None and source not in inside:
            n.replace_all_uses_with(source, delete_user_cb=lambda u: u not in inside)


def _boundary(region, dependent):
    """(the one input-dependent value that enters the region, the one value that leaves it), or None."""
    inside = set(region)
    ins = {a for n in region for a in n.all_input_nodes if a not in inside and a in dependent}
    outs = [n for n in region if any(u not in inside for u in n.users)]
    if len(ins) != 1 or len(outs) != 1:
        return None
    return next(iter(ins)), outs[0]


def _param_node(region, suffix: str):
    """The node reading the module's parameter ``suffix`` (``weight``) inside the region."""
    for n in region:
        for a in n.all_input_nodes:
            if a.op in ("get_attr", "placeholder") and str(a.target).endswith(suffix):
                return a
    return None


def _rms_offset(module, eps) -> float | None:
    """The offset o for which the module computes x / rms(x) · (o + weight): 0 (Llama), 1 (Gemma), or None
    (another formula). Checked on a random input, so that a class that only shares the name is never fused."""
    g = torch.Generator().manual_seed(0)
    size = module.weight.shape[-1]
    probe = torch.randn((2, 3, size), generator=g, dtype=torch.float64)
    w = torch.randn(size, generator=g, dtype=torch.float64)     # a weight of its own (the model's may be ones)
    try:
        twin = copy.deepcopy(module)
        with torch.no_grad():
            twin.weight.copy_(w)
            got = twin(probe.to(twin.weight.dtype)).to(torch.float64)
    except Exception:
        return None
    for offset in (0.0, 1.0):
        scale = w + offset
        want = torch.nn.functional.rms_norm(probe, (w.shape[-1],), scale, float(eps))
        if torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            return offset
    return None


def _rms_norm(graph, region, x, module):
    weight = _param_node(region, "weight")
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    offset = None if weight is None or eps is None else _rms_offset(module, eps)
    if offset is None:
        return None
    if offset:
        weight = graph.call_function(torch.ops.aten.add.Tensor, (weight, offset))
    return graph.call_function(torch.ops.aten.rms_norm.default, (x, [int(module.weight.shape[-1])], weight,
                                                                  float(eps)))


def _gelu_tanh(graph, region, x, module):
    return graph.call_function(torch.ops.aten.gelu.default, (x,), {"approximate": "tanh"})


def _conv1d(graph, region, x, module):
    weight, bias = _param_node(region, "weight"), _param_node(region, "bias")
    if weight is None or bias is None:
        return None
    wt = graph.call_function(torch.ops.aten.t.default, (weight,))
    return graph.call_function(torch.ops.aten.linear.default, (x, wt, bias))


#: module class name -> (what it must be, the one aten op it is)
FUSED = {
    "transformers.pytorch_utils.Conv1D": _conv1d,
    "transformers.activations.NewGELUActivation": _gelu_tanh,
}


def _fusion(cls_name: str, module):
    if cls_name in FUSED:
        return FUSED[cls_name]
    if cls_name.startswith("transformers.") and cls_name.endswith("RMSNorm") and \
            isinstance(getattr(module, "weight", None), torch.Tensor):
        return _rms_norm
    return None


def _class_name(cls) -> str:
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


def fuse_modules(gm: fx.GraphModule, model: nn.Module, dependent: set) -> dict:
    """Replace the aten pieces of the module calls in :data:`FUSED` (and RMS norms) by their one aten op, in
    place; returns {new node: class name} (the walk names those nodes after the module's path)."""
    graph = gm.graph
    done, fused = set(), {}
    for n in list(graph.nodes):
        for key, (path, cls) in list((n.meta.get("nn_module_stack") or {}).items()):
            name = _class_name(cls)
            if key in done or not path:
                continue
            try:
                module = model.get_submodule(path)
            except AttributeError:
                continue
            make = _fusion(name, module)
            if make is None:
                continue
            done.add(key)
            region = _region(graph, key)
            _unalias_exits(region)
            ends = _boundary(region, dependent)
            if ends is None:
                continue
            x, out = ends
            with graph.inserting_before(out.next):     # in the order made
                new = make(graph, region, x, module)
            if new is None:
                continue
            # the new node is made where the module's output was: its module stack, up to the module
            stack = out.meta.get("nn_module_stack") or {}
            keys = list(stack)
            new.meta["nn_module_stack"] = {k: stack[k] for k in keys[:keys.index(key) + 1]}
            out.replace_all_uses_with(new, delete_user_cb=lambda u: u is not new)
            for m in new.all_input_nodes:
                if m.op == "call_function" and m.target in (torch.ops.aten.t.default, torch.ops.aten.add.Tensor):
                    m.meta["nn_module_stack"] = dict(new.meta["nn_module_stack"])
            fused[new] = name.rsplit(".", 1)[-1]
            dependent.add(new)
    if fused:
        graph.eliminate_dead_code()
        gm.recompile()
    return fused


class HFTranslation:
    """One translation of an HF model: exported on an example of ``input_shape``, its fused modules replaced,
    then walked as an exported program."""

    def __init__(self, model: nn.Module, input_shape: tuple, dtype, table):
        self.model, self.input_shape, self.dtype, self.table = model, tuple(input_shape), dtype, table

    def run(self):
        ep, masks = export_hf(self.model, self.input_shape, self.dtype)
        gm, _ = prepared_module(ep, masks)
        if masks:
            _strip_prefix(gm.graph, "model.")
        dependent = input_dependent(gm.graph)
        fused = fuse_modules(gm, self.model, dependent)
        return ProgramWalker(gm, self.input_shape, self.dtype, 1, type(self.model).__name__, self.table,
                             fused, masks).run()

