"""attention_rollout (Abnar & Zuidema 2020) against the paper's formula computed here from a numpy forward pass
written independently of the graph: two multi-head self-attention layers, read at the class token, under
mean pooling and at the last position; image inputs cut into patches; refusals."""
from __future__ import annotations

import numpy as np
import pytest

import attribx
from attribx import GraphBuilder
from attribx.errors import InputError, MethodError

T, E, H = 5, 8, 2


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return {f"{k}{l}": rng.normal(size=(E, E)) / np.sqrt(E) for l in (1, 2) for k in "qkv"} | {
        "head": rng.normal(size=(3, E))}


def attention_net(w, pool="cls", layout="NTE", image=None, class_token=None):
    """Two layers of h + softmax(q k^T / sqrt(d)) v over H heads, then a pooled token and a linear head.
    ``image`` = (C, side, patch): the input is an image cut into patches by a reshape (no class token).
    ``class_token`` (a vector of E): prepended to the T input tokens (a fill per sample, as translators write)."""
    b = GraphBuilder("att")
    if class_token is not None:
        x = b.input("x", (T - 1, E), layout=layout)
        cls = b.add_node("fill", x, "cls", {"value": class_token[None]})
        h = b.concat(cls, x, axis=1)
    elif image is None:
        h = b.input("x", (T, E), layout=layout)
    else:
        c, side, patch = image
        x = b.input("x", (c, side, side))
        g = side // patch      # (N, C, g, p, g, p) -> (N, g, g, C, p, p) -> (N, g*g, C*p*p) == E features
        h = b.reshape(b.transpose(b.reshape(x, (c, g, patch, g, patch)), (0, 2, 4, 1, 3, 5)), (g * g, E))
    d, t = E // H, T if image is None else (image[1] // image[2]) ** 2
    for l in (1, 2):
        def heads(name, kt=False):
            p = b.transpose(b.reshape(b.linear(h, w[f"{name}{l}"]), (t, H, d)), (0, 2, 1, 3))
            return b.transpose(p, (0, 1, 3, 2)) if kt else p
        scores = b.mul(b.add_node("matmul", (heads("q"), heads("k", kt=True))), b.constant(np.array(d ** -0.5)))
        att = b.softmax(scores, axis=-1, name=f"att{l}")
        ctx = b.reshape(b.transpose(b.add_node("matmul", (att, heads("v"))), (0, 2, 1, 3)), (t, E))
        h = b.add(h, ctx, name=f"res{l}")
    if pool == "cls":
        h = b.flatten(b.slice(h, axis=1, start=0, stop=1))
    elif pool == "last":
        h = b.flatten(b.slice(h, axis=1, start=T - 1, stop=T))
    else:
        h = b.reduce_mean(h, axes=1)
    return b.build(b.linear(h, w["head"], name="head"))


def numpy_maps(w, x):
    """The attention maps (N, H, T, T) of both layers, from a forward pass written with numpy."""
    maps, h, d, t = [], x, E // H, x.shape[1]
    for l in (1, 2):
        q, k, v = ((h @ w[f"{n}{l}"].T).reshape(len(x), t, H, d).transpose(0, 2, 1, 3) for n in "qkv")
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        maps.append(a)
        h = h + (a @ v).transpose(0, 2, 1, 3).reshape(len(x), t, E)
    return maps


def paper_rollout(maps, rows, residual=0.5, fusion=np.mean):
    """Ã = (1-r) A + r I (rows renormalised), rollout = Ã_2 Ã_1, read at ``rows`` (averaged), sample by sample."""
    out, t = [], maps[0].shape[-1]
    for i in range(len(maps[0])):
        joint = np.eye(t)
        for a in maps:
            m = (1 - residual) * fusion(a[i], axis=0) + residual * np.eye(t)
            joint = (m / m.sum(1, keepdims=True)) @ joint
        out.append(joint[rows].mean(0))
    return np.array(out)


@pytest.fixture
def data():
    return weights(), np.random.default_rng(1).normal(size=(4, T, E))


