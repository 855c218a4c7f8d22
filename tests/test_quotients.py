"""The quotient form of the relevance pass (:meth:`attribx.rules.Rule.carry`): between rules that take them, the
pass hands on s = R / z instead of R. It must give the numbers of the relevance form (``QUOTIENTS = False``,
each rule's ``__call__``) on every graph, rule mix and option, so the reference here is the pass itself with
quotients switched off, plus hand-derived cases where the two forms could part: a unit whose z is exactly 0
(LRP-0 counts 0/0 as 0), relevance and quotients reaching one node together, and masked (−∞) attention scores.
"""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import composite as C
from attribx import propagation
from attribx.rules import Epsilon, ZRule

from engine_cases import attention_graph, cnn_graph, method_params, mlp_graph, zoo_graph

ENGINES = ["numpy", "torch", "tensorflow"]
CASES = {
    "cnn": (cnn_graph, ["lrp.epsilon", "lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "lrp.epsilon_alpha2_beta1"]),
    "mlp": (mlp_graph, ["lrp.epsilon", "lrp.z_plus"]),
    "zoo": (zoo_graph, ["lrp.epsilon", "lrp.epsilon_plus_flat"]),
    "attention": (lambda: _attention(False), ["lrp.attn", "lrp.cp", "lrp.epsilon"]),
    "gated_attention": (lambda: _attention(True), ["lrp.attn", "lrp.cp"]),
}


def _attention(gated):
    return attention_graph(gated=gated)


def _both(monkeypatch, *args, **kw):
    """The explanation with quotients, then without (the relevance form)."""
    out = []
    for on in (True, False):
        monkeypatch.setattr(propagation, "QUOTIENTS", on)
        out.append(attribx.explain(*args, progress_bar=False, **kw))
    return out


def _close(a, b, what, rtol=1e-11):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(b).max()), 1e-300)
    assert np.abs(a - b).max() <= rtol * scale, f"{what}: relative difference {np.abs(a - b).max() / scale:.2e}"


def _engine(name):
    if name != "numpy":
        pytest.importorskip({"torch": "attribx_torch", "tensorflow": "attribx_tf"}[name])
    return name


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_quotients_give_the_relevance_forms_numbers(monkeypatch, case, engine):
    make, methods = CASES[case]
    graph, x = make()
    for method in methods:
        for eps in ((0.0, 1e-6, 0.3) if method in ("lrp.epsilon", "lrp.attn", "lrp.cp") else (None,)):
            params = dict(method_params(method), **({} if eps is None else {"epsilon": eps}))
            on, off = _both(monkeypatch, graph, x, method, target=1, engine=_engine(engine), **params)
            assert np.abs(off.values).sum() > 0
            _close(on.values, off.values, f"{case} {method} {params}")


@pytest.mark.parametrize("engine", ENGINES)
def test_latent_relevance_and_conservation_are_the_same(monkeypatch, engine):
    """``layers=`` and ``conservation=`` need R at nodes the quotients pass through: it is formed there."""
    graph, x = _attention(False)
    layers = [n.name for n in graph.nodes if n.op in ("linear", "layer_norm", "softmax", "matmul", "add")]
    on, off = _both(monkeypatch, graph, x, "lrp.attn", target=2, epsilon=0.0, layers=layers, conservation=True,
                    engine=_engine(engine))
    assert set(on.data_vars) == set(off.data_vars) and set(layers) <= set(on.data_vars)
    for name in on.data_vars:
        _close(on[name].values, off[name].values, name)


