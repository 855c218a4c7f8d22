"""Keras converters of elementwise layers: activations (as layers and fused into Dense/Conv), Rescaling and
Normalization, ConvNeXt's LayerScale, and the layers that pass their input on at inference (dropout, noise,
Identity, ConvNeXt's StochasticDepth).

Elementwise layers keep their input's axis order: a value stored channel-first stays so.
"""
from __future__ import annotations

import functools

import keras
import numpy as np

from .common import TABLE, Unsupported, as_numpy, one, present

try:     # keras.applications' own layers (not exported under keras.layers)
    from keras.src.applications.convnext import LayerScale, StochasticDepth
except ImportError:          # another Keras: the applications then translate without them or stop naming them
    LayerScale = StochasticDepth = None

_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def activation(ctx, x, fn, name=None):
    """The node(s) of a Keras activation function; ``linear`` adds nothing. ``functools.partial`` of
    ``gelu`` (``approximate=True``) keeps its argument."""
    kwargs = {}
    if isinstance(fn, functools.partial) and not fn.args:
        fn, kwargs = fn.func, dict(fn.keywords)
    fname = getattr(fn, "__name__", str(fn))
    if kwargs and (fname != "gelu" or set(kwargs) - {"approximate"}):
        raise Unsupported(f"activation {fname!r} with arguments {kwargs} has no op in the graph")
    if fname == "linear" or fn is None:
        return x
    emit = lambda op, **attrs: ctx.emit(op, [x], attrs=attrs, name=name, order=x.order)  # noqa: E731
    if fname == "relu":
        return emit("relu")
    if fname == "relu6":
        return emit("clip", min=0.0, max=6.0)
    if fname == "sigmoid":
        return emit("sigmoid")
    if fname == "tanh":
        return emit("tanh")
    if fname in ("silu", "swish"):
        return emit("silu")
    if fname == "elu":
        return emit("elu", alpha=1.0)
    if fname == "gelu":
        return emit("gelu", approximate="tanh" if kwargs.get("approximate") else "none")
    if fname == "hard_sigmoid":
        return emit("hard_sigmoid", **hard_sigmoid_params(fn))
    if fname in ("hard_silu", "hard_swish"):
        return emit("hard_swish", **hard_sigmoid_params(fn, times_x=True))
    if fname == "leaky_relu":
        return emit("leaky_relu", negative_slope=0.2)
    if fname == "softmax":
        return emit("softmax", axis=x.graph_axis(-1))
    if fname == "selu":
        h = ctx.emit("elu", [x], attrs={"alpha": _SELU_ALPHA}, name=ctx.sub("elu"), order=x.order)
        return ctx.emit("mul", [h, ctx.constant(_SELU_SCALE, "scale")], name=name, order=x.order)
    raise Unsupported(f"activation {fname!r} has no op in the graph")


@functools.lru_cache(maxsize=None)
def hard_sigmoid_params(fn, times_x: bool = False) -> dict:
    """alpha and beta of clip(alpha x + beta, 0, 1), read off Keras's own function (Keras 3: relu6(x + 3) / 6,
    Keras 2: 0.2 x + 0.5) and checked on a grid; ``times_x``: ``fn`` is x times it (hard_silu)."""
    grid = np.linspace(-8.0, 8.0, 161)
    y = np.asarray(as_numpy(fn(grid)), dtype=np.float64)
    h = np.divide(y, grid, out=np.full_like(grid, np.nan), where=grid != 0) if times_x else y
    beta = 0.5 if times_x else float(h[80])                 # h(0): x * h(x) hides it; both Kerases have 0.5
    alpha = float(h[85] - h[75]) if not times_x else float((y[85] / grid[85] - beta) / grid[85])
    want = np.clip(alpha * grid + beta, 0.0, 1.0) * (grid if times_x else 1.0)
    if not np.allclose(y, want, rtol=1e-5, atol=1e-6):
        raise Unsupported(f"activation {fn.__name__!r} is not clip(alpha x + beta, 0, 1){' times x' if times_x else ''} "
                          f"in this Keras")
    return {"alpha": alpha, "beta": beta}


def fused_activation(ctx, layer, y):
    """The ``activation=`` of a Dense or Conv layer, as a node named ``layer:activation``."""
    act = getattr(layer, "activation", None)
    if act is None or getattr(act, "__name__", "") == "linear":
        return y
    return activation(ctx, y, act, name=ctx.sub("activation"))


@TABLE.register(keras.layers.Activation)
def activation_layer(ctx, layer, xs):
    return activation(ctx, one(xs), layer.activation, name=ctx.main)


