"""Channel and destination files: pydantic models and the loader.

Layout of a channel directory (reviewable files, hot-reloaded by the app):

    <dir>/*.yaml                  one channel per file (name defaults to the file stem)
    <dir>/destinations/*.yaml     one destination (EHR interface) per file, referred to by name
    <dir>/templates/*.j2          optional channel templates (`hl7.template`, relative to <dir>)

String values may use `${VAR}` or `${VAR:-default}` (environment interpolation, done before
validation, so `port: ${EHR_MAIN_PORT:-2576}` is still checked as a port).

`load_config(dir)` returns an immutable `Config` or raises `ConfigError` listing EVERY problem,
each with file, path inside the file, YAML line when known, and what is wrong. Hot reload: the
app polls `config_fingerprint(dir)` (mtimes and sizes, no parsing), calls `load_config` again
when it changes, and swaps the whole `Config` object; a failing reload keeps the old one.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from engine.connection import ConnectionSettings
from engine.delivery.policy import AckPolicy, RetryPolicy
from engine.hl7.escape import check_wire_charset, codec_name
from engine.hl7.render import SiuTemplate, TemplateError, default_template

_DELIMITERS = set("|^~&")


def _components(value: Any) -> tuple[str, ...]:
    """A code-map value: a YAML list of components (or one plain scalar), never ER7 text."""
    if isinstance(value, (list, tuple)):
        out: list[str] = []
        for item in value:
            if isinstance(item, (list, tuple, dict)):
                raise ValueError("a component must be a scalar (text or number)")
            out.append("" if item is None else str(item))
        if not out:
            raise ValueError("a code-map value needs at least one component")
        return tuple(out)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        text = str(value)
        if _DELIMITERS & set(text):
            # Why: an ER7 string would bypass per-component escaping; insist on a list.
            raise ValueError("write components as a YAML list, e.g. [FAMMED, EXAM1], not ER7 text")
        return (text,)
    raise ValueError("expected a YAML list of components")


def _str_list(value: Any) -> tuple[str, ...]:
    """Match lists accept numbers (Cal.com ids) and compare them as text."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        value = [value]
    return tuple(str(v) for v in value)


