"""The op set of the intermediate graph: one place that documents every op's attributes and semantics.

An :class:`OpDef` says what an op means, independent of any framework: its inputs, its attributes
(with defaults), its parameters, and how its output shape follows from its input shapes. Engines
implement the ops (forward and vector-Jacobian product); rules say how relevance passes through them.
Plugins add ops through the ``attribx_ops`` hook.

Conventions shared by all ops:

* Shapes include the batch dimension first; ``None`` stands for the free batch size. Values without a
  batch dimension (constants) have concrete shapes and broadcast like numpy arrays.
* Spatial ops (conv, pooling, batch norm) are channel-first: ``(N, C, *spatial)``. A backend whose
  framework is channel-last inserts a ``transpose`` after the input, so relevance still comes back in
  the user's layout.
* Axes may be negative and count over the full shape, batch dimension included.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import GraphError

Shape = tuple  # tuple of int | None (batch)


@dataclass(frozen=True)
class OpDef:
    """Definition of one op type.

    ``n_inputs`` is an int, or ``None`` for variadic ops (at least one input). ``attrs`` maps each
    attribute name to its default (``REQUIRED`` for none). ``params`` names the parameter arrays;
    ``optional_params`` those that may be absent. ``infer`` computes the output shape.
    """

    name: str
    doc: str
    infer: Callable[[Mapping[str, Any], Sequence[Shape], Mapping[str, Any], str], Shape]
    n_inputs: int | None = 1
    attrs: Mapping[str, Any] = field(default_factory=dict)
    params: tuple[str, ...] = ()
    optional_params: tuple[str, ...] = ()
    category: str = "other"

    def resolve_attrs(self, node_name: str, attrs: Mapping[str, Any]) -> dict:
        """Fill defaults and reject unknown or missing attributes, naming the node."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise GraphError(
                f"node {node_name!r} ({self.name}): unknown attribute(s) {sorted(unknown)}; "
                f"{self.name} takes {sorted(self.attrs) or 'none'}"
            )
        out = dict(self.attrs)
        out.update(attrs)
        missing = [k for k, v in out.items() if v is REQUIRED]
        if missing:
            raise GraphError(f"node {node_name!r} ({self.name}): missing attribute(s) {missing}")
        return out


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()

#: Categories used by composites to assign default rules.
CATEGORIES = {
    "layer": "weighted layers (linear, conv): where LRP rules differ",
    "activation": "elementwise nonlinearities: relevance passes through unchanged",
    "sum": "linear combinations of inputs without weights (add, average pools, reductions)",
    "pool": "max pooling: winner takes all",
    "shape": "reshaping and routing ops: relevance is moved, not changed",
    "norm": "normalisations (batch norm, layer norm, RMS norm)",
    "product": "products: elementwise (mul) and matrix (matmul), of a signal and a constant or of two signals",
    "softmax": "softmax",
    "source": "constants",
    "lookup": "embedding lookups: integer indices in, vectors out; relevance per index is summed over "
              "the embedding axis",
    "scale": "division: the divisor acts as a fixed scale, relevance passes to the dividend",
    "select": "elementwise selection by a mask (where): relevance goes to the selected input",
    "mask": "masks computed from the input (padding): they decide, and take no relevance",
}


# ----------------------------------------------------------------------------------------------
# shape helpers shared by every engine


def norm_axis(axis: int, ndim: int, node: str = "?") -> int:
    if not -ndim <= axis < ndim:
        raise GraphError(f"node {node!r}: axis {axis} out of range for rank {ndim}")
    return axis % ndim


