"""Routing: which channels take an appointment event, which SIU each gets, rendered.

Pure: no I/O. The caller passes what it knows about the past (`destination_has`), how to
make control ids, and the clock, so the same inputs always give the same plan. Routing picks
the channels and looks the event up in each channel's maps; `engine.hl7.fields` turns the event
and those codes into the SIU's field values.

Per channel (every matching, enabled channel gets the event: fan-out):
    new            -> S12 (S14 if the destination already has it: a pending booking confirmed)
    reschedule     -> S13 | S14 | S15 of the old booking + S12 of the new (hl7.reschedule_as)
    modification   -> S14
    cancel         -> S15
    no_show        -> S26 (unless filters.no_shows is false)
    no_show_withdrawn -> S14 with status Booked (same switch as no-shows)
    ignored (meeting-time triggers and the like) -> skipped
A reschedule or modification the destination never got (no S12 queued) becomes an S12; a
cancel or no-show it never got is skipped ("never sent"). PENDING bookings are sent as S12
with SCH-8 Tentative and SCH-25 Pending, or skipped until confirmed (filters.pending).

SCH-1 is the stable appointment id (the first booking's uid), except for channels that take
reschedules as S15+S12: there the EHR sees a new appointment per booking, so SCH-1 is the uid of
the booking concerned (the S15 names the old uid, later events the new one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from engine.appointments.model import (
    AppointmentEvent,
    EventKind,
    EventType,
    Location,
    LocationKind,
    Patient,
    Provider,
)
from engine.channels.models import Channel, EventTypeMap
from engine.hl7.escape import apply_charset
from engine.hl7.fields import MappedCodes, MappingError, siu_context
from engine.hl7.render import SiuTemplate, TemplateError, patient_identifier
from engine.texts import quoted


class Destination(Protocol):
    """What routing reads of a destination (`engine.config.destinations.Destination`)."""

    @property
    def name(self) -> str: ...
    @property
    def codec(self) -> str: ...
    @property
    def lane_key(self) -> str: ...


class Config(Protocol):
    """What routing reads of a loaded channel directory (`engine.config.outbound.Config`)."""

    @property
    def channels(self) -> Sequence[Channel]: ...
    @property
    def destinations(self) -> Mapping[str, Destination]: ...
    @property
    def templates(self) -> Mapping[str, SiuTemplate]: ...


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    channel: str
    destination: str
    appointment_id: str  # the stable appointment id (chain root), whatever SCH-1 says
    lane_key: str
    message_type: str  # "SIU^S12"
    trigger: str  # "S12"
    control_id: str  # MSH-10
    er7: str  # as sent (after the charset rule); "" when error is set before rendering
    payload: bytes  # er7 encoded in the destination charset
    error: str | None = None  # set: straight to the error queue, never to the EHR


@dataclass(frozen=True, slots=True)
class RoutingResult:
    messages: list[OutboundMessage] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (channel, reason)
    unrouted: bool = False  # no enabled channel matched


# --- matching ------------------------------------------------------------------------------


def _location_keys(event: AppointmentEvent) -> tuple[str, ...]:
    kind = event.location.kind.value
    return (event.location.raw, kind) if event.location.raw else (kind,)


def _event_type_keys(event: AppointmentEvent) -> tuple[str, ...]:
    et = event.event_type
    return tuple(k for k in (str(et.id) if et.id is not None else None, et.slug) if k)


def _organizer_keys(event: AppointmentEvent) -> tuple[str, ...]:
    p = event.provider
    return tuple(k for k in (str(p.calcom_user_id) if p.calcom_user_id is not None else None,
                             p.username, p.email) if k)


def _team_keys(event: AppointmentEvent) -> tuple[str, ...]:
    team_id = str(event.team_id) if event.team_id is not None else None
    return tuple(k for k in (team_id, event.team_name) if k)


def _event_type_map(event: AppointmentEvent, channel: Channel) -> EventTypeMap | None:
    maps = channel.maps.event_types
    for key in _event_type_keys(event):
        if key in maps:
            return maps[key]
    return None


def specialty_of(event: AppointmentEvent, channel: Channel) -> str | None:
    """The specialty this channel's maps give the event (event type first, then team)."""
    et = _event_type_map(event, channel)
    if et is not None and et.specialty:
        return et.specialty
    for key in _team_keys(event):
        team = channel.maps.teams.get(key)
        if team is not None and team.specialty:
            return team.specialty
    return None


