"""The torch engine against the numpy reference: every kernel (forward and VJP), every method on
hand-built graphs, dtypes, devices, and that attribx never imports torch unless this engine is used."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("attribx_torch")

from hypothesis import given  # noqa: E402

import attribx  # noqa: E402
from attribx.engines.numpy_engine import NumpyEngine  # noqa: E402
from attribx.engines.numpy_kernels import KERNELS as NUMPY_KERNELS  # noqa: E402
from attribx.testing import relative_error  # noqa: E402
from attribx_torch.engine import TorchEngine  # noqa: E402
from attribx_torch.kernels import KERNELS as TORCH_KERNELS, unbroadcast  # noqa: E402

from engine_cases import (EXAMPLES, GENERATORS, GRAPHS, OPS, REGISTRY, close,  # noqa: E402
                          cnn_graph, explain_pair, method_params, mlp_graph, op_cases, settings_for)

CUDA = torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------
# op kernels: the cases come from engine_cases


def compare_kernel(name, full, inputs, params, rng, dtype=np.float64, device="cpu", rtol=1e-10):
    """Forward and VJP (with and without the output) of the torch kernel equal the numpy kernel's."""
    xs = [x.astype(dtype) for x in inputs]
    ps = {k: v.astype(dtype) for k, v in params.items()}
    txs = [torch.from_numpy(x).to(device) for x in xs]
    tps = {k: torch.from_numpy(v).to(device) for k, v in ps.items()}
    ref = NUMPY_KERNELS[name].forward(full, list(xs), ps)
    out = TORCH_KERNELS[name].forward(full, list(txs), tps)
    close(out, ref, rtol, f"{name} forward {full}")
    if xs:
        assert out.dtype == txs[0].dtype, f"{name}: {out.dtype} from {txs[0].dtype} inputs"
    g = rng.normal(size=ref.shape).astype(dtype)
    tg = torch.from_numpy(g).to(device)
    for out_np, out_t in ((None, None), (ref, out)):
        back_ref = NUMPY_KERNELS[name].vjp(full, list(xs), ps, out_np, g)
        back = TORCH_KERNELS[name].vjp(full, list(txs), tps, out_t, tg)
        assert len(back) == len(back_ref)
        for i, (b, r) in enumerate(zip(back, back_ref)):
            close(b, r, rtol, f"{name} vjp[{i}] {full}")
            assert b.dtype == tg.dtype and b.device.type == tg.device.type


def test_every_registered_op_has_a_torch_kernel():
    kernels = REGISTRY.kernels("torch")
    assert set(OPS) <= set(kernels), sorted(set(OPS) - set(kernels))
    assert set(GENERATORS) >= set(NUMPY_KERNELS)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_kernel_matches_numpy(name):
    @settings_for(EXAMPLES.get(name, 25))
    @given(op_cases(name))
    def check(case):
        full, inputs, params, rng = case
        compare_kernel(name, full, inputs, params, rng)
        # float32 in, float32 out, and the same numbers as the numpy kernels in float32
        compare_kernel(name, full, inputs, params, rng, dtype=np.float32, rtol=2e-5)
    check()


@pytest.mark.parametrize("name", sorted(set(GENERATORS) - {"constant"}))
def test_bfloat16_kernels_run(name):
    @settings_for(8)
    @given(op_cases(name))
    def check(case):
        full, inputs, params, rng = case
        txs = [torch.from_numpy(x).to(torch.bfloat16) for x in inputs]
        tps = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in params.items()}
        out = TORCH_KERNELS[name].forward(full, txs, tps)
        assert out.dtype == torch.bfloat16
        back = TORCH_KERNELS[name].vjp(full, txs, tps, out, torch.ones_like(out))
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


