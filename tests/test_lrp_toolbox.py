"""attribx against the LRP Toolbox's own rules on its trained LeNet-5 and real MNIST digits.

The network and digits live outside the repository (``../shared/data/mnist-lenet5/``, see its
README); the tests skip when they are absent. The toolbox's numpy implementation is re-stated
independently in ``tests/toolbox_reference.py`` (which says, per rule, what the toolbox does and
where that was read). The graph is built with :class:`attribx.GraphBuilder` as the README describes:
each toolbox sum pool (window sum / sqrt(4)) is ``avg_pool(2, 2)`` followed by ``mul`` by 2.0.

Comparisons run in float64 on the first 50 test digits, explaining the true label from the score
(the toolbox demo's ``Y * onehot``), and require max|ours - ref| / max|ref| <= 1e-5 per sample.

How attribx is configured to do what the toolbox does at "every layer":

* the toolbox's single SumPool module is two attribx nodes; the rule that the toolbox applies to the
  pool goes on ``avg_pool``, and the scaling ``mul`` must pass relevance on unchanged. For flat and
  w² that means giving the ``mul`` the same rule (it then passes R exactly, also for pooled units
  whose window is all zero); the default ``norm`` there would drop the relevance of those units,
  while the toolbox's flat/w² pool spreads it regardless of the activations. For αβ the ``mul`` must
  *not* get αβ (with non-negative inputs the αβ rule returns α·R, and the toolbox applies it once per
  pool, not twice), so it gets an exact ``norm``;
* the toolbox's w² ignores the bias: ``w_square`` with ``zero_bias=True``;
* the toolbox's stabilisers are 1e-16 (conv, αβ everywhere) and 1e-12 (sum pool, LRP-0): attribx's
  rules get ``stabilizer=1e-16``; LRP-0 divides exactly.
"""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx import composite as C

import toolbox_reference as tb
from conftest import SHARED_DATA

DATA = SHARED_DATA / "mnist-lenet5"
N_EXPLAIN = 50
RTOL = 1e-5
TINY = 1e-16


# -- data and graph --------------------------------------------------------------------------------------
def _load():
    files = (DATA / "lenet5.npz", DATA / "mnist_test_2000.npz")
    if not all(f.is_file() for f in files):
        pytest.skip(f"LeNet-5 / MNIST test data not found under {DATA}")
    with np.load(files[0]) as w, np.load(files[1]) as d:
        return {k: w[k] for k in w.files}, d["images"], d["labels"]


def build_lenet5(weights, dtype=np.float64):
    """conv -> relu -> sum pool (avg_pool(2, 2) · 2.0), three times, then conv4 -> flatten: logits (N, 10)."""
    b = GraphBuilder("lenet5")
    h = b.input("x", (1, 32, 32), dtype=np.dtype(dtype).name)
    for k in range(1, 5):
        h = b.conv(h, weights[f"conv{k}_W_oihw"].astype(dtype), weights[f"conv{k}_B"].astype(dtype),
                   name=f"conv{k}")
        if k < 4:
            h = b.relu(h, name=f"relu{k}")
            h = b.avg_pool(h, 2, 2, name=f"pool{k}")
            h = b.mul(h, b.constant(dtype(2.0), name=f"two{k}"), name=f"scale{k}")
    return b.build(b.flatten(h, name="flatten"))


@pytest.fixture(scope="module")
def lenet():
    weights, images, labels = _load()
    x = images[:N_EXPLAIN].astype(np.float64)
    return {"weights": weights, "images": images, "labels": labels, "x": x, "y": labels[:N_EXPLAIN],
            "graph": build_lenet5(weights), "net": tb.lenet5(weights)}


@pytest.fixture(scope="module")
def lenet_pos_bias(lenet):
    """The same network with every bias negated (the trained biases are all <= 0): exercises the
    toolbox's b+ convention (positive biases in the positive denominator of αβ / z+)."""
    w = {k: (-v if k.endswith("_B") else v) for k, v in lenet["weights"].items()}
    return {**lenet, "weights": w, "graph": build_lenet5(w), "net": tb.lenet5(w)}


