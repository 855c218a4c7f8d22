"""The torch engine against the numpy reference: the shared engine contract (tests/engine_contract.py:
every kernel, every method on hand-built graphs, dtypes), and what is torch's own: bfloat16, devices.
That attribx never imports torch unless this engine is used: tests/test_isolation.py."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

from hypothesis import given  # noqa: E402

import attribx  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from attribx_torch.engine import TorchEngine  # noqa: E402
from attribx_torch.kernels import KERNELS as TORCH_KERNELS, unbroadcast  # noqa: E402
from attribx_torch.kernels_transformer import KERNELS as TRANSFORMER_KERNELS  # noqa: E402
from attribx_torch.kernels_vision import KERNELS as VISION_KERNELS  # noqa: E402

from engine_cases import GENERATORS, cnn_graph, method_params, op_cases, settings_for  # noqa: E402

CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------
# op kernels: the cases come from engine_cases


@pytest.fixture
def engine():
    return TorchEngine()


from engine_contract import *  # noqa: E402,F401,F403 - the tests every engine passes
from engine_contract import compare_kernel  # noqa: E402


@pytest.mark.parametrize("name", sorted(set(GENERATORS) - {"constant"}))
def test_bfloat16_kernels_run(name):
    @settings_for(8)
    @given(op_cases(name))
    def check(case):
        full, inputs, params, rng = case
        txs = [torch.from_numpy(np.asarray(x)).to(torch.bfloat16) for x in inputs]
        tps = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in params.items()}
        kernel = {**TORCH_KERNELS, **TRANSFORMER_KERNELS, **VISION_KERNELS}[name]
        out = kernel.forward(full, txs, tps)
        assert out.dtype == torch.bfloat16
        back = kernel.vjp(full, txs, tps, out, torch.ones_like(out))
        for gx, x in zip(back, txs):
            assert gx.dtype == torch.bfloat16 and gx.shape == x.shape
    check()


def test_unbroadcast():
    g = torch.arange(24.0).reshape(2, 3, 4)
    assert unbroadcast(g, (2, 3, 4)) is g
    assert torch.equal(unbroadcast(g, (3, 1)), g.sum(dim=(0, 2)).reshape(3, 1))
    assert torch.equal(unbroadcast(g, ()), g.sum())


# ----------------------------------------------------------------------------------------------
# the engine's array functions


def test_engine_arrays_are_torch_tensors():
    eng = TorchEngine()
    x = np.array([[-2.0, 0.0, -0.0, 3.0], [1.0, -1e-300, 5.0, np.nan]])
    t = eng.asarray(x)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type == "cpu"
    assert eng.asarray(x, dtype=np.float32).dtype == torch.float32
    assert eng.asarray(x, dtype="float32").dtype == torch.float32
    assert eng.asarray(x, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert eng.asarray(x.astype(np.float32)).dtype == torch.float32
    assert eng.asarray(np.arange(3)).dtype == torch.int64
    assert eng.dtype_of(t) == torch.float64 and eng.dtype_of(x.astype(np.float32)) == torch.float32
    assert TorchEngine(dtype="float32").asarray(x).dtype == torch.float32
    assert eng.to_numpy(eng.asarray(x, dtype=torch.bfloat16)).dtype == np.float32


# ----------------------------------------------------------------------------------------------
# whole graphs (the shared ones come from engine_contract)


def test_bfloat16_engine_runs():
    g, x = cnn_graph()
    eng = TorchEngine(dtype=torch.bfloat16)
    out = attribx.explain(g, x, "lrp.epsilon", engine=eng)
    ref = attribx.explain(g, x, "lrp.epsilon", engine="numpy")
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.isfinite(out.values).all()


# ----------------------------------------------------------------------------------------------
# devices


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g, x = cnn_graph()
    for method in ("lrp.epsilon", "lrp.epsilon_gamma_box", "lrp.alpha_beta", "gradient", "lrp.flat"):
        eng = TorchEngine(device="cuda")
        gpu = attribx.explain(g, x, method, engine=eng, layers=["c1"], **method_params(method))
        cpu = attribx.explain(g, x, method, engine="torch", layers=["c1"], **method_params(method))
        for name in ("relevance", "c1"):
            assert relative_error(gpu[name].values, cpu[name].values) <= 1e-9, (method, name)
    eng = TorchEngine(device="cuda")
    t = eng.asarray(x)
    assert t.device.type == "cuda"
    assert eng.node_params(g.nodes[0], [t])["weight"].device.type == "cuda"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["conv", "max_pool", "avg_pool", "linear", "batch_norm", "add", "softmax", "gelu"])
def test_cuda_kernels_match_numpy(name):
    @settings_for(10)
    @given(op_cases(name))
    def check(case):
        full, inputs, params, rng = case
        compare_kernel(TorchEngine(device="cuda"), name, full, inputs, params, rng, rtol=1e-9)
    check()


def test_device_follows_tensor_data():
    eng = TorchEngine()
    assert eng.target_device().type == "cpu"
    t = torch.zeros(2, 3)
    assert eng.asarray(t).device == t.device
    assert eng.asarray(np.ones(3)).device == t.device
    if CUDA:
        tc = eng.asarray(t.cuda())
        assert tc.device.type == "cuda" and eng.asarray(np.ones(3)).device.type == "cuda"


# ----------------------------------------------------------------------------------------------
# explain(..., device=): the torch engine on that device, as zennit's and Captum's users move models


def small_torch_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 5 * 5, 4)).eval()


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")], ids=["str", "torch.device"])
def test_device_cpu_gives_the_default_numbers(device):
    model, x = small_torch_model(), torch.randn(3, 1, 5, 5)
    default = attribx.explain(model, x, "lrp.epsilon_plus_flat")
    on_cpu = attribx.explain(model, x, "lrp.epsilon_plus_flat", device=device)
    assert on_cpu.attrs["engine"] == "torch"
    np.testing.assert_array_equal(on_cpu.values, default.values)
    g, xg = cnn_graph()      # a graph whose default engine is numpy: device= runs it on torch
    np.testing.assert_allclose(attribx.forward(g, xg, device=device), attribx.forward(g, xg, engine="numpy"),
                               rtol=1e-9)
    with torch.no_grad():
        np.testing.assert_allclose(attribx.forward(model, x, device=device), model(x).numpy(), rtol=1e-5)


@pytest.mark.skipif(CUDA, reason="checks the error where no CUDA device is available")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_device_cuda_without_a_gpu_is_one_clear_error(device):
    with pytest.raises(attribx.MethodError) as err:
        attribx.explain(small_torch_model(), torch.randn(2, 1, 5, 5), device=device)
    text = str(err.value)
    assert "\n" not in text and "finds no CUDA GPU here (torch.cuda.is_available() is False)" in text
    assert text.startswith("device 'cuda")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_device_cuda_matches_cpu():
    model, x = small_torch_model(), torch.randn(3, 1, 5, 5)
    gpu = attribx.explain(model, x, "lrp.epsilon_plus_flat", device="cuda")
    cpu = attribx.explain(model, x, "lrp.epsilon_plus_flat", device="cpu")
    assert relative_error(gpu.values, cpu.values) <= 1e-5
    assert not any(p.is_cuda for p in model.parameters())      # the user's model stays where it was


@pytest.mark.parametrize("kwargs, needle", [
    ({"device": "cpu", "engine": "numpy"}, "the numpy engine does not run on torch; use engine='torch'"),
    ({"device": "banana"}, "device 'banana' is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'"),
    ({"device": "cpu", "engine": TorchEngine()}, "give the device to one of them"),
])
def test_device_errors(kwargs, needle):
    with pytest.raises(attribx.MethodError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        attribx.explain(small_torch_model(), torch.randn(2, 1, 5, 5), **kwargs)
