"""The outbound side of a channel directory: channels and destinations, loaded together.

Layout of a channel directory (reviewable files, hot-reloaded by the app):

    <dir>/*.yaml                  one channel per file (name defaults to the file stem)
    <dir>/destinations/*.yaml     one destination (EHR interface) per file, referred to by name
    <dir>/templates/*.j2          optional channel templates (`hl7.template`, relative to <dir>)
    <dir>/inbound/*.yaml          inbound channels (`engine.config.inbound`), not read here

`load_config(dir)` returns an immutable `Config` or raises `ConfigError` listing EVERY problem,
each with file, path inside the file, YAML line when known, and what is wrong. Hot reload: the
app polls `config_fingerprint(dir)` (mtimes and sizes, no parsing), calls `load_config` again
when it changes, and swaps the whole `Config` object; a failing reload keeps the old one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.channels.models import Channel
from engine.channels.routing import probe_render
from engine.config.destinations import Destination
from engine.config.files import (
    ConfigError,
    Problem,
    fingerprint,
    line_for,
    read_yaml,
    validate,
    yaml_files,
)
from engine.hl7.render import SiuTemplate, TemplateError, default_template


@dataclass(frozen=True)
class Config:
    """An immutable snapshot: swap the whole object on reload, never edit it."""

    directory: Path
    destinations: Mapping[str, Destination]
    channels: tuple[Channel, ...]
    templates: Mapping[str, SiuTemplate]  # channel name -> compiled template
    channel_files: Mapping[str, Path] = field(default_factory=lambda: MappingProxyType({}))
    fingerprint: str = ""

    def channel(self, name: str) -> Channel:
        for ch in self.channels:
            if ch.name == name:
                return ch
        raise KeyError(name)


# The error a channel's template raises on a sample booking, or None.
Probe = Callable[[Config, Channel], str | None]


def load_config(directory: str | os.PathLike[str], *, probe: Probe = probe_render) -> Config:
    """Load and check every file; raise ConfigError with all problems found.

    A custom template is only proven by rendering: `probe` tries each channel once (by default
    on a synthetic booking through routing) so a typo fails the load, not the first message."""
    root = Path(directory)
    problems: list[Problem] = []
    if not root.is_dir():
        raise ConfigError([Problem(str(root), "", None, "not a directory")])
    stamp = fingerprint(root)

    def shown(p: Path) -> str:
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    destinations: dict[str, Destination] = {}
    declared: set[str] = set()  # names of destination files, valid or not: no cascading errors
    dest_dir = root / "destinations"
    for path in yaml_files(dest_dir) if dest_dir.is_dir() else []:
        data, lines = read_yaml(path, shown(path), problems)
        if data is None:
            declared.add(path.stem)
            continue
        data.setdefault("name", path.stem)
        declared.add(str(data["name"]))
        dest = validate(Destination, data, shown(path), lines, problems)
        if dest is None:
            continue
        if dest.name in destinations:
            problems.append(Problem(shown(path), "name", line_for(lines, ("name",)),
                                    f"destination {dest.name!r} is defined twice"))
        destinations[dest.name] = dest

    channels: list[Channel] = []
    templates: dict[str, SiuTemplate] = {}
    files: dict[str, Path] = {}
    for path in yaml_files(root):
        data, lines = read_yaml(path, shown(path), problems)
        if data is None:
            continue
        data.setdefault("name", path.stem)
        ch = validate(Channel, data, shown(path), lines, problems)
        if ch is None:
            continue
        if ch.name in files:
            problems.append(Problem(shown(path), "name", line_for(lines, ("name",)),
                                    f"channel {ch.name!r} is also defined in "
                                    f"{shown(files[ch.name])}"))
            continue
        if ch.destination not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(Problem(shown(path), "destination", line_for(lines, ("destination",)),
                                    f"unknown destination {ch.destination!r} (known: {known})"))
        try:
            if ch.hl7.template:
                templates[ch.name] = SiuTemplate(root / ch.hl7.template)
            else:
                templates[ch.name] = default_template(ch.hl7.version)
        except TemplateError as exc:
            problems.append(Problem(shown(path), "hl7.template",
                                    line_for(lines, ("hl7", "template")), str(exc)))
        channels.append(ch)
        files[ch.name] = path

    if problems:
        raise ConfigError(problems)
    config = Config(
        directory=root,
        destinations=MappingProxyType(destinations),
        channels=tuple(channels),
        templates=MappingProxyType(templates),
        channel_files=MappingProxyType(files),
        fingerprint=stamp,
    )
    for ch in config.channels:
        error = probe(config, ch) if ch.name in config.templates else None
        if error:
            problems.append(Problem(shown(files[ch.name]), "hl7.template", None, error))
    if problems:
        raise ConfigError(problems)
    return config


def config_fingerprint(directory: str | os.PathLike[str]) -> str:
    """Cheap change detector: names, sizes and mtimes of the files `load_config` reads."""
    return fingerprint(directory)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the two file kinds, for editors and review."""
    return {
        "channel": Channel.model_json_schema(),
        "destination": Destination.model_json_schema(),
    }
