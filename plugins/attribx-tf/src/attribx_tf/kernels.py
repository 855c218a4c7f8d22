"""TensorFlow kernels (forward and vector-Jacobian product) for every built-in op of attribx.

The graph is channel-first (N, C, *spatial) as in torch, while TensorFlow's CPU convolutions and
pools take channel-last tensors only: window ops transpose to (N, *spatial, C) around TF's kernels.
1d windows run as 2d with a unit height. Padding always comes from :mod:`attribx.ops` and is applied
explicitly (``tf.pad``, -inf for max pooling) before a ``VALID`` kernel, so every kind of padding
('same', asymmetric pairs, more than half a window) means what it means on the numpy engine.

VJPs are explicit: a conv's input gradient is TensorFlow's transposed conv (``Conv2DBackpropInput`` /
``Conv3DBackpropInputV2``), average pools use ``AvgPoolGrad``, max pools scatter each window's gradient
to its first maximum, elementwise ops use TF's gradient kernels (``ReluGrad``, ``TanhGrad``, ...) or
their formula. No ``GradientTape`` is needed.

The numbers equal the numpy reference kernels (:mod:`attribx.engines.numpy_kernels`) up to rounding:
same tie-breaking (the first maximum of a window wins), same conventions at kinks (relu'(0) = 0,
leaky_relu'(0) = 1, clip' at the bounds = 0). Kernels keep the input's dtype (parameters are cast to
it). Importing this module imports TensorFlow; attribx imports it only when the engine is used.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import tensorflow as tf

from attribx.engines.base import CONSTANT_KERNEL, Kernel, fill_vjp, quotient_kernel, transposed_conv_kernel
from attribx.ops import (conv_geometry, mask_axes, norm_axis, pad_widths, pool_geometry, reduce_axes, slice_bounds,
                         window_output_size)

__all__ = ["KERNELS", "unbroadcast"]


# ----------------------------------------------------------------------------------------------
# helpers


def _param(params, key, like):
    """A parameter as a tensor of ``like``'s dtype (a no-op when the engine already converted it)."""
    p = params.get(key)
    if p is None:
        return None
    if not tf.is_tensor(p):
        p = tf.convert_to_tensor(np.asarray(p))
    if p.dtype != like.dtype and like.dtype.is_floating:
        p = tf.cast(p, like.dtype)
    return p


def _shape(x):
    return tuple(int(d) for d in x.shape)


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the VJP of broadcasting ``shape`` to ``grad.shape``."""
    shape = tuple(shape)
    gshape = _shape(grad)
    if gshape == shape:
        return grad
    extra = len(gshape) - len(shape)
    axes = list(range(extra)) + [extra + i for i, s in enumerate(shape) if s == 1 and gshape[extra + i] != 1]
    if axes:
        grad = tf.reduce_sum(grad, axis=axes)
    return tf.reshape(grad, shape)


def _to_last(x):
    """(N, C, *spatial) -> (N, *spatial, C)."""
    n = len(x.shape)
    return tf.transpose(x, [0] + list(range(2, n)) + [1])


def _to_first(x):
    """(N, *spatial, C) -> (N, C, *spatial)."""
    n = len(x.shape)
    return tf.transpose(x, [0, n - 1] + list(range(1, n - 1)))


def _pad_spatial(x, pads, value=0.0):
    """Pad the spatial axes of a channel-first tensor by per-dim (before, after) pairs."""
    if not any(lo or hi for lo, hi in pads):
        return x
    return tf.pad(x, [[0, 0], [0, 0]] + [list(p) for p in pads], constant_values=value)


def _crop_spatial(x, pads, sizes):
    if not any(lo or hi for lo, hi in pads):
        return x
    return x[(slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, sizes))]


def _lift(x, geometry):
    """A 1d window problem (N, C, L) as 2d (N, C, 1, L), the smallest rank TF's window kernels take."""
    kernel, stride, dilation, pads = geometry
    return (tf.expand_dims(x, 2),
            ((1,) + tuple(kernel), (1,) + tuple(stride), (1,) + tuple(dilation), [(0, 0)] + list(pads)))


