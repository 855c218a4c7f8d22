"""torchvision's ResNet18 written as an ONNX graph with onnx.helper: no torch needed to build or run it.

conv 7×7/2 + batch norm + ReLU + max pool 3×3/2, four stages of two BasicBlocks (3×3 conv + BN + ReLU,
3×3 conv + BN, identity or 1×1/2 conv + BN shortcut, Add, ReLU; stages 2-4 start with stride 2), global
average pool, Flatten, Gemm. Node and initializer names follow torchvision's module paths
(``layer2.0.downsample.0``, ``fc.weight``), so :func:`torch_state_dict` loads the same weights into
``torchvision.models.resnet18``. Weights are random with a fixed seed (He-normal convs as torchvision,
batch norms with random statistics so that folding them is exercised).
"""
from __future__ import annotations

import numpy as np

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def resnet18_weights(seed=0, num_classes=1000) -> dict[str, np.ndarray]:
    """name -> float32 array, with torchvision's state-dict names and shapes."""
    rng = np.random.default_rng(seed)
    w = {}

    def conv(name, o, c, k):
        w[f"{name}.weight"] = (rng.normal(size=(o, c, k, k)) * np.sqrt(2.0 / (o * k * k))).astype(np.float32)

    def bn(name, n):
        w[f"{name}.weight"] = rng.uniform(0.5, 1.5, n).astype(np.float32)
        w[f"{name}.bias"] = (0.1 * rng.normal(size=n)).astype(np.float32)
        w[f"{name}.running_mean"] = (0.1 * rng.normal(size=n)).astype(np.float32)
        w[f"{name}.running_var"] = rng.uniform(0.5, 1.5, n).astype(np.float32)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    c = 64
    for s, (o, stride) in enumerate(STAGES, start=1):
        for b in range(2):
            p = f"layer{s}.{b}"
            conv(f"{p}.conv1", o, c if b == 0 else o, 3)
            bn(f"{p}.bn1", o)
            conv(f"{p}.conv2", o, o, 3)
            bn(f"{p}.bn2", o)
            if b == 0 and (stride != 1 or c != o):
                conv(f"{p}.downsample.0", o, c, 1)
                bn(f"{p}.downsample.1", o)
        c = o
    bound = 1 / np.sqrt(512)
    w["fc.weight"] = rng.uniform(-bound, bound, (num_classes, 512)).astype(np.float32)
    w["fc.bias"] = rng.uniform(-bound, bound, num_classes).astype(np.float32)
    return w


def resnet18_onnx(seed=0, size=64, num_classes=1000, opset=17):
    """The ONNX model (input ``x``: [N, 3, size, size], N free; output ``logits``: [N, num_classes])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = resnet18_weights(seed, num_classes)
    nodes = []

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv_bn(x, conv, bn, stride, pad):
        k = w[f"{conv}.weight"].shape[-1]
        h = node("Conv", [x, f"{conv}.weight"], conv, kernel_shape=[k, k], strides=[stride, stride],
                 pads=[pad] * 4)
        return node("BatchNormalization", [h] + [f"{bn}.{p}" for p in ("weight", "bias", "running_mean",
                                                                          "running_var")], bn, epsilon=1e-5)

    h = node("Relu", [conv_bn("x", "conv1", "bn1", 2, 3)], "relu")
    h = node("MaxPool", [h], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for s, (_, stride) in enumerate(STAGES, start=1):
        for b in range(2):
            p = f"layer{s}.{b}"
            st = stride if b == 0 else 1
            r = node("Relu", [conv_bn(h, f"{p}.conv1", f"{p}.bn1", st, 1)], f"{p}.relu")
            r = conv_bn(r, f"{p}.conv2", f"{p}.bn2", 1, 1)
            short = h
            if f"{p}.downsample.0.weight" in w:
                short = conv_bn(h, f"{p}.downsample.0", f"{p}.downsample.1", st, 0)
            h = node("Relu", [node("Add", [r, short], f"{p}.add")], f"{p}.relu_1")
    h = node("GlobalAveragePool", [h], "avgpool")
    h = node("Flatten", [h], "flatten", axis=1)
    nodes.append(helper.make_node("Gemm", [h, "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "resnet18",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="attribx-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def torch_state_dict(seed=0, num_classes=1000):
    """The same weights as a state dict for ``torchvision.models.resnet18(num_classes=...)``."""
    import torch
    sd = {k: torch.from_numpy(v) for k, v in resnet18_weights(seed, num_classes).items()}
    for k in [k for k in sd if k.endswith("running_var")]:
        sd[k[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    return sd
