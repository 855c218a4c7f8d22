"""Our numbers against zennit and Captum (the PyTorch anchors), on VGG16, ResNet18 and a digits CNN.

zennit starts from whatever output relevance it is given; we pass it ours (the target's logit, one
hot), so the comparison is rule against rule. zennit needs its canonizers for batch norm and residual
adds; our graph passes and graph nodes do that for any architecture.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
zennit = pytest.importorskip("zennit")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("attribx_torch")

import attribx  # noqa: E402
from attribx.datasets.digits import load_digits_images, train_digits_cnn  # noqa: E402
from attribx.testing import relative_error  # noqa: E402

from zennit import composites as zc, rules as zr  # noqa: E402
from zennit.attribution import Gradient, IntegratedGradients  # noqa: E402
from zennit.core import Composite  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402
from zennit.types import Activation, AvgPool, BatchNorm, Convolution, Linear as AnyLinear  # noqa: E402

TOL = 1e-4


def engine():
    return "torch" if "torch" in attribx.plugins.registry().engines else "numpy"


def randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def trained_digits_cnn():
    pytest.importorskip("sklearn.datasets")
    x, y = load_digits_images()
    return train_digits_cnn(x, y, steps=60), x[:6]


MODELS = {}


def model_and_input(name):
    if name not in MODELS:
        torch.manual_seed(0)
        if name == "vgg16":
            model, canon = torchvision.models.vgg16(weights=None).eval(), []
            # at 224x224 the adaptive pool leaves its 7x7 input unchanged: our translator drops it, zennit
            # applies Norm to it (see test_identity_pool_keeps_relevance_that_zennit_drops); replacing it by
            # Identity compares the rules themselves
            model.avgpool = torch.nn.Identity()
            x = torch.randn(1, 3, 224, 224).numpy()
        elif name == "resnet18":
            # float64 and batch-norm eps = 0: zennit's canonizer leaves each merged batch norm computing
            # x / sqrt(1 + eps) (see test_zennit_canonizer_is_off_by_eps), and residual adds whose branches
            # nearly cancel amplify float32 rounding for input-independent rules (flat, w², z-box); with
            # both removed the rules themselves are compared, and agree to ~1e-11
            model = randomize_bn(torchvision.models.resnet18(weights=None)).eval()
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eps = 0.0
            model, canon = model.double(), [ResNetCanonizer()]
            x = torch.randn(2, 3, 64, 64, dtype=torch.float64).numpy()
        elif name == "upconv":
            # an encoder-decoder: zennit treats transposed convs as convolutions, as our composites do
            model = torch.nn.Sequential(
                torch.nn.Conv2d(2, 4, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), torch.nn.ReLU(),
                torch.nn.ConvTranspose2d(3, 2, (2, 3), stride=1, dilation=(1, 2), groups=1), torch.nn.ReLU(),
                torch.nn.Flatten(), torch.nn.Linear(2 * 9 * 12, 5)).double().eval()
            x, canon = torch.randn(3, 2, 8, 8, dtype=torch.float64).numpy(), []
        else:
            (model, x), canon = trained_digits_cnn(), []
        MODELS[name] = (model, x, canon)
    return MODELS[name]


def zennit_attribution(model, x, composite, targets, onehot_only=False):
    xt = torch.tensor(x, requires_grad=True)
    with torch.no_grad():
        out = model(xt)
    mask = torch.nn.functional.one_hot(torch.tensor(targets), out.shape[1]).to(out)
    init = (lambda o: mask) if onehot_only else (lambda o: mask * o)
    with Gradient(model=model, composite=composite) as attributor:
        _, rel = attributor(xt, init)
    return rel.detach().numpy()


def base_map(stabilizer=1e-6):
    return [(Activation, zr.Pass()), (zennit.layer.Sum, zr.Norm(stabilizer)), (AvgPool, zr.Norm(stabilizer)),
            (BatchNorm, zr.Pass())]


NAMED = {
    "lrp.epsilon_gamma_box": (lambda c: zc.EpsilonGammaBox(low=-3.0, high=3.0, canonizers=c), {"low": -3.0, "high": 3.0}),
    "lrp.epsilon_plus": (lambda c: zc.EpsilonPlus(canonizers=c), {}),
    "lrp.epsilon_plus_flat": (lambda c: zc.EpsilonPlusFlat(canonizers=c), {}),
    "lrp.epsilon_alpha2_beta1": (lambda c: zc.EpsilonAlpha2Beta1(canonizers=c), {}),
    "lrp.epsilon_alpha2_beta1_flat": (lambda c: zc.EpsilonAlpha2Beta1Flat(canonizers=c), {}),
}

SINGLE = {
    "lrp.epsilon": (lambda: zr.Epsilon(epsilon=0.25), {"epsilon": 0.25}),
    "lrp.gamma": (lambda: zr.Gamma(gamma=0.25), {"gamma": 0.25}),
    "lrp.alpha_beta": (lambda: zr.AlphaBeta(alpha=2.0, beta=1.0), {}),
    "lrp.z_plus": (lambda: zr.ZPlus(), {}),
    "lrp.flat": (lambda: zr.Flat(), {}),
    "lrp.w_square": (lambda: zr.WSquare(), {}),
    "lrp.z_box": (lambda: zr.ZBox(low=-3.0, high=3.0), {"low": -3.0, "high": 3.0}),
}

ZOO = ["digits", "resnet18", "vgg16", "upconv"]


def ours(name, method, x, targets, **params):
    model, _, _ = model_and_input(name)
    return attribx.explain(model, x, method, target=targets, engine=engine(), **params).values


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("method", list(NAMED))
def test_named_composites_equal_zennit(name, method):
    model, x, canon = model_and_input(name)
    make, params = NAMED[method]
    targets = np.arange(len(x)) % 10
    ref = zennit_attribution(model, x, make(canon), targets)
    assert relative_error(ours(name, method, x, targets, **params), ref) <= TOL


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("method", list(SINGLE))
def test_single_rules_equal_zennit_layer_maps(name, method):
    model, x, canon = model_and_input(name)
    make, params = SINGLE[method]
    comp = zc.LayerMapComposite(layer_map=base_map() + [(AnyLinear, make())], canonizers=canon)
    targets = np.arange(len(x)) % 10
    ref = zennit_attribution(model, x, comp, targets)
    assert relative_error(ours(name, method, x, targets, **params), ref) <= TOL


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("method, composite", [("gradient", None), ("deconvnet", zc.DeconvNet),
                                               ("guided_backprop", zc.GuidedBackprop)])
def test_gradient_family_equals_zennit(name, method, composite):
    model, x, canon = model_and_input(name)
    targets = np.arange(len(x)) % 10
    ref = zennit_attribution(model, x, composite() if composite else None, targets, onehot_only=True)
    assert relative_error(ours(name, method, x, targets), ref) <= TOL


@pytest.mark.parametrize("name", ["digits", "resnet18"])
def test_integrated_gradients_equals_zennit(name):
    model, x, _ = model_and_input(name)
    targets = np.arange(len(x)) % 10
    xt = torch.tensor(x, requires_grad=True)
    with torch.no_grad():
        n_out = model(xt).shape[1]
    mask = torch.nn.functional.one_hot(torch.tensor(targets), n_out).to(xt.dtype)
    with IntegratedGradients(model=model, n_iter=10) as attributor:
        _, ref = attributor(xt, lambda o: mask)
    got = ours(name, "integrated_gradients", x, targets, steps=10)
    assert relative_error(got, ref.detach().numpy()) <= TOL


def test_smoothgrad_is_the_mean_gradient_at_the_same_noisy_points():
    model, x, _ = model_and_input("digits")
    targets = np.arange(len(x)) % 10
    noise, samples, seed = 0.2, 5, 7
    got = ours("digits", "smoothgrad", x, targets, noise=noise, samples=samples, seed=seed)
    rng = np.random.default_rng(seed)
    std = noise * (x.max(axis=(1, 2, 3), keepdims=True) - x.min(axis=(1, 2, 3), keepdims=True))
    ref = np.mean([zennit_attribution(model, (x + rng.standard_normal(x.shape) * std).astype(np.float32), None,
                                      targets, onehot_only=True) for _ in range(samples)], axis=0)
    assert relative_error(got, ref) <= TOL


def test_captum_lrp_equals_uniform_epsilon_on_vgg16():
    captum = pytest.importorskip("captum.attr")
    _, x, _ = model_and_input("vgg16")
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()   # with its adaptive pool: Captum has a rule for it
    target = 3
    lrp = captum.LRP(model)
    ref = lrp.attribute(torch.tensor(x, requires_grad=True), target=target).detach().numpy()
    # Captum's default: the epsilon rule with epsilon 1e-9 on every layer, starting from the target's logit
    got = attribx.explain(model, x, "lrp.epsilon", target=target, engine=engine(), epsilon=1e-9).values
    assert relative_error(got, ref) <= TOL


def test_identity_pool_keeps_relevance_that_zennit_drops():
    """Deliberate difference: an adaptive average pool that changes nothing is dropped from our graph, so
    rules that give relevance to inactive units (flat) conserve it; zennit's Norm on that pool divides
    0 by (0 + ε) there and loses it."""
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    x = torch.randn(1, 3, 224, 224).numpy()
    comp = zc.LayerMapComposite(layer_map=base_map() + [(AnyLinear, zr.Flat())])
    ref = zennit_attribution(model, x, comp, [0])
    ds = attribx.explain(model, x, "lrp.flat", target=0, conservation=True, engine=engine())
    assert "avgpool" not in attribx.translate(model, input_shape=(3, 224, 224))
    score = ds["score"].values[0]
    assert abs(ds["relevance"].values.sum() - score) <= 1e-4 * abs(score)
    assert abs(ref.sum() - score) > 0.05 * abs(score)


def test_zennit_canonizer_is_off_by_eps():
    """Deliberate difference: zennit's merged batch norms still divide by sqrt(1 + eps); our fold is exact."""
    torch.manual_seed(1)
    model = randomize_bn(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        native = model(x).numpy()
        canon = ResNetCanonizer()
        handles = canon.apply(model)
        try:
            merged = model(x).numpy()
        finally:
            for h in handles:
                h.remove()
    ours = attribx.forward(model, x.numpy(), engine=engine())
    assert relative_error(ours, native) <= 1e-5
    assert relative_error(merged, native) > relative_error(ours, native)


def test_zennit_without_canonizer_doubles_at_functional_adds():
    """Deliberate difference: our graph sees `out + identity`; zennit's hooks do not without ResNetCanonizer,
    so its relevance is not conserved there, ours is."""
    model, x, _ = model_and_input("resnet18")
    targets = np.arange(len(x)) % 10
    plain = zennit_attribution(model, x, zc.EpsilonPlus(canonizers=[]), targets)
    canon = zennit_attribution(model, x, zc.EpsilonPlus(canonizers=[ResNetCanonizer()]), targets)
    mine = ours("resnet18", "lrp.epsilon_plus", x, targets)
    assert relative_error(mine, canon) <= TOL
    assert relative_error(plain, canon) > 0.1
