"""Routing tables: fan-out, unrouted, pending filter, reschedule styles, never-sent, unmapped."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest

from engine.appointments.model import (
    AppointmentEvent, EventKind, EventType, Location, LocationKind, Patient, Provider,
)
from engine.channels.models import Channel
from engine.config.outbound import Config, load_config
from engine.channels.routing import OutboundMessage, route
from engine.hl7.render import default_template
from tests.conftest import REPO

NOW = datetime(2026, 2, 20, 15, 42, 17, tzinfo=timezone.utc)
A, B = "abHAVhYH1N5x7DhEZEAXYQ", "6dCMMeBGWbcivYYNjCcnDs"


def make_event(kind: EventKind = EventKind.NEW, **over: Any) -> AppointmentEvent:
    """The Cal.com sample story as events (synthetic patient Ada Testpatient)."""
    start = datetime(2026, 3, 10, 18, 0, tzinfo=timezone.utc)
    base: dict[str, Any] = dict(
        kind=kind, appointment_id=A, booking_uid=A,
        trigger={EventKind.NEW: "BOOKING_CREATED", EventKind.RESCHEDULE: "BOOKING_RESCHEDULED",
                 EventKind.MODIFICATION: "BOOKING_UPDATED", EventKind.CANCEL: "BOOKING_CANCELLED",
                 EventKind.NO_SHOW: "BOOKING_NO_SHOW_UPDATED", EventKind.NO_SHOW_WITHDRAWN: "BOOKING_NO_SHOW_UPDATED",
                 EventKind.IGNORED: "MEETING_ENDED"}[kind],
        status="CANCELLED" if kind is EventKind.CANCEL else "ACCEPTED",
        start=start, end=start + timedelta(minutes=45), timezone="America/New_York",
        patient=Patient(first_name="Ada", last_name="Testpatient", full_name="Ada Testpatient",
                        email="ada.testpatient@example.com", phone="+15555550123", dob=date(1984, 7, 12),
                        sex="female"),
        provider=Provider(calcom_user_id=4211, name="Dr. Grace Testdoctor", username="grace-testdoctor",
                          email="grace.testdoctor@clinic.example"),
        location=Location(kind=LocationKind.IN_PERSON, raw="Suite 210, 100 Example Medical Plaza"),
        event_type=EventType(id=731042, slug="new-patient-visit", title="New Patient Visit", length_minutes=45),
        answers={"dateOfBirth": "1984-07-12", "patientType": "new"},
    )
    if kind is EventKind.RESCHEDULE:
        base.update(booking_uid=B, previous_booking_uid=A, previous_start=start,
                    previous_end=start + timedelta(minutes=45),
                    start=start + timedelta(days=2), end=start + timedelta(days=2, minutes=45))
    base.update(over)
    return AppointmentEvent(**base)


def telehealth(kind: EventKind = EventKind.NEW, **over: Any) -> AppointmentEvent:
    fields: dict[str, Any] = dict(location=Location(kind=LocationKind.TELEHEALTH, raw="integrations:daily"),
                                  event_type=EventType(id=731043, slug="telehealth-follow-up"))
    return make_event(kind, **{**fields, **over})


def physio(kind: EventKind = EventKind.NEW, **over: Any) -> AppointmentEvent:
    fields: dict[str, Any] = dict(provider=Provider(calcom_user_id=4230, username="pat-testtherapist"),
                                  event_type=EventType(id=731050, slug="physio-assessment"))
    return make_event(kind, **{**fields, **over})


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "channels")


def with_channel(config: Config, name: str, **changes: Any) -> Config:
    """The example config with one channel's settings changed (nested keys as dotted paths)."""
    data = config.channel(name).model_dump()
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    channel = Channel.model_validate(data)
    channels = tuple(channel if c.name == name else c for c in config.channels)
    templates = dict(config.templates)
    templates[name] = default_template(channel.hl7.version)
    return replace(config, channels=channels, templates=MappingProxyType(templates))


def run(event: AppointmentEvent, config: Config, has: bool | set[str] = False) -> tuple[list[OutboundMessage], Any]:
    counter = itertools.count(1)
    sent = (lambda d, a: d in has) if isinstance(has, set) else (lambda d, a: has)
    result = route(event, config, destination_has=sent, make_control_id=lambda: f"CID{next(counter):05d}", now=NOW)
    return result.messages, result


def summary(messages: list[OutboundMessage]) -> list[tuple[str, str]]:
    return [(m.channel, m.trigger) for m in messages]


def field(er7: str, segment: str, number: int) -> str:
    for seg in er7.split("\r"):
        if seg.startswith(segment + "|"):
            parts = seg.split("|")
            return parts[number - 1] if segment == "MSH" else parts[number]
    raise AssertionError(f"no {segment}")


# --- tables --------------------------------------------------------------------------------

