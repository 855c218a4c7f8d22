"""The PyTorch translation: torch.fx graph -> attribx graph, checked op by op and on a model zoo.

Every translated model's graph forward must equal the module's output (float32, relative max-abs
difference <= 1e-5, the brief's faithfulness contract), and LRP on it must run. Unsupported ops and
arguments are errors naming the op, the node and the hooks; wrong input shapes are input errors;
translations are cached per model and input shape until the model changes.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import attribx  # noqa: E402
from attribx.errors import InputError, UnsupportedError  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from attribx_torch.walker import Walker  # noqa: E402

TOL = 1e-5
LRP = "lrp.epsilon_plus_flat"


def engine() -> str:
    """The torch engine when it is installed (faster), else the numpy reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return "torch" if "torch" in attribx.plugins.registry().engines else "numpy"


def native(model, x):
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def graph_forward(model, x, **kw):
    return attribx.forward(model, x, engine="numpy", **kw)


def assert_faithful(model, x, tol=TOL):
    """The graph's forward pass (numpy engine) equals the module's, and returns the graph."""
    x = np.asarray(x)
    err = relative_error(graph_forward(model, x), native(model, x))
    assert err <= tol, f"graph forward differs from torch: relative error {err:.3g}"
    return attribx.translate(model, input_shape=x.shape[1:])


def randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).numpy()


