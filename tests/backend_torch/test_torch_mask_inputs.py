"""Mask inputs of traced torch models (issue 19): ``forward(x, key_padding_mask)`` — a further parameter without
a default whose name says mask is a mask input (it decides, takes no relevance); what the model computes from it
(``mask[:, None, None, :]``, ``unsqueeze``, ``expand``, ``cat`` of masks, ``~mask``, ``zeros_like``,
``masked_fill(mask, -inf)``, ``torch.where(mask, scores, -inf)``, nn.MultiheadAttention's key_padding_mask)
translates. References: torch's forward and autograd; masked keys take exactly no relevance; the relevance of
kept tokens does not depend on what padded positions hold."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")
import torch.nn as nn  # noqa: E402

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402


class MaskedEncoder(nn.Module):
    """A class token, one attention block masked from a bool key_padding_mask (True: padding) in two ways, and a
    head on the class token."""

    def __init__(self, e=8, h=2, classes=3):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(e, e) for _ in range(4))
        self.h = h
        self.cls = nn.Parameter(torch.randn(1, 1, e))
        self.head = nn.Linear(e, classes)

    def forward(self, x, key_padding_mask):
        n, t, e = x.shape
        x = torch.cat([self.cls.expand(n, -1, -1), x], 1)
        pad = torch.cat([torch.zeros_like(key_padding_mask[:, :1]), key_padding_mask], 1)    # the token is kept
        q, k, v = (f(x).view(n, t + 1, self.h, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(pad[:, None, None, :].expand(-1, self.h, t + 1, -1), float("-inf"))
        keep = ~pad.unsqueeze(1).unsqueeze(2)
        scores = torch.where(keep, scores, torch.tensor(float("-inf")))
        y = self.o((scores.softmax(-1) @ v).transpose(1, 2).reshape(n, t + 1, e))
        return self.head(y[:, 0])


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x, key_padding_mask):
        y, _ = self.att(x, x, x, key_padding_mask=key_padding_mask)
        return self.head(y[:, 0])


def _padded(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 8, generator=g)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[1, 3:] = True
    pad[2, 1] = True
    return x, pad


MODELS = {"hand_written": MaskedEncoder, "multihead_attention": Attention}


@pytest.fixture(params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    return MODELS[request.param]().eval()


def test_mask_parameter_is_a_mask_input_and_forward_equals_torch(model):
    g = attribx.translate(model, input_shape=(5, 8))
    assert [v.name for v in g.mask_inputs] == ["key_padding_mask"] and g.mask_inputs[0].shape == (None, 5)
    x, pad = _padded()
    with torch.no_grad():
        ref = model(x, pad).numpy()
    assert relative_error(np.asarray(attribx.forward(g, (x.numpy(), pad.numpy()))), ref) <= 1e-6
    got = np.asarray(attribx.forward(g, {"input": x.numpy(), "key_padding_mask": pad.numpy()}, engine="numpy"))
    assert relative_error(got, ref) <= 1e-6


@pytest.mark.parametrize("engine", ["torch", "numpy"])
def test_gradient_x_input_equals_autograd(model, engine):
    x, pad = _padded()
    xx = x.clone().requires_grad_(True)
    model(xx, pad)[:, 1].sum().backward()
    ref = (xx.grad * xx).detach().numpy()
    rel = np.asarray(attribx.explain(model, (x, pad), "gradient_x_input", target=1, engine=engine))
    assert relative_error(rel, ref) <= 1e-5
    assert not rel[pad.numpy()].any()                 # masked keys: the class token never reads them


@pytest.mark.parametrize("method", ["lrp.attn", "lrp.cp"])
def test_masked_keys_take_no_relevance_and_padding_content_does_not_matter(model, method):
    x, pad = _padded()
    rel = np.asarray(attribx.explain(model, (x, pad), method, target=1))
    assert np.isfinite(rel).all() and not rel[pad.numpy()].any() and np.abs(rel[~pad.numpy()]).sum(-1).all()
    other = x.clone()
    other[pad] = torch.randn(int(pad.sum()), 8) * 5                     # what padding holds: anything
    again = np.asarray(attribx.explain(model, (other, pad), method, target=1))
    assert relative_error(again, rel) <= 1e-6


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8, bias=False)

    def forward(self, x, key_padding_mask):
        return (self.lin(x) * ~key_padding_mask[..., None]).sum(1)      # padded positions zeroed, then pooled


def test_a_signal_times_a_boolean_mask_is_a_selection():
    """x * ~mask is ``where``: the mask takes no share, so ε-free LRP of this bias-free linear pooling conserves
    the output per sample (a product rule would hand half of it to the mask)."""
    torch.manual_seed(0)
    net = Gated().eval()
    g = attribx.translate(net, input_shape=(5, 8))
    assert g["mul"].op == "where"
    x, pad = _padded()
    with torch.no_grad():
        ref = net(x, pad).numpy()
    assert relative_error(np.asarray(attribx.forward(g, (x, pad))), ref) <= 1e-6
    rel = np.asarray(attribx.explain(net, (x, pad), "lrp.attn", target=2, epsilon=0.0))
    assert relative_error(rel.sum(axis=(1, 2)), ref[:, 2]) <= 1e-5 and not rel[pad.numpy()].any()


def test_a_mask_op_without_translation_is_refused_naming_it():
    class Counts(nn.Module):
        def forward(self, x, key_padding_mask):
            return x.sum(-1) + key_padding_mask.cumsum(1)

    with pytest.raises(attribx.UnsupportedError, match="cumsum"):
        attribx.translate(Counts().eval(), input_shape=(5, 8))


STYLES = {
    "additive": lambda s, m: s + (1 - m[:, None, :]) * -10000.0,
    "additive_float": lambda s, m: s + (1.0 - m[:, None, :].float()) * -1e9,
    "equal_zero": lambda s, m: s.masked_fill(m[:, None, :] == 0, float("-inf")),
    "not_bool": lambda s, m: s.masked_fill(~m.bool()[:, None, :], float("-inf")),
}


class TokenEncoder(nn.Module):
    """Token ids and an integer attention_mask (1: attended) applied in one of :data:`STYLES`."""

    def __init__(self, style):
        super().__init__()
        self.style = STYLES[style]
        self.emb, self.qkv, self.head = nn.Embedding(20, 8), nn.Linear(8, 24), nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        q, k, v = self.qkv(self.emb(input_ids)).chunk(3, -1)
        scores = self.style(q @ k.transpose(-1, -2) / math.sqrt(8), attention_mask)
        return self.head((scores.softmax(-1) @ v)[:, 0])


@pytest.mark.parametrize("style", list(STYLES))
def test_integer_attention_mask_styles(style):
    """An attention_mask (1 attends) of token ids, made additive or a condition as hand-written models do:
    forward equal to torch's, and masked keys take no relevance."""
    torch.manual_seed(0)
    net = TokenEncoder(style).eval()
    ids = torch.randint(1, 20, (3, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0
    mask[2, 1] = 0
    g = attribx.translate(net, input_shape=(5,))
    assert [v.name for v in g.mask_inputs] == ["attention_mask"]
    with torch.no_grad():
        ref = net(ids, mask).numpy()
    assert relative_error(np.asarray(attribx.forward(g, (ids, mask))), ref) <= 1e-6
    rel = np.asarray(attribx.explain(net, (ids, mask), "lrp.cp", target=1))
    assert not rel[mask.numpy() == 0].any() and np.abs(rel[mask.numpy() == 1]).all()


class TwoSignalsAndMask(nn.Module):
    """Two signal inputs (tokens, and a per-token side signal mixed in) and a key_padding_mask: several signal
    inputs and a mask input at once."""

    def __init__(self):
        super().__init__()
        self.side = nn.Linear(4, 8)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x1, x2, key_padding_mask):
        h = x1 + self.side(x2)
        y, _ = self.att(h, h, h, key_padding_mask=key_padding_mask)
        return self.head(y[:, 0])


@pytest.mark.parametrize("engine", ["torch", "numpy"])
def test_two_signal_inputs_and_a_mask_input_gradient_x_input_equals_autograd(engine):
    """(x1, x2, key_padding_mask) in forward's order: relevance for x1 and x2 only, each equal to autograd's
    gradient times input; masked keys take none."""
    torch.manual_seed(0)
    net = TwoSignalsAndMask().eval()
    x1, pad = _padded()
    x2 = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(2))
    g = attribx.translate(net, input_shape=((5, 8), (5, 4), (5,)))
    assert [v.name for v in g.signal_inputs] == ["x1", "x2"]
    assert [v.name for v in g.mask_inputs] == ["key_padding_mask"]
    a, b = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    net(a, b, pad)[:, 1].sum().backward()
    refs = ((a.grad * a).detach().numpy(), (b.grad * b).detach().numpy())
    for given in ((x1, x2, pad), {"x1": x1, "x2": x2, "key_padding_mask": pad}):
        rel = attribx.explain(net, given, "gradient_x_input", target=1, engine=engine)
        if isinstance(given, dict):      # a dict in, a dict out, by the signal inputs' names
            assert list(rel) == ["x1", "x2"]
            rel = tuple(rel.values())
        assert isinstance(rel, tuple) and len(rel) == 2
        for r, ref in zip(rel, refs):
            r = np.asarray(r)
            assert r.shape == ref.shape and relative_error(r, ref) <= 1e-5
            assert not r[pad.numpy()].any()


