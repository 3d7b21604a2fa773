"""The pure core over a batch: normalize, route, render each stored webhook, in order.

No I/O: the inputs come in a `Batch` (read by `inputs.gather_inputs`), and the caller commits
the `BatchResult`. Later events of a batch see the states earlier ones produced.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from engine.appointments.normalize import normalize
from engine.appointments.state import AppointmentState
from engine.channels.routing import OutboundMessage, route
from engine.config.outbound import Config
from engine.hl7.controlid import new_control_id
from engine.store import base
from engine.store.base import AuditEntry, NewMessage, ProcessedEvent, StoredEvent


@dataclass(frozen=True, slots=True)
class Batch:
    """What the pure core needs for one batch, read from the store beforehand (picklable)."""

    events: tuple[StoredEvent, ...]
    states: dict[str, str]  # booking uid -> appointment state JSON
    holding: frozenset[tuple[str, str]]  # (destination, appointment) ever queued an S12
    echo: dict[int, frozenset[str]]  # event id -> destinations not to send to (EHR-made)


@dataclass(frozen=True, slots=True)
class BatchResult:
    results: tuple[ProcessedEvent, ...]
    outcomes: tuple[str, ...]  # per event: routed, unrouted, no_change, ignored, quarantined
    # what the commit will write that the next batch must see before it lands: the new
    # states by booking uid, and which (destination, appointment) got an S12
    states: dict[str, str] = field(default_factory=dict)
    holding: frozenset[tuple[str, str]] = frozenset()




def process_batch(batch: Batch, config: Config, now: float | None = None) -> BatchResult:
    """The pure core over a batch: normalize, route, render. Later events of a batch see the
    states earlier ones produced. No I/O: the caller reads the inputs and commits the output."""
    now = time.time() if now is None else now  # one time for the whole batch
    states = {uid: AppointmentState.from_dict(json.loads(s)) for uid, s in batch.states.items()}
    holding = set(batch.holding)
    results, outcomes = [], []
    written: dict[str, str] = {}
    for stored in batch.events:
        result, outcome, uids = _process_one(stored, states, holding, config,
                                             batch.echo.get(stored.id, frozenset()), now)
        results.append(result)
        outcomes.append(outcome)
        if result.appointment_state is not None:
            written.update(dict.fromkeys(uids, result.appointment_state))
    queued_s12 = frozenset((m.destination, m.appointment_id) for r in results
                           for m in r.messages if m.message_type.endswith("S12"))
    return BatchResult(tuple(results), tuple(outcomes), written, queued_s12)


def _process_one(
    stored: StoredEvent,
    states: dict[str, AppointmentState],
    holding: set[tuple[str, str]],
    config: Config,
    echo_to: frozenset[str],
    now: float,
) -> tuple[ProcessedEvent, str, tuple[str, ...]]:
    """One event: its results, its outcome, and the booking uids whose state it wrote."""
    received_at = datetime.fromtimestamp(stored.received_at, UTC)
    try:
        n = normalize(stored.body, source=stored.source, received_at=received_at,
                      lookup=states.get)
    except Exception as exc:  # noqa: BLE001 - a bug or a shape we never saw: keep it
        return ProcessedEvent(stored.id, base.QUARANTINED,
                              reason=f"normalization failed: {type(exc).__name__}"), \
            "quarantined", ()
    if n.disposition == "quarantined":
        return ProcessedEvent(stored.id, base.QUARANTINED, reason=n.reason), "quarantined", ()
    notes = tuple(
        AuditEntry(at=now, kind="note", appointment_id=n.state.appointment_id if n.state
                   else None, trigger=stored.trigger, source=stored.source,
                   detail={"note": note, "event": stored.id})
        for note in n.notes
    )
    written: tuple[str, ...] = ()
    if n.state is not None:
        written = (*n.state.uids, *n.uid_links)
        for uid in written:
            states[uid] = n.state
    # ASCII JSON: a lone surrogate cannot break the row. The event is encoded once: it is
    # also the state's last event
    event = n.event if n.disposition == "event" else None
    event_json = json.dumps(event.to_dict()) if event is not None else None
    state_json = None
    if n.state is not None:
        state_json = n.state.to_json(event_json if n.state.last_event is event else None)
    if event is None or event_json is None:
        return ProcessedEvent(
            stored.id, base.IGNORED if n.disposition == "ignored" else base.PROCESSED,
            reason=n.reason or n.disposition,
            appointment_id=n.state.appointment_id if n.state else None,
            appointment_state=state_json, uid_links=dict(n.uid_links), audit=notes,
        ), n.disposition, written
    try:
        result = route(
            event, config,
            destination_has=lambda dest, appt: (dest, appt) in holding,
            make_control_id=new_control_id,
            now=datetime.fromtimestamp(now, UTC),
        )
    except Exception as exc:  # noqa: BLE001 - one poison event must not stop the others
        return ProcessedEvent(stored.id, base.QUARANTINED,
                              reason=f"routing failed: {type(exc).__name__}"), "quarantined", ()
    skipped = [{"channel": c, "reason": r} for c, r in result.skipped]
    routed = [m for m in result.messages if m.destination not in echo_to]
    skipped += [{"channel": m.channel, "reason": "made by this EHR: no echo"}
                for m in result.messages if m.destination in echo_to]
    messages = tuple(_to_new_message(m, event_json, config) for m in routed)
    for m in messages:
        if m.message_type.endswith("S12"):  # even dead at render: it waits for a fix
            holding.add((m.destination, m.appointment_id))
    change = AuditEntry(
        at=now, kind="change", appointment_id=event.appointment_id, actor=event.actor,
        trigger=event.trigger, source=event.source,
        detail={
            "event": stored.id, "kind": str(event.kind), "booking_uid": event.booking_uid,
            "occurred_at": event.occurred_at.isoformat() if event.occurred_at else None,
            "received_at": received_at.isoformat(),
            "status": event.status, "start": event.start.isoformat(),
            "end": event.end.isoformat(), "correlation_id": stored.correlation_id,
            "routed_to": sorted({m.destination for m in messages}),
            "skipped": skipped,
        },
    )
    return ProcessedEvent(
        stored.id, base.PROCESSED,
        reason="unrouted" if result.unrouted else None,
        appointment_id=event.appointment_id, appointment_state=state_json,
        uid_links=dict(n.uid_links), messages=messages, audit=(change, *notes),
    ), "unrouted" if result.unrouted else "routed", written


def _to_new_message(m: OutboundMessage, event_json: str, config: Config) -> NewMessage:
    destination = config.destinations[m.destination]
    return NewMessage(
        channel=m.channel, destination=m.destination, lane_key=m.lane_key,
        appointment_id=m.appointment_id, message_type=m.message_type,
        control_id=m.control_id, payload=m.payload, event_json=event_json, error=m.error,
        hold_lane=destination.ack.on_dead_letter == "hold",
    )
