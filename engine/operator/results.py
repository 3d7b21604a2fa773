"""What the operator service returns: one typed record per row or outcome, so the CLI, bulk
actions and an HTTP API read the same fields."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, Self

from engine.store.requeue import Held


class _Row:
    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Self:
        return cls(**{f.name: row.get(f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class DestinationDepth(_Row):
    destination: str
    queued: int
    dead: int
    held_lanes: int
    oldest_age_seconds: float


@dataclass(frozen=True)
class Lane(_Row):
    lane: int
    destination: str
    lane_key: str
    head: int | None
    held: bool
    ready_at: float | None
    owner: str | None
    queued: int


@dataclass(frozen=True)
class DeadLetter(_Row):
    id: int
    lane: int
    destination: str
    channel: str
    message_type: str
    control_id: str
    appointment_id: str
    attempts: int
    error: str | None
    created_at: float


@dataclass(frozen=True)
class Attempt(_Row):
    at: float
    control_id: str
    outcome: str
    ack_code: str | None
    ack: bytes | None
    detail: str | None


@dataclass(frozen=True)
class Message(_Row):
    id: int
    lane: int
    destination: str
    channel: str
    appointment_id: str
    message_type: str
    control_id: str
    payload: bytes
    event_json: str
    status: str
    attempts: int  # its retry budget, which a resend or a reprocess starts again
    error: str | None
    ack_code: str | None
    created_at: float
    accepted_at: float | None
    acked_at: float | None
    correlation_id: str | None
    attempt_log: list[Attempt] = field(default_factory=list)  # every send on record

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Self:
        sends = [Attempt.from_row(a) for a in row.get("attempt_log") or []]
        return super().from_row({**row, "attempt_log": sends})


@dataclass(frozen=True)
class QuarantinedEvent:
    id: int
    source: str
    received_at: float
    trigger: str | None
    reason: str | None


@dataclass(frozen=True)
class AuditEntry(_Row):
    at: float
    kind: str
    appointment_id: str | None
    actor: str | None
    trigger: str | None
    source: str | None
    detail: Any


@dataclass(frozen=True)
class InboundJob(_Row):
    id: int
    channel: str
    ehr_appointment_id: str
    trigger: str
    status: str
    attempts: int
    error: str | None
    result: dict[str, Any] | None
    created_at: float
    done_at: float | None
    control_id: str


@dataclass(frozen=True)
class Resent:
    """`queued` False and `refused` False: there is no such message."""

    message_id: int
    queued: bool
    refused: bool = False  # later changes of its appointment: not queued, nothing changed
    forced: bool = False  # queued after those later changes, on the operator's word
    later: list[Held] = field(default_factory=list)


ReprocessOutcome = Literal[
    "rendered",  # rendered again under a new MSH-10; it keeps its place in its lane
    "no_message", "acked", "config_problems", "channel_gone", "render_failed",
    "in_flight",  # being sent: never forced
    "may_be_held",  # the EHR may have it under an MSH-10 it went out with
    "later_changes",  # the destination has, or may have, later changes of its appointment
    "acked_meanwhile",
]


@dataclass(frozen=True)
class Forced:
    """A refusal passed over with force, and what it listed."""

    reason: Literal["may_be_held", "later_changes"]
    held: list[Held]


@dataclass(frozen=True)
class Reprocessed:
    message_id: int
    outcome: ReprocessOutcome
    detail: str = ""  # the configuration's problems, the render error, the in-flight refusal
    channel: str | None = None
    control_id: str | None = None  # the new MSH-10
    was_control_id: str | None = None
    held: list[Held] = field(default_factory=list)
    later: list[Held] = field(default_factory=list)
    forced: list[Forced] = field(default_factory=list)  # passed over before the outcome
