"""Keras 3 recurrent layers (LSTM, GRU, Bidirectional) and padding masks (Masking, Embedding(mask_zero=True))
translated into the attribx graph: the forward pass equals ``model(x)`` (float64 tight, float32 to ~1e-6) on
the numpy and tensorflow engines; a padded batch equals each sequence run alone (forward and relevance,
padding relevance exactly 0); LRP-ε on the trained SST BiLSTM built as ``Bidirectional(LSTM(60))`` equals
Arras et al.'s reference (tests/arras_reference.py); the same weights in Keras and torch give the same
relevance (where torch is installed)."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import attribx  # noqa: E402
from attribx import UnsupportedError  # noqa: E402
from attribx.recurrent import reorder_gates  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from arras_reference import arras_lrp, sst_net  # noqa: E402

L = keras.layers
pytestmark = pytest.mark.filterwarnings("ignore:.*does not support masking:UserWarning")
ENGINES = ("numpy", "tensorflow")
TOL64 = 1e-10
TOL32 = 2e-6


@pytest.fixture
def float64():
    """Build models in float64 (Keras's floatx), for tight comparisons."""
    old, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield np.float64
    keras.config.set_floatx(old)
    keras.config.set_dtype_policy(policy)


def randomize(model, seed=0, scale=0.5):
    """Random weights everywhere (biases too, so that bias handling is tested)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([(rng.normal(size=w.shape) * scale).astype(w.dtype) for w in ws])
    return model


def keras_out(model, x):
    y = model(x)
    return [np.asarray(v) for v in y] if isinstance(y, (list, tuple)) else np.asarray(y)


def check_forward(model, x, tol=TOL64, engines=ENGINES):
    want = keras_out(model, x)
    for engine in engines:
        got = attribx.forward(model, x, engine=engine)
        err = relative_error(np.asarray(got), want)
        assert err <= tol, f"{engine}: relative error {err:.1e}"


def sequences(n=3, steps=5, features=3, seed=1, dtype=np.float64):
    return np.random.default_rng(seed).normal(size=(n, steps, features)).astype(dtype)


# ----------------------------------------------------------------------------------------------
# LSTM and GRU


CELLS = {
    "lstm": lambda **kw: L.LSTM(4, **kw),
    "gru": lambda **kw: L.GRU(4, **kw),
    "gru_reset_before": lambda **kw: L.GRU(4, reset_after=False, **kw),
}


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("return_sequences, go_backwards, use_bias",
                         [(False, False, True), (True, False, True), (True, True, True), (False, True, False),
                          (True, False, False)])
def test_lstm_gru_forward_equal_keras(float64, cell, return_sequences, go_backwards, use_bias):
    layer = CELLS[cell](return_sequences=return_sequences, go_backwards=go_backwards, use_bias=use_bias)
    model = randomize(keras.Sequential([keras.Input((5, 3)), layer, L.Dense(2)]))
    check_forward(model, sequences())
    g = attribx.translate(model)
    assert g.input.dims == ("sample", "token", "embedding")
    assert any(n.name == f"{layer.name}/t0/gates" for n in g.nodes)


@pytest.mark.parametrize("cell", list(CELLS))
def test_float32_and_one_step(cell):
    for steps in (1, 7):
        layer = CELLS[cell](return_sequences=True, dropout=0.3, recurrent_dropout=0.2, unroll=True)
        model = randomize(keras.Sequential([keras.Input((steps, 3)), layer]))
        check_forward(model, sequences(steps=steps, dtype=np.float32), TOL32)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_return_state(float64, cell):
    inp = keras.Input((5, 3))
    out, *states = CELLS[cell](return_sequences=True, return_state=True, go_backwards=True)(inp)
    y = L.Concatenate()([L.Flatten()(out), *states])
    model = randomize(keras.Model(inp, L.Dense(3)(y)))
    check_forward(model, sequences(), TOL64)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul", None])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional(float64, merge_mode, return_sequences):
    inp = keras.Input((5, 3))
    y = L.Bidirectional(L.LSTM(4, return_sequences=return_sequences), merge_mode=merge_mode)(inp)
    if merge_mode is None:
        y = L.Concatenate()(y)
    model = randomize(keras.Model(inp, y))
    check_forward(model, sequences(), TOL64)


def test_bidirectional_own_backward_layer_and_states(float64):
    inp = keras.Input((5, 3))
    bi = L.Bidirectional(L.GRU(4, return_sequences=True, return_state=True),
                         backward_layer=L.GRU(3, reset_after=False, return_sequences=True, return_state=True,
                                              go_backwards=True))
    out, h_f, h_b = bi(inp)
    model = randomize(keras.Model(inp, L.Concatenate()([L.Flatten()(out), h_f, h_b])))
    check_forward(model, sequences(), TOL64)
    g = attribx.translate(model)
    assert {n.name for n in g.nodes} >= {f"{bi.name}/{bi.forward_layer.name}/t0/gates",
                                         f"{bi.name}/{bi.backward_layer.name}/t4/gates"}


def test_stacked_and_time_distributed_dense(float64):
    model = randomize(keras.Sequential([keras.Input((5, 3)), L.LSTM(4, return_sequences=True), L.Dense(3),
                                        L.Bidirectional(L.GRU(2, return_sequences=True)), L.GRU(3)]))
    check_forward(model, sequences(), TOL64)


# ----------------------------------------------------------------------------------------------
# masks


def padded(lengths, steps, features=3, left=False, seed=2, dtype=np.float64, value=0.0):
    """Random sequences of the given lengths, padded with ``value`` on the right (or left)."""
    rng = np.random.default_rng(seed)
    x = np.full((len(lengths), steps, features), value, dtype=dtype)
    alone = []
    for k, n in enumerate(lengths):
        s = rng.normal(size=(n, features)).astype(dtype)
        alone.append(s)
        if left:
            x[k, steps - n:] = s
        else:
            x[k, :n] = s
    return x, alone


MASKED = {
    "lstm": lambda rs: L.LSTM(4, return_sequences=rs),
    "gru": lambda rs: L.GRU(4, return_sequences=rs),
    "lstm_zero_output": lambda rs: L.LSTM(4, return_sequences=rs, zero_output_for_mask=True),
    "gru_backwards": lambda rs: L.GRU(4, return_sequences=rs, go_backwards=True, reset_after=False),
    "bilstm": lambda rs: L.Bidirectional(L.LSTM(4, return_sequences=rs)),
    "bigru_sum": lambda rs: L.Bidirectional(L.GRU(4, return_sequences=rs), merge_mode="sum"),
}


def masked_model(kind, return_sequences, value=0.0, steps=None):
    inp = keras.Input((steps, 3))
    y = MASKED[kind](return_sequences)(L.Masking(value)(inp))
    return randomize(keras.Model(inp, L.Dense(2)(y)))


@pytest.mark.parametrize("kind", list(MASKED))
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("left", [False, True])
def test_masked_batch_equals_keras(float64, kind, return_sequences, left):
    """Keras's outputs at masked steps (the kept state for a plain layer, zeros under Bidirectional) and
    its last output, on left- and right-padded batches."""
    model = masked_model(kind, return_sequences, value=-1.0)
    x, _ = padded([5, 2, 4, 1], 6, left=left, value=-1.0)
    check_forward(model, x, TOL64)


@pytest.mark.parametrize("kind", ["lstm", "gru_backwards", "bilstm", "bigru_sum"])
@pytest.mark.parametrize("left", [False, True])
def test_padded_batch_equals_each_sequence_alone(float64, kind, left):
    model = masked_model(kind, False)
    lengths = [5, 2, 4]
    x, alone = padded(lengths, 6, left=left)
    rel = attribx.explain(model, x, "lrp.epsilon", target=[0, 1, 0], epsilon=0.01, engine="numpy")
    out = attribx.forward(model, x, engine="numpy")
    for k, s in enumerate(alone):
        want = np.asarray(model(s[None]))[0]
        assert relative_error(out[k], want) <= TOL64
        for engine in ENGINES:
            r1 = attribx.explain(model, s[None], "lrp.epsilon", target=[0, 1, 0][k], epsilon=0.01, engine=engine)
            real = rel.values[k, 6 - len(s):] if left else rel.values[k, :len(s)]
            assert relative_error(real, r1.values[0]) <= 1e-9, engine
        pad = rel.values[k, :6 - len(s)] if left else rel.values[k, len(s):]
        assert np.all(pad == 0.0)
    assert np.abs(rel.values).sum() > 0


def test_embedding_mask_zero(float64):
    inp = keras.Input((None,), dtype="int32")
    y = L.Embedding(12, 3, mask_zero=True)(inp)
    y = L.Bidirectional(L.LSTM(4, return_sequences=True))(y)
    y = L.GRU(3)(y)
    model = randomize(keras.Model(inp, L.Dense(2)(y)))
    ids = np.array([[3, 5, 7, 0, 0, 0], [0, 0, 0, 2, 11, 4], [1, 2, 3, 4, 5, 6]])
    check_forward(model, ids, TOL64)
    rel = attribx.explain(model, ids, "lrp.epsilon", target=1, engine="numpy")
    assert rel.dims == ("sample", "token")
    np.testing.assert_array_equal(rel.values[ids == 0], 0.0)
    for k, real in enumerate([ids[0, :3], ids[1, 3:]]):
        alone = attribx.explain(model, real[None], "lrp.epsilon", target=1, engine="numpy")
        np.testing.assert_allclose(rel.values[k][ids[k] != 0], alone.values[0], rtol=1e-9, atol=1e-14)


def test_mask_passes_dropout_dense_and_stacked_layers(float64):
    """Dropout and a Dense on the sequence pass the mask on; a stacked LSTM with return_sequences too; the
    last layer returns its last state, and the Dense on it has no mask."""
    model = randomize(keras.Sequential([keras.Input((6, 3)), L.Masking(), L.Dropout(0.5), L.Dense(3),
                                        L.LSTM(4, return_sequences=True), L.LSTM(3), L.Dense(2)]))
    x, _ = padded([6, 3, 1], 6)
    check_forward(model, x, TOL64)
    g = attribx.translate(model)
    second = model.layers[4].name
    assert any(n.op == "where" and n.name.startswith(f"{second}/") for n in g.nodes)


def test_mask_reaches_a_nested_model(float64):
    inner = keras.Sequential([keras.Input((6, 3)), L.Dense(3), L.GRU(4, go_backwards=True)], name="inner")
    inp = keras.Input((6, 3))
    model = randomize(keras.Model(inp, L.Dense(2)(inner(L.Masking()(inp)))))
    randomize(inner, seed=1)
    x, _ = padded([6, 3, 1], 6)
    check_forward(model, x, TOL64)
    assert any(n.op == "where" and n.name.startswith("inner/") for n in attribx.translate(model).nodes)


def test_explicit_mask_tensor_refused():
    inp = keras.Input((5, 3))
    m = L.Masking()(inp)
    h = L.LSTM(4, name="told")(m, mask=keras.ops.any(keras.ops.not_equal(inp, 1.0), axis=-1))
    with pytest.raises(UnsupportedError, match="'told'.*explicit mask="):
        attribx.translate(keras.Model(inp, h))


def test_mask_readers_without_translation_are_refused():
    inp = keras.Input((5, 3))
    y = L.LSTM(4, return_sequences=True)(L.Masking()(inp))
    model = keras.Model(inp, L.GlobalAveragePooling1D()(y))
    with pytest.raises(UnsupportedError, match="global_average_pooling1d.*padding mask"):
        attribx.translate(model)


# ----------------------------------------------------------------------------------------------
# refused settings


@pytest.mark.parametrize("layer, match", [
    (lambda: L.LSTM(3, activation="relu"), "activation 'relu'"),
    (lambda: L.GRU(3, recurrent_activation="hard_sigmoid"), "recurrent_activation 'hard_sigmoid'"),
    (lambda: L.SimpleRNN(3), "SimpleRNNCell"),
    (lambda: L.RNN([L.LSTMCell(3), L.LSTMCell(2)]), "StackedRNNCells"),
    (lambda: L.Bidirectional(L.LSTM(3, activation="sigmoid")), "forward_lstm.*activation 'sigmoid'"),
])
def test_refused_recurrent_settings_name_the_layer(layer, match):
    layer = layer()
    model = keras.Sequential([keras.Input((4, 3)), layer])
    with pytest.raises(UnsupportedError, match=f"{layer.name}.*{match}"):
        attribx.translate(model)


def test_stateful_and_initial_state_refused():
    model = keras.Sequential([keras.Input(batch_shape=(2, 4, 3)), L.LSTM(3, stateful=True, name="keeps")])
    with pytest.raises(UnsupportedError, match="'keeps'.*stateful=True"):
        attribx.translate(model)
    inp = keras.Input((4, 3))
    h0 = L.Dense(3)(L.Flatten()(inp))
    model = keras.Model(inp, L.GRU(3, name="started")(inp, initial_state=[h0]))
    with pytest.raises(UnsupportedError, match="'started'.*initial_state"):
        attribx.translate(model)


# ----------------------------------------------------------------------------------------------
# the trained SST BiLSTM against Arras et al.'s reference


def sst_keras(net, steps, masking=False, dtype="float64"):
    inp = keras.Input((steps, 60), dtype=dtype)
    y = L.Masking(0.0, dtype=dtype)(inp) if masking else inp
    bi = L.Bidirectional(L.LSTM(60, dtype=dtype), dtype=dtype)
    out = L.Dense(5, use_bias=False, dtype=dtype)
    model = keras.Model(inp, out(bi(y)))
    for sub, side in ((bi.forward_layer, "Left"), (bi.backward_layer, "Right")):
        w = {k: reorder_gates(net[f"{k}_{side}"], "arras", "keras") for k in ("Wxh", "Whh", "bxh", "bhh")}
        sub.set_weights([w["Wxh"].T.astype(dtype), w["Whh"].T.astype(dtype), (w["bxh"] + w["bhh"]).astype(dtype)])
    out.set_weights([np.hstack([net["Why_Left"], net["Why_Right"]]).T.astype(dtype)])
    return model


@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
def test_sst_bilstm_equals_arras(bias_factor):
    net = sst_net()
    targets = [1, 3]
    for steps in (1, 4, 9):
        x = np.random.default_rng(steps).normal(size=(2, steps, 60)) * 0.3
        model = sst_keras(net, steps)
        scores = np.asarray(model(x))
        for engine in ENGINES:
            ours = attribx.explain(model, x, "lrp.epsilon", target=targets, epsilon=0.001, bias_factor=bias_factor,
                                   engine=engine)
            for k, target in enumerate(targets):
                want, _, score = arras_lrp(x[k], net, target, 0.001, bias_factor)
                assert abs(scores[k, target] - score) <= 1e-10 * abs(score)
                err = np.abs(ours.values[k] - want).max() / np.abs(want).max()
                assert err <= 1e-10, f"{engine}, {steps} steps, sample {k}: relative error {err:.1e}"
    # float32, as users run it (float64 above agrees to ~1e-14, float32 to ~1e-6)
    x32 = x.astype(np.float32)
    ours = attribx.explain(sst_keras(net, 9, dtype="float32"), x32, "lrp.epsilon", target=targets, epsilon=0.001,
                           bias_factor=bias_factor)
    want, _, _ = arras_lrp(x[0], net, targets[0], 0.001, bias_factor)
    assert np.abs(ours.values[0] - want).max() / np.abs(want).max() <= 1e-4


@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
def test_sst_bilstm_masked_padded_batch_equals_arras(bias_factor):
    net = sst_net()
    lengths, steps, targets = [9, 4, 1, 6], 9, [1, 3, 0, 4]
    x, alone = padded(lengths, steps, features=60, seed=5)
    x *= 0.3
    model = sst_keras(net, steps, masking=True)
    for engine in ENGINES:
        ours = attribx.explain(model, x, "lrp.epsilon", target=targets, epsilon=0.001, bias_factor=bias_factor,
                               engine=engine)
        for k, (s, target) in enumerate(zip(alone, targets)):
            want, _, _ = arras_lrp(s * 0.3, net, target, 0.001, bias_factor)
            err = np.abs(ours.values[k, :len(s)] - want).max() / np.abs(want).max()
            assert err <= 1e-10, f"{engine}, length {len(s)}: relative error {err:.1e}"
            assert np.all(ours.values[k, len(s):] == 0.0)


# ----------------------------------------------------------------------------------------------
# the same weights in Keras and torch


def _torch_and_keras(kind, torch):
    nn = torch.nn
    torch.manual_seed(3)
    cls = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
    rnn = cls(3, 4, batch_first=True, bidirectional=True).double()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = rnn, nn.Linear(8, 2).double()

        def forward(self, x):      # Keras's Bidirectional without return_sequences: each direction's last h
            out = self.rnn(x)[0]
            return self.fc(torch.cat([out[:, -1, :4], out[:, 0, 4:]], dim=1))

    tm = Net().eval()
    inp = keras.Input((5, 3), dtype="float64")
    layer = (L.LSTM(4, dtype="float64") if kind == "lstm" else L.GRU(4, dtype="float64"))
    bi = L.Bidirectional(layer, dtype="float64")
    dense = L.Dense(2, dtype="float64")
    km = keras.Model(inp, dense(bi(inp)))
    cell = "lstm" if kind == "lstm" else "gru"
    for sub, suffix in ((bi.forward_layer, "l0"), (bi.backward_layer, "l0_reverse")):
        p = {k: getattr(rnn, f"{k}_{suffix}").detach().numpy() for k in ("weight_ih", "weight_hh", "bias_ih",
                                                                            "bias_hh")}
        k = {n: reorder_gates(v, "torch", "keras", cell=cell) for n, v in p.items()}
        bias = k["bias_ih"] + k["bias_hh"] if kind == "lstm" else np.stack([k["bias_ih"], k["bias_hh"]])
        sub.set_weights([k["weight_ih"].T, k["weight_hh"].T, bias])
    dense.set_weights([tm.fc.weight.detach().numpy().T, tm.fc.bias.detach().numpy()])
    return tm, km


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_same_weights_in_torch_and_keras_give_the_same_relevance(kind):
    torch = pytest.importorskip("torch")
    pytest.importorskip("attribx_torch")
    tm, km = _torch_and_keras(kind, torch)
    x = sequences(n=3)
    np.testing.assert_allclose(np.asarray(km(x)), tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-10)
    try:
        attribx.translate(tm, input_shape=(5, 3))
    except UnsupportedError as err:
        pytest.skip(f"the torch plugin does not translate this {kind} model: {err}")
    for method, kw in (("lrp.epsilon", {"epsilon": 0.01, "bias_factor": 1.0}), ("gradient", {})):
        rk = attribx.explain(km, x, method, target=[0, 1, 1], **kw)
        rt = attribx.explain(tm, x, method, target=[0, 1, 1], **kw)
        assert relative_error(rk.values, rt.values) <= 1e-9, method