FAN_OUT = [
    # (event factory, destination_has, expected (channel, trigger) list)
    ("in person family medicine", make_event, False,
     [("family-medicine", "S12"), ("main-street-front-desk", "S12")]),
    ("telehealth family medicine", telehealth, False, [("family-medicine", "S12")]),
    ("physiotherapy in person", physio, False, [("physiotherapy", "S12")]),
    ("reschedule, both have it", lambda: make_event(EventKind.RESCHEDULE), True,
     [("family-medicine", "S13"), ("main-street-front-desk", "S14")]),
    ("modification", lambda: make_event(EventKind.MODIFICATION), True,
     [("family-medicine", "S14"), ("main-street-front-desk", "S14")]),
    ("cancel", lambda: make_event(EventKind.CANCEL), True,
     [("family-medicine", "S15"), ("main-street-front-desk", "S15")]),
    ("no-show: the legacy channel does not send S26", lambda: make_event(EventKind.NO_SHOW), True,
     [("family-medicine", "S26")]),
    ("no-show withdrawn -> S14", lambda: make_event(EventKind.NO_SHOW_WITHDRAWN), True,
     [("family-medicine", "S14")]),
    ("new for an appointment the EHR has (pending confirmed) -> S14", make_event, True,
     [("family-medicine", "S14"), ("main-street-front-desk", "S14")]),
]


@pytest.mark.parametrize("label,factory,has,expected", FAN_OUT, ids=[r[0] for r in FAN_OUT])
def test_fan_out_table(config: Config, label: str, factory: Any, has: bool, expected: list[tuple[str, str]]) -> None:
    messages, result = run(factory(), config, has)
    assert summary(messages) == expected
    assert not result.unrouted
    assert all(m.error is None for m in messages), [m.error for m in messages]
    for m in messages:
        assert m.er7.startswith("MSH|") and m.message_type == f"SIU^{m.trigger}"
        assert field(m.er7, "MSH", 10) == m.control_id
        assert m.destination == config.channel(m.channel).destination
        assert m.appointment_id == A and m.lane_key == A


UNROUTED = [
    ("unknown event type: no specialty", make_event(event_type=EventType(id=999, slug="dentistry"))),
    ("physio by telehealth: physio channel is in person only",
     physio(location=Location(kind=LocationKind.TELEHEALTH, raw="integrations:daily"))),
]


@pytest.mark.parametrize("label,event", UNROUTED, ids=[r[0] for r in UNROUTED])
def test_unrouted(config: Config, label: str, event: AppointmentEvent) -> None:
    messages, result = run(event, config)
    assert result.unrouted and messages == [] and result.skipped == []


def test_team_gives_the_specialty(config: Config) -> None:
    event = physio(event_type=EventType(id=123, slug="unlisted"), team_id=88)
    assert summary(run(event, config)[0]) == [("physiotherapy", "S12")]


def test_disabled_channel_takes_nothing(config: Config) -> None:
    cfg = with_channel(config, "main-street-front-desk", enabled=False)
    assert summary(run(make_event(), cfg)[0]) == [("family-medicine", "S12")]


def test_match_rules_on_organizer_and_event_type(config: Config) -> None:
    cfg = with_channel(config, "family-medicine", **{"match.organizers": ("grace-testdoctor",),
                                                     "match.event_types": ("731043",)})
    assert summary(run(telehealth(), cfg)[0]) == [("family-medicine", "S12")]
    assert summary(run(make_event(), cfg)[0]) == [("main-street-front-desk", "S12")]  # 731042 filtered
    other = telehealth(provider=Provider(calcom_user_id=9999, username="someone-else"))
    assert run(other, cfg)[1].unrouted


def test_pending_tentative_or_wait(config: Config) -> None:
    messages, result = run(make_event(status="PENDING", trigger="BOOKING_REQUESTED"), config)
    assert summary(messages) == [("family-medicine", "S12")]
    er7 = messages[0].er7
    assert field(er7, "SCH", 25) == "Pending^Pending^HL70278"
    assert field(er7, "SCH", 8).startswith("Tentative^")
    assert result.skipped == [("main-street-front-desk", "pending confirmation (channel waits)")]


NEVER_SENT = [
    # kind, expected family-medicine outcome when the destination never got an S12
    (EventKind.RESCHEDULE, "S12"),
    (EventKind.MODIFICATION, "S12"),
    (EventKind.CANCEL, "never sent: nothing to cancel"),
    (EventKind.NO_SHOW, "never sent: no appointment to mark"),
]


@pytest.mark.parametrize("kind,expected", NEVER_SENT)
def test_never_sent_rule(config: Config, kind: EventKind, expected: str) -> None:
    messages, result = run(make_event(kind), config, has=False)
    fm = [m for m in messages if m.channel == "family-medicine"]
    if expected.startswith("S"):
        assert [m.trigger for m in fm] == [expected]
        assert field(fm[0].er7, "SCH", 1) == f"{A}^CALCOM"  # stable id even for the late S12
    else:
        assert fm == [] and ("family-medicine", expected) in result.skipped


def test_never_sent_is_asked_per_destination(config: Config) -> None:
    messages, _ = run(make_event(EventKind.RESCHEDULE), config, has={"ehr-main"})
    assert summary(messages) == [("family-medicine", "S13"), ("main-street-front-desk", "S12")]


