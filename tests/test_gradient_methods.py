"""gradient and gradient_x_input through the whole pass equal finite differences, for every op."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx.ops import BUILTIN_OPS

R = np.random.default_rng(1)


def head(b, h, shape):
    """flatten (if needed) and a linear layer to 3 classes, so every op is explained through a score."""
    if len(shape) > 1:
        h = b.flatten(h)
    n = int(np.prod(shape))
    return b.linear(h, R.normal(size=(3, n)), R.normal(size=3), name="head")


def op_graph(op):
    """A small graph around one op (input (N, 3, 6, 6))."""
    b = GraphBuilder(op)
    x = b.input("x", (3, 6, 6))
    if op == "linear":
        h, shape = b.linear(x, R.normal(size=(4, 6)), R.normal(size=4)), (3, 6, 4)
    elif op == "conv":
        h = b.conv(x, R.normal(size=(6, 1, 3, 3)), R.normal(size=6), stride=(2, 1), padding=((1, 0), (2, 1)),
                   dilation=(1, 2), groups=3)
        shape = (6, 3, 5)
    elif op == "conv_transpose":
        h = b.add_node("conv_transpose", x, params={"weight": R.normal(size=(3, 2, 3, 2)), "bias": R.normal(size=6)},
                       stride=(2, 1), padding=((1, 0), (0, 1)), output_padding=(1, 0), dilation=(1, 2), groups=3)
        shape = (6, 13, 7)
    elif op == "div":
        h, shape = b.add_node("div", [x, b.add(b.sigmoid(x), b.constant(0.5))]), (3, 6, 6)
    elif op == "max_pool":
        h, shape = b.max_pool(x, 3, stride=2, padding=1), (3, 3, 3)
    elif op == "avg_pool":
        h, shape = b.avg_pool(x, 3, stride=2, padding=1, count_include_pad=False), (3, 3, 3)
    elif op == "global_avg_pool":
        h, shape = b.global_avg_pool(x), (3, 1, 1)
    elif op == "batch_norm":
        h, shape = b.batch_norm(x, R.normal(size=3), R.uniform(0.5, 2, 3), R.normal(size=3), R.normal(size=3),
                                eps=1e-3), (3, 6, 6)
    elif op in ("erf", "hard_sigmoid", "hard_swish"):
        h, shape = b.add_node(op, x), (3, 6, 6)
    elif op == "roll":
        h, shape = b.add_node("roll", x, shifts=(2, -1), axes=(2, 3)), (3, 6, 6)
    elif op == "resize":
        h = b.add(b.add_node("resize", x, size=(9, 12), mode="linear"),
                  b.add_node("resize", b.add_node("resize", x, size=(3, 4), mode="linear", align_corners=True),
                             size=(9, 12)))
        shape = (3, 9, 12)
    elif op in ("relu", "tanh", "sigmoid", "identity"):
        h, shape = getattr(b, op)(x), (3, 6, 6)
    elif op == "clip":
        h, shape = b.clip(x, -1.0, 1.5), (3, 6, 6)
    elif op == "elu":
        h, shape = b.elu(x, 0.7), (3, 6, 6)
    elif op == "gelu":
        h = b.add(b.gelu(x), b.gelu(x, approximate="tanh"))
        shape = (3, 6, 6)
    elif op == "silu":
        h, shape = b.silu(x), (3, 6, 6)
    elif op == "leaky_relu":
        h, shape = b.leaky_relu(x, 0.2), (3, 6, 6)
    elif op == "softmax":
        h, shape = b.softmax(x, axis=1), (3, 6, 6)
    elif op == "add":
        h, shape = b.add(x, b.tanh(x), b.constant(R.normal(size=(1, 6, 1)))), (3, 6, 6)
    elif op == "mul":
        h, shape = b.mul(b.sigmoid(x), x), (3, 6, 6)
    elif op == "layer_norm":
        h = b.add_node("layer_norm", x, params={"scale": R.normal(size=(3, 6)), "bias": R.normal(size=(3, 6))},
                       axes=(1, -1), eps=1e-3)
        shape = (3, 6, 6)
    elif op == "rms_norm":
        h, shape = b.add_node("rms_norm", x, params={"scale": R.normal(size=6)}, axes=-1), (3, 6, 6)
    elif op == "matmul":        # two signals: x @ tanh(x)^T, and a constant on the right
        xt = b.transpose(b.tanh(x), (0, 1, 3, 2))
        h, shape = b.add_node("matmul", [b.add_node("matmul", [x, xt]), b.constant(R.normal(size=(6, 2)))]), (3, 6, 2)
    elif op == "concat":
        h, shape = b.concat(x, b.tanh(x), axis=2), (3, 12, 6)
    elif op == "reshape":
        h, shape = b.reshape(x, (-1, 4)), (27, 4)
    elif op == "flatten":
        h, shape = b.flatten(x, start_dim=2), (3, 36)
    elif op == "transpose":
        h, shape = b.transpose(x, (0, 3, 1, 2)), (6, 3, 6)
    elif op == "slice":
        h, shape = b.slice(x, axis=-1, start=1, stop=6, step=2), (3, 6, 3)
    elif op == "pad":
        h, shape = b.pad(x, [(1, 0), (0, 2)], value=0.5), (3, 7, 8)
    elif op == "reduce_sum":
        h, shape = b.reduce_sum(x, axes=(1, 3), keepdims=True), (1, 6, 1)
    elif op == "reduce_mean":
        h, shape = b.reduce_mean(x, axes=2), (3, 6)
    elif op == "constant":
        h, shape = b.mul(x, b.constant(R.normal(size=(3, 1, 6)))), (3, 6, 6)
    elif op == "fill":      # a per-sample constant: its input's values take no gradient
        state = b.add_node("fill", b.flatten(x), params={"value": R.normal(size=(3, 6, 6))})
        h, shape = b.mul(x, state), (3, 6, 6)
    elif op == "mask":      # ReLU zeros decide the mask; the mask itself takes no gradient
        keep = b.add_node("mask", b.relu(x), value=0.0)
        h, shape = b.add_node("where", [keep, x, b.tanh(x)]), (3, 6, 6)
    elif op == "length_mask":   # per sample: the number of positive entries, as a length over the last axis
        count = b.reduce_sum(b.add_node("mask", b.relu(x), value=0.0), axes=(1, 2, 3))
        steps = b.add_node("reshape", b.add_node("length_mask", b.mul(count, b.constant(np.array(0.05))),
                                                 steps=6), shape=(1, 1, 6))
        h, shape = b.add_node("where", [steps, x, b.constant(R.normal(size=(6,)))]), (3, 6, 6)
    elif op == "where":
        keep = b.add_node("mask", b.relu(b.mul(x, b.constant(R.normal(size=(3, 1, 1))))), value=0.0)
        h, shape = b.add_node("where", [keep, b.mul(x, x), b.sigmoid(x)]), (3, 6, 6)
    else:
        raise AssertionError(f"no test graph for op {op}")
    head(b, h, shape)
    return b.build()


def numeric_gradient(graph, x, target, h=1e-6):
    g = np.zeros_like(x)
    flat = x.reshape(len(x), -1)
    for j in range(flat.shape[1]):
        xp, xm = flat.copy(), flat.copy()
        xp[:, j] += h
        xm[:, j] -= h
        fp = attribx.forward(graph, xp.reshape(x.shape))[np.arange(len(x)), target]
        fm = attribx.forward(graph, xm.reshape(x.shape))[np.arange(len(x)), target]
        g.reshape(len(x), -1)[:, j] = (fp - fm) / (2 * h)
    return g


#: ops on real-valued inputs (an embedding takes indices: tests/test_embedding.py)
DIFFERENTIABLE = [d.name for d in BUILTIN_OPS if d.name != "embedding"]


@pytest.mark.parametrize("op", DIFFERENTIABLE)
def test_gradient_equals_finite_differences(op):
    graph = op_graph(op)
    rng = np.random.default_rng(zlib.crc32(op.encode()))
    # distinct values away from 0 so ReLU kinks and max-pool ties are not hit
    x = rng.permutation(864)[:216].reshape(2, 3, 6, 6) / 160.0 - 2.7 + 0.003
    target = np.array([0, 2])
    grad = attribx.explain(graph, x, "gradient", target=target)
    num = numeric_gradient(graph, x, target)
    np.testing.assert_allclose(grad.values, num, rtol=1e-6, atol=1e-8)
    gxi = attribx.explain(graph, x, "gradient_x_input", target=target)
    np.testing.assert_allclose(gxi.values, num * x, rtol=1e-6, atol=1e-8)


def test_every_builtin_op_is_covered():
    for name in DIFFERENTIABLE:
        op_graph(name)
