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

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

EXPORTERS = ("dynamo", "legacy")
TESTS = Path(__file__).resolve().parents[1]
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
    """Run the exports in a child interpreter; returns the report (an 'error' per exporter on failure)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "jobs.json"
    spec.write_text(json.dumps({"folder": str(folder), "jobs": jobs}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", "matrix.recurrent_models", str(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    answer = folder / "exports.json"
    if proc.returncode != 0 or not answer.exists():
        why = f"export process exited with status {proc.returncode}: {proc.stderr[-2000:]}"
        return {job["name"]: {e: {"path": None, "error": why, "ops": [], "seconds": 0.0} for e in EXPORTERS}
                for job in jobs}
    return json.loads(answer.read_text())


def _export(m, x, path: Path, exporter: str, dynamic_time: bool) -> dict:
    import onnx
    import torch
    t = time.perf_counter()
    try:
        if exporter == "dynamo":
            dims = {0: torch.export.Dim("batch")}
            if dynamic_time:
                dims[1] = torch.export.Dim("time")
            torch.onnx.export(m, (x,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                              dynamic_shapes=(dims,), verbose=False)
        else:
            axes = {0: "batch", 1: "time"} if dynamic_time else {0: "batch"}
            torch.onnx.export(m, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": axes, "y": {0: "batch"}})
        ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
        return {"path": str(path), "error": None, "ops": ops, "seconds": time.perf_counter() - t}
    except Exception as err:   # noqa: BLE001 - reported to the test, which fails with it
        return {"path": None, "error": f"{type(err).__name__}: {err}"[:3000], "ops": [],
                "seconds": time.perf_counter() - t}


def main(spec_path: str) -> None:
    import warnings

    import torch
    warnings.simplefilter("ignore")
    spec = json.loads(Path(spec_path).read_text())
    folder = Path(spec["folder"])
    report = {}
    for job in spec["jobs"]:
        m = model(job["name"])
        x = torch.from_numpy(np.load(job["x"]))
        report[job["name"]] = {e: _export(m, x, folder / f"{job['name']}-{e}.onnx", e, job.get("dynamic_time", False))
                               for e in EXPORTERS}
    (folder / "exports.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
