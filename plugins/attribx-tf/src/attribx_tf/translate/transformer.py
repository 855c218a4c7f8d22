"""Keras converters of transformer layers: LayerNormalization, RMSNormalization, EinsumDense (the
equations that are dense projections), MultiHeadAttention, and the resizing layers (UpSampling2D,
Resizing).

EinsumDense is a linear map whenever its equation contracts input axes with kernel axes and keeps the
rest: the input is transposed so that the contracted axes come last, flattened into one, multiplied by
the kernel as a ``linear``, unflattened and transposed into the output's order. Equations that share an
axis between input and kernel without contracting it, or sum an axis of one side only, are refused,
naming the equation. MultiHeadAttention is Keras's computation written out: the three projections,
``matmul`` of queries and keys scaled by 1/sqrt(key_dim) (after the product, where torch's graph and the
ONNX translation put it, although Keras scales the query: the same function, and rules with a stabiliser
see the same products from every framework), the causal mask added as Keras's softmax adds it,
``softmax``, ``matmul`` with the values, the output projection.
"""
from __future__ import annotations

import math
import string

import keras
import numpy as np

from attribx.translation import Tensor
from attribx.translation.resize import graph_resize_attrs, linear_matrix, nearest_matrix

from .common import TABLE, Unsupported, as_numpy, channels_last, one
from .elementwise import fused_activation
from .masks import with_mask

#: What Keras's masked softmax adds where the mask is False (keras.layers.Softmax, float32 and wider).
LARGE_NEGATIVE = -1e9


def _norm_axes(layer, x):
    """The normalised Keras axes (sorted, non-negative) and the graph's axes for them; ``x`` is stored in
    Keras order first when the graph keeps those axes in another relative order."""
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    axes = sorted({int(a) % x.rank for a in axes})
    if 0 in axes:
        raise Unsupported("normalises over the batch axis")
    ours = [x.graph_axis(a) for a in axes]
    return axes, ours, ours != sorted(ours)


def _shaped(ctx, v, x, axes) -> np.ndarray:
    """A Keras normalisation weight shaped like the normalised axes (as Keras broadcasts it)."""
    return as_numpy(v).reshape([x.shape[x.graph_axis(a)] for a in axes])


@TABLE.register(keras.layers.LayerNormalization)
def layer_normalization(ctx, layer, xs):
    """Any axes, with or without ``center`` / ``scale``. ``rms_scaling=True`` (deprecated by Keras: it scales
    by the variance, not the root mean square) is refused."""
    x = one(xs)
    if getattr(layer, "rms_scaling", False):
        raise Unsupported("rms_scaling=True divides by the standard deviation without centering (Keras deprecated "
                          "it); the graph has no such op; keras.layers.RMSNormalization translates")
    axes, ours, reorder = _norm_axes(layer, x)
    if reorder:
        x = ctx.keras_order(x)
        ours = axes
    params = {"scale": _shaped(ctx, layer.gamma, x, axes) if layer.scale else None,
              "bias": _shaped(ctx, layer.beta, x, axes) if layer.center else None}
    return ctx.emit("layer_norm", [x], attrs={"axes": tuple(ours), "eps": float(layer.epsilon)}, params=params,
                    order=x.order)


if hasattr(keras.layers, "RMSNormalization"):
    @TABLE.register(keras.layers.RMSNormalization)
    def rms_normalization(ctx, layer, xs):
        """x / sqrt(mean(x^2) + eps) * scale over the layer's axes."""
        x = one(xs)
        axes, ours, reorder = _norm_axes(layer, x)
        if reorder:
            x = ctx.keras_order(x)
            ours = axes
        eps = layer.epsilon if layer.epsilon is not None else keras.backend.epsilon()
        return ctx.emit("rms_norm", [x], attrs={"axes": tuple(ours), "eps": float(eps)},
                        params={"scale": _shaped(ctx, layer.scale, x, axes)}, order=x.order)


# ----------------------------------------------------------------------------------------------
# EinsumDense


def _parse(equation: str, rank: int) -> tuple[str, str, str]:
    """The input, kernel and output letters of an EinsumDense equation, ``...`` written out."""
    try:
        lhs, rest = equation.replace(" ", "").split(",")
        rhs, out = rest.split("->")
    except ValueError:
        raise Unsupported(f"equation {equation!r} is not 'input,kernel->output'") from None
    if "..." in lhs:
        free = [c for c in string.ascii_letters if c not in lhs + rhs + out]
        n = rank - len(lhs.replace("...", ""))
        fill = "".join(free[:n])
        lhs, out = lhs.replace("...", fill), out.replace("...", fill)
    if len(lhs) != rank or any(s.count(c) > 1 for s in (lhs, rhs, out) for c in s):
        raise Unsupported(f"equation {equation!r} does not fit an input of rank {rank}")
    return lhs, rhs, out


