"""Every operator action, as a method of one service bound to a store and the actor.

The CLI verbs parse arguments and print what these return; bulk actions and an HTTP API call
the same methods. Each action works in a short transaction; a running engine picks the change
up within a second. Actions that change something are written to the audit trail with the
actor's name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from engine.operator.results import (
    AuditEntry,
    DeadLetter,
    DestinationDepth,
    Forced,
    InboundJob,
    Lane,
    Message,
    QuarantinedEvent,
    Reprocessed,
    Resent,
)
from engine.store import requeue
from engine.store.base import QUARANTINED
from engine.store.roles import OperatorStore, ReconcileStore

if TYPE_CHECKING:
    from engine.calcom.api import CalcomApi
    from engine.reconcile import ReconcileSummary


class ServiceStore(OperatorStore, ReconcileStore, Protocol):
    """What the operator service uses of a store: the operator queries and actions, and
    feeding reconciled bookings in."""


class OperatorService:
    def __init__(self, store: ServiceStore, actor: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.actor = actor  # who the audit trail names
        self.clock = clock

    # ------------------------------------------------------------------ queues and messages
    async def queue(self) -> list[DestinationDepth]:
        rows = await self.store.queue_summary(self.clock())
        return [DestinationDepth.from_row(r) for r in rows]

    async def lanes(self, destination: str | None = None, limit: int = 50) -> list[Lane]:
        return [Lane.from_row(r) for r in await self.store.lanes(destination, limit)]

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return [DeadLetter.from_row(r) for r in await self.store.dead_letters(limit)]

    async def message(self, message_id: int) -> Message | None:
        row = await self.store.message(message_id)
        return None if row is None else Message.from_row(row)

    # ------------------------------------------------------------------ sending again
    async def resend(self, message_id: int, *, force: bool = False) -> Resent:
        """Queue a message again with its original bytes and MSH-10."""
        try:
            queued = await self.store.resend(message_id, self.actor)
        except requeue.LaterChangesSent as refused:
            if not force:
                return Resent(message_id, False, refused=True, later=refused.later)
            queued = await self.store.resend(message_id, self.actor, force=True)
            return Resent(message_id, queued, forced=True, later=refused.later)
        return Resent(message_id, queued)

    async def reprocess(self, message_id: int, channels_dir: str | Path, *,
                        force: bool = False) -> Reprocessed:
        """Render a message again with today's channel files (after a mapping fix): it keeps
        its place in its lane and gets a new MSH-10, since its content changed."""
        from engine.appointments.model import AppointmentEvent
        from engine.channels.routing import render_message
        from engine.config.files import ConfigError
        from engine.config.outbound import load_config
        from engine.hl7.controlid import new_control_id

        row = await self.store.message(message_id)
        if row is None:
            return Reprocessed(message_id, "no_message")
        if row["status"] == "acked":
            return Reprocessed(message_id, "acked")
        try:
            config = load_config(channels_dir)
        except ConfigError as exc:
            return Reprocessed(message_id, "config_problems", detail=str(exc))
        channel = next((c for c in config.channels if c.name == row["channel"]), None)
        if channel is None:
            return Reprocessed(message_id, "channel_gone", channel=row["channel"])
        event = AppointmentEvent.from_dict(json.loads(row["event_json"]))
        trigger = row["message_type"].split("^")[1]
        rendered = render_message(config, channel, event, trigger=trigger,
                                  control_id=new_control_id(), now=datetime.now(UTC))
        if rendered.error:
            return Reprocessed(message_id, "render_failed", detail=rendered.error)

        facts = {"channel": row["channel"], "was_control_id": row["control_id"]}
        passed: list[Forced] = []
        while True:  # a second time only with force, after the refusal it passes over
            try:
                ok = await self.store.replace_payload(
                    message_id, rendered.control_id, rendered.payload, self.actor,
                    force=bool(passed))
                break
            except requeue.InFlight as refused:  # never forced: its bytes may be on the wire
                return Reprocessed(message_id, "in_flight", detail=str(refused),
                                   forced=passed, **facts)
            except requeue.MayBeHeld as refused:
                if not force:
                    return Reprocessed(message_id, "may_be_held", held=refused.held,
                                       later=refused.later, forced=passed, **facts)
                passed.append(Forced("may_be_held", refused.held + refused.later))
            except requeue.LaterChangesSent as refused:
                if not force:
                    return Reprocessed(message_id, "later_changes", later=refused.later,
                                       forced=passed, **facts)
                passed.append(Forced("later_changes", refused.later))
        if not ok:
            return Reprocessed(message_id, "acked_meanwhile", forced=passed, **facts)
        return Reprocessed(message_id, "rendered", control_id=rendered.control_id,
                           forced=passed, **facts)

    # ------------------------------------------------------------------ lanes and channels
    async def release(self, lane_id: int) -> bool:
        """Let a lane held by a dead letter move on (the dead letter is skipped)."""
        return await self.store.release_lane(lane_id, self.actor)

    async def pause(self, channel: str) -> None:
        await self.store.set_channel_paused(channel, True, self.actor)

    async def resume(self, channel: str) -> None:
        await self.store.set_channel_paused(channel, False, self.actor)

    # ------------------------------------------------------------------ quarantine
    async def quarantined(self, limit: int = 1000) -> list[QuarantinedEvent]:
        return [QuarantinedEvent(e.id, e.source, e.received_at, e.trigger, e.reason)
                for e in await self.store.events(QUARANTINED, limit)]

    async def requeue_quarantined(self, ids: Sequence[int] = (),
                                  limit: int = 1000) -> list[int]:
        """Queue quarantined events for processing again (all of them, up to `limit`, when
        `ids` is empty); returns those queued."""
        ids = list(ids) or [e.id for e in await self.store.events(QUARANTINED, limit)]
        return [i for i in ids if await self.store.requeue_event(i, self.actor)]

    # ------------------------------------------------------------------ audit
    async def audit(self, appointment: str | None = None, since: float | None = None,
                    limit: int = 1000) -> list[AuditEntry]:
        """The audit trail; `appointment` may be any booking uid of it (each reschedule
        makes one)."""
        if appointment:
            states = await self.store.appointment_states([appointment])
            if appointment in states:
                appointment = json.loads(states[appointment]).get("appointment_id", appointment)
        rows = await self.store.audit(appointment, since, limit)
        return [AuditEntry.from_row(r) for r in rows]

    # ------------------------------------------------------------------ Cal.com
    async def reconcile(self, api: CalcomApi, since: datetime | None, source: str = "default",
                        *, set_watermark: bool = False,
                        progress: Callable[[ReconcileSummary], None] | None = None,
                        ) -> tuple[datetime, ReconcileSummary] | None:
        """Feed what Cal.com's webhooks missed since `since` (None: the periodic job's
        watermark) into the pipeline; None when there is no watermark yet. Raises CalcomError
        when Cal.com cannot be read."""
        from engine.reconcile import reconcile_once

        if since is None:
            since = await self.store.reconcile_watermark(source)
            if since is None:
                return None
        summary = await reconcile_once(api, self.store, since=since, source=source,
                                       progress=progress)
        if set_watermark and summary.watermark is not None:
            await self.store.set_reconcile_watermark(source, summary.watermark)
        return since, summary

    # ------------------------------------------------------------------ inbound
    async def inbound_jobs(self, status: str | None = None,
                           limit: int = 100) -> list[InboundJob]:
        return [InboundJob.from_row(r) for r in await self.store.inbound_jobs(status, limit)]

    async def inbound_retry(self, job_id: int) -> bool:
        """Put a dead inbound job back at the head of its queue."""
        return await self.store.inbound_retry_job(job_id, self.actor)