@TABLE.register(keras.layers.ReLU)
def relu_layer(ctx, layer, xs):
    x = one(xs)
    mx = None if layer.max_value is None else float(layer.max_value)
    slope = float(layer.negative_slope)
    if float(layer.threshold) != 0.0:
        raise Unsupported(f"threshold={layer.threshold} (a shifted ReLU) has no op in the graph")
    if slope == 0.0:
        if mx is None:
            return ctx.emit("relu", [x], order=x.order)
        return ctx.emit("clip", [x], attrs={"min": 0.0, "max": mx}, order=x.order)
    if mx is None:
        return ctx.emit("leaky_relu", [x], attrs={"negative_slope": slope}, order=x.order)
    h = ctx.emit("leaky_relu", [x], attrs={"negative_slope": slope}, name=ctx.sub("leaky"), order=x.order)
    return ctx.emit("clip", [h], attrs={"min": None, "max": mx}, order=x.order)


@TABLE.register(keras.layers.LeakyReLU)
def leaky_relu(ctx, layer, xs):
    x = one(xs)
    slope = getattr(layer, "negative_slope", None)
    if slope is None:
        slope = layer.alpha
    return ctx.emit("leaky_relu", [x], attrs={"negative_slope": float(slope)}, order=x.order)


@TABLE.register(keras.layers.ELU)
def elu(ctx, layer, xs):
    x = one(xs)
    return ctx.emit("elu", [x], attrs={"alpha": float(getattr(layer, "alpha", 1.0))}, order=x.order)


@TABLE.register(keras.layers.Softmax)
def softmax(ctx, layer, xs):
    x = one(xs)
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise Unsupported(f"softmax over several axes {list(axis)}")
        axis = axis[0]
    return ctx.emit("softmax", [x], attrs={"axis": x.graph_axis(axis % x.rank)}, order=x.order)


@TABLE.register(keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                keras.layers.SpatialDropout3D, keras.layers.GaussianNoise, keras.layers.GaussianDropout,
                keras.layers.AlphaDropout, keras.layers.ActivityRegularization, keras.layers.Identity,
                *present(StochasticDepth))
def passthrough(ctx, layer, xs):
    """Layers that change nothing at inference: no node; the layer's name becomes an alias of its input."""
    return one(xs)


def _scalar_or_array(v) -> np.ndarray:
    return np.asarray(as_numpy(v) if not np.isscalar(v) else v, dtype=np.float64)


@TABLE.register(keras.layers.Rescaling)
def rescaling(ctx, layer, xs):
    x = one(xs)
    scale, offset = _scalar_or_array(layer.scale), _scalar_or_array(layer.offset)
    if scale.ndim or offset.ndim:
        x = ctx.keras_order(x)
    if not offset.any():
        return ctx.emit("mul", [x, ctx.constant(scale, "scale")], order=x.order)
    h = ctx.emit("mul", [x, ctx.constant(scale, "scale")], name=ctx.sub("scaled"), order=x.order)
    return ctx.emit("add", [h, ctx.constant(offset, "offset")], order=x.order)


@TABLE.register(keras.layers.Normalization)
def normalization(ctx, layer, xs):
    x = ctx.keras_order(one(xs))
    mean = as_numpy(layer.mean).astype(np.float64)
    var = as_numpy(layer.variance).astype(np.float64)
    while mean.ndim >= x.rank and mean.shape[0] == 1:   # constants carry no batch axis
        mean, var = mean[0], var[0]
    std = np.maximum(np.sqrt(var), keras.backend.epsilon())
    if getattr(layer, "invert", False):
        h = ctx.emit("mul", [x, ctx.constant(std, "std")], name=ctx.sub("scaled"), order=x.order)
        return ctx.emit("add", [h, ctx.constant(mean, "mean")], order=x.order)
    h = ctx.emit("add", [x, ctx.constant(-mean, "minus_mean")], name=ctx.sub("centered"), order=x.order)
    return ctx.emit("mul", [h, ctx.constant(1.0 / std, "inv_std")], order=x.order)


@TABLE.register(*present(LayerScale))
def scale_channels(ctx, layer, xs):
    """ConvNeXt's LayerScale: x * gamma along the last (channel) axis, wherever the value stores it."""
    x = one(xs)
    gamma = as_numpy(layer.gamma).astype(np.float64)
    shape = [1] * (x.rank - 1)                      # the constant has no batch axis
    shape[x.graph_axis(-1) - 1] = gamma.size
    return ctx.emit("mul", [x, ctx.constant(gamma.reshape(shape), "gamma")], order=x.order)
