"""A node stopped (SIGSTOP) past its delivery lease, with real processes on one PostgreSQL:
it must not send on the lease it lost."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import defaultdict
from pathlib import Path

import asyncpg
import httpx
import pytest

from engine.sim.bookings import StoryTeller, compact, sign
from load.harness import free_port, sim_log, start, wait_ready
from tests.conftest import pg_schema
from tests.engine_harness import fast_channels
from tests.system.test_crash_intake import SECRET


@pytest.mark.slow
async def test_a_node_paused_past_its_lease_resumes_without_reordering(tmp_path: Path) -> None:
    """Two `calhl7 serve` processes on one PostgreSQL, one EHR connection for the cluster.
    The node holding it is SIGSTOPped mid-delivery for longer than its lease; the other takes
    over; then the first resumes. It must find its lease lost in memory and not send on it:
    every change reaches the EHR under one MSH-10 and, per appointment, in order."""
    channels = fast_channels(tmp_path, connection={"max_connections": 1})
    ports = {"main": free_port(), "legacy": free_port()}
    env = {**os.environ, "CALHL7_WEBHOOK_SECRET": SECRET, "CALHL7_LOG_LEVEL": "warning",
           "EHR_MAIN_PORT": str(ports["main"]), "EHR_LEGACY_PORT": str(ports["legacy"])}
    logs = {k: tmp_path / f"{k}.jsonl" for k in ports}
    sims = [start(["sim-ehr", "--port", str(p), "--delay-ms", "20", "--log", str(logs[k])], env)
            for k, p in ports.items()]
    async with pg_schema() as url:
        http = [free_port(), free_port()]
        nodes = [start(["serve", "--store", url, "--http", f"127.0.0.1:{port}",
                        "--channels", str(channels), "--node-id", f"node-{i}",
                        "--processing-processes", "0"], env)
                 for i, port in enumerate(http)]
        try:
            for port, node in zip(http, nodes, strict=True):
                await wait_ready(port, node)
            teller = StoryTeller(seed=43)
            async with httpx.AsyncClient(timeout=5) as client:
                for story in [teller.story() for _ in range(40)]:
                    for hook in story.webhooks:
                        body = compact(hook)
                        r = await client.post(
                            f"http://127.0.0.1:{http[1]}/webhooks/calcom", content=body,
                            headers={"Content-Type": "application/json",
                                     "X-Cal-Signature-256": sign(body, SECRET)})
                        assert r.status_code == 200
            conn = await asyncpg.connect(url)
            try:
                holder = None
                for _ in range(400):  # whoever holds ehr-main's one slot, mid-delivery
                    owner = await conn.fetchval("SELECT owner FROM destination_slots"
                                                " WHERE destination = 'ehr-main'")
                    if owner and len(sim_log(logs["main"])) >= 5:
                        holder = 0 if owner.startswith("node-0/") else 1
                        break
                    await asyncio.sleep(0.02)
                assert holder is not None, "no node is delivering to ehr-main"
                nodes[holder].send_signal(signal.SIGSTOP)
                try:
                    # the other node takes the slot over once the lease (3 s) has lapsed
                    took_over = False
                    for _ in range(600):
                        owner = await conn.fetchval("SELECT owner FROM destination_slots"
                                                    " WHERE destination = 'ehr-main'")
                        if owner and not owner.startswith(f"node-{holder}/"):
                            took_over = True
                            break
                        await asyncio.sleep(0.02)
                    assert took_over, "the other node never took the slot over"
                    before = len(sim_log(logs["main"]))
                    for _ in range(200):  # and delivers for a while
                        if len(sim_log(logs["main"])) > before + 5:
                            break
                        await asyncio.sleep(0.02)
                finally:
                    nodes[holder].send_signal(signal.SIGCONT)
                for _ in range(1200):
                    left = await conn.fetchval(
                        "SELECT COUNT(*) FROM outbound WHERE status = 'queued'")
                    pending = await conn.fetchval(
                        "SELECT COUNT(*) FROM received_events WHERE state = 'pending'")
                    if left == 0 and pending == 0:
                        break
                    await asyncio.sleep(0.05)
                assert left == 0 and pending == 0
                rows = await conn.fetch("SELECT destination, appointment_id, control_id, status"
                                        " FROM outbound WHERE destination = 'ehr-main'"
                                        " ORDER BY id")
            finally:
                await conn.close()
        finally:
            for proc in (*nodes, *sims):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(15)
    assert rows and all(r["status"] == "acked" for r in rows)
    seen_ids = [str(s["msh10"]) for s in sim_log(logs["main"])]
    assert set(seen_ids) == {r["control_id"] for r in rows}  # one MSH-10 per change
    first: dict[str, int] = {}
    for i, cid in enumerate(seen_ids):
        first.setdefault(cid, i)
    last: dict[str, int] = {cid: i for i, cid in enumerate(seen_ids)}
    per_appt: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        per_appt[r["appointment_id"]].append(r["control_id"])
    for appt, ids in per_appt.items():
        # in order, and no repeat of a change after a later one of the same appointment
        assert all(last[a] < first[b] for a, b in zip(ids, ids[1:], strict=False)), appt