def per_sample_error(ours, ref):
    """max|ours - ref| / max|ref| for each sample."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    n = len(ref)
    diff = np.abs(ours - ref).reshape(n, -1).max(axis=1)
    scale = np.abs(ref).reshape(n, -1).max(axis=1)
    assert (scale > 0).all()
    return diff / scale


def assert_matches(ours, ref, rtol=RTOL, what=""):
    err = per_sample_error(ours, ref)
    worst = int(err.argmax())
    assert err.max() <= rtol, (f"{what}: max|ours - ref| / max|ref| = {err.max():.3e} (sample {worst}), "
                               f"median {np.median(err):.3e}; tolerance {rtol:g}")


# -- composites: one toolbox rule at every conv and every sum pool ---------------------------------------
def everywhere(rule, params, scaling):
    """``rule`` on every conv and avg_pool; ``scaling`` on the ``mul`` by 2.0 of each sum pool."""
    return C.Composite([(C.op("mul"), scaling), (C.category("layer", "sum"), (rule, params))],
                       name=f"toolbox-{rule}")


EXACT_PASS = ("norm", {"epsilon": 0.0})
FLAT = ("flat", {"stabilizer": TINY})
W_SQUARE = ("w_square", {"stabilizer": TINY, "zero_bias": True})


def epsilon_everywhere(eps):
    """The toolbox's ε at convs (R / (z + ε sgn z)) and at sum pools, where it stabilises the plain
    window sum: avg_pool's mean is sum/4, so ``norm`` with ε/4 there gives exactly R·x / (sum + ε sgn);
    the scaling then passes exactly."""
    return C.Composite([(C.op("mul"), EXACT_PASS), (C.op("avg_pool"), ("norm", {"epsilon": eps / 4})),
                        (C.category("layer"), ("epsilon", {"epsilon": eps}))], name=f"toolbox-epsilon-{eps}")


# (id, toolbox rule, toolbox parameter, attribx method, explain keyword arguments)
CASES = [
    ("lrp.zero", "simple", None, "lrp.zero", {}),
    ("lrp.z_plus", "alphabeta", 1.0, "lrp.z_plus", {}),
    ("lrp.z_plus-tiny", "alphabeta", 1.0, "lrp.z_plus", {"stabilizer": TINY}),
    ("z_plus-everywhere", "alphabeta", 1.0, everywhere("z_plus", {"stabilizer": TINY}, EXACT_PASS), {}),
    ("flat-everywhere", "flat", None, everywhere(*FLAT, FLAT), {}),
    ("w_square-everywhere", "ww", None, everywhere(*W_SQUARE, W_SQUARE), {}),
    ("alpha2beta1-everywhere", "alphabeta", 2.0,
     everywhere("alpha_beta", {"alpha": 2.0, "beta": 1.0, "stabilizer": TINY}, EXACT_PASS), {}),
    ("alpha1beta0-everywhere", "alphabeta", 1.0,
     everywhere("alpha_beta", {"alpha": 1.0, "beta": 0.0, "stabilizer": TINY}, EXACT_PASS), {}),
    ("epsilon0.01-everywhere", "epsilon", 0.01, epsilon_everywhere(0.01), {}),
    ("epsilon1-everywhere", "epsilon", 1.0, epsilon_everywhere(1.0), {}),
]


def _run(net, x, y, tb_rule, tb_param, graph, method, kwargs):
    ref = tb.explain(net, x, y, tb_rule, tb_param)
    ours = attribx.explain(graph, x, method, target=y, **kwargs)
    return ours, ref


# -- tests -----------------------------------------------------------------------------------------------
def test_graph_forward_matches_reference_and_readme_accuracy(lenet):
    images, labels = lenet["images"], lenet["labels"]
    x64 = images.astype(np.float64)
    ref = lenet["net"].forward(x64)
    ours = attribx.forward(lenet["graph"], x64)
    assert ours.shape == (len(images), 10)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())
    # the README's figure, with the float32 weights and data as shipped
    logits32 = attribx.forward(build_lenet5(lenet["weights"], np.float32), images)
    assert logits32.dtype == np.float32
    np.testing.assert_allclose(logits32, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert np.mean(ref.argmax(1) == labels) == pytest.approx(0.9875)
    assert np.mean(logits32.argmax(1) == labels) == pytest.approx(0.9875)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_toolbox(lenet, case):
    name, tb_rule, tb_param, method, kwargs = case
    ours, ref = _run(lenet["net"], lenet["x"], lenet["y"], tb_rule, tb_param, lenet["graph"], method, kwargs)
    assert ours.shape == ref.shape == lenet["x"].shape
    assert list(ours.target.values) == list(lenet["y"])
    assert_matches(ours.values, ref, what=f"{name} vs toolbox {tb_rule}({tb_param})")


POS_BIAS_CASES = [c for c in CASES if c[0] in ("lrp.zero", "lrp.z_plus", "alpha2beta1-everywhere",
                                                 "alpha1beta0-everywhere", "w_square-everywhere")]


@pytest.mark.parametrize("case", POS_BIAS_CASES, ids=[c[0] for c in POS_BIAS_CASES])
def test_matches_toolbox_with_positive_biases(lenet_pos_bias, case):
    """The bias conventions (b+ in the positive, b- in the negative denominator, never distributed;
    w² ignoring the bias) on the same architecture with every bias's sign flipped."""
    name, tb_rule, tb_param, method, kwargs = case
    n = lenet_pos_bias
    ours, ref = _run(n["net"], n["x"], n["y"], tb_rule, tb_param, n["graph"], method, kwargs)
    assert_matches(ours.values, ref, what=f"{name} (biases negated) vs toolbox {tb_rule}({tb_param})")


