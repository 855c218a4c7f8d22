"""torch.export programs as models: an ``ExportedProgram`` object or a ``.pt2`` file.

Both IRs (``torch.export.export``'s and the core ATen of ``run_decompositions()``), static and dynamic batch:
the graph's forward equals the program's (the brief's 1e-5), and relevance equals that of the nn.Module it
was exported from (whose numbers the zennit/Captum anchors check). Translating never changes the program,
an aten op without a translation is one line naming it and its node, and a training-mode program is refused
before it runs (running it would update its batch-norm statistics).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import torch.nn as nn  # noqa: E402

import attribx  # noqa: E402
from attribx.cli import main  # noqa: E402
from attribx.testing import relative_error  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


class CNN(nn.Module):
    """The ops plain CNN exports produce: conv, batch norm, relu, a residual add, pools, cat, slice, flatten."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv1(x)))
        y = self.pool(self.conv2(y) + y)
        y = torch.cat([y, -y], 1)[:, 2:6]
        y = nn.functional.avg_pool2d(y, 1)
        return self.fc(torch.flatten(self.gap(y), 1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x.view(x.size(0), -1)))))


def make(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        return MLP().eval(), torch.randn(4, 2, 3), "lrp.epsilon", {"epsilon": 0.1}
    model = CNN().eval()
    with torch.no_grad():     # running statistics that matter, so that batch-norm folding is tested
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 2)
        model.bn.bias.uniform_(-1, 1)
    return model, torch.randn(4, 3, 8, 8), "lrp.epsilon_gamma_box", {"low": -3.0, "high": 3.0}


def export(model, x, ir="export", batch="static"):
    dyn = ({0: torch.export.Dim("batch")},) if batch == "dynamic" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, (x,), dynamic_shapes=dyn)
        return ep.run_decompositions() if ir == "core aten" else ep


def snapshot(ep):
    return ep.graph_module.code, {k: (v.clone(), v._version) for k, v in ep.state_dict.items()}


def assert_unchanged(ep, before):
    code, state = snapshot(ep)
    assert code == before[0]
    assert state.keys() == before[1].keys()
    for k, (v, version) in state.items():
        assert torch.equal(v, before[1][k][0]) and version == before[1][k][1], k


@pytest.mark.parametrize("batch", ["static", "dynamic"])
@pytest.mark.parametrize("ir", ["export", "core aten"])
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_program_forward_and_relevance_equal_the_module(kind, ir, batch):
    model, x, method, params = make(kind)
    ep = export(model, x, ir, batch)
    before = snapshot(ep)
    graph = attribx.translate(ep)
    assert graph.input.shape == (None, *x.shape[1:])
    with torch.no_grad():
        want = ep.module()(x).numpy()      # the program's own forward, at its batch size
    assert relative_error(attribx.forward(ep, x.numpy(), engine="numpy"), want) <= 1e-5
    assert relative_error(attribx.forward(ep, x, engine="torch"), want) <= 1e-5
    rel = attribx.explain(ep, x, method, **params)
    ref = attribx.explain(model, x, method, **params)
    assert relative_error(rel.values, ref.values) <= 1e-5
    assert np.abs(rel.values).sum() > 0
    # layers keep their module paths, so layers= and composites address them alike
    module_graph = attribx.translate(model, input_shape=x.shape[1:])
    layers = {n.name for n in module_graph.nodes if n.op in ("conv", "linear")}
    assert layers == {n.name for n in graph.nodes if n.op in ("conv", "linear")}
    inner = "conv2" if kind == "cnn" else "fc1"
    ours = attribx.explain(ep, x, method, layers=[inner], **params)[inner].values
    theirs = attribx.explain(model, x, method, layers=[inner], **params)[inner].values
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert_unchanged(ep, before)


def test_pt2_file_from_the_api_and_the_command_line(tmp_path, capsys):
    model, x, method, params = make("cnn")
    ep = export(model, x)
    path = tmp_path / "cnn.pt2"
    torch.export.save(ep, path)
    loaded = attribx.load_model(path)
    assert type(loaded).__name__ == "ExportedProgram"
    ref = attribx.explain(model, x, method, **params)
    assert relative_error(attribx.explain(str(path), x, method, **params).values, ref.values) <= 1e-5
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "rel.h5"
    assert main(["explain", str(path), str(tmp_path / "x.npy"), "-m", method, "-p", "low=-3", "-p", "high=3",
                 "-o", str(out)]) == 0
    assert relative_error(attribx.open_relevance(out).values, ref.values) <= 1e-5
    assert main(["inspect", str(path)]) == 0
    assert "conv1" in capsys.readouterr().out
    # channels-last data gets the fix, as from the API
    np.save(tmp_path / "nhwc.npy", x.permute(0, 2, 3, 1).numpy())
    assert main(["explain", str(path), str(tmp_path / "nhwc.npy"), "-o", str(tmp_path / "o.h5")]) == 2
    assert capsys.readouterr().err == ("attribx: error: input has shape (4, 8, 8, 3), the model expects (N, 3, 8, 8) "
                                       "(the model takes channels first: np.moveaxis(x, -1, 1))\n")
    assert main(["plugins"]) == 0
    assert ".pt2: a torch.export program (torch.export.save)" in capsys.readouterr().out


