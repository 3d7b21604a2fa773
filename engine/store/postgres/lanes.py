"""A lane's head on PostgreSQL: locked, advanced past what is done (calhl7_advance_lanes in
sql/postgres), put back by an operator. Used by processing, delivery and the operators."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg


async def lock_lane(conn: asyncpg.Connection, lane_id: int) -> None:
    await conn.execute("SELECT 1 FROM lanes WHERE id = $1 FOR UPDATE", lane_id)


async def advance_lanes(
    conn: asyncpg.Connection, lanes: Sequence[tuple[int, int]], now: float
) -> None:
    """Each (lane, after message id): its next live message becomes the head, dead letters
    that do not hold the lane are skipped (sql/postgres: calhl7_advance_lanes; lanes locked)."""
    await conn.execute(
        "SELECT calhl7_advance_lanes($1::bigint[], $2::bigint[], $3::float8)",
        [lane for lane, _ in lanes], [after for _, after in lanes], now,
    )


async def requeue_in_lane(conn: asyncpg.Connection, lane_id: int, message_id: int) -> None:
    """A message put back in the queue goes first again if it is ahead of the head."""
    await conn.execute(
        "UPDATE lanes SET head_id = $2, held = FALSE, ready_at = 0, owner = NULL,"
        " lease_until = NULL, fence = fence + 1"  # a send in flight can no longer decide
        " WHERE id = $1 AND (head_id IS NULL OR head_id >= $2)",
        lane_id, message_id,
    )
