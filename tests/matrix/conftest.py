"""The matrix's session setup and its summary.

Import order: importing triton (which torchvision and torch's dynamo import) after TensorFlow crashes
the interpreter with a segmentation fault (tensorflow-cpu 2.21 with triton 3.8, the torch 2.14 wheel's
dependency: ``python -c "import tensorflow, triton"``); the other order works. pytest loads this
conftest before collecting any test module when ``tests/matrix`` (or a file in it) is on the command
line, as in the tox env ``all``, so triton is imported here first when it is installed. Where TensorFlow
was imported earlier anyway, the modules that need torchvision skip instead of crashing
(``common.triton_after_tensorflow``), and the torch exports always run in a child process
(``torch_export.py``).

The summary lists the cells whose float32 error exceeded 1e-4 (each then checked in float64; see
common.py); ``ATTRIBX_MATRIX_REPORT=path.json`` also writes
every cell's errors to a file.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile

if "tensorflow" not in sys.modules and importlib.util.find_spec("triton") is not None:
    try:
        import triton  # noqa: F401
    except Exception:   # noqa: BLE001 - a broken triton is torch's business, not the matrix's
        pass


def pytest_configure(config):
    """Under pytest-xdist each worker records its own cells: the controller gives them a folder to leave
    them in (workers inherit the environment), and the summary reads them all."""
    if not hasattr(config, "workerinput") and "ATTRIBX_MATRIX_RECORDS" not in os.environ:
        config._matrix_records = tempfile.TemporaryDirectory(prefix="attribx-matrix-")
        os.environ["ATTRIBX_MATRIX_RECORDS"] = config._matrix_records.name


def pytest_sessionfinish(session):
    if hasattr(session.config, "workerinput"):
        from matrix.common import RECORD
        folder = os.environ.get("ATTRIBX_MATRIX_RECORDS")
        if folder and RECORD:
            name = os.path.join(folder, f"{session.config.workerinput['workerid']}.json")
            with open(name, "w") as f:
                json.dump(RECORD, f)


def _all_records():
    from matrix.common import RECORD
    records = list(RECORD)
    folder = os.environ.get("ATTRIBX_MATRIX_RECORDS")
    if folder and os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name)) as f:
                records.extend(json.load(f))
    return records


def pytest_terminal_summary(terminalreporter):
    from matrix.common import TOL
    records = _all_records()
    if not records:
        return
    wide = [r for r in records if r["float32"] > TOL]
    path = os.environ.get("ATTRIBX_MATRIX_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(records, f, indent=1)
    if wide:
        terminalreporter.section("matrix: cells with a float32 error above 1e-4 (see tests/matrix/common.py)")
        for r in wide:
            f64 = "" if r["float64"] is None else f", float64 {r['float64']:.1e}"
            terminalreporter.write_line(f"{r['cell']}: float32 {r['float32']:.1e}, allowed {r['tol']:.1e} "
                                        f"(κ {r['kappa']:.1e}){f64}")