def einsum_linear(ctx, x, equation: str, kernel: np.ndarray, bias, name: str):
    """The nodes of ``einsum(equation, x, kernel) + bias`` when it is a dense projection; the ``linear``
    node is named ``name``, the others ``name:<what>``. ``x`` is in Keras order."""
    lhs, rhs, out = _parse(equation, x.rank)
    refuse = f"equation {equation!r} is not a dense projection (contracted axes of the input times the kernel)"
    if lhs[0] != out[0] or lhs[0] in rhs:
        raise Unsupported(f"{refuse}: the batch axis {lhs[0]!r} must lead the output and stay out of the kernel")
    if any(c in rhs and c in out for c in lhs) or any(c not in rhs and c not in out for c in lhs) \
            or any(c not in lhs and c not in out for c in rhs) or any(c not in lhs + rhs for c in out):
        raise Unsupported(refuse)
    kept = [c for c in lhs if c in out]
    summed = [c for c in lhs if c in rhs]
    free = [c for c in out if c in rhs]
    if not summed:
        raise Unsupported(f"{refuse}: it contracts no axis")
    size = {c: x.shape[i] for i, c in enumerate(lhs)}
    size.update({c: kernel.shape[i] for i, c in enumerate(rhs)})
    sub = lambda what: f"{name}:{what}"   # noqa: E731
    perm = tuple(lhs.index(c) for c in kept + summed)
    if perm != tuple(range(x.rank)):
        x = ctx.emit("transpose", [x], attrs={"perm": perm}, name=ctx.unique(sub("in")))
    flat = math.prod(size[c] for c in summed)
    if len(summed) > 1:
        x = ctx.emit("reshape", [x], attrs={"shape": tuple(size[c] for c in kept[1:]) + (flat,)},
                     name=ctx.unique(sub("flat")))
    w = np.transpose(kernel, [rhs.index(c) for c in summed + free]).reshape(flat, -1)
    y = ctx.emit("linear", [x], params={"weight": np.ascontiguousarray(w.T)}, name=name)
    if len(free) != 1:
        y = ctx.emit("reshape", [y], attrs={"shape": tuple(size[c] for c in kept[1:] + free)},
                     name=ctx.unique(sub("unflat")))
    have = kept + free
    perm = tuple(have.index(c) for c in out)
    if perm != tuple(range(len(out))):
        y = ctx.emit("transpose", [y], attrs={"perm": perm}, name=ctx.unique(sub("out")))
    if bias is not None:
        y = ctx.emit("add", [y, ctx.constant(as_numpy(bias), f"{name.rsplit('/', 1)[-1]}_bias")],
                     name=ctx.unique(sub("bias")))
    return y


def _kernel(layer) -> np.ndarray:
    if getattr(layer, "quantization_mode", None):
        raise Unsupported(f"quantized ({layer.quantization_mode}) kernels are not translated")
    return as_numpy(layer.kernel)          # with LoRA enabled, the property merges the LoRA factors


@TABLE.register(keras.layers.EinsumDense)
def einsum_dense(ctx, layer, xs):
    x = ctx.keras_order(one(xs))
    y = einsum_linear(ctx, x, layer.equation, _kernel(layer), getattr(layer, "bias", None), ctx.main)
    return fused_activation(ctx, layer, y)


# ----------------------------------------------------------------------------------------------
# MultiHeadAttention


def _projection(ctx, dense, x, what):
    return einsum_linear(ctx, x, dense.equation, _kernel(dense), getattr(dense, "bias", None), ctx.sub(what))


def _causal_bias(ctx, t: int, s: int):
    """What Keras's masked softmax adds to the (T, S) scores under its causal mask (query i sees keys j <= i):
    0 where attending, -1e9 elsewhere, whose exponential is exactly 0."""
    return ctx.constant(np.where(np.tril(np.ones((t, s), dtype=bool)), 0.0, LARGE_NEGATIVE), "causal_mask")


