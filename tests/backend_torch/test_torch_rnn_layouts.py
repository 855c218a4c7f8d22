"""torch RNNs in the layouts models use: time-major (``batch_first=False`` after ``x.transpose(0, 1)``, final
states h_n of shape (L·D, N, H)) and padded batches of different lengths through ``pack_padded_sequence``,
with lengths computed in the model from the input. Forward equals torch on both engines; padding takes
exactly zero relevance and each padded sample's relevance equals the model run on that sequence alone."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import attribx  # noqa: E402

nn = torch.nn
CELLS = [nn.LSTM, nn.GRU]


def final_h(rnn, states):
    """h_n of an LSTM's (h_n, c_n) or a GRU's h_n (decided by the module: fx traces states as a Proxy)."""
    return states[0] if isinstance(rnn, nn.LSTM) else states


def check_forward(m, x):
    g = attribx.translate(m, input_shape=x.shape[1:])
    want = m(torch.from_numpy(x)).detach().numpy()
    for engine in ("numpy", "torch"):
        np.testing.assert_allclose(attribx.forward(g, x, engine=engine), want, rtol=1e-10, atol=1e-12,
                                   err_msg=engine)
    return g


# ----------------------------------------------------------------------------------------------
# time-major


class TimeMajor(nn.Module):
    """Batch-first input, transposed to time-major for an RNN with batch_first=False; the head reads the
    time-major output and h_n in every way torch code does."""

    def __init__(self, cell, layers=2, bidirectional=True, permute=False, zero_h0=False):
        super().__init__()
        self.rnn = cell(5, 4, num_layers=layers, bidirectional=bidirectional)
        self.lstm = cell is nn.LSTM
        self.permute, self.zero_h0 = permute, zero_h0
        k = (2 if bidirectional else 1)
        self.fc = nn.Linear(4 * k * 4 + 4 + 4 * k * layers, 3)
        self.per_step = nn.Linear(4 * k, 2)

    def forward(self, x):
        xt = x.permute(1, 0, 2) if self.permute else x.transpose(0, 1)
        if self.zero_h0:       # initial states made for the batch from the time-major input's size
            h0 = torch.zeros(self.rnn.num_layers * (2 if self.rnn.bidirectional else 1), xt.size(1), 4,
                             dtype=xt.dtype)
            out, states = self.rnn(xt, (h0, h0) if self.lstm else h0)
        else:
            out, states = self.rnn(xt)
        h = final_h(self.rnn, states)
        tagged = self.per_step(torch.tanh(out)).transpose(0, 1)        # (N, T, 2): per step, back batch-first
        feats = [out[-1], out.mean(0), out.transpose(0, 1)[:, 0], torch.relu(out[1:]).sum(dim=0), h[-1],
                 h.permute(1, 0, 2).reshape(x.size(0), -1)]
        return self.fc(torch.cat(feats, dim=1)) + tagged.sum(1)[:, :1]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers, bidirectional, permute, zero_h0", [(1, False, False, False),
                                                                   (2, True, True, False),
                                                                   (2, True, False, True)])
def test_time_major_rnn_equals_torch(cell, layers, bidirectional, permute, zero_h0):
    torch.manual_seed(layers)
    m = TimeMajor(cell, layers, bidirectional, permute, zero_h0).double().eval()
    g = check_forward(m, np.random.default_rng(0).normal(size=(3, 6, 5)))
    assert g.input.dims == ("sample", "token", "embedding")
    # the transposes of axes 0/1 are no-ops in the graph: no transpose node anywhere
    assert not any(n.op == "transpose" for n in g.nodes)
    ds = attribx.explain(m, np.random.default_rng(1).normal(size=(2, 6, 5)), "lrp.epsilon", target=0)
    assert np.isfinite(ds.values).all() and np.abs(ds.values).sum() > 0


@pytest.mark.parametrize("cell", CELLS)
def test_single_layer_h_n_squeezed(cell):
    class Squeezed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cell(5, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            _, states = self.rnn(x.transpose(0, 1))
            return self.fc(final_h(self.rnn, states).squeeze(0))

    torch.manual_seed(0)
    check_forward(Squeezed().double().eval(), np.random.default_rng(0).normal(size=(3, 4, 5)))


def test_time_major_token_ids_embedded_after_transposing():
    class Ids(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(12, 5)
            self.rnn = nn.GRU(5, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, ids):
            out, _ = self.rnn(self.emb(ids.t()))
            return self.fc(out[-1])

    torch.manual_seed(0)
    m = Ids().double().eval()
    ids = np.random.default_rng(0).integers(0, 12, size=(3, 6))
    g = check_forward(m, ids)
    assert g.input.dtype == "int64"


@pytest.mark.parametrize("cell", CELLS)
def test_time_major_refusals_say_what_to_do(cell):
    class InputTimeMajor(nn.Module):         # the model's own input is (T, N, E)
        def __init__(self):
            super().__init__()
            self.rnn = cell(5, 4)

        def forward(self, x):
            return self.rnn(x)[0][-1]

    with pytest.raises(attribx.UnsupportedError, match=r"module 'rnn'.*batch_first=False.*expects time-major "
                                                       r"data.*pass batch-first data and transpose in the model"):
        attribx.translate(InputTimeMajor().eval(), input_shape=(3, 5))

    class WrongFlag(nn.Module):              # transposed, but the layer is batch-first
        def __init__(self):
            super().__init__()
            self.rnn = cell(5, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(x.transpose(0, 1))[0][-1]

    with pytest.raises(attribx.UnsupportedError, match=r"batch_first=True, but its input is time-major"):
        attribx.translate(WrongFlag().eval(), input_shape=(3, 5))

    class Softmaxed(nn.Module):              # an op that reads a time-major tensor along its axes
        def __init__(self):
            super().__init__()
            self.rnn = cell(5, 4)

        def forward(self, x):
            out = self.rnn(x.transpose(0, 1))[0]
            return torch.softmax(out, dim=0).transpose(0, 1)[:, 0]

    with pytest.raises(attribx.UnsupportedError, match=r"softmax.*time-major tensor"):
        attribx.translate(Softmaxed().eval(), input_shape=(3, 5))

    class BatchIndexed(nn.Module):           # indexing torch's axis 1 of a time-major tensor is the batch
        def __init__(self):
            super().__init__()
            self.rnn = cell(5, 4)

        def forward(self, x):
            return self.rnn(x.transpose(0, 1))[0][:, 0]

    with pytest.raises(attribx.UnsupportedError, match=r"indexes the batch axis \(axis 1 of a time-major"):
        attribx.translate(BatchIndexed().eval(), input_shape=(3, 5))

    class ReturnsTimeMajor(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cell(5, 4)

        def forward(self, x):
            return self.rnn(x.transpose(0, 1))[0]

    with pytest.raises(attribx.UnsupportedError, match=r"returns a tensor whose batch axis is second.*return out\.transpose\(0, 1\)"):
        attribx.translate(ReturnsTimeMajor().eval(), input_shape=(3, 5))


# ----------------------------------------------------------------------------------------------
# packed sequences


class Packed(nn.Module):
    """Token ids (0 pads, on the right) -> Embedding(padding_idx=0) -> packed bidirectional RNN -> Linear on
    the last layer's final states of both directions."""

    def __init__(self, cell, layers=1, vocab=20, e=5, d=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, e, padding_idx=0)
        self.rnn = cell(e, d, num_layers=layers, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * d, 3)

    def forward(self, ids):
        lengths = (ids != 0).sum(1)
        packed = pack_padded_sequence(self.emb(ids), lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, states = self.rnn(packed)
        h = final_h(self.rnn, states)
        return self.fc(torch.cat([h[-2], h[-1]], dim=1))


class PackedOutputs(nn.Module):
    """Embedded input (zero vectors pad), lengths from the input, the padded outputs read back: mean over
    the valid steps, the last step (zeros for shorter sequences, as torch's), and h_n."""

    def __init__(self, cell, time_major=False):
        super().__init__()
        self.rnn = cell(5, 4, batch_first=not time_major, num_layers=2)
        self.time_major = time_major
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        lengths = (x != 0).any(-1).sum(1)
        if self.time_major:
            packed = nn.utils.rnn.pack_padded_sequence(x.transpose(0, 1), lengths.to("cpu"))
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.long(), batch_first=True, enforce_sorted=False)
        out, states = self.rnn(packed)
        out, lens = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        mean = out.sum(1) / lens.unsqueeze(1).to(x.dtype)
        return self.fc(torch.cat([mean, out[:, -1], final_h(self.rnn, states)[-1]], dim=1))


