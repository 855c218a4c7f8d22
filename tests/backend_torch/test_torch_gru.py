"""torch.nn.GRU translated (unrolled into graph ops): forward equal to torch for every layout the translator
accepts, initial states as fill nodes, and LRP-ε with bias_factor=1 conserving the score down to the input
and the initial states (up to the sums' stabiliser)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import attribx  # noqa: E402
from attribx import composite as C  # noqa: E402
from attribx.rules.lrp import Epsilon  # noqa: E402

nn = torch.nn


class GRUHead(nn.Module):
    """A GRU and a linear head on the last output step, the last layer's final state and h_n read whole."""

    def __init__(self, e=5, d=4, layers=1, bidirectional=False, classes=3, bias=True, h0=None):
        super().__init__()
        self.gru = nn.GRU(e, d, num_layers=layers, batch_first=True, bidirectional=bidirectional, bias=bias)
        k = 2 if bidirectional else 1
        self.fc = nn.Linear(d * k + d + d * k * layers, classes)
        self.h0 = None if h0 is None else nn.Parameter(h0)        # learned initial state (L·D, 1, d)

    def forward(self, x):
        if self.h0 is None:
            out, h = self.gru(x)
        else:
            out, h = self.gru(x, self.h0.expand(-1, x.size(0), -1).contiguous())
        every = h.transpose(0, 1).reshape(x.size(0), -1)
        return self.fc(torch.cat([out[:, -1], h[-1], every], dim=1))


def check_forward(m, x, input_shape):
    g = attribx.translate(m, input_shape=input_shape)
    want = m(torch.from_numpy(x)).detach().numpy()
    for engine in ("numpy", "torch"):
        np.testing.assert_allclose(attribx.forward(g, x, engine=engine), want, rtol=1e-10, atol=1e-12,
                                   err_msg=engine)
    return g


@pytest.mark.parametrize("layers, bidirectional, bias", [(1, False, True), (1, True, True), (2, True, True),
                                                         (3, False, False)])
def test_gru_forward_equals_torch(layers, bidirectional, bias):
    torch.manual_seed(layers)
    m = GRUHead(layers=layers, bidirectional=bidirectional, bias=bias).double().eval()
    for steps in (1, 4):
        x = np.random.default_rng(steps).normal(size=(3, steps, 5))
        g = check_forward(m, x, (steps, 5))
    assert g.input.dims == ("sample", "token", "embedding")
    assert any(n.name == "gru/l0/t0/gates" for n in g.nodes)
    assert not any(n.op == "where" for n in g.nodes)        # no mask without packing


def test_gru_learned_initial_state_is_a_fill_node():
    torch.manual_seed(0)
    h0 = torch.randn(4, 1, 4, dtype=torch.float64)
    m = GRUHead(layers=2, bidirectional=True, h0=h0).double().eval()
    x = np.random.default_rng(1).normal(size=(3, 5, 5))
    g = check_forward(m, x, (5, 5))
    np.testing.assert_array_equal(g["gru/l1_reverse/h0"].params["value"], h0[3, 0].numpy())
    assert g["gru/l1_reverse/h0"].op == "fill"


def _conservation(m, x, targets, method, **params):
    g = attribx.translate(m, input_shape=x.shape[1:])
    fills = [n.name for n in g.nodes if n.op == "fill"]
    score = m(torch.from_numpy(x)).detach().numpy()[np.arange(len(x)), targets]
    out = {}
    for engine in ("numpy", "torch"):
        ds = attribx.explain(m, x, method, target=targets, layers=fills, engine=engine, **params)
        parts = [ds[k].values.reshape(len(x), -1) for k in ["relevance", *fills]]
        total = sum(p.sum(1) for p in parts)
        mass = sum(np.abs(p).sum(1) for p in parts)        # the scale: all relevance, of either sign
        out[engine] = (ds, np.abs(total - score) / np.maximum(np.abs(score), mass))
    return fills, out


@pytest.mark.parametrize("layers, bidirectional, bias", [(1, False, True), (2, True, True), (2, True, False)])
def test_gru_epsilon_conserves_the_score_into_input_and_initial_states(layers, bidirectional, bias):
    """Gates take no relevance, h = (1-z)·n + z·h' is a gated sum: with bias_factor=1 the score goes to the
    input and the initial states, less what the stabiliser of the candidate's pre-activation sum
    (x-part + r·h-part, a plain sum with the 1e-6 stabiliser) keeps: measured <= 2e-6 of the relevance
    mass (the sum of |relevance| over input and initial states), <= 2e-12 with a 1e-12 stabiliser."""
    torch.manual_seed(7)
    m = GRUHead(layers=layers, bidirectional=bidirectional, bias=bias).double().eval()
    x = np.random.default_rng(0).normal(size=(4, 6, 5))
    targets = [0, 1, 2, 0]
    fills, out = _conservation(m, x, targets, "lrp.epsilon", epsilon=1e-6, bias_factor=1.0)
    assert len(fills) == layers * (2 if bidirectional else 1)
    for engine, (_, err) in out.items():
        assert err.max() <= 1e-5, f"{engine}: relative conservation error {err}"
    ours, theirs = out["numpy"][0], out["torch"][0]
    for name in ["relevance", *fills]:
        scale = np.abs(ours[name].values).max()
        assert np.abs(ours[name].values - theirs[name].values).max() <= 1e-8 * max(scale, 1e-12), name
    # the defect is the stabiliser's alone: with 1e-12 in the sums the score is conserved to ~1e-12
    exact = C.Composite([(C.category("layer"), Epsilon(epsilon=1e-9, bias_factor=1.0))],
                        defaults=C.lrp_defaults(1e-12, 1e-9, 1.0))
    _, out = _conservation(m, x, targets, exact)
    for engine, (_, err) in out.items():
        assert err.max() <= 1e-9, f"{engine}: relative conservation error {err}"


def test_unsupported_gru_settings_name_the_module():
    class FromInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(5, 4, batch_first=True)

        def forward(self, x):
            return self.gru(x, x[:, 0, :4].reshape(1, -1, 4))[0]       # initial state computed from the input

    with pytest.raises(attribx.UnsupportedError, match=r"module 'gru'.*initial hidden state is computed"):
        attribx.translate(FromInput().eval(), input_shape=(3, 5))
