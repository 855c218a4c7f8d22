"""Resize (opset 13+, nearest and linear) as the graph's ``resize``.

ONNX describes a resize by a coordinate transformation and a rounding rule; the graph's ``resize`` has
torch's source indices (:func:`attribx.ops.resize_matrix`). Rather than map names onto names, the
converter computes ONNX's (output, input) matrix along each axis from the spec's formulas and translates
only when the graph's matrix is the same (ONNX's default ``half_pixel`` nearest with
``round_prefer_floor`` equals torch's floor for whole upsampling factors, for instance); anything else is
refused, naming the mode, so a resize is never approximated.
"""
from __future__ import annotations

import numpy as np

from attribx.translation.resize import graph_resize_attrs, linear_matrix, nearest_matrix

from . import TABLE, Unsupported
from .common import ints, x_of

#: ONNX coordinate transformations: output index, scale, input and output size -> input coordinate.
TRANSFORMS = {
    "half_pixel": lambda x, s, i, o: (x + 0.5) / s - 0.5,
    "pytorch_half_pixel": lambda x, s, i, o: (x + 0.5) / s - 0.5 if o > 1 else 0.0 * x,
    "align_corners": lambda x, s, i, o: x * (i - 1) / (o - 1) if o > 1 else 0.0 * x,
    "asymmetric": lambda x, s, i, o: x / s,
    "tf_half_pixel_for_nn": lambda x, s, i, o: (x + 0.5) / s,
}

ROUNDING = {
    "round_prefer_floor": lambda v: np.where(v - np.floor(v) == 0.5, np.floor(v), np.round(v)),
    "round_prefer_ceil": lambda v: np.floor(v + 0.5),
    "floor": np.floor,
    "ceil": np.ceil,
}


def onnx_matrix(size_in: int, size_out: int, scale: float, attrs) -> np.ndarray:
    """The (size_out, size_in) matrix ONNX's Resize applies along one axis (nearest or linear)."""
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    if ctm not in TRANSFORMS:
        raise Unsupported(f"coordinate_transformation_mode={ctm!r}")
    src = TRANSFORMS[ctm](np.arange(size_out, dtype=np.float64), scale, size_in, size_out)
    if attrs.get("mode", "nearest") == "nearest":
        rounding = attrs.get("nearest_mode", "round_prefer_floor")
        if rounding not in ROUNDING:
            raise Unsupported(f"nearest_mode={rounding!r}")
        return nearest_matrix(ROUNDING[rounding](src), size_in)
    return linear_matrix(src, size_in)


def _sizes_and_scales(ctx, node, attrs, shape):
    """Output sizes and ONNX scales of every axis (from the scales or the sizes input, ``axes`` of opset 18);
    ``shape``'s batch entry is 1."""
    rank = len(shape)
    axes = [a % rank for a in attrs.get("axes", range(rank))]
    scales = ctx.optional_const(node, 2, "scales")
    sizes = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if sizes is not None and not ctx.is_const(sizes):
        raise Unsupported("the sizes are computed from the input's values")
    sizes = None if sizes is None else ctx.const_pair(sizes)
    out, scale = list(shape), [1.0] * rank
    if sizes is not None and np.size(sizes.a):
        if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise Unsupported(f"keep_aspect_ratio_policy={attrs['keep_aspect_ratio_policy']!r}")
        for a, n, m in zip(axes, ints(sizes.a), ints(sizes.b)):
            if a == 0:            # the batch size (Shape(x)[0] in exports): stays
                continue
            if n != m:
                raise Unsupported(f"the size of axis {a} depends on the batch size")
            out[a], scale[a] = n, n / shape[a]
    elif scales is not None and np.size(scales):
        for a, s in zip(axes, np.asarray(scales, dtype=np.float64).reshape(-1)):
            out[a], scale[a] = int(np.floor(shape[a] * s)), float(s)
    else:
        raise Unsupported("neither scales nor sizes are given")
    return out, scale


@TABLE.register("Resize")
def resize(ctx, node, attrs):
    """Nearest or linear over the spatial axes (2..), when ONNX's matrices equal the graph's."""
    x = x_of(ctx, node)
    mode = attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"mode={mode!r}: nearest and linear translate")
    if int(attrs.get("antialias", 0)) or int(attrs.get("exclude_outside", 0)):
        raise Unsupported("antialias / exclude_outside change the weights")
    out, scale = _sizes_and_scales(ctx, node, attrs, (1, *x.shape[1:]))
    if x.rank < 3 or out[:2] != [1, x.shape[1]]:
        raise Unsupported(f"resizes the batch or channel axis (to {out[1:]}); spatial axes (2..) translate")
    spatial = list(zip(x.shape[2:], out[2:], scale[2:]))
    want = [onnx_matrix(i, o, s, attrs) for i, o, s in spatial]
    if tuple(out[2:]) == tuple(x.shape[2:]) and all(np.array_equal(w, np.eye(len(w))) for w in want):
        return x
    found = graph_resize_attrs(mode, x.shape[2:], out[2:], want, [1.0 / s for _, _, s in spatial])
    if found is not None:
        return ctx.emit("resize", [x], attrs=found)
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    rounding = f", nearest_mode={attrs.get('nearest_mode', 'round_prefer_floor')!r}" if mode == "nearest" else ""
    raise Unsupported(f"mode={mode!r} with coordinate_transformation_mode={ctm!r}{rounding} picks other source "
                      f"pixels than torch's F.interpolate at these sizes (the graph's resize); it has no exact "
                      f"translation")