def _str_keys(value: Any) -> Any:
    """YAML reads `4211:` as an int key; code maps are looked up by text."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    return value


Components = Annotated[tuple[str, ...], BeforeValidator(_components)]
StrList = Annotated[tuple[str, ...], BeforeValidator(_str_list)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


M = TypeVar("M", bound=BaseModel)


class Destination(_Model):
    """One EHR interface: where and how messages are delivered."""

    name: str = Field(min_length=1)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    connection: ConnectionSettings = Field(default_factory=ConnectionSettings)
    ack: AckPolicy = Field(default_factory=AckPolicy)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    charset: str = Field("UTF-8", description='wire encoding, e.g. "UTF-8", "ASCII", "ISO-8859-1"')
    lane_key: Literal["appointment", "patient", "destination"] = Field(
        "appointment", description="ordering unit: one lane per appointment, per patient, or one"
    )

    @field_validator("charset")
    @classmethod
    def _known_charset(cls, value: str) -> str:
        return check_wire_charset(value)

    @property
    def codec(self) -> str:
        return codec_name(self.charset)


class Match(_Model):
    """Which events a channel takes. Every listed rule must match; an empty rule matches all."""

    locations: StrList = Field(
        (),
        description="location keys: kind (in_person, telehealth, phone, other) "
        "or the Cal.com location value",
    )
    specialties: StrList = Field((), description="specialty names from maps.event_types/maps.teams")
    event_types: StrList = Field((), description="Cal.com event type ids or slugs")
    teams: StrList = Field((), description="Cal.com team ids or names")
    organizers: StrList = Field((), description="Cal.com user ids, usernames or emails")


class Filters(_Model):
    pending: Literal["tentative", "wait"] = Field(
        "wait",
        description="PENDING bookings: send S12 with SCH-25 Pending, or wait for confirmation",
    )
    no_shows: bool = Field(True, description="send S26 for no-shows")


class Msh(_Model):
    sending_application: str = "CALCOM_HL7"  # MSH-3
    sending_facility: str = ""  # MSH-4
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    processing_id: Literal["P", "T", "D"] = "P"  # MSH-11


class Hl7Options(_Model):
    version: Literal["2.5.1", "2.3"] = "2.5.1"
    template: str | None = Field(
        None, description="template file relative to the channel directory; default per version"
    )
    unencodable: Literal["escape", "transliterate", "dead_letter"] = Field(
        "escape", description="characters the destination charset cannot encode"
    )
    msh: Msh = Field(default_factory=Msh)
    reschedule_as: Literal["S13", "S14", "S15+S12"] = "S13"
    fill_sch2: bool = Field(True, description="repeat the appointment id in SCH-2 (filler id)")
    times_with_offset: bool = Field(
        True, description="append +-ZZZZ to appointment times (MSH-7 always has it)"
    )
    mrn_authority: str = Field("MRN", description="PID-3.4 for the MRN (type MR)")
    patient_id_authority: str = Field(
        "CALHL7", description="PID-3.4 for our stable patient id (type PI)"
    )
    notes: StrList = Field(
        (), description="booking questions copied into NTE segments, by field name"
    )


class Resource(_Model):
    id: Components  # AIG-3
    type: Components = ("",)  # AIG-4


class EventTypeMap(_Model):
    visit_type: Components  # AIS-3 (required) and default SCH-7
    reason: Components | None = None  # SCH-7 when it differs from the visit type
    specialty: str | None = None
    resources: tuple[Resource, ...] = ()  # rooms/equipment -> AIG


class TeamMap(_Model):
    specialty: str | None = None


class PatientFields(_Model):
    """Booking questions (by field name) that fill PID; unset = what normalization found."""

    dob: str | None = None  # PID-7, answer as YYYY-MM-DD
    sex: str | None = None  # PID-8 through sex_codes
    phone: str | None = None  # PID-13


_DEFAULT_SEX_CODES = {"f": "F", "female": "F", "woman": "F", "m": "M", "male": "M", "man": "M",
                      "o": "O", "other": "O", "u": "U", "unknown": "U", "x": "O"}


class Maps(_Model):
    providers: Annotated[dict[str, Components], BeforeValidator(_str_keys)] = Field(
        default_factory=dict,
        description="Cal.com user id/username/email -> XCN (AIP-3, PV1-7, SCH-16)")
    locations: Annotated[dict[str, Components], BeforeValidator(_str_keys)] = Field(
        default_factory=dict, description="location key -> PL (AIL-3, PV1-3)")
    event_types: Annotated[dict[str, EventTypeMap], BeforeValidator(_str_keys)] = Field(
        default_factory=dict, description="event type id or slug -> visit type (AIS-3, SCH-7)")
    teams: Annotated[dict[str, TeamMap], BeforeValidator(_str_keys)] = Field(default_factory=dict)
    patient_fields: PatientFields = Field(default_factory=PatientFields)
    sex_codes: dict[str, str] = Field(default_factory=lambda: dict(_DEFAULT_SEX_CODES))


class Unmapped(_Model):
    provider: Literal["error", "raw"] = "error"
    location: Literal["error", "raw"] = "error"
    event_type: Literal["error", "raw"] = "raw"


class Channel(_Model):
    """Which events go to which destination, and how they are written."""

    name: str = Field(min_length=1)
    destination: str = Field(min_length=1)
    enabled: bool = True
    match: Match = Field(default_factory=Match)
    filters: Filters = Field(default_factory=Filters)
    hl7: Hl7Options = Field(default_factory=Hl7Options)
    maps: Maps = Field(default_factory=Maps)
    unmapped: Unmapped = Field(default_factory=Unmapped)


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


# --- loading -------------------------------------------------------------------------------

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Path_ = tuple[str, ...]


def _line_index(
    node: yaml.Node, path: Path_, out: dict[Path_, int], dups: list[tuple[Path_, int]]
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


def _line_for(lines: Mapping[Path_, int], loc: Path_) -> int | None:
    for n in range(len(loc), 0, -1):  # longest known prefix: pydantic adds type tags to loc
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _interpolate(value: Any, path: Path_, missing: list[tuple[Path_, str]]) -> Any:
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


def _read(
    path: Path, shown: str, problems: list[Problem]
) -> tuple[dict[str, Any] | None, dict[Path_, int]]:
    """Parse one file; record problems; return (data, line index).

    The line index also holds the paths whose env variable was missing, under key ("!",) +
    path, so validation does not report the same value twice."""
    lines: dict[Path_, int] = {}
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
    dups: list[tuple[Path_, int]] = []
    _line_index(node, (), lines, dups)
    for dpath, line in dups:
        problems.append(Problem(shown, ".".join(dpath), line,
                                "duplicate key (YAML would keep only the last)"))
    missing: list[tuple[Path_, str]] = []
    data = _interpolate(data, (), missing)
    for mpath, var in missing:
        lines[("!",) + mpath] = 0
        problems.append(Problem(shown, ".".join(mpath), _line_for(lines, mpath),
                                f"environment variable {var} is not set and has no default"))
    return data, lines


def _validate(model: type[M], data: dict[str, Any], shown: str, lines: Mapping[Path_, int],
              problems: list[Problem]) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            loc = tuple(str(p) for p in err["loc"])
            if ("!",) + loc in lines:
                continue  # already reported: environment variable not set
            problems.append(Problem(shown, ".".join(loc), _line_for(lines, loc), err["msg"]))
        return None


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def load_config(directory: str | os.PathLike[str]) -> Config:
    """Load and check every file; raise ConfigError with all problems found."""
    root = Path(directory)
    problems: list[Problem] = []
    if not root.is_dir():
        raise ConfigError([Problem(str(root), "", None, "not a directory")])
    fingerprint = config_fingerprint(root)

    def shown(p: Path) -> str:
        return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)

    destinations: dict[str, Destination] = {}
    declared: set[str] = set()  # names of destination files, valid or not: no cascading errors
    dest_dir = root / "destinations"
    for path in _files(dest_dir) if dest_dir.is_dir() else []:
        data, lines = _read(path, shown(path), problems)
        if data is None:
            declared.add(path.stem)
            continue
        data.setdefault("name", path.stem)
        declared.add(str(data["name"]))
        dest = _validate(Destination, data, shown(path), lines, problems)
        if dest is None:
            continue
        if dest.name in destinations:
            problems.append(Problem(shown(path), "name", _line_for(lines, ("name",)),
                                    f"destination {dest.name!r} is defined twice"))
        destinations[dest.name] = dest

    channels: list[Channel] = []
    templates: dict[str, SiuTemplate] = {}
    files: dict[str, Path] = {}
    for path in _files(root):
        data, lines = _read(path, shown(path), problems)
        if data is None:
            continue
        data.setdefault("name", path.stem)
        ch = _validate(Channel, data, shown(path), lines, problems)
        if ch is None:
            continue
        if ch.name in files:
            problems.append(Problem(shown(path), "name", _line_for(lines, ("name",)),
                                    f"channel {ch.name!r} is also defined in "
                                    f"{shown(files[ch.name])}"))
            continue
        if ch.destination not in declared:
            known = ", ".join(sorted(declared)) or "none"
            problems.append(Problem(shown(path), "destination", _line_for(lines, ("destination",)),
                                    f"unknown destination {ch.destination!r} (known: {known})"))
        try:
            if ch.hl7.template:
                templates[ch.name] = SiuTemplate(root / ch.hl7.template)
            else:
                templates[ch.name] = default_template(ch.hl7.version)
        except TemplateError as exc:
            problems.append(Problem(shown(path), "hl7.template",
                                    _line_for(lines, ("hl7", "template")), str(exc)))
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
        fingerprint=fingerprint,
    )
    # A custom template is only proven by rendering: try each channel once on a synthetic
    # booking so a typo fails the load (and `check`), not the first real message.
    from engine.channels.routing import probe_render  # lazy: routing imports this module

    for ch in config.channels:
        error = probe_render(config, ch) if ch.name in config.templates else None
        if error:
            problems.append(Problem(shown(files[ch.name]), "hl7.template", None, error))
    if problems:
        raise ConfigError(problems)
    return config


def config_fingerprint(directory: str | os.PathLike[str]) -> str:
    """Cheap change detector: names, sizes and mtimes of the files `load_config` reads."""
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


def json_schema() -> dict[str, Any]:
    """JSON Schema of the two file kinds, for editors and review."""
    return {
        "channel": Channel.model_json_schema(),
        "destination": Destination.model_json_schema(),
    }