def _spread_axis(x, axis, step, size, start=0):
    """Place ``x``'s entries along ``axis`` at start, start + step, ... of a zero tensor of length ``size``
    (the VJP of a strided slice), by interleaving zeros and padding: no scatter needed."""
    m = int(x.shape[axis])
    if step > 1:
        shape = _shape(x)
        zeros = tf.zeros(shape[:axis + 1] + (step - 1,) + shape[axis + 1:], dtype=x.dtype)
        x = tf.concat([tf.expand_dims(x, axis + 1), zeros], axis=axis + 1)
        x = tf.reshape(x, shape[:axis] + (m * step,) + shape[axis + 1:])
        x = x[(slice(None),) * axis + (slice(0, (m - 1) * step + 1),)]
    used = (m - 1) * step + 1
    if start or size - start - used:
        widths = [[0, 0]] * len(x.shape)
        widths[axis] = [start, size - start - used]
        x = tf.pad(x, widths)
    return x


# ----------------------------------------------------------------------------------------------
# weighted layers


def _linear_forward(attrs, inputs, params):
    (x,) = inputs
    w = _param(params, "weight", x)
    shape = _shape(x)
    y = tf.matmul(tf.reshape(x, (-1, shape[-1])), w, transpose_b=True)
    b = _param(params, "bias", x)
    if b is not None:
        y = tf.nn.bias_add(y, b)
    return tf.reshape(y, shape[:-1] + (int(w.shape[0]),))


def _linear_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    w = _param(params, "weight", x)
    g = tf.cast(grad, w.dtype)
    return [tf.reshape(tf.matmul(tf.reshape(g, (-1, int(g.shape[-1]))), w), _shape(x))]


