"""The store's vocabulary in one import: the records (records.py) and the roles (roles.py),
with `Store`, the union of every role, that the wiring hands around."""

from __future__ import annotations

from engine.store.records import (
    ACKED,
    DEAD,
    IGNORED,
    PENDING,
    PROCESSED,
    QUARANTINED,
    QUEUED,
    SKIPPED,
    AcceptResult,
    AttemptRecord,
    AuditEntry,
    IncomingWebhook,
    NewMessage,
    NotPending,
    ProcessedEvent,
    QueuedMessage,
    StoredEvent,
    Verdict,
)
from engine.store.roles import BatchReader, Store

__all__ = [
    "ACKED", "DEAD", "IGNORED", "PENDING", "PROCESSED", "QUARANTINED", "QUEUED", "SKIPPED",
    "AcceptResult", "AttemptRecord", "AuditEntry", "BatchReader", "IncomingWebhook",
    "NewMessage", "NotPending", "ProcessedEvent", "QueuedMessage", "Store", "StoredEvent",
    "Verdict",
]
