"""SIU field values: an appointment event plus what a channel's maps give it -> template variables.

Pure. Routing decides where an event goes and looks it up in the channel's maps (provider,
location, visit type); this module decides what each field of the SIU says: status, reason,
times in the clinic zone, patient ids, DOB, sex, phone parts, notes, MSH. It reads the channel's
HL7 settings and patient-field maps through the small protocols below, so it needs nothing from
`engine.channels`.

The variables are listed in hl7_templates/README.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.appointments.model import AppointmentEvent
from engine.hl7.escape import MSH18_NAMES
from engine.hl7.render import components, format_ts, patient_identifier, valid_dob
from engine.texts import quoted


class MappingError(Exception):
    """A code-map key the channel does not know; the message names the key, not the patient."""


class MshSettings(Protocol):
    @property
    def sending_application(self) -> str: ...
    @property
    def sending_facility(self) -> str: ...
    @property
    def receiving_application(self) -> str: ...
    @property
    def receiving_facility(self) -> str: ...
    @property
    def processing_id(self) -> str: ...


class SiuSettings(Protocol):
    """The channel's `hl7:` options this module reads."""

    @property
    def msh(self) -> MshSettings: ...
    @property
    def fill_sch2(self) -> bool: ...
    @property
    def times_with_offset(self) -> bool: ...
    @property
    def mrn_authority(self) -> str: ...
    @property
    def patient_id_authority(self) -> str: ...
    @property
    def notes(self) -> tuple[str, ...]: ...


class PatientFieldNames(Protocol):
    """Booking questions (by field name) that fill PID; None = what normalization found."""

    @property
    def dob(self) -> str | None: ...
    @property
    def sex(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...


class PatientMaps(Protocol):
    """The channel's maps that shape PID."""

    @property
    def patient_fields(self) -> PatientFieldNames: ...
    @property
    def sex_codes(self) -> Mapping[str, str]: ...


class ResourceCodes(Protocol):
    @property
    def id(self) -> tuple[str, ...]: ...  # AIG-3
    @property
    def type(self) -> tuple[str, ...]: ...  # AIG-4


@dataclass(frozen=True, slots=True)
class MappedCodes:
    """What the channel's code maps give one event (or its raw values where unmapped)."""

    provider: tuple[str, ...]  # XCN: AIP-3, PV1-7, SCH-16
    location: tuple[str, ...]  # PL: AIL-3, PV1-3
    visit_type: tuple[str, ...]  # AIS-3
    visit_reason: tuple[str, ...]  # SCH-7
    resources: Sequence[ResourceCodes] = ()  # AIG


_REASON_TEXT = {
    "S12": "Booked online via Cal.com",
    "S13": "Rescheduled via Cal.com",
    "S14": "Booking details changed via Cal.com",
    "S15": "Cancelled via Cal.com",
    "S26": "Attendee marked as no-show",
}
_NORMAL = ("Normal", "Routine schedule request type", "HL70277")
_TENTATIVE = ("Tentative", "Tentative schedule request type", "HL70277")
_ACTION = {"S12": "A", "S13": "U", "S14": "U", "S15": "", "S26": ""}


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)  # ZoneInfo caches instances: cheap after the first call
    except (ZoneInfoNotFoundError, ValueError):
        raise MappingError(f"unknown clinic time zone {quoted(name)!r}") from None


def _answer_date(text: str | None) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        return None


_NOT_DIGIT = re.compile(r"\D")


def phone_parts(phone: str | None) -> dict[str, str]:
    """XTN-5/6/7 (country, area, local): the form both v2.3 and v2.5.1 read the same way.

    NANP numbers (+1 and 10 digits) are split; others keep all digits in the local number.
    """
    if not phone:
        return {"phone_country": "", "phone_area": "", "phone_local": ""}
    digits = _NOT_DIGIT.sub("", phone)
    if len(digits) == 11 and digits[0] == "1" and phone.lstrip().startswith("+"):
        return {"phone_country": "1", "phone_area": digits[1:4], "phone_local": digits[4:]}
    if len(digits) == 10 and not phone.lstrip().startswith("+"):
        return {"phone_country": "", "phone_area": digits[:3], "phone_local": digits[3:]}
    return {"phone_country": "", "phone_area": "", "phone_local": digits}


def siu_context(
    event: AppointmentEvent,
    settings: SiuSettings,
    maps: PatientMaps,
    codes: MappedCodes,
    *,
    codec: str,
    trigger: str,
    placer_id: str,
    control_id: str,
    now: datetime,
    old_times: bool = False,
) -> dict[str, Any]:
    """Template variables for one SIU. `codec` is the destination's wire codec (MSH-18);
    `old_times` puts the booking's previous times in (the S15 of a split reschedule)."""
    h = settings
    zone = _zone(event.timezone)
    start, end = event.start, event.end
    if old_times and event.previous_start is not None and event.previous_end is not None:
        start, end = event.previous_start, event.previous_end
    pending = event.status.upper() == "PENDING"
    if trigger == "S15":
        status = "Cancelled"
    elif trigger == "S26":
        status = "Noshow"
    else:
        status = "Pending" if pending else "Booked"
    if trigger == "S15" and old_times:
        reason_text = "Moved to a new booking via Cal.com"
    elif trigger == "S15" and event.cancellation_reason:
        reason_text = "Cancelled: " + event.cancellation_reason
    else:
        reason_text = _REASON_TEXT[trigger]

    patient = event.patient
    pf = maps.patient_fields
    answers = event.answers
    dob = valid_dob(_answer_date(answers.get(pf.dob)) if pf.dob else patient.dob)
    sex_raw = answers.get(pf.sex) if pf.sex else patient.sex
    sex = maps.sex_codes.get(sex_raw.strip().lower(), "U") if sex_raw else ""
    ids: list[tuple[str, str, str]] = []
    if patient.mrn:
        ids.append((patient.mrn, h.mrn_authority, "MR"))
    ids.append((patient_identifier(patient), h.patient_id_authority, "PI"))

    with_offset = h.times_with_offset
    return {
        "sending_application": h.msh.sending_application,
        "sending_facility": h.msh.sending_facility,
        "receiving_application": h.msh.receiving_application,
        "receiving_facility": h.msh.receiving_facility,
        "message_time": format_ts(now, zone, True),
        "trigger": trigger,
        "control_id": control_id,
        "processing_id": h.msh.processing_id,
        "charset": MSH18_NAMES.get(codec, ""),
        "placer_id": placer_id,
        "filler_id": placer_id if h.fill_sch2 else None,
        "event_reason": (event.trigger, reason_text, "L"),
        "visit_reason": components(codes.visit_reason),
        "visit_type": components(codes.visit_type),
        "request_type": components(_TENTATIVE if pending else _NORMAL),
        "duration": int((end - start).total_seconds() // 60),
        "start": format_ts(start, zone, with_offset),
        "end": format_ts(end, zone, with_offset),
        "provider": components(codes.provider),
        "status": status,
        "action": _ACTION[trigger],
        "notes": [answers[n] for n in h.notes if answers.get(n)],
        "patient_ids": ids,
        "last_name": patient.last_name or (patient.full_name if not patient.first_name else ""),
        "first_name": patient.first_name,
        "dob": f"{dob.year:04d}{dob.month:02d}{dob.day:02d}" if dob else "",
        "sex": sex,
        **phone_parts((answers.get(pf.phone) if pf.phone else None) or patient.phone),
        "email": patient.email or "",
        "patient_class": "O",
        "location": components(codes.location),
        "resources": [{"id": components(r.id), "type": components(r.type)}
                      for r in codes.resources],
    }
