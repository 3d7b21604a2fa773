"""The store protocol: everything the engine keeps, behind one interface, two implementations.

SQLite (embedded, default) and PostgreSQL (several nodes on one database) both satisfy
`Store`. Callers never see SQL or connections; the SQL lives in `engine/store/sql/`.

Vocabulary:
- a *received event* is a webhook body exactly as Cal.com sent it, stored before we answer;
- an *appointment state* is the JSON the normalizer keeps per appointment (opaque here);
- an *outbound message* is one rendered SIU for one destination, waiting in a *lane*
  (destination, ordering key); only the head of a lane is ever in flight.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

from engine.store.inbound_records import (
    HeldBlock,
    InboundAccept,
    InboundJob,
    InboundMessage,
    JobOutcome,
)

# received_events.state
PENDING = "pending"  # accepted, not yet normalized
PROCESSED = "processed"
QUARANTINED = "quarantined"  # signed but unusable: kept raw for a fix and a reprocess
IGNORED = "ignored"  # PING, triggers we do not act on

# outbound.status
QUEUED = "queued"
ACKED = "acked"
DEAD = "dead"
SKIPPED = "skipped"  # a dead letter the lane moved past (channel chose skip), or released


class NotPending(RuntimeError):
    """commit_processed found events already processed (another node did them): nothing of
    the batch was written."""


class Verdict(Protocol):
    """What the request-path check found in a signed body (`engine.calcom.check` decides)."""

    @property
    def disposition(self) -> str: ...  # accept | quarantine | ignore
    @property
    def trigger(self) -> str | None: ...
    @property
    def booking_uid(self) -> str | None: ...
    @property
    def reason(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class IncomingWebhook:
    source: str
    body: bytes
    body_sha256: bytes
    content_type: str | None
    trigger: str | None
    booking_uid: str | None
    received_at: float  # epoch seconds: the start of end-to-end latency
    correlation_id: str
    state: str  # PENDING, QUARANTINED or IGNORED, decided by the request-path check
    reason: str | None = None

    @classmethod
    def from_check(cls, source: str, body: bytes, content_type: str | None,
                   check: Verdict, correlation_id: str) -> IncomingWebhook:
        """What intake keeps of a signed body (from HTTP or from reconciliation): the bytes as
        received, and the check's findings as lookup columns."""
        return cls(
            source=source, body=body, body_sha256=hashlib.sha256(body).digest(),
            content_type=content_type, trigger=_storable(check.trigger),
            booking_uid=_storable(check.booking_uid), received_at=time.time(),
            correlation_id=correlation_id, state=_CHECK_TO_STATE[check.disposition],
            reason=_storable(check.reason),
        )


_CHECK_TO_STATE = {"accept": PENDING, "quarantine": QUARANTINED, "ignore": IGNORED}


def _storable(text: str | None) -> str | None:
    """A lone surrogate (valid in JSON, not in UTF-8) must not make the insert fail: the body
    itself is kept byte for byte; only these lookup columns are made encodable."""
    if text is None:
        return None
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


