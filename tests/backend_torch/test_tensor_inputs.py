"""Torch tensors as inputs: they stay tensors on the torch engine, and get the same checks and numbers."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

import attribx  # noqa: E402


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3)).eval()


@pytest.mark.parametrize("engine", ["torch", "numpy"])
def test_tensor_and_array_inputs_give_the_same_relevance(engine):
    model = small_model()
    x = torch.randn(4, 1, 6, 6)
    a = attribx.explain(model, x, "lrp.epsilon_plus_flat", engine=engine, batch_size=3)
    b = attribx.explain(model, x.numpy(), "lrp.epsilon_plus_flat", engine=engine)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(attribx.forward(model, x, engine=engine), model(x).detach().numpy(), rtol=1e-5)


def test_tensor_inputs_are_checked_where_they_live():
    model = small_model()
    x = torch.randn(2, 1, 6, 6)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(attribx.InputError, match=r"NaN or infinite values \(in 1 of 2 samples\)"):
        attribx.explain(model, x)
    with pytest.raises(attribx.InputError, match=r"input has shape \(1, 6, 6\), the model expects \(N, 1, H, W\) "
                                                r"\(add a batch axis: x\[None\]\)"):
        attribx.explain(model, torch.randn(1, 6, 6))
    ints = attribx.explain(model, torch.ones(2, 1, 6, 6, dtype=torch.int64), "gradient")
    assert ints.dtype == np.float32