def channel_matches(event: AppointmentEvent, channel: Channel) -> bool:
    m = channel.match
    if m.locations and not any(k in m.locations for k in _location_keys(event)):
        return False
    if m.event_types and not any(k in m.event_types for k in _event_type_keys(event)):
        return False
    if m.organizers and not any(k in m.organizers for k in _organizer_keys(event)):
        return False
    if m.teams and not any(k in m.teams for k in _team_keys(event)):
        return False
    if m.specialties and specialty_of(event, channel) not in m.specialties:
        return False
    return True


# --- planning ------------------------------------------------------------------------------

# (trigger, which booking SCH-1 names: "appointment" | "booking" | "previous", old times?)
Step = tuple[str, str, bool]


def plan(event: AppointmentEvent, channel: Channel, already_sent: bool) -> list[Step] | str:
    """The messages one channel sends for an event, or the reason it sends none."""
    kind = event.kind
    if kind is EventKind.IGNORED:
        return f"ignored trigger {event.trigger}"
    if event.status.upper() == "PENDING" and channel.filters.pending == "wait":
        return "pending confirmation (channel waits)"
    split = channel.hl7.reschedule_as == "S15+S12"
    current = "booking" if split else "appointment"  # which uid SCH-1 carries
    if kind is EventKind.NEW:
        return [("S14" if already_sent else "S12", current, False)]
    if kind in (EventKind.RESCHEDULE, EventKind.MODIFICATION):
        if not already_sent:
            return [("S12", current, False)]
        if kind is EventKind.MODIFICATION:
            return [("S14", current, False)]
        if split:
            return [("S15", "previous", True), ("S12", "booking", False)]
        return [(channel.hl7.reschedule_as, current, False)]
    if kind is EventKind.CANCEL:
        return [("S15", current, False)] if already_sent else "never sent: nothing to cancel"
    if kind in (EventKind.NO_SHOW, EventKind.NO_SHOW_WITHDRAWN):
        if not channel.filters.no_shows:
            return "no-shows not sent on this channel"
        if not already_sent:
            return "never sent: no appointment to mark"
        return [("S26" if kind is EventKind.NO_SHOW else "S14", current, False)]
    return f"unsupported event kind {kind}"


# --- maps ------------------------------------------------------------------------------


def _provider(event: AppointmentEvent, channel: Channel, strict: bool) -> tuple[str, ...]:
    for key in _organizer_keys(event):
        if key in channel.maps.providers:
            return channel.maps.providers[key]
    p = event.provider
    if strict and channel.unmapped.provider == "error":
        # Cal.com user id and username identify the clinician, not the patient: safe to name.
        raise MappingError(f"no maps.providers entry for Cal.com user {quoted(p.calcom_user_id)}"
                           f" ({quoted(p.username or '-')})")
    return (str(p.calcom_user_id) if p.calcom_user_id is not None else (p.username or ""), p.name)


def _location(event: AppointmentEvent, channel: Channel, strict: bool) -> tuple[str, ...]:
    for key in _location_keys(event):
        if key in channel.maps.locations:
            return channel.maps.locations[key]
    if strict and channel.unmapped.location == "error":
        # The kind only: a raw location value can be a patient's home address.
        raise MappingError(
            f"no maps.locations entry for location kind {event.location.kind.value!r}"
        )
    return (event.location.raw or event.location.kind.value,)


def _visit_type(event: AppointmentEvent, channel: Channel, strict: bool) -> EventTypeMap:
    et = _event_type_map(event, channel)
    if et is not None:
        return et
    t = event.event_type
    if strict and channel.unmapped.event_type == "error":
        raise MappingError(f"no maps.event_types entry for event type {quoted(t.id)}"
                           f" ({quoted(t.slug or '-')})")
    code = t.slug or (str(t.id) if t.id is not None else "UNKNOWN")
    return EventTypeMap(visit_type=(code, t.title or code, "L"))


def mapped_codes(event: AppointmentEvent, channel: Channel, strict: bool = True) -> MappedCodes:
    """The channel's codes for the event. Raises MappingError for an unmapped key when the
    channel says so (strict); otherwise the raw Cal.com values stand in."""
    et = _visit_type(event, channel, strict)
    return MappedCodes(
        visit_type=et.visit_type,
        visit_reason=et.reason or et.visit_type,
        resources=et.resources,
        provider=_provider(event, channel, strict),
        location=_location(event, channel, strict),
    )


