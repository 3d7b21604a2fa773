"""load/bench_pg.py counts a run clean only when every message reached the EHR once, under its
one MSH-10, in order per appointment: its check (load/correctness.check_outbound), on tables
of cases."""

from __future__ import annotations

import pytest

from load.correctness import check_outbound

# outbound rows: (id, appointment, MSH-10, status, event, channel, type)
ROWS = [(1, "A", "c1", "acked", 10, "fm", "SIU^S12"), (2, "B", "c2", "acked", 11, "fm", "SIU^S12"),
        (3, "A", "c3", "acked", 12, "fm", "SIU^S14"), (4, "B", "c4", "dead", 13, "fm", "SIU^S14")]
CLEAN = {"lost": 0, "stuck": 0, "unknown": 0, "duplicated": 0, "out_of_order": 0}


def seen(*control_ids: str) -> list[dict[str, str]]:
    return [{"msh10": c} for c in control_ids]


@pytest.mark.parametrize(("rows", "arrivals", "problems"), [
    (ROWS, seen("c1", "c2", "c3"), {}),
    # a resend of the message in flight, same MSH-10: allowed
    (ROWS, seen("c1", "c2", "c1", "c3"), {}),
    (ROWS, seen("c1", "c3"), {"lost": 1}),
    # arrived, but its ACK never recorded (the drain gave up)
    ([*ROWS[:2], (3, "A", "c3", "queued", 12, "fm", "SIU^S14"), ROWS[3]], seen("c1", "c2", "c3"),
     {"stuck": 1}),
    # the same change under an MSH-10 the store never gave out
    (ROWS, seen("c1", "c2", "c3", "c9"), {"unknown": 1}),
    # the same change queued twice (two nodes processing one event), both sent
    ([*ROWS, (5, "A", "c5", "acked", 12, "fm", "SIU^S14")], seen("c1", "c2", "c3", "c5"),
     {"duplicated": 1}),
    # A's second change before its first
    (ROWS, seen("c3", "c2", "c1"), {"out_of_order": 1}),
])
def test_a_run_is_clean_only_when_every_message_arrived_once_and_in_order(
        rows: list[tuple[object, ...]], arrivals: list[dict[str, str]],
        problems: dict[str, int]) -> None:
    assert check_outbound(rows, arrivals) == {**CLEAN, **problems, "dead": 1}
