"""The store by role: one small protocol per consumer, each implemented by both dialects.

Each consumer types its store with the role it uses and nothing more; `Store` is their union,
for the wiring (engine/app.py) that hands one store to all of them. They live here, in the
store package, and not next to each consumer, because `Store` (which `open_store` returns)
must name them all and the store may not import the packages that use it (http, delivery...).

    IntakeStore      engine/http: a webhook stored before it is answered
    ReconcileStore   engine/reconcile: missed bookings fed like webhooks, a watermark
    ProcessingStore  engine/processing: pending events in, one commit per batch out
    BatchReader      engine/processing/helper: the same reads, in a helper process
    DeliveryStore    engine/delivery: lane heads claimed with a lease, attempts recorded,
                     a destination's connection slots
    InboundStore     engine/inbound: SIU from the EHR, Cal.com jobs, no-echo origins
    OperatorStore    the operator commands (engine/operator.py, engine/inbound/cli.py)
    ClusterStore     the wiring: several nodes on one store (trivial on SQLite)

The records they take and return are in records.py and inbound_records.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from engine.store.inbound_records import (
        HeldBlock,
        InboundAccept,
        InboundJob,
        InboundMessage,
        JobOutcome,
    )
    from engine.store.records import (
        AcceptResult,
        AttemptRecord,
        IncomingWebhook,
        ProcessedEvent,
        QueuedMessage,
        StoredEvent,
    )

_T = TypeVar("_T")


class Lifecycle(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...


class IntakeStore(Protocol):
    """Called in the request path; commits are grouped."""

    async def accept_webhook(self, webhook: IncomingWebhook) -> AcceptResult: ...
    async def release_claims(self, owner: str) -> None:
        """(Readiness writes with it: for an owner that holds nothing it changes nothing.)"""
        ...


class ReconcileStore(Protocol):
    async def accept_webhook(self, webhook: IncomingWebhook) -> AcceptResult: ...
    async def reconcile_watermark(self, source: str) -> datetime | None: ...
    async def set_reconcile_watermark(self, source: str, ts: datetime) -> None: ...


class BatchReader(Protocol):
    """The processing reads, synchronous, on a helper process's own connection to the store.
    Picklable: it is sent to the helper, which connects on first use."""

    def read(self, fn: Callable[[BatchReader], _T]) -> _T:
        """`fn(self)`, its reads in one snapshot."""
        ...
    def pending_events(self, limit: int, after_id: int = 0) -> list[StoredEvent]: ...
    def appointment_states(self, uids: list[str]) -> dict[str, str]: ...
    def destinations_holding(self, appointment_ids: list[str]) -> set[tuple[str, str]]: ...
    def inbound_origins(self, uids: list[str]) -> dict[str, str]: ...


class ProcessingStore(Protocol):
    async def pending_events(self, limit: int, after_id: int = 0) -> list[StoredEvent]:
        """Oldest first; `after_id` skips events a pipelined processor already holds."""
        ...
    async def appointment_states(self, uids: list[str]) -> dict[str, str]:
        """booking uid -> state JSON of the appointment it belongs to."""
        ...
    async def destinations_holding(self, appointment_ids: list[str]) -> set[tuple[str, str]]:
        """(destination, appointment id) pairs that were ever queued an S12."""
        ...
    async def inbound_origins(self, uids: list[str]) -> dict[str, str]:
        """Booking uid -> the inbound channel whose SIU made it (no echo back to that EHR)."""
        ...
    async def commit_processed(self, results: list[ProcessedEvent]) -> None:
        """Raises NotPending, writing nothing, when another node processed an event already."""
        ...
    def batch_reader(self) -> BatchReader | None:
        """The processing reads for a helper process, or None (the engine reads them)."""
        ...
    async def try_lead(self, node_id: str) -> bool:
        """True while this node may normalize (one node at a time keeps appointment
        precedence across nodes); ask before every processing batch."""
        ...


class DeliveryStore(Protocol):
    async def claim_lane_heads(
        self, destination: str, limit: int, owner: str, lease_seconds: float, now: float
    ) -> list[QueuedMessage]: ...
    async def record_attempts(self, records: list[AttemptRecord]) -> None: ...
    async def next_ready_at(self, destination: str) -> float | None: ...
    async def release_claims(self, owner: str) -> None:
        """The claims `owner` gives back unsent."""
        ...
    async def message(self, message_id: int) -> dict[str, Any] | None: ...
    async def acquire_slot(
        self, destination: str, max_slots: int, owner: str, lease_seconds: float, now: float
    ) -> int | None:
        """One of the destination's `max_slots` connection slots (0..max_slots-1) leased to
        `owner` until now + lease_seconds, or None while every slot is held by a live lease.
        An owner that already holds a slot gets the same one back, renewed."""
        ...
    async def renew_slot(
        self, destination: str, slot: int, owner: str, lease_seconds: float, now: float
    ) -> bool:
        """Extend the lease; False when the slot is no longer `owner`'s (stop using it)."""
        ...
    async def release_slot(self, destination: str, slot: int, owner: str) -> None: ...


