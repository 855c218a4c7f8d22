"""torch.nn.LSTM translated (unrolled into graph ops): forward equal to torch for every layout the
translator accepts, and LRP-ε equal to Arras et al.'s reference (tests/arras_reference.py) for the trained
SST bidirectional LSTM built as ``nn.LSTM`` + ``Linear``, as the data's README describes."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import attribx  # noqa: E402
from attribx.recurrent import reorder_gates  # noqa: E402
from arras_reference import arras_lrp, sst_net  # noqa: E402

nn = torch.nn


class LastStates(nn.Module):
    """An LSTM and a linear head on the last output step and the last layer's final hidden state."""

    def __init__(self, e=5, d=4, layers=1, bidirectional=False, classes=3, bias=True, hx=None):
        super().__init__()
        self.lstm = nn.LSTM(e, d, num_layers=layers, batch_first=True, bidirectional=bidirectional, bias=bias)
        k = 2 if bidirectional else 1
        self.fc = nn.Linear(d * k + d, classes)
        self.hx = None if hx is None else nn.ParameterList(hx)      # learned initial states (L·D, 1, d)

    def forward(self, x):
        if self.hx is None:
            out, (h, c) = self.lstm(x)
        else:
            h0, c0 = (s.expand(-1, x.shape[0], -1).contiguous() for s in self.hx)
            out, (h, c) = self.lstm(x, (h0, c0))
        return self.fc(torch.cat([out[:, -1], h[-1]], dim=1))


@pytest.mark.parametrize("layers, bidirectional, bias", [(1, False, True), (1, True, True), (2, True, True),
                                                         (3, False, False)])
def test_forward_equals_torch(layers, bidirectional, bias):
    torch.manual_seed(layers)
    m = LastStates(layers=layers, bidirectional=bidirectional, bias=bias).double().eval()
    for steps in (1, 4):
        x = np.random.default_rng(steps).normal(size=(3, steps, 5))
        g = attribx.translate(m, input_shape=(steps, 5))
        want = m(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(attribx.forward(g, x), want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(attribx.forward(g, x, engine="torch"), want, rtol=1e-10, atol=1e-12)
    assert g.input.dims == ("sample", "token", "embedding")
    assert any(n.name == "lstm/l0/t0/gates" for n in g.nodes)


def test_initial_states_given_to_the_lstm():
    torch.manual_seed(0)
    d, layers = 4, 2
    h0 = torch.randn(layers * 2, 1, d, dtype=torch.float64)
    c0 = torch.randn(layers * 2, 1, d, dtype=torch.float64)
    m = LastStates(layers=layers, bidirectional=True, hx=(h0, c0)).double().eval()
    x = np.random.default_rng(1).normal(size=(3, 5, 5))
    g = attribx.translate(m, input_shape=(5, 5))
    np.testing.assert_allclose(attribx.forward(g, x), m(torch.from_numpy(x)).detach().numpy(), rtol=1e-10)
    np.testing.assert_array_equal(g["lstm/l1_reverse/c0"].params["value"], c0[3, 0].numpy())


def test_unsupported_lstm_settings_name_the_module():
    class PerSample(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(5, 4, batch_first=True)

        def forward(self, x):
            h0 = x[:, 0, :4].unsqueeze(0).contiguous()       # computed from the input
            return self.lstm(x, (h0, h0))[0]

    with pytest.raises(attribx.UnsupportedError, match="unsqueeze.*before the batch axis"):
        attribx.translate(PerSample().eval(), input_shape=(3, 5))
    class SequenceFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(5, 4)

        def forward(self, x):
            return self.lstm(x)[0]

    m = SequenceFirst().eval()
    with pytest.raises(attribx.UnsupportedError, match="batch_first=False.*pass batch-first data and transpose"):
        attribx.translate(m, input_shape=(3, 5))


class SST(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.lstm = nn.LSTM(60, 60, batch_first=True, bidirectional=True)
        self.out = nn.Linear(120, 5, bias=False)
        with torch.no_grad():
            for suffix, side in (("l0", "Left"), ("l0_reverse", "Right")):
                for ours, theirs in (("weight_ih", "Wxh"), ("weight_hh", "Whh"), ("bias_ih", "bxh"),
                                     ("bias_hh", "bhh")):
                    getattr(self.lstm, f"{ours}_{suffix}").copy_(
                        torch.from_numpy(reorder_gates(net[f"{theirs}_{side}"], "arras", "torch")))
            self.out.weight.copy_(torch.from_numpy(np.hstack([net["Why_Left"], net["Why_Right"]])))

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.out(torch.cat([h[0], h[1]], dim=1))


@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
def test_sst_bilstm_from_torch_equals_arras(bias_factor):
    net = sst_net()
    m = SST(net).double().eval()
    for steps in (2, 7):
        x = np.random.default_rng(steps).normal(size=(2, steps, 60)) * 0.3
        for engine in ("numpy", "torch"):
            ours = attribx.explain(m, x, "lrp.epsilon", target=[1, 3], epsilon=0.001, bias_factor=bias_factor,
                                   engine=engine)
            for k, target in enumerate([1, 3]):
                want, _, _ = arras_lrp(x[k], net, target, 0.001, bias_factor)
                err = np.abs(ours.values[k] - want).max() / np.abs(want).max()
                assert err <= 1e-4, f"{engine}, {steps} steps, sample {k}: relative error {err:.1e}"
    # float32, as users run it
    ours = attribx.explain(m.float(), x.astype(np.float32), "lrp.epsilon", target=[1, 3], epsilon=0.001,
                           bias_factor=bias_factor)
    want, _, _ = arras_lrp(x[0], net, 1, 0.001, bias_factor)
    assert np.abs(ours.values[0] - want).max() / np.abs(want).max() <= 1e-4


class PackedSST(SST):
    """The SST BiLSTM on right-padded batches: lengths from the input (zero vectors pad), packed."""

    def forward(self, x):
        lengths = (x != 0).any(-1).sum(1)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.out(torch.cat([h[0], h[1]], dim=1))


@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
def test_sst_bilstm_on_a_padded_packed_batch_equals_arras_per_sequence(bias_factor):
    net = sst_net()
    m = PackedSST(net).double().eval()
    lengths, steps, targets = [3, 8, 1, 5], 8, [1, 3, 0, 4]
    x = np.random.default_rng(11).normal(size=(len(lengths), steps, 60)) * 0.3
    for k, n in enumerate(lengths):
        x[k, n:] = 0.0
    want_out = m(torch.from_numpy(x)).detach().numpy()
    for engine in ("numpy", "torch"):
        np.testing.assert_allclose(attribx.forward(m, x, engine=engine), want_out, rtol=1e-10, atol=1e-12)
        ours = attribx.explain(m, x, "lrp.epsilon", target=targets, epsilon=0.001, bias_factor=bias_factor,
                               engine=engine)
        for k, (n, target) in enumerate(zip(lengths, targets)):
            want, _, _ = arras_lrp(x[k, :n], net, target, 0.001, bias_factor)
            err = np.abs(ours.values[k, :n] - want).max() / np.abs(want).max()
            assert err <= 1e-8, f"{engine}, sample {k} ({n} steps): relative error {err:.1e}"   # measured 9e-14
            assert not np.any(ours.values[k, n:]), f"{engine}: padding of sample {k} took relevance"
