"""The torch recurrent models of test_matrix_recurrent.py, and their torch.onnx exports in a child interpreter.

The exports run in a fresh interpreter for the reason torch_export.py gives (the dynamo exporter imports
triton, which crashes after TensorFlow). Each model is written with both exporters (``dynamo=True`` and the
legacy ``dynamo=False``) with a dynamic batch axis, and, where the job asks, a dynamic time axis.

Usage (what :func:`export_all` runs): ``python -m matrix.recurrent_models jobs.json`` with ``tests`` on the
path; ``jobs.json`` holds ``{"folder": ..., "jobs": [{"name", "x": .npy path, "dynamic_time": bool}]}``; the
answer is ``folder/exports.json``: ``{name: {"dynamo" | "legacy": {"path", "error", "ops", "seconds"}}}``.
Model names: ``{LSTM|GRU}-l{layers}-{uni|bi}-{out|h}`` (a linear head on ``out[:, -1]`` or on ``h_n[-1]``) and
``sst`` (the trained SST BiLSTM of ``../shared/data/sst-bilstm`` as nn.LSTM + Linear).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from . import torch_export

FEATURES, HIDDEN, CLASSES = 5, 4, 3


def head_model(name: str):
    """``{cell}-l{layers}-{uni|bi}-{out|h}``: a batch-first nn.LSTM/GRU and a Linear head, fixed seed."""
    import torch
    nn = torch.nn
    cell, layers, direction, head = name.split("-")
    layers = int(layers[1:])
    bidirectional = direction == "bi"

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(nn, cell)(FEATURES, HIDDEN, num_layers=layers, batch_first=True,
                                         bidirectional=bidirectional)
            width = HIDDEN * (2 if bidirectional and head == "out" else 1)
            self.fc = nn.Linear(width, CLASSES)

        def forward(self, x):
            if cell == "LSTM":
                out, (h, _) = self.rnn(x)
            else:
                out, h = self.rnn(x)
            return self.fc(out[:, -1] if head == "out" else h[-1])

    torch.manual_seed(sum(map(ord, name)))
    return Head().eval()


def sst_model():
    """The SST BiLSTM as its data's README describes it: nn.LSTM(60, 60, bidirectional) + Linear(120, 5)."""
    import torch
    from arras_reference import sst_net

    from attribx.recurrent import reorder_gates
    net = sst_net()
    nn = torch.nn

    class SST(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(60, 60, batch_first=True, bidirectional=True)
            self.out = nn.Linear(120, 5, bias=False)

        def forward(self, x):
            _, (h, _) = self.lstm(x)
            return self.out(torch.cat([h[0], h[1]], dim=1))

    m = SST()
    with torch.no_grad():
        for suffix, side in (("l0", "Left"), ("l0_reverse", "Right")):
            for ours, theirs in (("weight_ih", "Wxh"), ("weight_hh", "Whh"), ("bias_ih", "bxh"),
                                 ("bias_hh", "bhh")):
                getattr(m.lstm, f"{ours}_{suffix}").copy_(
                    torch.from_numpy(reorder_gates(net[f"{theirs}_{side}"], "arras", "torch")))
        m.out.weight.copy_(torch.from_numpy(np.hstack([net["Why_Left"], net["Why_Right"]])))
    return m.eval()


def model(name: str):
    return sst_model() if name == "sst" else head_model(name)


def export_all(jobs: list[dict], folder: Path, timeout: float = 540) -> dict:
    """Run the exports in a child interpreter (:func:`matrix.torch_export.export_all` with this module)."""
    return torch_export.export_all(jobs, folder, timeout, module="matrix.recurrent_models")


def main(spec_path: str) -> None:
    torch_export.run_jobs(spec_path, lambda job: model(job["name"]))


if __name__ == "__main__":
    main(sys.argv[1])