def test_bias_conventions_matter(lenet):
    """Guard against a vacuous pass: the toolbox keeps biases in the αβ denominators (zero_bias=True
    differs) and drops them in w² (zero_bias=False differs)."""
    x, y, g, net = lenet["x"], lenet["y"], lenet["graph"], lenet["net"]
    ab = {"alpha": 2.0, "beta": 1.0, "stabilizer": TINY, "zero_bias": True}
    ours = attribx.explain(g, x, everywhere("alpha_beta", ab, EXACT_PASS), target=y).values
    assert per_sample_error(ours, tb.explain(net, x, y, "alphabeta", 2.0)).max() > 1e-2
    ws = ("w_square", {"stabilizer": TINY, "zero_bias": False})
    ours = attribx.explain(g, x, everywhere(*ws, ws), target=y).values
    assert per_sample_error(ours, tb.explain(net, x, y, "ww")).max() > 1e-3


# where the toolbox conserves: flat and w² (no bias anywhere), z+ / α1β0 (the trained biases are all
# <= 0, so no b+ absorbs anything and dead units carry no relevance)
CONSERVING = ["lrp.z_plus-tiny", "flat-everywhere", "w_square-everywhere", "alpha1beta0-everywhere"]
# layer sums: attribx node -> index of the toolbox module whose *output* relevance it is
NODE_TO_MODULE = {"conv1": 0, "relu1": 1, "scale1": 2, "conv2": 3, "relu2": 4, "scale2": 5,
                  "conv3": 6, "relu3": 7, "scale3": 8, "conv4": 9}


