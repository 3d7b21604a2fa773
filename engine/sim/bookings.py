"""Synthetic Cal.com webhooks that tell realistic booking stories, for the demo and load tests.

Every person is made up. The organizers and event types match the example channels in
`channels/`, so the stories route: family medicine (Dr. Grace Testdoctor, user 4211) in person
and by video, physiotherapy (Pat Testtherapist, user 4230) in person. Bodies are shaped like
Cal.com's (webhook version 2021-10-20) and serialized the way Cal.com does (compact JSON).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

CLINIC_ADDRESS = "Suite 210, 100 Example Medical Plaza, Springfield, ZZ 00000"

ORGANIZERS = {
    "family": {"id": 4211, "name": "Dr. Grace Testdoctor",
               "email": "grace.testdoctor@clinic.example",
               "username": "grace-testdoctor", "timeZone": "America/New_York"},
    "physio": {"id": 4230, "name": "Pat Testtherapist", "email": "pat.testtherapist@clinic.example",
               "username": "pat-testtherapist", "timeZone": "America/New_York"},
}

# (organizer, event type id, slug, title, minutes, location, needs confirmation)
EVENT_TYPES = [
    ("family", 731042, "new-patient-visit", "New Patient Visit", 45, CLINIC_ADDRESS, False),
    ("family", 731043, "telehealth-follow-up", "Telehealth Follow-up", 20, "integrations:daily",
     True),
    ("family", 731044, "telehealth-visit", "Telehealth Visit", 20, "integrations:daily", False),
    ("physio", 731050, "physio-assessment", "Physiotherapy Assessment", 60, CLINIC_ADDRESS, False),
    ("physio", 731051, "physio-follow-up", "Physiotherapy Follow-up", 30, CLINIC_ADDRESS, False),
]

# Synthetic patients, some with names that break naive interfaces.
PATIENTS = [
    ("Ada", "Testpatient"), ("Bo", "O'Synthetic-Smith"), ("Zoë", "Ångström-Test"),
    ("小红", "测试"), ("ليلى", "اختبار"), ("Pipe|Caret^", "Tilde~Back\\Amp&"),
    ("José María", "Núñez Prueba"), ("Ngozi", "Testadeyemi"), ("Wei", "Synthlee"),
    ("Aroha", "Te Testa"), ("Olu", "Fakeyemi"), ("Mirela", "Probescu"),
]


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _uid(rng: random.Random) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(rng.choice(alphabet) for _ in range(22))


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Booking:
    """What a patient booked; the story mutates it as Cal.com would."""

    uid: str
    booking_id: int
    patient: tuple[str, str]
    patient_no: int
    organizer: dict[str, Any]
    event_type: tuple[Any, ...]
    start: datetime
    ical_uid: str = ""
    sequence: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self, status: str) -> dict[str, Any]:
        _org, et_id, slug, title, minutes, location, confirm = self.event_type
        first, last = self.patient
        email = f"patient{self.patient_no:05d}@example.com"
        phone = f"+1555555{self.patient_no % 10000:04d}"
        dob = f"19{50 + self.patient_no % 50:02d}-{1 + self.patient_no % 12:02d}-" \
              f"{1 + self.patient_no % 28:02d}"
        answers = {
            "name": {"label": "your_name", "value": {"firstName": first, "lastName": last}},
            "email": {"label": "email_address", "value": email},
            "attendeePhoneNumber": {"label": "phone_number", "value": phone},
            "location": {"label": "location", "value": {
                "value": "inPerson" if location == CLINIC_ADDRESS else location,
                "optionValue": ""}},
            "dateOfBirth": {"label": "Date of birth (YYYY-MM-DD)", "value": dob},
            "mrn": {"label": "Medical record number (if known)"},
            "patientType": {"label": "Are you a new or returning patient?",
                            "value": "new" if self.patient_no % 3 else "returning"},
        }
        org = self.organizer
        return {
            "type": slug, "title": f"{title} between {org['name']} and {first} {last}",
            "startTime": _iso(self.start),
            "endTime": _iso(self.start + timedelta(minutes=minutes)),
            "eventTypeId": et_id, "eventTitle": title, "length": minutes,
            "requiresConfirmation": confirm,
            "organizer": {**org, "language": {"locale": "en"}, "timeFormat": "h:mma",
                          "utcOffset": -240},
            "attendees": [{"email": email, "name": f"{first} {last}", "firstName": first,
                           "lastName": last, "phoneNumber": phone, "timeZone": org["timeZone"],
                           "language": {"locale": "en"}, "utcOffset": -240}],
            "responses": answers,
            "userFieldsResponses": {k: answers[k] for k in ("dateOfBirth", "mrn", "patientType")},
            "location": location, "customInputs": {}, "metadata": {},
            "uid": self.uid, "bookingId": self.booking_id, "status": status,
            "iCalUID": self.ical_uid, "iCalSequence": self.sequence,
            **self.extra,
        }


@dataclass
class Story:
    """One appointment's life as a list of webhook bodies, in the order Cal.com sent them."""

    appointment_uid: str
    webhooks: list[dict[str, Any]]
    # The SIU changes a destination should see, in order, when every channel takes them.
    expected_kinds: list[str]


