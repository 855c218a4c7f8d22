"""The Python versions attribx promises are the ones CI tests (issue 17, point 8).

Python 3.10 reached its end of life in October 2026 and the pinned stack (numpy 2.4) needs 3.11, so the
floor is 3.11: every package's ``requires-python``, the README's promise and tox's interpreter must agree,
so that CI always runs the oldest Python a user may install attribx on."""
from __future__ import annotations

import configparser
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = [ROOT / "pyproject.toml", *sorted((ROOT / "plugins").glob("*/pyproject.toml"))]


def floor(spec: str) -> tuple[int, int]:
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec.strip())
    assert m, f"requires-python {spec!r} should be a plain lower bound"
    return int(m.group(1)), int(m.group(2))


def test_every_package_promises_the_same_oldest_python():
    floors = {p.relative_to(ROOT).as_posix(): floor(tomllib.loads(p.read_text())["project"]["requires-python"])
              for p in PROJECTS}
    assert len(PROJECTS) >= 5
    assert set(floors.values()) == {(3, 11)}, floors


def test_ci_runs_the_oldest_promised_python():
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / "tox.ini")
    assert tox["testenv"]["basepython"].strip() == "python3.11"
    assert tox["tox"]["skip_missing_interpreters"].strip() == "false"   # a missing 3.11 fails, not skips
    for section in tox.sections():
        assert "basepython" not in tox[section] or section == "testenv", f"[{section}] overrides the interpreter"
    if "TOX_ENV_NAME" in __import__("os").environ:
        assert sys.version_info[:2] == (3, 11)


def test_readme_states_the_promise():
    text = (ROOT / "README.md").read_text()
    assert "Python ≥ 3.11" in text and "3.10+" not in text and "≥ 3.10" not in text