def _mask_value(ctx, m, shape, what):
    """A mask (a mask input or a Keras padding mask) as 0/1 where it is nonzero (Keras casts it to bool),
    reshaped to (N, 1, T, S)-broadcastable ``shape`` (one sample's)."""
    if not isinstance(m, Tensor):
        raise Unsupported(f"{what} is not a mask input of the model nor a Keras padding mask it carries")
    m = ctx.keras_order(m)
    if math.prod(m.shape[1:]) != math.prod(shape):
        raise Unsupported(f"{what} of shape {m.shape} does not fit the scores' {shape}")
    b = ctx.emit("mask", [m], attrs={"value": 0.0, "axes": None}, name=ctx.sub(f"{what}_bool"))
    return ctx.emit("reshape", [b], attrs={"shape": tuple(shape)}, name=ctx.sub(what))


def _keep(ctx, query, key, value):
    """Keras's attention mask (``_compute_attention_mask``) as a 0/1 graph value (N, 1, T, S), or None: the
    query's padding mask (N, T) — Keras reads the query's own, not the ``query_mask`` argument —, ``value_mask``
    and ``key_mask`` (N, S) (the arguments, else the tensors' padding masks), ``attention_mask`` (N, T, S)."""
    t, s = query.shape[query.graph_axis(1)], value.shape[value.graph_axis(1)]
    def given(name, t):
        m = ctx.call_argument(name)
        return getattr(t, "mask", None) if m is None else m

    own = [(getattr(query, "mask", None), "query_mask", (1, t, 1)), (given("value_mask", value), "value_mask", (1, 1, s)),
           (None if key is value else given("key_mask", key), "key_mask", (1, 1, s)),
           (ctx.call_argument("attention_mask"), "attention_mask", (1, t, s))]
    keep = None
    for m, what, shape in own:
        if m is None:
            continue
        v = _mask_value(ctx, m, shape, what)
        keep = v if keep is None else ctx.emit("mul", [keep, v], name=ctx.sub(f"and_{what}"))
    return keep


@TABLE.register(keras.layers.MultiHeadAttention, reads_mask=True)
def multi_head_attention(ctx, layer, xs):
    """Self- and cross-attention over one sequence axis ((N, T, E) inputs), ``use_causal_mask``, masks
    (``attention_mask``, ``value_mask``, ``key_mask`` from mask inputs, and the padding masks of
    Embedding(mask_zero) / Masking on the inputs) as Keras's masked softmax applies them; gates, sliding windows
    and other attention axes are refused."""
    query = ctx.call_argument("query", 0)
    value = ctx.call_argument("value", 1)
    key = ctx.call_argument("key", 2)
    if ctx.call_argument("return_attention_scores"):
        raise Unsupported("return_attention_scores=True (two outputs)")
    if query is None or value is None:
        raise Unsupported("query and value must be computed from the model's input")
    key = value if key is None else key
    if getattr(layer, "_use_gate", False) or getattr(layer, "_sliding_window", None) is not None:
        raise Unsupported("gated attention and sliding windows are not translated")
    if query.rank != 3 or tuple(layer._attention_axes) != (1,):
        raise Unsupported(f"attention over axes {layer._attention_axes} of rank-{query.rank} inputs; one sequence "
                          f"axis of (N, T, E) inputs translates")
    keep = _keep(ctx, query, key, value)
    query_mask = getattr(query, "mask", None)
    query, key, value = (ctx.keras_order(t) for t in (query, key, value))
    q = _projection(ctx, layer._query_dense, query, "query")           # (N, T, H, dk)
    k = _projection(ctx, layer._key_dense, key, "key")                 # (N, S, H, dk)
    v = _projection(ctx, layer._value_dense, value, "value")           # (N, S, H, dv)
    q = ctx.emit("transpose", [q], attrs={"perm": (0, 2, 1, 3)}, name=ctx.sub("query_heads"))
    k = ctx.emit("transpose", [k], attrs={"perm": (0, 2, 3, 1)}, name=ctx.sub("key_heads"))
    v = ctx.emit("transpose", [v], attrs={"perm": (0, 2, 1, 3)}, name=ctx.sub("value_heads"))
    scores = ctx.emit("matmul", [q, k], name=ctx.sub("products"))    # (N, H, T, S)
    scores = ctx.emit("mul", [scores, ctx.constant(1.0 / math.sqrt(float(layer._key_dim)), "inv_sqrt_key_dim")],
                      name=ctx.sub("scores"))
    if keep is not None:
        if ctx.call_argument("use_causal_mask"):
            causal = np.tril(np.ones((q.shape[2], k.shape[3])))[None]
            keep = ctx.emit("mul", [keep, ctx.constant(causal, "causal_mask")], name=ctx.sub("keep_causal"))
        # Keras's dot_product_attention (no dropout) fills masked scores with -0.7 of the dtype's largest
        # number; its masked Softmax layer (with dropout) with -1e9, then zeroes those weights (fully masked rows)
        zeroed = float(getattr(layer, "_dropout", 0.0)) > 0.0
        fill = LARGE_NEGATIVE if zeroed else -0.7 * float(np.finfo(ctx.np_dtype).max if ctx.np_dtype.itemsize > 4
                                                           else 3.38953e38)
        scores = ctx.emit("where", [keep, scores, ctx.constant(fill, "large_negative")], name=ctx.sub("masked"))
        attn = ctx.emit("softmax", [scores], attrs={"axis": -1}, name=ctx.sub("weights" if zeroed else "softmax"))
        if zeroed:
            attn = ctx.emit("where", [keep, attn, ctx.constant(0.0, "zero")], name=ctx.sub("softmax"))
    else:
        if ctx.call_argument("use_causal_mask"):
            scores = ctx.emit("add", [scores, _causal_bias(ctx, q.shape[2], k.shape[3])], name=ctx.sub("masked"))
        attn = ctx.emit("softmax", [scores], attrs={"axis": -1}, name=ctx.sub("softmax"))
    out = ctx.emit("matmul", [attn, v], name=ctx.sub("context"))      # (N, H, T, dv)
    out = ctx.emit("transpose", [out], attrs={"perm": (0, 2, 1, 3)}, name=ctx.sub("context_tokens"))
    dense = layer._output_dense
    y = einsum_linear(ctx, out, dense.equation, _kernel(dense), getattr(dense, "bias", None), ctx.main)
    return with_mask(y, query_mask)         # the output carries the query's padding mask, as in Keras


