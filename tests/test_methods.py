"""The gradient family, output initialisations, named composites and conservation, against
hand-derived results."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import quad_vec

import attribx
from attribx import GraphBuilder
from attribx import composite as C
from attribx.plugins import registry
from attribx.rules import (AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, Route, WinnerTakesAll, ZBox, ZPlus)
from attribx.testing import assert_conserves, relative_error


def two_layer(rng, bias=True, act="relu", n_in=5, n_hidden=7, n_out=4):
    w1, w2 = rng.normal(size=(n_hidden, n_in)), rng.normal(size=(n_out, n_hidden))
    b1 = rng.normal(size=n_hidden) if bias else None
    b2 = rng.normal(size=n_out) if bias else None
    b = GraphBuilder()
    h = b.input("x", (n_in,))
    h = getattr(b, act)(b.linear(h, w1, b1, name="fc1"), name="act")
    return b.build(b.linear(h, w2, b2, name="fc2")), (w1, b1, w2, b2)


def test_deconvnet_and_guided_backprop_hand_derived(rng):
    g, (w1, b1, w2, b2) = two_layer(rng)
    x = rng.normal(size=(6, 5))
    t = rng.integers(0, 4, 6)
    z1 = x @ w1.T + b1
    back = w2[t]                                     # signal arriving at the ReLU's output
    grad = (back * (z1 > 0)) @ w1
    deconv = np.maximum(back, 0) @ w1                # ReLU passes the positive signal, input ignored
    guided = (back * (z1 > 0) * (back > 0)) @ w1
    np.testing.assert_allclose(attribx.explain(g, x, "gradient", target=t).values, grad, rtol=1e-12)
    np.testing.assert_allclose(attribx.explain(g, x, "deconvnet", target=t).values, deconv, rtol=1e-12)
    np.testing.assert_allclose(attribx.explain(g, x, "guided_backprop", target=t).values, guided, rtol=1e-12)


def test_sensitivity_is_squared_gradient_summed_over_channels(rng):
    b = GraphBuilder()
    x = b.input("x", (3, 6, 6))
    h = b.relu(b.conv(x, rng.normal(size=(4, 3, 3, 3)), padding=1))
    g = b.build(b.linear(b.flatten(h), rng.normal(size=(5, 144))))
    xs = rng.normal(size=(2, 3, 6, 6))
    grad = attribx.explain(g, xs, "gradient", target=3)
    sens = attribx.explain(g, xs, "sensitivity", target=3)
    assert sens.dims == ("sample", "height", "width")
    np.testing.assert_allclose(sens.values, (grad.values ** 2).sum(axis=1), rtol=1e-12)


def tanh_net(rng):
    w1, w2 = rng.normal(size=(6, 4)) * 0.7, rng.normal(size=(3, 6))
    b1 = rng.normal(size=6) * 0.3
    b = GraphBuilder()
    h = b.tanh(b.linear(b.input("x", (4,)), w1, b1))
    return b.build(b.linear(h, w2)), (w1, b1, w2)


def analytic_grad(x, params, t):
    w1, b1, w2 = params
    return (w2[t] * (1 - np.tanh(x @ w1.T + b1) ** 2)) @ w1


def test_integrated_gradients_right_riemann_sum_and_exact_limit(rng):
    g, params = tanh_net(rng)
    x = rng.normal(size=(1, 4))
    base = np.full((1, 4), 0.2)
    for steps in (1, 7):
        ig = attribx.explain(g, x, "integrated_gradients", target=1, baseline=0.2, steps=steps).values
        mean = np.mean([analytic_grad(base + k / steps * (x - base), params, 1) for k in range(1, steps + 1)], axis=0)
        np.testing.assert_allclose(ig, (x - base) * mean, rtol=1e-10)
    exact = (x - base) * quad_vec(lambda a: analytic_grad(base + a * (x - base), params, 1), 0, 1)[0]
    err = [relative_error(attribx.explain(g, x, "integrated_gradients", target=1, baseline=0.2, steps=s).values,
                          exact) for s in (10, 100, 1000)]
    assert err[2] < err[1] < err[0] and err[2] < 2e-3
    # completeness: attributions sum to f(x) - f(baseline)
    f = attribx.forward(g, x)[0, 1] - attribx.forward(g, base)[0, 1]
    assert abs(exact.sum() - f) < 1e-8


def test_integrated_gradients_exact_on_linear_model(rng):
    w = rng.normal(size=(3, 5))
    b = GraphBuilder()
    g = b.build(b.linear(b.input("x", (5,)), w, rng.normal(size=3)))
    x = rng.normal(size=(4, 5))
    ig = attribx.explain(g, x, "integrated_gradients", target=2, steps=3).values
    np.testing.assert_allclose(ig, x * w[2], rtol=1e-12)


def test_smoothgrad_reproducible_and_converges(rng):
    g, params = tanh_net(rng)
    x = rng.normal(size=(3, 4))
    a = attribx.explain(g, x, "smoothgrad", target=0, noise=0.2, samples=8, seed=3).values
    b = attribx.explain(g, x, "smoothgrad", target=0, noise=0.2, samples=8, seed=3).values
    c = attribx.explain(g, x, "smoothgrad", target=0, noise=0.2, samples=8, seed=4).values
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    grad = analytic_grad(x, params, 0)
    np.testing.assert_allclose(attribx.explain(g, x, "smoothgrad", target=0, noise=0.0, samples=3).values, grad,
                               rtol=1e-12)
    small = attribx.explain(g, x, "smoothgrad", target=0, noise=1e-4, samples=50).values
    assert relative_error(small, grad) < 1e-3
    # the mean over many noisy gradients approaches the Gaussian-smoothed gradient (Monte Carlo reference)
    std = 0.3 * (x.max(1, keepdims=True) - x.min(1, keepdims=True))
    draws = np.random.default_rng(123).standard_normal((20000,) + x.shape) * std
    reference = np.mean([analytic_grad(x + d, params, 0) for d in draws], axis=0)
    sg = attribx.explain(g, x, "smoothgrad", target=0, noise=0.3, samples=400, seed=1).values
    assert relative_error(sg, reference) < 0.05


def test_smoothgrad_targets_come_from_the_clean_input(rng):
    g, _ = tanh_net(rng)
    x = rng.normal(size=(5, 4))
    sg = attribx.explain(g, x, "smoothgrad", noise=2.0, samples=4)
    np.testing.assert_array_equal(sg.target.values, attribx.forward(g, x).argmax(1))


# -- output initialisations ----------------------------------------------------------------------------
def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_probability_and_log_odds_initialisations(rng):
    g, _ = two_layer(rng, bias=False)
    x = rng.normal(size=(5, 5))
    z = attribx.forward(g, x)
    t = z.argmax(1)
    p = softmax(z)[np.arange(5), t]
    r = attribx.explain(g, x, "lrp.zero", output_init="softmax").values.sum(1)
    np.testing.assert_allclose(r, p, rtol=1e-10)
    r = attribx.explain(g, x, "lrp.zero", output_init="log_odds").values.sum(1)
    np.testing.assert_allclose(r, np.log(p / (1 - p)), rtol=1e-10)


def test_contrast_initialisation_equals_the_fused_difference_layer(rng):
    """Seed 001: z_cc'' = Σ a_k (w_kc − w_kc''), R_cc'' = z_cc'' softmin; LRP-0 through the fused layer."""
    g, (w1, b1, w2, b2) = two_layer(rng, bias=True)
    x = rng.normal(size=(4, 5))
    c = 2
    ours = attribx.explain(g, x, "lrp.zero", target=c, output_init="contrast").values
    others = [k for k in range(4) if k != c]
    fused_w = np.stack([w2[c] - w2[k] for k in others])
    fused_b = np.stack([b2[c] - b2[k] for k in others])
    b = GraphBuilder()
    h = b.relu(b.linear(b.input("x", (5,)), w1, b1, name="fc1"))
    fused = b.build(b.linear(h, fused_w, fused_b, name="pairs"))
    zp = attribx.forward(fused, x)
    soft = np.exp(-zp) / np.exp(-zp).sum(1, keepdims=True)
    reference = attribx.explain(fused, x, "lrp.zero", output_init=zp * soft).values
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-12)


def test_contrast_between_two_classes(rng):
    g, (w1, _, w2, _) = two_layer(rng, bias=False)
    x = rng.normal(size=(3, 5))
    r = attribx.explain(g, x, "lrp.zero", target=("contrast", 1, 3))
    z = attribx.forward(g, x)
    np.testing.assert_allclose(r.values.sum(1), z[:, 1] - z[:, 3], rtol=1e-10)
    grad = attribx.explain(g, x, "gradient", target=("contrast", 1, 3)).values
    np.testing.assert_allclose(grad, attribx.explain(g, x, "gradient", target=1).values
                               - attribx.explain(g, x, "gradient", target=3).values, rtol=1e-12)
    with pytest.raises(attribx.InputError, match="two different classes"):
        attribx.explain(g, x, "lrp.zero", target=("contrast", 1, 1))


def test_user_array_initialisation(rng):
    g, _ = two_layer(rng, bias=False)
    x = rng.normal(size=(3, 5))
    init = rng.normal(size=(3, 4))
    r = attribx.explain(g, x, "lrp.zero", output_init=init).values
    np.testing.assert_allclose(r.sum(1), init.sum(1), rtol=1e-10)
    with pytest.raises(attribx.InputError, match="shape"):
        attribx.explain(g, x, "lrp.zero", output_init=np.ones((3, 2)))


# -- composites --------------------------------------------------------------------------------------
def cnn(rng, bias=True):
    b = GraphBuilder("cnn")
    x = b.input("x", (2, 8, 8))
    h = b.relu(b.conv(x, rng.normal(size=(4, 2, 3, 3)), rng.normal(size=4) if bias else None, padding=1,
                      name="conv1"), name="relu1")
    h2 = b.relu(b.conv(h, rng.normal(size=(4, 4, 3, 3)) * 0.4, rng.normal(size=4) if bias else None, padding=1,
                       name="conv2"), name="relu2")
    h = b.add(h, h2, name="skip")
    h = b.max_pool(h, 2, name="maxpool")
    h = b.avg_pool(h, 2, name="avgpool")
    h = b.flatten(h, name="flat")
    h = b.relu(b.linear(h, rng.normal(size=(8, 16)), rng.normal(size=8) if bias else None, name="fc1"), name="relu3")
    return b.build(b.linear(h, rng.normal(size=(3, 8)), rng.normal(size=3) if bias else None, name="fc2"))


def test_named_composites_assign_zennits_layer_map(rng):
    g = cnn(rng)
    reg = registry()
    rules = reg.method("lrp.epsilon_gamma_box").rules(g, reg.method("lrp.epsilon_gamma_box").resolve(
        {"low": -3.0, "high": 3.0}))
    assert isinstance(rules["conv1"], ZBox) and rules["conv1"].params["low"] == -3.0
    assert isinstance(rules["conv2"], Gamma) and rules["conv2"].gamma == 0.25
    assert isinstance(rules["fc1"], Epsilon) and isinstance(rules["fc2"], Epsilon)
    assert isinstance(rules["relu1"], Pass) and isinstance(rules["skip"], Norm)
    assert isinstance(rules["maxpool"], WinnerTakesAll) and isinstance(rules["avgpool"], Norm)
    assert isinstance(rules["flat"], Route)
    rules = reg.method("lrp.epsilon_plus_flat").rules(g, reg.method("lrp.epsilon_plus_flat").resolve({}))
    assert isinstance(rules["conv1"], Flat) and isinstance(rules["conv2"], ZPlus)
    rules = reg.method("lrp.epsilon_alpha2_beta1").rules(g, {"epsilon": 0.1, "stabilizer": 1e-6})
    assert isinstance(rules["conv1"], AlphaBeta) and rules["conv1"].alpha == 2.0 and rules["fc1"].epsilon == 0.1
    with pytest.raises(attribx.MethodError, match="z_box.*low=.*high="):
        attribx.explain(g, rng.normal(size=(1, 2, 8, 8)), "lrp.epsilon_gamma_box")


def test_composite_entries_first_match_wins_by_name_position_and_op(rng):
    g = cnn(rng)
    comp = C.Composite([
        (C.name("fc*"), ("epsilon", {"epsilon": 0.5})),
        (C.first("layer"), "flat"),
        (C.last("conv"), ("alpha_beta", {"alpha": 1.0, "beta": 0.0})),
        (C.op("conv", "linear"), "z_plus"),
    ], name="mine")
    rules = comp.assign(g)
    assert isinstance(rules["fc1"], Epsilon) and rules["fc2"].epsilon == 0.5
    assert isinstance(rules["conv1"], Flat)
    assert isinstance(rules["conv2"], AlphaBeta) and rules["conv2"].beta == 0.0
    x = rng.normal(size=(2, 2, 8, 8))
    rel = attribx.explain(g, x, comp, target=1)
    assert rel.attrs["method"] == "mine" and np.isfinite(rel.values).all()


def test_a_rule_on_an_op_it_does_not_handle_is_an_error(rng):
    g = cnn(rng)
    with pytest.raises(attribx.UnsupportedError, match="'relu1'.*'gamma'.*does not apply"):
        C.Composite([(C.op("relu"), "gamma"), (C.category("layer"), "epsilon")]).assign(g)
    with pytest.raises(attribx.UnsupportedError, match="node 'conv1': no rule for op 'conv'.*attribx_rules"):
        C.Composite([(C.op("linear"), "epsilon")], name="partial").assign(g)


def test_max_pool_proportional_option(rng):
    b = GraphBuilder()
    x = b.input("x", (1, 2, 2))
    g = b.build(b.flatten(b.max_pool(x, 2)))
    xs = np.array([[[[1.0, 3.0], [0.0, 4.0]]]])
    wta = attribx.explain(g, xs, "lrp.epsilon", target=0).values[0, 0]
    np.testing.assert_allclose(wta, [[0, 0], [0, 4.0]])
    prop = attribx.explain(g, xs, C.Composite([(C.op("max_pool"), "proportional")]), target=0).values[0, 0]
    np.testing.assert_allclose(prop, np.array([[1.0, 3.0], [0.0, 4.0]]) / 8 * 4, rtol=1e-5)


@pytest.mark.parametrize("method, params", [
    ("lrp.zero", {}), ("lrp.z_plus", {"zero_bias": True}), ("lrp.flat", {}),
    ("lrp.w_square", {"zero_bias": True}), ("lrp.epsilon_plus", {}), ("lrp.epsilon_plus_flat", {}),
])
def test_conserving_rules_conserve(rng, method, params):
    g = cnn(rng, bias=False)
    x = np.abs(rng.normal(size=(4, 2, 8, 8)))      # non-negative inputs: no zero denominators from signs
    rtol = 1e-6 if method in ("lrp.zero", "lrp.flat", "lrp.w_square") else 1e-4
    ds = assert_conserves(g, x, method, rtol=rtol, **params)
    assert ds["conservation"].sizes["node"] > 5


def test_biased_epsilon_does_not_conserve_and_the_report_shows_it(rng):
    g = cnn(rng, bias=True)
    with pytest.raises(AssertionError, match="does not conserve"):
        assert_conserves(g, rng.normal(size=(2, 2, 8, 8)), "lrp.epsilon", epsilon=1.0)


@pytest.mark.parametrize("arrives", ["everywhere", "where_z_positive"])
@pytest.mark.parametrize("zero_bias", [False, True])
def test_gamma_after_relu_uses_the_fast_form_with_the_same_numbers(rng, zero_bias, arrives):
    """On non-negative inputs γ takes a shortcut (one extra forward; with relevance only where z > 0, as
    behind a ReLU, one transposed op); it must equal the general form."""
    from reference_lrp import lrp_gamma as gamma_reference
    w, bias = rng.normal(size=(4, 6)), rng.normal(size=4)
    b = GraphBuilder()
    h = b.relu(b.input("x", (6,)), name="relu")
    g = b.build(b.linear(h, w, bias, name="fc"))
    x = rng.normal(size=(5, 6))
    x[0, :3] = 0.0
    R = rng.normal(size=(5, 4))
    if arrives == "where_z_positive":
        R = np.where(np.maximum(x, 0) @ w.T + bias > 0, R, 0.0)
        assert 0 < np.count_nonzero(R) < R.size
    comp = C.Composite([(C.op("linear"), ("gamma", {"gamma": 0.3, "zero_bias": zero_bias}))])
    ours = attribx.explain(g, x, comp, output_init=R).values
    ref = gamma_reference(np.maximum(x, 0), w.T, bias, R, gamma=0.3, zero_bias=zero_bias)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
