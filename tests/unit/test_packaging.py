"""The wheel's contents: every package under engine/, and the SIU templates and example
channels as package data read from the one copy at the top of the repository."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from engine.config.outbound import load_config
from engine.hl7.render import DEFAULT_TEMPLATES, default_template, shipped_templates
from engine.site_init import copy_data, example_channels
from tests.conftest import REPO

DATA_SUFFIXES = (".yaml", ".j2", ".md")


def _tree(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    """Data files under a package-data folder: relative name -> bytes."""
    out: dict[str, bytes] = {}
    for entry in folder.iterdir():
        if entry.is_dir():
            if entry.name != "__pycache__":
                out.update(_tree(entry, f"{prefix}{entry.name}/"))
        elif entry.name.endswith(DATA_SUFFIXES):
            out[prefix + entry.name] = entry.read_bytes()
    return out


def test_pyproject_lists_every_package_under_engine() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts)
               for p in (REPO / "engine").rglob("__init__.py")}
    listed = set(config["packages"])
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    mapped = config["package-dir"]
    assert mapped == {"engine.hl7_templates": "hl7_templates",
                      "engine.example_channels": "channels"}
    assert listed - on_disk == set(mapped)  # nothing listed that does not exist


def test_templates_and_example_channels_are_the_repository_copies() -> None:
    templates = _tree(shipped_templates())
    assert set(DEFAULT_TEMPLATES.values()) <= set(templates)
    assert templates == _tree(resources.files("engine.hl7_templates"))
    assert templates == {p.name: p.read_bytes() for p in (REPO / "hl7_templates").iterdir()
                         if p.name.endswith(DATA_SUFFIXES)}
    channels = _tree(example_channels())
    assert "destinations/ehr-main.yaml" in channels and "inbound/ehr-main.yaml" in channels
    assert channels == {str(p.relative_to(REPO / "channels")): p.read_bytes()
                        for p in (REPO / "channels").rglob("*") if p.name.endswith(DATA_SUFFIXES)}


def test_default_templates_come_from_package_data() -> None:
    for version, filename in DEFAULT_TEMPLATES.items():
        template = default_template(version)
        assert template.name == f"engine.hl7_templates/{filename}"
    config = load_config(REPO / "channels")
    assert config.templates["family-medicine"] is default_template("2.5.1")
    assert config.templates["physiotherapy"] is default_template("2.3")


def test_example_channels_copy_out_and_load(tmp_path: Path) -> None:
    written = copy_data(example_channels(), tmp_path / "channels")
    assert not any(p.name == "__init__.py" for p in written)
    assert {p.relative_to(tmp_path / "channels").as_posix() for p in written} == set(
        _tree(example_channels()))
    config = load_config(tmp_path / "channels")
    assert {c.name for c in config.channels} == {
        "family-medicine", "main-street-front-desk", "physiotherapy"}


def test_the_lock_pins_every_runtime_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0] for d in project["dependencies"]]
    wanted = {name.lower().replace("_", "-") for name in names}
    assert {"uvicorn", "hl7apy", "jinja2"} <= wanted
    lock = (REPO / "requirements.lock").read_text()
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==[^\s;]+(?: ;[^\n]*)? \\\n    --hash=sha256:",
                      lock, flags=re.M)
    # every requirement is pinned and hashed, so `pip wheel --require-hashes` accepts the file
    assert len(pins) == len(re.findall(r"^[A-Za-z0-9]", lock, flags=re.M)) > 10
    pinned = {name.lower().replace("_", "-") for name in pins}
    assert wanted <= pinned, f"not in requirements.lock (run ./dev lock): {wanted - pinned}"
