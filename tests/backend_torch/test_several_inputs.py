"""Models with several signal inputs (``forward(self, image, extra)``): a tuple or a dict in, one relevance per
input out, against Captum's tuple-input attributions, zennit's ε on the single-input twin (the two inputs
concatenated into one), and conservation over both inputs. (Captum's ``LRP`` is no reference here: it passes
the whole relevance of a sum of two branches to each branch, as it documents for non-sequential models.)"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import attribx  # noqa: E402
from attribx.errors import InputError, StorageError, UnsupportedError  # noqa: E402


class TwoInputs(torch.nn.Module):
    """An image branch (conv) and a feature branch (linear), added, then a small head."""

    def __init__(self, bias=True):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, bias=bias)
        self.fa = torch.nn.Linear(3 * 4 * 4, 6, bias=bias)
        self.fb = torch.nn.Linear(4, 6, bias=bias)
        self.out = torch.nn.Linear(6, 3, bias=bias)

    def forward(self, image, extra):
        h = self.fa(torch.relu(self.conv(image)).flatten(1)) + self.fb(extra)
        return self.out(torch.relu(h))


class TwoBranchMLP(torch.nn.Module):
    """relu(fa(a) + fb(b)) then a linear head: the same function as :class:`Concatenated` on cat(a, b)."""

    def __init__(self):
        super().__init__()
        self.fa, self.fb, self.out = torch.nn.Linear(3, 5), torch.nn.Linear(4, 5), torch.nn.Linear(5, 2)

    def forward(self, a, b):
        return self.out(torch.relu(self.fa(a) + self.fb(b)))


class Concatenated(torch.nn.Module):
    def __init__(self, two: TwoBranchMLP):
        super().__init__()
        self.f = torch.nn.Linear(7, 5)
        self.out = two.out
        with torch.no_grad():
            self.f.weight.copy_(torch.cat([two.fa.weight, two.fb.weight], 1))
            self.f.bias.copy_(two.fa.bias + two.fb.bias)

    def forward(self, x):
        return self.out(torch.relu(self.f(x)))


def model(bias=True):
    torch.manual_seed(0)
    return TwoInputs(bias).double().eval()


def inputs(n=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 6, 6, generator=g, dtype=torch.float64), torch.randn(n, 4, generator=g,
                                                                                  dtype=torch.float64)


def tiny_epsilon(eps):
    """ε on every layer, with sums stabilised by ε too (``lrp.epsilon`` keeps the sums' stabiliser at 1e-6)."""
    from attribx import composite as C
    from attribx.rules import Epsilon
    return C.Composite([(C.category("layer"), Epsilon(epsilon=eps))], defaults=C.lrp_defaults(eps, eps),
                       name="epsilon_tiny")


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def test_forward_and_the_graph_take_every_input():
    m, (x1, x2) = model(), inputs()
    graph = attribx.translate(m, input_shape=((2, 6, 6), (4,)))
    assert [v.name for v in graph.signal_inputs] == ["image", "extra"]
    with pytest.raises(attribx.GraphError, match="2 signal inputs"):
        graph.input
    ref = m(x1, x2).detach().numpy()
    for given in ((x1, x2), {"extra": x2, "image": x1}, (x1.numpy(), x2.numpy())):
        for engine in ("torch", "numpy"):
            assert rel_err(attribx.forward(m, given, engine=engine), ref) <= 1e-12
    on_numpy = attribx.explain(m, (x1.numpy(), x2.numpy()), "lrp.epsilon_plus", target=0, engine="numpy")
    for r, t in zip(on_numpy, attribx.explain(m, (x1, x2), "lrp.epsilon_plus", target=0)):
        assert rel_err(r.values, t.values) <= 1e-10


@pytest.mark.parametrize("ours,theirs", [("gradient", "Saliency"), ("gradient_x_input", "InputXGradient")])
def test_gradients_equal_captum(ours, theirs):
    captum_attr = pytest.importorskip("captum.attr")
    m, (x1, x2) = model(), inputs()
    target = 1
    rel = attribx.explain(m, (x1, x2), ours, target=target)
    assert isinstance(rel, tuple) and len(rel) == 2
    method = getattr(captum_attr, theirs)(m)
    kw = {"abs": False} if theirs == "Saliency" else {}
    ref = method.attribute((x1, x2), target=target, **kw)
    for r, c, x in zip(rel, ref, (x1, x2)):
        assert r.shape == tuple(x.shape)
        assert rel_err(r.values, c.detach().numpy()) <= 1e-10
    assert rel[0].dims == ("sample", "channel", "height", "width") and rel[1].dims == ("sample", "feature")
    assert list(rel[1].coords["target"].values) == [target] * 4 and "prediction" in rel[1].coords


def test_integrated_gradients_equal_captum_riemann_right():
    """Our IG is the right Riemann sum (α = 1/steps ... 1): Captum's ``method="riemann_right"``; all inputs
    move along one α, each from its own baseline."""
    captum_attr = pytest.importorskip("captum.attr")
    m, (x1, x2) = model(), inputs()
    b1, b2 = torch.full_like(x1, 0.25), torch.full_like(x2, -0.5)
    ours = attribx.explain(m, (x1, x2), "integrated_gradients", target=2, baseline=(b1[0].numpy(), -0.5), steps=16)
    ref = captum_attr.IntegratedGradients(m).attribute((x1, x2), baselines=(b1, b2), target=2, n_steps=16,
                                                       method="riemann_right")
    for r, c in zip(ours, ref):
        assert rel_err(r.values, c.detach().numpy()) <= 1e-10


def test_smoothgrad_puts_noise_on_every_input():
    """Without noise SmoothGrad is the gradient; with noise each input's relevance departs from it."""
    m, (x1, x2) = model(), inputs()
    grad = attribx.explain(m, (x1, x2), "gradient", target=0)
    quiet = attribx.explain(m, (x1, x2), "smoothgrad", target=0, noise=0.0, samples=3)
    noisy = attribx.explain(m, (x1, x2), "smoothgrad", target=0, noise=0.5, samples=3)
    for g, q, n in zip(grad, quiet, noisy):
        assert rel_err(q.values, g.values) <= 1e-12
        assert rel_err(n.values, g.values) > 1e-3


def test_epsilon_equals_zennit_on_the_concatenated_twin():
    """A two-branch model is one linear layer on the concatenated inputs: its ε relevance (zennit, on the
    single-input twin) split at the concatenation equals our two relevances."""
    pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.rules import Epsilon
    torch.manual_seed(3)
    two = TwoBranchMLP().double().eval()
    single = Concatenated(two).double().eval()
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(two(a, b), single(torch.cat([a, b], 1)))
    eps = 1e-9
    composite = LayerMapComposite([(torch.nn.Linear, Epsilon(epsilon=eps))])
    x = torch.cat([a, b], 1)
    with Gradient(single, composite) as attributor:
        _, ref = attributor(x, torch.eye(2, dtype=torch.float64)[[1] * 5] * single(x).detach())
    # the sum of the branches is split in proportion to their contributions (a stabiliser as small as zennit's ε)
    ra, rb = attribx.explain(two, (a, b), tiny_epsilon(eps), target=1)
    assert rel_err(np.concatenate([ra.values, rb.values], 1), ref.detach().numpy()) <= 1e-7


def test_conservation_over_both_inputs_on_a_bias_free_model():
    m, (x1, x2) = model(bias=False), inputs()
    target = 2
    logit = m(x1, x2)[:, target].detach().numpy()
    ra, rb = attribx.explain(m, (x1, x2), "lrp.epsilon", target=target, epsilon=1e-12)
    total = ra.values.reshape(4, -1).sum(1) + rb.values.reshape(4, -1).sum(1)
    assert rel_err(total, logit) <= 1e-5        # the sums' stabiliser (1e-6) absorbs a little
    da, db = attribx.explain(m, (x1, x2), tiny_epsilon(1e-12), target=target, conservation=True)
    sums = da["conservation"]
    assert rel_err(sums.sel(node="image") + sums.sel(node="extra"), logit) <= 1e-9
    ra, rb = attribx.explain(m, (x1, x2), tiny_epsilon(1e-12), target=target)
    assert np.array_equal(da["relevance"].values, ra.values) and np.array_equal(db["relevance"].values, rb.values)


def test_dict_in_dict_out_and_batches_slice_every_input():
    m, (x1, x2) = model(), inputs(5)
    whole = attribx.explain(m, (x1, x2), "lrp.epsilon_plus", target=1)
    by_name = attribx.explain(m, {"extra": x2, "image": x1}, "lrp.epsilon_plus", target=1, batch_size=2)
    assert list(by_name) == ["image", "extra"]
    for w, (name, r) in zip(whole, by_name.items()):
        assert r.attrs["input"] == name
        np.testing.assert_allclose(r.values, w.values, rtol=1e-10, atol=1e-14)


def test_bad_inputs_are_named_one_line_each():
    m, (x1, x2) = model(), inputs()
    with pytest.raises(UnsupportedError, match=r"forward takes several inputs \(image, extra\), one input given"):
        attribx.explain(m, x1, "gradient")
    graph = attribx.translate(m, input_shape=((2, 6, 6), (4,)))
    with pytest.raises(InputError) as err:
        attribx.explain(graph, (x1[:, :1], x2[:, :3]), "gradient")
    lines = str(err.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("input 'image'") and lines[1].startswith("input 'extra'")
    with pytest.raises(InputError, match="missing: 'extra'"):
        attribx.explain(graph, x1, "gradient")
    with pytest.raises(InputError, match="different numbers of samples"):
        attribx.explain(graph, (x1, x2[:2]), "gradient")
    with pytest.raises(InputError, match="'other'"):
        attribx.explain(graph, {"image": x1, "other": x2}, "gradient")


def test_where_several_inputs_cannot_go_yet(tmp_path):
    pytest.importorskip("h5py")
    m, (x1, x2) = model(), inputs()
    rel = attribx.explain(m, (x1, x2), "gradient", target=0)
    with pytest.raises(StorageError, match="several inputs") as err:
        attribx.save(rel, tmp_path / "r.h5")
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(UnsupportedError, match="several inputs") as err:
        attribx.evaluate("pixel_flipping", m, (x1, x2), rel)
    assert len(str(err.value).splitlines()) == 1
    graph = attribx.translate(m, input_shape=((2, 6, 6), (4,)))
    with pytest.raises(UnsupportedError, match="evaluator 'pixel_flipping' takes models with one signal input"):
        attribx.evaluate("pixel_flipping", graph, x1.numpy(), rel[0])
    with pytest.raises(attribx.MethodError, match="several signal inputs"):
        attribx.explain(graph, (x1, x2), "attention_rollout")


def test_command_line_refuses_several_inputs_in_one_line(tmp_path, capsys):
    from attribx.cli import main
    m, (x1, x2) = model(), inputs()
    graph = attribx.translate(m, input_shape=((2, 6, 6), (4,)))
    graph.save(tmp_path / "two.npz")
    np.save(tmp_path / "x.npy", x1.numpy())
    code = main(["explain", str(tmp_path / "two.npz"), str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.h5")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "2 signal inputs" in err and "command line" in err and len(err.splitlines()) == 1


def test_streaming_and_dask_refuse_several_inputs_in_one_line(tmp_path):
    from attribx.streaming import explain_dataset
    m, (x1, x2) = model(), inputs()
    graph = attribx.translate(m, input_shape=((2, 6, 6), (4,)))
    for given in ((x1.numpy(), x2.numpy()), {"image": x1.numpy(), "extra": x2.numpy()}):
        with pytest.raises(UnsupportedError, match="several inputs, which streaming does not take") as err:
            explain_dataset(graph, given, tmp_path / "r.h5", "gradient")
        assert len(str(err.value).splitlines()) == 1
    with pytest.raises(UnsupportedError, match="explaining a data set .* one signal input"):
        explain_dataset(graph, x1.numpy(), tmp_path / "r.h5", "gradient")
    pytest.importorskip("dask.distributed")
    from attribx.distributed import explain_distributed
    with pytest.raises(UnsupportedError, match="several inputs, which streaming does not take"):
        explain_distributed(graph, (x1.numpy(), x2.numpy()), "gradient", scheduler=None)
    with pytest.raises(UnsupportedError, match="explain on a dask cluster takes models with one signal input"):
        explain_distributed(graph, x1.numpy(), "gradient", scheduler=None)
