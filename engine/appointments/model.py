"""The appointment event: what a Cal.com booking change means, independent of Cal.com and HL7.

Everything downstream (routing, rendering, delivery, audit) works on these types. They are
plain frozen dataclasses so the hot path pays nothing for validation; pydantic guards the
borders (Cal.com payloads, channel files). `to_dict`/`from_dict` give the JSON form the store
keeps, so a no-show or a reschedule can be completed from what we stored earlier.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any


class EventKind(StrEnum):
    NEW = "new"
    RESCHEDULE = "reschedule"
    MODIFICATION = "modification"
    CANCEL = "cancel"
    NO_SHOW = "no_show"
    NO_SHOW_WITHDRAWN = "no_show_withdrawn"
    IGNORED = "ignored"


class LocationKind(StrEnum):
    IN_PERSON = "in_person"
    TELEHEALTH = "telehealth"
    PHONE = "phone"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Patient:
    first_name: str = ""
    last_name: str = ""
    full_name: str = ""
    email: str | None = None
    phone: str | None = None
    dob: date | None = None
    sex: str | None = None  # as answered: the channel maps it to HL7 table 0001
    mrn: str | None = None
    patient_type: str | None = None  # "new" | "returning" | None
    timezone: str | None = None
    locale: str | None = None


@dataclass(frozen=True, slots=True)
class Provider:
    calcom_user_id: int | None = None
    name: str = ""
    email: str | None = None
    username: str | None = None
    timezone: str | None = None


@dataclass(frozen=True, slots=True)
class Location:
    kind: LocationKind = LocationKind.OTHER
    raw: str = ""  # Cal.com's location value, e.g. an address or "integrations:daily"
    address: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class EventType:
    id: int | None = None
    slug: str | None = None
    title: str | None = None
    length_minutes: int | None = None


@dataclass(frozen=True, slots=True)
class AppointmentEvent:
    kind: EventKind
    appointment_id: str  # stable across reschedules: the uid of the first booking of the chain
    booking_uid: str  # the Cal.com booking this change is about (new uid after a reschedule)
    trigger: str  # Cal.com triggerEvent, e.g. BOOKING_CREATED
    status: str  # Cal.com status: ACCEPTED, PENDING, CANCELLED, REJECTED
    start: datetime  # timezone-aware
    end: datetime  # timezone-aware
    timezone: str  # IANA zone the clinic works in (the organizer's)
    patient: Patient = field(default_factory=Patient)
    provider: Provider = field(default_factory=Provider)
    location: Location = field(default_factory=Location)
    event_type: EventType = field(default_factory=EventType)
    previous_booking_uid: str | None = None  # the uid a reschedule replaced
    previous_start: datetime | None = None
    previous_end: datetime | None = None
    ical_uid: str | None = None
    booking_id: int | None = None
    team_id: int | None = None
    team_name: str | None = None
    cancellation_reason: str | None = None
    actor: str = "attendee"  # organizer | attendee | api | ehr | system
    occurred_at: datetime | None = None  # when Cal.com says it happened (envelope createdAt)
    source: str = "default"  # which Cal.com account (webhook path)
    # Answers to custom booking questions (name -> text), scheduling data only: free-text
    # clinical notes are dropped at normalization unless a channel asks for them by name.
    answers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AppointmentEvent:
        return _decode_event(data)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_AS_IS = frozenset({str, int, float, bool, type(None)})


def _encode(value: Any) -> Any:
    """JSON-ready form. Field names are looked up once per class, and the common types are
    tested first by identity: this runs for every event on the hot path."""
    kind = type(value)
    if kind in _AS_IS:
        return value
    names = _FIELD_NAMES.get(kind)
    if names is not None:
        return {name: _encode(getattr(value, name)) for name in names}
    if kind is datetime or kind is date:
        return value.isoformat()
    if kind is dict:
        return {k: _encode(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
        return _encode(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value  # the enums: str subclasses, encoded as their value


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _decode_event(d: dict[str, Any]) -> AppointmentEvent:
    p = dict(d.get("patient") or {})
    if p.get("dob"):
        p["dob"] = date.fromisoformat(p["dob"])
    loc = dict(d.get("location") or {})
    if "kind" in loc:
        loc["kind"] = LocationKind(loc["kind"])
    return AppointmentEvent(
        kind=EventKind(d["kind"]),
        appointment_id=d["appointment_id"],
        booking_uid=d["booking_uid"],
        trigger=d["trigger"],
        status=d["status"],
        start=datetime.fromisoformat(d["start"]),
        end=datetime.fromisoformat(d["end"]),
        timezone=d["timezone"],
        patient=Patient(**p),
        provider=Provider(**(d.get("provider") or {})),
        location=Location(**loc),
        event_type=EventType(**(d.get("event_type") or {})),
        previous_booking_uid=d.get("previous_booking_uid"),
        previous_start=_dt(d.get("previous_start")),
        previous_end=_dt(d.get("previous_end")),
        ical_uid=d.get("ical_uid"),
        booking_id=d.get("booking_id"),
        team_id=d.get("team_id"),
        team_name=d.get("team_name"),
        cancellation_reason=d.get("cancellation_reason"),
        actor=d.get("actor", "attendee"),
        occurred_at=_dt(d.get("occurred_at")),
        source=d.get("source", "default"),
        answers=dict(d.get("answers") or {}),
    )
