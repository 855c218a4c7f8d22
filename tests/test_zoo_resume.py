"""benchmarks/zoo_speed.py --resume: a zoo run outlives a session (hours on the CPU); the models a saved run
measured are kept and not measured again, and a saved run with another setting is refused in one line. The
per-model subprocess is replaced by a recorder: what is tested is the bookkeeping, not a measurement."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def zoo(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import zoo_speed
    measured: list = []

    def fake_run(cmd, **kw):
        name = cmd[cmd.index("--models") + 1]
        measured.append(name)
        rec = {"model": name, "framework": "torch", "params": 1, "methods": {}}
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(rec) + "\n", stderr="")
    monkeypatch.setattr(zoo_speed.subprocess, "run", fake_run)
    monkeypatch.setattr(zoo_speed, "versions", lambda framework: "stub")
    monkeypatch.setattr(zoo_speed, "write_report", lambda *a, **k: None)
    return zoo_speed, measured


def test_resume_measures_only_the_models_a_saved_run_lacks(zoo, tmp_path):
    zoo_speed, measured = zoo
    path = tmp_path / "run.json"
    zoo_speed.main(["--models", "a", "b", "--json", str(path), "--no-memory"])
    assert measured == ["a", "b"]
    zoo_speed.main(["--models", "a", "b", "c", "--json", str(path), "--no-memory", "--resume"])
    assert measured == ["a", "b", "c"]
    saved = json.loads(path.read_text())
    assert [r["model"] for r in saved["records"]] == ["a", "b", "c"]
    zoo_speed.main(["--models", "a", "b", "c", "--json", str(path), "--no-memory"])     # no --resume: anew
    assert measured[3:] == ["a", "b", "c"]


def test_resume_refuses_a_saved_run_with_another_setting(zoo, tmp_path):
    zoo_speed, measured = zoo
    path = tmp_path / "run.json"
    zoo_speed.main(["--models", "a", "--json", str(path), "--no-memory", "--size", "64"])
    with pytest.raises(SystemExit, match="size=64, not 224"):
        zoo_speed.main(["--models", "a", "b", "--json", str(path), "--no-memory", "--resume"])
    assert measured == ["a"]
