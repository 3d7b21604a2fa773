"""The SQLite floor of the embedded store: the version comparison, and `serve` refusing to
start below it (the floor raised through CALHL7_MIN_SQLITE, since this machine's SQLite is
new enough)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from engine.store.sqlite_version import MIN_SQLITE, below, parse_version, required, sqlite_problem
from load.harness import engine_command
from tests.conftest import REPO


@pytest.mark.parametrize(("version", "minimum", "too_old"), [
    ("3.35.0", (3, 35, 0), False),
    ("3.35.5", (3, 35, 0), False),
    ("3.34.1", (3, 35, 0), True),    # Debian 11, RHEL 9
    ("3.26.0", (3, 35, 0), True),    # RHEL 8
    ("3.37.2", (3, 35, 0), False),   # Ubuntu 22.04
    ("3.40.1", (3, 35, 0), False),
    ("3.9.0", (3, 35, 0), True),     # numbers, not text: "3.9" sorts after "3.35" as text
    ("3.100.0", (3, 35, 0), False),
    ("4.0.0", (3, 35, 0), False),
    ("3.35", (3, 35, 0), False),
    ("3.35", (3, 35, 1), True),
    ("2.99.99", (3, 0, 0), True),
])
def test_below(version: str, minimum: tuple[int, ...], too_old: bool) -> None:
    assert below(version, minimum) is too_old


@pytest.mark.parametrize("text", ["", "3.x", "v3.40", "3..1", "3.40.1-beta"])
def test_parse_version_refuses_what_is_not_a_version(text: str) -> None:
    with pytest.raises(ValueError, match="not a SQLite version"):
        parse_version(text)


def test_this_python_passes_and_the_floor_can_only_be_raised(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert sqlite_problem() is None
    monkeypatch.setenv("CALHL7_MIN_SQLITE", "3.0")
    assert required() == MIN_SQLITE
    monkeypatch.setenv("CALHL7_MIN_SQLITE", "99.1")
    assert required() == (99, 1, 0)
    problem = sqlite_problem()
    assert problem is not None and "SQLite 99.1.0 or newer" in problem
    assert sqlite3.sqlite_version in problem and "--store postgresql://" in problem


VERBS = {
    "serve": ["serve", "--insecure-dev", "--http", "127.0.0.1:0", "--channels",
              str(REPO / "channels")],
    "demo": ["demo", "--quiet"],
}


def _run(tmp_path: Path, floor: str, verb: str = "serve") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CALHL7_MIN_SQLITE": floor, "CALHL7_LOG_LEVEL": "warning"}
    return subprocess.run(
        engine_command(*VERBS[verb], "--data", str(tmp_path / "var")),
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_refuses_below_the_floor_before_opening_anything(tmp_path: Path, verb: str) -> None:
    result = _run(tmp_path, "999.0", verb)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the embedded store needs SQLite 999.0.0 or newer" in result.stderr
    assert f"this Python uses SQLite {sqlite3.sqlite_version}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "var").exists()  # refused before the store was created


def test_serve_names_a_floor_that_is_not_a_version(tmp_path: Path) -> None:
    result = _run(tmp_path, "newest")
    assert result.returncode == 2
    assert "CALHL7_MIN_SQLITE" in result.stderr and "not a SQLite version" in result.stderr
