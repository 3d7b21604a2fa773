"""The operator service layer: what an interface analyst can see and do, as typed results."""

from engine.operator.results import (
    Attempt,
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
from engine.operator.service import OperatorService

__all__ = [
    "Attempt", "AuditEntry", "DeadLetter", "DestinationDepth", "Forced", "InboundJob", "Lane",
    "Message", "OperatorService", "QuarantinedEvent", "Reprocessed", "Resent",
]
