"""Field extraction: one Cal.com booking payload -> the appointment event it describes.

Pure. Patient (name, DOB, sex, MRN, contact), provider, location, event type, times and zone,
the coded answers that may leave Cal.com, and who made the change. Which event kind it is and
which appointment it belongs to is decided by `precedence`.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from datetime import date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.appointments.model import (
    AppointmentEvent,
    EventKind,
    EventType,
    Location,
    LocationKind,
    Patient,
    Provider,
)
from engine.calcom.models import BookingPayload

MAX_ANSWER_CHARS = 64  # longer answers are free text, not codes
MAX_AGE_YEARS = 130

# Booking-form fields that are not custom answers: they feed patient/location, or are free text.
_SYSTEM_FIELDS = frozenset(
    {"name", "email", "attendeePhoneNumber", "location", "title", "notes", "guests",
     "rescheduleReason"}
)
# Custom question names that announce free text; matched case-insensitively as substrings.
_FREE_TEXT_HINTS = (
    "note", "reason", "description", "comment", "symptom", "message", "complaint", "history"
)
_DOB_KEYS = ("dateofbirth", "dob", "birthdate", "date_of_birth")
_SEX_KEYS = ("sex", "gender", "sexatbirth", "administrativesex")
_MRN_KEYS = ("mrn", "medicalrecordnumber")
_PATIENT_TYPE_KEYS = ("patienttype",)
_PHONE_RE = re.compile(r"^\+?[0-9][0-9 ().-]{5,}$")


def snapshot(
    p: BookingPayload,
    trigger: str,
    status: str,
    occurred_at: datetime,
    source: str,
    today: date,
    notes: list[str],
) -> AppointmentEvent:
    """Everything the payload says, as an event; the caller sets kind, id and previous_*."""
    answers = _form_values(p)
    attendee = p.attendees[0] if p.attendees else None
    timezone = _timezone(p, notes)
    patient, kept = _patient(p, answers, today, notes)
    members = p.team.members if p.team else []
    team_emails = {fold_email(m.get("email")) for m in members if isinstance(m, dict)}
    cancellation_reason = None
    by = None
    if status == "CANCELLED":
        cancellation_reason, by = p.cancellationReason, p.cancelledBy
    elif status == "REJECTED":
        cancellation_reason, by = p.rejectionReason, p.organizer.email
    elif p.rescheduleUid:
        by = p.rescheduledBy
    return AppointmentEvent(
        kind=EventKind.NEW,
        appointment_id=p.uid,
        booking_uid=p.uid,
        trigger=trigger,
        status=status,
        start=p.startTime,
        end=p.endTime,
        timezone=timezone,
        patient=patient,
        provider=Provider(
            calcom_user_id=p.organizer.id,
            name=p.organizer.name or "",
            email=p.organizer.email,
            username=p.organizer.username,
            timezone=p.organizer.timeZone,
        ),
        location=_location(p, answers.get("location")),
        event_type=EventType(
            id=p.eventTypeId,
            slug=p.type,
            title=p.eventTitle,
            length_minutes=p.length or int((p.endTime - p.startTime).total_seconds() // 60),
        ),
        ical_uid=p.iCalUID,
        booking_id=p.bookingId,
        team_id=p.team.id if p.team else None,
        team_name=p.team.name if p.team else None,
        cancellation_reason=cancellation_reason or None,
        actor=_actor(by, p.organizer.email, team_emails, attendee.email if attendee else None),
        occurred_at=occurred_at,
        source=source,
        answers=_coded_answers(answers, kept, notes),
    )


def _form_values(p: BookingPayload) -> dict[str, Any]:
    """Field name -> answered value; custom answers (userFieldsResponses) win over responses."""
    merged = {**p.responses, **p.userFieldsResponses}
    return {k: r.value for k, r in merged.items() if r.value is not None}


def _pick(answers: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, Any] | None:
    for name, value in answers.items():
        if name.lower() in keys:
            return name, value
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    return None


def _patient(
    p: BookingPayload, answers: Mapping[str, Any], today: date, notes: list[str]
) -> tuple[Patient, dict[str, str]]:
    """The patient, and the normalised coded answers (name -> text) it was built from."""
    attendee = p.attendees[0] if p.attendees else None
    first = last = ""
    name = answers.get("name")
    if isinstance(name, dict):
        first = _text(name.get("firstName")) or ""
        last = _text(name.get("lastName")) or ""
    if not (first or last) and attendee:
        first, last = (attendee.firstName or "").strip(), (attendee.lastName or "").strip()
    full = (
        ((attendee.name or "").strip() if attendee else "")
        or _text(name)
        or " ".join(x for x in (first, last) if x)
    )
    if not (first or last) and full:
        parts = full.rsplit(None, 1)
        # No separator (e.g. a CJK name): the whole name is the family name, which HL7 requires.
        first, last = (parts[0], parts[1]) if len(parts) == 2 else ("", full)
        notes.append("patient name split from the full name")

    kept: dict[str, str] = {}
    dob: date | None = None
    if (hit := _pick(answers, _DOB_KEYS)) is not None:
        key, raw = hit
        dob, problem = parse_dob(raw if isinstance(raw, str) else "", today)
        if dob is not None:
            kept[key] = dob.isoformat()
        else:
            notes.append(f"{key} dropped: {problem}")
    sex = mrn = patient_type = None
    if (hit := _pick(answers, _SEX_KEYS)) is not None:
        sex = _text(hit[1][0] if isinstance(hit[1], list) and hit[1] else hit[1])
    if (hit := _pick(answers, _MRN_KEYS)) is not None:
        mrn = _text(hit[1])
    if (hit := _pick(answers, _PATIENT_TYPE_KEYS)) is not None:
        patient_type = (_text(hit[1]) or "").lower() or None
    for value, label in ((sex, "sex"), (mrn, "mrn")):
        if value is not None and len(value) > MAX_ANSWER_CHARS:
            notes.append(f"{label} dropped: longer than {MAX_ANSWER_CHARS} characters")
    sex = sex if sex and len(sex) <= MAX_ANSWER_CHARS else None
    mrn = mrn if mrn and len(mrn) <= MAX_ANSWER_CHARS else None

    return Patient(
        first_name=first,
        last_name=last,
        full_name=full,
        email=_text(answers.get("email")) or (attendee.email if attendee else None),
        phone=(_text(answers.get("attendeePhoneNumber"))
               or (attendee.phoneNumber if attendee else None)),
        dob=dob,
        sex=sex,
        mrn=mrn,
        patient_type=patient_type,
        timezone=attendee.timeZone if attendee else None,
        locale=attendee.language.locale if attendee and attendee.language else None,
    ), kept


def _coded_answers(
    answers: Mapping[str, Any], kept: dict[str, str], notes: list[str]
) -> dict[str, str]:
    """Short coded answers only: scheduling data may leave Cal.com, clinical free text may not."""
    out: dict[str, str] = {}
    for name, value in answers.items():
        lowered = name.lower()
        if name in _SYSTEM_FIELDS or lowered in _DOB_KEYS:
            continue  # patient/location fields, or the DOB (kept normalised below)
        if any(hint in lowered for hint in _FREE_TEXT_HINTS):
            continue  # free text by name: dropped silently, by design
        if isinstance(value, bool):
            text: str | None = "true" if value else "false"
        elif isinstance(value, int | float):
            text = str(value)
        elif isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
            text = ", ".join(str(v).strip() for v in value) or None
        else:
            text = _text(value)
            if text is None and value not in ("", None):
                notes.append(f"answer {name} dropped: not a simple value")
        if text is None:
            continue
        if len(text) > MAX_ANSWER_CHARS:
            notes.append(f"answer {name} dropped: free text")
            continue
        out[name] = text
    out.update(kept)
    return out


_MONTHS = {
    **{m.lower(): i for i, m in enumerate(calendar.month_name) if m},
    **{m.lower(): i for i, m in enumerate(calendar.month_abbr) if m},
    "sept": 9,
}
_NUMERIC_DOB = re.compile(r"^(\d{4})([-/.]?)(\d{1,2})\2(\d{1,2})$")
_DAY_MONTH_YEAR = re.compile(r"^(\d{1,2})\s+([A-Za-z]+)\.?,?\s+(\d{4})$")
_MONTH_DAY_YEAR = re.compile(r"^([A-Za-z]+)\.?\s+(\d{1,2}),?\s+(\d{4})$")


def parse_dob(text: str, today: date) -> tuple[date | None, str | None]:
    """A date of birth typed as free text: (date, None) or (None, why it was dropped).

    Accepted: 1984-07-12, 1984/07/12, 1984.07.12, 19840712, 12 July 1984, July 12, 1984
    (month names in English). Day/month order in 12/07/1984 is ambiguous: refused.
    """
    value = text.strip()
    parts: tuple[int, int, int] | None = None
    if (m := _NUMERIC_DOB.match(value)) and (m.group(2) or len(value) == 8):
        parts = (int(m.group(1)), int(m.group(3)), int(m.group(4)))
    elif (m := _DAY_MONTH_YEAR.match(value)) and m.group(2).lower() in _MONTHS:
        parts = (int(m.group(3)), _MONTHS[m.group(2).lower()], int(m.group(1)))
    elif (m := _MONTH_DAY_YEAR.match(value)) and m.group(1).lower() in _MONTHS:
        parts = (int(m.group(3)), _MONTHS[m.group(1).lower()], int(m.group(2)))
    if parts is None:
        return None, "not a recognised date"
    try:
        dob = date(*parts)
    except ValueError:
        return None, "not a valid date"
    if dob > today:
        return None, "in the future"
    if today.year - dob.year > MAX_AGE_YEARS:
        return None, f"more than {MAX_AGE_YEARS} years ago"
    return dob, None


@lru_cache(maxsize=256)
def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # "America" is a directory, etc.
        return False
    return True


def _timezone(p: BookingPayload, notes: list[str]) -> str:
    """The clinic's zone is the organizer's; the patient's is only a fallback."""
    candidates = [p.organizer.timeZone] + [a.timeZone for a in p.attendees[:1]]
    for i, name in enumerate(candidates):
        if name and _known_zone(name):
            if i:
                notes.append("organizer.timeZone missing or unknown: attendee zone used")
            return name
    notes.append("no usable time zone: UTC assumed")
    return "UTC"