@dataclass(frozen=True, slots=True)
class AcceptResult:
    event_id: int
    duplicate: bool
    state: str


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    source: str
    body: bytes
    content_type: str | None
    trigger: str | None
    booking_uid: str | None
    received_at: float
    correlation_id: str
    state: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class NewMessage:
    channel: str
    destination: str
    lane_key: str
    appointment_id: str
    message_type: str  # e.g. SIU^S12
    control_id: str  # MSH-10
    payload: bytes  # the exact bytes that go on the wire
    event_json: str  # the appointment event it was rendered from (for reprocess)
    error: str | None = None  # set: straight to the error queue (unmapped key...)
    hold_lane: bool = True  # when dead, does it hold the rest of its lane?


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    kind: str  # change | sent | operator | note
    appointment_id: str | None = None
    actor: str | None = None
    trigger: str | None = None
    source: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProcessedEvent:
    """Everything one received event leads to, committed in one transaction."""

    event_id: int
    state: str  # PROCESSED, QUARANTINED or IGNORED
    reason: str | None = None
    appointment_id: str | None = None
    appointment_state: str | None = None  # JSON to upsert, None when unchanged
    uid_links: dict[str, str] = field(default_factory=dict)  # booking uid -> appointment id
    messages: tuple[NewMessage, ...] = ()
    audit: tuple[AuditEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    lane_id: int
    destination: str
    channel: str
    appointment_id: str
    message_type: str
    control_id: str
    payload: bytes
    attempts: int
    accepted_at: float | None
    correlation_id: str | None
    fence: int  # lane claim token: an outcome only counts while this claim is current
    claims: int = 1  # how often it was claimed, this time included: >1 means maybe sent before


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    message_id: int
    lane_id: int
    fence: int
    outcome: str  # delivered | retry | dead
    at: float
    ack: bytes | None = None
    ack_code: str | None = None
    detail: str | None = None
    next_attempt_at: float | None = None  # for retry
    hold_lane: bool = True  # for dead
    # the MSH-10 that went out; None: the message's current one. An operator's reprocess can
    # give the message a new MSH-10 while the old bytes are on the wire
    control_id: str | None = None


_T = TypeVar("_T")


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


class Store(Protocol):
    """One interface, two implementations (SQLite, PostgreSQL); see tests/test_store.py."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # -- intake: called in the request path, commits are grouped --
    async def accept_webhook(self, webhook: IncomingWebhook) -> AcceptResult: ...

    # -- processing --
    async def pending_events(self, limit: int, after_id: int = 0) -> list[StoredEvent]:
        """Oldest first; `after_id` skips events a pipelined processor already holds."""
        ...
    async def appointment_states(self, uids: list[str]) -> dict[str, str]:
        """booking uid -> state JSON of the appointment it belongs to."""
        ...
    async def destinations_holding(self, appointment_ids: list[str]) -> set[tuple[str, str]]:
        """(destination, appointment id) pairs that were ever queued an S12."""
        ...
    async def commit_processed(self, results: list[ProcessedEvent]) -> None: ...
    def batch_reader(self) -> BatchReader | None:
        """The processing reads for a helper process, or None (the engine reads them)."""
        ...

    # -- delivery --
    async def claim_lane_heads(
        self, destination: str, limit: int, owner: str, lease_seconds: float, now: float
    ) -> list[QueuedMessage]: ...
    async def record_attempts(self, records: list[AttemptRecord]) -> None: ...
    async def next_ready_at(self, destination: str) -> float | None: ...
    async def release_claims(self, owner: str) -> None: ...

    # -- cluster: several nodes on one PostgreSQL store (trivial on SQLite: one node) --
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
    async def listen(self, callback: Callable[[str], None]) -> None:
        """Call `callback(destination)` when any node queued messages for that destination;
        returns once listening. A hint only: a missed one is found by polling."""
        ...
    async def try_lead(self, node_id: str) -> bool:
        """True while this node may normalize (one node at a time keeps appointment
        precedence across nodes); ask before every processing batch."""
        ...

    # -- inbound: SIU from the EHR, Cal.com write jobs, reconciliation watermark --
    async def accept_inbound(self, msg: InboundMessage) -> InboundAccept:
        """Store the message and its Cal.com job durably (grouped); a repeated MSH-10 from
        the same sender is recognised and not queued again."""
        ...
    async def inbound_claim_jobs(
        self, limit: int, now: float, lease_seconds: float
    ) -> list[InboundJob]: ...
    async def inbound_finish_jobs(self, outcomes: list[JobOutcome]) -> None: ...
    async def inbound_next_ready_at(self) -> float | None: ...
    async def inbound_origins(self, uids: list[str]) -> dict[str, str]:
        """Booking uid -> the inbound channel whose SIU made it (no echo back to that EHR)."""
        ...
    async def inbound_block(self, channel: str, ehr_appointment_id: str) -> HeldBlock | None: ...
    async def inbound_jobs(self, status: str | None, limit: int) -> list[dict[str, Any]]: ...
    async def inbound_retry_job(self, job_id: int, who: str) -> bool: ...
    async def inbound_counts(self) -> dict[str, int]: ...
    async def reconcile_watermark(self, source: str) -> datetime | None: ...
    async def set_reconcile_watermark(self, source: str, ts: datetime) -> None: ...

    # -- operators (CLI, operator API) --
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
    async def audit(
        self, appointment_id: str | None, since: float | None, limit: int
    ) -> list[dict[str, Any]]: ...
    async def counts(self) -> dict[str, int]:
        """Rows per state: a full count, for tests, the demo and one-off checks."""
        ...
    async def quarantined_count(self) -> int:
        """Cheap (indexed): for the gauge refreshed every few seconds."""
        ...
