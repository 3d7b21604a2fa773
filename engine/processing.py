"""From stored webhook to queued SIU: normalize, route, render, and commit it all at once.

Runs after the webhook was answered. Takes pending events in batches in arrival order; each
batch reads the appointment states it needs, applies the pure core event by event (later
events in a batch see the states earlier ones produced), and commits the event marks, the new
states, the rendered messages and the audit entries in one transaction. A crash before that
commit leaves the events pending; nothing is half done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from engine.appointments.model import AppointmentEvent
from engine.appointments.normalize import normalize
from engine.appointments.state import AppointmentState
from engine.channels.config import Config
from engine.channels.routing import route
from engine.hl7.controlid import new_control_id
from engine.metrics import Metrics
from engine.store import base
from engine.store.base import AuditEntry, NewMessage, ProcessedEvent, StoredEvent, Store

log = logging.getLogger("calhl7.processing")

_UID_KEYS = ("uid", "rescheduleUid", "bookingUid", "iCalUID", "fromReschedule")


def _uids_of(body: bytes) -> list[str]:
    """The booking uids an event may need to look up (cheap: no validation)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    payload = doc.get("payload") if isinstance(doc.get("payload"), dict) else doc
    found = [payload.get(k) for k in _UID_KEYS]
    return [u for u in found if isinstance(u, str) and u]


