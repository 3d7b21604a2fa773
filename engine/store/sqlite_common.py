"""What both halves of the SQLite store use (sqlite.py and sqlite_inbound.py): the audit row,
and the one an operator's action leaves."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

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