def test_engine_arrays():
    eng, ref = TorchEngine(), NumpyEngine()
    x = np.array([[-2.0, 0.0, -0.0, 3.0], [1.0, -1e-300, 5.0, np.nan]])
    t = eng.asarray(x)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type == "cpu"
    assert eng.asarray(x, dtype=np.float32).dtype == torch.float32
    assert eng.asarray(x, dtype="float32").dtype == torch.float32
    assert eng.asarray(x, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert eng.asarray(x.astype(np.float32)).dtype == torch.float32
    assert eng.asarray(np.arange(3)).dtype == torch.int64
    assert eng.asarray(2.5).shape == ()
    assert eng.dtype_of(t) == torch.float64 and eng.dtype_of(x.astype(np.float32)) == torch.float32
    assert TorchEngine(dtype="float32").asarray(x).dtype == torch.float32
    ro = np.broadcast_to(np.ones(3), (2, 3))   # read-only, zero strides
    assert eng.to_numpy(eng.asarray(ro)).tolist() == [[1.0] * 3] * 2
    assert eng.to_numpy(eng.asarray(np.arange(6.0)[::-2])).tolist() == [5.0, 3.0, 1.0]
    assert eng.to_numpy(eng.asarray(x, dtype=torch.bfloat16)).dtype == np.float32
    assert eng.to_numpy(t).dtype == np.float64
    finite = np.nan_to_num(x)
    tf = eng.asarray(finite)
    for fn, args in [("sign", (x,)), ("abs", (x,)), ("clip", (x, 0, None)), ("clip", (x, None, 0)),
                     ("clip", (x, -1, 1)), ("clip", (x, None, None)), ("zeros_like", (x,)), ("ones_like", (x,)),
                     ("sum", (finite,)), ("sum", (finite, 1)), ("sum", (finite, (0, 1), True)),
                     ("sum", (finite, None, True)), ("argmax", (finite,)), ("argmax", (finite, 0))]:
        ours = getattr(eng, fn)(*[eng.asarray(a) if isinstance(a, np.ndarray) else a for a in args])
        np.testing.assert_array_equal(eng.to_numpy(ours), getattr(ref, fn)(*args), err_msg=fn)
    assert eng.to_numpy(eng.sign(eng.asarray(x))).tolist()[0] == [-1, 1, 1, 1]
    np.testing.assert_array_equal(eng.to_numpy(eng.where(tf > 0, tf, eng.zeros_like(tf))), np.maximum(finite, 0))
    np.testing.assert_array_equal(eng.to_numpy(eng.one_hot(np.array([3, 0]), tf)),
                                  ref.one_hot(np.array([3, 0]), finite))
    assert eng.isfinite_all(tf) and not eng.isfinite_all(t)
    z = np.array([[-1.0, -1e-9, 0.0, -0.0, 1e-9, 2.0, 1e300]])
    r = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])
    for eps in (0.0, 1e-6, 0.5):
        np.testing.assert_array_equal(eng.to_numpy(eng.stabilize(eng.asarray(z), eps)), ref.stabilize(z, eps))
    np.testing.assert_array_equal(eng.to_numpy(eng.safe_divide(eng.asarray(r), eng.asarray(z))),
                                  ref.safe_divide(r, z))
    assert eng.stabilize(eng.asarray(z[:, :-1].astype(np.float32)), 1e-6).dtype == torch.float32


def test_node_params_are_cached_per_dtype():
    g, _ = mlp_graph()
    node = g.nodes[0]
    eng = TorchEngine()
    x64 = eng.asarray(np.ones((1, 6)))
    p64 = eng.node_params(node, [x64])
    assert p64["weight"].dtype == torch.float64 and eng.node_params(node, [x64]) is p64
    p32 = eng.node_params(node, [x64.float()])
    assert p32["weight"].dtype == torch.float32 and p32 is not p64
    np.testing.assert_allclose(eng.to_numpy(p32["weight"]), node.params["weight"], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# whole graphs: every method on the torch and numpy engines



def explain_both(graph, x, method, **kw):
    """(torch result, numpy result), or (None, None) when both engines raise the same kind of error."""
    return explain_pair(graph, x, method, "torch", **kw)


@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("method", sorted(REGISTRY.methods))
def test_method_matches_numpy(graph, method):
    g, x = GRAPHS[graph]()
    ours, ref = explain_both(g, x, method, **method_params(method))
    if ref is None:
        return
    assert ours.dtype == np.float64
    assert relative_error(ours.values, ref.values) <= 1e-5, method
    np.testing.assert_array_equal(ours.target.values, ref.target.values)
    assert ours.attrs["engine"] == "torch"


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.zero", "lrp.epsilon_gamma_box", "lrp.epsilon_plus_flat",
                                    "lrp.alpha_beta", "lrp.w_square", "gradient"])
