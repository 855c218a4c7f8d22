"""TensorFlow kernels of the weighted layers: linear, conv (1-3d, strided, dilated, grouped, depthwise) and
embedding. The graph is channel-first; TF's CPU convolutions take channel-last tensors, so a conv
transposes around TF's kernel (see :class:`_ConvPlan`)."""
from __future__ import annotations

import tensorflow as tf

from attribx.ops import conv_geometry

from .layout import _param, _pad_spatial, _crop_spatial, _shape, _spread_axis, _to_first, _to_last

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