class _ConvPlan:
    """A conv as TensorFlow runs it: channel-last, 1d lifted to 2d, explicit padding, groups split."""

    def __init__(self, attrs, x, w):
        n, kernel, stride, dilation, pads = conv_geometry(attrs, _shape(x), _shape(w))
        # TF 2.21's oneDNN float32 Conv2D returns garbage for some windows when the input extends past
        # the last window (e.g. width 3, kernel 2, stride 2): positions no window reads are removed first
        # (from the after-padding, then from the input itself), so every call sees an exact fit
        self.cut, fitted = [], []
        for size, k, s, d, (lo, hi) in zip(_shape(x)[2:], kernel, stride, dilation, pads):
            eff = (k - 1) * d + 1
            tail = (size + lo + hi - eff) % s
            fitted.append((lo, max(hi - tail, 0)))
            self.cut.append(max(tail - hi, 0))
        self.n, self.groups, self.pads = n, int(attrs["groups"]), fitted
        self.full_sizes = _shape(x)[2:]
        self.sizes = tuple(size - c for size, c in zip(self.full_sizes, self.cut))
        self.lifted = n == 1
        # TF's CPU kernels take no dilation in Conv3D and the conv input gradients: the kernel is dilated
        # explicitly instead (zeros between its taps), the same sums with a few more zero products
        for i, (k, d) in enumerate(zip(kernel, dilation)):
            if d > 1:
                w = _spread_axis(w, 2 + i, d, (k - 1) * d + 1)
        if self.lifted:
            stride = (1,) + tuple(stride)
            w = tf.expand_dims(w, 2)
        self.strides = [1] + list(stride) + [1]
        self.dilations = [1] * len(self.strides)
        # (O, C/g, *k) -> (*k, C/g, O), TF's filter layout
        r = len(w.shape)
        self.w = tf.transpose(w, list(range(2, r)) + [1, 0])

    def prepare(self, x):
        """The padded, channel-last (lifted) input."""
        if any(self.cut):
            x = x[(slice(None), slice(None)) + tuple(slice(0, n) for n in self.sizes)]
        x = _pad_spatial(x, self.pads)
        return _to_last(tf.expand_dims(x, 2) if self.lifted else x)

    def padded_shape(self, x):
        shape = _shape(x)
        spatial = tuple(s + lo + hi for s, (lo, hi) in zip(self.sizes, self.pads))
        return (shape[0],) + ((1,) if self.lifted else ()) + spatial + (shape[1],)

    def finish(self, y):
        y = _to_first(y)
        return tf.squeeze(y, 2) if self.lifted else y

    def _group_filters(self):
        if self.groups == 1:
            return [self.w]
        return tf.split(self.w, self.groups, axis=-1)

    def _depthwise_filter(self, rank: int, channels: int):
        """For a 2-D conv with one input channel per group (MobileNet's, EfficientNet's depthwise convs):
        the filter as TF's depthwise kernels take it, (*k, C, multiplier), else None. One depthwise op
        instead of a conv per group (a Python loop over up to 960 groups)."""
        if (self.groups == 1 or rank != 4 or self.w.shape[-2] != 1 or channels != self.groups
                or self.strides[1] != self.strides[2]):      # TF's depthwise kernels take equal strides only
            return None
        k = list(self.w.shape[:-2])
        return tf.reshape(self.w, k + [self.groups, self.w.shape[-1] // self.groups])

    def conv(self, xl):
        dw = self._depthwise_filter(len(xl.shape), xl.shape[-1])
        if dw is not None:
            return tf.raw_ops.DepthwiseConv2dNative(input=xl, filter=dw, strides=self.strides, padding="VALID",
                                                    dilations=self.dilations)
        op = tf.raw_ops.Conv2D if len(xl.shape) == 4 else tf.raw_ops.Conv3D
        xs = [xl] if self.groups == 1 else tf.split(xl, self.groups, axis=-1)
        ys = [op(input=xi, filter=wi, strides=self.strides, padding="VALID", dilations=self.dilations)
              for xi, wi in zip(xs, self._group_filters())]
        return ys[0] if len(ys) == 1 else tf.concat(ys, axis=-1)

    def conv_input_grad(self, gl, in_shape):
        """The transposed conv: the gradient of the padded, channel-last input."""
        dw = self._depthwise_filter(len(gl.shape), in_shape[-1])
        if dw is not None:
            return tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
                input_sizes=tf.constant(list(in_shape), dtype=tf.int32), filter=dw, out_backprop=gl,
                strides=self.strides, padding="VALID", dilations=self.dilations)
        gs = [gl] if self.groups == 1 else tf.split(gl, self.groups, axis=-1)
        group_shape = list(in_shape[:-1]) + [in_shape[-1] // self.groups]
        sizes = tf.constant(group_shape, dtype=tf.int32)
        if len(gl.shape) == 4:
            outs = [tf.raw_ops.Conv2DBackpropInput(input_sizes=sizes, filter=wi, out_backprop=gi,
                                                   strides=self.strides, padding="VALID",
                                                   dilations=self.dilations)
                    for gi, wi in zip(gs, self._group_filters())]
        else:
            outs = [tf.raw_ops.Conv3DBackpropInputV2(input_sizes=sizes, filter=wi, out_backprop=gi,
                                                     strides=self.strides, padding="VALID",
                                                     dilations=self.dilations)
                    for gi, wi in zip(gs, self._group_filters())]
        return outs[0] if len(outs) == 1 else tf.concat(outs, axis=-1)


def _conv_forward(attrs, inputs, params):
    (x,) = inputs
    w = _param(params, "weight", x)
    plan = _ConvPlan(attrs, x, w)
    y = plan.conv(plan.prepare(x))
    b = _param(params, "bias", x)
    if b is not None:
        y = tf.nn.bias_add(y, b)
    return plan.finish(y)


def _conv_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    w = _param(params, "weight", x)
    plan = _ConvPlan(attrs, x, w)
    g = tf.cast(grad, w.dtype)
    g = _to_last(tf.expand_dims(g, 2) if plan.lifted else g)
    gx = plan.finish(plan.conv_input_grad(g, plan.padded_shape(x)))
    gx = _crop_spatial(gx, plan.pads, plan.sizes)
    if any(plan.cut):    # input positions no window reads get zero gradient
        gx = _pad_spatial(gx, [(0, c) for c in plan.cut])
    return [gx]


def _embedding_forward(attrs, inputs, params):
    (idx,) = inputs
    return tf.gather(params["weight"], tf.cast(idx, tf.int64))


def _embedding_vjp(attrs, inputs, params, output, grad):
    """Indices are not differentiable: each index gets the signal summed over the features (as numpy)."""
    return [tf.reduce_sum(grad, axis=-1)]


class _Placeholder:
    """Stands for conv's input where only its shape and dtype are read (no memory)."""

    def __init__(self, shape, like):
        self.shape = tuple(shape)
        self.dtype = like.dtype


def _add_channel_bias(y, b):
    return y + tf.reshape(tf.cast(b, y.dtype), (1, -1) + (1,) * (len(y.shape) - 2))


# ----------------------------------------------------------------------------------------------
# pooling


def _out_spatial(sizes, kernel, stride, dilation, pads):
    return tuple(window_output_size(sizes[i], kernel[i], stride[i], dilation[i], pads[i]) for i in range(len(kernel)))


def _offsets(kernel, stride, dilation, out_spatial):
    """(flat index, offset, spatial slices) per kernel offset in row-major order, as the numpy kernels."""
    for flat, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        yield flat, offset, tuple(slice(o * d, o * d + (n - 1) * s + 1, s)
                                  for o, d, s, n in zip(offset, dilation, stride, out_spatial))


def _max_pool_argmax(x, geometry):
    """Window maxima and the flat kernel offset of each (first one on ties: a later equal value does not
    take over), from strided views of the -inf-padded input; used where TF's pool has no dilation."""
    kernel, stride, dilation, pads = geometry
    out_spatial = _out_spatial(_shape(x)[2:], kernel, stride, dilation, pads)
    xp = _pad_spatial(x, pads, -math.inf)
    best = idx = None
    for flat, _, slices in _offsets(kernel, stride, dilation, out_spatial):
        v = xp[(slice(None), slice(None)) + slices]
        if best is None:
            best, idx = v, tf.zeros(_shape(v), tf.int32)
        else:
            better = v > best
            best = tf.where(better, v, best)
            idx = tf.where(better, flat, idx)
    return best, idx, out_spatial


def _native_max(geometry, ndim):
    """Whether TF's MaxPoolWithArgmax can run this pool: 1d or 2d, no dilation."""
    return ndim in (3, 4) and all(d == 1 for d in geometry[2])


def _max_pool_forward(attrs, inputs, params):
    (x,) = inputs
    geometry = pool_geometry(attrs, _shape(x))
    if _native_max(geometry, len(x.shape)):
        lifted = len(x.shape) == 3
        xl, (kernel, stride, _, pads) = _lift(x, geometry) if lifted else (x, geometry)
        y = tf.nn.max_pool2d(_to_last(_pad_spatial(xl, pads, -math.inf)), list(kernel), list(stride), "VALID")
        y = _to_first(y)
        return tf.squeeze(y, 2) if lifted else y
    return _max_pool_argmax(x, geometry)[0]


def _max_pool_vjp(attrs, inputs, params, output, grad):
    """Each window's gradient goes to its first maximum."""
    (x,) = inputs
    geometry = pool_geometry(attrs, _shape(x))
    grad = tf.cast(grad, x.dtype)
    if _native_max(geometry, len(x.shape)):
        # TF's argmax (row-major scan, a strictly greater value takes over, so the first maximum wins)
        # indexes the padded channel-last input; one segment sum scatters the gradient there
        lifted = len(x.shape) == 3
        xl, (kernel, stride, _, pads) = _lift(x, geometry) if lifted else (x, geometry)
        xp = _to_last(_pad_spatial(xl, pads, -math.inf))
        _, arg = tf.nn.max_pool_with_argmax(xp, list(kernel), list(stride), "VALID", include_batch_in_index=True)
        g = _to_last(tf.expand_dims(grad, 2) if lifted else grad)
        gx = tf.math.unsorted_segment_sum(tf.reshape(g, [-1]), tf.reshape(arg, [-1]), int(np.prod(_shape(xp))))
        gx = _crop_spatial(_to_first(tf.reshape(gx, _shape(xp))), pads, _shape(xl)[2:])
        return [tf.squeeze(gx, 2) if lifted else gx]
    kernel, stride, dilation, pads = geometry
    _, idx, out_spatial = _max_pool_argmax(x, geometry)
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(_shape(x)[2:], pads))
    zero = tf.zeros_like(grad)
    gx = None
    for flat, offset, _ in _offsets(kernel, stride, dilation, out_spatial):
        part = tf.where(tf.equal(idx, flat), grad, zero)
        for axis, (o, d, s, size) in enumerate(zip(offset, dilation, stride, padded)):
            part = _spread_axis(part, axis + 2, s, size, o * d)
        gx = part if gx is None else gx + part
    return [_crop_spatial(gx, pads, _shape(x)[2:])]


class _AvgPlan:
    """An average pool as TF runs it: channel-last, 1d lifted to 2d, zero padding explicit.

    3d pools run as a 2d pool over (H, W) and then one over D: a box mean is separable, and TF's CPU
    AvgPool3D takes float32 only, while AvgPool takes float64 too."""

    def __init__(self, attrs, x):
        geometry = pool_geometry(attrs, _shape(x))
        self.lifted = len(x.shape) == 3
        self.x, geometry = _lift(x, geometry) if self.lifted else (x, geometry)
        self.kernel, self.stride, _, self.pads = geometry
        self.area = math.prod(self.kernel)
        self.padded = any(lo or hi for lo, hi in self.pads)
        self.count_pad = bool(attrs["count_include_pad"]) or not self.padded
        self.three = len(self.x.shape) == 5

    def _hw(self):
        k, s = self.kernel[-2:], self.stride[-2:]
        return [1, k[0], k[1], 1], [1, s[0], s[1], 1]

    def _d(self):
        return [1, self.kernel[0], 1, 1], [1, self.stride[0], 1, 1]

    def pool(self, xl):
        if not self.three:
            ksize, strides = self._hw()
            return tf.raw_ops.AvgPool(value=xl, ksize=ksize, strides=strides, padding="VALID")
        n, d, h, w, c = _shape(xl)
        ksize, strides = self._hw()
        y = tf.raw_ops.AvgPool(value=tf.reshape(xl, (n * d, h, w, c)), ksize=ksize, strides=strides, padding="VALID")
        _, h2, w2, _ = _shape(y)
        ksize, strides = self._d()
        y = tf.raw_ops.AvgPool(value=tf.reshape(y, (n, d, h2 * w2, c)), ksize=ksize, strides=strides, padding="VALID")
        return tf.reshape(y, (n, int(y.shape[1]), h2, w2, c))

    def pool_grad(self, gl, shape):
        """The gradient of the (padded, channel-last) input of :meth:`pool`, of that ``shape``."""
        if not self.three:
            ksize, strides = self._hw()
            return tf.raw_ops.AvgPoolGrad(orig_input_shape=tf.constant(shape, tf.int32), grad=gl, ksize=ksize,
                                          strides=strides, padding="VALID")
        n, d, h, w, c = shape
        _, d2, h2, w2, _ = _shape(gl)
        ksize, strides = self._d()
        g = tf.raw_ops.AvgPoolGrad(orig_input_shape=tf.constant((n, d, h2 * w2, c), tf.int32),
                                   grad=tf.reshape(gl, (n, d2, h2 * w2, c)), ksize=ksize, strides=strides,
                                   padding="VALID")
        ksize, strides = self._hw()
        g = tf.raw_ops.AvgPoolGrad(orig_input_shape=tf.constant((n * d, h, w, c), tf.int32),
                                   grad=tf.reshape(g, (n * d, h2, w2, c)), ksize=ksize, strides=strides,
                                   padding="VALID")
        return tf.reshape(g, shape)

    def counts(self, dtype):
        """Real input positions per window (count_include_pad False), at least 1: channel-last."""
        ones = _pad_spatial(tf.ones((1, 1) + _shape(self.x)[2:], dtype), self.pads)
        return tf.maximum(tf.round(self.pool(_to_last(ones)) * self.area), 1)

    def finish(self, y):
        y = _to_first(y)
        return tf.squeeze(y, 2) if self.lifted else y


def _avg_pool_forward(attrs, inputs, params):
    (x,) = inputs
    plan = _AvgPlan(attrs, x)
    y = plan.pool(_to_last(_pad_spatial(plan.x, plan.pads)))
    if not plan.count_pad:
        y = y * plan.area / plan.counts(x.dtype)
    return plan.finish(y)


def _avg_pool_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    plan = _AvgPlan(attrs, x)
    g = tf.cast(grad, x.dtype)
    g = _to_last(tf.expand_dims(g, 2) if plan.lifted else g)
    if not plan.count_pad:
        g = g * plan.area / plan.counts(x.dtype)
    padded = _shape(_to_last(_pad_spatial(plan.x, plan.pads)))
    gx = _crop_spatial(_to_first(plan.pool_grad(g, padded)), plan.pads, _shape(plan.x)[2:])
    return [tf.squeeze(gx, 2) if plan.lifted else gx]


def _global_avg_pool_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.reduce_mean(x, axis=list(range(2, len(x.shape))), keepdims=bool(attrs["keepdims"]))


def _global_avg_pool_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    shape = _shape(x)
    g = tf.reshape(grad, shape[:2] + (1,) * (len(shape) - 2)) / math.prod(shape[2:])
    return [tf.broadcast_to(g, shape)]


# ----------------------------------------------------------------------------------------------
# batch norm


def _bn_params(attrs, x, params):
    axis = norm_axis(attrs["axis"], len(x.shape))
    shape = [1] * len(x.shape)
    shape[axis] = -1
    return [None if p is None else tf.reshape(p, shape)
            for p in (_param(params, k, x) for k in ("mean", "var", "scale", "bias"))]


def _batch_norm_forward(attrs, inputs, params):
    (x,) = inputs
    mean, var, scale, bias = _bn_params(attrs, x, params)
    y = (x - mean) / tf.sqrt(var + attrs["eps"])
    if scale is not None:
        y = y * scale
    return y if bias is None else y + bias


def _batch_norm_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    _, var, scale, _ = _bn_params(attrs, x, params)
    mult = 1 / tf.sqrt(var + attrs["eps"])
    return [grad * (mult if scale is None else mult * scale)]


# ----------------------------------------------------------------------------------------------
# elementwise activations


def _relu_forward(attrs, inputs, params):
    return tf.nn.relu(inputs[0])


def _relu_vjp(attrs, inputs, params, output, grad):
    return [tf.raw_ops.ReluGrad(gradients=grad, features=inputs[0])]   # grad where x > 0 (0 at 0)


def _leaky_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.where(x >= 0, x, x * attrs["negative_slope"])


def _leaky_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [tf.where(x >= 0, grad, grad * attrs["negative_slope"])]    # slope 1 at 0


def _tanh_forward(attrs, inputs, params):
    return tf.tanh(inputs[0])


def _tanh_vjp(attrs, inputs, params, output, grad):
    y = tf.tanh(inputs[0]) if output is None else output
    return [tf.raw_ops.TanhGrad(y=y, dy=grad)]


def _sigmoid_forward(attrs, inputs, params):
    return tf.sigmoid(inputs[0])


def _sigmoid_vjp(attrs, inputs, params, output, grad):
    y = tf.sigmoid(inputs[0]) if output is None else output
    return [tf.raw_ops.SigmoidGrad(y=y, dy=grad)]


def _clip_forward(attrs, inputs, params):
    (x,) = inputs
    if attrs["min"] is not None:
        x = tf.maximum(x, tf.cast(attrs["min"], x.dtype))
    if attrs["max"] is not None:
        x = tf.minimum(x, tf.cast(attrs["max"], x.dtype))
    return x


def _clip_vjp(attrs, inputs, params, output, grad):
    """Gradient 1 strictly inside the bounds (0 at them, as torch's hardtanh)."""
    (x,) = inputs
    inside = None
    if attrs["min"] is not None:
        inside = x > attrs["min"]
    if attrs["max"] is not None:
        inside = x < attrs["max"] if inside is None else tf.logical_and(inside, x < attrs["max"])
    return [grad if inside is None else tf.where(inside, grad, tf.zeros_like(grad))]


def _elu_forward(attrs, inputs, params):
    (x,) = inputs
    if attrs["alpha"] == 1.0:
        return tf.nn.elu(x)
    return tf.where(x > 0, x, attrs["alpha"] * tf.math.expm1(tf.minimum(x, 0)))


def _elu_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [grad * tf.where(x > 0, tf.ones_like(x), attrs["alpha"] * tf.exp(tf.minimum(x, 0)))]


_SQRT2 = math.sqrt(2.0)
_TANH_C = math.sqrt(2.0 / math.pi)


def _gelu_forward(attrs, inputs, params):
    """The formula with tf.math.erf: tf.nn.gelu differs from it by ~5e-9 relative in float64 (its
    constants are rounded to float32), which is more than the engines may differ by."""
    (x,) = inputs
    if attrs["approximate"] == "tanh":
        return 0.5 * x * (1 + tf.tanh(_TANH_C * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + tf.math.erf(x / _SQRT2))


def _gelu_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    if attrs["approximate"] == "tanh":
        t = tf.tanh(_TANH_C * (x + 0.044715 * x ** 3))
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _TANH_C * (1 + 3 * 0.044715 * x * x)
    else:
        d = 0.5 * (1 + tf.math.erf(x / _SQRT2)) + x * tf.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return [grad * d]


def _silu_forward(attrs, inputs, params):
    return tf.nn.silu(inputs[0])


def _silu_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    s = tf.sigmoid(x)
    return [grad * (s * (1 + x * (1 - s)))]


def _softmax_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.nn.softmax(x, axis=norm_axis(attrs["axis"], len(x.shape)))


def _softmax_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    axis = norm_axis(attrs["axis"], len(x.shape))
    y = tf.nn.softmax(x, axis=axis) if output is None else output
    return [y * (grad - tf.reduce_sum(grad * y, axis=axis, keepdims=True))]


# ----------------------------------------------------------------------------------------------
# combinations of inputs


def _add_forward(attrs, inputs, params):
    out = inputs[0]
    for x in inputs[1:]:
        out = out + x
    return out


def _add_vjp(attrs, inputs, params, output, grad):
    return [unbroadcast(grad, _shape(x)) for x in inputs]


def _mul_forward(attrs, inputs, params):
    a, b = inputs
    return a * b


def _mul_vjp(attrs, inputs, params, output, grad):
    a, b = inputs
    return [unbroadcast(grad * b, _shape(a)), unbroadcast(grad * a, _shape(b))]


def _concat_forward(attrs, inputs, params):
    return tf.concat(list(inputs), axis=norm_axis(attrs["axis"], len(inputs[0].shape)))


def _concat_vjp(attrs, inputs, params, output, grad):
    axis = norm_axis(attrs["axis"], len(inputs[0].shape))
    return list(tf.split(grad, [int(x.shape[axis]) for x in inputs], axis=axis))


# ----------------------------------------------------------------------------------------------
# shape ops


def _reshape_back(attrs, inputs, params, output, grad):
    return [tf.reshape(grad, _shape(inputs[0]))]


def _reshape_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.reshape(x, (int(x.shape[0]),) + tuple(attrs["shape"]))


def _flatten_forward(attrs, inputs, params):
    (x,) = inputs
    shape = _shape(x)
    start, end = norm_axis(attrs["start_dim"], len(shape)), norm_axis(attrs["end_dim"], len(shape))
    return tf.reshape(x, shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:])


def _perm(attrs, ndim):
    return [norm_axis(p, ndim) for p in attrs["perm"]]


def _transpose_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.transpose(x, _perm(attrs, len(x.shape)))


def _transpose_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    return [tf.transpose(grad, np.argsort(_perm(attrs, len(x.shape))).tolist())]


def _slice_forward(attrs, inputs, params):
    (x,) = inputs
    axis = norm_axis(attrs["axis"], len(x.shape))
    r = slice_bounds(attrs, int(x.shape[axis]))
    return x[(slice(None),) * axis + (slice(r.start, r.stop, r.step),)]


def _slice_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    axis = norm_axis(attrs["axis"], len(x.shape))
    r = slice_bounds(attrs, int(x.shape[axis]))
    return [_spread_axis(grad, axis, r.step, int(x.shape[axis]), r.start)]


def _pad_forward(attrs, inputs, params):
    (x,) = inputs
    widths = pad_widths(attrs, len(x.shape))
    return tf.pad(x, [list(w) for w in widths], constant_values=attrs["value"])


def _pad_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    widths = pad_widths(attrs, len(x.shape))
    return [grad[tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, _shape(x)))]]


