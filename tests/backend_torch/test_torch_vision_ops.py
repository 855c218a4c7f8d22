"""The vision ops of issue 19 (hard_sigmoid, hard_swish, roll, resize) against torch itself: the numpy
reference kernels' forward equals torch's functional (float64) and their VJP equals torch autograd, on
the variants the torch translator emits (interpolate with size or scale_factor, align_corners)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from attribx.engines.numpy_kernels import KERNELS  # noqa: E402
from attribx.ops import BUILTIN_OP_TABLE  # noqa: E402

R = np.random.default_rng(0)


def check(name, attrs, x, fn, grad_rtol=1e-12):
    full = BUILTIN_OP_TABLE[name].resolve_attrs("t", attrs)
    t = torch.tensor(x, requires_grad=True)
    ref = fn(t)
    g = R.normal(size=tuple(ref.shape))
    ref.backward(torch.tensor(g))
    out = KERNELS[name].forward(full, [x], {})
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    (back,) = KERNELS[name].vjp(full, [x], {}, out, g)
    np.testing.assert_allclose(back, t.grad.numpy(), rtol=grad_rtol, atol=1e-12)


def test_hard_activations_equal_torch():
    x = R.normal(size=(2, 3, 50)) * 3
    # torch's hardsigmoid backward multiplies by 1/6 rounded to float32 (0.16666667163...), in float64 too
    check("hard_sigmoid", {}, x, F.hardsigmoid, grad_rtol=4e-8)
    check("hard_swish", {}, x, F.hardswish)


@pytest.mark.parametrize("attrs", [{}, {"alpha": 0.2, "beta": 0.5}, {"alpha": 0.5, "beta": 0.25}])
@pytest.mark.parametrize("name", ["hard_sigmoid", "hard_swish"])
def test_torch_engine_hard_activations_equal_the_reference(name, attrs):
    """The torch engine's forward (torch's own one-pass kernel at the default attributes, the clip otherwise)
    against the numpy reference, at the kinks too, float64 and float32."""
    from attribx_torch.kernels_vision import KERNELS as TORCH
    full = BUILTIN_OP_TABLE[name].resolve_attrs("t", attrs)
    x = np.concatenate([R.normal(size=200) * 4, [-3.0, 3.0, 0.0, -0.0, -2.5, 2.5, -1.0, 1.0, 7.0, -7.0]])
    for dtype, rtol in ((np.float64, 1e-15), (np.float32, 1e-6)):
        xs = x.astype(dtype)
        want = KERNELS[name].forward(full, [xs], {})
        got = TORCH[name].forward(full, [torch.tensor(xs)], {}).numpy()
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)


def test_roll_equals_torch():
    x = R.normal(size=(2, 3, 5, 4))
    check("roll", {"shifts": (-2, 3), "axes": (2, 3)}, x, lambda t: torch.roll(t, (-2, 3), (2, 3)))
    check("roll", {"shifts": 7, "axes": -1}, x, lambda t: torch.roll(t, 7, -1))


@pytest.mark.parametrize("spatial,size,mode,align", [
    ((5, 7), (10, 14), "nearest", False), ((5, 7), (3, 11), "nearest", False), ((4, 6), (9, 5), "bilinear", False),
    ((4, 6), (9, 5), "bilinear", True), ((1, 3), (4, 1), "bilinear", True), ((6,), (13,), "linear", False),
    ((2, 3, 4), (3, 5, 7), "trilinear", True)])
def test_resize_with_size_equals_interpolate(spatial, size, mode, align):
    x = R.normal(size=(2, 3) + spatial)
    kw = {} if mode == "nearest" else {"align_corners": align}
    check("resize", {"size": size, "mode": "nearest" if mode == "nearest" else "linear", "align_corners": align}, x,
          lambda t: F.interpolate(t, size=size, mode=mode, **kw))


@pytest.mark.parametrize("factor,mode", [(2, "nearest"), (1.5, "nearest"), (1.5, "bilinear"), (0.5, "bilinear"),
                                         (3, "bilinear")])
def test_resize_with_scale_factor_equals_interpolate(factor, mode):
    x = R.normal(size=(1, 2, 5, 7))
    size = tuple(int(np.floor(n * factor)) for n in (5, 7))
    attrs = {"size": size, "mode": "nearest" if mode == "nearest" else "linear", "scales": (1 / factor,) * 2}
    kw = {} if mode == "nearest" else {"align_corners": False}
    check("resize", attrs, x, lambda t: F.interpolate(t, scale_factor=factor, mode=mode, **kw))
