"""Keras model files that cannot be loaded get one line that says why (issue 17 point 17)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import attribx
from attribx.errors import ModelLoadError

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("keras_files")
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    m.save(d / "ok.keras")
    (d / "empty.keras").write_bytes(b"")
    (d / "trunc.keras").write_bytes((d / "ok.keras").read_bytes()[:200])
    lam = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(3)])
    lam.save(d / "lam.keras")
    return d


@pytest.mark.parametrize("name, match", [("empty.keras", "is empty"), ("trunc.keras", "damaged or truncated"),
                                         ("lam.keras", "Lambda layer.*safe_mode=False")])
def test_unloadable_keras_files(files, name, match):
    with pytest.raises(ModelLoadError, match=match) as err:
        attribx.load_model(files / name)
    assert "\n" not in str(err.value) and "File not found" not in str(err.value)


def test_cli_one_line(files):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-m", "attribx.cli", "inspect", str(files / "trunc.keras")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("attribx")]
    assert len(lines) == 1 and "damaged or truncated" in lines[0] and "Traceback" not in out.stderr


def test_good_file_still_loads(files):
    assert attribx.load_model(files / "ok.keras") is not None
