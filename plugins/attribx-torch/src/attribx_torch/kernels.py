"""torch kernels (forward and vector-Jacobian product) for every built-in op of attribx.

Each kernel calls torch's own operators under ``torch.no_grad()``; no autograd graph is ever built
over the model. VJPs are explicit: the input gradient of a conv is one transposed convolution
(``aten.convolution_backward`` with only the input gradient requested), max pooling scatters back
through the indices of its maxima, average pooling uses torch's pooling backward, linear layers are
one matmul, elementwise ops use torch's fused backward kernels or their formula.

The numbers equal the numpy reference kernels (:mod:`attribx.engines.numpy_kernels`) up to rounding:
same geometry (from :mod:`attribx.ops`), same tie-breaking (the first maximum of a window wins),
same conventions at kinks (relu' (0) = 0, leaky_relu' (0) = 1, clip' at the bounds = 0). Kernels keep
the input's dtype (parameters are cast to it). Importing this module imports torch; attribx only
imports it when the torch engine is used.
"""
from __future__ import annotations

import functools
import math
import weakref

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from attribx.engines.base import CONSTANT_KERNEL, Kernel, fill_vjp, quotient_kernel, transposed_conv_kernel
from attribx.ops import conv_geometry, mask_axes, norm_axis, pad_widths, pool_geometry, reduce_axes, slice_bounds

__all__ = ["KERNELS", "unbroadcast"]

_aten = torch.ops.aten


# ----------------------------------------------------------------------------------------------
# helpers


def _param(params, key, like):
    """A parameter as a tensor of ``like``'s dtype and device (a no-op when the engine converted it). ``like`` a
    shape stub (the meta device: a value the pass released) is refused: the parameter would follow it to the
    meta device, and torch's CPU kernels then return numbers computed from no values instead of raising."""
    p = params.get(key)
    if p is None:
        return None
    if like.is_meta:
        raise ValueError(f"parameter {key!r}: its op's input is a released value (a shape stub), which this kernel "
                         f"cannot take")
    if not isinstance(p, torch.Tensor):
        p = torch.as_tensor(p, device=like.device)
    if p.dtype != like.dtype and like.is_floating_point():
        p = p.to(like.dtype)
    if p.device != like.device:
        p = p.to(like.device)
    return p


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the VJP of broadcasting ``shape`` to ``grad.shape``."""
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    return grad.sum_to_size(shape) if len(shape) else grad.sum()


def _symmetric(pads):
    return all(lo == hi for lo, hi in pads)


def _torch_pads(pads):
    """Per-dim (before, after) pairs -> F.pad's flat list, last dim first."""
    out = []
    for lo, hi in reversed(pads):
        out += [lo, hi]
    return out


def _crop(t, pads, sizes):
    """The part of a spatially padded tensor (N, C, *padded) that lies over the input."""
    if not any(lo or hi for lo, hi in pads):
        return t
    return t[(slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, sizes))]


def _shaped(x, shape, like):
    """A tensor of ``shape`` for backward kernels that read only their input's shape: ``x`` itself when
    it fits, else uninitialised memory (an expanded zero-stride tensor would be copied to full size)."""
    shape = tuple(shape)
    if tuple(x.shape) == shape and x.is_contiguous() and x.dtype == like.dtype:
        return x
    return torch.empty(shape, dtype=like.dtype, device=like.device)


_LOW = (torch.bfloat16, torch.float16)