def randomize_bn(model, seed=0):
    """Non-trivial running statistics and affine parameters, so that folding batch norm is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


class Wrap(nn.Module):
    """A module around a function, for op-level tests."""

    def __init__(self, fn, *mods):
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(mods)

    def forward(self, x):
        return self.fn(x, *self.mods) if self.mods else self.fn(x)


# ----------------------------------------------------------------------------------------------
# the model zoo


ZOO = {
    # name: (input size, node names that must be addressable, whether every batch norm folds)
    "alexnet": (64, ["features.0", "features.2", "classifier.6"], True),       # adaptive 1x1 -> 6x6
    "vgg16": (64, ["features.0", "features.28", "avgpool", "classifier.6"], True),   # adaptive 2x2 -> 7x7
    "vgg16_bn": (64, ["features.0", "features.3", "classifier.0"], True),
    "resnet18": (224, ["conv1", "layer1.0.conv1", "layer4.1.conv2", "add", "fc"], True),
    "resnet50": (64, ["layer1.0.downsample.0", "layer3.5.conv3", "avgpool", "fc"], True),
    "densenet121": (64, ["features.conv0", "features.denseblock1.denselayer1.conv1", "classifier"], False),
    "mobilenet_v2": (64, ["features.0.0", "features.18.0", "classifier.1"], True),
}


@pytest.fixture(scope="module")
def tv():
    return pytest.importorskip("torchvision")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_forward_equals_torch_and_lrp_runs(tv, name):
    size, names, folds = ZOO[name]
    torch.manual_seed(0)
    model = randomize_bn(getattr(tv.models, name)(weights=None)).eval()
    x = randn(2, 3, size, size, seed=1)
    graph = assert_faithful(model, x)
    assert graph.meta["backend"] == "torch" and graph.meta["framework"] == "torch"
    assert graph.meta["name"] == type(model).__name__ and graph.meta["torch_version"] == torch.__version__
    assert graph.input.name == "input" and graph.input.shape == (None, 3, size, size)
    assert graph.input.dims == ("sample", "channel", "height", "width") and graph.input.dtype == "float32"
    for n in names:
        assert n in graph, f"{n!r} is not a node of the graph"
    if folds:
        assert not [n.name for n in graph if n.op == "batch_norm"]
    assert not [n.name for n in graph if n.op == "identity"]   # dropouts are rewired away
    rel = attribx.explain(model, x, LRP, engine=engine())
    assert rel.dims == ("sample", "channel", "height", "width") and rel.shape == x.shape
    assert np.isfinite(rel.values).all() and np.abs(rel.values).sum() > 0


class DigitsNet(nn.Module):
    """A small CNN over many op kinds, trained on scikit-learn's 8x8 digits."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding="same")
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.drop = nn.Dropout(0.2)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.act = nn.LeakyReLU(0.05)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x + self.conv3(x).relu()
        x = self.drop(x.view(x.size(0), -1))
        return self.fc2(self.act(self.fc1(x)))


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    x = torch.tensor(d.images[:, None] / 8.0 - 1.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    return model, x.numpy(), y.numpy(), acc


@pytest.mark.slow
def test_trained_digits_cnn(digits):
    model, x, y, acc = digits
    assert acc > 0.9
    graph = assert_faithful(model, x[:64])
    assert [n.name for n in graph if n.op in ("conv", "linear")] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert "bn1" not in graph and graph.meta["aliases"]["bn1"] == "conv1"   # folded into conv1
    assert graph.meta["aliases"]["drop"] == "view"
    assert graph["view"].op == "flatten" and graph["add"].op == "add"
    assert graph["conv1"].attrs["padding"] == 1
    pred = graph_forward(model, x).argmax(1)
    assert (pred == y).mean() == pytest.approx(acc)
    rel = attribx.explain(model, x[:8], LRP, engine=engine(), layers=["conv2"])
    assert np.isfinite(rel["relevance"].values).all() and rel["relevance"].shape == (8, 1, 8, 8)
    assert rel["conv2"].shape == (8, 16, 8, 8)


# ----------------------------------------------------------------------------------------------
# functional forms


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.branch = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(12, 5)
        self.scale = nn.Parameter(torch.rand(1, 12, 1, 1) + 0.5)

    def forward(self, x):
        identity = self.branch(x)
        y = F.relu(self.conv(x))
        y = y + identity
        y = torch.cat([y, identity * 0.5], 1)
        y = y * self.scale
        y = F.adaptive_avg_pool2d(y, 2)
        a = y.view(y.size(0), -1)
        b = torch.flatten(y, 1)
        z = a - b / 3.0 + 1.0
        z = z.view(x.size(0), 12, 4).mean(2)
        return self.fc(z) + torch.sigmoid(z).sum(1, keepdim=True)


def test_functional_forms():
    model = Functional().eval()
    x = randn(2, 3, 8, 8)
    graph = assert_faithful(model, x)
    ops = {n.name: n.op for n in graph}
    assert ops["relu"] == "relu" and ops["cat"] == "concat" and ops["add"] == "add"
    assert ops["adaptive_avg_pool2d"] == "avg_pool" and ops["flatten"] == "flatten"
    assert ops["view"] == "flatten" and ops["mean"] == "reduce_mean" and ops["sum_1"] == "reduce_sum"
    assert graph["conv"].source == "Conv2d" and graph["cat"].source == "cat" and graph["add"].source == "add"
    assert graph["mul_1"].op == "mul" and any(graph[i].op == "constant" for i in graph["mul_1"].inputs)
    rel = attribx.explain(model, x, LRP, engine="numpy")
    assert np.isfinite(rel.values).all()


FUNCTIONAL_CASES = {
    "relu_forms": (lambda x: F.relu(x) + torch.relu(x - 0.5) + x.relu() * 2 + F.relu(x + 1, inplace=True), (4, 5)),
    "activations": (lambda x: F.leaky_relu(x, 0.2) + F.relu6(3 * x) + F.hardtanh(x, -0.5, 0.7) + F.silu(x)
                    + F.gelu(x) + F.gelu(x, approximate="tanh") + F.elu(x, 0.5) + torch.tanh(x) + x.sigmoid()
                    + torch.clamp(x, min=-0.3) + x.clamp(-1, 1) + F.hardsigmoid(x), (4, 5)),
    "softmax": (lambda x: F.softmax(x, dim=1) + x.softmax(-1) + torch.softmax(x, 2), (3, 4, 5)),
    "arith": (lambda x: (2.0 - x) * 3 + x / 4 - (-x) + torch.add(x, x, alpha=2) + torch.sub(x, 1.5)
              + torch.mul(x, x), (4, 5)),
    "shapes": (lambda x: x.permute(0, 2, 1).reshape(x.shape[0], -1).unsqueeze(1).squeeze(1)
               .view(-1, 5, 4).transpose(1, 2).flatten(1), (4, 5)),
    "slices": (lambda x: torch.cat([x[:, 1:3].flatten(1), x[:, -1:, ::2].flatten(1), x[..., 0, None].flatten(1),
                                    x[:, :, None, 2].flatten(1), x[:, 1][:, 2:-1]], 1), (4, 5)),
    "chunk_split": (lambda x: torch.cat(x.chunk(2, 1)[::-1], 1) + torch.split(x, [1, 3], 1)[1].sum(1, True),
                    (4, 5)),
    "pad_pool": (lambda x: F.max_pool2d(F.pad(x, (1, 0, 2, 1), value=0.5), 2) + F.avg_pool2d(
        F.pad(x, (1, 0, 2, 1)), 2, count_include_pad=False), (2, 5, 7)),
    "stack_mean": (lambda x: torch.stack([x, 2 * x], 2).mean(dim=(2, 3)), (3, 4, 4)),
    "constant_buffer": (lambda x: x + torch.arange(5.0) * 0.1 - torch.ones(1, 4, 1) * 2, (4, 5)),
    "tensor_division": (lambda x: x / (x.sigmoid() + 0.5) + 2.0 / (1.5 + x.tanh()) + torch.div(x, x * x + 1), (4, 5)),
    "conv_transpose_fn": (lambda x: F.conv_transpose2d(x, torch.ones(4, 2, 3, 3) * 0.1, torch.arange(2.0), stride=2,
                                                       padding=1, output_padding=1), (4, 3, 5)),
}


@pytest.mark.parametrize("case", list(FUNCTIONAL_CASES))
def test_functional_cases(case):
    fn, shape = FUNCTIONAL_CASES[case]
    model = Wrap(fn).eval()
    assert_faithful(model, randn(3, *shape))


# ----------------------------------------------------------------------------------------------
# modules and their arguments


MODULE_CASES = {
    "conv1d": (lambda: nn.Conv1d(3, 4, 5, stride=2, padding=3, dilation=2), (3, 20)),
    "conv1d_same_even": (lambda: nn.Conv1d(3, 4, 4, padding="same", dilation=3), (3, 17)),
    "conv2d_groups": (lambda: nn.Conv2d(4, 8, (3, 2), stride=(2, 1), padding=(1, 2), groups=4, bias=False), (4, 9, 7)),
    "conv2d_valid": (lambda: nn.Conv2d(2, 3, 3, padding="valid"), (2, 6, 6)),
    "conv2d_same": (lambda: nn.Conv2d(2, 3, (4, 3), padding="same"), (2, 7, 6)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 3, padding=1, stride=(1, 2, 2)), (2, 5, 6, 6)),
    "maxpool_ceil": (lambda: nn.MaxPool2d(3, 2, ceil_mode=True), (2, 8, 9)),
    "maxpool_ceil_pad_dil": (lambda: nn.MaxPool2d(3, 2, padding=1, dilation=2, ceil_mode=True), (2, 10, 11)),
    "maxpool1d": (lambda: nn.MaxPool1d(2, 2), (3, 9)),
    "maxpool3d": (lambda: nn.MaxPool3d(2), (2, 4, 4, 5)),
    "avgpool_pad": (lambda: nn.AvgPool2d(3, 2, padding=1), (2, 7, 8)),
    "avgpool_pad_excl": (lambda: nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), (2, 7, 8)),
    "avgpool_ceil": (lambda: nn.AvgPool2d(2, ceil_mode=True), (2, 7, 9)),
    "avgpool_ceil_pad_excl": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 8, 8)),
    "avgpool_ceil_no_change": (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True), (2, 9, 9)),
    "avgpool1d": (lambda: nn.AvgPool1d(3, 1, 1), (2, 6)),
    "avgpool3d": (lambda: nn.AvgPool3d(2), (2, 4, 4, 4)),
    "adaptive_global": (lambda: nn.AdaptiveAvgPool2d(1), (3, 5, 7)),
    "adaptive_divisible": (lambda: nn.AdaptiveAvgPool2d((2, None)), (3, 6, 5)),
    "adaptive_general": (lambda: nn.AdaptiveAvgPool2d((3, 4)), (3, 7, 2)),
    "adaptive_1d": (lambda: nn.AdaptiveAvgPool1d(4), (3, 10)),
    "adaptive_3d": (lambda: nn.AdaptiveAvgPool3d((1, 2, 3)), (2, 3, 4, 5)),
    "adaptive_max": (lambda: nn.AdaptiveMaxPool2d((2, 3)), (3, 6, 6)),
    "bn1d_features": (lambda: nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4)), (6,)),
    "bn1d_sequence": (lambda: nn.BatchNorm1d(3, affine=False), (3, 7)),
    "bn3d_eps": (lambda: nn.BatchNorm3d(2, eps=0.1), (2, 3, 3, 3)),
    "bn_after_relu": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.BatchNorm2d(3)), (2, 5, 5)),
    "activations": (lambda: nn.Sequential(nn.Linear(5, 6), nn.ReLU6(), nn.Linear(6, 6), nn.Hardtanh(-0.2, 0.4),
                                          nn.Linear(6, 6), nn.ELU(0.7), nn.GELU("tanh"), nn.SiLU(), nn.Tanh(),
                                          nn.Sigmoid(), nn.Hardsigmoid(), nn.LeakyReLU(), nn.GELU()), (5,)),
    "softmax_implicit_dim": (lambda: nn.Sequential(nn.Linear(5, 4), nn.Softmax()), (5,)),
    "softmax_dim": (lambda: nn.Softmax(dim=-2), (3, 4)),
    "flatten_unflatten": (lambda: nn.Sequential(nn.Flatten(), nn.Unflatten(1, (4, 6)), nn.Flatten(2, 2)), (2, 3, 4)),
    "pads": (lambda: nn.Sequential(nn.ZeroPad2d((1, 2, 0, 3)), nn.ConstantPad2d(1, -1.5)), (2, 3, 3)),
    "linear_3d": (lambda: nn.Linear(5, 3), (4, 5)),
    "identities": (lambda: nn.Sequential(nn.Identity(), nn.Dropout2d(), nn.Linear(4, 2), nn.Dropout()), (4,)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0),
                                                    output_padding=(1, 0), groups=2, dilation=(1, 2)), (4, 5, 4)),
    "conv_transpose1d": (lambda: nn.ConvTranspose1d(3, 2, 4, stride=3, padding=2), (3, 6)),
    "conv_transpose3d": (lambda: nn.ConvTranspose3d(2, 2, 2, stride=2, bias=False), (2, 2, 3, 2)),
}


