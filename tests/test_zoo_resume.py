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


def test_times_and_peaks_come_from_two_processes_and_are_merged(monkeypatch, tmp_path):
    """Per model one process times the methods (the allocator as users have it) and one measures peaks, started
    with glibc's mmap threshold fixed; the record joins both, and a memory process that fails leaves the times."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import zoo_speed
    calls: list = []

    def fake_run(cmd, env=None, **kw):
        name = cmd[cmd.index("--models") + 1]
        memory = cmd[cmd.index("--repeat") + 1] == "0"
        calls.append((name, memory, (env or {}).get("MALLOC_MMAP_THRESHOLD_")))
        if memory and name == "broken":
            return subprocess.CompletedProcess(cmd, -9, stdout="", stderr="Killed\n")
        m = ({"peak_mib": 30.0, "mem_ratio": 1.5} if memory else {"time_s": 2.0, "gradient_s": 1.0, "ratio": 2.0})
        rec = {"model": name, "framework": "torch", "params": 1, "methods": {"lrp.epsilon": m}}
        if memory:
            rec["gradient_mib"] = 20.0
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(rec) + "\n", stderr="")
    monkeypatch.setattr(zoo_speed.subprocess, "run", fake_run)
    monkeypatch.setattr(zoo_speed, "versions", lambda framework: "stub")
    monkeypatch.setattr(zoo_speed, "write_report", lambda *a, **k: None)
    path = tmp_path / "run.json"
    zoo_speed.main(["--models", "a", "broken", "--json", str(path), "--repeat", "2"])
    assert calls == [("a", False, None), ("a", True, "131072"), ("broken", False, None), ("broken", True, "131072")]
    a, broken = json.loads(path.read_text())["records"]
    assert a["gradient_mib"] == 20.0 and a["methods"]["lrp.epsilon"] == {
        "time_s": 2.0, "gradient_s": 1.0, "ratio": 2.0, "peak_mib": 30.0, "mem_ratio": 1.5}
    assert broken["methods"]["lrp.epsilon"]["ratio"] == 2.0 and "Killed" in broken["memory_error"]