def padded_ids(rng, lengths, steps, vocab=20):
    ids = np.zeros((len(lengths), steps), dtype=np.int64)
    for k, n in enumerate(lengths):
        ids[k, :n] = rng.integers(1, vocab, size=n)
    return ids


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_packed_padded_ids_equal_each_sequence_alone(cell, layers):
    torch.manual_seed(layers)
    m = Packed(cell, layers).double().eval()
    lengths, steps = [4, 7, 1, 6], 7
    ids = padded_ids(np.random.default_rng(0), lengths, steps)
    g = check_forward(m, ids)
    assert g.input.dtype == "int64" and any(n.op == "length_mask" for n in g.nodes)
    targets = [0, 1, 2, 1]
    for engine in ("numpy", "torch"):
        rel = attribx.explain(m, ids, "lrp.epsilon", target=targets, epsilon=1e-3, bias_factor=1.0, engine=engine)
        assert np.isfinite(rel.values).all()
        for k, n in enumerate(lengths):
            assert not np.any(rel.values[k, n:]), f"{engine}: padding of sample {k} took relevance"
            alone = attribx.explain(m, ids[k:k + 1, :n], "lrp.epsilon", target=targets[k], epsilon=1e-3,
                                    bias_factor=1.0, engine=engine)
            np.testing.assert_allclose(rel.values[k, :n], alone.values[0], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{engine}, sample {k}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("time_major", [False, True])
def test_packed_embedded_sequences_read_back_padded(cell, time_major):
    torch.manual_seed(3)
    m = PackedOutputs(cell, time_major).double().eval()
    rng = np.random.default_rng(3)
    lengths = [6, 5, 3] if time_major else [3, 6, 1]      # enforce_sorted=True (the default) wants them sorted
    x = rng.normal(size=(3, 6, 5))
    for k, n in enumerate(lengths):
        x[k, n:] = 0.0
    check_forward(m, x)
    rel = attribx.explain(m, x, "lrp.epsilon", target=0)
    for k, n in enumerate(lengths):
        assert not np.any(rel.values[k, n:])
    # the gradient through the masked steps (where nodes, length mask) is torch's autograd's
    xt = torch.from_numpy(x).requires_grad_(True)
    m(xt)[:, 1].sum().backward()
    for engine in ("numpy", "torch"):
        grad = attribx.explain(m, x, "gradient", target=1, engine=engine)
        np.testing.assert_allclose(grad.values, xt.grad.numpy(), rtol=1e-10, atol=1e-14, err_msg=engine)


def test_packed_sequence_refusals():
    class SecondInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(5, 4, batch_first=True)

        def forward(self, x, lengths):
            return self.rnn(pack_padded_sequence(x, lengths, batch_first=True))[1][0][-1]

    with pytest.raises(attribx.UnsupportedError, match=r"several inputs.*lengths.*\(ids != pad\)\.sum\(1\)"):
        attribx.translate(SecondInput().eval(), input_shape=(3, 5))

    class ConstantLengths(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(5, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(pack_padded_sequence(x, torch.tensor([3]), batch_first=True))[1][-1]

    with pytest.raises(attribx.UnsupportedError, match=r"pack_padded_sequence.*lengths do not come from the "
                                                       r"model input"):
        attribx.translate(ConstantLengths().eval(), input_shape=(3, 5))

    class PadsWithOnes(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(5, 4, batch_first=True)

        def forward(self, x):
            p = pack_padded_sequence(x, (x != 0).any(-1).sum(1), batch_first=True, enforce_sorted=False)
            out, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(p)[0], batch_first=True, padding_value=1.0)
            return out[:, -1]

    with pytest.raises(attribx.UnsupportedError, match=r"padding_value=1.0"):
        attribx.translate(PadsWithOnes().eval(), input_shape=(3, 5))

    class ReadsPacked(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(5, 4, batch_first=True)

        def forward(self, x):
            p = pack_padded_sequence(x, (x != 0).any(-1).sum(1), batch_first=True, enforce_sorted=False)
            return self.rnn(p)[0].data

    with pytest.raises(attribx.UnsupportedError, match=r"PackedSequence"):
        attribx.translate(ReadsPacked().eval(), input_shape=(3, 5))
