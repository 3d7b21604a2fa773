"""The pure core: one stored Cal.com webhook body -> one appointment event (or a reason not to).

`normalize` does no I/O. The caller passes `lookup(key)`, which returns the state of the
appointment a booking uid (or an iCalUID, see `uid_links`) belongs to, and upserts the returned
state and links after the event is committed. Deliveries arrive in any order and at most once,
so every decision is made from what we hold, by precedence per booking uid, never by arrival.

Decisions (see also tests/test_normalize.py, which pins each one):
- Appointment id = uid of the first booking of the chain. A reschedule is followed through
  `rescheduleUid`; if that uid is unknown, the iCalUID (stable across reschedules) is tried.
- A reschedule whose original we never saw becomes a NEW appointment whose id is the
  `rescheduleUid` (the chain's first uid, and the local part of its iCalUID), so a late copy of
  the original, or a later reconciliation of it, lands on the same appointment. It is sent as
  `new` because the EHR never received the original from us.
- A new booking that continues an appointment we hold as cancelled (host "request reschedule":
  CANCELLED first, then the patient picks a time) starts a new appointment with its own uid:
  legacy EHRs treat a cancelled placer id as final.
- Two reschedules crossing in flight are ordered by `iCalSequence`: the older one is linked into
  the chain as replaced and is `no_change`.
- A no-show for a booking we do not hold is `quarantined` (not ignored): reconciliation may
  fetch the booking later and an analyst, or the reprocess job, can replay the body then.
- A no-show mark for anyone other than the patient (host, guest) is `ignored` with a reason.
- The actor is derived from the `cancelledBy` / `rescheduledBy` email: the organizer's (or a
  team member's) -> organizer, an attendee's -> attendee, anyone else -> api. Emails are not kept.
- Free-text clinical answers never enter `answers` (notes, reasons, descriptions, and any answer
  longer than `MAX_ANSWER_CHARS`); `cancellation_reason` is kept for cancels and rejections.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from engine.appointments.model import (
    AppointmentEvent,
    EventKind,
    EventType,
    Location,
    LocationKind,
    Patient,
    Provider,
)
from engine.appointments.state import (
    REPLACED,
    STATUS_RANK,
    TERMINAL_STATUSES,
    AppointmentState,
    status_rank,
)
from engine.calcom.check import NO_SHOW_TRIGGER, check_object, parse_body
from engine.calcom.models import BookingPayload, BookingWebhook, NoShowWebhook, error_path

Disposition = Literal["event", "ignored", "quarantined", "no_change"]
Lookup = Callable[[str], AppointmentState | None]

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

_TRIGGER_STATUS = {"BOOKING_CANCELLED": "CANCELLED", "BOOKING_REJECTED": "REJECTED"}
_PHONE_RE = re.compile(r"^\+?[0-9][0-9 ().-]{5,}$")


@dataclass(frozen=True, slots=True)
class Normalization:
    disposition: Disposition
    event: AppointmentEvent | None = None
    state: AppointmentState | None = None  # to upsert; set whenever what we hold changed
    # booking uid / iCalUID -> appointment_id
    uid_links: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # PHI-free; a field path when quarantined
    notes: tuple[str, ...] = ()  # PHI-free audit notes


def normalize(
    body: bytes,
    *,
    source: str,
    received_at: datetime,
    lookup: Lookup,
) -> Normalization:
    obj, verdict = parse_body(body, None)
    if verdict is None:
        verdict = check_object(obj)
    if verdict.disposition == "quarantine":
        return Normalization("quarantined", reason=verdict.reason)
    if verdict.disposition == "ignore":
        return Normalization("ignored", reason=verdict.reason)
    assert verdict.trigger is not None
    if verdict.trigger == NO_SHOW_TRIGGER:
        return _no_show(obj, verdict.trigger, source, received_at, lookup)
    return _booking(obj, verdict.trigger, source, received_at, lookup)


# --- booking triggers ---------------------------------------------------------------------


def _booking(
    obj: Any, trigger: str, source: str, received_at: datetime, lookup: Lookup
) -> Normalization:
    try:
        hook = BookingWebhook.model_validate(obj)
    except ValidationError as exc:
        return Normalization("quarantined", reason=error_path(exc))
    p = hook.payload
    status = _TRIGGER_STATUS.get(trigger) or (p.status or "").upper()
    if not status:
        status = "PENDING" if trigger == "BOOKING_REQUESTED" else "ACCEPTED"
    if status not in STATUS_RANK:
        return Normalization("quarantined", reason="payload.status: unsupported value")
    notes: list[str] = []
    draft = _snapshot(
        p, trigger, status, hook.createdAt or received_at, source, received_at.date(), notes
    )

    held = lookup(p.uid)
    if held is not None:
        return _known_booking(draft, held, p, notes)
    prev: AppointmentState | None = None
    if p.rescheduleUid:
        prev = lookup(p.rescheduleUid)
    if prev is None and p.iCalUID:
        prev = lookup(p.iCalUID)
        if prev is not None:
            notes.append("linked to its appointment by iCalUID")
    if prev is None:
        if p.rescheduleUid:
            notes.append(
                f"reschedule of unseen booking {p.rescheduleUid}: sent as a new appointment"
            )
        return _first_seen(draft, p, notes, chain_from=p.rescheduleUid)
    return _continuation(draft, prev, p, notes)


def _first_seen(
    draft: AppointmentEvent, p: BookingPayload, notes: list[str], *, chain_from: str | None
) -> Normalization:
    """Open an appointment: its id is `chain_from` (an unseen original) or the booking's uid."""
    appointment_id = chain_from or p.uid
    uids: tuple[str, ...] = (p.uid,)
    statuses = {p.uid: draft.status}
    if chain_from:
        uids = (chain_from, p.uid)
        statuses = {chain_from: REPLACED, p.uid: draft.status}
    kind = EventKind.CANCEL if draft.status in TERMINAL_STATUSES else EventKind.NEW
    event = replace(
        draft,
        kind=kind,
        appointment_id=appointment_id,
        previous_booking_uid=p.rescheduleUid,
        previous_start=p.rescheduleStartTime,
        previous_end=p.rescheduleEndTime,
    )
    state = AppointmentState(
        appointment_id=appointment_id,
        uids=uids,
        current_uid=p.uid,
        statuses=statuses,
        ical_uid=p.iCalUID,
        ical_sequence=p.iCalSequence,
        last_event=event,
    )
    return _changed(event, state, notes)