def test_a_zero_unit_reached_by_quotients_and_relevance_passes_nothing(monkeypatch):
    """Hand-derived. h = W₁x with W₁ = [[1, 1], [2, 0]], x = (1, −1): z₁ = 0, z₂ = 2. h feeds a linear layer
    (quotients) and a ReLU → sum (relevance): out = 3·h₁ + h₂ + relu(h₁) + relu(h₂) = 0 + 2 + 0 + 2 = 4. LRP-0
    gives h relevance (0, 2) from the linear and (0, 2) through the ReLU, so h₂ holds 4 and h₁ 0 (0/0 = 0);
    x gets x ⊙ W₁ᵀ(0, 4 / 2) = (1, −1) ⊙ (4, 0) = (4, 0). A quotient passed on at h₁ would give (10, −6)."""
    b = attribx.GraphBuilder("mixed_zero_unit")
    h = b.linear(b.input("x", (2,)), np.array([[1.0, 1.0], [2.0, 0.0]]), None, name="hidden")
    lin = b.linear(h, np.array([[3.0, 1.0]]), None, name="lin")
    act = b.reduce_sum(b.relu(h, name="relu"), axes=[1], keepdims=True, name="acts")
    g = b.build(b.add(lin, act, name="out"))
    for engine in ("numpy", "torch"):
        on, off = _both(monkeypatch, g, np.array([[1.0, -1.0]]), "lrp.epsilon", target=0, epsilon=0.0,
                        engine=_engine(engine))
        # (the sum of the ReLUs takes LRP's sum rule, stabilised by 1e-6)
        np.testing.assert_allclose(on.values, [[4.0, 0.0]], atol=1e-5)
        np.testing.assert_allclose(off.values, [[4.0, 0.0]], atol=1e-5)


def test_masked_scores_hold_no_relevance_when_formed_from_quotients(monkeypatch):
    """A causal mask adds −∞ above the diagonal: a quotient of 0 there stands for no relevance (not −∞ · 0 = NaN),
    whether the masked scores are kept (``layers=``) or reach a rule that takes no quotients."""
    rng = np.random.default_rng(2)
    b = attribx.GraphBuilder("causal")
    mask = np.triu(np.full((4, 4), -np.inf), k=1)
    s = b.softmax(b.add(b.input("x", (4, 4)), b.constant(mask), name="masked"), axis=-1, name="s")
    graph = b.build(b.linear(b.flatten(s), rng.normal(size=(2, 16)), name="fc"))
    x = rng.normal(size=(2, 4, 4))
    on, off = _both(monkeypatch, graph, x, "lrp.attn", target=0, epsilon=0.0, layers=["masked"])
    for res in (on, off):
        kept = res["masked"].values
        assert np.isfinite(kept).all() and (kept[:, mask == -np.inf] == 0).all()
    _close(on["relevance"].values, off["relevance"].values, "input")
    # the add takes a rule without a quotient form: the softmax forms the relevance itself
    comp = C.Composite([(C.op("add"), ("epsilon", {"epsilon": 0.0, "zero_bias": True})),
                        (C.op("softmax"), "softmax_taylor"),
                        (C.category("layer"), ("epsilon", {"epsilon": 0.0}))])
    on, off = _both(monkeypatch, graph, x, comp, target=0)
    assert np.isfinite(on.values).all() and (on.values[:, mask == -np.inf] == 0).all()
    _close(on.values, off.values, "identity on the masked add")


class _Shifted(ZRule):
    """A plugin-style rule with its own division: R / (z + 0.1) (not a quotient of R / z)."""

    name = "shifted_test"

    def divide(self, eng, R, z):
        return R / (z + 0.1)


class _Doubled(Epsilon):
    """A rule written outside attribx that changes what an attribx rule passes back."""

    name = "doubled_test"

    def __call__(self, ctx, relevance):
        return [None if r is None else 2 * r for r in super().__call__(ctx, relevance)]


def test_rules_written_elsewhere_that_change_the_relevance_form_get_relevance(monkeypatch):
    """The quotient form a subclass inherits computes its parent's numbers: a subclass from outside attribx that
    overrides ``__call__``, ``relevance``, ``split`` or ``divide`` (and not ``carry``) is handed relevance."""
    graph, x = mlp_graph()
    node = graph["fc1"]
    assert Epsilon(epsilon=0.0).takes_quotient(node, "layer")
    assert not _Shifted().takes_quotient(node, "layer") and not _Doubled().takes_quotient(node, "layer")
    plain = attribx.explain(graph, x, C.Composite([(C.op("linear"), ("epsilon", {"epsilon": 0.0}))]), target=0,
                            progress_bar=False)
    for rule, expected in ((_Doubled(epsilon=0.0), 8 * plain.values), (_Shifted(), None)):   # 3 linears: 2³
        on, off = _both(monkeypatch, graph, x, C.Composite([(C.op("linear"), rule)]), target=0)
        _close(on.values, off.values, rule.name)
        if expected is not None:
            _close(on.values, expected, rule.name)
