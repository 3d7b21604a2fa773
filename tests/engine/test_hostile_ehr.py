"""Delivery to EHRs that misbehave the way real ones do, over real sockets with the simulator's
hostile policies: each ends with every change at the EHR once and in order, or as a dead
letter that holds its lane, never as a loop, a lost message or a message credited wrongly."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.sim.bookings import StoryTeller
from engine.sim.ehr import SimPolicy, simulator_of
from tests.engine.test_delivery import acked, assert_once_in_order, post_stories, received
from tests.engine_harness import Running, eventually, fast_channels, running_engine


async def one_visit(eng: Running, seed: int = 3) -> None:
    """One new in-person family visit: an S12 for each EHR."""
    teller = StoryTeller(seed=seed)
    b, created = teller.created()
    while b.event_type[1] != 731042:
        b, created = teller.created()
    r = await eng.post(created)
    assert r.status_code == 200, r.text


async def messages_to(eng: Running, destination: str) -> list[dict[str, Any]]:
    out = []
    for i in range(1, 10_000):
        msg = await eng.store.message(i)
        if msg is None:
            break
        if msg["destination"] == destination:
            out.append(msg)
    return out


# ------------------------------------------------------------------ defect: hang-up loop


@pytest.mark.parametrize("hang_up", [{"close_after_read": True}, {"close_mid_ack": True}])
async def test_ehr_that_hangs_up_on_every_message_gets_a_dead_letter_not_a_loop(
        tmp_path: Path, store_url: str | None, hang_up: dict[str, bool]) -> None:
    """An EHR that closes the connection on every message: the attempts stay within the
    message's budget, spaced by the back-off; the message ends as a dead letter holding its
    lane, and the EHR is not contacted for it again."""
    budget = 4
    channels = fast_channels(tmp_path, retry={"max_attempts": budget, "initial_seconds": 0.1,
                                              "max_seconds": 0.2, "jitter": 0.0})
    async with running_engine(tmp_path, store_url=store_url, channels_dir=channels,
                              main_policy=SimPolicy(**hang_up)) as eng:
        await one_visit(eng)
        sim = simulator_of(eng.sims["main_server"])

        async def dead() -> list[dict[str, Any]]:
            return [d for d in await eng.store.dead_letters(10) if d["destination"] == "ehr-main"]

        [letter] = await eventually(dead, timeout=15)
        msg = await eng.store.message(letter["id"])
        assert msg["attempts"] == budget and len(msg["attempt_log"]) == budget
        times = [a["at"] for a in msg["attempt_log"]]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert all(gap >= 0.09 for gap in gaps), gaps  # backed off
        assert "retry budget exhausted" in msg["error"]
        [lane] = [lane for lane in await eng.store.lanes("ehr-main", 10) if lane["held"]]
        assert sim.received == budget  # every send is an attempt on record
        # nothing more for it until an analyst acts: the lane stays held, the EHR unasked
        seen = sim.received
        await one_visit(eng, seed=99)  # other traffic still goes out (and hangs up)
        await eventually(lambda: sim.received > seen)
        assert sum(1 for r in received(tmp_path / "main.jsonl")
                   if r["msh10"] == letter["control_id"]) == budget


# ------------------------------------------------------------------ defect: extra ACKs


def sends_per_control_id(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in received(log):
        counts[rec["msh10"]] = counts.get(rec["msh10"], 0) + 1
    return counts


async def test_a_duplicate_ack_is_set_aside_not_read_as_the_next_reply(
        tmp_path: Path, store_url: str | None) -> None:
    """An EHR that answers every message twice: the extra ACK names a message already
    answered, so it is discarded and the next message's own ACK is read. Every message goes
    out once, under its one MSH-10; no connection is reset."""
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              main_policy=SimPolicy(duplicate_ack=True)) as eng:
        await post_stories(eng, 6, seed=31)
        counts = await eng.settle(20)
        assert counts.get("messages_queued", 0) == 0 and counts.get("messages_dead", 0) == 0
        rows = await acked(eng, "ehr-main")
        assert len(rows) >= 3
        assert set(sends_per_control_id(tmp_path / "main.jsonl").values()) == {1}
        assert_once_in_order(tmp_path / "main.jsonl", rows)
        assert simulator_of(eng.sims["main_server"]).connections <= 2  # one a slot: no reset
        stale = eng.engine.metrics.stale_acks.labels("ehr-main")._value.get()
        assert stale >= len(rows) - 2  # the last extra on each connection is never read


async def test_commit_ack_then_application_ack(tmp_path: Path, store_url: str | None) -> None:
    """Enhanced mode: CA, then AA for the same message. The CA delivers it; the AA that
    follows is discarded, never credited to the next message."""
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              main_policy=SimPolicy(commit_then_app_ack=True)) as eng:
        await post_stories(eng, 6, seed=32)
        counts = await eng.settle(20)
        assert counts.get("messages_queued", 0) == 0 and counts.get("messages_dead", 0) == 0
        rows = await acked(eng, "ehr-main")
        assert set(sends_per_control_id(tmp_path / "main.jsonl").values()) == {1}
        assert_once_in_order(tmp_path / "main.jsonl", rows)
        assert {(await eng.store.message(i))["ack_code"] for _, _, i in rows} == {"CA"}


async def test_an_ack_for_a_message_never_sent_still_resets(
        tmp_path: Path, store_url: str | None) -> None:
    """Only an ACK naming a message we sent earlier is set aside: a wrong MSA-2 is never
    credited and still costs the connection."""
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              main_policy=SimPolicy(wrong_msa2=True, duplicate_ack=True)) as eng:
        await one_visit(eng)
        sim = simulator_of(eng.sims["main_server"])
        await eventually(lambda: sim.received >= 3)
        assert await acked(eng, "ehr-main") == []
        assert sim.connections >= 2


# ------------------------------------------------------------------ defect: ACK details


async def dead_at(eng: Running, destination: str) -> list[dict[str, Any]]:
    return [d for d in await eng.store.dead_letters(50) if d["destination"] == destination]


async def test_v23_reject_with_msa6_201_is_a_dead_letter_at_once(
        tmp_path: Path, store_url: str | None) -> None:
    """v2.3 puts the error condition in MSA-6: AR 201 (unsupported event) would fail again,
    so it is dead-lettered on the first answer instead of retried for hours."""
    legacy = SimPolicy(encoding="ascii", ar_match=["MSH-9.2=S12"], ar_error_code="201",
                       error_in_msa6=True)
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              legacy_policy=legacy) as eng:
        await one_visit(eng)
        [letter] = await eventually(lambda: dead_at(eng, "ehr-legacy"), timeout=10)
        msg = await eng.store.message(letter["id"])
        assert msg["attempts"] == 1 and "201" in msg["error"]


async def test_v23_duplicate_key_in_msa6_on_a_resend_is_delivered(
        tmp_path: Path, store_url: str | None) -> None:
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              legacy_policy=SimPolicy(encoding="ascii", silent=True)) as eng:
        await one_visit(eng)
        sim = simulator_of(eng.sims["legacy_server"])
        await eventually(lambda: sim.received >= 1)  # it has it, never answered: a resend
        sim.policy = SimPolicy(encoding="ascii", duplicate_key_ae=True, error_in_msa6=True)
        rows = await eventually(lambda: acked(eng, "ehr-legacy"), timeout=10)
        assert sim.acks.get("AE", 0) >= 1 and not await dead_at(eng, "ehr-legacy")
        assert "205" in (await eng.store.message(rows[0][2]))["attempt_log"][-1]["detail"]


async def test_ae_with_only_warnings_is_delivered(tmp_path: Path, store_url: str | None) -> None:
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              main_policy=SimPolicy(ae_every=1, ae_severity="W")) as eng:
        await post_stories(eng, 3, seed=33)
        counts = await eng.settle(20)
        assert counts.get("messages_queued", 0) == 0 and counts.get("messages_dead", 0) == 0
        rows = await acked(eng, "ehr-main")
        assert rows and {(await eng.store.message(i))["ack_code"] for _, _, i in rows} == {"AE"}


async def test_ae_with_an_error_and_a_warning_is_still_a_dead_letter(
        tmp_path: Path, store_url: str | None) -> None:
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              main_policy=SimPolicy(ae_every=1, ae_severity="E")) as eng:
        await one_visit(eng)
        assert await eventually(lambda: dead_at(eng, "ehr-main"), timeout=10)


async def test_ar_205_on_a_resend_is_delivered_like_ae_205(
        tmp_path: Path, store_url: str | None) -> None:
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              main_policy=SimPolicy(silent=True)) as eng:
        await one_visit(eng)
        sim = simulator_of(eng.sims["main_server"])
        await eventually(lambda: sim.received >= 1)
        sim.policy = SimPolicy(ar_match=["MSH-9.2=S12"], ar_error_code="205")
        await eventually(lambda: acked(eng, "ehr-main"), timeout=10)
        assert sim.acks.get("AR", 0) >= 1 and not await dead_at(eng, "ehr-main")


async def test_ack_with_a_byte_order_mark_and_lf_line_ends(
        tmp_path: Path, store_url: str | None) -> None:
    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              main_policy=SimPolicy(bom=True, lf_line_ends=True)) as eng:
        await post_stories(eng, 3, seed=34)
        counts = await eng.settle(20)
        assert counts.get("messages_queued", 0) == 0 and counts.get("messages_dead", 0) == 0
        rows = await acked(eng, "ehr-main")
        assert rows and set(sends_per_control_id(tmp_path / "main.jsonl").values()) == {1}


# ------------------------------------------------------------------ defect: 205 never sent


async def test_duplicate_key_for_a_message_never_sent_is_not_delivered(
        tmp_path: Path, store_url: str | None) -> None:
    """Failed connects claim and release a message without sending it. When the EHR then
    answers its first send with AE 205 (duplicate key), that is a real conflict (another
    system filed the key), not "the EHR has it": a dead letter."""
    from engine.sim.ehr import run_sim, stop_sim

    async with running_engine(tmp_path, store_url=store_url, channels_dir=fast_channels(tmp_path),
                              start_sims=False) as eng:
        await one_visit(eng)
        failed = eng.engine.metrics.reconnects.labels("ehr-main", "failed")
        await eventually(lambda: failed._value.get() >= 3)  # claimed and released, unsent
        ports = eng.sims["ports"]
        main = await run_sim("127.0.0.1", ports["main"],
                             SimPolicy(ae_every=1, ae_error_code="205"), tmp_path / "main.jsonl")
        try:
            [letter] = await eventually(lambda: dead_at(eng, "ehr-main"), timeout=10)
            assert await acked(eng, "ehr-main") == []
            msg = await eng.store.message(letter["id"])
            assert len(msg["attempt_log"]) == 1 and "205" in msg["error"]
        finally:
            await stop_sim(main)


# ------------------------------------------------------------------ defect: stale lease check


def refused_for_lease(eng: Running) -> float:
    return sum(s.value for metric in eng.engine.metrics.messages.collect()
               for s in metric.samples
               if s.name.endswith("_total") and s.labels.get("outcome") == "lease_lost")


async def test_a_node_stalled_in_a_store_read_does_not_send_on_a_lease_it_lost(
        tmp_path: Path) -> None:
    """The issue's reorder: the lease was checked, then a store read (the attempt log of a
    message claimed before), then the send. Here that read really stalls (another session
    holds a lock on the attempts table) until the lane's lease has lapsed and a second node
    has claimed it. The stalled node must not send: the lease check comes after the last
    store read, right before the write, and is in memory."""
    import time

    import asyncpg

    from engine.store.postgres import PostgresStore
    from tests.conftest import pg_schema

    async with pg_schema() as url:
        other = PostgresStore(url)
        await other.open()
        try:
            channels = fast_channels(tmp_path, connection={"max_connections": 1})
            async with running_engine(tmp_path, store_url=url, channels_dir=channels,
                                      main_policy=SimPolicy(ae_every=1)) as eng:
                await one_visit(eng)
                [letter] = await eventually(lambda: dead_at(eng, "ehr-main"), timeout=10)
                await eventually(lambda: acked(eng, "ehr-legacy"))  # nothing else in flight
                sim = simulator_of(eng.sims["main_server"])
                sim.policy = SimPolicy()
                sent_before = sim.received
                # the analyst's resend, held back (paused) until the lock is in place
                await eng.store.set_channel_paused("family-medicine", True, "test")
                assert await eng.store.resend(letter["id"], "analyst")
                locker = await asyncpg.connect(url)
                try:
                    tx = locker.transaction()
                    await tx.start()
                    await locker.execute("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
                    await eng.store.set_channel_paused("family-medicine", False, "test")

                    async def stalled() -> bool:  # the engine claimed it, reads, waits
                        return bool(await locker.fetchval(
                            "SELECT count(*) FROM pg_locks WHERE NOT granted"
                            " AND relation = 'attempts'::regclass")
                            and await locker.fetchval(
                                "SELECT owner IS NOT NULL FROM lanes WHERE head_id = $1",
                                letter["id"]))

                    await eventually(stalled, timeout=10)
                    lease_until = await locker.fetchval(
                        "SELECT lease_until FROM lanes WHERE head_id = $1", letter["id"])
                    assert lease_until is not None
                    while time.time() <= lease_until:  # until the lease has lapsed
                        await asyncio.sleep(0.05)
                    taken = await other.claim_lane_heads("ehr-main", 10, "node-b/ehr-main/0/t",
                                                         60, time.time())
                    assert [m.id for m in taken] == [letter["id"]]
                    await tx.rollback()
                finally:
                    await locker.close()
                # the stalled node either sends (the defect) or refuses for its lease
                await eventually(lambda: sim.received > sent_before or refused_for_lease(eng))
                assert sim.received == sent_before, "sent on a lease another node holds"
                # node B gives the lane back: the message then goes out once
                await other.release_claims("node-b/ehr-main/0/t")
                await eventually(lambda: acked(eng, "ehr-main"), timeout=10)
                assert sum(1 for r in received(tmp_path / "main.jsonl")
                           if r["msh10"] == letter["control_id"]) == 2  # the AE'd, the resend
        finally:
            await other.close()


# ------------------------------------------------------------------ defect: writes with no deadline


async def _send_big_to(policy: SimPolicy, size: int) -> tuple[type[BaseException], float]:
    from engine.mllp.client import open_connection
    from engine.mllp.settings import ConnectionSettings
    from engine.sim.ehr import run_sim, stop_sim

    server = await run_sim("127.0.0.1", 0, policy)
    port = server.sockets[0].getsockname()[1]
    settings = ConnectionSettings(response_timeout_seconds=0.5, connect_timeout_seconds=1)
    loop = asyncio.get_running_loop()
    try:
        conn = await open_connection("127.0.0.1", port, settings)
        started = loop.time()
        try:
            async with asyncio.timeout(10):  # far past the deadline: the defect
                await conn.send(b"MSH|^~\\&|A|B|C|D|20250101||SIU^S12|BIG-1|P|2.5.1\r"
                                + b"NTE|1||" + b"x" * size + b"\r")
        except BaseException as exc:  # noqa: BLE001
            return type(exc), loop.time() - started
        finally:
            await conn.close()
        raise AssertionError("a peer that does not read answered")
    finally:
        await stop_sim(server)


async def test_a_large_frame_to_a_peer_that_never_reads_times_out_within_the_deadline() -> None:
    from engine.mllp.errors import ResponseTimeout

    kind, took = await _send_big_to(SimPolicy(never_read=True), 32_000_000)
    assert kind is ResponseTimeout and took < 2.0, (kind, took)


async def test_a_large_frame_to_a_peer_reading_a_byte_a_second_times_out() -> None:
    from engine.mllp.errors import ResponseTimeout

    kind, took = await _send_big_to(SimPolicy(read_bytes_per_second=1), 32_000_000)
    assert kind is ResponseTimeout and took < 2.0, (kind, took)


async def test_ehr_that_accepts_and_resets_is_not_reconnected_in_a_loop(
        tmp_path: Path, store_url: str | None) -> None:
    """Accept, then reset at once: whether the reset is seen before the write (nothing sent,
    no attempt) or after it (an attempt), reconnects follow the back-off and attempts the
    budget; when the EHR behaves again the message goes out."""
    budget = 3
    channels = fast_channels(tmp_path, retry={"max_attempts": budget})
    async with running_engine(tmp_path, store_url=store_url, channels_dir=channels,
                              main_policy=SimPolicy(accept_then_reset=True)) as eng:
        await one_visit(eng)
        sim = simulator_of(eng.sims["main_server"])

        async def dead_or_many() -> bool:
            return bool(await dead_at(eng, "ehr-main")) or sim.connections >= 8

        await eventually(dead_or_many)
        assert sim.connections < 50  # a tight loop makes hundreds in one poll interval
        msgs = await messages_to(eng, "ehr-main")
        assert msgs and all(len(m["attempt_log"]) <= budget for m in msgs)
        sim.policy = SimPolicy()
        for letter in await dead_at(eng, "ehr-main"):  # the analyst sends it again
            assert await eng.store.resend(letter["id"], "analyst")
        await eventually(lambda: acked(eng, "ehr-main"), timeout=10)