class Processor:
    def __init__(
        self,
        store: Store,
        config: Callable[[], Config],
        metrics: Metrics,
        on_enqueued: Callable[[set[str]], None] = lambda destinations: None,
        batch_size: int = 500,
    ) -> None:
        self.store = store
        self.config = config  # a getter: hot reload swaps what it returns
        self.metrics = metrics
        self.on_enqueued = on_enqueued
        self.batch_size = batch_size
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                handled = await self.process_once()
            except Exception:  # noqa: BLE001 - keep serving; the batch stays pending
                log.exception("processing batch failed; retrying in 1 s")
                handled = 0
                await asyncio.sleep(1)
            if handled < self.batch_size:
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=0.5)
                except TimeoutError:
                    pass

    async def process_once(self) -> int:
        events = await self.store.pending_events(self.batch_size)
        if not events:
            return 0
        uids = [u for e in events for u in _uids_of(e.body)]
        raw_states = await self.store.appointment_states(uids) if uids else {}
        states: dict[str, AppointmentState] = {
            uid: AppointmentState.from_dict(json.loads(s)) for uid, s in raw_states.items()
        }
        known_appointments = list({s.appointment_id for s in states.values()})
        holding = (
            await self.store.destinations_holding(known_appointments)
            if known_appointments else set()
        )
        config = self.config()
        results = [self._process(e, states, holding, config) for e in events]
        await self.store.commit_processed(results)
        destinations = {m.destination for r in results for m in r.messages}
        for e, r in zip(events, results, strict=True):
            for m in r.messages:
                self.metrics.messages_queued.labels(m.channel, m.destination, m.message_type).inc()
                if m.error is not None:  # unmapped code, render failure: dead from the start
                    self.metrics.messages.labels(m.channel, m.destination, m.message_type,
                                                 "dead_lettered").inc()
            _log_processed(e, r)
        if destinations:
            self.on_enqueued(destinations)
        return len(events)

    def _process(
        self,
        stored: StoredEvent,
        states: dict[str, AppointmentState],
        holding: set[tuple[str, str]],
        config: Config,
    ) -> ProcessedEvent:
        received_at = datetime.fromtimestamp(stored.received_at, UTC)
        try:
            n = normalize(stored.body, source=stored.source, received_at=received_at,
                          lookup=states.get)
        except Exception as exc:  # noqa: BLE001 - a bug or a shape we never saw: keep it
            # no traceback: validation errors can quote payload values (PHI)
            log.error("normalization failed", extra={"event_id": stored.id,
                                                     "error": type(exc).__name__})
            self.metrics.events.labels("quarantined").inc()
            return ProcessedEvent(stored.id, base.QUARANTINED,
                                  reason=f"normalization failed: {type(exc).__name__}")
        now = time.time()
        if n.disposition == "quarantined":
            self.metrics.events.labels("quarantined").inc()
            return ProcessedEvent(stored.id, base.QUARANTINED, reason=n.reason)
        notes = tuple(
            AuditEntry(at=now, kind="note", appointment_id=n.state.appointment_id if n.state
                       else None, trigger=stored.trigger, source=stored.source,
                       detail={"note": note, "event": stored.id})
            for note in n.notes
        )
        if n.state is not None:
            for uid in n.state.uids:
                states[uid] = n.state
            for uid in n.uid_links:
                states[uid] = n.state
        if n.disposition != "event" or n.event is None:
            self.metrics.events.labels(n.disposition).inc()
            return ProcessedEvent(
                stored.id, base.IGNORED if n.disposition == "ignored" else base.PROCESSED,
                reason=n.reason or n.disposition,
                appointment_id=n.state.appointment_id if n.state else None,
                appointment_state=json.dumps(n.state.to_dict()) if n.state else None,
                uid_links=dict(n.uid_links), audit=notes,
            )
        event = n.event
        result = route(
            event, config,
            destination_has=lambda dest, appt: (dest, appt) in holding,
            make_control_id=new_control_id,
            now=datetime.now(UTC),
        )
        messages = tuple(self._to_new_message(m, event, config) for m in result.messages)
        for m in messages:
            if m.error is None and m.message_type.endswith("S12"):
                holding.add((m.destination, m.appointment_id))
        self.metrics.events.labels("unrouted" if result.unrouted else "routed").inc()
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
                "skipped": [{"channel": c, "reason": r} for c, r in result.skipped],
            },
        )
        return ProcessedEvent(
            stored.id, base.PROCESSED,
            reason="unrouted" if result.unrouted else None,
            appointment_id=event.appointment_id,
            appointment_state=json.dumps(n.state.to_dict()) if n.state else None,
            uid_links=dict(n.uid_links), messages=messages, audit=(change, *notes),
        )

    @staticmethod
    def _to_new_message(m: object, event: AppointmentEvent, config: Config) -> NewMessage:
        destination = config.destinations[m.destination]  # type: ignore[attr-defined]
        return NewMessage(
            channel=m.channel,  # type: ignore[attr-defined]
            destination=m.destination,  # type: ignore[attr-defined]
            lane_key=m.lane_key,  # type: ignore[attr-defined]
            appointment_id=m.appointment_id,  # type: ignore[attr-defined]
            message_type=m.message_type,  # type: ignore[attr-defined]
            control_id=m.control_id,  # type: ignore[attr-defined]
            payload=m.payload,  # type: ignore[attr-defined]
            event_json=json.dumps(event.to_dict(), ensure_ascii=False),
            error=m.error,  # type: ignore[attr-defined]
            hold_lane=destination.ack.on_dead_letter == "hold",
        )


def _log_processed(e: StoredEvent, r: ProcessedEvent) -> None:
    """One debug line per event and per queued message, a warning for what needs an analyst;
    ids, codes and PHI-free reasons only (a quarantine reason is a field path)."""
    ids = {"event_id": e.id, "correlation_id": e.correlation_id}
    if r.state == base.QUARANTINED:
        log.warning("event quarantined", extra={**ids, "reason": r.reason})
    for m in r.messages:
        fields = {**ids, "channel": m.channel, "destination": m.destination,
                  "message_type": m.message_type, "control_id": m.control_id}
        if m.error is not None:
            log.warning("message dead at render", extra=fields)  # the error is in the store
        else:
            log.debug("message queued", extra=fields)
    if log.isEnabledFor(logging.DEBUG):
        if r.state != base.PROCESSED:
            outcome = r.state
        elif r.reason is None or r.reason == "unrouted":
            outcome = r.reason or "routed"
        else:
            outcome = "no_change"
        log.debug("event processed", extra={**ids, "outcome": outcome,
                                            "messages": len(r.messages)})