class StoryTeller:
    def __init__(self, seed: int = 7, day: datetime | None = None,
                 organizers: tuple[str, ...] | None = None) -> None:
        """`organizers` (e.g. ("family",)) keeps the bookings to those providers' event
        types; every event type by default."""
        self.rng = random.Random(seed)
        self.event_types = [e for e in EVENT_TYPES if organizers is None or e[0] in organizers]
        self.day = day or datetime(2026, 6, 15, 13, 0, tzinfo=UTC)  # 09:00 in New York
        self.next_booking_id = 6_000_000
        self.patient_no = 0
        self.clock = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

    def _envelope(self, trigger: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.clock += timedelta(seconds=self.rng.randint(5, 600))
        return {"triggerEvent": trigger,
                "createdAt": self.clock.strftime("%Y-%m-%dT%H:%M:%S.")
                + f"{self.rng.randint(0, 999):03d}Z",
                "payload": payload}

    def _booking(self, event_type: tuple[Any, ...] | None = None) -> Booking:
        self.patient_no += 1
        et = event_type or self.rng.choice(self.event_types)
        self.next_booking_id += 1
        uid = _uid(self.rng)
        slot = self.rng.randrange(0, 16) * 30
        return Booking(uid=uid, booking_id=self.next_booking_id,
                       patient=PATIENTS[self.patient_no % len(PATIENTS)],
                       patient_no=self.patient_no, organizer=ORGANIZERS[et[0]], event_type=et,
                       start=self.day + timedelta(days=self.rng.randrange(0, 5), minutes=slot),
                       ical_uid=f"{uid}@Cal.com")

    def created(self) -> tuple[Booking, dict[str, Any]]:
        b = self._booking()
        trigger = "BOOKING_REQUESTED" if b.event_type[6] else "BOOKING_CREATED"
        return b, self._envelope(trigger, b.payload("PENDING" if b.event_type[6] else "ACCEPTED"))

    def confirmed(self, b: Booking) -> dict[str, Any]:
        return self._envelope("BOOKING_CREATED", b.payload("ACCEPTED"))

    def rejected(self, b: Booking) -> dict[str, Any]:
        b.extra = {"rejectionReason": "No slot for this visit type"}
        return self._envelope("BOOKING_REJECTED", b.payload("REJECTED"))

    def rescheduled(self, b: Booking) -> dict[str, Any]:
        old_uid, old_id, old_start = b.uid, b.booking_id, b.start
        minutes = b.event_type[4]
        self.next_booking_id += 1
        b.uid, b.booking_id = _uid(self.rng), self.next_booking_id
        b.start = old_start + timedelta(days=self.rng.randint(1, 3), minutes=30)
        b.sequence += 1
        b.extra = {"rescheduleUid": old_uid, "rescheduleId": old_id,
                   "rescheduleStartTime": _iso(old_start),
                   "rescheduleEndTime": _iso(old_start + timedelta(minutes=minutes)),
                   "rescheduledBy": b.payload("ACCEPTED")["attendees"][0]["email"]}
        env = self._envelope("BOOKING_RESCHEDULED", b.payload("ACCEPTED"))
        b.extra = {}
        return env

    def cancelled(self, b: Booking, by_organizer: bool = False) -> dict[str, Any]:
        who = b.organizer["email"] if by_organizer else f"patient{b.patient_no:05d}@example.com"
        b.extra = {"cancellationReason": "Clinic session cancelled" if by_organizer
                   else "Feeling better", "cancelledBy": who, "requestReschedule": False}
        env = self._envelope("BOOKING_CANCELLED", b.payload("CANCELLED"))
        b.extra = {}
        return env

    def no_show(self, b: Booking, marked: bool = True) -> dict[str, Any]:
        email = f"patient{b.patient_no:05d}@example.com"
        return self._envelope("BOOKING_NO_SHOW_UPDATED", {
            "message": f"{email} {'marked' if marked else 'unmarked'} as no-show",
            "attendees": [{"email": email, "noShow": marked}],
            "bookingUid": b.uid, "bookingId": b.booking_id})

    def story(self) -> Story:
        """A random but realistic appointment life."""
        b, first = self.created()
        appointment = b.uid
        hooks = [first]
        kinds = []
        if b.event_type[6]:  # needs confirmation
            if self.rng.random() < 0.2:
                hooks.append(self.rejected(b))
                return Story(appointment, hooks, ["pending", "cancel"])
            hooks.append(self.confirmed(b))
            kinds += ["pending", "confirmed"]
        else:
            kinds.append("new")
        roll = self.rng.random()
        if roll < 0.3:
            for _ in range(self.rng.choice([1, 1, 2, 3])):
                hooks.append(self.rescheduled(b))
                kinds.append("reschedule")
        roll = self.rng.random()
        if roll < 0.2:
            hooks.append(self.cancelled(b))
            kinds.append("cancel")
        elif roll < 0.3:
            hooks.append(self.no_show(b))
            kinds.append("no_show")
        return Story(appointment, hooks, kinds)

    def mass_cancellation(self, count: int, organizer: str = "family") -> list[Story]:
        """A provider falls ill: every booking of the session is cancelled by the clinic."""
        stories = []
        for _ in range(count):
            et = self.rng.choice([e for e in EVENT_TYPES if e[0] == organizer and not e[6]])
            b = self._booking(et)
            stories.append(Story(b.uid, [self._envelope("BOOKING_CREATED", b.payload("ACCEPTED")),
                                         self.cancelled(b, by_organizer=True)], ["new", "cancel"]))
        return stories
