"""torch.onnx.export for the matrix, in a fresh interpreter.

The exports run in a child process because torch's dynamo exporter imports triton, and importing triton
after TensorFlow crashes the interpreter (segmentation fault with tensorflow-cpu 2.21 and triton 3.8:
``python -c "import tensorflow, triton"``); the test session has TensorFlow loaded by then. The child
imports no TensorFlow. It writes each model with both exporters, the dynamo one (``dynamo=True``, the
default of torch 2.14; needs onnxscript) and the legacy TorchScript one (``dynamo=False``), both with a
dynamic batch axis, and reports what happened as JSON.

Usage (what :func:`export_all` runs): ``python -m matrix.torch_export jobs.json`` with ``tests`` on the
path; ``jobs.json`` holds ``{"folder": ..., "jobs": [{"name", "kind": "zoo" | "torchvision", "x": path
of an .npy example input, "state": path of a state dict (torchvision)}]}``; the answer is written to
``folder/exports.json``: ``{name: {"dynamo" | "legacy": {"path", "error", "ops", "seconds"}}}``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

EXPORTERS = ("dynamo", "legacy")
TESTS = Path(__file__).resolve().parents[1]


def export_all(jobs: list[dict], folder: Path, timeout: float = 540, module: str = "matrix.torch_export") -> dict:
    """Run the exports in a child interpreter (``python -m module``: this one, or another whose ``main``
    calls :func:`run_jobs`); returns the report (an 'error' per exporter on failure)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "jobs.json"
    spec.write_text(json.dumps({"folder": str(folder), "jobs": jobs}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    proc = subprocess.run([sys.executable, "-m", module, str(spec)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    answer = folder / "exports.json"
    if proc.returncode != 0 or not answer.exists():
        why = f"export process exited with status {proc.returncode}: {proc.stderr[-2000:]}"
        return {job["name"]: {e: {"path": None, "error": why, "ops": [], "seconds": 0.0} for e in EXPORTERS}
                for job in jobs}
    return json.loads(answer.read_text())


def _model(job):
    import torch
    if job["kind"] == "zoo":
        from matrix.zoo import make
        return make(job["name"]).torch()
    import torchvision
    m = getattr(torchvision.models, job["name"])(weights=None)
    m.load_state_dict(torch.load(job["state"]))
    return m.eval()


def _export(model, x, path: Path, exporter: str, dynamic_time: bool = False) -> dict:
    """One export with a dynamic batch axis (and time axis, axis 1, if asked); its ops or its error."""
    import onnx
    import torch
    t = time.perf_counter()
    try:
        if exporter == "dynamo":
            # positional dynamic shapes: nn.Sequential's argument is called 'input', other modules' 'x'
            dims = {0: torch.export.Dim("batch")}
            if dynamic_time:
                dims[1] = torch.export.Dim("time")
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                              dynamic_shapes=(dims,), verbose=False)
        else:
            axes = {0: "batch", 1: "time"} if dynamic_time else {0: "batch"}
            torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": axes, "y": {0: "batch"}})
        ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
        return {"path": str(path), "error": None, "ops": ops, "seconds": time.perf_counter() - t}
    except Exception as err:   # noqa: BLE001 - reported to the test, which fails with it
        return {"path": None, "error": f"{type(err).__name__}: {err}"[:3000], "ops": [],
                "seconds": time.perf_counter() - t}


def run_jobs(spec_path: str, make) -> None:
    """The child's work: ``make(job)`` builds each job's model, exported with every exporter."""
    import warnings

    import numpy as np
    import torch
    warnings.simplefilter("ignore")
    spec = json.loads(Path(spec_path).read_text())
    folder = Path(spec["folder"])
    report = {}
    for job in spec["jobs"]:
        model = make(job)
        x = torch.from_numpy(np.load(job["x"]))
        report[job["name"]] = {e: _export(model, x, folder / f"{job['name']}-{e}.onnx", e,
                                          job.get("dynamic_time", False)) for e in EXPORTERS}
    (folder / "exports.json").write_text(json.dumps(report, indent=1))


def main(spec_path: str) -> None:
    def make(job):
        import torch
        torch.manual_seed(0)
        return _model(job).eval()
    run_jobs(spec_path, make)


if __name__ == "__main__":
    main(sys.argv[1])
