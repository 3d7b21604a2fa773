"""The booking's walk keeps its layers: the pure core (appointments, hl7) loads no channel,
store, MLLP or HTTP code, hl7 takes a channel's settings as plain data, routing loads no config
loader, MLLP or store code, and the modules of the walk stay small enough to read. These run
the imports for real; the import-linter contracts in pyproject.toml hold the same rules (and
no cycles) statically."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

_OUTER = ("engine.store", "engine.mllp", "engine.http", "engine.delivery")
_FORBIDDEN = ("engine.channels", "engine.config", *_OUTER)


@pytest.mark.parametrize("modules,forbidden", [
    (("engine.hl7.fields", "engine.hl7.render", "engine.hl7.ack", "engine.hl7.validate"),
     _FORBIDDEN),
    (("engine.appointments.normalize",), _FORBIDDEN),
    (("engine.channels.routing",), ("engine.config", *_OUTER)),
])
def test_the_pure_core_loads_no_outer_layer(modules: tuple[str, ...],
                                            forbidden: tuple[str, ...]) -> None:
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "print('\\n'.join(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout.split()
    assert any(m.startswith(modules[0]) for m in loaded)  # the probe ran
    bad = [m for m in loaded if m.startswith(forbidden)]
    assert not bad, f"{modules} must stay pure; it pulled in {bad}"


@pytest.mark.parametrize("package", ["appointments", "channels", "hl7", "processing"])
def test_modules_of_the_walk_stay_under_500_lines(package: str) -> None:
    files = sorted((REPO / "engine" / package).glob("*.py"))
    assert files
    lines = {f.name: len(f.read_text(encoding="utf-8").splitlines()) for f in files}
    long = {name: n for name, n in lines.items() if n >= 500}
    assert not long, f"split these modules of engine/{package} (lines): {long}"
