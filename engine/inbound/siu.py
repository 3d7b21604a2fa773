"""Reading an inbound SIU: just what the listener checks and the worker needs (pure, no I/O).

Split on the delimiters MSH declares, no full tree: this runs once per frame on the listener's
hot path. Errors are `SiuError(code, location, text)`: the ACK's ERR-3 code (HL7 table 0357),
ERR-2 location and a PHI-free text (field names and codes, never values from the message,
except the configuration keys an analyst needs: sender, message type, provider id).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo


class SiuError(Exception):
    def __init__(
        self, ack: str, code: str, text: str, location: tuple[str | int, ...] = ()
    ) -> None:
        super().__init__(text)
        self.ack = ack  # AE or AR
        self.code = code
        self.text = text
        self.location = location


@dataclass(frozen=True, slots=True)
class Delims:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


@dataclass(frozen=True, slots=True)
class MshInfo:
    delims: Delims
    application: str  # MSH-3.1
    facility: str  # MSH-4.1
    message_type: str  # MSH-9.1
    trigger: str  # MSH-9.2
    control_id: str  # MSH-10
    version: str
    fields: tuple[str, ...] = ()  # raw MSH fields, fields[i] = MSH-(i+1) (fields[1] = MSH-2)
    processing_id: str = ""  # MSH-11.1: P, T or D
    charset: str = ""  # MSH-18 (first repetition): the message's character set, "" = not said


@dataclass(frozen=True, slots=True)
class SiuContent:
    """What the worker needs to block, move or free the time."""

    appointment_id: str  # SCH-2.1, else SCH-1.1 (the EHR's appointment identity)
    provider_id: str | None  # AIP-3.1, else SCH-16.1
    location_code: str | None  # AIL-3.1
    start: datetime | None  # UTC
    end: datetime | None  # UTC
    duration_minutes: int | None


def _delims(msh: str) -> Delims:
    if len(msh) < 8 or not msh.startswith("MSH"):
        raise SiuError("AE", "100", "message does not start with an MSH segment", ("MSH",))
    fs = msh[3]
    if fs.isalnum() or fs in "\r\n \t":
        raise SiuError("AE", "102", "MSH-1 field separator is not usable", ("MSH", 1, 1))
    enc = msh[4:].split(fs, 1)[0]
    # four, or five from v2.7 on (the fifth is the truncation character, `#`)
    if len(enc) not in (4, 5):
        raise SiuError("AE", "102", "MSH-2 must declare four encoding characters (five from "
                                    "v2.7: ^~\\&#)", ("MSH", 1, 2))
    chars = [fs, *enc]
    if len(set(chars)) != len(chars) or any(c.isalnum() or c in "\r\n \t" for c in chars):
        raise SiuError("AE", "102", "MSH-2 encoding characters are not distinct separators",
                       ("MSH", 1, 2))
    return Delims(fs, enc[0], enc[1], enc[2], enc[3])


def segments(text: str) -> list[str]:
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in text.split("\r") if s.strip()]


def _f(fields: list[str], i: int) -> str:
    return fields[i] if i < len(fields) else ""


def _c(value: str, d: Delims, i: int = 0) -> str:
    first = value.split(d.repetition, 1)[0]
    parts = first.split(d.component)
    return parts[i].split(d.subcomponent, 1)[0].strip() if i < len(parts) else ""


def read_msh(text: str) -> tuple[MshInfo, list[str]]:
    """The MSH facts and the segments; raises SiuError for anything unusable."""
    segs = segments(text.strip("\x0b\x1c\x00 \t\r\n"))
    if not segs:
        raise SiuError("AE", "100", "empty message", ())
    msh = segs[0]
    d = _delims(msh)
    f = msh.split(d.field)  # f[i] = MSH-(i+1), f[1] = MSH-2
    mtype = _f(f, 8)
    info = MshInfo(
        delims=d,
        application=_c(_f(f, 2), d),
        facility=_c(_f(f, 3), d),
        message_type=_c(mtype, d, 0),
        trigger=_c(mtype, d, 1),
        control_id=_f(f, 9).strip(),
        version=_c(_f(f, 11), d),
        fields=tuple(f),
        processing_id=_c(_f(f, 10), d),
        charset=_f(f, 17).split(d.repetition, 1)[0].strip(),
    )
    return info, segs


def _fields(segs: list[str], tag: str, d: Delims) -> list[str] | None:
    for s in segs:
        if s[:3] == tag and s[3:4] in (d.field, ""):
            return s.split(d.field)
    return None


def parse_hl7_time(value: str, zone: ZoneInfo) -> datetime:
    """HL7 DTM/TS `YYYYMMDD[HHMM[SS[.S+]]][+/-ZZZZ]` -> aware UTC datetime."""
    v = value.strip()
    if len(v) == 19 and v[14] in "+-" and v[:14].isdigit() and v[15:].isdigit():
        # the common full form, e.g. 20250321140000-0500
        minutes = int(v[15:17]) * 60 + int(v[17:19])
        shift = timedelta(minutes=minutes if v[14] == "+" else -minutes)
        naive = datetime(int(v[0:4]), int(v[4:6]), int(v[6:8]), int(v[8:10]), int(v[10:12]),
                         int(v[12:14]))
        return (naive - shift).replace(tzinfo=UTC)
    offset: timedelta | None = None
    for sign in ("+", "-"):
        pos = v.find(sign, 8)
        if pos > 0:
            tz = v[pos + 1:]
            if len(tz) != 4 or not tz.isdigit():
                raise ValueError("bad zone offset")
            minutes = int(tz[:2]) * 60 + int(tz[2:])
            offset = timedelta(minutes=minutes if sign == "+" else -minutes)
            v = v[:pos]
            break
    v = v.split(".", 1)[0]
    if not v.isdigit() or len(v) not in (8, 10, 12, 14):
        raise ValueError("bad timestamp")
    v = v.ljust(14, "0")
    naive = datetime(int(v[0:4]), int(v[4:6]), int(v[6:8]), int(v[8:10]), int(v[10:12]),
                     int(v[12:14]))
    if offset is not None:
        return (naive - offset).replace(tzinfo=UTC)
    return naive.replace(tzinfo=zone).astimezone(UTC)


def _minutes(amount: str, units: str) -> int | None:
    try:
        n = float(amount)
    except ValueError:
        return None
    u = units.lower()
    if u in ("", "min", "m", "minutes"):
        return int(n)
    if u in ("s", "sec", "seconds"):
        return int(n // 60)
    if u in ("h", "hr", "hours"):
        return int(n * 60)
    return None


def read_content(segs: list[str], msh: MshInfo, zone: ZoneInfo, *, need_time: bool) -> SiuContent:
    d = msh.delims
    sch = _fields(segs, "SCH", d)
    if sch is None:
        raise SiuError("AE", "100", "SCH segment missing", ("SCH",))
    appt = _c(_f(sch, 2), d) or _c(_f(sch, 1), d)
    if not appt:
        raise SiuError("AE", "101", "SCH-1/SCH-2 appointment id missing", ("SCH", 1, 2))
    if len(appt) > 100:
        raise SiuError(
            "AE", "102", "SCH-2 appointment id longer than 100 characters", ("SCH", 1, 2)
        )
    aip = _fields(segs, "AIP", d)
    provider = (_c(_f(aip, 3), d) if aip else "") or _c(_f(sch, 16), d) or None
    ail = _fields(segs, "AIL", d)
    location = (_c(_f(ail, 3), d) if ail else "") or None
    ais = _fields(segs, "AIS", d)
    tq1 = _fields(segs, "TQ1", d)

    def when(raw: str, loc: tuple[str | int, ...]) -> datetime | None:
        if not raw:
            return None
        try:
            return parse_hl7_time(raw, zone)
        except ValueError:
            raise SiuError("AE", "102", f"{loc[0]}-{loc[2]} is not an HL7 timestamp", loc) from None

    timing = _f(sch, 11).split(d.repetition, 1)[0].split(d.component)
    start = (when(_c(_f(tq1, 7), d), ("TQ1", 1, 7)) if tq1 else None) \
        or when(_f(timing, 3).split(d.subcomponent)[0].strip(), ("SCH", 1, 11)) \
        or (when(_c(_f(ais, 4), d), ("AIS", 1, 4)) if ais else None) \
        or (when(_c(_f(aip, 6), d), ("AIP", 1, 6)) if aip else None)
    end = (when(_c(_f(tq1, 8), d), ("TQ1", 1, 8)) if tq1 else None) \
        or when(_f(timing, 4).split(d.subcomponent)[0].strip(), ("SCH", 1, 11))
    duration = _minutes(_f(sch, 9).strip(), _c(_f(sch, 10), d)) if _f(sch, 9).strip() else None
    if duration is None and ais and _f(ais, 7).strip():
        duration = _minutes(_f(ais, 7).strip(), _c(_f(ais, 8), d))
    if end is None and start is not None and duration:
        end = start + timedelta(minutes=duration)
    if duration is None and start is not None and end is not None:
        duration = int((end - start).total_seconds() // 60)
    if need_time:
        if start is None:
            raise SiuError("AE", "101", "appointment start missing (TQ1-7, SCH-11.4, AIS-4)",
                           ("SCH", 1, 11))
        if end is None or end <= start:
            raise SiuError("AE", "101", "appointment end or duration missing or not after start",
                           ("SCH", 1, 11))
    return SiuContent(appt, provider, location, start, end, duration)
