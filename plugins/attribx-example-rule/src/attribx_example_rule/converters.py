"""Converters: how attribx translates the template's own layer, ``ScaledTanh`` (scale · tanh(x)), from each
framework into graph ops it already has (a ``tanh`` node, then a ``mul`` by a constant), so every rule,
method and engine works on models that use it.

Each converter is registered with :func:`attribx.translation.converter` for one framework and one target, and
returned from the plugin's ``attribx_converters`` hook (:mod:`.plugin`). Targets name classes by their dotted
path, so that this module (and registering the plugin) imports neither torch nor keras. The signatures follow
each framework: a torch module converter gets ``(ctx, module, *the call's arguments)``, a Keras converter
``(ctx, layer, inputs)``, an ONNX converter ``(ctx, node, attrs)``.
"""
from __future__ import annotations

import numpy as np

from attribx.translation import converter


@converter("torch", "attribx_example_rule.torch_layers.ScaledTanh")
def torch_scaled_tanh(ctx, module, x):
    """``x`` is the translated input (a :class:`attribx.translation.Tensor`); torch's emit takes the shape."""
    t = ctx.emit("tanh", [x], x.shape, name=ctx.sub("tanh"))
    scale = ctx.constant(module.scale.detach().cpu().double().numpy(), "scale")
    return ctx.emit("mul", [t, scale], x.shape)


@converter("keras", "attribx_example_rule.keras_layers.ScaledTanh")
def keras_scaled_tanh(ctx, layer, inputs):
    """The scale runs along Keras's last axis: the value is put in Keras's axis order first."""
    (x,) = inputs
    x = ctx.keras_order(x)
    t = ctx.emit("tanh", [x], name=ctx.sub("tanh"), order=x.order)
    return ctx.emit("mul", [t, ctx.constant(np.asarray(layer.scale.numpy()), "scale")], order=x.order)


@converter("onnx", "com.example:ScaledTanh")
def onnx_scaled_tanh(ctx, node, attrs):
    """A custom-domain ONNX op (what an exporter writes for ScaledTanh) with the scales as its second input."""
    t = ctx.emit("tanh", [ctx.value(node.input[0])], name=ctx.sub("tanh"))
    return ctx.emit("mul", [t, ctx.constant(ctx.const(node.input[1]), "scale")])


CONVERTERS = [torch_scaled_tanh, keras_scaled_tanh, onnx_scaled_tanh]
