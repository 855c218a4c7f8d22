"""The template's custom PyTorch layer: what a user's own ``nn.Module`` looks like to attribx.

Only imported by code that uses it (it imports torch); the converter in :mod:`.converters` names it by its
dotted path, so registering the plugin imports no framework."""
from __future__ import annotations

import torch
from torch import nn


class ScaledTanh(nn.Module):
    """scale · tanh(x), one learned scale per feature, written with einsum (which attribx has no built-in
    translation for): a layer attribx refuses until a converter says what it computes."""

    def __init__(self, features: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x):
        return torch.einsum("...i,i->...i", torch.tanh(x), self.scale)
