"""Named queries and the typed rows they come back as.

Each dialect keeps its operator queries in one file, `sql/<dialect>/queries.sql`; a query
starts at a line `-- name: <name>` and runs to the next one (comment lines in between say
what it is for and are dropped). The store's dialect modules run them by name; the row
classes below turn what either driver returns (a tuple, an asyncpg Record) into one typed
row, so the shaping the operators see is written once for both dialects.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any, Self

_HEADER = re.compile(r"^--\s*name:\s*(\S+)\s*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@functools.cache
def load_queries(dialect: str) -> dict[str, str]:
    """name -> SQL of `sql/<dialect>/queries.sql` (read once per process)."""
    source = resources.files("engine.store").joinpath("sql", dialect, "queries.sql")
    return parse_queries(source.read_text(encoding="utf-8"), f"sql/{dialect}/queries.sql")


def parse_queries(text: str, where: str = "queries.sql") -> dict[str, str]:
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line.strip())
        if header:
            name = header.group(1)
            if not _NAME.match(name):
                raise ValueError(
                    f"{where}:{number}: name queries in lower_snake_case, not {name!r}")
            if name in found:
                raise ValueError(f"{where}:{number}: a second query named {name!r}: rename one")
            current = found[name] = []
        elif line.strip().startswith("--"):
            continue
        elif current is not None:
            current.append(line.rstrip())
        elif line.strip():
            raise ValueError(f"{where}:{number}: SQL before the first '-- name:' line")
    queries = {}
    for name, lines in found.items():
        sql = " ".join(part.strip() for part in lines if part.strip()).rstrip(";").strip()
        if not sql:
            raise ValueError(f"{where}: query {name!r} is empty")
        queries[name] = sql
    return queries


class Queries:
    """The named queries of one dialect; `q.name` is the SQL text."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self._sql = load_queries(dialect)

    def __getattr__(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            raise AttributeError(
                f"no query {name!r} in sql/{self.dialect}/queries.sql: add it there") from None

    def names(self) -> set[str]:
        return set(self._sql)


# ---------------------------------------------------------------------- typed rows
@dataclass(slots=True)
class Row:
    @classmethod
    def of(cls, row: Sequence[Any]) -> Self:
        """One row of the query, its columns in field order."""
        return cls(*row)

    @classmethod
    def all(cls, rows: Iterable[Sequence[Any]]) -> list[Self]:
        return [cls.of(r) for r in rows]

    def as_dict(self) -> dict[str, Any]:
        """What the operator commands print and serialise (keys in field order)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, Row):
        return value.as_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(slots=True)
class DestinationDepth(Row):
    destination: str
    queued: int | None
    dead: int | None
    oldest: float | None  # the oldest queued message's acceptance (epoch seconds)


@dataclass(slots=True)
class LaneRow(Row):
    lane: int
    destination: str
    lane_key: str
    head: int | None
    held: int
    ready_at: float
    owner: str | None
    queued: int


@dataclass(slots=True)
class DeadLetterRow(Row):
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


@dataclass(slots=True)
class AttemptRow(Row):
    at: float
    control_id: str | None
    outcome: str
    ack_code: str | None
    ack: bytes | None
    detail: str | None


@dataclass(slots=True)
class MessageRow(Row):
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
    attempts: int
    error: str | None
    ack_code: str | None
    created_at: float
    accepted_at: float | None
    acked_at: float | None
    correlation_id: str | None
    attempt_log: list[AttemptRow] = field(default_factory=list)


@dataclass(slots=True)
class AuditRow(Row):
    at: float
    kind: str
    appointment_id: str | None
    actor: str | None
    trigger: str | None
    source: str | None
    detail: dict[str, Any]

    @classmethod
    def of(cls, row: Sequence[Any]) -> Self:
        at, kind, appointment_id, actor, trigger, source, detail = row
        return cls(at, kind, appointment_id, actor, trigger, source, json.loads(detail))


@dataclass(slots=True)
class InboundJobRow(Row):
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

    @classmethod
    def of(cls, row: Sequence[Any]) -> Self:
        values = list(row)
        values[7] = json.loads(values[7]) if values[7] else None
        return cls(*values)


def queue_summary(depths: list[DestinationDepth], held: dict[str, int],
                  now: float) -> list[dict[str, Any]]:
    """Depth, dead letters, held lanes and the oldest queued message's age per destination."""
    return [
        {
            "destination": d.destination,
            "queued": d.queued or 0,
            "dead": d.dead or 0,
            "held_lanes": held.get(d.destination, 0),
            "oldest_age_seconds": round(now - d.oldest, 3) if d.oldest else 0.0,
        }
        for d in depths
    ]


def counts(events: Iterable[Sequence[Any]], messages: Iterable[Sequence[Any]]) -> dict[str, int]:
    """(state, n) and (status, n) rows -> the counts of `Store.counts()`."""
    out = {f"events_{s}": n for s, n in events}
    out.update({f"messages_{s}": n for s, n in messages})
    return out


def inbound_counts(jobs: Iterable[Sequence[Any]], messages: int) -> dict[str, int]:
    out = {f"inbound_jobs_{s}": n for s, n in jobs}
    out["inbound_messages"] = messages
    return out
