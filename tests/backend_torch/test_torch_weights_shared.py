"""Weights held once (issue 20): a torch model's float CPU parameters are not copied by the translation (the
graph's arrays are read-only views of the model's memory) nor by the torch engine (its tensors are the model's
storage), and explaining through shared weights leaves the model bit-identical and gives the numbers of a graph
with copied weights and of torch's own autograd."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import torch.nn as nn  # noqa: E402

import attribx  # noqa: E402
from attribx.graph import Graph  # noqa: E402

from test_torch_model_untouched import assert_unchanged, snapshot  # noqa: E402

COMPOSITES = {"lrp.epsilon": {}, "lrp.epsilon_plus_flat": {}, "lrp.epsilon_alpha2_beta1": {},
              "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0}}


def small_cnn():
    """A conv without batch norm (its weights stay the model's), a conv with one (folded: new weights),
    a residual add, pooling and a linear layer."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            h = torch.relu(self.conv1(x))
            h = torch.relu(self.bn(self.conv2(h)) + h)
            return self.fc(torch.flatten(self.pool(h), 1))
    model = Net().eval()
    with torch.no_grad():     # batch-norm statistics that are not the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
    return model


def test_graph_params_are_read_only_views_of_the_model():
    model = small_cnn()
    graph = attribx.translate(model, input_shape=(3, 8, 8))
    raw = attribx.translate(model, passes=False, input_shape=(3, 8, 8))
    for node, module in ((graph["conv1"], model.conv1), (graph["fc"], model.fc)):
        for key in ("weight", "bias"):
            a = node.params[key]
            assert np.shares_memory(a, getattr(module, key).detach().numpy()), (node.name, key)
            assert not a.flags.writeable
            with pytest.raises(ValueError):
                a[...] = 0
    # before the passes every parameter, batch norm included, is the model's memory
    for key, p in (("weight", model.conv2.weight), ):
        assert np.shares_memory(raw["conv2"].params[key], p.detach().numpy())
    assert np.shares_memory(raw["bn"].params["var"], model.bn.running_var.numpy())
    # folding the batch norm makes weights of its own (and leaves the model's alone)
    assert not np.shares_memory(graph["conv2"].params["weight"], model.conv2.weight.detach().numpy())


def test_engine_tensors_are_the_model_storage():
    model = small_cnn()
    graph = attribx.translate(model, input_shape=(3, 8, 8))
    eng = attribx.get_engine("torch")
    x = torch.randn(2, 3, 8, 8)
    attribx.explain(graph, x, "lrp.epsilon", engine=eng)
    for name, module in (("conv1", model.conv1), ("fc", model.fc)):
        params = eng.node_params(graph[name], [x])
        assert params["weight"].data_ptr() == module.weight.data_ptr()
        assert params["bias"].data_ptr() == module.bias.data_ptr()


def test_a_float64_input_casts_shared_weights_without_touching_them():
    model = small_cnn()
    before = snapshot(model)
    graph = attribx.translate(model, input_shape=(3, 8, 8))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    eng = attribx.get_engine("torch")
    attribx.explain(graph, x, "lrp.epsilon", engine=eng)
    assert eng.node_params(graph["fc"], [x])["weight"].dtype == torch.float64
    assert_unchanged(model, before)


@pytest.mark.parametrize("method", list(COMPOSITES) + ["gradient"])
def test_explaining_through_shared_weights(method):
    model = small_cnn()
    before = snapshot(model)
    x = torch.randn(3, 3, 8, 8)
    graph = attribx.translate(model, input_shape=(3, 8, 8))
    got = attribx.explain(graph, x, method, target=[0, 1, 4], engine="torch", **COMPOSITES.get(method, {}))
    assert_unchanged(model, before)
    # the same graph with weights of its own (copies) gives the same numbers
    nodes = [n.replace(params={k: np.array(v) for k, v in n.params.items()}) for n in graph.nodes]
    copied = Graph(list(graph.inputs), nodes, list(graph.outputs), copy.deepcopy(graph.meta), validate=False)
    want = attribx.explain(copied, x, method, target=[0, 1, 4], engine="torch", **COMPOSITES.get(method, {}))
    np.testing.assert_array_equal(np.asarray(got.values), np.asarray(want.values))
    if method == "gradient":     # and torch's own autograd
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi)[torch.arange(3), torch.tensor([0, 1, 4])].sum(), xi)
        np.testing.assert_allclose(np.asarray(got.values), g.numpy(), rtol=1e-4, atol=1e-6)


def test_engine_cache_follows_nodes_not_addresses():
    """Converted parameters are cached per node object: a node that takes a dead one's place in the cache's
    key (Python reuses the ids of objects that are gone) gets its own weights, not the dead one's."""
    from attribx.graph import Node
    eng = attribx.get_engine("torch")
    x = torch.ones(1, 2)
    old = Node("fc", "linear", ("x",), params={"weight": np.ones((3, 2), np.float32)})
    assert eng.node_params(old, [x])["weight"].sum() == 6
    new = Node("fc", "linear", ("x",), params={"weight": np.full((3, 2), 2, np.float32)})
    (key,) = eng._param_cache
    eng._param_cache[(id(new),) + key[1:]] = eng._param_cache.pop(key)     # as if new sat at old's address
    assert eng.node_params(new, [x])["weight"].sum() == 12


def test_the_fingerprint_follows_weights_changed_in_place():
    """The fingerprint in the relevance's attrs (what appending to a file checks) is that of the weights used:
    a graph over shared weights changed in place after a first explanation gets a new one (each array's digest
    is kept between calls and re-checked, attribx.digests)."""
    model = small_cnn()
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    graph = attribx.translate(model, input_shape=(3, 8, 8))
    first = attribx.explain(graph, x, "lrp.epsilon", target=1)
    assert attribx.explain(graph, x, "lrp.epsilon", target=1).attrs["model_fingerprint"] == \
        first.attrs["model_fingerprint"]
    with torch.no_grad():
        model.fc.weight[1, 3] += 0.5
    second = attribx.explain(graph, x, "lrp.epsilon", target=1)
    fresh = attribx.explain(copy.deepcopy(model), x, "lrp.epsilon", target=1)
    assert second.attrs["model_fingerprint"] != first.attrs["model_fingerprint"]
    assert second.attrs["model_fingerprint"] == fresh.attrs["model_fingerprint"]
    np.testing.assert_allclose(second.values, fresh.values, rtol=1e-6)