def tuple_n(value, n: int, what: str = "value") -> tuple:
    """Expand an int to an n-tuple, or check a sequence has length n."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return (int(value),) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise GraphError(f"{what} {value} needs {n} entries")
    return value


def resolve_padding(padding, in_spatial: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                    dilation: Sequence[int]) -> list[tuple[int, int]]:
    """Padding as (before, after) per spatial dim.

    Accepts an int, one int per dim, one (before, after) pair per dim, ``"valid"`` (none) or
    ``"same"`` (output size ceil(in / stride), extra padding after, as TensorFlow and ONNX SAME_UPPER).
    """
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * n
        if padding == "same":
            pads = []
            for i in range(n):
                size = in_spatial[i]
                if size is None:
                    raise GraphError("'same' padding needs known spatial sizes")
                out = -(-size // stride[i])
                eff_k = (kernel[i] - 1) * dilation[i] + 1
                total = max((out - 1) * stride[i] + eff_k - size, 0)
                pads.append((total // 2, total - total // 2))
            return pads
        raise GraphError(f"padding {padding!r} is not 'same', 'valid', an int or per-dim pairs")
    if isinstance(padding, int):
        if padding < 0:
            raise GraphError(f"padding {padding} is negative; crop with a slice node instead")
        return [(padding, padding)] * n
    padding = list(padding)
    if len(padding) != n:
        raise GraphError(f"padding {padding} needs {n} entries")
    out = []
    for p in padding:
        if isinstance(p, int):
            out.append((p, p))
        else:
            lo, hi = p
            out.append((int(lo), int(hi)))
    if any(lo < 0 or hi < 0 for lo, hi in out):
        raise GraphError(f"padding {padding} is negative; crop with a slice node instead")
    return out


def window_output_size(size: int, kernel: int, stride: int, dilation: int, pads: tuple[int, int]) -> int:
    eff = (kernel - 1) * dilation + 1
    n = (size + pads[0] + pads[1] - eff) // stride + 1
    if n < 1:
        raise GraphError(f"window of size {eff} does not fit an input of size {size} with padding {pads}")
    return n


def broadcast_shapes(shapes: Sequence[Shape], node: str) -> Shape:
    """numpy broadcasting where ``None`` (the batch size) matches 1 or None."""
    ndim = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (ndim - len(s)) + tuple(s) for s in shapes]):
        if any(d is None for d in dims):
            if any(d not in (None, 1) for d in dims):
                raise GraphError(f"node {node!r}: cannot broadcast shapes {list(shapes)}")
            out.append(None)
            continue
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise GraphError(f"node {node!r}: cannot broadcast shapes {list(shapes)}")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _check_rank(shape, minimum: int, node: str, what: str):
    if len(shape) < minimum:
        raise GraphError(f"node {node!r}: {what} needs an input of rank >= {minimum}, got shape {shape}")


# ----------------------------------------------------------------------------------------------
# shape inference per op; each takes (attrs, input shapes, params, node name)


def _same(attrs, shapes, params, node):
    return tuple(shapes[0])


def _linear(attrs, shapes, params, node):
    (s,) = shapes
    w = params["weight"]
    if w.ndim != 2:
        raise GraphError(f"node {node!r}: linear weight must be (out, in), got {w.shape}")
    if s[-1] is not None and s[-1] != w.shape[1]:
        raise GraphError(f"node {node!r}: input has {s[-1]} features, weight expects {w.shape[1]}")
    b = params.get("bias")
    if b is not None and b.shape != (w.shape[0],):
        raise GraphError(f"node {node!r}: bias shape {b.shape} does not match {w.shape[0]} outputs")
    return tuple(s[:-1]) + (w.shape[0],)


def conv_geometry(attrs, in_shape, weight_shape, node="?"):
    """(n spatial dims, kernel, stride, dilation, pads) of a conv on an input of this shape."""
    n = len(weight_shape) - 2
    kernel = tuple(weight_shape[2:])
    stride = tuple_n(attrs["stride"], n, f"node {node!r} stride")
    dilation = tuple_n(attrs["dilation"], n, f"node {node!r} dilation")
    pads = resolve_padding(attrs["padding"], in_shape[2:], kernel, stride, dilation)
    return n, kernel, stride, dilation, pads


def _conv(attrs, shapes, params, node):
    (s,) = shapes
    w = params["weight"]
    n = w.ndim - 2
    if n < 1:
        raise GraphError(f"node {node!r}: conv weight must be (out, in/groups, *kernel), got {w.shape}")
    if len(s) != n + 2:
        raise GraphError(f"node {node!r}: conv{n}d needs an input of rank {n + 2} (N, C, ...), got {s}")
    g = attrs["groups"]
    if w.shape[0] % g:
        raise GraphError(f"node {node!r}: {w.shape[0]} output channels not divisible by groups={g}")
    if s[1] is not None and s[1] != w.shape[1] * g:
        raise GraphError(f"node {node!r}: input has {s[1]} channels, weight expects {w.shape[1] * g}")
    b = params.get("bias")
    if b is not None and b.shape != (w.shape[0],):
        raise GraphError(f"node {node!r}: bias shape {b.shape} does not match {w.shape[0]} channels")
    _, kernel, stride, dilation, pads = conv_geometry(attrs, s, w.shape, node)
    spatial = tuple(
        window_output_size(s[2 + i], kernel[i], stride[i], dilation[i], pads[i]) for i in range(n)
    )
    return (s[0], w.shape[0]) + spatial


def conv_transpose_geometry(attrs, in_shape, weight_shape, node="?"):
    """(n, kernel, stride, dilation, pads, output_padding, output spatial sizes) of a transposed conv.

    The output is the input of the conv whose VJP this op is: size (in - 1)·stride + (k - 1)·dilation + 1,
    minus the (before, after) ``padding`` cropped from it, plus ``output_padding`` added after.
    """
    n = len(weight_shape) - 2
    kernel = tuple(weight_shape[2:])
    stride = tuple_n(attrs["stride"], n, f"node {node!r} stride")
    dilation = tuple_n(attrs["dilation"], n, f"node {node!r} dilation")
    extra = tuple_n(attrs["output_padding"], n, f"node {node!r} output_padding")
    if isinstance(attrs["padding"], str) and attrs["padding"] != "valid":
        raise GraphError(f"node {node!r}: conv_transpose takes explicit padding (ints or (before, after) "
                         f"pairs), not {attrs['padding']!r}")
    pads = resolve_padding(attrs["padding"], in_shape[2:], kernel, stride, dilation)
    if any(e < 0 or (e and e >= s) for e, s in zip(extra, stride)):
        raise GraphError(f"node {node!r}: output_padding {extra} must be smaller than the stride {stride}")
    out = []
    for i in range(n):
        size = in_shape[2 + i]
        full = None if size is None else (size - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1
        o = None if full is None else full - pads[i][0] - pads[i][1] + extra[i]
        if o is not None and o < 1:
            raise GraphError(f"node {node!r}: padding {pads} crops the whole output")
        out.append(o)
    return n, kernel, stride, dilation, pads, extra, tuple(out)


def _conv_transpose(attrs, shapes, params, node):
    (s,) = shapes
    w = params["weight"]
    n = w.ndim - 2
    if n < 1:
        raise GraphError(f"node {node!r}: conv_transpose weight must be (in, out/groups, *kernel), got {w.shape}")
    if len(s) != n + 2:
        raise GraphError(f"node {node!r}: conv_transpose{n}d needs an input of rank {n + 2}, got {s}")
    g = attrs["groups"]
    if w.shape[0] % g:
        raise GraphError(f"node {node!r}: {w.shape[0]} input channels not divisible by groups={g}")
    if s[1] is not None and s[1] != w.shape[0]:
        raise GraphError(f"node {node!r}: input has {s[1]} channels, weight expects {w.shape[0]}")
    b = params.get("bias")
    if b is not None and b.shape != (w.shape[1] * g,):
        raise GraphError(f"node {node!r}: bias shape {b.shape} does not match {w.shape[1] * g} channels")
    spatial = conv_transpose_geometry(attrs, s, w.shape, node)[-1]
    return (s[0], w.shape[1] * g) + spatial


def _embedding(attrs, shapes, params, node):
    (s,) = shapes
    w = params["weight"]
    if w.ndim != 2:
        raise GraphError(f"node {node!r}: embedding weight must be (vocabulary, features), got {w.shape}")
    return tuple(s) + (w.shape[1],)


def pool_geometry(attrs, in_shape, node="?"):
    """(kernel, stride, dilation, pads) of a pooling op on an input of this shape."""
    n = len(in_shape) - 2
    kernel = tuple_n(attrs["kernel_size"], n, f"node {node!r} kernel_size")
    stride = kernel if attrs["stride"] is None else tuple_n(attrs["stride"], n, f"node {node!r} stride")
    dilation = tuple_n(attrs.get("dilation", 1), n, f"node {node!r} dilation")
    pads = resolve_padding(attrs["padding"], in_shape[2:], kernel, stride, dilation)
    return kernel, stride, dilation, pads


def _pool(attrs, shapes, params, node):
    (s,) = shapes
    _check_rank(s, 3, node, "pooling")
    kernel, stride, dilation, pads = pool_geometry(attrs, s, node)
    for k, d, (lo, hi) in zip(kernel, dilation, pads):
        if max(lo, hi) >= (k - 1) * d + 1:
            raise GraphError(f"node {node!r}: padding {pads} as large as the window: a window would hold "
                             f"only padding")
    spatial = tuple(
        window_output_size(s[2 + i], kernel[i], stride[i], dilation[i], pads[i]) for i in range(len(kernel))
    )
    return tuple(s[:2]) + spatial


def _global_pool(attrs, shapes, params, node):
    (s,) = shapes
    _check_rank(s, 3, node, "global pooling")
    return tuple(s[:2]) + ((1,) * (len(s) - 2) if attrs["keepdims"] else ())


def _batch_norm(attrs, shapes, params, node):
    (s,) = shapes
    axis = norm_axis(attrs["axis"], len(s), node)
    if axis == 0:
        raise GraphError(f"node {node!r}: batch norm along the batch axis is not supported")
    for key in ("mean", "var", "scale", "bias"):
        p = params.get(key)
        if p is not None and p.shape != (s[axis],) and s[axis] is not None:
            raise GraphError(f"node {node!r}: batch norm {key} has shape {p.shape}, input has {s[axis]} features")
    return tuple(s)


def _broadcast(attrs, shapes, params, node):
    return broadcast_shapes(shapes, node)


def _concat(attrs, shapes, params, node):
    ndim = len(shapes[0])
    if any(len(s) != ndim for s in shapes):
        raise GraphError(f"node {node!r}: concat inputs differ in rank: {list(shapes)}")
    axis = norm_axis(attrs["axis"], ndim, node)
    if axis == 0:
        raise GraphError(f"node {node!r}: concat along the batch axis is not supported")
    out = list(shapes[0])
    for s in shapes[1:]:
        for i in range(ndim):
            if i != axis and s[i] != out[i]:
                raise GraphError(f"node {node!r}: concat inputs differ off axis {axis}: {list(shapes)}")
    out[axis] = sum(s[axis] for s in shapes)
    return tuple(out)


def _reshape(attrs, shapes, params, node):
    (s,) = shapes
    target = list(attrs["shape"])
    if s[0] is not None:
        raise GraphError(f"node {node!r}: reshape needs a batched input")
    size = math.prod(s[1:])
    if target.count(-1) > 1:
        raise GraphError(f"node {node!r}: reshape target {target} has more than one -1")
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or size % known:
            raise GraphError(f"node {node!r}: cannot reshape {s} to (N, {target})")
        target[target.index(-1)] = size // known
    elif known != size:
        raise GraphError(f"node {node!r}: cannot reshape {s} to (N, {tuple(target)}): sizes differ")
    return (None,) + tuple(target)


def _flatten(attrs, shapes, params, node):
    (s,) = shapes
    start = norm_axis(attrs["start_dim"], len(s), node)
    end = norm_axis(attrs["end_dim"], len(s), node)
    if start == 0 or end < start:
        raise GraphError(f"node {node!r}: flatten needs 1 <= start_dim <= end_dim, got {start}, {end}")
    return tuple(s[:start]) + (math.prod(s[start:end + 1]),) + tuple(s[end + 1:])


def _transpose(attrs, shapes, params, node):
    (s,) = shapes
    perm = [norm_axis(p, len(s), node) for p in attrs["perm"]]
    if sorted(perm) != list(range(len(s))) or perm[0] != 0:
        raise GraphError(f"node {node!r}: perm {attrs['perm']} must permute all axes and keep the batch axis first")
    return tuple(s[p] for p in perm)


def slice_bounds(attrs, size: int):
    """The python ``range`` a slice op selects along its axis."""
    return range(size)[slice(attrs["start"], attrs["stop"], attrs["step"])]


def _slice(attrs, shapes, params, node):
    (s,) = shapes
    axis = norm_axis(attrs["axis"], len(s), node)
    if axis == 0:
        raise GraphError(f"node {node!r}: slicing the batch axis is not supported")
    if attrs["step"] is not None and attrs["step"] <= 0:
        raise GraphError(f"node {node!r}: slice step must be positive")
    n = len(slice_bounds(attrs, s[axis]))
    if n == 0:
        raise GraphError(f"node {node!r}: slice selects nothing from size {s[axis]}")
    out = list(s)
    out[axis] = n
    return tuple(out)


def pad_widths(attrs, ndim: int):
    """Per-axis (before, after) widths over the full rank; ``pads`` covers the trailing axes."""
    pads = [tuple(p) for p in attrs["pads"]]
    if len(pads) > ndim - 1:
        raise GraphError(f"pads {pads} cover more axes than the {ndim - 1} non-batch axes")
    return [(0, 0)] * (ndim - len(pads)) + pads


def _pad(attrs, shapes, params, node):
    (s,) = shapes
    widths = pad_widths(attrs, len(s))
    if any(lo < 0 or hi < 0 for lo, hi in widths):
        raise GraphError(f"node {node!r}: negative pads; use slice to crop")
    return tuple(d if d is None else d + lo + hi for d, (lo, hi) in zip(s, widths))


def reduce_axes(attrs, ndim: int, node="?"):
    axes = attrs["axes"]
    if axes is None:
        return tuple(range(1, ndim))
    axes = tuple(sorted(norm_axis(a, ndim, node) for a in ((axes,) if isinstance(axes, int) else axes)))
    if 0 in axes:
        raise GraphError(f"node {node!r}: reducing over the batch axis is not supported")
    return axes


def _reduce(attrs, shapes, params, node):
    (s,) = shapes
    axes = reduce_axes(attrs, len(s), node)
    if attrs["keepdims"]:
        return tuple(1 if i in axes else d for i, d in enumerate(s))
    return tuple(d for i, d in enumerate(s) if i not in axes)


def _softmax(attrs, shapes, params, node):
    (s,) = shapes
    if norm_axis(attrs["axis"], len(s), node) == 0:
        raise GraphError(f"node {node!r}: softmax along the batch axis mixes samples; not supported")
    return tuple(s)


def norm_axes(attrs, ndim: int, node="?") -> tuple[int, ...]:
    """The sorted, non-negative axes a ``layer_norm`` / ``rms_norm`` normalises over (never the batch axis)."""
    axes = attrs["axes"]
    axes = tuple(sorted({norm_axis(a, ndim, node) for a in ((axes,) if isinstance(axes, int) else axes)}))
    if not axes or 0 in axes:
        raise GraphError(f"node {node!r}: normalisation axes {attrs['axes']} must be non-batch axes (at least one)")
    return axes


def _layer_norm(attrs, shapes, params, node):
    (s,) = shapes
    axes = norm_axes(attrs, len(s), node)
    want = tuple(s[a] for a in axes)
    for key in ("scale", "bias"):
        p = params.get(key)
        if p is not None and tuple(p.shape) != want:
            raise GraphError(f"node {node!r}: {key} has shape {tuple(p.shape)}, the normalised axes {axes} have "
                             f"shape {want}")
    return tuple(s)


def _matmul(attrs, shapes, params, node):
    a, b = (tuple(s) for s in shapes)
    if len(a) < 2 or len(b) < 2:
        raise GraphError(f"node {node!r}: matmul needs inputs of rank >= 2, got {a} and {b}")
    if a[-1] is None or b[-2] is None or b[-1] is None or (a[-2] is None and None in b):
        raise GraphError(f"node {node!r}: matmul of {a} and {b} would multiply along the batch axis")
    if a[-1] != b[-2]:
        raise GraphError(f"node {node!r}: matmul of {a} and {b}: {a[-1]} columns against {b[-2]} rows")
    return broadcast_shapes([a[:-2], b[:-2]], node) + (a[-2], b[-1])


def roll_shifts(attrs, ndim: int, node="?") -> tuple[tuple[int, int], ...]:
    """(axis, shift) pairs of a ``roll`` (non-negative, non-batch axes; torch.roll's dims)."""
    shifts = attrs["shifts"]
    axes = attrs["axes"]
    shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    if len(shifts) != len(axes) or not axes:
        raise GraphError(f"node {node!r}: roll needs one shift per axis, got shifts {shifts} and axes {axes}")
    pairs = tuple((norm_axis(a, ndim, node), int(s)) for a, s in zip(axes, shifts))
    if any(a == 0 for a, _ in pairs):
        raise GraphError(f"node {node!r}: rolling the batch axis mixes samples; not supported")
    return pairs


def _roll(attrs, shapes, params, node):
    roll_shifts(attrs, len(shapes[0]), node)
    return tuple(shapes[0])


RESIZE_MODES = ("nearest", "linear")


def resize_matrix(size_in: int, size_out: int, mode: str, align_corners: bool = False,
                  scale: float | None = None) -> np.ndarray:
    """The (size_out, size_in) matrix a ``resize`` applies along one spatial axis, with torch's
    ``F.interpolate`` source indices: ``scale`` is input size per output size (default size_in / size_out;
    torch uses 1 / scale_factor when given one). Nearest picks ``floor(dst * scale)`` (in float32, as torch
    computes it, so that the same sources are picked); linear weighs the
    two neighbours of ``(dst + 0.5) * scale - 0.5`` (clamped at 0), or of ``dst * (in - 1) / (out - 1)``
    with ``align_corners``. Every row is non-negative and sums to 1."""
    m = np.zeros((size_out, size_in))
    dst = np.arange(size_out, dtype=np.float64)
    scale = size_in / size_out if scale is None else float(scale)
    if mode == "nearest":
        src = np.floor(dst.astype(np.float32) * np.float32(scale)).astype(int)
        m[np.arange(size_out), np.minimum(src, size_in - 1)] = 1.0
        return m
    if align_corners:
        src = dst * ((size_in - 1) / (size_out - 1) if size_out > 1 else 0.0)
    else:
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    np.add.at(m, (np.arange(size_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(size_out), hi), frac)
    return m


def resize_matrices(attrs, in_shape, node="?") -> list[np.ndarray]:
    """One :func:`resize_matrix` per spatial axis (2..) of an input of this shape."""
    spatial = tuple(in_shape[2:])
    size = tuple_n(attrs["size"], len(spatial), f"node {node!r} size")
    scales = attrs["scales"]
    scales = (None,) * len(spatial) if scales is None else tuple(scales)
    if len(scales) != len(spatial):
        raise GraphError(f"node {node!r}: scales {scales} need one entry per spatial axis ({len(spatial)})")
    return [resize_matrix(i, o, attrs["mode"], attrs["align_corners"], s) for i, o, s in zip(spatial, size, scales)]


def _resize(attrs, shapes, params, node):
    (s,) = shapes
    _check_rank(s, 3, node, "resize")
    if attrs["mode"] not in RESIZE_MODES:
        raise GraphError(f"node {node!r}: resize mode {attrs['mode']!r} is not one of {RESIZE_MODES}")
    if any(d is None for d in s[2:]):
        raise GraphError(f"node {node!r}: resize needs known spatial sizes, got {s}")
    size = tuple_n(attrs["size"], len(s) - 2, f"node {node!r} size")
    if any(d < 1 for d in size):
        raise GraphError(f"node {node!r}: resize to {size}: sizes must be positive")
    resize_matrices(attrs, s, node)
    return tuple(s[:2]) + size


def _constant(attrs, shapes, params, node):
    return tuple(params["value"].shape)


def _fill(attrs, shapes, params, node):
    return (shapes[0][0],) + tuple(params["value"].shape)


def mask_axes(attrs, ndim: int, node="?") -> tuple[int, ...]:
    """The axes a ``mask`` reduces with "any" (none: elementwise)."""
    return () if attrs["axes"] is None else reduce_axes(attrs, ndim, node)


def _mask(attrs, shapes, params, node):
    (s,) = shapes
    axes = mask_axes(attrs, len(s), node)
    return tuple(d for i, d in enumerate(s) if i not in axes)


def _length_mask(attrs, shapes, params, node):
    (s,) = shapes
    if len(s) != 1:
        raise GraphError(f"node {node!r}: length_mask reads one length per sample (shape (N,)), got {s}")
    if int(attrs["steps"]) < 1:
        raise GraphError(f"node {node!r}: length_mask needs steps >= 1, got {attrs['steps']}")
    return (s[0], int(attrs["steps"]))


def _where(attrs, shapes, params, node):
    return broadcast_shapes(shapes, node)


_WINDOW = {"kernel_size": REQUIRED, "stride": None, "padding": 0}

BUILTIN_OPS: tuple[OpDef, ...] = (
    OpDef("linear", "y = x @ weight.T + bias over the last axis; weight is (out, in) as in torch.",
          _linear, params=("weight", "bias"), optional_params=("bias",), category="layer"),
    OpDef("conv", "N-d cross-correlation (1d, 2d, 3d from the weight's rank), channel-first, weight "
          "(out, in/groups, *kernel) as in torch; padding: int, per-dim ints or (before, after) pairs, "
          "'valid' or 'same'.", _conv,
          attrs={"stride": 1, "padding": 0, "dilation": 1, "groups": 1},
          params=("weight", "bias"), optional_params=("bias",), category="layer"),
    OpDef("conv_transpose", "N-d transposed convolution (the VJP of conv w.r.t. its input), channel-first, "
          "weight (in, out/groups, *kernel) as in torch and ONNX; padding (int, per-dim ints or (before, "
          "after) pairs) is cropped from the full output, output_padding added after.", _conv_transpose,
          attrs={"stride": 1, "padding": 0, "output_padding": 0, "dilation": 1, "groups": 1},
          params=("weight", "bias"), optional_params=("bias",), category="layer"),
    OpDef("embedding", "y = weight[indices]: integer indices (N, ...) to vectors (N, ..., features); weight is "
          "(vocabulary, features). The indices carry relevance summed over the features.", _embedding,
          params=("weight",), category="lookup"),
    OpDef("max_pool", "Maximum over each window; padded positions never win. stride defaults to kernel_size.",
          _pool, attrs={**_WINDOW, "dilation": 1}, category="pool"),
    OpDef("avg_pool", "Mean over each window; count_include_pad decides whether padded zeros count in "
          "the divisor (torch's default True, Keras 'same' False).",
          _pool, attrs={**_WINDOW, "count_include_pad": True}, category="sum"),
    OpDef("global_avg_pool", "Mean over all spatial axes (2..); keepdims keeps them as size 1.",
          _global_pool, attrs={"keepdims": True}, category="sum"),
    OpDef("batch_norm", "Inference batch norm: (x - mean) / sqrt(var + eps) * scale + bias along axis.",
          _batch_norm, attrs={"eps": 1e-5, "axis": 1},
          params=("mean", "var", "scale", "bias"), optional_params=("scale", "bias"), category="norm"),
    OpDef("relu", "max(x, 0).", _same, category="activation"),
    OpDef("leaky_relu", "x if x >= 0 else negative_slope * x.", _same,
          attrs={"negative_slope": 0.01}, category="activation"),
    OpDef("tanh", "Hyperbolic tangent.", _same, category="activation"),
    OpDef("sigmoid", "1 / (1 + exp(-x)).", _same, category="activation"),
    OpDef("clip", "min(max(x, min), max); ReLU6 and hardtanh are clips (None: unbounded on that side).",
          _same, attrs={"min": None, "max": None}, category="activation"),
    OpDef("elu", "x if x > 0 else alpha * (exp(x) - 1).", _same, attrs={"alpha": 1.0}, category="activation"),
    OpDef("gelu", "x * Phi(x) (approximate='none'), or the tanh approximation (approximate='tanh').",
          _same, attrs={"approximate": "none"}, category="activation"),
    OpDef("silu", "x * sigmoid(x) (swish).", _same, category="activation"),
    OpDef("erf", "The error function (ONNX Erf; GELU's exact form is x * (1 + erf(x / sqrt 2)) / 2).", _same,
          category="activation"),
    OpDef("hard_sigmoid", "clip(alpha * x + beta, 0, 1): torch's hardsigmoid and Keras' hard_sigmoid with the "
          "defaults (relu6(x + 3) / 6), ONNX HardSigmoid with its own alpha and beta.", _same,
          attrs={"alpha": 1 / 6, "beta": 0.5}, category="activation"),
    OpDef("hard_swish", "x * hard_sigmoid(x) (MobileNetV3's hardswish, Keras' hard_silu), alpha and beta as in "
          "hard_sigmoid.", _same, attrs={"alpha": 1 / 6, "beta": 0.5}, category="activation"),
    OpDef("softmax", "exp(x) / sum(exp(x)) along axis.", _softmax, attrs={"axis": -1}, category="softmax"),
    OpDef("layer_norm", "Layer norm: (x - mean) / sqrt(var + eps) * scale + bias, mean and (population) "
          "variance over axes (non-batch, negative allowed); scale and bias (optional) are shaped like the "
          "normalised axes.", _layer_norm, attrs={"axes": (-1,), "eps": 1e-5}, params=("scale", "bias"),
          optional_params=("scale", "bias"), category="norm"),
    OpDef("rms_norm", "RMS norm: x / sqrt(mean(x**2) + eps) * scale over axes (non-batch); scale (optional) is "
          "shaped like the normalised axes.", _layer_norm, attrs={"axes": (-1,), "eps": 1e-6}, params=("scale",),
          optional_params=("scale",), category="norm"),
    OpDef("matmul", "Matrix product a @ b over the two trailing axes, leading axes broadcast as numpy's matmul "
          "(batch axis first); either input may be a signal or a constant (attention: q @ k^T, weights @ v).",
          _matmul, n_inputs=2, category="product"),
    OpDef("add", "Elementwise sum of two or more inputs, numpy broadcasting.", _broadcast,
          n_inputs=None, category="sum"),
    OpDef("mul", "Elementwise product of two inputs, numpy broadcasting.", _broadcast,
          n_inputs=2, category="product"),
    OpDef("div", "Elementwise quotient x / y of two inputs, numpy broadcasting.", _broadcast,
          n_inputs=2, category="scale"),
    OpDef("concat", "Concatenation along axis (not the batch axis).", _concat,
          n_inputs=None, attrs={"axis": 1}, category="shape"),
    OpDef("reshape", "Reshape each sample to shape (the batch axis excluded; one entry may be -1).",
          _reshape, attrs={"shape": REQUIRED}, category="shape"),
    OpDef("flatten", "Merge axes start_dim..end_dim into one (row-major, like torch.flatten).",
          _flatten, attrs={"start_dim": 1, "end_dim": -1}, category="shape"),
    OpDef("transpose", "Permute axes; perm covers all axes and keeps the batch axis first.",
          _transpose, attrs={"perm": REQUIRED}, category="shape"),
    OpDef("slice", "x[..., start:stop:step, ...] along one non-batch axis (positive step).",
          _slice, attrs={"axis": REQUIRED, "start": None, "stop": None, "step": None}, category="shape"),
    OpDef("pad", "Constant padding; pads is a list of (before, after) for the trailing axes.",
          _pad, attrs={"pads": REQUIRED, "value": 0.0}, category="shape"),
    OpDef("roll", "torch.roll / numpy.roll: shift along axes (non-batch) by shifts, wrapping around (Swin's "
          "cyclic shift).", _roll, attrs={"shifts": REQUIRED, "axes": REQUIRED}, category="shape"),
    OpDef("resize", "Resize the spatial axes (2..) to size: mode 'nearest' (torch's floor of dst * scale) or "
          "'linear' (bilinear in 2-d, trilinear in 3-d; align_corners as torch); scales (input per output "
          "size per axis, default in / out) as torch's 1 / scale_factor. Category sum: each output is a "
          "fixed non-negative weighting of its inputs, weights summing to 1 (as an average pool), so the "
          "sum rules split relevance by contribution; for nearest, each output has one source, which gets "
          "it all (routing).", _resize, attrs={"size": REQUIRED, "mode": "nearest", "align_corners": False,
                                              "scales": None}, category="sum"),
    OpDef("identity", "y = x.", _same, category="shape"),
    OpDef("reduce_sum", "Sum over axes (default: all non-batch axes).", _reduce,
          attrs={"axes": None, "keepdims": False}, category="sum"),
    OpDef("reduce_mean", "Mean over axes (default: all non-batch axes).", _reduce,
          attrs={"axes": None, "keepdims": False}, category="sum"),
    OpDef("constant", "A constant array (param 'value'), no batch axis; broadcasts in add and mul.",
          _constant, n_inputs=0, params=("value",), category="source"),
    OpDef("fill", "One copy of the constant 'value' per sample of the input, whose values are not read (the "
          "initial states of recurrent layers); a source: relevance that reaches it stays there.",
          _fill, n_inputs=1, params=("value",), category="source"),
    OpDef("mask", "1.0 where x differs from value (on any element along axes, which are removed; none: "
          "elementwise), else 0.0: the padding mask of Keras Masking and Embedding(mask_zero) and of "
          "torch's ids != pad. Float inputs keep their dtype, integer ones give float32. No relevance or "
          "gradient flows through it.", _mask, attrs={"value": 0.0, "axes": None}, category="mask"),
    OpDef("length_mask", "(N, steps) mask from one length per sample (N,): 1.0 at steps t < length, else "
          "0.0 (ONNX sequence_lens, torch pack_padded_sequence).", _length_mask,
          attrs={"steps": REQUIRED}, category="mask"),
    OpDef("where", "Select elementwise: a where cond > 0.5, else b (cond a 0/1 mask), numpy broadcasting; "
          "how masked recurrent steps keep their state. Relevance goes to the selected input, none to cond.",
          _where, n_inputs=3, category="select"),
)


def op_table(defs: Sequence[OpDef]) -> dict[str, OpDef]:
    table: dict[str, OpDef] = {}
    for d in defs:
        if d.name in table:
            raise GraphError(f"op {d.name!r} is defined twice")
        table[d.name] = d
    return table


#: The built-in op set by name: what a graph is checked against when no other op table is given (the plugin
#: registry's table adds the ops of plugins; :func:`attribx.translate` and :func:`attribx.load_model` pass it).
BUILTIN_OP_TABLE: Mapping[str, OpDef] = MappingProxyType(op_table(BUILTIN_OPS))


def describe_ops(defs: Mapping[str, OpDef]) -> str:
    """A text table of the op set (used by the docs and ``attribx plugins --ops``)."""
    lines = []
    for d in defs.values():
        attrs = ", ".join(f"{k}={v!r}" for k, v in d.attrs.items()) or "-"
        params = ", ".join(d.params) or "-"
        lines.append(f"{d.name:16} [{d.category}] attrs: {attrs}; params: {params}\n    {d.doc}")
    return "\n".join(lines)