def _cast(obj, dtype):
    """Floating tensors in (lists, dicts of) ``obj`` cast to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return [_cast(o, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


def _low_precision(args):
    inputs = args[1]
    return bool(inputs) and isinstance(inputs[0], torch.Tensor) and inputs[0].dtype in _LOW


def _nograd(fn):
    """Run ``fn`` without autograd; where torch lacks a half-precision kernel on this device (e.g. 3d
    average pooling in bfloat16 on the CPU), compute in float32 and cast the result back."""
    @functools.wraps(fn)
    def run(*args):
        with torch.no_grad():
            try:
                return fn(*args)
            except (NotImplementedError, RuntimeError):
                if not _low_precision(args):
                    raise
                dtype = args[1][0].dtype
                return _cast(fn(args[0], *_cast(list(args[1:]), torch.float32)), dtype)
    return run


# ----------------------------------------------------------------------------------------------
# weighted layers


def _linear_forward(attrs, inputs, params):
    (x,) = inputs
    return F.linear(x, _param(params, "weight", x), _param(params, "bias", x))


def _linear_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [torch.matmul(grad, _param(params, "weight", x))]


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_forward(attrs, inputs, params):
    (x,) = inputs
    w = _param(params, "weight", x)
    n, _, stride, dilation, pads = conv_geometry(attrs, x.shape, w.shape)
    if _symmetric(pads):
        padding = tuple(lo for lo, _ in pads)
    else:   # asymmetric ('same' with an odd total, explicit pairs): pad the difference, conv pads the rest
        common = [min(lo, hi) for lo, hi in pads]
        x = F.pad(x, _torch_pads([(lo - c, hi - c) for (lo, hi), c in zip(pads, common)]))
        padding = tuple(common)
    return _CONV[n](x, w, _param(params, "bias", x), stride, padding, dilation, int(attrs["groups"]))


def _conv_vjp(attrs, inputs, params, output, grad):
    """One transposed convolution (torch's conv input gradient, nothing else computed).

    Asymmetric padding (lo, hi) is the symmetric padding min(lo, hi) of an input longer by |hi - lo|
    on the side with more padding; the gradient of that longer input is cropped back to x.
    """
    (x,) = inputs
    w = _param(params, "weight", x)
    n, _, stride, dilation, pads = conv_geometry(attrs, x.shape, w.shape)
    common = [min(lo, hi) for lo, hi in pads]
    extra = [(lo - c, hi - c) for (lo, hi), c in zip(pads, common)]
    sizes = tuple(x.shape[2:])
    in_shape = tuple(x.shape[:2]) + tuple(s + lo + hi for s, (lo, hi) in zip(sizes, extra))
    if grad.dtype != w.dtype:
        grad = grad.to(w.dtype)
    gx = _aten.convolution_backward(
        grad, _shaped(x, in_shape, grad), w, None, list(stride), common, list(dilation), False, [0] * n,
        int(attrs["groups"]), [True, False, False])[0]
    return [_crop(gx, extra, sizes)]


def _embedding_forward(attrs, inputs, params):
    (idx,) = inputs
    w = params["weight"]
    return F.embedding(idx.to(device=w.device, dtype=torch.long), w)


def _embedding_vjp(attrs, inputs, params, output, grad):
    """Indices are not differentiable: each index gets the signal summed over the features (as numpy)."""
    return [grad.sum(-1)]


def _placeholder(shape, like):
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device)


def _add_channel_bias(y, b):
    return y + b.to(y.dtype).reshape((1, -1) + (1,) * (y.dim() - 2))


# ----------------------------------------------------------------------------------------------
# pooling
#
# torch pools in 2d and 3d natively (1d goes through 2d with a unit axis); torch's own padding is used
# when it is symmetric and at most half the window, as torch requires; otherwise the input is padded
# explicitly (-inf for max pooling, so padding never wins; zeros for average pooling) and pooled
# without padding.


def _as_2d(x, geometry):
    """Lift a 1d pooling problem (N, C, L) to 2d (N, C, 1, L)."""
    kernel, stride, dilation, pads = geometry
    return (x.unsqueeze(2), ((1,) + tuple(kernel), (1,) + tuple(stride), (1,) + tuple(dilation),
                             [(0, 0)] + list(pads)))


def _native(kernel, pads):
    """Whether torch's own padding argument expresses these pads (symmetric, at most half the kernel)."""
    return _symmetric(pads) and all(2 * lo <= k for (lo, _), k in zip(pads, kernel))


def _pool_layout(t):
    """The memory format the pooling kernels run ``t`` in: channels-last for a 4-D CPU tensor, where torch's
    channel-first kernels take 2-6x as long (a 3x3 max pool 9 ms against 1.4 ms with both copies, a 3x3 average
    pool 7.8 against 1.3 ms), with the same window order and the same bits."""
    return torch.channels_last if t.dim() == 4 and t.device.type == "cpu" else torch.contiguous_format


def _channels_last(t):
    """``t`` in :func:`_pool_layout` (a copy where that is channels-last). Results are made contiguous again, so
    nothing else sees the layout."""
    fmt = _pool_layout(t)
    return t if fmt is torch.contiguous_format else t.contiguous(memory_format=fmt)


def _window_input(like, shape):
    """Uninitialised memory of ``shape``, in the layout :func:`_channels_last` gives ``like``: the input that a
    pooling backward kernel reads for its shape and layout only."""
    return torch.empty(tuple(shape), dtype=like.dtype, device=like.device, memory_format=_pool_layout(like))


class _MaxPlan:
    """A max pool as torch runs it: 1d lifted to 2d, padding torch's own or explicit with -inf."""

    def __init__(self, attrs, x):
        geometry = pool_geometry(attrs, x.shape)
        self.lifted = x.dim() == 3
        if self.lifted:
            x, geometry = _as_2d(x, geometry)
        self.x = x
        kernel, stride, dilation, pads = geometry
        self.kernel, self.stride, self.dilation, self.pads = list(kernel), list(stride), list(dilation), pads
        self.native = _native(kernel, pads)
        self.padding = [lo for lo, _ in pads] if self.native else [0] * len(pads)
        if x.dim() == 4:
            self.forward, self.backward = _aten.max_pool2d_with_indices, _aten.max_pool2d_with_indices_backward
        else:
            self.forward, self.backward = _aten.max_pool3d_with_indices, _aten.max_pool3d_with_indices_backward

    def padded_shape(self):
        if self.native:
            return tuple(self.x.shape)
        return tuple(self.x.shape[:2]) + tuple(s + lo + hi for s, (lo, hi) in zip(self.x.shape[2:], self.pads))

    def run(self):
        """(maxima, indices of the maxima in the (padded) input plane), from a channels-last copy on the CPU
        (:func:`_channels_last`): the indices are positions in each channel's plane, the same either way."""
        xp = self.x if self.native else F.pad(self.x, _torch_pads(self.pads), value=-math.inf)
        out, idx = self.forward(_channels_last(xp), self.kernel, self.stride, self.padding, self.dilation, False)
        return out.contiguous(), idx.contiguous()


# The indices of the maxima, kept from the forward pass for the VJP (as autograd keeps them), keyed by
# the output tensor: they live exactly as long as the output activation. A VJP with another input or
# without the output recomputes them.
_MAX_INDICES = WeakIdKeyDictionary()


def _max_pool_forward(attrs, inputs, params):
    (x,) = inputs
    plan = _MaxPlan(attrs, x)
    out, idx = plan.run()
    if plan.lifted:
        out = out.squeeze(2)
    _MAX_INDICES[out] = (weakref.ref(x), attrs, idx)
    return out


def _max_pool_vjp(attrs, inputs, params, output, grad):
    """Each window's gradient goes to its (first) maximum, through the indices torch reports."""
    (x,) = inputs
    plan = _MaxPlan(attrs, x)
    hit = _MAX_INDICES.get(output) if output is not None else None
    if hit is not None and hit[0]() is x and hit[1] is attrs:
        idx = hit[2]
    else:
        idx = plan.run()[1]
    g = grad.unsqueeze(2) if plan.lifted else grad
    if g.dtype != x.dtype:
        g = g.to(x.dtype)
    gx = plan.backward(g, _shaped(plan.x, plan.padded_shape(), g), plan.kernel, plan.stride, plan.padding,
                       plan.dilation, False, idx)
    if not plan.native:
        gx = _crop(gx, plan.pads, tuple(plan.x.shape[2:]))
    return [gx.squeeze(2) if plan.lifted else gx]


def _avg_prepare(attrs, x):
    geometry = pool_geometry(attrs, x.shape)
    lifted = x.dim() == 3
    if lifted:
        x, geometry = _as_2d(x, geometry)
    kernel, stride, _, pads = geometry
    return x, list(kernel), list(stride), pads, _native(kernel, pads), lifted


_AVG = {4: _aten.avg_pool2d, 5: _aten.avg_pool3d}
_AVG_BACK = {4: _aten.avg_pool2d_backward, 5: _aten.avg_pool3d_backward}


def _window_counts(x, kernel, stride, pads):
    """Number of real input positions in each window (count_include_pad False), at least 1."""
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    ones = F.pad(ones, _torch_pads(pads))
    return _AVG[ones.dim()](ones, kernel, stride, [0] * len(kernel), False, True, 1).clamp_(min=1)


def _avg_pool_forward(attrs, inputs, params):
    (x,) = inputs
    xl, kernel, stride, pads, native, lifted = _avg_prepare(attrs, x)
    cip = bool(attrs["count_include_pad"])
    if native:
        out = _AVG[xl.dim()](_channels_last(xl), kernel, stride, [lo for lo, _ in pads], False, cip, None)
    elif cip:   # zeros count: the divisor is the window's area, as torch's with padding 0
        out = _AVG[xl.dim()](_channels_last(F.pad(xl, _torch_pads(pads))), kernel, stride, [0] * len(kernel), False,
                             True, None)
    else:
        total = _AVG[xl.dim()](_channels_last(F.pad(xl, _torch_pads(pads))), kernel, stride, [0] * len(kernel),
                               False, True, 1)
        out = total / _window_counts(xl, kernel, stride, pads)
    out = out.contiguous()
    return out.squeeze(2) if lifted else out


def _avg_pool_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    xl, kernel, stride, pads, native, lifted = _avg_prepare(attrs, x)
    cip = bool(attrs["count_include_pad"])
    g = grad.unsqueeze(2) if lifted else grad
    back = _AVG_BACK[xl.dim()]
    if native:
        gx = back(_channels_last(g), _window_input(g, xl.shape), kernel, stride, [lo for lo, _ in pads], False, cip,
                  None).contiguous()
    else:
        padded = tuple(xl.shape[:2]) + tuple(s + lo + hi for s, (lo, hi) in zip(xl.shape[2:], pads))
        if not cip:
            g = g / _window_counts(xl, kernel, stride, pads)
        gx = back(_channels_last(g), _window_input(g, padded), kernel, stride, [0] * len(kernel), False, True,
                  None if cip else 1).contiguous()
        gx = _crop(gx, pads, tuple(xl.shape[2:]))
    return [gx.squeeze(2) if lifted else gx]


def _global_avg_pool_forward(attrs, inputs, params):
    (x,) = inputs
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=bool(attrs["keepdims"]))