@pytest.mark.parametrize("name", ["lrp.zero", "alpha2beta1-everywhere", *CONSERVING])
def test_layer_sums_match_toolbox(lenet, name):
    """Relevance summed per layer, attribx's conservation report against the toolbox's per-module
    relevance; for the conserving rules every layer holds the explained logit."""
    _, tb_rule, tb_param, method, kwargs = next(c for c in CASES if c[0] == name)
    x, y, net = lenet["x"], lenet["y"], lenet["net"]
    ds = attribx.explain(lenet["graph"], x, method, target=y, conservation=True, **kwargs)
    ref_in = tb.explain(net, x, y, tb_rule, tb_param)
    score = ds["score"].values
    sums = ds["conservation"]
    np.testing.assert_allclose(score, net.forward(x)[np.arange(len(y)), y], rtol=1e-12)
    np.testing.assert_allclose(sums.sel(node="x").values, ref_in.reshape(len(x), -1).sum(1),
                               rtol=RTOL, atol=RTOL * np.abs(score).max())
    for node, i in NODE_TO_MODULE.items():
        ref_sum = net.relevance_out[i].reshape(len(x), -1).sum(1)
        np.testing.assert_allclose(sums.sel(node=node).values, ref_sum, rtol=RTOL,
                                   atol=RTOL * np.abs(score).max(), err_msg=f"{name} at {node}")
    if name in CONSERVING:
        np.testing.assert_allclose(ref_in.reshape(len(x), -1).sum(1), score, rtol=1e-10)
        np.testing.assert_allclose(sums.sel(node="x").values, score, rtol=RTOL)


# -- the reference itself: its vectorised conv/pool against a per-output-unit loop (no data needed) ------
def _loop_conv_lrp(x, w, b, R, rule, param):
    """The toolbox's per-unit formulas, written one output unit at a time."""
    F, Cin, kh, kw = w.shape
    out = np.zeros_like(x)
    for n in range(x.shape[0]):
        for f in range(F):
            for i in range(R.shape[2]):
                for j in range(R.shape[3]):
                    z = x[n, :, i:i + kh, j:j + kw] * w[f]
                    zj = z.sum() + b[f]
                    if rule == "simple":
                        share = z / (zj + 1e-16 * (1.0 if zj >= 0 else -1.0))
                    elif rule == "flat":
                        share = np.ones_like(z) / z.size
                    elif rule == "ww":
                        share = w[f] ** 2 / (w[f] ** 2).sum()
                    else:   # alphabeta, alpha = param, beta = 1 - alpha
                        zp, zn = np.where(z > 0, z, 0.0), np.where(z > 0, 0.0, z)
                        sp = zp.sum() + max(b[f], 0.0) + 1e-16
                        share = param * zp / sp
                        if param != 1.0:
                            share = share + (1.0 - param) * zn / (zn.sum() + min(b[f], 0.0) - 2e-16)
                    out[n, :, i:i + kh, j:j + kw] += share * R[n, f, i, j]
    return out


@pytest.mark.parametrize("rule,param", [("simple", None), ("flat", None), ("ww", None),
                                        ("alphabeta", 1.0), ("alphabeta", 2.0)])
def test_reference_conv_against_loop(rule, param):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 2, 6, 5))
    w, b = rng.normal(size=(3, 2, 3, 2)), np.array([0.3, -0.2, 0.0])
    conv = tb.Conv(w, b)
    y = conv.forward(x)
    R = rng.normal(size=y.shape)
    np.testing.assert_allclose(conv.lrp(R, rule, param, chunk=1), _loop_conv_lrp(x, w, b, R, rule, param),
                               rtol=1e-10, atol=1e-12)


def test_reference_sum_pool_against_loop():
    rng = np.random.default_rng(4)
    x = np.maximum(rng.normal(size=(2, 3, 4, 6)), 0)
    x[0, 0, :2, :2] = 0.0                       # an all-zero window
    pool = tb.SumPool(2)
    y = pool.forward(x)
    R = rng.normal(size=y.shape)
    want = {r: np.zeros_like(x) for r in ("simple", "flat", "alphabeta")}
    for n, c, i, j in np.ndindex(*y.shape):
        win = x[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
        assert y[n, c, i, j] == pytest.approx(win.sum() / 2)
        s = win.sum()
        want["simple"][n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = win / (s + 1e-12) * R[n, c, i, j]
        want["flat"][n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = R[n, c, i, j] / 4
        want["alphabeta"][n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = 2.0 * win / (s + 1e-16) * R[n, c, i, j]
    for rule, param in (("simple", None), ("flat", None), ("alphabeta", 2.0)):
        np.testing.assert_allclose(pool.lrp(R, rule, param), want[rule], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(pool.lrp(R, "ww"), want["flat"])