def _fill_forward(attrs, inputs, params):
    v = params["value"]
    return tf.broadcast_to(v, tf.concat([tf.shape(inputs[0])[:1], tf.shape(v)], axis=0))


def _identity_forward(attrs, inputs, params):
    return inputs[0]


def _identity_vjp(attrs, inputs, params, output, grad):
    return [grad]


# ----------------------------------------------------------------------------------------------
# masks and selection (padded sequences)


def _mask_forward(attrs, inputs, params):
    (x,) = inputs
    differs = tf.not_equal(x, tf.cast(attrs["value"], x.dtype))
    axes = mask_axes(attrs, len(x.shape))
    if axes:
        differs = tf.reduce_any(differs, axis=list(axes))
    return tf.cast(differs, x.dtype if x.dtype.is_floating else tf.float32)


def _length_mask_forward(attrs, inputs, params):
    (lengths,) = inputs
    steps = tf.range(int(attrs["steps"]), dtype=lengths.dtype)
    return tf.cast(steps[None, :] < lengths[:, None], lengths.dtype if lengths.dtype.is_floating else tf.float32)


def _no_gradient_vjp(attrs, inputs, params, output, grad):
    """Masks are piecewise constant: zero gradient, in the gradient's dtype."""
    return [tf.zeros(_shape(x), dtype=grad.dtype) for x in inputs]


