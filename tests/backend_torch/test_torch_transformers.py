"""Transformer layers from torch (issue 19) through the fx translator, against torch itself in float64:
the graph's forward equals the module's (≤1e-9 relative: the same formulas), and gradient × input equals
torch autograd's, on small modules covering every variant the converters take (layer and RMS norms,
products of two signals, einsum, scaled dot-product attention, nn.MultiheadAttention, class tokens, roll,
Swin's windows, interpolate); what cannot be translated exactly is refused by name.
torchvision's models are walked in tests/backend_torch/test_torchvision_models.py."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")
nn = torch.nn
F = torch.nn.functional

import attribx  # noqa: E402
from attribx.errors import UnsupportedError  # noqa: E402

from random_weights import randomized  # noqa: E402

TOL = 1e-9


class Wrap(nn.Module):
    def __init__(self, fn, **modules):
        super().__init__()
        self.fn = fn
        for k, m in modules.items():
            setattr(self, k, m)
        self.register_buffer("dtype_mark", torch.zeros((), dtype=torch.float64))     # the model's dtype

    def forward(self, x):
        return self.fn(self, x)


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def check(model, shape, n=2, seed=0, x=None, tol=TOL, target=None):
    """Forward equal to torch's; gradient × input of one output equal to autograd's. Returns the graph."""
    model = model.double().eval()
    if x is None:
        x = np.random.default_rng(seed).normal(size=(n,) + tuple(shape))
    graph = attribx.translate(model, input_shape=tuple(shape))
    t = torch.tensor(x, requires_grad=True)
    ref = model(t)
    ref = ref["out"] if isinstance(ref, dict) else ref
    out = attribx.forward(graph, x)
    assert rel(out, ref.detach().numpy()) <= tol
    flat = ref.reshape(x.shape[0], -1)
    k = flat.shape[1] // 2 if target is None else target
    flat[:, k].sum().backward()
    init = np.zeros((len(x), flat.shape[1]))
    init[:, k] = 1.0
    rx = attribx.explain(graph, x, "gradient_x_input", output_init=init.reshape(ref.shape))
    assert rel(rx.values, (t.grad * t).detach().numpy()) <= 1e-8
    return graph


def refused(model, shape, *needles):
    with pytest.raises(UnsupportedError) as info:
        attribx.translate(model.double().eval(), input_shape=shape)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    return msg


def ops(graph):
    return [n.op for n in graph.nodes]


# ----------------------------------------------------------------------------------------------
# normalisations


@pytest.mark.parametrize("make", [
    lambda: nn.LayerNorm(6), lambda: nn.LayerNorm((4, 6)), lambda: nn.LayerNorm(6, elementwise_affine=False),
    lambda: nn.LayerNorm(6, bias=False), lambda: nn.RMSNorm(6), lambda: nn.RMSNorm((4, 6), eps=1e-3),
    lambda: nn.RMSNorm(6, elementwise_affine=False)], ids=lambda f: "")
def test_norm_modules(make):
    m = randomized(nn.Sequential(nn.Linear(6, 6), make(), nn.Linear(6, 3)))
    g = check(m, (4, 6))
    assert {"layer_norm", "rms_norm"} & set(ops(g))


def test_functional_norms_and_normalize():
    w, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    m = Wrap(lambda s, x: F.layer_norm(x, (6,), w, b, 1e-3) + F.rms_norm(x, [6], w) + F.rms_norm(x, (3, 6))
             + F.normalize(x, dim=-1) * 2 + F.normalize(x, dim=1))
    check(m, (3, 6))


def test_convnext_layer_norm_2d():
    from torchvision.models.convnext import LayerNorm2d
    check(randomized(nn.Sequential(nn.Conv2d(3, 4, 3), LayerNorm2d(4), nn.Conv2d(4, 2, 1))), (3, 6, 6))


# ----------------------------------------------------------------------------------------------
# products


class Products(nn.Module):
    """q @ kᵀ of two signals in every spelling, and products with parameters on either side."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.w = nn.Parameter(torch.randn(6, 5))
        self.w3 = nn.Parameter(torch.randn(4, 6, 5))
        self.left = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        a, b, k = self.a(x), self.b(x), self.kind
        if k == "operator":
            return a @ b.transpose(-1, -2)
        if k == "matmul":
            return torch.matmul(a, b.transpose(1, 2)).matmul(b)
        if k == "bmm":
            return torch.bmm(a, b.transpose(1, 2)).bmm(a)
        if k == "weight":
            return a @ self.w
        if k == "weight3":
            return a.reshape(a.shape[0], 4, 1, 6) @ self.w3
        if k == "left":
            return self.left @ a
        raise AssertionError(k)


@pytest.mark.parametrize("kind", ["operator", "matmul", "bmm", "weight", "weight3", "left"])
def test_matrix_products(kind):
    g = check(randomized(Products(kind)), (4, 6))
    assert ("linear" if kind == "weight" else "matmul") in ops(g)


