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


@pytest.mark.parametrize("geometry", [
    {"kernel": (3, 3), "stride": (2, 2), "pads": ((1, 1), (1, 1))},      # ResNet's, ShuffleNet's stem pool
    {"kernel": (2, 2), "stride": (2, 2), "pads": ((0, 0), (0, 0))},      # VGG's
    {"kernel": (3, 3), "stride": (2, 2), "pads": ((0, 1), (0, 1))},      # 'same' with an odd total: -inf padded
    {"kernel": (3, 2), "stride": (1, 2), "pads": ((1, 1), (0, 0)), "dilation": (2, 1)}])
def test_max_pool_equals_torchs_channel_first_pool_with_ties(geometry):
    """The kernel runs the pool on a channels-last copy: maxima, the (first) maximum each window's gradient
    goes to and the VJP are those of torch's channel-first max pool, bit for bit; inputs of few distinct values
    tie in most windows, and -inf and NaN entries are kept."""
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, size=(2, 5, 11, 9)).astype(np.float32)
    x[0, 0, 0, :3], x[1, 2, 4, 4] = -np.inf, np.nan
    attrs = {"kernel_size": geometry["kernel"], "stride": geometry["stride"], "padding": geometry["pads"],
             "dilation": geometry.get("dilation", (1, 1))}
    attrs = attribx.ops.BUILTIN_OP_TABLE["max_pool"].resolve_attrs("p", attrs)
    xt = torch.tensor(x)
    out = TORCH_KERNELS["max_pool"].forward(attrs, [xt], {})
    pads = [p for pair in reversed(geometry["pads"]) for p in pair]
    ref_in = torch.nn.functional.pad(xt, pads, value=-np.inf).requires_grad_(True)
    ref = torch.nn.functional.max_pool2d(ref_in, geometry["kernel"], geometry["stride"], 0,
                                         geometry.get("dilation", (1, 1)))
    assert out.is_contiguous() and torch.equal(out.nan_to_num(7.0), ref.detach().nan_to_num(7.0))
    g = torch.tensor(rng.normal(size=tuple(ref.shape)).astype(np.float32))
    ref.backward(g)
    want = ref_in.grad[(slice(None), slice(None)) + tuple(slice(lo, lo + n) for (lo, _), n in
                                                          zip(geometry["pads"], x.shape[2:]))]
    (got,) = TORCH_KERNELS["max_pool"].vjp(attrs, [xt], {}, out, g)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kernel,stride,pad,include", [((3, 3), (1, 1), 1, True), ((3, 3), (1, 1), 1, False),
                                                       ((2, 2), (2, 2), 0, True), ((3, 2), (2, 1), (1, 0), False)])
def test_avg_pool_equals_torchs_channel_first_pool(kernel, stride, pad, include):
    """The average pool runs on channels-last copies (forward and VJP): the numbers of torch's channel-first
    pool and its autograd, bit for bit, and contiguous results."""
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(2, 6, 9, 10)).astype(np.float32))
    pads = (pad, pad) if isinstance(pad, int) else pad
    attrs = attribx.ops.BUILTIN_OP_TABLE["avg_pool"].resolve_attrs(
        "p", {"kernel_size": kernel, "stride": stride, "padding": [(p, p) for p in pads],
              "count_include_pad": include})
    out = TORCH_KERNELS["avg_pool"].forward(attrs, [x], {})
    xr = x.clone().requires_grad_(True)
    ref = torch.nn.functional.avg_pool2d(xr, kernel, stride, pads, count_include_pad=include)
    assert out.is_contiguous() and torch.equal(out, ref.detach())
    g = torch.tensor(rng.normal(size=tuple(ref.shape)).astype(np.float32))
    ref.backward(g)
    (got,) = TORCH_KERNELS["avg_pool"].vjp(attrs, [x], {}, out, g)
    assert got.is_contiguous() and torch.equal(got, xr.grad)


def test_a_shape_stub_reaching_a_weighted_kernel_raises():
    """A released value (:meth:`TorchEngine.shape_stub`, on the meta device) given to a conv's VJP: torch would
    move the weight to the meta device and return numbers computed from nothing; the kernel refuses instead."""
    attrs = attribx.ops.BUILTIN_OP_TABLE["conv"].resolve_attrs("c", {"stride": 1, "padding": 1})
    w, g = torch.randn(4, 6, 3, 3), torch.randn(2, 4, 8, 8)
    stub = TorchEngine().shape_stub(torch.randn(2, 6, 8, 8))
    with pytest.raises(ValueError, match="released value"):
        TORCH_KERNELS["conv"].vjp(attrs, [stub], {"weight": w}, None, g)
    with pytest.raises(ValueError, match="released value"):
        TORCH_KERNELS["linear"].forward({}, [torch.empty(2, 6, device="meta")], {"weight": torch.randn(3, 6)})