@pytest.mark.parametrize("style,expected", [("S13", ["S13"]), ("S14", ["S14"]), ("S15+S12", ["S15", "S12"])])
def test_reschedule_styles(config: Config, style: str, expected: list[str]) -> None:
    cfg = with_channel(config, "family-medicine", **{"hl7.reschedule_as": style})
    messages = [m for m in run(make_event(EventKind.RESCHEDULE), cfg, has=True)[0] if m.channel == "family-medicine"]
    assert [m.trigger for m in messages] == expected
    placers = [field(m.er7, "SCH", 1) for m in messages]
    if style == "S15+S12":
        assert placers == [f"{A}^CALCOM", f"{B}^CALCOM"]  # S15 of the old booking, S12 of the new
        assert field(messages[0].er7, "SCH", 25).startswith("Cancelled")
        assert field(messages[0].er7, "AIS", 4) == "20260310140000-0400"  # the old slot
        assert field(messages[1].er7, "AIS", 4) == "20260312140000-0400"  # the new slot
        assert len({m.control_id for m in messages}) == 2
    else:
        assert placers == [f"{A}^CALCOM"]


def test_s15_plus_s12_channel_names_the_current_booking_later(config: Config) -> None:
    cfg = with_channel(config, "family-medicine", **{"hl7.reschedule_as": "S15+S12"})
    cancel_b = make_event(EventKind.CANCEL, booking_uid=B)
    fm = [m for m in run(cancel_b, cfg, has=True)[0] if m.channel == "family-medicine"]
    assert field(fm[0].er7, "SCH", 1) == f"{B}^CALCOM"
    other = [m for m in run(cancel_b, config, has=True)[0] if m.channel == "family-medicine"]
    assert field(other[0].er7, "SCH", 1) == f"{A}^CALCOM"


def test_no_shows_switch(config: Config) -> None:
    cfg = with_channel(config, "family-medicine", **{"filters.no_shows": False})
    messages, result = run(make_event(EventKind.NO_SHOW), cfg, has=True)
    assert messages == []
    assert ("family-medicine", "no-shows not sent on this channel") in result.skipped


def test_meeting_triggers_are_ignored(config: Config) -> None:
    messages, result = run(make_event(EventKind.IGNORED), config, has=True)
    assert messages == [] and not result.unrouted
    assert {c for c, _ in result.skipped} == {"family-medicine", "main-street-front-desk"}
    assert all(r == "ignored trigger MEETING_ENDED" for _, r in result.skipped)


def test_unmapped_provider_is_an_error_naming_the_key_not_the_patient(config: Config) -> None:
    event = make_event(provider=Provider(calcom_user_id=5555, username="new-doctor", name="Dr New"))
    messages, _ = run(event, config)
    assert [m.channel for m in messages] == ["family-medicine", "main-street-front-desk"]
    for m in messages:
        assert m.error is not None and "5555" in m.error and "new-doctor" in m.error
        assert "Ada" not in m.error and "Testpatient" not in m.error
        assert m.er7 == "" and m.payload == b""


def test_unmapped_location_error_or_raw(config: Config) -> None:
    event = make_event(location=Location(kind=LocationKind.PHONE, raw="+15555550199"))
    fm = [m for m in run(event, config)[0] if m.channel == "family-medicine"][0]
    assert fm.error == "no maps.locations entry for location kind 'phone'"
    cfg = with_channel(config, "family-medicine", **{"unmapped.location": "raw", "unmapped.provider": "raw"})
    event = replace(event, provider=Provider(calcom_user_id=5555, name="Dr New"))
    fm = [m for m in run(event, cfg)[0] if m.channel == "family-medicine"][0]
    assert fm.error is None
    assert field(fm.er7, "AIL", 3) == "+15555550199"
    assert field(fm.er7, "AIP", 3) == "5555^Dr New"


def test_unmapped_event_type_error_when_asked(config: Config) -> None:
    cfg = with_channel(config, "family-medicine", **{"unmapped.event_type": "error",
                                                    "match.specialties": ()})
    event = telehealth(event_type=EventType(id=731099, slug="brand-new"))
    fm = [m for m in run(event, cfg)[0] if m.channel == "family-medicine"][0]
    assert fm.error == "no maps.event_types entry for event type 731099 (brand-new)"


@pytest.mark.parametrize("lane,expected", [("appointment", A), ("destination", "*")])
def test_lane_keys(config: Config, lane: str, expected: str) -> None:
    dests = dict(config.destinations)
    dests["ehr-main"] = dests["ehr-main"].model_copy(update={"lane_key": lane})
    cfg = replace(config, destinations=MappingProxyType(dests))
    fm = [m for m in run(make_event(), cfg)[0] if m.channel == "family-medicine"][0]
    assert fm.lane_key == expected


def test_patient_lane_key_is_our_patient_id(config: Config) -> None:
    dests = dict(config.destinations)
    dests["ehr-main"] = dests["ehr-main"].model_copy(update={"lane_key": "patient"})
    cfg = replace(config, destinations=MappingProxyType(dests))
    fm = [m for m in run(make_event(), cfg)[0] if m.channel == "family-medicine"][0]
    assert fm.lane_key.startswith("P") and fm.lane_key in field(fm.er7, "PID", 3)