def test_layers_and_conservation_match_numpy(method):
    g, x = cnn_graph()
    layers = ["c1", "mp", "res", "cat", "fc1"]
    ours, ref = explain_both(g, x, method, layers=layers, conservation=True, **method_params(method))
    assert ref is not None
    assert set(ours.data_vars) == set(ref.data_vars) >= set(layers) | {"relevance", "conservation"}
    for name in ref.data_vars:
        assert ours[name].dtype == np.float64
        assert relative_error(ours[name].values, ref[name].values) <= 1e-5, name
    assert list(ours.conservation.node.values) == list(ref.conservation.node.values)


def test_targets_and_batches():
    g, x = cnn_graph()
    ours, ref = explain_both(g, x, "lrp.epsilon", target=[0, 3, 1], batch_size=2)
    assert relative_error(ours.values, ref.values) <= 1e-5
    ours, ref = explain_both(g, x, "lrp.gamma", target=("contrast", 1, 2))
    assert relative_error(ours.values, ref.values) <= 1e-5


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.epsilon_gamma_box", "gradient"])
def test_float32_in_float32_out(method):
    g, x = cnn_graph()
    x32 = x.astype(np.float32)
    ours = attribx.explain(g, x32, method, engine="torch", layers=["c1"], **method_params(method))
    ref = attribx.explain(g, x, method, engine="numpy", **method_params(method))
    assert ours["relevance"].dtype == np.float32 and ours["c1"].dtype == np.float32
    assert relative_error(ours["relevance"].values, ref.values) <= 1e-3
    eng = TorchEngine()
    acts = attribx.propagation.run_forward(g, eng, eng.asarray(x32))
    assert all(a.dtype == torch.float32 for a in acts.values())


def test_bfloat16_engine_runs():
    g, x = cnn_graph()
    eng = TorchEngine(dtype=torch.bfloat16)
    out = attribx.explain(g, x, "lrp.epsilon", engine=eng)
    ref = attribx.explain(g, x, "lrp.epsilon", engine="numpy")
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.isfinite(out.values).all()


def test_tensor_input_and_engine_instance():
    g, x = cnn_graph()
    ref = attribx.explain(g, x, "lrp.epsilon", engine="numpy")
    ours = attribx.explain(g, torch.from_numpy(x), "lrp.epsilon", engine=TorchEngine(device="cpu"))
    assert relative_error(ours.values, ref.values) <= 1e-10
    assert relative_error(attribx.forward(g, x, engine="torch"), attribx.forward(g, x, engine="numpy")) <= 1e-12


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
        compare_kernel(name, full, inputs, params, rng, device="cuda", rtol=1e-9)
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
# torch stays out of numpy-only use


def test_numpy_engine_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import attribx
        from attribx import GraphBuilder
        assert 'torch' in attribx.plugins.registry().engines   # the plugin is installed and registered
        b = GraphBuilder('m')
        x = b.input('x', (4,))
        g = b.build(b.linear(b.relu(b.linear(x, np.ones((3, 4)), name='a')), np.ones((2, 3)), name='b'))
        r = attribx.explain(g, np.ones((2, 4)), 'lrp.epsilon', engine='numpy')
        attribx.explain(g, np.ones((2, 4)), 'gradient')
        print('torch' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr
