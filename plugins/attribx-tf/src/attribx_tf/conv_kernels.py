"""TensorFlow kernels of the weighted layers: linear, conv (1-3d, strided, dilated, grouped, depthwise) and
embedding. The graph is channel-first; TF's CPU convolutions take channel-last tensors, so a conv
transposes around TF's kernel (see :class:`_ConvPlan`)."""
from __future__ import annotations

import functools

import numpy as np
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


def device_kind(t) -> str:
    """"GPU" for a tensor on a GPU, else "CPU" (also for a graph tensor, whose device is not known yet)."""
    return "GPU" if ":GPU:" in (getattr(t, "device", "") or "").upper() else "CPU"


@functools.lru_cache(maxsize=None)
def grouped_grad_native(dtype, kind: str = "CPU") -> bool:
    """Whether TF's Conv2DBackpropInput takes a grouped filter in ``dtype`` here (oneDNN's float32 kernel
    does; the Eigen kernels, float64 among them, refuse): one op instead of a transposed conv per group.
    Probed once per dtype and device kind, eagerly (also when first asked while tracing)."""
    with tf.init_scope(), tf.device(f"/{kind}:0"):
        try:
            tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.constant([1, 1, 1, 2], tf.int32),
                                           filter=tf.ones((1, 1, 1, 2), dtype),
                                           out_backprop=tf.ones((1, 1, 1, 2), dtype), strides=[1, 1, 1, 1],
                                           padding="VALID")
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError):
            return False
    return True


def _first_strides(strides_last):
    return [1, 1] + list(strides_last[1:-1])


def _first_pads(pads):
    return [0, 0, 0, 0] + [p for pair in pads for p in pair]