def _continuation(
    draft: AppointmentEvent, prev: AppointmentState, p: BookingPayload, notes: list[str]
) -> Normalization:
    """A booking uid we have not seen that continues an appointment we hold."""
    if (
        p.iCalSequence is not None
        and prev.ical_sequence is not None
        and p.iCalSequence <= prev.ical_sequence
        and p.rescheduleUid != prev.current_uid
    ):
        # Crossed in flight: an older step of the chain. Remember the uid so its later
        # deliveries resolve here too, but the appointment already moved past it.
        state = replace(
            prev.with_status(p.uid, REPLACED),
            uids=_append(prev.uids, p.uid),
        )
        return Normalization(
            "no_change",
            state=state,
            uid_links=_links(state),
            reason=f"superseded: iCalSequence {p.iCalSequence} <= {prev.ical_sequence} held",
            notes=tuple(notes),
        )
    if prev.current_status in TERMINAL_STATUSES:
        # Host "request reschedule": the EHR holds the old placer id as cancelled, for good.
        notes.append(
            f"continues cancelled appointment {prev.appointment_id}: sent as a new appointment"
        )
        return _first_seen(draft, p, notes, chain_from=None)
    if p.rescheduleUid and p.rescheduleUid != prev.current_uid:
        notes.append(
            f"rescheduleUid {p.rescheduleUid} is not the current booking {prev.current_uid}"
        )
    last = prev.last_event
    kind = EventKind.CANCEL if draft.status in TERMINAL_STATUSES else EventKind.RESCHEDULE
    event = replace(
        draft,
        kind=kind,
        appointment_id=prev.appointment_id,
        previous_booking_uid=prev.current_uid,
        previous_start=last.start if last else p.rescheduleStartTime,
        previous_end=last.end if last else p.rescheduleEndTime,
    )
    uids = prev.uids
    statuses = {**prev.statuses, prev.current_uid: REPLACED}
    if p.rescheduleUid and p.rescheduleUid not in uids:
        uids = _append(uids, p.rescheduleUid)  # an intermediate step we never saw
        statuses[p.rescheduleUid] = REPLACED
    statuses[p.uid] = draft.status
    state = AppointmentState(
        appointment_id=prev.appointment_id,
        uids=_append(uids, p.uid),
        current_uid=p.uid,
        statuses=statuses,
        ical_uid=prev.ical_uid or p.iCalUID,
        ical_sequence=p.iCalSequence if p.iCalSequence is not None else prev.ical_sequence,
        last_event=event,
    )
    return _changed(event, state, notes)