@pytest.mark.parametrize("eq", ["bij,bkj->bik", "bij,bjk->bik", "bji,bjk->bki", "b i j , b k j -> b k i",
                                "bij,bij->b", "...ij,...kj->...ik", "bhid,bhjd->bhij", "...ij,...jk", "bhid,bjhd->bhji"])
def test_einsum_of_two_signals(eq):
    def fn(s, x):
        h = torch.tanh(x)
        if "h" in eq.replace("->", ""):
            x, h = x.reshape(x.shape[0], 2, 3, 6), h.reshape(x.shape[0], 2, 3, 6)
            if "bjhd" in eq:
                h = h.transpose(1, 2)
        return torch.einsum(eq, x, h)
    g = check(Wrap(fn), (6, 6))
    assert "matmul" in ops(g)


def test_einsum_with_a_constant():
    w = torch.randn(6, 5, dtype=torch.float64)
    w3 = torch.randn(2, 6, 3, dtype=torch.float64)
    m = Wrap(lambda s, x: torch.einsum("bti,io->bto", x, w).sum(-1, keepdim=True)
             + torch.einsum("oi,bti->bto", w.T, x) + torch.einsum("bhti,hio->bhto", x.reshape(x.shape[0], 2, 2, 6),
                                                                   w3).reshape(x.shape[0], 4, 3).sum(-1, keepdim=True))
    g = check(m, (4, 6))
    assert "linear" in ops(g) and "matmul" in ops(g)


@pytest.mark.parametrize("fn, needle", [
    (lambda s, x: torch.einsum("bii->bi", x.reshape(x.shape[0], 2, 2)), "'bii->bi'"),
    (lambda s, x: torch.einsum("bi,bi->bi", x, x), "'bi,bi->bi'"),
    (lambda s, x: torch.einsum("bi,bj->b", x, x), "'bi,bj->b'"),
    (lambda s, x: torch.einsum("bi,bi,bi->b", x, x, x), "3 operands"),
])
def test_einsums_that_are_not_matrix_products_are_refused(fn, needle):
    refused(Wrap(fn), (4,), "einsum", needle)


# ----------------------------------------------------------------------------------------------
# attention


def _qkv(x):
    n = x.shape[0]
    q = x.reshape(n, 5, 2, 3).transpose(1, 2)
    return q, torch.tanh(q), q * 0.5 + 1


@pytest.mark.parametrize("kwargs", [
    {}, {"scale": 0.3}, {"is_causal": True},
    {"attn_mask": torch.tensor(np.tril(np.ones((5, 5))) > 0)},
    {"attn_mask": torch.tensor(np.random.default_rng(1).normal(size=(2, 5, 5)))},
    {"attn_mask": torch.tensor(np.where(np.random.default_rng(2).random((1, 1, 5, 5)) < 0.3, -np.inf, 0.5))
     + torch.eye(5, dtype=torch.float64)}], ids=["plain", "scale", "causal", "bool", "float", "float-inf"])
def test_scaled_dot_product_attention(kwargs):
    def fn(s, x):
        q, k, v = _qkv(s.lin(x))
        return F.scaled_dot_product_attention(q, k, v, **kwargs).transpose(1, 2).reshape(x.shape[0], 5, 6)
    m = randomized(Wrap(fn, lin=nn.Linear(6, 6)))
    g = check(m, (5, 6))
    assert "softmax" in ops(g) and ops(g).count("matmul") == 2


def test_attention_dropout_and_gqa_are_refused():
    refused(Wrap(lambda s, x: F.scaled_dot_product_attention(*_qkv(x), dropout_p=0.1)), (5, 6), "dropout_p=0.1")
    refused(Wrap(lambda s, x: F.scaled_dot_product_attention(*_qkv(x), enable_gqa=True)), (5, 6), "enable_gqa")