# ----------------------------------------------------------------------------------------------
# resizing


def _tf_matrix(size_in: int, size_out: int, mode: str) -> np.ndarray:
    """TensorFlow's resize along one axis (half-pixel centers, no antialiasing): nearest picks
    floor((dst + 0.5) * in / out), bilinear weighs the neighbours of (dst + 0.5) * in / out - 0.5."""
    dst = np.arange(size_out, dtype=np.float64)
    scale = size_in / size_out
    if mode == "nearest":
        return nearest_matrix(np.floor((dst + 0.5) * scale), size_in)
    return linear_matrix((dst + 0.5) * scale - 0.5, size_in)


def _resize(ctx, layer, x, size_out, mode: str):
    if mode not in ("nearest", "bilinear"):
        raise Unsupported(f"interpolation={mode!r}: nearest and bilinear translate")
    x = ctx.channels_first(x, channels_last(layer))
    sizes_in = tuple(x.shape[2:])
    graph_mode = "nearest" if mode == "nearest" else "linear"
    want = [_tf_matrix(i, o, mode) for i, o in zip(sizes_in, size_out)]
    found = graph_resize_attrs(graph_mode, sizes_in, size_out, want)
    if found is None:
        raise Unsupported(f"interpolation={mode!r} from {sizes_in} to {tuple(size_out)} picks other source pixels "
                          f"than the graph's resize; it has no exact translation")
    return ctx.emit("resize", [x], attrs=found, order=x.order)


@TABLE.register(keras.layers.UpSampling2D)
def up_sampling_2d(ctx, layer, xs):
    """Nearest repeats each pixel (torch's nearest); bilinear is TensorFlow's half-pixel resize."""
    x = one(xs)
    spatial = [x.shape[x.graph_axis(a)] for a in ((1, 2) if channels_last(layer) else (2, 3))]
    size = tuple(int(s) * int(f) for s, f in zip(spatial, layer.size))
    return _resize(ctx, layer, x, size, layer.interpolation)


@TABLE.register(keras.layers.Resizing)
def resizing(ctx, layer, xs):
    if getattr(layer, "crop_to_aspect_ratio", False) or getattr(layer, "pad_to_aspect_ratio", False):
        raise Unsupported("crop_to_aspect_ratio / pad_to_aspect_ratio are not translated")
    if getattr(layer, "antialias", False):
        raise Unsupported("antialias=True changes the weights")
    return _resize(ctx, layer, one(xs), (int(layer.height), int(layer.width)), layer.interpolation)
