"""The house rules that keep the wiring readable: app.py only wires (under 200 lines), no
module of engine/ outside the store (split separately) grows past 500 lines, and no module
reaches into another package's private names."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

ENGINE = REPO / "engine"


def _package(module: str) -> str:
    """engine.delivery.worker -> engine.delivery; engine.app -> engine.app."""
    return ".".join(module.split(".")[:2])


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _where(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(path: Path, module: str | None = None) -> list[str]:
    """`from engine.x import _y` and `mod._y` on an imported engine module, across packages
    (`module`: the dotted name `path` is read as; by default its own)."""
    here = _package(module or _module_name(path))
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []
    modules: dict[str, str] = {}  # local name -> engine module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("engine"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                modules[alias.asname or alias.name] = target
                if _private(alias.name) and _package(node.module) != here:
                    found.append(f"{_where(path)}:{node.lineno} from {node.module} import "
                                 f"{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("engine") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in modules and _private(node.attr) \
                and _package(modules[node.value.id]) != here:
            found.append(f"{_where(path)}:{node.lineno} {node.value.id}.{node.attr}")
    return found


def test_app_only_wires_in_under_200_lines() -> None:
    lines = len((ENGINE / "app.py").read_text(encoding="utf-8").splitlines())
    assert lines < 200, f"engine/app.py has {lines} lines: move what is not wiring out"


def test_modules_outside_the_store_stay_under_500_lines() -> None:
    files = [f for f in ENGINE.rglob("*.py") if "store" not in f.relative_to(ENGINE).parts]
    assert len(files) > 50
    long = {str(f.relative_to(REPO)): n for f in files
            if (n := len(f.read_text(encoding="utf-8").splitlines())) >= 500}
    assert not long, f"split these modules (lines): {long}"


def test_no_module_imports_another_packages_private_names() -> None:
    files = sorted(ENGINE.rglob("*.py"))
    assert files
    found = [hit for f in files for hit in private_imports(f)]
    assert not found, "private names used across packages (make them public where they " \
        "belong, or keep them inside):\n" + "\n".join(found)


def test_the_private_import_check_sees_both_forms(tmp_path: Path) -> None:
    """The check above can fail: both forms are caught, a package's own use is not."""
    probe = tmp_path / "probe.py"
    probe.write_text("from engine.channels.config import _read, load_config\n"
                     "from engine.inbound.config import _local\n"
                     "from engine import operator\n"
                     "from engine.inbound import siu\n"
                     "operator._who()\nsiu._own()\n", encoding="utf-8")
    hits = private_imports(probe, "engine.inbound.probe")
    assert [h.split(" ", 1)[1] for h in hits] == [
        "from engine.channels.config import _read", "operator._who"]