def _global_avg_pool_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    g = grad.reshape(tuple(x.shape[:2]) + (1,) * (x.dim() - 2)) / math.prod(x.shape[2:])
    return [g.expand(x.shape)]


# ----------------------------------------------------------------------------------------------
# batch norm


def _bn_params(attrs, x, params):
    axis = norm_axis(attrs["axis"], x.dim())
    return axis, [_param(params, k, x) for k in ("mean", "var", "scale", "bias")]


def _bn_shape(p, axis, ndim):
    if p is None:
        return None
    shape = [1] * ndim
    shape[axis] = -1
    return p.reshape(shape)


def _batch_norm_forward(attrs, inputs, params):
    (x,) = inputs
    axis, (mean, var, scale, bias) = _bn_params(attrs, x, params)
    if axis == 1 and x.dim() >= 2:
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(attrs["eps"]))
    mean, var, scale, bias = (_bn_shape(p, axis, x.dim()) for p in (mean, var, scale, bias))
    y = (x - mean) / torch.sqrt(var + attrs["eps"])
    if scale is not None:
        y = y * scale
    return y if bias is None else y + bias


def _batch_norm_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    axis, (_, var, scale, _) = _bn_params(attrs, x, params)
    mult = 1 / torch.sqrt(var + attrs["eps"])
    if scale is not None:
        mult = mult * scale
    return [grad * _bn_shape(mult, axis, x.dim())]


