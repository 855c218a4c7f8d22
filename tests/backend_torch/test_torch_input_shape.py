"""Input shapes of torch models: what translate takes without ``input_shape``, and the advice a wrong shape gets.

A model whose first layer fixes the whole sample shape (``nn.Linear``) translates without ``input_shape``;
any other refuses with one line saying what to pass, or to call explain. Data of the wrong shape given to
explain or forward (one sample without its batch axis, channels-last images) gets the expected shape and the
fix (``x[None]``, ``x.permute(0, 3, 1, 2)`` for a tensor, ``np.moveaxis(x, -1, 1)`` for an array), never
advice to call translate, which the user did not call.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import torch.nn as nn  # noqa: E402

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2)).eval()


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------------------------
# translate without input_shape


def test_linear_first_layer_fixes_the_input_shape():
    model = mlp()
    graph = attribx.translate(model)
    assert graph.input.shape == (None, 6)
    assert graph.fingerprint() == attribx.translate(model, input_shape=(6,)).fingerprint()
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert relative_error(attribx.forward(graph, x, engine="numpy"), want) <= 1e-5
    assert attribx.translate(nn.Linear(3, 2)).input.shape == (None, 3)


@pytest.mark.parametrize("make, needle", [
    (cnn, "first layer '0' (Conv2d) takes one sample of shape (3, H, W) and does not fix H, W: pass "
          "attribx.translate(model, input_shape=(3, H, W)) with your data's H, W"),
    (lambda: nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)),
     "first layer '0' (Embedding) takes one sample of shape (T,) and does not fix T"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 2)),
     "its first layer does not fix the input shape: pass attribx.translate(model, input_shape=...)"),
])
def test_other_models_say_what_to_pass(make, needle):
    with pytest.raises(attribx.InputError) as err:
        attribx.translate(make())
    text = one_line(err)
    assert needle in text
    assert "traces it with example data" in text
    assert "or call attribx.explain(model, x) or attribx.forward(model, x), which take the shape from x" in text


def test_a_shape_read_from_the_first_layer_that_does_not_run_says_so():
    class Sequence(nn.Module):          # nn.Linear on (N, T, F): the first layer fixes F only
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.conv = nn.Conv1d(4, 2, 1)

        def forward(self, x):
            return self.conv(self.fc(x).transpose(1, 2)).flatten(1)

    model = Sequence().eval()
    with pytest.raises(attribx.InputError) as err:
        attribx.translate(model)
    text = one_line(err)
    assert text.startswith("Sequence does not run on one sample of shape (4,)")
    assert text.endswith("No input_shape was given and (4,) was read from the first layer: pass "
                         "attribx.translate(model, input_shape=...) with one sample's shape, or call "
                         "attribx.explain(model, x) or attribx.forward(model, x), which take the shape from x")
    assert attribx.translate(model, input_shape=(3, 4)).input.shape == (None, 3, 4)


# ----------------------------------------------------------------------------------------------
# wrong shapes through explain and forward: the expected shape and the fix


@pytest.mark.parametrize("as_tensor", [True, False], ids=["tensor", "numpy"])
@pytest.mark.parametrize("call", ["explain", "forward"])
def test_unbatched_and_channels_last_inputs_get_the_fix(as_tensor, call):
    model = cnn()
    fn = getattr(attribx, call)
    x = torch.randn(2, 3, 8, 8)
    wrap = (lambda a: a) if as_tensor else (lambda a: a.numpy())
    cases = {
        "unbatched": (x[0], "input has shape (3, 8, 8), the model expects (N, 3, H, W) (add a batch axis: x[None])"),
        "channels last": (x.permute(0, 2, 3, 1), "input has shape (2, 8, 8, 3), the model expects (N, 3, H, W) "
                          "(the model takes channels first: "
                          + ("x.permute(0, 3, 1, 2))" if as_tensor else "np.moveaxis(x, -1, 1))")),
    }
    for name, (bad, message) in cases.items():
        with pytest.raises(attribx.InputError) as err:
            fn(model, wrap(bad))
        assert one_line(err) == message, name
        assert "translate" not in message
        # the fix it names works and gives the numbers of the right input
        fixed = bad[None] if name == "unbatched" else bad.permute(0, 3, 1, 2)
        np.testing.assert_array_equal(fn(model, wrap(fixed)), fn(model, wrap(x[:1] if name == "unbatched" else x)))


def test_a_shape_no_slip_explains_names_only_the_expected_shape():
    with pytest.raises(attribx.InputError) as err:
        attribx.explain(cnn(), torch.randn(2, 4, 8, 8))
    assert one_line(err) == "input has shape (2, 4, 8, 8), the model expects (N, 3, H, W)"


def test_a_translated_graph_gives_the_same_advice():
    graph = attribx.translate(cnn(), input_shape=(3, 8, 8))
    x = np.zeros((2, 3, 8, 8), np.float32)
    for bad, hint in ((x[0], "add a batch axis: x[None]"),
                      (np.moveaxis(x, 1, -1), "the model takes channels first: np.moveaxis(x, -1, 1)")):
        with pytest.raises(attribx.InputError) as err:
            attribx.explain(graph, bad)
        assert one_line(err) == f"input has shape {bad.shape}, the model expects (N, 3, 8, 8) ({hint})"
    with pytest.raises(attribx.InputError) as err:     # a tensor gets torch's spelling of the same fix
        attribx.explain(graph, torch.zeros(2, 8, 8, 3), engine="torch")
    assert one_line(err).endswith("(the model takes channels first: x.permute(0, 3, 1, 2))")


def test_channels_last_graph_gets_the_reverse_fix():
    b = attribx.GraphBuilder()
    x = b.input("x", (8, 8, 3), layout="NHWC")
    graph = b.build(b.add_node("flatten", x, name="flat", start_dim=1))
    bad = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(attribx.InputError) as err:
        attribx.forward(graph, bad)
    assert one_line(err) == ("input has shape (2, 3, 8, 8), the model expects (N, 8, 8, 3) "
                             "(the model takes channels last: np.moveaxis(x, 1, -1))")