def _where_forward(attrs, inputs, params):
    cond, a, b = inputs
    shape = tf.broadcast_static_shape(tf.broadcast_static_shape(cond.shape, a.shape), b.shape)
    return tf.where(tf.broadcast_to(cond > 0.5, shape), tf.broadcast_to(a, shape), tf.broadcast_to(b, shape))


def _where_vjp(attrs, inputs, params, output, grad):
    cond, a, b = inputs
    chosen = tf.broadcast_to(cond > 0.5, tf.shape(grad))
    zero = tf.zeros_like(grad)
    return [tf.zeros(_shape(cond), dtype=grad.dtype), unbroadcast(tf.where(chosen, grad, zero), _shape(a)),
            unbroadcast(tf.where(chosen, zero, grad), _shape(b))]


# ----------------------------------------------------------------------------------------------
# reductions


def _reduce_sum_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.reduce_sum(x, axis=list(reduce_axes(attrs, len(x.shape))), keepdims=bool(attrs["keepdims"]))


def _reduce_mean_forward(attrs, inputs, params):
    (x,) = inputs
    return tf.reduce_mean(x, axis=list(reduce_axes(attrs, len(x.shape))), keepdims=bool(attrs["keepdims"]))


def _spread(attrs, x, grad):
    """Broadcast a reduction's gradient back over the reduced axes."""
    shape = _shape(x)
    axes = reduce_axes(attrs, len(shape))
    grad = tf.reshape(grad, tuple(1 if i in axes else d for i, d in enumerate(shape)))
    return tf.broadcast_to(grad, shape)