@pytest.mark.parametrize("pool, rows", [("cls", [0]), ("last", [T - 1]), ("mean", list(range(T)))])
def test_rollout_equals_the_papers_formula_read_where_the_score_reads(data, pool, rows):
    w, x = data
    r = attribx.explain(attention_net(w, pool), x, "attention_rollout")
    assert r.dims == ("sample", "token")
    np.testing.assert_allclose(r.values, paper_rollout(numpy_maps(w, x), rows), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.values.sum(1), 1.0, rtol=1e-12)     # rows of a product of stochastic maps


@pytest.mark.parametrize("residual, fusion", [(0.0, "max"), (0.3, "min"), (1.0, "mean")])
def test_residual_weight_and_head_fusion(data, residual, fusion):
    w, x = data
    r = attribx.explain(attention_net(w), x, "attention_rollout", residual=residual, head_fusion=fusion)
    ref = paper_rollout(numpy_maps(w, x), [0], residual, getattr(np, fusion))
    np.testing.assert_allclose(r.values, ref, rtol=1e-10, atol=1e-12)
    if residual == 1.0:      # only the skip connections: each token keeps itself
        np.testing.assert_allclose(r.values, np.eye(T)[[0] * len(x)])


def test_rollout_ignores_the_target_and_runs_on_every_engine(data):
    w, x = data
    g = attention_net(w)
    a = attribx.explain(g, x, "attention_rollout", target=0).values
    np.testing.assert_allclose(attribx.explain(g, x, "attention_rollout", target=2).values, a)
    pytest.importorskip("torch")
    np.testing.assert_allclose(attribx.explain(g, x, "attention_rollout", engine="torch").values, a, rtol=1e-9)


def test_a_class_token_the_model_adds_is_left_out(data):
    """The class token (column 0 of every map) is the model's, not the input's: relevance comes back for the
    T - 1 input tokens, the rollout's row without its first column."""
    w, x = data
    cls = np.random.default_rng(5).normal(size=E)
    r = attribx.explain(attention_net(w, class_token=cls), x[:, 1:], "attention_rollout")
    full = np.concatenate([np.broadcast_to(cls, (len(x), 1, E)), x[:, 1:]], axis=1)
    assert r.shape == (len(x), T - 1)
    np.testing.assert_allclose(r.values, paper_rollout(numpy_maps(w, full), [0])[:, 1:], rtol=1e-10, atol=1e-12)


def test_image_patches_share_their_token_relevance_over_their_pixels():
    c, side, patch = 2, 4, 2            # a 2x2 grid of 2x2 patches: 4 tokens of C*p*p = 8 = E features
    w = weights(2)
    x = np.random.default_rng(3).normal(size=(2, c, side, side))
    r = attribx.explain(attention_net(w, "mean", image=(c, side, patch)), x, "attention_rollout")
    tokens = x.reshape(2, c, 2, patch, 2, patch).transpose(0, 2, 4, 1, 3, 5).reshape(2, 4, E)
    per_patch = paper_rollout(numpy_maps(w, tokens), list(range(4))).reshape(2, 2, 2)
    assert r.dims == ("sample", "channel", "height", "width")
    by_patch = r.values.reshape(2, c, 2, patch, 2, patch)
    np.testing.assert_allclose(by_patch.sum(axis=(1, 3, 5)), per_patch, rtol=1e-10)
    assert np.ptp(by_patch, axis=(1, 3, 5)).max() < 1e-12       # spread evenly over the patch's pixels


def test_refusals(data):
    w, x = data
    b = GraphBuilder("mlp")
    h = b.input("x", (E,))
    plain = b.build(b.linear(b.relu(h), w["head"]))
    with pytest.raises(MethodError, match="needs attention"):
        attribx.explain(plain, x[:, 0], "attention_rollout")
    g = attention_net(w)
    with pytest.raises(MethodError, match="layers= and conservation="):
        attribx.explain(g, x, "attention_rollout", layers=["att1"])
    with pytest.raises((MethodError, InputError), match="head_fusion.*one of 'mean', 'max', 'min'"):
        attribx.explain(g, x, "attention_rollout", head_fusion="median")
    with pytest.raises((MethodError, InputError), match=r"residual.*\[0, 1\]"):
        attribx.explain(g, x, "attention_rollout", residual=1.5)
