"""How a torch call's arguments are named: the signature a converter's arguments are bound with.

A function converter receives the torch call's arguments by name, bound with the torch function's own
signature (``inspect.signature``), or with an aten op's schema (``self`` read as ``input``). torch's
builtins (``torch.add``, ``F.conv2d``, tensor methods) have no inspectable signature: their signatures
are written here once, as torch documents them (a method's ``self`` is ``input``, so that one converter
serves ``torch.add`` and ``Tensor.add``). A ``*name`` parameter reaches the converter as the keyword
``name`` holding a tuple; ``**name`` parameters as keywords of their own.
"""
from __future__ import annotations

import ast
import builtins
import inspect
import operator

import torch
import torch.nn.functional as F

_P = inspect.Parameter

_BINARY = "input, other"
_ALPHA = "input, other, *, alpha=1"
_DIV = "input, other, *, rounding_mode=None"
_CLAMP = "input, min=None, max=None"
_REDUCE = "input, dim=None, keepdim=False, *, dtype=None"
_CONV = "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1"
_CONV_T = "input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1"
_MAX_POOL = "input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False"
_AVG_POOL = "input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None"
_CAST = "input, *args, **kwargs"
_SWAP = "input, dim0, dim1"

#: signatures of the functions torch does not let ``inspect`` read, and of tensor methods (by name)
SIGNATURES: dict = {
    **dict.fromkeys((operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                     operator.truediv, operator.itruediv, operator.matmul, operator.ne, torch.mul, torch.multiply,
                     torch.true_divide, torch.ne, torch.not_equal), _BINARY),
    **dict.fromkeys((torch.add, torch.sub, torch.subtract), _ALPHA),
    **dict.fromkeys((torch.div, torch.divide), _DIV),
    **dict.fromkeys((operator.neg, operator.pos, torch.neg, torch.negative, torch.relu, torch.relu_, torch.tanh,
                     torch.sigmoid, torch.t), "input"),
    operator.getitem: "input, index",
    builtins.getattr: "input, name",
    **dict.fromkeys((torch.clamp, torch.clip, torch.clamp_), _CLAMP),
    F.gelu: "input, approximate='none'",
    torch.softmax: "input, dim=None, dtype=None",
    F.linear: "input, weight, bias=None",
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d), _CONV),
    **dict.fromkeys((F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d), _CONV_T),
    **dict.fromkeys((F.max_pool1d, F.max_pool2d, F.max_pool3d), _MAX_POOL),
    **dict.fromkeys((F.avg_pool1d, F.avg_pool2d, F.avg_pool3d), _AVG_POOL),
    F.adaptive_avg_pool1d: "input, output_size",
    **dict.fromkeys((F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d),
                    "input, output_size, return_indices=False"),
    torch.flatten: "input, start_dim=0, end_dim=-1",
    torch.reshape: "input, shape",
    torch.squeeze: "input, dim=None",
    torch.unsqueeze: "input, dim",
    torch.permute: "input, dims",
    **dict.fromkeys((torch.transpose, torch.swapaxes, torch.swapdims), _SWAP),
    **dict.fromkeys((torch.cat, torch.concat, torch.stack), "tensors, dim=0"),
    torch.concatenate: "tensors, axis=0",
    torch.chunk: "input, chunks, dim=0",
    **dict.fromkeys((torch.mean, torch.sum), _REDUCE),
    torch.any: "input, dim=None, keepdim=False",
    **dict.fromkeys((torch.matmul, torch.bmm), _BINARY),
    torch.einsum: "equation, *operands",
    F.scaled_dot_product_attention: "query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, "
                                    "scale=None, enable_gqa=False",
    torch.roll: "input, shifts, dims=None",
    # tensor methods
    **dict.fromkeys([f"method:{m}" for m in ("add", "add_", "sub", "sub_", "subtract")], _ALPHA),
    **dict.fromkeys([f"method:{m}" for m in ("mul", "mul_", "multiply", "ne", "not_equal")], _BINARY),
    **dict.fromkeys([f"method:{m}" for m in ("div", "div_", "divide")], _DIV),
    **dict.fromkeys([f"method:{m}" for m in ("neg", "negative", "relu", "relu_", "tanh", "tanh_", "sigmoid",
                                             "sigmoid_", "t", "dim", "numel")], "input"),
    **dict.fromkeys([f"method:{m}" for m in ("clamp", "clamp_", "clip", "clip_")], _CLAMP),
    "method:softmax": "input, dim=None, dtype=None",
    **dict.fromkeys(("method:view", "method:reshape"), "input, *shape"),
    "method:flatten": "input, start_dim=0, end_dim=-1",
    "method:squeeze": "input, dim=None",
    "method:unsqueeze": "input, dim",
    "method:permute": "input, *dims",
    **dict.fromkeys([f"method:{m}" for m in ("transpose", "swapaxes", "swapdims")], _SWAP),
    **dict.fromkeys([f"method:{m}" for m in ("contiguous", "clone", "to", "float", "double", "type_as", "cpu",
                                             "cuda", "long", "int")], _CAST),
    "method:any": "input, dim=None, keepdim=False",
    **dict.fromkeys(("method:mean", "method:sum"), _REDUCE),
    "method:chunk": "input, chunks, dim=0",
    "method:split": "input, split_size, dim=0",
    "method:size": "input, dim=None",
    **dict.fromkeys(("method:matmul", "method:bmm"), _BINARY),
    "method:roll": "input, shifts, dims=None",
}


def _parse(text: str) -> inspect.Signature:
    """``"input, other, *, alpha=1"`` as a signature (defaults are Python literals)."""
    params, kind = [], _P.POSITIONAL_OR_KEYWORD
    for part in (p.strip() for p in text.split(",")):
        if part == "*":
            kind = _P.KEYWORD_ONLY
        elif part.startswith("**"):
            params.append(_P(part[2:], _P.VAR_KEYWORD))
        elif part.startswith("*"):
            params.append(_P(part[1:], _P.VAR_POSITIONAL))
            kind = _P.KEYWORD_ONLY
        else:
            name, _, default = part.partition("=")
            params.append(_P(name.strip(), kind, default=ast.literal_eval(default) if default else _P.empty))
    return inspect.Signature(params)


def _from_schema(schema) -> inspect.Signature:
    """An aten op's schema as a signature; ``self`` is ``input``, as in the torch function."""
    params = []
    for a in schema.arguments:
        kind = _P.KEYWORD_ONLY if a.kwarg_only else _P.POSITIONAL_OR_KEYWORD
        default = a.default_value if a.has_default_value() else _P.empty
        params.append(_P("input" if a.name == "self" else a.name, kind, default=default))
    return inspect.Signature(params)


_cache: dict = {}


def signature(target) -> inspect.Signature | None:
    """The signature a call of ``target`` (a function, an aten op, or ``"method:name"``) is bound with."""
    try:
        if target in _cache:
            return _cache[target]
    except TypeError:          # an unhashable target
        return None
    text = SIGNATURES.get(target)
    if text is not None:
        sig = _parse(text)
    elif getattr(target, "_schema", None) is not None:
        sig = _from_schema(target._schema)
    else:
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            sig = None
    _cache[target] = sig
    return sig


def bind(target, args: tuple, kwargs: dict):
    """The call's arguments by name, with the signature's defaults: ``(args, kwargs)`` to call a converter
    with (``args`` empty unless ``target`` has no known signature: then the call's own)."""
    sig = signature(target)
    if sig is None:
        return tuple(args), dict(kwargs)
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    named = {}
    for name, value in bound.arguments.items():
        if sig.parameters[name].kind is _P.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return (), named