class InboundStore(Protocol):
    async def accept_inbound(self, msg: InboundMessage) -> InboundAccept:
        """Store the message and its Cal.com job durably (grouped); a repeated MSH-10 from
        the same sender is recognised and not queued again."""
        ...
    async def inbound_claim_jobs(
        self, limit: int, now: float, lease_seconds: float
    ) -> list[InboundJob]: ...
    async def inbound_finish_jobs(self, outcomes: list[JobOutcome]) -> None: ...
    async def inbound_next_ready_at(self) -> float | None: ...
    async def inbound_counts(self) -> dict[str, int]: ...
    async def inbound_origins(self, uids: list[str]) -> dict[str, str]: ...
    async def inbound_block(self, channel: str, ehr_appointment_id: str) -> HeldBlock | None: ...


class OperatorStore(Lifecycle, Protocol):
    """What the operator commands read and do; every action leaves an audit row."""

    async def queue_summary(self, now: float) -> list[dict[str, Any]]: ...
    async def lanes(self, destination: str | None, limit: int) -> list[dict[str, Any]]: ...
    async def dead_letters(self, limit: int) -> list[dict[str, Any]]: ...
    async def message(self, message_id: int) -> dict[str, Any] | None: ...
    async def resend(self, message_id: int, who: str, *, force: bool = False) -> bool:
        """Queue a message again, same bytes and MSH-10; False when there is no such message.
        Raises requeue.LaterChangesSent (unless `force`) when a later change of its
        appointment reached, or may have reached, its destination."""
        ...
    async def replace_payload(
        self, message_id: int, control_id: str, payload: bytes, who: str, *,
        force: bool = False,
    ) -> bool:
        """New bytes under a new MSH-10, in the message's place in its lane; False when there
        is no such message or it was acknowledged. Raises requeue.InFlight while it is being
        sent, and (unless `force`) requeue.MayBeHeld or requeue.LaterChangesSent."""
        ...
    async def release_lane(self, lane_id: int, who: str) -> bool: ...
    async def set_channel_paused(self, channel: str, paused: bool, who: str) -> None: ...
    async def paused_channels(self) -> set[str]: ...
    async def events(self, state: str, limit: int) -> list[StoredEvent]: ...
    async def requeue_event(self, event_id: int, who: str) -> bool: ...
    async def appointment_states(self, uids: list[str]) -> dict[str, str]: ...
    async def audit(
        self, appointment_id: str | None, since: float | None, limit: int
    ) -> list[dict[str, Any]]: ...
    async def counts(self) -> dict[str, int]:
        """Rows per state: a full count, for tests, the demo and one-off checks."""
        ...
    async def quarantined_count(self) -> int:
        """Cheap (indexed): for the gauge refreshed every few seconds."""
        ...
    async def inbound_jobs(self, status: str | None, limit: int) -> list[dict[str, Any]]: ...
    async def inbound_retry_job(self, job_id: int, who: str) -> bool: ...
    async def inbound_counts(self) -> dict[str, int]: ...
    async def reconcile_watermark(self, source: str) -> datetime | None: ...
    async def set_reconcile_watermark(self, source: str, ts: datetime) -> None: ...


class ClusterStore(Protocol):
    """Several nodes on one PostgreSQL store; on SQLite (one node) each is trivial."""

    async def listen(self, callback: Callable[[str], None]) -> None:
        """Call `callback(destination)` when any node queued messages for that destination;
        returns once listening. A hint only: a missed one is found by polling."""
        ...
    async def try_lead(self, node_id: str) -> bool: ...
    async def heartbeat(self, node_id: str, now: float) -> None:
        """This node is alive (operators see the cluster)."""
        ...
    async def recover_single_node(self) -> None:
        """At start, where this node is the only one: what it had in flight when it stopped
        goes again. Nothing where other nodes may hold claims."""
        ...


class Store(IntakeStore, ReconcileStore, ProcessingStore, DeliveryStore, InboundStore,
            OperatorStore, ClusterStore, Protocol):
    """Every role: what the wiring opens once and hands to each consumer (see
    tests/store/test_store.py for the contract, run on both dialects)."""