def _reduce_sum_vjp(attrs, inputs, params, output, grad):
    return [_spread(attrs, inputs[0], grad)]


def _reduce_mean_vjp(attrs, inputs, params, output, grad):
    x = inputs[0]
    count = math.prod(int(x.shape[a]) for a in reduce_axes(attrs, len(x.shape)))
    return [_spread(attrs, x, grad) / count]


# ----------------------------------------------------------------------------------------------


KERNELS: dict[str, Kernel] = {
    "linear": Kernel(_linear_forward, _linear_vjp),
    "conv": Kernel(_conv_forward, _conv_vjp),
    "embedding": Kernel(_embedding_forward, _embedding_vjp),
    "max_pool": Kernel(_max_pool_forward, _max_pool_vjp),
    "avg_pool": Kernel(_avg_pool_forward, _avg_pool_vjp),
    "global_avg_pool": Kernel(_global_avg_pool_forward, _global_avg_pool_vjp),
    "batch_norm": Kernel(_batch_norm_forward, _batch_norm_vjp),
    "relu": Kernel(_relu_forward, _relu_vjp),
    "clip": Kernel(_clip_forward, _clip_vjp),
    "elu": Kernel(_elu_forward, _elu_vjp),
    "gelu": Kernel(_gelu_forward, _gelu_vjp),
    "silu": Kernel(_silu_forward, _silu_vjp),
    "leaky_relu": Kernel(_leaky_forward, _leaky_vjp),
    "tanh": Kernel(_tanh_forward, _tanh_vjp),
    "sigmoid": Kernel(_sigmoid_forward, _sigmoid_vjp),
    "softmax": Kernel(_softmax_forward, _softmax_vjp),
    "add": Kernel(_add_forward, _add_vjp),
    "mul": Kernel(_mul_forward, _mul_vjp),
    "concat": Kernel(_concat_forward, _concat_vjp),
    "reshape": Kernel(_reshape_forward, _reshape_back),
    "flatten": Kernel(_flatten_forward, _reshape_back),
    "transpose": Kernel(_transpose_forward, _transpose_vjp),
    "slice": Kernel(_slice_forward, _slice_vjp),
    "pad": Kernel(_pad_forward, _pad_vjp),
    "identity": Kernel(_identity_forward, _identity_vjp),
    "reduce_sum": Kernel(_reduce_sum_forward, _reduce_sum_vjp),
    "reduce_mean": Kernel(_reduce_mean_forward, _reduce_mean_vjp),
    "constant": CONSTANT_KERNEL,
    "fill": Kernel(_fill_forward, fill_vjp),
    "mask": Kernel(_mask_forward, _no_gradient_vjp),
    "length_mask": Kernel(_length_mask_forward, _no_gradient_vjp),
    "where": Kernel(_where_forward, _where_vjp),
}
KERNELS["conv_transpose"] = transposed_conv_kernel(KERNELS["conv"], _Placeholder, _add_channel_bias)
KERNELS["div"] = quotient_kernel(unbroadcast, _shape)