# ----------------------------------------------------------------------------------------------
# elementwise activations


def _relu_forward(attrs, inputs, params):
    return torch.relu(inputs[0])


def _relu_vjp(attrs, inputs, params, output, grad):
    return [_aten.threshold_backward(grad, inputs[0], 0)]   # grad where x > 0, else 0 (also at 0)


def _leaky_forward(attrs, inputs, params):
    return F.leaky_relu(inputs[0], float(attrs["negative_slope"]))


def _leaky_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [torch.where(x >= 0, grad, grad * float(attrs["negative_slope"]))]   # slope 1 at 0


def _tanh_forward(attrs, inputs, params):
    return torch.tanh(inputs[0])


def _tanh_vjp(attrs, inputs, params, output, grad):
    y = torch.tanh(inputs[0]) if output is None else output
    return [_aten.tanh_backward(grad, y)]


def _sigmoid_forward(attrs, inputs, params):
    return torch.sigmoid(inputs[0])


def _sigmoid_vjp(attrs, inputs, params, output, grad):
    y = torch.sigmoid(inputs[0]) if output is None else output
    return [_aten.sigmoid_backward(grad, y)]


def _clip_forward(attrs, inputs, params):
    (x,) = inputs
    lo, hi = attrs["min"], attrs["max"]
    if lo is None and hi is None:
        return x
    return torch.clamp(x, lo, hi)


