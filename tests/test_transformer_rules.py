"""AttnLRP (``lrp.attn``) and CP-LRP (``lrp.cp``) on a hand-built attention block.

The independent reference is a torch-autograd model of the same block written here from the papers (not from
attribx, not from LXT): the standard deviation of each norm detached, each factor of a product of two signals
with its gradient halved (AttnLRP's uniform rule), GELU / SiLU by the identity rule (gradient scaled by
f(x) / x), softmax and linear layers plain; for CP-LRP the attention weights and the gate detached instead.
Its gradient × input is LRP-0 of those rules, which ``epsilon=0`` must give. Conservation is checked per node.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import textwrap

import numpy as np
import pytest

import attribx
from attribx import composite as C
from attribx.engines.numpy_engine import NumpyEngine
from attribx.propagation import ancestors, propagate, run_forward
from attribx.rules import ConstantFactor, Gamma, SoftmaxTaylor, Uniform
from attribx.testing import relative_error
from attribx.transformer import attn_lrp_composite, constant_factors

from engine_cases import attention_graph

torch = pytest.importorskip("torch")

VARIANTS = [pytest.param(False, id="gelu_layer_norm"), pytest.param(True, id="gated_rms_norm")]


# ----------------------------------------------------------------------------------------------
# the torch reference


class HalfGradient(torch.autograd.Function):
    """y = x; the gradient is halved (one factor's equal share of a product of two signals)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g / 2


class IdentityRule(torch.autograd.Function):
    """y = f(x); gradient g · f(x) / x, so that x · grad_x = y · grad_y (relevance passes unchanged)."""

    @staticmethod
    def forward(ctx, x, fn):
        y = fn(x)
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * y / x, None


def reference_relevance(graph, x, target, variant, gated):
    """x ⊙ ∂logit/∂x of the block with the rules built into its backward pass."""
    w = {k: None if v is None else torch.as_tensor(v) for k, v in graph.meta["weights"].items()}
    attn = variant == "attn"

    def lin(h, key):
        y = h @ w[key].T
        return y if w.get(f"{key}_bias") is None else y + w[f"{key}_bias"]

    def layer_norm(h, scale, bias):
        c = h - h.mean(-1, keepdim=True)
        y = c / ((c * c).mean(-1, keepdim=True) + 1e-5).sqrt().detach() * scale
        return y if bias is None else y + bias

    def rms_norm(h, scale):
        return h / ((h * h).mean(-1, keepdim=True) + 1e-6).sqrt().detach() * scale

    def product(a, b, mul):
        if attn:
            return mul(HalfGradient.apply(a), HalfGradient.apply(b))
        return mul(a, b)

    xt = torch.as_tensor(x).requires_grad_(True)
    a = layer_norm(xt, w["ln1_scale"], w["ln1_bias"])
    q, k, v = lin(a, "q"), lin(a, "k"), lin(a, "v")
    if not attn:
        q, k = q.detach(), k.detach()       # CP-LRP: the attention weights are constants
    p = torch.softmax(product(q, k.transpose(1, 2), torch.matmul) / np.sqrt(x.shape[-1]), dim=-1)
    h = xt + lin(product(p, v, torch.matmul), "o")
    if gated:
        m = rms_norm(h, w["ln2_scale"])
        gate = IdentityRule.apply(lin(m, "gate"), torch.nn.functional.silu)
        f = lin(product(gate if attn else gate.detach(), lin(m, "up"), torch.mul), "down")
    else:
        m = layer_norm(h, w["ln2_scale"], w["ln2_bias"])
        f = lin(IdentityRule.apply(lin(m, "up"), torch.nn.functional.gelu), "down")
    logits = lin((h + f)[:, 0], "head")
    (grad,) = torch.autograd.grad(logits[:, target].sum(), xt)
    return (xt * grad).detach().numpy(), logits[:, target].detach().numpy()


@pytest.mark.parametrize("gated", VARIANTS)
@pytest.mark.parametrize("method", ["lrp.attn", "lrp.cp"])
@pytest.mark.parametrize("target", [0, 2])
def test_epsilon_zero_equals_the_torch_reference(method, gated, target):
    graph, x = attention_graph(4 if gated else 3, gated=gated)
    ours = attribx.explain(graph, x, method, target=target, epsilon=0.0)
    ref, logit = reference_relevance(graph, x, target, method.split(".")[1], gated)
    np.testing.assert_allclose(attribx.forward(graph, x)[:, target], logit, rtol=1e-12)
    assert relative_error(ours.values, ref) <= 1e-8


# ----------------------------------------------------------------------------------------------
# LXT 2.1 itself (a numerical reference only: its licence allows personal and scientific use), when its venv is
# there: the same block built from LXT's own rule functions, in a subprocess (LXT patches torch code globally)

LXT_PYTHON = pathlib.Path.home() / ".cache/attribx/lxt-venv/bin/python"
LXT_SCRIPT = textwrap.dedent("""
    import sys
    from types import SimpleNamespace
    import numpy as np
    import torch
    import torch.nn.functional as F
    from lxt.efficient.patches import layer_norm_forward, rms_norm_forward
    from lxt.efficient.rules import divide_gradient, identity_rule_implicit, stop_gradient

    cases = np.load(sys.argv[1], allow_pickle=False)
    out = {}
    for key in sorted({k.split("/")[0] for k in cases.files}):
        d = {k.split("/", 1)[1]: cases[k] for k in cases.files if k.startswith(key + "/")}
        w = {k[2:]: torch.as_tensor(v) for k, v in d.items() if k.startswith("w_")}
        attn, gated, target = str(d["variant"]) == "attn", bool(d["gated"]), int(d["target"])
        x = torch.as_tensor(d["x"]).requires_grad_(True)

        def lin(h, k):
            y = h @ w[k].T
            return y + w[k + "_bias"] if k + "_bias" in w else y

        def norm(h, name):
            return layer_norm_forward(SimpleNamespace(eps=1e-5, weight=w[name + "_scale"],
                                                      bias=w.get(name + "_bias")), h)

        a = norm(x, "ln1")
        q, k, v = lin(a, "q"), lin(a, "k"), lin(a, "v")
        if not attn:
            q, k = stop_gradient(q), stop_gradient(k)
        scores = q @ k.transpose(1, 2)
        p = torch.softmax((divide_gradient(scores, 2) if attn else scores) / x.shape[-1] ** 0.5, dim=-1)
        context = p @ v
        h = x + lin(divide_gradient(context, 2) if attn else context, "o")
        if gated:
            m = rms_norm_forward(SimpleNamespace(variance_epsilon=1e-6, weight=w["ln2_scale"]), h)
            g = identity_rule_implicit(F.silu, lin(m, "gate"))
            u = (g if attn else stop_gradient(g)) * lin(m, "up")
            f = lin(divide_gradient(u, 2) if attn else u, "down")
        else:
            f = lin(identity_rule_implicit(F.gelu, lin(norm(h, "ln2"), "up")), "down")
        logits = lin((h + f)[:, 0], "head")
        (grad,) = torch.autograd.grad(logits[:, target].sum(), x)
        out[key] = (x * grad).detach().numpy()
    np.savez(sys.argv[2], **out)
""")
LXT_CASES = [(m, gated, t) for m in ("lrp.attn", "lrp.cp") for gated in (False, True) for t in (0, 2)]


@pytest.fixture(scope="module")
def lxt_relevance(tmp_path_factory):
    """Input relevance from LXT's rule functions for every case of LXT_CASES, in one subprocess."""
    if not LXT_PYTHON.exists():
        pytest.skip(f"no LXT venv at {LXT_PYTHON} (see the LXT notes of issue 19)")
    tmp = tmp_path_factory.mktemp("lxt")
    cases = {}
    for method, gated, target in LXT_CASES:
        graph, x = attention_graph(4 if gated else 3, gated=gated)
        key = f"{method}-{gated}-{target}"
        cases.update({f"{key}/w_{k}": v for k, v in graph.meta["weights"].items() if v is not None})
        cases.update({f"{key}/x": x, f"{key}/target": target, f"{key}/gated": gated,
                      f"{key}/variant": method.split(".")[1]})
    np.savez(tmp / "cases.npz", **cases)
    (tmp / "lxt_block.py").write_text(LXT_SCRIPT)
    env = {**os.environ, "USE_TF": "0", "TRANSFORMERS_NO_TF": "1", "USE_TORCH": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([str(LXT_PYTHON), str(tmp / "lxt_block.py"), str(tmp / "cases.npz"), str(tmp / "out.npz")],
                          capture_output=True, text=True, env=env, timeout=600)
    if done.returncode and "No module named 'lxt'" in done.stderr:
        pytest.skip("lxt is not importable in its venv")
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(tmp / "out.npz"))


@pytest.mark.parametrize("method,gated,target", LXT_CASES)
def test_epsilon_zero_equals_lxt(lxt_relevance, method, gated, target):
    """LXT's numbers: to 1e-8 with layer norms; LXT computes RMS norm in float32 (``rms_norm_forward`` casts),
    so the gated block agrees to float32's precision only."""
    graph, x = attention_graph(4 if gated else 3, gated=gated)
    ours = attribx.explain(graph, x, method, target=target, epsilon=0.0)
    assert relative_error(ours.values, lxt_relevance[f"{method}-{gated}-{target}"]) <= (1e-5 if gated else 1e-8)


# ----------------------------------------------------------------------------------------------
# conservation, per node


def _flows(graph, x, method, epsilon, target=1):
    """(relevance at each node's output, what its rule passed back, its output), per sample, and the logit."""
    eng = NumpyEngine()
    start = graph.output
    rules = attribx.plugins.registry().methods[method].rules(graph, {"epsilon": epsilon})
    order = ancestors(graph, start)

    def init(scores):
        r = np.zeros_like(scores)
        r[:, target] = scores[:, target]
        return r

    result = propagate(graph, eng, x, rules, init, start, keep=order, trace=True)
    acts = run_forward(graph, eng, x)
    return result, acts, rules, acts[start][:, target]


def _absorbed(rule, r, z, epsilon):
    """What ε takes of relevance r at a node with output z under an ε rule: Σ r · ε·sign(z) / (z + ε·sign(z))."""
    if epsilon == 0 or rule.name in ("pass", "route"):
        return np.zeros(len(r))
    sz = np.where(z >= 0, 1.0, -1.0)
    return (r * epsilon * sz / (z + epsilon * sz)).reshape(len(r), -1).sum(axis=1)


@pytest.mark.parametrize("gated", VARIANTS)
@pytest.mark.parametrize("epsilon", [0.0, 0.05])
def test_cp_lrp_conserves_per_node_on_a_bias_free_block(gated, epsilon):
    """Every node passes on what it receives, less exactly what ε absorbs; so input relevance + ε's share =
    the logit (without ε: exactly the logit)."""
    graph, x = attention_graph(5, bias=False, gated=gated)
    result, acts, rules, logit = _flows(graph, x, "lrp.cp", epsilon)
    total_absorbed = np.zeros(len(x))
    for name, (got, passed) in result.flow.items():
        absorbed = _absorbed(rules[name], result.relevance[name], acts[name], epsilon)
        np.testing.assert_allclose(got - passed, absorbed, atol=1e-6 * max(1.0, np.abs(got).max()), err_msg=name)
        total_absorbed += absorbed
    r_in = result.relevance["x"].reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(r_in + total_absorbed, logit, atol=1e-6)
    if epsilon == 0:
        np.testing.assert_allclose(r_in, logit, rtol=1e-10)


@pytest.mark.parametrize("gated", VARIANTS)
def test_attn_lrp_conserves_at_every_node_but_the_softmax(gated):
    """The softmax rule (Proposition 3.1) is gradient × input and does not conserve; every other node of a
    bias-free block with ε = 0 passes on exactly what it receives."""
    graph, x = attention_graph(5, bias=False, gated=gated)
    result, acts, rules, logit = _flows(graph, x, "lrp.attn", 0.0)
    assert "att" in result.flow
    leak = np.zeros(len(x))
    for name, (got, passed) in result.flow.items():
        if name == "att":
            leak = got - passed
            continue
        np.testing.assert_allclose(got, passed, rtol=1e-10, atol=1e-12, err_msg=name)
    r_in = result.relevance["x"].reshape(len(x), -1).sum(axis=1)
    np.testing.assert_allclose(r_in + leak, logit, rtol=1e-10)
    assert np.abs(leak).max() > 1e-6        # the softmax rule does leak (so the check above is not vacuous)


# ----------------------------------------------------------------------------------------------
# the rules on their own and in composites


def test_constant_factors_finds_attention_weights_and_gates():
    graph, _ = attention_graph(gated=True)
    assert constant_factors(graph) == {"context": 0, "glu": 0}      # q @ k^T has none: neither factor is one
    rules = attribx.plugins.registry().methods["lrp.cp"].rules(graph, {"epsilon": 0.0})
    assert rules["context"] == ConstantFactor(epsilon=0.0, factor=0)
    assert rules["scores"] == ConstantFactor(epsilon=0.0) and rules["att"].name == "block"
    rules = attribx.plugins.registry().methods["lrp.attn"].rules(graph, {"epsilon": 0.0})
    assert rules["context"] == Uniform(epsilon=0.0) and rules["att"] == SoftmaxTaylor()
    assert rules["ln1"].name == rules["ln2"].name == "constant_std" and rules["act"].name == "pass"


def test_softmax_rule_is_proposition_3_1():
    rng = np.random.default_rng(0)
    b = attribx.GraphBuilder("sm")
    s = b.softmax(b.input("x", (3, 4)), axis=1, name="s")
    graph = b.build(b.linear(b.flatten(s), rng.normal(size=(2, 12)), name="fc"))
    x = rng.normal(size=(2, 3, 4))
    ours = attribx.explain(graph, x, "lrp.attn", target=1, epsilon=0.0, layers=["s"])
    r_out, sm = ours["s"].values, attribx.forward(graph, x, output="s")
    np.testing.assert_allclose(ours["relevance"].values, x * (r_out - sm * r_out.sum(axis=1, keepdims=True)),
                               rtol=1e-12)


def test_uniform_rule_gives_each_factor_half():
    rng = np.random.default_rng(1)
    b = attribx.GraphBuilder("prod")
    x = b.input("x", (4,))
    p = b.mul(b.linear(x, rng.normal(size=(4, 4)), name="a"), b.linear(x, rng.normal(size=(4, 4)), name="b"),
              name="p")
    graph = b.build(b.reduce_sum(p, keepdims=True, name="out"))
    xs = rng.normal(size=(2, 4))
    res = attribx.explain(graph, xs, "lrp.attn", target=0, epsilon=0.0, layers=["a", "b", "p"])
    np.testing.assert_allclose(res["a"].values, res["p"].values / 2, rtol=1e-12)
    np.testing.assert_allclose(res["b"].values, res["p"].values / 2, rtol=1e-12)
    cp = attribx.explain(graph, xs, "lrp.cp", target=0, epsilon=0.0, layers=["a", "b"])   # no gate: equal shares
    np.testing.assert_allclose(cp["a"].values, res["a"].values, rtol=1e-12)


def test_epsilon_absorbs_and_other_rules_combine_with_the_composite():
    graph, x = attention_graph()
    zero = attribx.explain(graph, x, "lrp.attn", target=0, epsilon=0.0).values
    small = attribx.explain(graph, x, "lrp.attn", target=0).values          # the default ε = 1e-6
    assert relative_error(small, zero) <= 1e-3
    big = attribx.explain(graph, x, "lrp.attn", target=0, epsilon=0.5).values
    assert np.abs(big).sum() < np.abs(zero).sum()
    mixed = attn_lrp_composite(0.0, entries=[(C.category("layer"), Gamma(gamma=0.25))])
    rules = mixed.assign(graph)
    assert rules["q"] == Gamma(gamma=0.25) and rules["att"] == SoftmaxTaylor()
    gamma = attribx.explain(graph, x, mixed, target=0).values
    assert np.isfinite(gamma).all() and relative_error(gamma, zero) > 1e-3