def _known_booking(
    draft: AppointmentEvent, held: AppointmentState, p: BookingPayload, notes: list[str]
) -> Normalization:
    """Another delivery for a booking uid we hold: apply it by precedence, not arrival."""
    if p.uid != held.current_uid:
        return Normalization(
            "no_change", reason=f"booking {p.uid} superseded by {held.current_uid}",
            notes=tuple(notes),
        )
    stored = held.statuses.get(p.uid, "")
    incoming, current = status_rank(draft.status), status_rank(stored)
    if incoming < current:
        return Normalization(
            "no_change", reason=f"stale: {draft.status} after {stored}", notes=tuple(notes)
        )
    if incoming == current and (
        stored in TERMINAL_STATUSES or _same_details(draft, held.last_event)
    ):
        return Normalization("no_change", reason=f"already held: {stored}", notes=tuple(notes))
    last = held.last_event
    if draft.status in TERMINAL_STATUSES:
        kind = EventKind.CANCEL
    elif last is not None and (last.start, last.end) != (draft.start, draft.end):
        kind = EventKind.RESCHEDULE  # same uid, new times (an edit without a new booking)
    else:
        kind = EventKind.MODIFICATION  # confirmation (PENDING -> ACCEPTED) or changed details
    actor = draft.actor
    if stored == "PENDING" and draft.status == "ACCEPTED":
        actor = "organizer"  # only the host confirms
    event = replace(
        draft,
        kind=kind,
        appointment_id=held.appointment_id,
        actor=actor,
        previous_booking_uid=None,
        previous_start=last.start if last and kind is EventKind.RESCHEDULE else None,
        previous_end=last.end if last and kind is EventKind.RESCHEDULE else None,
    )
    state = replace(
        held.with_status(p.uid, draft.status),
        ical_uid=held.ical_uid or p.iCalUID,
        ical_sequence=p.iCalSequence if p.iCalSequence is not None else held.ical_sequence,
        last_event=event,
    )
    return _changed(event, state, notes)


def _changed(event: AppointmentEvent, state: AppointmentState, notes: list[str]) -> Normalization:
    return Normalization(
        "event", event=event, state=state, uid_links=_links(state), notes=tuple(notes)
    )


def _links(state: AppointmentState) -> dict[str, str]:
    links = {uid: state.appointment_id for uid in state.uids}
    if state.ical_uid:
        links[state.ical_uid] = state.appointment_id  # second key: lookup(iCalUID) works too
    return links


def _append(uids: tuple[str, ...], uid: str) -> tuple[str, ...]:
    return uids if uid in uids else (*uids, uid)


def _same_details(a: AppointmentEvent, b: AppointmentEvent | None) -> bool:
    """True when `a` describes what `b` already said (who, when, where, what, answers)."""
    if b is None:
        return False
    fields = ("status", "start", "end", "timezone", "patient", "provider", "location", "event_type",
              "team_id", "team_name", "answers")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


# --- no-show ------------------------------------------------------------------------------


def _no_show(
    obj: Any, trigger: str, source: str, received_at: datetime, lookup: Lookup
) -> Normalization:
    try:
        hook = NoShowWebhook.model_validate(obj)
    except ValidationError as exc:
        return Normalization("quarantined", reason=error_path(exc))
    uid = hook.payload.bookingUid
    held = lookup(uid)
    if held is None or held.last_event is None:
        # Reprocessable: once reconciliation has fetched the booking, a replay completes it.
        return Normalization("quarantined", reason="payload.bookingUid: booking not held yet")
    if uid != held.current_uid:
        return Normalization("no_change", reason=f"booking {uid} superseded by {held.current_uid}")
    if held.current_status in TERMINAL_STATUSES:
        return Normalization("no_change", reason=f"appointment is {held.current_status}")
    last = held.last_event
    flag = _patient_no_show_flag(hook.payload.attendees, last)
    if flag is None:
        return Normalization(
            "ignored",
            reason="payload.attendees: no entry for the patient (host or guest no-show)",
        )
    if flag == held.no_show:
        return Normalization("no_change", reason=f"no-show already {'marked' if flag else 'clear'}")
    event = replace(
        last,
        kind=EventKind.NO_SHOW if flag else EventKind.NO_SHOW_WITHDRAWN,
        trigger=trigger,
        occurred_at=hook.createdAt or received_at,
        source=source,
        actor="organizer",  # only the host marks attendance
        previous_booking_uid=None,
        previous_start=None,
        previous_end=None,
        cancellation_reason=None,
    )
    state = replace(held, no_show=flag, last_event=event)
    return Normalization("event", event=event, state=state, uid_links={})


def _patient_no_show_flag(attendees: list[Any], last: AppointmentEvent) -> bool | None:
    """The patient's flag in a no-show payload, or None when the mark is about someone else."""
    patient = _fold(last.patient.email)
    host = _fold(last.provider.email)
    flag: bool | None = None
    for a in attendees:
        email = _fold(a.email)
        if (patient and email == patient) or (not patient and email and email != host):
            flag = a.noShow
    return flag


# --- the snapshot: payload -> event fields ------------------------------------------------


def _snapshot(
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
    team_emails = {
        _fold(m.get("email")) for m in (p.team.members if p.team else []) if isinstance(m, dict)
    }
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


def _fold(email: Any) -> str:
    return email.strip().casefold() if isinstance(email, str) else ""


def _actor(by: str | None, organizer: str | None, team: set[str], attendee: str | None) -> str:
    """Who made the change, from an email we compare and then forget."""
    who = _fold(by)
    if not who:
        return "attendee"
    if who == _fold(organizer) or who in team:
        return "organizer"
    if who == _fold(attendee):
        return "attendee"
    return "api"