def _clip_vjp(attrs, inputs, params, output, grad):
    """Gradient 1 strictly inside the bounds (0 at them, as torch's hardtanh)."""
    (x,) = inputs
    lo, hi = attrs["min"], attrs["max"]
    inside = None
    if lo is not None:
        inside = x > lo
    if hi is not None:
        inside = x < hi if inside is None else inside & (x < hi)
    return [grad if inside is None else grad * inside]


def _elu_forward(attrs, inputs, params):
    return F.elu(inputs[0], float(attrs["alpha"]))


def _elu_vjp(attrs, inputs, params, output, grad):
    return [_aten.elu_backward(grad, float(attrs["alpha"]), 1, 1, False, inputs[0])]


def _gelu_forward(attrs, inputs, params):
    return F.gelu(inputs[0], approximate=attrs["approximate"])


def _gelu_vjp(attrs, inputs, params, output, grad):
    return [_aten.gelu_backward(grad, inputs[0], approximate=attrs["approximate"])]


def _silu_forward(attrs, inputs, params):
    return F.silu(inputs[0])


def _silu_vjp(attrs, inputs, params, output, grad):
    return [_aten.silu_backward(grad, inputs[0])]


def _softmax_forward(attrs, inputs, params):
    (x,) = inputs
    return torch.softmax(x, norm_axis(attrs["axis"], x.dim()))


def _softmax_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    axis = norm_axis(attrs["axis"], x.dim())
    y = torch.softmax(x, axis) if output is None else output
    return [_aten._softmax_backward_data(grad, y, axis, y.dtype)]


# ----------------------------------------------------------------------------------------------
# combinations of inputs


def _add_forward(attrs, inputs, params):
    out = inputs[0] + inputs[1] if len(inputs) > 1 else inputs[0]
    for x in inputs[2:]:
        out = out + x
    return out


def _add_vjp(attrs, inputs, params, output, grad):
    return [unbroadcast(grad, x.shape) for x in inputs]


def _mul_forward(attrs, inputs, params):
    a, b = inputs
    return a * b


def _mul_vjp(attrs, inputs, params, output, grad):
    a, b = inputs
    return [unbroadcast(grad * b, a.shape), unbroadcast(grad * a, b.shape)]


