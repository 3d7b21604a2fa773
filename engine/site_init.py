"""`calhl7 init DIR`: a new site's starting point, and the copying of shipped package data.

The starter files (engine/starter/) hold one channel, one destination and one inbound channel
with every option shown; the SIU templates are copied beside them so the site adapts its own
copy, and the starter channel points at it. The demo copies the example channels the same way.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from engine.hl7.render import shipped_templates

EXAMPLE_CHANNELS = "engine.example_channels"
_DATA_SUFFIXES = (".yaml", ".yml", ".j2", ".md")  # not the __init__.py that makes it a package


class InitError(Exception):
    """What stops `init`; the message says what to do."""


def example_channels() -> Traversable:
    """The demo's channel folder (channels/ of the repository), wherever it is installed."""
    return resources.files(EXAMPLE_CHANNELS)


def starter_files() -> Traversable:
    return resources.files("engine").joinpath("starter")


def copy_data(source: Traversable, target: Path) -> list[Path]:
    """Copy a folder of package data (recursively, data files only); return what was written."""
    written: list[Path] = []
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            if entry.name != "__pycache__":
                written += copy_data(entry, target / entry.name)
        elif entry.name.endswith(_DATA_SUFFIXES):
            path = target / entry.name
            path.write_bytes(entry.read_bytes())
            written.append(path)
    return written


def init_site(directory: Path, force: bool = False) -> list[Path]:
    """Write the starter files and a copy of the templates into `directory`.

    A directory that exists and holds anything is refused unless `force`; with `force`,
    files of the same names are replaced and every other file is left alone."""
    if directory.exists() and not directory.is_dir():
        raise InitError(f"{directory} is a file; name a new folder")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise InitError(f"{directory} is not empty; name a new folder, or pass --force to write "
                        "the starter files into it (files of the same name are replaced)")
    written = copy_data(starter_files(), directory)
    written += copy_data(shipped_templates(), directory / "templates")
    return written
