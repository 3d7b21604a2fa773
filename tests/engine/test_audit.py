"""The audit trail, end to end: a scripted run through the real engine, operator actions
through the `calhl7` verbs, then `calhl7 audit` as an analyst would run it."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine import cli
from engine.sim.bookings import StoryTeller
from engine.sim.ehr import SimPolicy, simulator_of
from tests.engine.test_metrics import all_messages, quiet
from tests.engine_harness import Running, fast_channels, running_engine


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """One `calhl7` verb, in a thread (it runs its own event loop), and what it printed."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, list(argv))
    return code, capsys.readouterr().out


def family_visit(teller: StoryTeller) -> tuple[Any, dict[str, Any]]:
    b, created = teller.created()
    while b.event_type[1] != 731042:  # in person, family medicine: both EHRs get it
        b, created = teller.created()
    return b, created


async def post_ok(eng: Running, hook: dict[str, Any]) -> None:
    r = await eng.post(hook)
    assert r.status_code in (200, 202), r.text


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_audit_trail_of_changes_deliveries_and_operator_actions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CALHL7_STORE", raising=False)
    monkeypatch.setenv("CALHL7_OPERATOR", "analyst-jo")
    data = str(tmp_path / "data")
    teller = StoryTeller(seed=12)
    a, a_created = family_visit(teller)  # a clean life: booked, moved, cancelled by the clinic
    b, b_created = family_visit(teller)  # refused by the main EHR, resent by an analyst
    c, c_created = family_visit(teller)  # refused by the main EHR, released by an analyst
    a_id = a.uid  # the appointment keeps its first booking's uid; a reschedule makes a new one
    refuse = SimPolicy(ar_match=[f"SCH-1.1={b.uid}", f"SCH-1.1={c.uid}"], ar_error_code="201")
    async with running_engine(tmp_path, channels_dir=fast_channels(tmp_path),
                              main_policy=refuse) as eng:
        for hook in (a_created, b_created, c_created):
            await post_ok(eng, hook)
        a_moved = teller.rescheduled(a)
        await post_ok(eng, a_moved)
        a_cancelled = teller.cancelled(a, by_organizer=True)
        await post_ok(eng, a_cancelled)
        broken = teller.created()[1]
        del broken["payload"]["startTime"]
        await post_ok(eng, broken)  # quarantined
        await quiet(eng)
        dead = {d["appointment_id"]: d for d in await eng.store.dead_letters(10)}
        assert set(dead) == {b.uid, c.uid}

        before_operators = int(time.time()) + 1  # a whole second: what --since is given
        await asyncio.sleep(before_operators - time.time() + 0.05)
        simulator_of(eng.sims["main_server"]).policy = SimPolicy()  # the EHR side is fixed
        code, out = await run_cli(capsys, "resend", str(dead[b.uid]["id"]), "--data", data)
        assert code == 0, out
        code, out = await run_cli(capsys, "release", str(dead[c.uid]["lane"]), "--data", data)
        assert code == 0, out
        code, out = await run_cli(capsys, "pause", "physiotherapy", "--data", data)
        assert code == 0, out
        code, out = await run_cli(capsys, "resume", "physiotherapy", "--data", data)
        assert code == 0, out
        code, out = await run_cli(capsys, "quarantine", "reprocess", "--data", data)
        assert code == 0 and "1 event(s)" in out, out
        await quiet(eng)
        messages = await all_messages(eng)

    # ---- appointment A, asked for by the uid of its rescheduled booking
    code, out = await run_cli(capsys, "audit", "--appointment", a_moved["payload"]["uid"],
                              "--json", "--data", data)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and {r["appointment_id"] for r in rows} == {a_id}
    changes = [r for r in rows if r["kind"] == "change"]
    assert [(r["trigger"], r["actor"], r["source"]) for r in changes] == [
        ("BOOKING_CREATED", "attendee", "default"),
        ("BOOKING_RESCHEDULED", "attendee", "default"),
        ("BOOKING_CANCELLED", "organizer", "default"),
    ]
    for row, hook in zip(changes, (a_created, a_moved, a_cancelled), strict=True):
        detail = row["detail"]
        assert iso(detail["occurred_at"]) == iso(hook["createdAt"])  # Cal.com's time
        assert detail["received_at"] and detail["correlation_id"]
        assert detail["booking_uid"] == hook["payload"]["uid"]
        assert detail["routed_to"] == ["ehr-legacy", "ehr-main"]
    # what we sent where, with the EHR's answer, for every message of the appointment
    sent = {r["detail"]["control_id"]: r for r in rows if r["kind"] == "sent"}
    a_messages = [m for m in messages if m["appointment_id"] == a_id]
    assert len(a_messages) == 6 and set(sent) == {m["control_id"] for m in a_messages}
    for m in a_messages:
        row = sent[m["control_id"]]
        assert (row["source"], row["trigger"], row["detail"]["channel"]) == (
            m["destination"], m["message_type"], m["channel"])
        assert (row["detail"]["outcome"], row["detail"]["ack_code"]) == ("delivered", "AA")
        assert row["detail"]["message"] == m["id"]
    # the correlation id of each change is the one its messages carry
    by_correlation = {r["detail"]["correlation_id"] for r in changes}
    assert {m["correlation_id"] for m in a_messages} == by_correlation

    # ---- B: refused, resent by the analyst, then accepted under the same MSH-10
    code, out = await run_cli(capsys, "audit", "--appointment", b.uid, "--json", "--data", data)
    rows = [json.loads(line) for line in out.splitlines()]
    main = [r for r in rows if r["source"] in ("ehr-main", "operator")]
    assert [(r["kind"], r["detail"].get("outcome"), r["detail"].get("ack_code"), r["actor"])
            for r in main] == [("sent", "dead", "AR", "engine"),
                               ("operator", None, None, "analyst-jo"),
                               ("sent", "delivered", "AA", "engine")]
    assert main[1]["trigger"] == "resend" and main[1]["detail"] == {"message": dead[b.uid]["id"]}
    assert main[0]["detail"]["control_id"] == main[2]["detail"]["control_id"]

    # ---- C: released by the analyst
    code, out = await run_cli(capsys, "audit", "--appointment", c.uid, "--json", "--data", data)
    ops = [json.loads(line) for line in out.splitlines() if '"operator"' in line]
    assert [(r["trigger"], r["actor"], r["detail"]) for r in ops] == [
        ("release", "analyst-jo", {"lane": dead[c.uid]["lane"], "message": dead[c.uid]["id"]})]

    # ---- everything since the analyst started: their actions, each with who and when
    since = datetime.fromtimestamp(before_operators, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, out = await run_cli(capsys, "audit", "--since", since, "--json", "--data", data)
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and all(iso(r["at"]).timestamp() >= before_operators for r in rows)
    assert not [r for r in rows if r["kind"] == "change" and r["appointment_id"] == a_id]
    operator = [(r["trigger"], r["actor"]) for r in rows if r["kind"] == "operator"]
    assert operator == [("resend", "analyst-jo"), ("release", "analyst-jo"),
                        ("pause", "analyst-jo"), ("resume", "analyst-jo"),
                        ("reprocess_event", "analyst-jo")]
    pause = next(r for r in rows if r["trigger"] == "pause")
    assert pause["detail"] == {"channel": "physiotherapy"} and pause["source"] == "operator"

    # ---- the table an analyst reads
    code, out = await run_cli(capsys, "audit", "--appointment", a_id, "--data", data)
    lines = out.splitlines()
    assert lines[0].split() == ["AT", "KIND", "APPOINTMENT_ID", "ACTOR", "TRIGGER", "SOURCE",
                                "DETAIL"]
    assert len(lines) == 1 + 3 + 6
    assert sum(" organizer " in line and "BOOKING_CANCELLED" in line for line in lines) == 1

    # ---- nothing for an unknown appointment, a clear error for a bad time
    code, out = await run_cli(capsys, "audit", "--appointment", "nope", "--data", data)
    assert code == 0 and out.strip() == "(none)"
    code, _ = await run_cli(capsys, "audit", "--since", "yesterday", "--data", data)
    assert code == 2
