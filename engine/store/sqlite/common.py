"""What the role modules of the SQLite store share: the audit row (and the one an operator's
action leaves), the received-events read, and the multi-row statement helpers."""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from typing import Any

from engine.store.records import StoredEvent

AUDIT_INSERT = (
    "INSERT INTO audit (at, kind, appointment_id, actor, trigger, source, detail)"
    " VALUES (?,?,?,?,?,?,?)"
)


def audit_operator(
    conn: sqlite3.Connection, action: str, who: str, appointment_id: str | None,
    detail: dict[str, Any],
) -> None:
    conn.execute(AUDIT_INSERT, (time.time(), "operator", appointment_id, who, action, "operator",
                                json.dumps(detail, separators=(",", ":"))))


def read_events(conn: sqlite3.Connection, state: str, limit: int,
                after_id: int = 0) -> list[StoredEvent]:
    rows = conn.execute(
        "SELECT id, source, body, content_type, trigger, booking_uid, received_at,"
        " correlation_id, state, reason FROM received_events WHERE state = ? AND id > ?"
        " ORDER BY id LIMIT ?",
        (state, after_id, limit),
    ).fetchall()
    return [StoredEvent(*r) for r in rows]


# The writer shares the GIL with the event loop and every statement step gives it away, so
# the hot paths bind many rows per statement: one multi-row VALUES each.
_ROWS_PER_STATEMENT = 128  # 7 columns x 128 rows stays far below SQLite's bound variables


def parts(rows: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    return [rows[i:i + _ROWS_PER_STATEMENT] for i in range(0, len(rows), _ROWS_PER_STATEMENT)]


def values(rows: list[tuple[Any, ...]]) -> str:
    """`VALUES (?,?),(?,?)` for these rows (in a FROM, in brackets: column1, column2...)."""
    return _values_sql(len(rows), len(rows[0]))


@functools.lru_cache(maxsize=1024)
def _values_sql(n_rows: int, n_columns: int) -> str:
    row = "(" + ",".join("?" * n_columns) + ")"
    return "VALUES " + ",".join([row] * n_rows)


def flat(rows: list[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]