def _context(
    event: AppointmentEvent,
    channel: Channel,
    destination: Destination,
    *,
    trigger: str,
    placer_id: str,
    control_id: str,
    now: datetime,
    old_times: bool = False,
    strict: bool = True,
) -> dict[str, Any]:
    return siu_context(event, channel.hl7, channel.maps, mapped_codes(event, channel, strict),
                       codec=destination.codec, trigger=trigger, placer_id=placer_id,
                       control_id=control_id, now=now, old_times=old_times)


def lane_key(event: AppointmentEvent, destination: Destination) -> str:
    if destination.lane_key == "patient":
        return patient_identifier(event.patient)
    if destination.lane_key == "destination":
        return "*"
    return event.appointment_id


def render_message(
    config: Config,
    channel: Channel,
    event: AppointmentEvent,
    *,
    trigger: str,
    control_id: str,
    now: datetime,
    placer: str = "appointment",
    old_times: bool = False,
) -> OutboundMessage:
    """One SIU for one channel. Never raises for data problems: they become `error`."""
    destination = config.destinations[channel.destination]
    placer_id = {"appointment": event.appointment_id, "booking": event.booking_uid,
                 "previous": event.previous_booking_uid or event.appointment_id}[placer]
    common = dict(channel=channel.name, destination=destination.name,
                  appointment_id=event.appointment_id, lane_key=lane_key(event, destination),
                  message_type=f"SIU^{trigger}", trigger=trigger, control_id=control_id)
    try:
        ctx = _context(event, channel, destination, trigger=trigger, placer_id=placer_id,
                            control_id=control_id, now=now, old_times=old_times)
        er7 = config.templates[channel.name].render(ctx)
    except (MappingError, TemplateError) as exc:  # their messages name keys, never values
        return OutboundMessage(er7="", payload=b"", error=str(exc), **common)
    except Exception as exc:  # noqa: BLE001 - one bad message must not stop the fan-out
        # Only the type: a failing filter's message could quote patient data.
        return OutboundMessage(
            er7="", payload=b"", error=f"render failed: {type(exc).__name__}", **common
        )
    er7, payload, error = apply_charset(er7, destination.codec, channel.hl7.unencodable)
    return OutboundMessage(er7=er7, payload=payload, error=error, **common)


def route(
    event: AppointmentEvent,
    config: Config,
    *,
    destination_has: Callable[[str, str], bool],
    make_control_id: Callable[[], str],
    now: datetime,
) -> RoutingResult:
    """Fan an event out to every matching enabled channel, rendered and ready to queue."""
    result = RoutingResult()
    matched = False
    for channel in config.channels:
        if not channel.enabled or not channel_matches(event, channel):
            continue
        matched = True
        steps = plan(event, channel, destination_has(channel.destination, event.appointment_id))
        if isinstance(steps, str):
            result.skipped.append((channel.name, steps))
            continue
        for trigger, placer, old_times in steps:
            result.messages.append(render_message(config, channel, event, trigger=trigger,
                                                  control_id=make_control_id(), now=now,
                                                  placer=placer, old_times=old_times))
    if not matched:
        return RoutingResult(unrouted=True)
    return result


def probe_message(config: Config, channel: Channel) -> str:
    """ER7 of a synthetic booking rendered with the channel's template and maps (unmapped keys
    pass raw). Raises whatever the template raises."""
    start = datetime(2030, 1, 7, 15, 0, tzinfo=ZoneInfo("UTC"))
    event = AppointmentEvent(
        kind=EventKind.NEW, appointment_id="probe", booking_uid="probe", trigger="BOOKING_CREATED",
        status="ACCEPTED", start=start, end=start.replace(minute=30), timezone="UTC",
        patient=Patient(first_name="Probe", last_name="Example", email="probe@example.invalid"),
        provider=Provider(calcom_user_id=0, name="Probe"),
        location=Location(kind=LocationKind.OTHER),
        event_type=EventType(id=0, slug="probe"), answers={n: "probe" for n in channel.hl7.notes},
    )
    destination = config.destinations[channel.destination]
    ctx = _context(event, channel, destination, trigger="S12", placer_id="probe",
                        control_id="PROBE", now=start, strict=False)
    return config.templates[channel.name].render(ctx)


def probe_render(config: Config, channel: Channel) -> str | None:
    """The error a channel's template raises on a synthetic booking, or None."""
    if channel.destination not in config.destinations:
        return None  # reported already as an unknown destination
    try:
        probe_message(config, channel)
    except TemplateError as exc:
        return str(exc)
    except Exception as exc:  # a template can fail in many ways (filters, types); report the kind
        return f"template failed on a sample booking: {type(exc).__name__}: {exc}"
    return None
