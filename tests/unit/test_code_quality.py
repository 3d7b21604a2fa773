"""Lint, types and layers are part of the test command, so CI holds them: ruff, mypy and
import-linter over engine/ with the settings in pyproject.toml, run from this environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_import_contracts_hold() -> None:
    # no cycle between the packages of engine/, and the layers of the brief (pyproject.toml)
    lint_imports = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"lint-imports failed:\n{proc.stdout}{proc.stderr}"
    assert "0 broken" in proc.stdout, proc.stdout
