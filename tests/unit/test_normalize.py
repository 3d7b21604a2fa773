"""normalize(): Cal.com webhook body -> appointment event, applied by precedence per booking uid."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import pytest

from engine.appointments.model import AppointmentEvent, EventKind, LocationKind
from engine.appointments.normalize import Normalization, normalize, parse_dob
from engine.appointments.state import AppointmentState
from tests.calcom_factory import (
    DROP,
    ORGANIZER,
    PATIENT,
    booking_webhook,
    compact,
    envelope,
    load_sample,
    no_show_payload,
)

RECEIVED = datetime(2026, 4, 1, 12, 0, 5, tzinfo=UTC)
A, B, C, D = "synthA000000000000001", "synthB000000000000002", "synthC000000000000003", "synthD000000000000004"
# Fixture uids (tests/fixtures/README.md): A -> B reschedule, C requested/rejected, E no-show.
SA, SB, SC, SE = "EcVcNhWTKwptsHL3bfEcnZ", "C8QPRP51WnF6WbzAtJoT7L", "LuGMkMC9TqsXYetaWTnMHr", "XhqyqtppcWicWf7YUoCx97"


@dataclass
class Held:
    """What the store would hold: links (uid/iCalUID -> appointment) and states as JSON."""

    links: dict[str, str] = field(default_factory=dict)
    rows: dict[str, str] = field(default_factory=dict)

    def lookup(self, key: str) -> AppointmentState | None:
        appointment_id = self.links.get(key)
        if appointment_id is None:
            return None
        return AppointmentState.from_dict(json.loads(self.rows[appointment_id]))

    def feed(self, obj: dict[str, Any] | bytes) -> Normalization:
        body = obj if isinstance(obj, bytes) else compact(obj)
        result = normalize(body, source="test", received_at=RECEIVED, lookup=self.lookup)
        if result.state is not None:
            self.rows[result.state.appointment_id] = json.dumps(result.state.to_dict())
        self.links.update(result.uid_links)
        return result

    def state(self, uid: str) -> AppointmentState:
        state = self.lookup(uid)
        assert state is not None
        return state


def created(uid: str = A, **kw: Any) -> dict[str, Any]:
    return booking_webhook("BOOKING_CREATED", uid=uid, **kw)


def resched(uid: str, old: str, seq: int, start: str, **kw: Any) -> dict[str, Any]:
    return booking_webhook(
        "BOOKING_RESCHEDULED", uid=uid, reschedule_uid=old, ical_uid=f"{A}@Cal.com", ical_sequence=seq,
        start=start, **kw,
    )


def cancelled(uid: str, **kw: Any) -> dict[str, Any]:
    return booking_webhook("BOOKING_CANCELLED", uid=uid, **kw)


def no_show(uid: str, flag: bool = True, **kw: Any) -> dict[str, Any]:
    return envelope("BOOKING_NO_SHOW_UPDATED", no_show_payload(uid, no_show=flag, **kw))


def event_of(result: Normalization) -> AppointmentEvent:
    assert result.disposition == "event", result.reason
    assert result.event is not None
    return result.event


# --- every sample on an empty store -------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "disposition", "kind", "appointment_id", "status"),
    [
        ("booking_created", "event", EventKind.NEW, SA, "ACCEPTED"),
        ("booking_requested", "event", EventKind.NEW, SC, "PENDING"),
        ("booking_rescheduled", "event", EventKind.NEW, SA, "ACCEPTED"),  # original unseen
        ("booking_cancelled", "event", EventKind.CANCEL, SB, "CANCELLED"),  # cancel overtook
        ("booking_rejected", "event", EventKind.CANCEL, SC, "REJECTED"),
        ("booking_no_show_updated", "quarantined", None, None, None),  # nothing to complete it
        ("meeting_started", "ignored", None, None, None),
        ("meeting_ended", "ignored", None, None, None),
        ("meeting_ended.tasker_envelope", "ignored", None, None, None),
        ("ping", "ignored", None, None, None),
    ],
)
def test_each_sample_alone(
    sample: str, disposition: str, kind: EventKind | None, appointment_id: str | None, status: str | None
) -> None:
    result = Held().feed(load_sample(sample))
    assert result.disposition == disposition
    if kind is None:
        assert result.event is None and result.state is None and result.reason
        return
    event = event_of(result)
    assert (event.kind, event.appointment_id, event.status) == (kind, appointment_id, status)
    assert event.timezone == "America/New_York"
    assert event.start.tzinfo is not None and event.end > event.start
    assert event.patient.last_name == "Probewell" and event.patient.dob == date(1991, 9, 27)
    assert event.provider.calcom_user_id == 4211
    assert "reasonForVisit" not in event.answers and "notes" not in event.answers
    assert result.uid_links[event.booking_uid] == appointment_id


def test_created_sample_in_detail() -> None:
    event = event_of(Held().feed(load_sample("booking_created")))
    assert event.trigger == "BOOKING_CREATED" and event.source == "test"
    assert event.occurred_at == datetime(2026, 10, 5, 13, 21, 9, 482000, tzinfo=UTC)
    assert event.start == datetime(2026, 10, 29, 14, 15, tzinfo=UTC)
    p = event.patient
    assert (p.first_name, p.last_name, p.full_name) == ("Lena", "Probewell", "Lena Probewell")
    assert (p.email, p.phone, p.mrn, p.patient_type) == ("lena.probewell@example.com", "+15555550168", None, "new")
    assert (p.timezone, p.locale) == ("America/New_York", "en")
    assert event.location.kind is LocationKind.IN_PERSON and event.location.address
    assert (event.event_type.id, event.event_type.slug, event.event_type.length_minutes) == (731042, "new-patient-visit", 45)
    assert event.ical_uid == f"{SA}@Cal.com" and event.booking_id == 6310412
    assert event.answers == {"dateOfBirth": "1991-09-27", "patientType": "new"}
    assert event.actor == "attendee" and event.cancellation_reason is None


def test_requested_sample_is_pending_telehealth_with_mrn() -> None:
    event = event_of(Held().feed(load_sample("booking_requested")))
    assert event.location.kind is LocationKind.TELEHEALTH and event.location.raw == "integrations:daily"
    assert event.patient.mrn == "SYN-031907" and event.patient.patient_type == "returning"
    assert event.answers["mrn"] == "SYN-031907"


# --- the sample story: A created, moved to B, B cancelled ---------------------------------


def test_sample_story_keeps_one_appointment() -> None:
    held = Held()
    new = event_of(held.feed(load_sample("booking_created")))
    moved = event_of(held.feed(load_sample("booking_rescheduled")))
    assert moved.kind is EventKind.RESCHEDULE and moved.appointment_id == SA
    assert (moved.booking_uid, moved.previous_booking_uid) == (SB, SA)
    assert (moved.previous_start, moved.previous_end) == (new.start, new.end)
    assert moved.actor == "attendee"
    assert "rescheduleReason" not in moved.answers and moved.cancellation_reason is None
    gone = event_of(held.feed(load_sample("booking_cancelled")))
    assert (gone.kind, gone.appointment_id, gone.booking_uid) == (EventKind.CANCEL, SA, SB)
    assert gone.cancellation_reason and gone.actor == "attendee"
    state = held.state(SB)
    assert state.uids == (SA, SB) and state.current_uid == SB
    assert state.statuses == {SA: "CANCELLED", SB: "CANCELLED"}
    # every key of the chain resolves to the same appointment, the iCalUID too
    assert {held.links[k] for k in (SA, SB, f"{SA}@Cal.com")} == {SA}


def test_requested_then_rejected_sample() -> None:
    held = Held()
    assert event_of(held.feed(load_sample("booking_requested"))).status == "PENDING"
    rejected = event_of(held.feed(load_sample("booking_rejected")))
    assert (rejected.kind, rejected.status, rejected.actor) == (EventKind.CANCEL, "REJECTED", "organizer")
    assert rejected.cancellation_reason and rejected.appointment_id == SC
    # a late copy of the request changes nothing
    assert held.feed(load_sample("booking_requested")).disposition == "no_change"


# --- chains and precedence ----------------------------------------------------------------


def test_three_reschedules_keep_one_appointment_id() -> None:
    held = Held()
    held.feed(created(A, start="2026-05-04T14:00:00Z"))
    starts = ["2026-05-05T14:00:00Z", "2026-05-06T15:00:00Z", "2026-05-07T16:00:00Z"]
    previous = A
    for seq, (uid, start) in enumerate(zip((B, C, D), starts, strict=True), start=1):
        event = event_of(held.feed(resched(uid, previous, seq, start)))
        assert (event.kind, event.appointment_id, event.previous_booking_uid) == (EventKind.RESCHEDULE, A, previous)
        assert event.start == datetime.fromisoformat(start)
        previous = uid
    state = held.state(D)
    assert state.uids == (A, B, C, D) and state.current_uid == D and state.ical_sequence == 3
    assert all(held.links[u] == A for u in (A, B, C, D))


def test_reschedule_arriving_as_requested_then_confirmed() -> None:
    held = Held()
    held.feed(created(A))
    pending = event_of(held.feed(booking_webhook("BOOKING_REQUESTED", uid=B, reschedule_uid=A, ical_sequence=1,
                                                 start="2026-05-06T14:00:00Z")))
    assert (pending.kind, pending.status, pending.appointment_id) == (EventKind.RESCHEDULE, "PENDING", A)
    confirmed = event_of(held.feed(booking_webhook("BOOKING_CREATED", uid=B, reschedule_uid=A, ical_sequence=1,
                                                   start="2026-05-06T14:00:00Z")))
    assert (confirmed.kind, confirmed.status, confirmed.actor) == (EventKind.MODIFICATION, "ACCEPTED", "organizer")


def test_cancel_of_a_replaced_uid_changes_nothing() -> None:
    held = Held()
    held.feed(created(A))
    held.feed(resched(B, A, 1, "2026-05-05T14:00:00Z"))
    stale = held.feed(cancelled(A))
    assert stale.disposition == "no_change" and stale.state is None
    assert stale.reason == f"booking {A} superseded by {B}"
    live = event_of(held.feed(cancelled(B)))
    assert (live.kind, live.appointment_id) == (EventKind.CANCEL, A)


def test_cancelled_before_created_is_not_resurrected() -> None:
    held = Held()
    gone = event_of(held.feed(cancelled(A)))
    assert (gone.kind, gone.status) == (EventKind.CANCEL, "CANCELLED")
    late = held.feed(created(A))
    assert late.disposition == "no_change" and late.state is None
    assert late.reason == "stale: ACCEPTED after CANCELLED"
    assert held.state(A).current_status == "CANCELLED"


def test_cancel_of_new_uid_overtaking_its_reschedule() -> None:
    held = Held()
    held.feed(created(A))
    gone = event_of(held.feed(cancelled(B, ical_uid=f"{A}@Cal.com", ical_sequence=1)))
    assert (gone.kind, gone.appointment_id, gone.booking_uid) == (EventKind.CANCEL, A, B)
    late = held.feed(resched(B, A, 1, "2026-05-05T14:00:00Z"))
    assert (late.disposition, late.reason) == ("no_change", "stale: ACCEPTED after CANCELLED")


def test_requested_then_created_same_uid_is_a_confirmation() -> None:
    held = Held()
    first = event_of(held.feed(booking_webhook("BOOKING_REQUESTED", uid=A)))
    assert (first.kind, first.status) == (EventKind.NEW, "PENDING")
    ok = event_of(held.feed(created(A)))
    assert (ok.kind, ok.status, ok.appointment_id) == (EventKind.MODIFICATION, "ACCEPTED", A)
    # the request arriving again (or late) cannot demote it
    assert held.feed(booking_webhook("BOOKING_REQUESTED", uid=A)).disposition == "no_change"


def test_created_overtaking_requested() -> None:
    held = Held()
    assert event_of(held.feed(created(A))).status == "ACCEPTED"
    assert held.feed(booking_webhook("BOOKING_REQUESTED", uid=A)).reason == "stale: PENDING after ACCEPTED"


def test_requested_then_rejected() -> None:
    held = Held()
    held.feed(booking_webhook("BOOKING_REQUESTED", uid=A))
    rejected = event_of(held.feed(booking_webhook("BOOKING_REJECTED", uid=A, rejection_reason="Needs a clinic visit")))
    assert (rejected.kind, rejected.status, rejected.cancellation_reason) == (EventKind.CANCEL, "REJECTED", "Needs a clinic visit")
    assert held.feed(cancelled(A)).disposition == "no_change"  # terminal stays terminal


def test_duplicate_identical_delivery_is_no_change() -> None:
    held = Held()
    body = compact(created(A))
    assert held.feed(body).disposition == "event"
    again = held.feed(body)
    assert again.disposition == "no_change" and again.event is None and again.state is None
    # the same booking re-sent with another createdAt is still the same state
    assert held.feed(created(A, created_at="2026-04-01T12:09:00.000Z")).disposition == "no_change"


def test_changed_details_on_same_uid_is_a_modification() -> None:
    held = Held()
    held.feed(created(A))
    moved_room = event_of(held.feed(created(A, location="Room 9, 1 Synthetic Way, Springfield, ZZ 00000")))
    assert moved_room.kind is EventKind.MODIFICATION and moved_room.location.address.startswith("Room 9")
    new_time = event_of(held.feed(created(A, location="Room 9, 1 Synthetic Way, Springfield, ZZ 00000",
                                          start="2026-05-04T16:00:00Z")))
    assert new_time.kind is EventKind.RESCHEDULE
    assert new_time.previous_start == datetime(2026, 5, 4, 14, 0, tzinfo=UTC)


def test_reschedule_of_unknown_original() -> None:
    held = Held()
    first = event_of(held.feed(resched(B, A, 1, "2026-05-05T14:00:00Z",
                                       reschedule_start="2026-05-04T14:00:00Z")))
    assert (first.kind, first.appointment_id, first.previous_booking_uid) == (EventKind.NEW, A, A)
    assert first.previous_start == datetime(2026, 5, 4, 14, 0, tzinfo=UTC)
    # the original turning up late (delayed delivery, reconciliation) changes nothing
    assert held.feed(created(A)).disposition == "no_change"
    nxt = event_of(held.feed(resched(C, B, 2, "2026-05-06T14:00:00Z")))
    assert (nxt.kind, nxt.appointment_id, nxt.previous_booking_uid) == (EventKind.RESCHEDULE, A, B)


def test_reschedule_of_unknown_original_notes() -> None:
    result = Held().feed(resched(B, A, 1, "2026-05-05T14:00:00Z"))
    assert result.notes == (f"reschedule of unseen booking {A}: sent as a new appointment",)


def test_reschedule_without_reschedule_uid_links_by_ical_uid() -> None:
    held = Held()
    held.feed(created(A))
    event = event_of(held.feed(booking_webhook("BOOKING_RESCHEDULED", uid=B, ical_uid=f"{A}@Cal.com",
                                               ical_sequence=1, start="2026-05-05T14:00:00Z")))
    assert (event.kind, event.appointment_id, event.previous_booking_uid) == (EventKind.RESCHEDULE, A, A)


def test_reschedule_without_any_link_is_a_new_appointment() -> None:
    event = event_of(Held().feed(booking_webhook("BOOKING_RESCHEDULED", uid=B)))
    assert (event.kind, event.appointment_id) == (EventKind.NEW, B)


def test_crossed_reschedules_ordered_by_ical_sequence() -> None:
    held = Held()
    held.feed(created(A))
    # A -> B -> C, but C's delivery overtakes B's: C is linked through the iCalUID
    late_first = held.feed(resched(C, B, 2, "2026-05-06T14:00:00Z"))
    event = event_of(late_first)
    assert (event.kind, event.appointment_id, event.previous_booking_uid) == (EventKind.RESCHEDULE, A, A)
    assert "linked to its appointment by iCalUID" in late_first.notes
    assert held.state(C).uids == (A, B, C)
    stale = held.feed(resched(B, A, 1, "2026-05-05T14:00:00Z"))
    assert stale.disposition == "no_change" and held.state(C).current_uid == C


def test_late_original_after_cancel_of_its_reschedule_is_not_resurrected() -> None:
    held = Held()
    held.feed(cancelled(B, ical_uid=f"{A}@Cal.com", ical_sequence=2))  # A and B's RESCHEDULED unseen
    late = held.feed(created(A, ical_sequence=0))
    assert late.disposition == "no_change" and late.reason == "superseded: iCalSequence 0 <= 2 held"
    assert late.state is not None and late.state.current_uid == B and late.uid_links[A] == B
    assert held.feed(created(A, ical_sequence=0)).reason == f"booking {A} superseded by {B}"


def test_rebooking_after_host_request_reschedule_is_a_new_appointment() -> None:
    held = Held()
    held.feed(created(A))
    held.feed(cancelled(A, cancellation_reason="Please reschedule. Clinic closed", cancelled_by=ORGANIZER["email"],
                        requestReschedule=True))
    result = held.feed(created(C, reschedule_uid=A, ical_uid=f"{A}@Cal.com", ical_sequence=1))
    rebooked = event_of(result)
    assert (rebooked.kind, rebooked.appointment_id, rebooked.previous_booking_uid) == (EventKind.NEW, C, A)
    assert result.notes == (f"continues cancelled appointment {A}: sent as a new appointment",)
    assert held.state(C).uids == (C,) and held.state(A).current_status == "CANCELLED"


# --- no-shows -----------------------------------------------------------------------------


def test_no_show_marked_then_withdrawn() -> None:
    held = Held()
    booked = event_of(held.feed(created(A, location="integrations:daily")))
    mark = event_of(held.feed(no_show(A)))
    assert (mark.kind, mark.appointment_id, mark.trigger, mark.actor) == (EventKind.NO_SHOW, A, "BOOKING_NO_SHOW_UPDATED", "organizer")
    assert (mark.start, mark.patient, mark.event_type) == (booked.start, booked.patient, booked.event_type)
    assert held.state(A).no_show is True
    assert held.feed(no_show(A)).disposition == "no_change"
    undo = event_of(held.feed(no_show(A, flag=False)))
    assert undo.kind is EventKind.NO_SHOW_WITHDRAWN and held.state(A).no_show is False
    assert held.feed(no_show(A, flag=False)).disposition == "no_change"


def test_no_show_for_unknown_booking_is_quarantined_then_replayable() -> None:
    held = Held()
    body = compact(no_show(A))
    first = held.feed(body)
    assert (first.disposition, first.reason) == ("quarantined", "payload.bookingUid: booking not held yet")
    held.feed(created(A))  # e.g. fetched by reconciliation
    assert event_of(held.feed(body)).kind is EventKind.NO_SHOW


@pytest.mark.parametrize("email", [ORGANIZER["email"], "guest.synth@example.com"])
def test_host_or_guest_no_show_is_not_a_patient_no_show(email: str) -> None:
    held = Held()
    held.feed(created(A))
    result = held.feed(no_show(A, email=email))
    assert result.disposition == "ignored" and result.event is None
    assert held.state(A).no_show is False


def test_no_show_of_cancelled_or_replaced_booking() -> None:
    held = Held()
    held.feed(created(A))
    held.feed(resched(B, A, 1, "2026-05-05T14:00:00Z"))
    assert held.feed(no_show(A)).disposition == "no_change"
    held.feed(cancelled(B))
    assert held.feed(no_show(B)).reason == "appointment is CANCELLED"


# --- patient, answers, location, actor ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "problem"),
    [
        ("1984-07-12", date(1984, 7, 12), None),
        (" 1984/7/2 ", date(1984, 7, 2), None),
        ("19840712", date(1984, 7, 12), None),
        ("12 July 1984", date(1984, 7, 12), None),
        ("Jul 12, 1984", date(1984, 7, 12), None),
        ("12 Sept. 1984", date(1984, 9, 12), None),
        ("12/07/1984", None, "not a recognised date"),  # day/month order unknown
        ("1984-02-30", None, "not a valid date"),
        ("2030-01-01", None, "in the future"),
        ("1850-01-01", None, "more than 130 years ago"),
        ("", None, "not a recognised date"),
        ("12 Smarch 1984", None, "not a recognised date"),
    ],
)
def test_parse_dob(text: str, expected: date | None, problem: str | None) -> None:
    assert parse_dob(text, date(2026, 4, 1)) == (expected, problem)


def test_invalid_dob_is_dropped_with_a_phi_free_note() -> None:
    result = Held().feed(created(A, dob="next spring"))
    event = event_of(result)
    assert event.patient.dob is None and "dateOfBirth" not in event.answers
    assert result.notes == ("dateOfBirth dropped: not a recognised date",)


def test_free_text_answers_are_dropped_and_codes_kept() -> None:
    long_text = "x" * 80
    result = Held().feed(created(A, mrn="SYN-0001", extra_answers={
        "sex": "F", "symptomDetails": "cough", "preferredLanguage": "es", "consent": True,
        "visitNotes": "short", "allergyList": long_text, "interpreter": ["es", "fr"],
    }))
    event = event_of(result)
    assert event.answers == {
        "dateOfBirth": PATIENT["dob"], "mrn": "SYN-0001", "patientType": "returning", "sex": "F",
        "preferredLanguage": "es", "consent": "true", "interpreter": "es, fr",
    }
    assert (event.patient.sex, event.patient.mrn) == ("F", "SYN-0001")
    assert result.notes == ("answer allergyList dropped: free text",)
    dumped = json.dumps(event.to_dict())
    assert "Synthetic reason text" not in dumped and long_text not in dumped


def test_gender_answer_fills_sex() -> None:
    assert event_of(Held().feed(created(A, extra_answers={"gender": "male"}))).patient.sex == "male"


@pytest.mark.parametrize(
    ("first", "last"), [("Ada|Bad^Name~x\\y&z", "O'Test|patient"), ("小龙", "李"), ("ليلى", "الاختبار")]
)
def test_names_pass_through_untouched(first: str, last: str) -> None:
    event = event_of(Held().feed(created(A, first_name=first, last_name=last)))
    assert (event.patient.first_name, event.patient.last_name) == (first, last)


@pytest.mark.parametrize(
    ("full", "first", "last"),
    [("Testy Middle Synthpatient", "Testy Middle", "Synthpatient"), ("李小龙", "", "李小龙")],
)
def test_name_split_from_full_name_when_no_parts(full: str, first: str, last: str) -> None:
    payload = created(A)
    payload["payload"]["responses"]["name"] = {"label": "your_name", "value": full}
    attendee = payload["payload"]["attendees"][0]
    attendee.update(name=full, firstName=None, lastName=None)
    result = Held().feed(payload)
    event = event_of(result)
    assert (event.patient.first_name, event.patient.last_name, event.patient.full_name) == (first, last, full)
    assert result.notes == ("patient name split from the full name",)


@pytest.mark.parametrize(
    ("location", "metadata", "kind", "url"),
    [
        ("Room 1, 1 Synthetic Way", {}, LocationKind.IN_PERSON, None),
        ("integrations:daily", {"videoCallUrl": "https://app.cal.com/video/x"}, LocationKind.TELEHEALTH, "https://app.cal.com/video/x"),
        ("integrations:zoom", {}, LocationKind.TELEHEALTH, None),
        ("https://meet.example/abc", {}, LocationKind.TELEHEALTH, "https://meet.example/abc"),
        ("+1 (555) 555-0199", {}, LocationKind.PHONE, None),
        ("", {}, LocationKind.IN_PERSON, None),  # empty string: the booker's choice (inPerson) decides
    ],
)
def test_location_kinds(location: str, metadata: dict[str, str], kind: LocationKind, url: str | None) -> None:
    event = event_of(Held().feed(created(A, location=location, metadata=metadata)))
    assert (event.location.kind, event.location.url) == (kind, url)


@pytest.mark.parametrize(
    ("by", "actor"),
    [(PATIENT["email"].upper(), "attendee"), (ORGANIZER["email"], "organizer"), ("frontdesk@clinic.example", "api"),
     (DROP, "attendee")],
)
def test_cancel_actor(by: Any, actor: str) -> None:
    body = cancelled(A)
    if by is DROP:
        body["payload"].pop("cancelledBy")
    else:
        body["payload"]["cancelledBy"] = by
    event = event_of(Held().feed(body))
    assert event.actor == actor
    assert "@" not in json.dumps({k: v for k, v in event.to_dict().items() if k not in ("patient", "provider", "ical_uid")})


def test_team_member_counts_as_organizer() -> None:
    team = {"id": 55, "name": "Synthetic Clinic", "members": [{"email": "colleague@clinic.example"}]}
    event = event_of(Held().feed(cancelled(A, team=team, cancelled_by="colleague@clinic.example")))
    assert (event.actor, event.team_id, event.team_name) == ("organizer", 55, "Synthetic Clinic")


@pytest.mark.parametrize("bad_zone", ["Mars/Olympus_Mons", "America", "x" * 5000, None])
def test_missing_organizer_zone_falls_back_with_note(bad_zone: str | None) -> None:
    org = {**ORGANIZER, "timeZone": bad_zone}
    result = Held().feed(created(A, organizer=org))  # the factory's attendee shares the bad zone
    assert event_of(result).timezone == "UTC"
    assert result.notes == ("no usable time zone: UTC assumed",)
    body = created(A, organizer=org)
    body["payload"]["attendees"][0]["timeZone"] = "Europe/Berlin"
    result = Held().feed(body)
    assert event_of(result).timezone == "Europe/Berlin"
    assert result.notes == ("organizer.timeZone missing or unknown: attendee zone used",)


# --- quarantine and ignore ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body: not valid JSON"),
        (compact(created(A, startTime=DROP)), "payload.startTime: missing"),
        (compact(created(A, status="AWAITING_HOST")), "payload.status: unsupported value"),
        (compact(created(A, bookingId="five")), "payload.bookingId: int_parsing"),
        (compact(created(A, attendees=[{"email": 42}])), "payload.attendees[0].email: string_type"),
        (compact(no_show(A) | {"payload": {"bookingUid": A, "attendees": [{"email": "x@example.com"}]}}),
         "payload.attendees[0].noShow: missing"),
    ],
)
def test_quarantined_with_field_path(body: bytes, reason: str) -> None:
    result = Held().feed(body)
    assert (result.disposition, result.reason, result.event, result.state) == ("quarantined", reason, None, None)


def test_ping_ignored() -> None:
    result = Held().feed(envelope("PING", {"type": "Test"}))
    assert (result.disposition, result.event) == ("ignored", None)


# --- JSON round trips the store relies on -------------------------------------------------


def test_state_and_event_round_trip() -> None:
    held = Held()
    held.feed(load_sample("booking_created"))
    result = held.feed(load_sample("booking_rescheduled"))
    assert result.state is not None and result.event is not None
    again = AppointmentState.from_dict(json.loads(json.dumps(result.state.to_dict())))
    assert again == result.state
    assert AppointmentEvent.from_dict(json.loads(json.dumps(result.event.to_dict()))) == result.event


def test_state_json_with_the_event_spliced_in_equals_the_plain_encoding() -> None:
    held = Held()
    held.feed(load_sample("booking_created"))
    result = held.feed(load_sample("booking_rescheduled"))
    assert result.state is not None and result.state.last_event is result.event
    assert result.event is not None
    event_json = json.dumps(result.event.to_dict())
    assert result.state.to_json(event_json) == json.dumps(result.state.to_dict())
    assert result.state.to_json() == json.dumps(result.state.to_dict())
    empty = dataclasses.replace(result.state, last_event=None)
    assert json.loads(empty.to_json(event_json))["last_event"] is None


def test_reasons_and_notes_carry_no_phi() -> None:
    held = Held()
    results = [
        held.feed(created(A, dob="31/12/1990", extra_answers={"allergyList": "y" * 90})),
        held.feed(created(A, startTime="tomorrow")),
        held.feed(cancelled(B, cancelled_by=PATIENT["email"])),
        held.feed(created(B)),
        held.feed(no_show(C)),
        held.feed(no_show(A, email="guest.synth@example.com")),
    ]
    text = json.dumps([[r.reason, list(r.notes)] for r in results])
    assert any(r.notes for r in results) and all(r.reason or r.notes or r.event for r in results)
    for secret in (*PATIENT.values(), "1990", "guest.synth", "Synthpatient"):
        assert secret not in text


def test_null_names_are_tolerated() -> None:
    body = created(A)
    body["payload"]["attendees"][0]["name"] = None
    body["payload"]["organizer"]["name"] = None
    event = event_of(Held().feed(body))
    assert (event.patient.first_name, event.patient.full_name, event.provider.name) == ("Testy", "Testy Synthpatient", "")