class MHA(nn.Module):
    def __init__(self, batch_first=True, kdim=None, bias=True, mask=None, padding=None, weights=None,
                 from_input=False):
        super().__init__()
        self.attn = nn.MultiheadAttention(6, 2, bias=bias, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.kv = nn.Linear(6, kdim or 6)
        self.batch_first, self.mask, self.padding, self.weights = batch_first, mask, padding, weights
        self.from_input = from_input

    def forward(self, x):
        kv = self.kv(x)
        q = x
        if not self.batch_first:
            q, kv = x.transpose(0, 1), kv.transpose(0, 1)
        padding = x[:, :, 0] != 0 if self.from_input else self.padding
        out, w = self.attn(q, kv, kv, key_padding_mask=padding, attn_mask=self.mask,
                           need_weights=self.weights is not None, average_attn_weights=bool(self.weights))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if self.weights is None:
            return out
        return torch.cat([out.flatten(1), w.flatten(1)], 1)


@pytest.mark.parametrize("kw", [
    {}, {"batch_first": False}, {"kdim": 4}, {"bias": False}, {"weights": True}, {"weights": False},
    {"mask": torch.tensor(np.triu(np.ones((5, 5)), 1) > 0)},
    {"mask": torch.tensor(np.random.default_rng(3).normal(size=(5, 5)))},
    {"padding": torch.tensor([[False, True, False, False, True]])}, {"from_input": True}],
    ids=["packed", "time_major", "separate", "no_bias", "weights", "head_weights", "bool_mask", "float_mask",
         "padding", "padding_from_input"])
def test_multihead_attention(kw):
    m = randomized(MHA(**kw))
    x = np.random.default_rng(0).normal(size=(1 if "padding" in kw else 2, 5, 6))
    if kw.get("from_input"):
        x = np.random.default_rng(0).normal(size=(3, 5, 6))
        x[:, ::2, 0] = 0.0        # these tokens are attended, the others masked
    g = check(m, (5, 6), x=x)
    assert ops(g).count("matmul") == 2 and "softmax" in ops(g)


def test_multihead_attention_extra_key_value_rows_are_refused():
    m = MHA()
    m.attn = nn.MultiheadAttention(6, 2, add_bias_kv=True, batch_first=True)
    refused(m, (5, 6), "add_bias_kv")


# ----------------------------------------------------------------------------------------------
# tokens, embeddings and blocks


class TokenBlock(nn.Module):
    """A ViT's pieces: patch embedding, class token, learned positions, layer scale, stochastic depth."""

    def __init__(self):
        super().__init__()
        from torchvision.ops import StochasticDepth
        self.patch = nn.Conv2d(3, 6, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.pos = nn.Parameter(torch.randn(1, 5, 6))
        self.scale = nn.Parameter(torch.randn(6))
        self.drop = StochasticDepth(0.3, "row")
        self.drop2 = nn.Dropout(0.2)
        self.norm = nn.LayerNorm(6)
        self.act = nn.Hardswish()
        self.gate = nn.Hardsigmoid()
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        n = x.shape[0]
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(n, -1, -1), t], dim=1) + self.pos
        t = t + self.drop(self.scale * self.act(self.norm(t)))
        t = self.drop2(t) * self.gate(t) + F.hardswish(t) + F.hardsigmoid(t)
        return self.head(t[:, 0])


def test_class_token_positions_layer_scale_and_hard_activations():
    g = check(randomized(TokenBlock()), (3, 8, 8), n=3)
    assert {"fill", "concat", "hard_swish", "hard_sigmoid"} <= set(ops(g))


def test_roll():
    check(Wrap(lambda s, x: torch.roll(torch.tanh(x), (1, -2), (1, 2)) + x.roll(3, -1)), (4, 5))
    refused(Wrap(lambda s, x: torch.roll(x, 1)), (4, 5), "roll")
    refused(Wrap(lambda s, x: torch.roll(x, 1, 0)), (4, 5), "batch axis")


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("size", [16, 20])      # 20: the token grid is padded to whole windows
def test_small_swin(v2, size):
    from torchvision.models import swin_transformer as st
    kw = {"block": st.SwinTransformerBlockV2, "downsample_layer": st.PatchMergingV2} if v2 else {}
    m = st.SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=[3, 3],
                           num_classes=4, **kw)
    g = check(randomized(m), (3, size, size))
    assert "roll" in ops(g) and ("rms_norm" in ops(g)) == v2


# ----------------------------------------------------------------------------------------------
# resampling


@pytest.mark.parametrize("fn, up", [
    (lambda x: F.interpolate(x, size=(7, 9)), None), (lambda x: F.interpolate(x, scale_factor=2), None),
    (lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear"), None),
    (lambda x: F.interpolate(x, size=(9, 4), mode="bilinear", align_corners=True), None),
    (lambda x: F.interpolate(x, size=(3, 3), mode="bilinear", align_corners=False), None),
    (None, nn.Upsample(scale_factor=3, mode="nearest")), (None, nn.UpsamplingBilinear2d(size=(8, 8))),
    (lambda x: F.interpolate(x[:, :, 0], size=11, mode="linear"), None)], ids=lambda f: "")
def test_interpolate(fn, up):
    mods = {"conv": nn.Conv2d(2, 3, 1)} | ({"up": up} if up is not None else {})
    check(randomized(Wrap(lambda s, x: (fn or s.up)(s.conv(x)), **mods)), (2, 5, 6))


def test_interpolate_modes_without_translation_are_refused():
    refused(Wrap(lambda s, x: F.interpolate(x, scale_factor=2, mode="bicubic")), (2, 5, 6), "bicubic")
    refused(Wrap(lambda s, x: F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)), (2, 6, 6),
            "antialias")
