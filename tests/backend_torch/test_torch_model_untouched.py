"""The user's model is never changed by attribx (brief, non-negotiables): not its parameters, buffers, mode or
hooks, whatever the forward does and also when the translation fails; a model in training mode is explained
as in eval mode, with a warning that says so.

Translation runs the model once (an example forward pass for the shapes); before, that pass ran on the user's
modules, so a forward that updates a buffer (``self.count.add_(1)``), ``nn.Embedding(max_norm=...)`` (it
renormalises its rows) or a Python counter changed the model at every attribx call, even one that then failed;
and the model was put in eval mode through its own ``train()``, silently.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import torch.nn as nn  # noqa: E402

import attribx  # noqa: E402
from attribx.errors import ModelModeWarning, UnsupportedError  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from attribx_torch.translate import clear_cache  # noqa: E402


def snapshot(model):
    """Everything the model is: tensor values (and objects), modes, Python attributes, hook tables."""
    return {
        "tensors": [(k, v, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()],
        "training": {k: m.training for k, m in model.named_modules()},
        "attrs": {k: {a: v for a, v in vars(m).items() if isinstance(v, (int, float, str, bool))}
                  for k, m in model.named_modules()},
        "hooks": {k: {a: dict(v) for a, v in vars(m).items() if a.endswith("hooks") and isinstance(v, dict)}
                  for k, m in model.named_modules()},
    }


def assert_unchanged(model, before):
    now = model.state_dict(keep_vars=True)
    assert list(now) == [k for k, _, _ in before["tensors"]]
    for k, obj, value in before["tensors"]:
        assert now[k] is obj, f"{k} was replaced"
        assert now[k].dtype == value.dtype and torch.equal(now[k].detach(), value), f"{k} changed"
    assert {k: m.training for k, m in model.named_modules()} == before["training"]
    after = snapshot(model)
    assert after["attrs"] == before["attrs"]
    assert after["hooks"].keys() == before["hooks"].keys()
    for k, tables in before["hooks"].items():
        for a, table in tables.items():
            assert list(after["hooks"][k][a].items()) == list(table.items()), f"{k}.{a} changed"


class CountingBuffer(nn.Module):
    """Updates a buffer and a Python counter in forward, and reads the buffer."""

    def __init__(self, fail=False):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("count", torch.zeros(3))
        self.calls = 0
        self.fail = fail

    def forward(self, x):
        self.calls += 1
        self.count.add_(1)
        y = self.lin(x) + self.count
        return torch.fft.fft(y).real if self.fail else y


class MaxNormEmbedding(nn.Module):
    def __init__(self, fail=False):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4, max_norm=1.0)
        with torch.no_grad():
            self.emb.weight.mul_(10)            # rows far longer than max_norm: a lookup renormalises them
        self.lin = nn.Linear(4, 2)
        self.fail = fail

    def forward(self, ids):
        y = self.emb(ids)
        if self.fail:
            y = torch.fft.fft(y).real
        return self.lin(y).sum(1)


def bn_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(3 * 2 * 3, 4))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model


def images(n=2):
    return np.random.default_rng(0).standard_normal((n, 2, 4, 5)).astype(np.float32)


def hooked(model):
    """The same model with a forward hook and a forward pre-hook that change nothing."""
    model.register_forward_hook(lambda m, i, o: None)
    model[0].register_forward_pre_hook(lambda m, i: None)
    return model


# -- training mode -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["translate", "explain"])
def test_training_mode_model_is_explained_in_eval_mode_with_a_warning_and_stays_in_training_mode(call):
    clear_cache()
    model = hooked(bn_net()).train()
    model[3].eval()                         # mixed modes are kept as they are too
    before = snapshot(model)
    x = images()
    with pytest.warns(ModelModeWarning, match=r"Sequential has modules in training mode.*eval mode: dropout off, "
                                              r"batch norm with its running statistics"):
        if call == "translate":
            out = attribx.forward(attribx.translate(model, input_shape=x.shape[1:]), x, engine="numpy")
        else:
            out = attribx.explain(model, x, method="lrp.epsilon", target=0)
    assert_unchanged(model, before)
    if call == "translate":
        ref = copy.deepcopy(model).eval()
        with torch.no_grad():
            want = ref(torch.as_tensor(x)).numpy()
        assert relative_error(out, want) <= 1e-5


def test_train_and_eval_of_the_model_are_not_called():
    """Eval mode for the translation is set on the flags, not through the model's own (overridable) train()."""
    class Custom(nn.Sequential):
        def train(self, mode=True):
            self.mode_calls = getattr(self, "mode_calls", 0) + 1
            return super().train(mode)

    model = Custom(nn.Linear(4, 3), nn.Dropout(0.2), nn.Linear(3, 2))
    model.mode_calls = 0
    with pytest.warns(ModelModeWarning, match="Custom is in training mode"):
        attribx.translate(model, input_shape=(4,))
    assert model.mode_calls == 0 and all(m.training for m in model.modules())


def test_eval_mode_model_gives_no_warning():
    clear_cache()
    model = bn_net().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModelModeWarning)
        attribx.explain(model, images(), method="lrp.epsilon", target=0)


# -- state updated in forward ---------------------------------------------------------------------------------

def test_forward_that_updates_a_buffer_leaves_the_model_unchanged_and_the_graph_is_its_next_call():
    clear_cache()
    model = CountingBuffer().eval()
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    before = snapshot(model)
    graph = attribx.translate(model, input_shape=(4,))
    assert_unchanged(model, before)
    attribx.explain(model, x, method="gradient", target=0)
    assert_unchanged(model, before)
    with torch.no_grad():
        want = copy.deepcopy(model)(torch.as_tensor(x)).numpy()     # the call the model would make now
    assert relative_error(attribx.forward(graph, x, engine="numpy"), want) <= 1e-5


@pytest.mark.parametrize("model", [CountingBuffer(fail=True).eval(), MaxNormEmbedding().eval(),
                                   MaxNormEmbedding(fail=True).eval()],
                         ids=["buffer-then-untranslatable", "embedding-max-norm", "embedding-then-untranslatable"])
def test_failed_translation_leaves_the_model_unchanged(model):
    clear_cache()
    x = np.array([[1, 2, 3]]) if isinstance(model, MaxNormEmbedding) else np.ones((1, 4), np.float32)
    before = snapshot(model)
    for call in (lambda: attribx.translate(model, input_shape=x.shape[1:]),
                 lambda: attribx.explain(model, x, method="gradient", target=0)):
        with pytest.raises(UnsupportedError):
            call()
        assert_unchanged(model, before)


def test_batch_norm_in_training_mode_keeps_its_statistics():
    clear_cache()
    model = hooked(bn_net()).train()
    before = snapshot(model)
    with pytest.warns(ModelModeWarning):
        attribx.explain(model, images(4), method="lrp.epsilon_plus", target="predicted")
    assert_unchanged(model, before)
    assert int(model[1].num_batches_tracked) == 0


def test_translations_from_several_threads_leave_the_training_flags():
    """Translation sets eval flags on the model while it runs: two threads at once must not see (and keep)
    each other's flags."""
    import threading

    model = bn_net().train()
    before = snapshot(model)
    n = 6
    barrier = threading.Barrier(n)
    errors = []

    def work():
        barrier.wait()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ModelModeWarning)
                for _ in range(3):
                    clear_cache()
                    attribx.translate(model, input_shape=(2, 4, 5))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert_unchanged(model, before)
