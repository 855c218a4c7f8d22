"""Random weights for the transformer and torchvision tests: torchvision zero-initialises some heads and
biases, which would hide differences between the graph and torch."""
from __future__ import annotations

import math

import torch


def randomized(model, seed=0):
    """float64, eval mode, every parameter drawn again (Swin v2's logit scale kept), running statistics random."""
    torch.manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            elif "logit_scale" not in name:
                p.add_(torch.randn_like(p) * 0.3)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    return model
