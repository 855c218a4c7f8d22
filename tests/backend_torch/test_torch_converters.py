"""Plugin converters for the torch backend: one custom module or function translated by a converter a plugin
registers (attribx.translation.converter and the 'attribx_converters' hook), without replacing the backend."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import attribx  # noqa: E402
from attribx.errors import UnsupportedError  # noqa: E402
from attribx.translation import converter  # noqa: E402


class ScaledTanh(nn.Module):
    """tanh with a learned scale per feature, written with einsum (which has no built-in translation)."""

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(features, dtype=torch.float64) + 0.5)

    def forward(self, x):
        return torch.einsum("bi,i->bi", torch.tanh(x), self.scale)


class TwinTanh(nn.Module):
    """ScaledTanh in constructs attribx translates: tanh, then a product with the parameter."""

    def __init__(self, scale):
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone())

    def forward(self, x):
        return torch.tanh(x) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.act = ScaledTanh(5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def erf_gelu(x):
    """GELU written out with erf: a plain function that fx would trace into (erf has no translation)."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class FunctionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc2(erf_gelu(F.softsign(self.fc1(x))))


@converter("torch", ScaledTanh)
def convert_scaled_tanh(ctx, module, x):
    """A module converter: (ctx, module, the call's arguments); existing graph ops only."""
    t = ctx.emit("tanh", [x], x.shape, name=ctx.sub("tanh"))
    scale = ctx.constant(module.scale.detach().numpy(), "scale")
    return ctx.emit("mul", [t, scale], x.shape)


@converter("torch", F.softsign)
def convert_softsign(ctx, input):
    """A function converter receives torch's arguments by name: x / (1 + |x|), |x| = relu(x) + relu(-x)."""
    neg = ctx.emit("mul", [input, ctx.constant(-1.0, "minus")], input.shape, name=ctx.sub("neg"))
    pos_part = ctx.emit("relu", [input], input.shape, name=ctx.sub("pos"))
    neg_part = ctx.emit("relu", [neg], input.shape, name=ctx.sub("negpos"))
    size = ctx.emit("add", [pos_part, neg_part], input.shape, name=ctx.sub("abs"))
    den = ctx.emit("add", [size, ctx.constant(1.0, "one")], input.shape, name=ctx.sub("den"))
    return ctx.emit("div", [input, den], input.shape)


@converter("torch", erf_gelu)
def convert_erf_gelu(ctx, x):
    return ctx.emit("gelu", [x], x.shape, {"approximate": "none"})


class _Converters:
    def __init__(self, *fns):
        self.fns = fns

    @attribx.hookimpl
    def attribx_converters(self):
        return list(self.fns)


@contextlib.contextmanager
def plugged(*fns):
    name = attribx.plugins.register(_Converters(*fns), name="test-torch-converters")
    try:
        yield
    finally:
        attribx.plugins.unregister(name)


def _model(cls, seed=0):
    torch.manual_seed(seed)
    return cls().double().eval()


def _graph_forward(model, x):
    graph = attribx.translate(model, input_shape=x.shape[1:], passes=False)
    return graph, np.asarray(attribx.forward(graph, x, engine="numpy"))


def test_custom_module_without_converter_names_the_layer_and_the_hook():
    model = _model(Net)
    with pytest.raises(UnsupportedError) as info:
        attribx.translate(model, input_shape=(6,))
    msg = str(info.value)
    assert "einsum" in msg and "'act' (ScaledTanh)" in msg and "has no torch translation" in msg
    assert "attribx_converters" in msg and "docs/plugins.md" in msg


def test_plugin_converter_for_a_custom_module():
    model = _model(Net)
    x = np.random.default_rng(0).normal(size=(4, 6))
    with plugged(convert_scaled_tanh):
        graph, got = _graph_forward(model, x)
        want = model(torch.as_tensor(x)).detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
        # the module is one leaf, named by its path; its nodes come from the plugin's converter
        nodes = [(n.name, n.op, n.source) for n in graph if n.op != "constant"]
        assert nodes[1:3] == [("act:tanh", "tanh", "ScaledTanh"), ("act", "mul", "ScaledTanh")]
        lrp = attribx.explain(model, x, "lrp.epsilon", target=1, engine="numpy", epsilon=0.25).values
        gxi = attribx.explain(model, x, "gradient_x_input", target=1, engine="numpy").values
    # the same maths from built-in constructs (tanh, then a product with the parameter): the same relevance
    twin = _model(Net)
    twin.act = TwinTanh(model.act.scale).eval()
    np.testing.assert_allclose(twin(torch.as_tensor(x)).detach().numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(lrp, attribx.explain(twin, x, "lrp.epsilon", target=1, engine="numpy",
                                                    epsilon=0.25).values, rtol=1e-12, atol=1e-15)
    # gradient x input: torch's autograd
    xt = torch.tensor(x, requires_grad=True)
    (grad,) = torch.autograd.grad(model(xt)[:, 1].sum(), xt)
    np.testing.assert_allclose(gxi, (grad * xt).detach().numpy(), rtol=1e-6, atol=1e-12)
    # unregistered: the cached translation with the plugin is not reused
    with pytest.raises(UnsupportedError, match="has no torch translation"):
        attribx.translate(model, input_shape=(6,))


def test_plugin_converters_for_torch_and_plain_functions():
    model = _model(FunctionNet)
    x = np.random.default_rng(1).normal(size=(5, 4))
    with pytest.raises(UnsupportedError, match=r"softsign.*has no torch translation"):
        attribx.translate(model, input_shape=(4,))
    with plugged(convert_softsign, convert_erf_gelu):
        graph, got = _graph_forward(model, x)
        xt = torch.tensor(x, requires_grad=True)
        out = model(xt)
        np.testing.assert_allclose(got, out.detach().numpy(), rtol=1e-6, atol=0)
        assert "erf_gelu" in graph and graph["erf_gelu"].op == "gelu" and graph["softsign"].op == "div"
        ours = attribx.explain(model, x, "gradient_x_input", target=0, engine="numpy").values
    (grad,) = torch.autograd.grad(out[:, 0].sum(), xt)
    np.testing.assert_allclose(ours, (grad * xt).detach().numpy(), rtol=1e-6, atol=1e-12)