def test_not_a_pt2_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt2"
    bad.write_text("not a program")
    with pytest.raises(attribx.ModelLoadError, match=r"bad.pt2: not a torch.export program"):
        attribx.load_model(bad)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a torch.export program" in err


def test_wrong_shapes_name_the_programs_shape():
    model, x, _, _ = make("cnn")
    ep = export(model, x)
    with pytest.raises(attribx.InputError) as err:
        attribx.explain(ep, x[0])
    assert str(err.value) == "input has shape (3, 8, 8), the model expects (N, 3, 8, 8) (add a batch axis: x[None])"
    with pytest.raises(attribx.InputError) as err:
        attribx.explain(ep, x.permute(0, 2, 3, 1))
    assert str(err.value).endswith("(the model takes channels first: x.permute(0, 3, 1, 2))")
    with pytest.raises(attribx.InputError, match=r"takes one sample of shape \(3, 8, 8\), not \(3, 9, 9\)"):
        attribx.translate(ep, input_shape=(3, 9, 9))


def test_free_sizes_need_a_shape():
    model, x, method, params = make("cnn")
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=4, max=64),
            3: torch.export.Dim("w", min=4, max=64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, (x,), dynamic_shapes=(dims,))
    with pytest.raises(attribx.InputError, match=r"leaves free, \(3, \?, \?\); pass attribx.translate\(program, "
                                                 r"input_shape=\.\.\.\).*or call attribx.explain\(program, x\)"):
        attribx.translate(ep)
    x12 = torch.randn(2, 3, 12, 12)
    assert relative_error(attribx.explain(ep, x12, method, **params).values,
                          attribx.explain(model, x12, method, **params).values) <= 1e-5


def test_untranslated_aten_op_names_op_and_node():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(torch.sin(x))

    with pytest.raises(attribx.UnsupportedError) as err:
        attribx.translate(export(Odd().eval(), torch.randn(2, 3)))
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("function torch.ops.aten.sin.default at fx node 'sin' has no torch translation; a plugin "
                           "can add one with attribx.translation.converter and the 'attribx_converters' hook")


def test_training_mode_program_is_refused_before_it_runs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    ep = export(model, torch.randn(5, 3))
    before = snapshot(ep)
    with pytest.raises(attribx.UnsupportedError, match=r"updates 1\.\w+ when the program runs \(exported in training "
                                                       r"mode\?\); attribx explains inference: export model\.eval\(\)"):
        attribx.translate(ep)
    assert_unchanged(ep, before)        # running it would have updated the running statistics


class InPlace(nn.Module):
    """In-place ReLUs (torchvision's VGG, ResNet) and a view taken before an in-place op: the training IR
    keeps relu_ and its aliasing, which torch's functionalisation resolves."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        h = self.fc1(x)
        keep = h[:, :4]              # a view of h before relu_ changes h: it sees the change
        h = self.act(h)
        return self.fc2(torch.cat([keep, h], 1))


def test_in_place_ops_in_the_program_translate_as_what_they_compute():
    torch.manual_seed(0)
    m = InPlace().eval().double()
    x = torch.randn(5, 6, dtype=torch.float64)
    ep = torch.export.export(m, (x,))
    assert any("relu_" in str(n.target) for n in ep.graph.nodes)        # the case the test is about
    before = [str(n.target) for n in ep.graph.nodes]
    with torch.no_grad():
        want = ep.module()(x).numpy()
    g = attribx.translate(ep)
    assert relative_error(attribx.forward(g, x.numpy(), engine="numpy"), want) <= 1e-12
    assert [str(n.target) for n in ep.graph.nodes] == before               # the user's program is unchanged
    # relevance: that of the same computation written without in-place ops (the view sees relu's result)

    class OutOfPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = m.fc1, m.fc2

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            return self.fc2(torch.cat([h[:, :4], h], 1))

    rel_program = attribx.explain(ep, x, "lrp.epsilon", target=1)
    rel_module = attribx.explain(OutOfPlace().eval(), x, "lrp.epsilon", target=1)
    np.testing.assert_allclose(rel_program.values, rel_module.values, rtol=1e-10, atol=1e-12)
