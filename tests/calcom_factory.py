"""Synthetic Cal.com webhook bodies for tests and load tools.

Shapes follow the fixtures in tests/fixtures/calcom (webhook version 2021-10-20). Every person here is
made up. Typical use:

    body = compact(envelope("BOOKING_CREATED", booking_payload(uid="u1", start="2026-05-04T14:00:00Z")))
    headers = {"X-Cal-Signature-256": sign(body, secret), "Content-Type": "application/json"}
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

SAMPLES_DIR = Path(__file__).resolve().parent / "fixtures" / "calcom"  # hand-built, synthetic

ORGANIZER: dict[str, Any] = {
    "id": 9001,
    "name": "Dr. Synth Clinician",
    "email": "synth.clinician@clinic.example",
    "username": "synth-clinician",
    "timeZone": "America/Chicago",
    "language": {"locale": "en"},
    "timeFormat": "h:mma",
    "utcOffset": -300,
}
PATIENT: dict[str, str] = {
    "first_name": "Testy",
    "last_name": "Synthpatient",
    "email": "testy.synthpatient@example.com",
    "phone": "+15555550199",
    "dob": "1990-02-03",
}
CLINIC_ADDRESS = "Room 1, 1 Synthetic Way, Springfield, ZZ 00000"
STATUS_BY_TRIGGER = {
    "BOOKING_CREATED": "ACCEPTED",
    "BOOKING_RESCHEDULED": "ACCEPTED",
    "BOOKING_REQUESTED": "PENDING",
    "BOOKING_CANCELLED": "CANCELLED",
    "BOOKING_REJECTED": "REJECTED",
}


def iso(value: datetime | str) -> str:
    """Cal.com's usual spelling (`...Z`, no milliseconds) for an aware datetime."""
    if isinstance(value, str):
        return value
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _answer(label: str, value: Any = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"label": label, "isHidden": False}
    if value is not None:
        entry["value"] = value
    return entry