def _concat_forward(attrs, inputs, params):
    return torch.cat(list(inputs), dim=norm_axis(attrs["axis"], inputs[0].dim()))


def _concat_vjp(attrs, inputs, params, output, grad):
    axis = norm_axis(attrs["axis"], inputs[0].dim())
    return list(torch.split(grad, [x.shape[axis] for x in inputs], dim=axis))


# ----------------------------------------------------------------------------------------------
# shape ops


def _reshape_back(attrs, inputs, params, output, grad):
    return [grad.reshape(inputs[0].shape)]


def _reshape_forward(attrs, inputs, params):
    (x,) = inputs
    return x.reshape((x.shape[0],) + tuple(attrs["shape"]))


def _flatten_forward(attrs, inputs, params):
    (x,) = inputs
    return torch.flatten(x, norm_axis(attrs["start_dim"], x.dim()), norm_axis(attrs["end_dim"], x.dim()))


def _perm(attrs, ndim):
    return [norm_axis(p, ndim) for p in attrs["perm"]]


def _transpose_forward(attrs, inputs, params):
    (x,) = inputs
    return x.permute(_perm(attrs, x.dim()))


def _transpose_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    perm = _perm(attrs, x.dim())
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return [grad.permute(inverse)]


def _slice_index(attrs, x):
    axis = norm_axis(attrs["axis"], x.dim())
    r = slice_bounds(attrs, x.shape[axis])
    return (slice(None),) * axis + (slice(r.start, r.stop, r.step),)


def _slice_forward(attrs, inputs, params):
    (x,) = inputs
    return x[_slice_index(attrs, x)]


def _slice_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    gx = grad.new_zeros(x.shape)
    gx[_slice_index(attrs, x)] = grad
    return [gx]


def _pad_forward(attrs, inputs, params):
    (x,) = inputs
    widths = pad_widths(attrs, x.dim())
    while len(widths) > 1 and widths[0] == (0, 0):   # F.pad takes the trailing axes only
        widths = widths[1:]
    return F.pad(x, _torch_pads(widths), value=float(attrs["value"]))


def _pad_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    widths = pad_widths(attrs, x.dim())
    return [grad[tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, x.shape))]]


def _identity_forward(attrs, inputs, params):
    return inputs[0]


def _fill_forward(attrs, inputs, params):
    v = params["value"]
    return v.unsqueeze(0).expand((inputs[0].shape[0],) + tuple(v.shape)).clone()


def _identity_vjp(attrs, inputs, params, output, grad):
    return [grad]


# ----------------------------------------------------------------------------------------------
# masks and selection (padded sequences)


def _mask_forward(attrs, inputs, params):
    (x,) = inputs
    differs = x != attrs["value"]
    axes = mask_axes(attrs, x.dim())
    if axes:
        differs = torch.amax(differs.to(torch.uint8), dim=axes) > 0
    return differs.to(x.dtype if x.is_floating_point() else torch.float32)


def _length_mask_forward(attrs, inputs, params):
    (lengths,) = inputs
    steps = torch.arange(int(attrs["steps"]), device=lengths.device)
    return (steps[None, :] < lengths[:, None]).to(lengths.dtype if lengths.is_floating_point() else torch.float32)


def _no_gradient_vjp(attrs, inputs, params, output, grad):
    """Masks are piecewise constant: zero gradient, in the gradient's dtype."""
    return [grad.new_zeros(tuple(x.shape)) for x in inputs]


def _where_forward(attrs, inputs, params):
    cond, a, b = inputs
    return torch.where(cond > 0.5, a, b)


def _where_vjp(attrs, inputs, params, output, grad):
    cond, a, b = inputs
    chosen = cond > 0.5
    zero = grad.new_zeros(())
    return [grad.new_zeros(tuple(cond.shape)), unbroadcast(torch.where(chosen, grad, zero), a.shape),
            unbroadcast(torch.where(chosen, zero, grad), b.shape)]


# ----------------------------------------------------------------------------------------------
# reductions


