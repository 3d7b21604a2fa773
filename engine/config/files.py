"""Reading one YAML file of the channel directory, and reporting what is wrong with it.

String values may use `${VAR}` or `${VAR:-default}` (environment interpolation, done before
validation, so `port: ${EHR_MAIN_PORT:-2576}` is still checked as a port). Every problem is a
`Problem` naming the file, the path inside it and its YAML line when known; a loader collects
them all and raises one `ConfigError`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '<file>'}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in channel configuration:\n"
                         + "\n".join(f"  {p}" for p in problems))


M = TypeVar("M", bound=BaseModel)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
KeyPath = tuple[str, ...]
Lines = Mapping[KeyPath, int]


def _line_index(
    node: yaml.Node, path: KeyPath, out: dict[KeyPath, int], dups: list[tuple[KeyPath, int]]
) -> None:
    """Map each path inside the document to its 1-based YAML line; note duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = path + (key,)
            if key in seen:
                dups.append((sub, key_node.start_mark.line + 1))
            seen.add(key)
            out[sub] = key_node.start_mark.line + 1
            _line_index(value_node, sub, out, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = path + (str(i),)
            out[sub] = item.start_mark.line + 1
            _line_index(item, sub, out, dups)


def line_for(lines: Lines, loc: KeyPath) -> int | None:
    """The YAML line of `loc` in a file read by `read_yaml`, or of its longest known prefix."""
    for n in range(len(loc), 0, -1):  # longest known prefix: pydantic adds type tags to loc
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _interpolate(value: Any, path: KeyPath, missing: list[tuple[KeyPath, str]]) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            env = os.environ.get(m.group(1))
            if env is not None and env != "":
                return env
            if m.group(2) is not None:
                return m.group(2)
            if env is None:
                missing.append((path, m.group(1)))
            return ""
        return _ENV.sub(sub, value) if "${" in value else value
    if isinstance(value, dict):
        return {k: _interpolate(v, path + (str(k),), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, path + (str(i),), missing) for i, v in enumerate(value)]
    return value


def read_yaml(
    path: Path, shown: str, problems: list[Problem]
) -> tuple[dict[str, Any] | None, dict[KeyPath, int]]:
    """Parse one file; record problems; return (data, line index).

    The line index also holds the paths whose env variable was missing, under key ("!",) +
    path, so `validate` does not report the same value twice."""
    lines: dict[KeyPath, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(shown, "", None, f"cannot read file ({type(exc).__name__})"))
        return None, lines
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problems.append(Problem(shown, "", mark.line + 1 if mark else None,
                                f"YAML syntax: {exc.problem or exc.context}"))
        return None, lines
    except yaml.YAMLError as exc:
        problems.append(Problem(shown, "", None, f"YAML: {type(exc).__name__}"))
        return None, lines
    if node is None or not isinstance(data, dict):
        problems.append(Problem(shown, "", 1, "the file must be a YAML mapping"))
        return None, lines
    dups: list[tuple[KeyPath, int]] = []
    _line_index(node, (), lines, dups)
    for dpath, line in dups:
        problems.append(Problem(shown, ".".join(dpath), line,
                                "duplicate key (YAML would keep only the last)"))
    missing: list[tuple[KeyPath, str]] = []
    data = _interpolate(data, (), missing)
    for mpath, var in missing:
        lines[("!",) + mpath] = 0
        problems.append(Problem(shown, ".".join(mpath), line_for(lines, mpath),
                                f"environment variable {var} is not set and has no default"))
    return data, lines


def validate(model: type[M], data: dict[str, Any], shown: str, lines: Lines,
             problems: list[Problem]) -> M | None:
    """`model` from a file's data, or None with every validation error recorded."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            loc = tuple(str(p) for p in err["loc"])
            if ("!",) + loc in lines:
                continue  # already reported: environment variable not set
            problems.append(Problem(shown, ".".join(loc), line_for(lines, loc), err["msg"]))
        return None


def yaml_files(directory: Path) -> list[Path]:
    """The YAML files directly in `directory`, sorted (subfolders are other kinds of file)."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def fingerprint(directory: str | os.PathLike[str]) -> str:
    """Cheap change detector: names, sizes and mtimes of the files a load reads (YAML under
    the directory, templates)."""
    root = Path(directory)
    h = hashlib.sha1()
    try:
        paths = sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".j2")
        )
    except OSError:
        return ""
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
