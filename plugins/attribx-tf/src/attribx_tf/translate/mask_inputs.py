"""Mask inputs of Keras models: a further model input that only reaches ``MultiHeadAttention`` as
``attention_mask``, ``value_mask`` or ``key_mask`` decides which keys each query attends and takes no
relevance (an integer or boolean input): it becomes a mask input of the graph (:attr:`attribx.graph.Graph.mask_inputs`), in the graph's float
dtype (0 masks, as Keras casts it to bool). Any other use of a further input keeps the model refused.
"""
from __future__ import annotations

import keras

#: MultiHeadAttention's call arguments that take masks (``query_mask`` Keras replaces by the query's own mask)
MASK_ARGUMENTS = ("attention_mask", "value_mask", "key_mask")


def _mask_uses(node, t) -> bool:
    """Whether node reads Keras tensor ``t`` only as one of MultiHeadAttention's mask arguments."""
    if not isinstance(node.operation, keras.layers.MultiHeadAttention):
        return False
    args = node.arguments
    if any(v is t for v in args.args):
        return False
    return all(k in MASK_ARGUMENTS for k, v in args.kwargs.items() if v is t)


def mask_only_inputs(model) -> list:
    """The further inputs of a functional ``model`` (after the first) that only reach MultiHeadAttention as
    mask arguments, whatever their dtype."""
    if len(getattr(model, "inputs", None) or []) < 2 or not hasattr(model, "_nodes_by_depth"):
        return []
    nodes = [n for depth in model._nodes_by_depth.values() for n in depth]
    found = []
    for t in model.inputs[1:]:
        users = [n for n in nodes if any(x is t for x in n.input_tensors)
                 and not isinstance(n.operation, keras.layers.InputLayer)]
        if users and all(_mask_uses(n, t) for n in users):
            found.append(t)
    return found


def is_integer(t) -> bool:
    """Whether Keras tensor ``t`` holds integers or booleans (a float input may be a bias added to the scores,
    or a signal: never taken as a mask input)."""
    return any(k in str(t.dtype) for k in ("int", "bool"))


def mask_inputs(model) -> list:
    """The further inputs of a functional ``model`` (after the first) that are mask inputs."""
    return [t for t in mask_only_inputs(model) if is_integer(t)]