@functools.lru_cache(maxsize=None)
def channel_first_native(dtype, kind: str = "CPU") -> bool:
    """Whether TF runs a 2-D conv (grouped too), its input gradient and the depthwise conv channel-first
    with the padding inside the kernel, in ``dtype``, here, with the channel-last numbers (oneDNN's float32
    kernels do; Eigen's, float64 among them, take channel-last only). Then a conv needs no layout
    transposes and no padded copy. Probed once per dtype and device kind (``"CPU"``, ``"GPU"``) on a small
    grouped, strided, padded problem."""
    if dtype != tf.float32:
        return False
    with tf.init_scope(), tf.device(f"/{kind}:0"):
        rng = np.random.default_rng(0)
        x = tf.constant(rng.standard_normal((2, 4, 7, 6)), dtype)
        w = tf.constant(rng.standard_normal((3, 3, 2, 4)), dtype)      # 2 groups
        dw = tf.constant(rng.standard_normal((3, 3, 4, 1)), dtype)     # depthwise
        g = tf.constant(rng.standard_normal((2, 4, 4, 3)), dtype)
        pads, last = [(1, 1), (1, 0)], [1, 2, 2, 1]
        xl = tf.pad(_to_last(x), [[0, 0], [1, 1], [1, 0], [0, 0]])
        try:
            y = tf.raw_ops.Conv2D(input=x, filter=w, strides=_first_strides(last), padding="EXPLICIT",
                                  explicit_paddings=_first_pads(pads), data_format="NCHW")
            y_ref = _to_first(tf.raw_ops.Conv2D(input=xl, filter=w, strides=last, padding="VALID"))
            d = tf.raw_ops.DepthwiseConv2dNative(input=x, filter=dw, strides=_first_strides(last),
                                                 padding="EXPLICIT", explicit_paddings=_first_pads(pads),
                                                 data_format="NCHW")
            d_ref = _to_first(tf.raw_ops.DepthwiseConv2dNative(input=xl, filter=dw, strides=last, padding="VALID"))
            gx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.constant([2, 4, 9, 7], tf.int32), filter=w,
                                                out_backprop=g, strides=_first_strides(last), padding="VALID",
                                                data_format="NCHW")[:, :, 1:8, 1:7]
            gl = tf.concat([tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.constant([2, 9, 7, 2], tf.int32), filter=wi, out_backprop=gi, strides=last,
                padding="VALID") for wi, gi in zip(tf.split(w, 2, -1), tf.split(_to_last(g), 2, -1))], -1)
            gx_ref = _to_first(gl)[:, :, 1:8, 1:7]
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.NotFoundError):
            return False
        return all(np.allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
                   for a, b in ((y, y_ref), (d, d_ref), (gx, gx_ref)))


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
        self.first = r == 4 and channel_first_native(w.dtype, device_kind(x))

    def cut_input(self, x):
        """``x`` without the trailing positions no window reads (channel-first, lifted)."""
        if any(self.cut):
            x = x[(slice(None), slice(None)) + tuple(slice(0, n) for n in self.sizes)]
        return tf.expand_dims(x, 2) if self.lifted else x

    def _first_pads(self):
        return _first_pads(([(0, 0)] if self.lifted else []) + list(self.pads))

    def conv_first(self, x):
        """The conv of the cut, lifted, channel-first input, channel-first, padding inside the kernel."""
        strides, pads = _first_strides(self.strides), self._first_pads()
        dw = self._depthwise_filter(4, x.shape[1])
        if dw is not None:
            return tf.raw_ops.DepthwiseConv2dNative(input=x, filter=dw, strides=strides, padding="EXPLICIT",
                                                    explicit_paddings=pads, data_format="NCHW")
        return tf.raw_ops.Conv2D(input=x, filter=self.w, strides=strides, padding="EXPLICIT",
                                 explicit_paddings=pads, data_format="NCHW")

    def conv_input_grad_first(self, g, in_shape):
        """The transposed conv, channel-first: the gradient of the cut, lifted input of shape ``in_shape``;
        None for a depthwise conv (TF's depthwise input gradient takes channel-last tensors only). The
        gradient of the padded input, cropped: oneDNN takes no explicit padding in the input gradient."""
        if self._depthwise_filter(4, in_shape[1]) is not None:
            return None
        pads = ([(0, 0)] if self.lifted else []) + list(self.pads)
        padded = list(in_shape[:2]) + [n + lo + hi for n, (lo, hi) in zip(in_shape[2:], pads)]
        gx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.constant(padded, dtype=tf.int32), filter=self.w,
                                            out_backprop=g, strides=_first_strides(self.strides), padding="VALID",
                                            data_format="NCHW")
        return _crop_spatial(gx, pads, in_shape[2:])

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
        if len(xl.shape) == 4:   # TF's Conv2D groups by itself when the filter holds C/g input channels
            return op(input=xl, filter=self.w, strides=self.strides, padding="VALID", dilations=self.dilations)
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
        if len(gl.shape) == 4 and (self.groups == 1 or grouped_grad_native(gl.dtype, device_kind(gl))):
            return tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.constant(list(in_shape), dtype=tf.int32),
                                                  filter=self.w, out_backprop=gl, strides=self.strides,
                                                  padding="VALID", dilations=self.dilations)
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
    b = _param(params, "bias", x)
    if plan.first:
        y = plan.conv_first(plan.cut_input(x))
        if b is not None:
            y = tf.nn.bias_add(y, b, data_format="NCHW")
        return tf.squeeze(y, 2) if plan.lifted else y
    y = plan.conv(plan.prepare(x))
    if b is not None:
        y = tf.nn.bias_add(y, b)
    return plan.finish(y)


def _conv_vjp(attrs, inputs, params, output, grad):
    (x,) = inputs
    w = _param(params, "weight", x)
    plan = _ConvPlan(attrs, x, w)
    g = tf.cast(grad, w.dtype)
    g = tf.expand_dims(g, 2) if plan.lifted else g
    gx = None
    if plan.first:
        in_shape = _shape(x)[:2] + ((1,) if plan.lifted else ()) + plan.sizes
        gx = plan.conv_input_grad_first(g, in_shape)
        if gx is not None and plan.lifted:
            gx = tf.squeeze(gx, 2)
    if gx is None:
        gx = plan.finish(plan.conv_input_grad(_to_last(g), plan.padded_shape(x)))
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