def _location(p: BookingPayload, answered: Any) -> Location:
    raw = (p.location or "").strip()
    video = p.metadata.get("videoCallUrl")
    url = (video if isinstance(video, str) and video
           else (p.videoCallData.url if p.videoCallData else None))
    if raw.lower().startswith(("http://", "https://")):
        return Location(LocationKind.TELEHEALTH, raw, url=raw)
    if raw.startswith("integrations:"):
        return Location(LocationKind.TELEHEALTH, raw, url=url)
    if _PHONE_RE.match(raw):
        return Location(LocationKind.PHONE, raw)
    if raw:
        return Location(LocationKind.IN_PERSON, raw, address=raw)
    # No location string: fall back to the booker's location choice.
    choice = answered.get("value") if isinstance(answered, dict) else None
    if choice in ("inPerson", "attendeeInPerson"):
        return Location(LocationKind.IN_PERSON, choice)
    if choice in ("phone", "userPhone"):
        return Location(LocationKind.PHONE, choice)
    if isinstance(choice, str) and choice.startswith("integrations:"):
        return Location(LocationKind.TELEHEALTH, choice, url=url)
    return Location(LocationKind.OTHER, raw)


def fold_email(email: Any) -> str:
    return email.strip().casefold() if isinstance(email, str) else ""


def _actor(by: str | None, organizer: str | None, team: set[str], attendee: str | None) -> str:
    """Who made the change, from an email we compare and then forget."""
    who = fold_email(by)
    if not who:
        return "attendee"
    if who == fold_email(organizer) or who in team:
        return "organizer"
    if who == fold_email(attendee):
        return "attendee"
    return "api"
