"""What the role modules of the PostgreSQL store share: values PostgreSQL can store, the
audit row (and the one an operator's action leaves), columns for `unnest`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import asyncpg

NOTIFY_CHANNEL = "calhl7_outbound"  # payload: a destination that got messages

AUDIT_INSERT = (
    "INSERT INTO audit (at, kind, appointment_id, actor, trigger, source, detail)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)"
)
# the same for many rows at once, a column per array; ids follow the arrays' order
AUDIT_INSERT_MANY = (
    "INSERT INTO audit (at, kind, appointment_id, actor, trigger, source, detail)"
    " SELECT at, kind, appointment_id, actor, trigger, source, detail::jsonb"
    " FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
    " $7::text[]) WITH ORDINALITY AS t (at, kind, appointment_id, actor, trigger, source,"
    " detail, n) ORDER BY n"
)


def pg_text(value: Any) -> Any:
    """Text PostgreSQL can store: NUL (valid in JSON strings) becomes U+FFFD."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _clean(value: Any) -> Any:
    """JSON PostgreSQL can store: jsonb refuses \\u0000 in strings."""
    if isinstance(value, str):
        return pg_text(value)
    if isinstance(value, dict):
        return {pg_text(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def pg_json(detail: dict[str, Any]) -> str:
    return json.dumps(_clean(detail), separators=(",", ":"))


async def audit_operator(
    conn: asyncpg.Connection, action: str, who: str, appointment_id: str | None,
    detail: dict[str, Any],
) -> None:
    await conn.execute(AUDIT_INSERT, time.time(), "operator", appointment_id, pg_text(who),
                       action, "operator", pg_json(detail))


def columns(rows: Iterable[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows -> one list per column (the arrays an `unnest` statement takes)."""
    cols: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for i, value in enumerate(row):
            cols[i].append(value)
    return cols
