"""load/bench_pg.py (through load/correctness.check_outbound) counts a run clean only when every message reached the EHR once, under
its one MSH-10, in order per appointment: the check itself, on tables of cases."""

from __future__ import annotations

import pytest

from load.correctness import check_outbound

# outbound rows: (id, appointment, MSH-10, status, accepted_at, acked_at)
ROWS = [(1, "A", "c1", "acked", 0, 1), (2, "B", "c2", "acked", 0, 1),
        (3, "A", "c3", "acked", 0, 2), (4, "B", "c4", "dead", 0, None)]


def seen(*control_ids: str) -> list[dict[str, str]]:
    return [{"msh10": c} for c in control_ids]


@pytest.mark.parametrize(("arrivals", "expected"), [
    (seen("c1", "c2", "c3"), {"lost": 0, "unknown": 0, "out_of_order": 0}),
    # a resend of the message in flight, same MSH-10: allowed
    (seen("c1", "c2", "c1", "c3"), {"lost": 0, "unknown": 0, "out_of_order": 0}),
    (seen("c1", "c3"), {"lost": 1, "unknown": 0, "out_of_order": 0}),
    # the same change under a second MSH-10: one the store never gave out
    (seen("c1", "c2", "c3", "c9"), {"lost": 0, "unknown": 1, "out_of_order": 0}),
    # A's second change before its first
    (seen("c3", "c2", "c1"), {"lost": 0, "unknown": 0, "out_of_order": 1}),
])
def test_a_run_is_clean_only_when_every_message_arrived_once_and_in_order(
        arrivals: list[dict[str, str]], expected: dict[str, int]) -> None:
    assert check_outbound(ROWS, arrivals) == {**expected, "dead": 1}
