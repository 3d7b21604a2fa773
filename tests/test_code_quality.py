"""Lint and types are part of the test command, so CI holds them: ruff and mypy over engine/
with the settings in pyproject.toml, run from this environment."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_ruff_finds_nothing_in_engine() -> None:
    proc = run("ruff", "check", "--no-cache", "engine")
    assert proc.returncode == 0, f"ruff check engine failed:\n{proc.stdout}{proc.stderr}"


def test_mypy_finds_nothing_in_engine() -> None:
    proc = run("mypy")  # files, strictness and the untyped third-party modules: pyproject.toml
    assert proc.returncode == 0, f"mypy failed:\n{proc.stdout}{proc.stderr}"
    assert "no issues found" in proc.stdout, proc.stdout
