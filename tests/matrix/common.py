"""What the matrix's test modules share: the comparison rule, translations and references computed once,
and the exporters' plumbing. No framework is imported at module level.

The comparison rule (the issue's 1e-4 in float32, checked in float64 where float32 cannot resolve it):

* A cell is one (architecture, source, engine, method): its relevance, laid out like the reference,
  must equal the reference, the numpy engine's relevance on the native model's graph, to relative
  ``1e-4`` in float32 (``attribx.testing.relative_error``: max |a − b| / max |b|).
* Where it does not, the float32 reference's own round-off κ (its distance from the same reference in
  float64) tells whether float32 can resolve 1e-4 at all: rules that put a fixed share of relevance on
  near-zero sums (flat, w², z-box with residual additions that nearly cancel) amplify round-off. Such a
  cell is computed again in float64, and the reference too. It passes (with a :class:`RoundoffWarning`
  naming it) when its float32 error is within ``10·κ`` and in float64 it agrees to ``1e-4``, or, for an
  ill-conditioned cell, to within κ: exporters fold batch norm into the conv in float32, so the exported
  weights differ from the native ones by an ulp (~1e-7), and a method that amplifies round-off by 1e5
  amplifies that difference too, in any precision (docs/matrix.md gives the measured case). A translation
  that computes another function fails: its forward differs (checked to 1e-5), and the well-conditioned
  methods on the same graph differ.
"""
from __future__ import annotations

import importlib.util
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import attribx
from attribx.testing import relative_error

from .zoo import TOL, method_params

FORWARD_TOL = 1e-5      # attribx's forward pass against onnxruntime and against the native model
KAPPA_FACTOR = 10


class RoundoffWarning(UserWarning):
    """A cell that differs in float32 beyond the tolerance but agrees in float64."""


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):       # a submodule of a missing package
        return False


def triton_after_tensorflow() -> bool:
    """Whether importing torchvision now would import triton after TensorFlow (a crash; see conftest.py)."""
    return "tensorflow" in sys.modules and "triton" not in sys.modules and has_module("triton")


def lrp_methods():
    return sorted(m for m in attribx.plugins.registry().methods if m.startswith("lrp."))


def relevance(graph, x, method, engine, dtype=np.float32, target=None):
    """The input relevance of samples x (for targets 0, 1, ..., one per sample, unless given), as float64."""
    x = np.asarray(x, dtype=dtype)
    target = list(range(len(x))) if target is None else target
    r = attribx.explain(graph, x, method, target=target, engine=engine, **method_params(method))
    return np.asarray(r.values, dtype=np.float64)


@dataclass
class Reference:
    r32: np.ndarray
    r64: np.ndarray

    @property
    def kappa(self) -> float:
        return relative_error(self.r32, self.r64)

    @property
    def tol(self) -> float:
        return max(TOL, KAPPA_FACTOR * self.kappa)


def reference(graph, x, method, target=None) -> Reference:
    """The numpy engine's relevance in float32 and float64."""
    r32 = relevance(graph, x, method, "numpy", target=target)
    r64 = relevance(graph, x, method, "numpy", np.float64, target=target)
    assert np.all(np.isfinite(r32)), f"{method}: the reference has non-finite relevance"
    return Reference(r32, r64)


RECORD: list[dict] = []     # every compared cell, for the session summary (conftest.py)


def assert_cell(ref: Reference, compute, what: str, layout=lambda a: a) -> float:
    """``compute(dtype)`` -> the cell's relevance; ``layout`` puts it in the reference's layout.

    Returns the float32 relative error; see the module docstring for the rule."""
    ours = layout(compute(np.float32))
    assert ours.shape == ref.r32.shape, f"{what}: relevance of shape {ours.shape}, reference {ref.r32.shape}"
    assert np.all(np.isfinite(ours)), f"{what}: non-finite relevance"
    err = relative_error(ours, ref.r32)
    row = {"cell": what, "float32": err, "tol": ref.tol, "kappa": ref.kappa, "float64": None}
    RECORD.append(row)
    if err <= TOL:
        return err
    err64 = row["float64"] = relative_error(layout(compute(np.float64)), ref.r64)
    assert err64 <= max(TOL, ref.kappa) and err <= ref.tol, (
        f"{what}: relative error {err:.2e} in float32 and {err64:.2e} in float64; the float32 reference's own "
        f"error κ = {ref.kappa:.1e} allows {ref.tol:.1e} in float32 and max(1e-4, κ) in float64")
    warnings.warn(RoundoffWarning(f"{what}: float32 {err:.1e} > {TOL:.0e} (κ {ref.kappa:.1e}), "
                                  f"float64 {err64:.1e}: round-off"))
    return err


def run_ort(path, x):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})[0]


def assert_forward(graph, path, x, native, engine, what):
    """attribx's forward pass of an ONNX export equals onnxruntime's and the native model's output."""
    got = attribx.forward(graph, x, engine=engine)
    want = run_ort(path, x)
    err = relative_error(got, want)
    assert err <= FORWARD_TOL, f"{what}: forward differs from onnxruntime by {err:.2e}"
    if native is not None:
        err = relative_error(got, native)
        assert err <= FORWARD_TOL, f"{what}: forward differs from the native model by {err:.2e}"


class Lazy:
    """Values computed once on first use; a failure (or a skip) is remembered and raised again."""

    def __init__(self, make):
        self._make, self._done = make, {}

    def __call__(self, *key):
        if key not in self._done:
            try:
                self._done[key] = (True, self._make(*key))
            except (Exception, pytest.skip.Exception, pytest.fail.Exception) as err:  # noqa: BLE001
                self._done[key] = (False, err)
        ok, value = self._done[key]
        if not ok:
            raise value
        return value


def cells(archs, sources, engines, methods, skip=()):
    """pytest params (arch, source, engine, method) with readable ids; ``sources``: name -> engines or None
    (all engines); ``skip``: (source, engine) pairs left out (the reference itself)."""
    out = []
    for arch in archs:
        for source, only in sources.items():
            for engine in engines:
                if (only is not None and engine not in only) or (source, engine) in skip:
                    continue
                for method in methods:
                    out.append(pytest.param(arch, source, engine, method, id=f"{arch}-{source}-{engine}-{method}"))
    return out


def keras_export(model, x, path):
    """Keras 3's ONNX export (tf2onnx under the TensorFlow backend); the model is called once first."""
    if not has_module("tf2onnx"):
        pytest.skip("Keras's ONNX export needs tf2onnx (pip install tf2onnx)")
    model(x[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(str(path), format="onnx", verbose=False)
    return path


def torch_exporter_missing(exporter: str) -> str | None:
    """Why this torch exporter cannot run here, or None."""
    if not has_module("torch"):
        return "torch is not installed"
    if exporter == "dynamo" and not has_module("onnxscript"):
        return "torch's dynamo ONNX exporter needs onnxscript"
    return None


def export_path(report: dict, name: str, exporter: str):
    """The ONNX file of a torch export, or skip/fail with the exporter's reason."""
    missing = torch_exporter_missing(exporter)
    if missing:
        pytest.skip(missing)
    entry = report[name][exporter]
    if entry["error"]:
        pytest.fail(f"torch.onnx.export({exporter}) of {name} failed: {entry['error']}", pytrace=False)
    return entry["path"]