def booking_payload(
    *,
    uid: str = "synthBooking000000001",
    start: datetime | str = "2026-05-04T14:00:00Z",
    end: datetime | str | None = None,
    length: int = 30,
    status: str = "ACCEPTED",
    booking_id: int = 7000001,
    event_type_id: int = 810001,
    slug: str = "follow-up-visit",
    event_title: str = "Follow-up Visit",
    location: str = CLINIC_ADDRESS,
    organizer: Any = None,
    first_name: str = PATIENT["first_name"],
    last_name: str = PATIENT["last_name"],
    email: str = PATIENT["email"],
    phone: str | None = PATIENT["phone"],
    dob: str | None = PATIENT["dob"],
    mrn: str | None = None,
    patient_type: str | None = "returning",
    reason_for_visit: str | None = "Synthetic reason text that must never reach an EHR.",
    extra_answers: dict[str, Any] | None = None,
    ical_uid: str | None = None,
    ical_sequence: int = 0,
    reschedule_uid: str | None = None,
    reschedule_start: datetime | str | None = None,
    reschedule_end: datetime | str | None = None,
    rescheduled_by: str | None = None,
    cancellation_reason: str | None = None,
    cancelled_by: str | None = None,
    rejection_reason: str | None = None,
    team: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A booking payload (CREATED/REQUESTED/RESCHEDULED/CANCELLED/REJECTED shape).

    `overrides` set or replace top-level payload keys verbatim (use it for odd shapes); a key
    set to the sentinel `DROP` is removed.
    """
    start_s = iso(start)
    if end is None:
        end = datetime.fromisoformat(start_s) + timedelta(minutes=length)
    org = dict(organizer if isinstance(organizer, dict) else ORGANIZER)
    if organizer is not None and not isinstance(organizer, dict):
        overrides.setdefault("organizer", organizer)  # DROP or a deliberately wrong shape
    custom: dict[str, Any] = {
        "dateOfBirth": _answer("Date of birth (YYYY-MM-DD)", dob),
        "mrn": _answer("Medical record number (if known)", mrn),
        "patientType": _answer("Are you a new or returning patient?", patient_type),
        "reasonForVisit": _answer("Reason for visit", reason_for_visit),
    }
    for name, value in (extra_answers or {}).items():
        custom[name] = _answer(name, value)
    responses: dict[str, Any] = {
        "name": _answer("your_name", {"firstName": first_name, "lastName": last_name}),
        "email": _answer("email_address", email),
        "attendeePhoneNumber": _answer("phone_number", phone),
        "location": _answer("location", {"value": "inPerson", "optionValue": ""}),
        **custom,
        "notes": _answer("additional_notes"),
        "guests": _answer("additional_guests", []),
        "rescheduleReason": _answer("reason_for_reschedule"),
    }
    payload: dict[str, Any] = {
        "bookerUrl": "https://cal.com",
        "title": f"{event_title} between {org.get('name', '')} and {first_name} {last_name}",
        "startTime": start_s,
        "endTime": iso(end),
        "additionalNotes": "",
        "type": slug,
        "description": "",
        "eventTypeId": event_type_id,
        "organizer": org,
        "attendees": [
            {
                "email": email,
                "name": f"{first_name} {last_name}".strip(),
                "phoneNumber": phone,
                "firstName": first_name,
                "lastName": last_name,
                "timeZone": org.get("timeZone", "UTC"),
                "language": {"locale": "en"},
                "utcOffset": org.get("utcOffset", 0),
            }
        ],
        "customInputs": {},
        "responses": responses,
        "userFieldsResponses": custom,
        "location": location,
        "destinationCalendar": None,
        "iCalUID": ical_uid or f"{reschedule_uid or uid}@Cal.com",
        "iCalSequence": ical_sequence,
        "requiresConfirmation": status == "PENDING",
        "uid": uid,
        "eventTitle": event_title,
        "eventDescription": "",
        "price": 0,
        "currency": "usd",
        "length": length,
        "bookingId": booking_id,
        "metadata": {},
        "status": status,
    }
    if team is not None:
        payload["team"] = team
    if reschedule_uid is not None:
        payload["rescheduleUid"] = reschedule_uid
        payload["rescheduleId"] = booking_id - 1
        if reschedule_start is not None:
            payload["rescheduleStartTime"] = iso(reschedule_start)
        if reschedule_end is not None:
            payload["rescheduleEndTime"] = iso(reschedule_end)
        payload["rescheduledBy"] = rescheduled_by or email
    if status == "CANCELLED":
        payload["cancellationReason"] = cancellation_reason
        payload["cancelledBy"] = cancelled_by or email
        payload["requestReschedule"] = False
    if status == "REJECTED":
        payload["rejectionReason"] = rejection_reason
    for key, value in overrides.items():
        if value is DROP:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()


def envelope(trigger: str, payload: dict[str, Any], created_at: str = "2026-04-01T12:00:00.000Z") -> dict[str, Any]:
    """The standard webhook body `{triggerEvent, createdAt, payload}`."""
    return {"triggerEvent": trigger, "createdAt": created_at, "payload": payload}


def booking_webhook(trigger: str, **kwargs: Any) -> dict[str, Any]:
    """`envelope(trigger, booking_payload(...))` with the status the trigger implies."""
    kwargs.setdefault("status", STATUS_BY_TRIGGER.get(trigger, "ACCEPTED"))
    created_at = kwargs.pop("created_at", "2026-04-01T12:00:00.000Z")
    return envelope(trigger, booking_payload(**kwargs), created_at)


def no_show_payload(
    booking_uid: str, *, email: str = PATIENT["email"], no_show: bool = True, booking_id: int = 7000001
) -> dict[str, Any]:
    verb = "marked" if no_show else "unmarked"
    return {
        "message": f"{email} {verb} as no-show",
        "attendees": [{"email": email, "noShow": no_show}],
        "bookingUid": booking_uid,
        "bookingId": booking_id,
    }


def compact(obj: Any) -> bytes:
    """The bytes Cal.com sends (and signs): `JSON.stringify`, no spaces, UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def load_sample(name: str, folder: str = "webhooks") -> dict[str, Any]:
    """A fixture of tests/fixtures/calcom by name, e.g. `load_sample("booking_created")`."""
    path = SAMPLES_DIR / folder / f"{name}.json"
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data