def test_a_mask_left_out_runs_as_nothing_masked(model):
    """explain(model, x) on forward(x, key_padding_mask): the boolean mask left out masks nothing (False), as
    torch's forward with an all-False key_padding_mask; an integer attention_mask left out is all ones."""
    x, _ = _padded()
    with torch.no_grad():
        ref = model(x, torch.zeros(3, 5, dtype=torch.bool)).numpy()
    assert relative_error(np.asarray(attribx.forward(model, x)), ref) <= 1e-6
    net = TokenEncoder("equal_zero").eval()
    ids = torch.randint(1, 20, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(ids, torch.ones(3, 5, dtype=torch.long)).numpy()
    assert relative_error(np.asarray(attribx.forward(net, ids)), ref) <= 1e-6


def test_two_signal_inputs_with_the_mask_left_out_equal_autograd():
    torch.manual_seed(0)
    net = TwoSignalsAndMask().eval()
    x1, _ = _padded()
    x2 = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(2))
    a, b = x1.clone().requires_grad_(True), x2.clone().requires_grad_(True)
    net(a, b, torch.zeros(3, 5, dtype=torch.bool))[:, 1].sum().backward()
    rel = attribx.explain(net, (x1, x2), "gradient_x_input", target=1)
    for r, g in zip(rel, (a, b)):
        assert relative_error(np.asarray(r), (g.grad * g).detach().numpy()) <= 1e-5