def _reduce_sum_forward(attrs, inputs, params):
    (x,) = inputs
    return x.sum(dim=reduce_axes(attrs, x.dim()), keepdim=bool(attrs["keepdims"]))


def _reduce_mean_forward(attrs, inputs, params):
    (x,) = inputs
    return x.mean(dim=reduce_axes(attrs, x.dim()), keepdim=bool(attrs["keepdims"]))


def _spread(attrs, x, grad):
    """Broadcast a reduction's gradient back over the reduced axes (a view, no copy)."""
    if not attrs["keepdims"]:
        axes = reduce_axes(attrs, x.dim())
        grad = grad.reshape(tuple(1 if i in axes else d for i, d in enumerate(x.shape)))
    return grad.expand(x.shape)


def _reduce_sum_vjp(attrs, inputs, params, output, grad):
    return [_spread(attrs, inputs[0], grad)]


def _reduce_mean_vjp(attrs, inputs, params, output, grad):
    x = inputs[0]
    count = math.prod(x.shape[a] for a in reduce_axes(attrs, x.dim()))
    return [_spread(attrs, x, grad / count)]


# ----------------------------------------------------------------------------------------------


def _kernel(forward, vjp) -> Kernel:
    return Kernel(_nograd(forward), _nograd(vjp))


KERNELS: dict[str, Kernel] = {
    "linear": _kernel(_linear_forward, _linear_vjp),
    "conv": _kernel(_conv_forward, _conv_vjp),
    "embedding": _kernel(_embedding_forward, _embedding_vjp),
    "max_pool": _kernel(_max_pool_forward, _max_pool_vjp),
    "avg_pool": _kernel(_avg_pool_forward, _avg_pool_vjp),
    "global_avg_pool": _kernel(_global_avg_pool_forward, _global_avg_pool_vjp),
    "batch_norm": _kernel(_batch_norm_forward, _batch_norm_vjp),
    "relu": _kernel(_relu_forward, _relu_vjp),
    "clip": _kernel(_clip_forward, _clip_vjp),
    "elu": _kernel(_elu_forward, _elu_vjp),
    "gelu": _kernel(_gelu_forward, _gelu_vjp),
    "silu": _kernel(_silu_forward, _silu_vjp),
    "leaky_relu": _kernel(_leaky_forward, _leaky_vjp),
    "tanh": _kernel(_tanh_forward, _tanh_vjp),
    "sigmoid": _kernel(_sigmoid_forward, _sigmoid_vjp),
    "softmax": _kernel(_softmax_forward, _softmax_vjp),
    "add": _kernel(_add_forward, _add_vjp),
    "mul": _kernel(_mul_forward, _mul_vjp),
    "concat": _kernel(_concat_forward, _concat_vjp),
    "reshape": _kernel(_reshape_forward, _reshape_back),
    "flatten": _kernel(_flatten_forward, _reshape_back),
    "transpose": _kernel(_transpose_forward, _transpose_vjp),
    "slice": _kernel(_slice_forward, _slice_vjp),
    "pad": _kernel(_pad_forward, _pad_vjp),
    "identity": _kernel(_identity_forward, _identity_vjp),
    "reduce_sum": _kernel(_reduce_sum_forward, _reduce_sum_vjp),
    "reduce_mean": _kernel(_reduce_mean_forward, _reduce_mean_vjp),
    "constant": CONSTANT_KERNEL,
    "fill": _kernel(_fill_forward, fill_vjp),
    "mask": _kernel(_mask_forward, _no_gradient_vjp),
    "length_mask": _kernel(_length_mask_forward, _no_gradient_vjp),
    "where": _kernel(_where_forward, _where_vjp),
}
KERNELS["conv_transpose"] = transposed_conv_kernel(KERNELS["conv"], _placeholder, _add_channel_bias)
_QUOTIENT = quotient_kernel(unbroadcast, lambda t: t.shape)
KERNELS["div"] = _kernel(_QUOTIENT.forward, _QUOTIENT.vjp)
