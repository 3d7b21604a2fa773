"""A lane's head on SQLite: set, advanced past what is done, put back by an operator. Used by
processing (new messages), delivery (outcomes) and the operator's actions alike."""

from __future__ import annotations

import sqlite3

from engine.store import records


def set_head(conn: sqlite3.Connection, lane_id: int, message_id: int, now: float) -> None:
    """A queued message becomes its lane's head, ready now and claimed by nobody."""
    conn.execute(
        "UPDATE lanes SET head_id = ?, held = 0, ready_at = ?, owner = NULL,"
        " lease_until = NULL WHERE id = ?",
        (message_id, now, lane_id),
    )


def advance_lane(conn: sqlite3.Connection, lane_id: int, after_id: int, now: float) -> None:
    """Point the lane at its next live message after `after_id` (or empty it)."""
    for mid, status, hold in conn.execute(
        "SELECT id, status, hold_lane FROM outbound WHERE lane_id = ? AND id > ?"
        " AND status IN ('queued', 'dead') ORDER BY id",
        (lane_id, after_id),
    ).fetchall():
        if status == records.QUEUED:
            set_head(conn, lane_id, mid, now)
            return
        if hold:  # a message that was born dead (unmapped code) holds the lane too
            conn.execute(
                "UPDATE lanes SET head_id = ?, held = 1, owner = NULL, lease_until = NULL"
                " WHERE id = ?",
                (mid, lane_id),
            )
            return
        conn.execute("UPDATE outbound SET status = 'skipped' WHERE id = ?", (mid,))
    conn.execute(
        "UPDATE lanes SET head_id = NULL, held = 0, owner = NULL, lease_until = NULL"
        " WHERE id = ?",
        (lane_id,),
    )


def requeue_in_lane(conn: sqlite3.Connection, lane_id: int, message_id: int) -> None:
    """A message put back in the queue goes first again if it is ahead of the head."""
    (head_id,) = conn.execute("SELECT head_id FROM lanes WHERE id = ?", (lane_id,)).fetchone()
    if head_id is None or head_id >= message_id:
        conn.execute(
            "UPDATE lanes SET head_id = ?, held = 0, ready_at = 0, owner = NULL,"
            " lease_until = NULL, fence = fence + 1 WHERE id = ?",  # in-flight sends lose
            (message_id, lane_id),
        )

