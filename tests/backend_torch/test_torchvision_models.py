"""torchvision's models through the torch translator (issue 19): every classification model in
``torchvision.models.list_models(module=torchvision.models)`` and the segmentation models translate, the
graph's forward equals torch's (≤1e-5 relative in float64, random weights, eval mode), and ``lrp.attn`` and
``lrp.epsilon_plus_flat`` give finite relevance; a pixel's class of a segmentation model is explained.

By default a fast representative set runs on small configurations and images (a ViT, Swin v1 and v2,
ConvNeXt, MobileNetV3, LRASPP); the walk over every model at its usual size is ``extended`` (slow on a CPU:
``ATTRIBX_EXTENDED=1`` runs it, as the matrix's extended cells).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytest.importorskip("attribx_torch")

import attribx  # noqa: E402

from random_weights import randomized  # noqa: E402

M = torchvision.models


def check_model(model, shape, engine="numpy", methods=("lrp.attn", "lrp.epsilon_plus_flat"), seed=0):
    """Translate; forward equal to torch's; the methods' relevance finite. Returns the graph and input."""
    x = np.random.default_rng(seed).normal(size=(1,) + tuple(shape))
    graph = attribx.translate(model, input_shape=tuple(shape))
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    ref = (ref["out"] if isinstance(ref, dict) else ref).numpy()
    out = np.asarray(attribx.forward(graph, x, engine=engine))
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err <= 1e-5, err
    init = None if ref.ndim == 2 else _pixel_init(ref)
    for method in methods:
        kw = {"target": 0} if init is None else {"output_init": init}
        r = attribx.explain(graph, x, method, engine=engine, **kw)
        assert np.isfinite(r.values).all() and np.abs(r.values).sum() > 0, method
    return graph, x


def _pixel_init(ref):
    """One pixel's class score: the output one-hot at the predicted class of the centre pixel."""
    init = np.zeros_like(ref)
    h, w = ref.shape[2] // 2, ref.shape[3] // 2
    init[:, ref[0, :, h, w].argmax(), h, w] = 1.0
    return init


def small_models():
    from torchvision.models import convnext, swin_transformer as st
    swin = dict(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[3, 3], num_classes=5)
    return {
        "vit": (lambda: M.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                            mlp_dim=64, num_classes=5), (3, 32, 32)),
        "swin": (lambda: st.SwinTransformer(**swin, stochastic_depth_prob=0.2), (3, 28, 28)),
        "swin_v2": (lambda: st.SwinTransformer(**swin, block=st.SwinTransformerBlockV2,
                                               downsample_layer=st.PatchMergingV2), (3, 28, 28)),
        "convnext": (lambda: convnext.ConvNeXt([convnext.CNBlockConfig(8, 16, 2), convnext.CNBlockConfig(16, None, 1)],
                                               stochastic_depth_prob=0.1, num_classes=5), (3, 32, 32)),
        "mobilenet_v3_small": (lambda: M.mobilenet_v3_small(num_classes=5), (3, 32, 32)),
        "lraspp_mobilenet_v3_large": (lambda: M.segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=3), (3, 32, 32)),
    }


SMALL = small_models()


@pytest.mark.parametrize("name", list(SMALL))
def test_small_torchvision_models(name):
    make, shape = SMALL[name]
    check_model(randomized(make()), shape)


def test_segmentation_pixel_explained():
    """FCN (ResNet-50 backbone, bilinear upsampling of the head to the input size): one pixel's class
    explained, and the relevance of gradient × input equals torch autograd's for that pixel."""
    model = randomized(M.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3))
    graph, x = check_model(model, (3, 24, 24), engine="torch", methods=("lrp.epsilon_plus_flat",))
    t = torch.tensor(x, requires_grad=True)
    out = model(t)["out"]
    init = _pixel_init(out.detach().numpy())
    (out * torch.from_numpy(init)).sum().backward()
    r = attribx.explain(graph, x, "gradient_x_input", output_init=init, engine="torch")
    ref = (t.grad * t).detach().numpy()
    assert np.abs(r.values - ref).max() <= 1e-8 * np.abs(ref).max()


# ----------------------------------------------------------------------------------------------
# the walk over every model (extended)

#: image size per model family where the default (96) does not fit: ViTs and MaxViT have fixed grids
SIZES = {"vit_": 224, "maxvit_t": 224, "swin": 96}


def walk_size(name: str) -> int:
    return next((s for prefix, s in SIZES.items() if name.startswith(prefix)), 96)


def classification_models():
    return M.list_models(module=M)


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.parametrize("name", classification_models())
def test_every_classification_model(name):
    size = walk_size(name)
    check_model(randomized(M.get_model(name, weights=None)), (3, size, size), engine="torch")


@pytest.mark.slow
@pytest.mark.extended
@pytest.mark.parametrize("name", M.list_models(module=M.segmentation))
def test_every_segmentation_model(name):
    kw = {} if name.startswith("lraspp") else {"aux_loss": False}
    model = M.get_model(name, weights=None, weights_backbone=None, num_classes=3, **kw)
    check_model(randomized(model), (3, 64, 64), engine="torch")