@pytest.mark.filterwarnings("ignore::UserWarning")   # torch's own notes on even 'same' kernels, implicit dims
@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_module_cases(case):
    make, shape = MODULE_CASES[case]
    torch.manual_seed(0)
    model = randomize_bn(make()).eval()
    assert_faithful(model, randn(3, *shape))


class TokenModel(nn.Module):
    """Token ids -> nn.Embedding -> conv over tokens -> mean -> linear (and F.embedding beside it)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.pos = nn.Parameter(torch.randn(20, 6) * 0.1)
        self.conv = nn.Conv1d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, ids):
        e = self.emb(ids) + F.embedding(ids, self.pos)
        return self.fc(F.relu(self.conv(e.transpose(1, 2))).mean(-1))


def test_embedding_model_takes_token_ids():
    torch.manual_seed(0)
    model = TokenModel().eval()
    ids = torch.randint(0, 20, (4, 7))
    graph = attribx.translate(model, input_shape=(7,))
    assert graph.input.dtype == "int64" and graph.input.dims == ("sample", "token")
    assert [n.op for n in graph.nodes][:2] == ["embedding", "embedding"]
    want = model(ids).detach().numpy()
    for engine in ("numpy", "torch"):
        assert relative_error(attribx.forward(model, ids, engine=engine), want) <= 1e-6
    ds = attribx.explain(model, ids, "lrp.epsilon", layers=["emb", "embedding"], engine="torch")
    np.testing.assert_allclose(ds["relevance"].values, ds["emb"].values.sum(-1) + ds["embedding"].values.sum(-1),
                               rtol=1e-5, atol=1e-7)
    on_numpy = attribx.explain(model, ids.numpy(), "lrp.epsilon", engine="numpy")
    np.testing.assert_allclose(on_numpy, ds["relevance"], rtol=1e-4, atol=1e-7)


def test_float64_model_stays_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    model = randomize_bn(model).double().eval()
    x = randn(2, 2, 6, 6, dtype=torch.float64)
    graph = attribx.translate(model, input_shape=(2, 6, 6), passes=False)
    assert graph.input.dtype == "float64" and graph["0"].params["weight"].dtype == np.float64
    err = relative_error(graph_forward(model, x), native(model, x))
    assert err <= 1e-12


def test_graph_names_and_sources():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(8, 3)))
    graph = attribx.translate(model, input_shape=(1, 4, 4), passes=False)
    assert [(n.name, n.op, n.source) for n in graph] == [
        ("0", "conv", "Conv2d"), ("1", "relu", "ReLU"), ("2.0", "flatten", "Flatten"), ("2.2", "linear", "Linear")]
    assert graph.meta["aliases"] == {"2.1": "2.0"}
    assert graph.outputs == ["2.2"]


def test_module_called_twice_gets_unique_names():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.relu(self.fc(self.relu(x)))

    graph = assert_faithful(Twice().eval(), randn(2, 4))
    assert [n.name for n in graph] == ["relu", "fc", "relu_1"]


def test_a_single_module_is_one_node_named_by_its_class():
    torch.manual_seed(0)
    graph = assert_faithful(nn.BatchNorm1d(3).eval(), randn(2, 3, 5))   # its forward is not fx-traceable
    assert [(n.name, n.op, n.source) for n in graph] == [("batchnorm1d", "batch_norm", "BatchNorm1d")]
    graph = attribx.translate(nn.Identity(), input_shape=(4,))
    assert [(n.name, n.op) for n in graph] == [("output", "identity")]
    with pytest.raises(UnsupportedError, match=r"module 'prelu' \(torch.nn.PReLU\)"):
        attribx.translate(nn.PReLU(), input_shape=(4,))


def test_several_outputs_and_absent_ones():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 6)
            self.a = nn.Linear(6, 2)
            self.b = nn.Linear(6, 3)
            self.unused = nn.Linear(6, 1)

        def forward(self, x):
            h = torch.relu(self.body(x))
            self.unused(h)
            return {"a": self.a(h), "b": self.b(h), "aux": None}

    graph = attribx.translate(Heads(), input_shape=(4,))
    assert graph.outputs == ["a", "b"] and "unused" not in graph


def test_torchvision_stochastic_depth_is_identity_in_eval(tv):
    from torchvision.ops import StochasticDepth
    model = nn.Sequential(nn.Linear(4, 4), StochasticDepth(0.5, "row"), nn.ReLU()).train()
    graph = attribx.translate(model, input_shape=(4,))
    assert [n.op for n in graph] == ["linear", "relu"]
    assert model[1].training


def test_passes_run_after_translation():
    model = randomize_bn(nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU())).eval()
    raw = attribx.translate(model, input_shape=(2, 5, 5), passes=False)
    assert [n.op for n in raw] == ["conv", "batch_norm", "relu"]
    folded = attribx.translate(model, input_shape=(2, 5, 5))
    assert [n.op for n in folded] == ["conv", "relu"]


# ----------------------------------------------------------------------------------------------
# errors


def _unsupported(model, shape, *needles):
    with pytest.raises(UnsupportedError) as info:
        attribx.translate(model, input_shape=shape)
    msg = str(info.value)
    # a construct without a converter, or an argument the graph cannot express: the converter hook and its docs
    hints = ("attribx_converters", "docs/plugins.md") + (() if "has no torch translation" in msg else ("attribx_ops",))
    for n in (*hints, *needles):
        assert n in msg, f"{n!r} not in: {msg}"
    return msg


def test_unsupported_module_names_module_path_and_hook():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 4))
            self.rnn = nn.RNN(4, 3, batch_first=True)

        def forward(self, x):
            return self.rnn(self.encoder(x))[0]

    _unsupported(Seq(), (5, 4), "RNN", "'rnn'")


def test_unsupported_function_names_function_and_node():
    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return torch.fft.fft(self.fc(x)).real

    _unsupported(Spectral(), (8,), "fft", "fx node")


def test_unsupported_method_and_module_inside_custom_block():
    class Block(nn.Module):
        def forward(self, x):
            return x.cumsum(1)

    model = nn.Sequential(nn.Linear(3, 3), Block())
    _unsupported(model, (3,), "Tensor.cumsum", "'1'", "Block")


@pytest.mark.parametrize("make, shape, needle", [
    (lambda: nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), (1, 5, 5), "padding_mode"),
    (lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True), (1, 8, 8), "ceil_mode"),
    (lambda: nn.AvgPool2d(2, divisor_override=3), (1, 4, 4), "divisor_override"),
    (lambda: nn.MaxPool2d(2, return_indices=True), (1, 4, 4), "return_indices"),
    (lambda: nn.AdaptiveMaxPool2d(3), (1, 5, 5), "adaptive max"),
    (lambda: nn.BatchNorm2d(2, track_running_stats=False), (2, 3, 3), "track_running_stats"),
    (lambda: nn.Sequential(nn.Flatten(0)), (2, 3), "batch axis"),
    (lambda: nn.Softmax(dim=0), (3,), "batch axis"),
    (lambda: nn.Mish(), (3,), "Mish"),
    (lambda: nn.GroupNorm(1, 3), (3, 2), "GroupNorm"),
    (lambda: nn.Embedding(5, 3, max_norm=1.0), (3,), "max_norm"),
    (lambda: Wrap(lambda x: x.sum()), (3,), "batch axis"),
    (lambda: Wrap(lambda x: x.mean(0)), (3,), "batch axis"),
    (lambda: Wrap(lambda x: x.view(-1)), (3,), "batch axis"),
    (lambda: Wrap(lambda x: x.permute(1, 0)), (3,), "batch axis"),
    (lambda: Wrap(lambda x: x[0]), (3,), "batch axis"),
    (lambda: Wrap(lambda x: x[:, [0, 2]]), (3,), "advanced indexing"),
    (lambda: Wrap(lambda x: torch.div(x, x + 2, rounding_mode="floor")), (3,), "rounding_mode"),
    (lambda: Wrap(lambda x: F.pad(x, (1, 1), mode="reflect")), (2, 3), "reflect"),
    (lambda: Wrap(lambda x: x / x.shape[0]), (3,), "batch size"),
    (lambda: Wrap(lambda x: x[:, :x.size(0)]), (3,), "batch size"),
    (lambda: Wrap(lambda x: F.dropout(x, 0.5, training=True)), (3,), "training=True"),
    (lambda: Wrap(lambda x: F.relu(x, inplace=True) + x), (3,), "in place"),
    (lambda: Wrap(lambda x: x if x.sum() > 0 else -x), (3,), "trace"),
])
def test_unsupported_arguments(make, shape, needle):
    _unsupported(make(), shape, needle)


def test_half_model_is_unsupported():
    with pytest.raises(UnsupportedError, match="float16"):
        attribx.translate(nn.Linear(3, 2).half(), input_shape=(3,))


def test_several_inputs_are_unsupported():
    class Two(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(UnsupportedError, match="one input"):
        attribx.translate(Two(), input_shape=(3,))


def test_optional_forward_arguments_take_their_defaults():
    class Opt(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x, mask=None, scale=2.0):
            if mask is not None:
                x = x * mask
            return self.fc(x) * scale

    assert_faithful(Opt().eval(), randn(2, 3))


def test_input_shape_is_required_unless_the_first_layer_fixes_it():
    with pytest.raises(InputError, match=r"input_shape=\(3, H, W\)"):
        attribx.translate(nn.Conv2d(3, 2, 3))
    assert attribx.translate(nn.Linear(3, 2)).input.shape == (None, 3)     # more in test_torch_input_shape.py


def test_wrong_input_shape_is_an_input_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(InputError, match=r"\(1, 9, 9\)") as info:
        attribx.translate(model, input_shape=(1, 9, 9))
    assert "mat1 and mat2" in str(info.value) or "shape" in str(info.value)
    with pytest.raises(InputError):
        attribx.explain(model, randn(2, 3, 8, 8), LRP, engine="numpy")
    with pytest.raises(InputError):
        attribx.translate(model, input_shape=(1, 0, 8))


# ----------------------------------------------------------------------------------------------
# mode and cache


def test_training_mode_is_restored():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.BatchNorm1d(3)).train()
    model[2].eval()
    attribx.translate(model, input_shape=(3,))
    assert model.training and model[0].training and model[1].training and not model[2].training
    assert not [n for n in attribx.translate(model, input_shape=(3,), passes=False) if n.op == "identity"]


@pytest.fixture
def count_traces(monkeypatch):
    calls = []
    run = Walker.run

    def counted(self):
        calls.append(self.input_shape)
        return run(self)

    monkeypatch.setattr(Walker, "run", counted)
    return calls


def test_translation_is_cached_and_invalidated(count_traces):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3)).eval()
    x = randn(4, 1, 6, 6)
    for k in range(0, 4, 2):          # batches of one model: one trace
        attribx.explain(model, x[k:k + 2], LRP, engine="numpy")
        assert relative_error(graph_forward(model, x[k:k + 2]), native(model, x[k:k + 2])) <= TOL
    assert len(count_traces) == 1
    g1 = attribx.translate(model, input_shape=(1, 6, 6), passes=False)
    g1["0"].params["weight"] = np.zeros_like(g1["0"].params["weight"])    # the caller's copy only
    g2 = attribx.translate(model, input_shape=(1, 6, 6), passes=False)
    assert len(count_traces) == 1 and np.abs(g2["0"].params["weight"]).sum() > 0

    with torch.no_grad():                  # in-place update: bumps the version
        model[0].weight.mul_(2.0)
    assert relative_error(graph_forward(model, x), native(model, x)) <= TOL
    assert len(count_traces) == 2
    model[4].weight.data.add_(0.5)         # through .data: no version bump, the checksum sees it
    assert relative_error(graph_forward(model, x), native(model, x)) <= TOL
    assert len(count_traces) == 3
    model[4].weight = nn.Parameter(torch.ones(3, 32))   # replaced parameter
    assert relative_error(graph_forward(model, x), native(model, x)) <= TOL
    assert len(count_traces) == 4
    model[1] = nn.Tanh()                   # replaced module without parameters
    assert relative_error(graph_forward(model, x), native(model, x)) <= TOL
    assert len(count_traces) == 5
    model[1] = nn.LeakyReLU(0.1)
    graph_forward(model, x)
    model[1].negative_slope = 0.3          # changed setting
    assert relative_error(graph_forward(model, x), native(model, x)) <= TOL
    assert len(count_traces) == 7
    x7 = randn(2, 1, 7, 7)                # another input shape: its own entry
    assert relative_error(graph_forward(model, x7), native(model, x7)) <= TOL
    attribx.translate(model, input_shape=(1, 6, 6))
    assert len(count_traces) == 8


def test_cache_does_not_keep_models_alive():
    import gc
    import weakref
    model = nn.Linear(3, 2)
    attribx.translate(model, input_shape=(3,))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
