"""A small public builder for writing graphs by hand (tests, plugin authors, models without a backend).

>>> b = GraphBuilder("mlp")
>>> x = b.input("x", (4,))
>>> h = b.relu(b.linear(x, w1, b1, name="fc1"))
>>> g = b.build(b.linear(h, w2, name="fc2"))

Every method adds one node and returns its name, which is what the next call takes as input.
``b.add_node(op, inputs, ...)`` adds ops that have no shortcut (ops from plugins, too: then
``b.build(..., ops=attribx.plugins.registry().ops)``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .graph import Graph, Node, Value, layout_dims
from .ops import OpDef


def unique_name(base: str, used: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... if taken; the name returned is added to ``used``.

    Translators use it so that node names stay the source's names and repeats are numbered alike."""
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


class GraphBuilder:
    def __init__(self, name: str = "model", **meta: Any):
        self.meta = {"name": name, "backend": "builder", **meta}
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self._counts: dict[str, int] = {}

    def _name(self, op: str, name: str | None) -> str:
        if name:
            return name
        k = self._counts.get(op, 0)
        self._counts[op] = k + 1
        return f"{op}_{k}"

    def input(self, name: str, shape: Sequence[int], layout: str | Sequence[str] | None = None,
              dtype: str = "float32") -> str:
        """Declare an input by its per-sample shape (no batch axis) and optional layout (``"NHWC"``)."""
        full = (None, *[int(d) for d in shape])
        self.inputs.append(Value(name, full, dtype, layout_dims(layout, len(full))))
        return name

    def add_node(self, op: str, inputs: Sequence[str] | str = (), name: str | None = None,
                 params: dict | None = None, source: str = "", **attrs: Any) -> str:
        if isinstance(inputs, str):
            inputs = (inputs,)
        name = self._name(op, name)
        self.nodes.append(Node(name, op, tuple(inputs), attrs, dict(params or {}), source=source))
        return name

    # -- shortcuts for the built-in op set ----------------------------------------------------
    def linear(self, x, weight, bias=None, name=None):
        return self.add_node("linear", x, name, {"weight": weight, "bias": bias})

    def conv(self, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, name=None):
        return self.add_node("conv", x, name, {"weight": weight, "bias": bias},
                             stride=stride, padding=padding, dilation=dilation, groups=groups)

    def max_pool(self, x, kernel_size, stride=None, padding=0, dilation=1, name=None):
        return self.add_node("max_pool", x, name, kernel_size=kernel_size, stride=stride,
                             padding=padding, dilation=dilation)

    def avg_pool(self, x, kernel_size, stride=None, padding=0, count_include_pad=True, name=None):
        return self.add_node("avg_pool", x, name, kernel_size=kernel_size, stride=stride,
                             padding=padding, count_include_pad=count_include_pad)

    def global_avg_pool(self, x, keepdims=True, name=None):
        return self.add_node("global_avg_pool", x, name, keepdims=keepdims)

    def batch_norm(self, x, mean, var, scale=None, bias=None, eps=1e-5, axis=1, name=None):
        return self.add_node("batch_norm", x, name, {"mean": mean, "var": var, "scale": scale, "bias": bias},
                             eps=eps, axis=axis)

    def relu(self, x, name=None):
        return self.add_node("relu", x, name)

    def leaky_relu(self, x, negative_slope=0.01, name=None):
        return self.add_node("leaky_relu", x, name, negative_slope=negative_slope)

    def clip(self, x, min=None, max=None, name=None):
        return self.add_node("clip", x, name, min=min, max=max)

    def elu(self, x, alpha=1.0, name=None):
        return self.add_node("elu", x, name, alpha=alpha)

    def gelu(self, x, approximate="none", name=None):
        return self.add_node("gelu", x, name, approximate=approximate)

    def silu(self, x, name=None):
        return self.add_node("silu", x, name)

    def tanh(self, x, name=None):
        return self.add_node("tanh", x, name)

    def sigmoid(self, x, name=None):
        return self.add_node("sigmoid", x, name)

    def softmax(self, x, axis=-1, name=None):
        return self.add_node("softmax", x, name, axis=axis)

    def add(self, *xs, name=None):
        return self.add_node("add", xs, name)

    def mul(self, a, b, name=None):
        return self.add_node("mul", (a, b), name)

    def concat(self, *xs, axis=1, name=None):
        return self.add_node("concat", xs, name, axis=axis)

    def reshape(self, x, shape, name=None):
        return self.add_node("reshape", x, name, shape=tuple(shape))

    def flatten(self, x, start_dim=1, end_dim=-1, name=None):
        return self.add_node("flatten", x, name, start_dim=start_dim, end_dim=end_dim)

    def transpose(self, x, perm, name=None):
        return self.add_node("transpose", x, name, perm=tuple(perm))

    def slice(self, x, axis, start=None, stop=None, step=None, name=None):
        return self.add_node("slice", x, name, axis=axis, start=start, stop=stop, step=step)

    def pad(self, x, pads, value=0.0, name=None):
        return self.add_node("pad", x, name, pads=[tuple(p) for p in pads], value=value)

    def identity(self, x, name=None):
        return self.add_node("identity", x, name)

    def reduce_sum(self, x, axes=None, keepdims=False, name=None):
        return self.add_node("reduce_sum", x, name, axes=axes, keepdims=keepdims)

    def reduce_mean(self, x, axes=None, keepdims=False, name=None):
        return self.add_node("reduce_mean", x, name, axes=axes, keepdims=keepdims)

    def constant(self, value, name=None):
        return self.add_node("constant", (), name, {"value": np.asarray(value)})

    def build(self, *outputs: str, ops: Mapping[str, OpDef] | None = None) -> Graph:
        """Validate and return the graph; the outputs default to the last node. ``ops``: the op table, as in
        :class:`~attribx.graph.Graph` (a graph with ops of plugins: ``attribx.plugins.registry().ops``)."""
        outs = list(outputs) or [self.nodes[-1].name]
        return Graph(self.inputs, self.nodes, outs, self.meta, ops=ops)
