"""Jinja2 SIU templates with automatic HL7 escaping, and the small formatting helpers.

A template is one ER7 segment per line, readable next to a real message:
    SCH|{{ placer_id }}^CALCOM|...
Every `{{ ... }}` goes through `hl7_value` (Jinja's finalize hook), so whatever a template
author writes, an inserted value is HL7-escaped: it cannot add `|`, `^`, `~`, `\\`, `&`, CR or
LF. A list or tuple (a code-map value) is written as components, each escaped on its own and
joined with `^`. Only the template's literal text carries delimiters.

Rendering joins template lines with CR only, drops blank lines and trailing empty fields.
Templates are compiled once (`SiuTemplate`); rendering is one Jinja call plus a split/join.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import date, datetime, timedelta, tzinfo
from functools import cache, lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Protocol

import jinja2

from engine.hl7.escape import escape

# The shipped templates are package data: hl7_templates/ of the repository, installed as
# engine.hl7_templates. A channel that wants its own names a file with `hl7.template`.
SHIPPED_TEMPLATES = "engine.hl7_templates"
DEFAULT_TEMPLATES: dict[str, str] = {"2.5.1": "siu_v251.hl7.j2", "2.3": "siu_v23.hl7.j2"}


def shipped_templates() -> Traversable:
    """The folder of the shipped templates, wherever the package is installed."""
    return resources.files(SHIPPED_TEMPLATES)


class Escaped(str):
    """Text this module already escaped (code-map components) or made delimiter-free (times).
    Only `components()` and `format_ts()` make one, so a template cannot smuggle raw
    delimiters through it; finalize passes it as is."""

    __slots__ = ()


@lru_cache(maxsize=4096)
def components(value: tuple[str, ...]) -> Escaped:
    """A code-map value as ER7: each component escaped on its own, joined with `^`.

    Cached: code-map tuples come from the (immutable) channel config and repeat on every
    message, so escaping them once is most of the saving that makes 10k renders/s.
    """
    return Escaped("^".join([escape(c) for c in value]))


def hl7_value(value: Any) -> str:
    """Finalize hook: the only way a value reaches the message."""
    kind = type(value)
    if kind is Escaped:
        return value
    if kind is str:
        return escape(value)
    if value is None:
        return ""
    if kind is tuple or kind is list:
        return "^".join(["" if c is None else escape(str(c)) for c in value])
    return escape(str(value))


class TemplateError(Exception):
    """A template that does not compile or render; the message names the template and line."""


def _environment(loader: jinja2.BaseLoader) -> jinja2.Environment:
    return jinja2.Environment(
        loader=loader,
        finalize=hl7_value,
        autoescape=False,  # HL7 escaping is done by finalize, for every expression
        # No trim_blocks: a block tag ending a segment line must not eat its newline. Lines
        # holding only {% ... %} render blank, and render() drops blank lines.
        undefined=jinja2.StrictUndefined,  # a typo in a template fails, never renders ""
        keep_trailing_newline=False,
    )


class SiuTemplate:
    """One compiled template. Thread-safe and reusable; build once per channel config."""

    __slots__ = ("name", "_template", "_render_func")

    def __init__(self, path: Path, loader: jinja2.BaseLoader | None = None) -> None:
        """Compile the template file `path`; with `loader`, `path.name` is read through it
        and `path` only names the template in errors."""
        self.name = str(path)
        try:
            env = _environment(loader or jinja2.FileSystemLoader(str(path.parent)))
            self._template = env.get_template(path.name)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{path}:{exc.lineno}: {exc.message}") from None
        except (OSError, jinja2.TemplateNotFound) as exc:
            raise TemplateError(f"{path}: cannot read template ({type(exc).__name__})") from None
        self._render_func = self._template.root_render_func

    def render(self, context: dict[str, Any]) -> str:
        """ER7 text: segments joined by CR, ending with CR."""
        try:
            # root_render_func on a shared context skips the copy Template.render makes.
            text = "".join(self._render_func(self._template.new_context(context, shared=True)))
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"{self.name}: {exc.message}") from None
        return "\r".join([line.rstrip("|") for line in text.split("\n") if line.strip()]) + "\r"


@cache
def default_template(version: str) -> SiuTemplate:
    """The shipped template for an HL7 version, compiled once per process."""
    folder = shipped_templates()
    # read through importlib.resources: works from a wheel, a zip or a checkout alike
    loader = jinja2.FunctionLoader(lambda name: folder.joinpath(name).read_text(encoding="utf-8"))
    return SiuTemplate(Path(SHIPPED_TEMPLATES, DEFAULT_TEMPLATES[version]), loader)


def format_ts(value: datetime, zone: tzinfo, with_offset: bool = True) -> str:
    """HL7 DTM in the clinic zone: `YYYYMMDDHHMMSS-0500`, or without the offset.

    Digits and a sign only, so it is returned as `Escaped` (nothing to escape)."""
    t = value.astimezone(zone)
    # %-formatting, not f-string specs or strftime with %z: it runs 3x per message, and it is
    # the fastest of the three.
    if not with_offset:
        return Escaped("%04d%02d%02d%02d%02d%02d" % (  # noqa: UP031 - speed, see above
            t.year, t.month, t.day, t.hour, t.minute, t.second))
    # astimezone() always returns an aware time; the fallback only satisfies the type
    minutes = int((t.utcoffset() or timedelta(0)).total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return Escaped("%04d%02d%02d%02d%02d%02d%s%02d%02d" % (  # noqa: UP031 - speed, see above
        t.year, t.month, t.day, t.hour, t.minute, t.second, sign, minutes // 60, minutes % 60))


class _PatientLike(Protocol):
    @property
    def email(self) -> str | None: ...
    @property
    def dob(self) -> date | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def full_name(self) -> str: ...


def valid_dob(dob: date | None, today: date | None = None) -> date | None:
    """A plausible date of birth, else None (typos like 0984-07-12 must not reach the EHR)."""
    if dob is None or dob < _EARLIEST_DOB:
        return None
    if dob < _SURELY_PAST:  # skip date.today() for nearly everyone
        return dob
    return dob if dob <= (today or date.today()) else None


_EARLIEST_DOB = date(1890, 1, 1)
_SURELY_PAST = date(2020, 1, 1)


def patient_identifier(patient: _PatientLike) -> str:
    """Our stable patient id for PID-3 (type PI): a short hash, no PHI readable in it.

    Derived from the normalized email and the DOB when valid, so the same person booking
    again gets the same id. Without an email, the phone digits and name stand in.
    """
    dob = valid_dob(patient.dob)
    if patient.email:
        key = patient.email.strip().lower()
    else:
        digits = "".join(c for c in (patient.phone or "") if c.isdigit())
        key = "phone:" + digits + "|" + " ".join(patient.full_name.lower().split())
    key += "|" + (dob.isoformat() if dob else "")
    return _hashed_id(key)


@lru_cache(maxsize=1024)
def _hashed_id(key: str) -> str:
    # Cached: one event fans out to several channels with the same patient.
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "P" + base64.b32encode(digest[:10]).decode("ascii")  # 16 base32 chars: 80 bits
