"""kill -9 the engine while it delivers, restart it: every change reaches each EHR under one
MSH-10, in order per appointment; the only repeats are messages in flight, same MSH-10."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections import defaultdict
from pathlib import Path

import httpx
import psutil
import pytest

from engine.config.outbound import load_config
from engine.sim.bookings import StoryTeller, compact, sign
from load.harness import REPO, free_port, sim_log, start, wait_ready
from tests.engine_harness import eventually
from tests.system.test_crash_intake import SECRET


def db_rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.slow
async def test_sigkill_mid_delivery_then_restart(tmp_path: Path) -> None:
    ports = {"main": free_port(), "legacy": free_port()}
    env = {**os.environ, "CALHL7_WEBHOOK_SECRET": SECRET, "CALHL7_LOG_LEVEL": "warning",
           "EHR_MAIN_PORT": str(ports["main"]), "EHR_LEGACY_PORT": str(ports["legacy"])}
    logs = {k: tmp_path / f"{k}.jsonl" for k in ports}
    # the EHRs answer slowly, so kill -9 lands while messages are in flight
    sims = [start(["sim-ehr", "--port", str(p), "--delay-ms", "3", "--log", str(logs[k])], env)
            for k, p in ports.items()]
    http = free_port()
    serve = ["serve", "--http", f"127.0.0.1:{http}", "--data", str(tmp_path),
             "--channels", str(REPO / "channels")]
    engine = start(serve, env)
    try:
        await wait_ready(http, engine)
        teller = StoryTeller(seed=31)
        stories = [teller.story() for _ in range(150)]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http}") as client:
            async def post(story) -> None:  # noqa: ANN001
                for hook in story.webhooks:  # a story's webhooks in order, stories in parallel
                    body = compact(hook)
                    r = await client.post("/webhooks/calcom", content=body, headers={
                        "Content-Type": "application/json",
                        "X-Cal-Signature-256": sign(body, SECRET)})
                    assert r.status_code == 200

            for i in range(0, len(stories), 10):
                await asyncio.gather(*(post(s) for s in stories[i:i + 10]))
        # kill once deliveries are well under way
        await eventually(lambda: len(sim_log(logs["main"])) >= 40, timeout=10, interval=0.01)
        helpers = psutil.Process(engine.pid).children(recursive=True)
        assert helpers, "serve runs the pure core in a helper process by default"
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
        _, alive = psutil.wait_procs(helpers, timeout=5)
        assert alive == [], "helper processes outlived a kill -9 of the engine"
        delivered_before = len(sim_log(logs["main"])) + len(sim_log(logs["legacy"]))

        engine = start(serve, env)
        await wait_ready(http, engine)
        db = tmp_path / "calhl7.sqlite3"
        await eventually(lambda: db_rows(  # a busy CI machine: up to a minute to drain
            db, "SELECT (SELECT COUNT(*) FROM outbound WHERE status = 'queued')"
                " + (SELECT COUNT(*) FROM received_events WHERE state = 'pending')") == [(0,)],
            timeout=60)
    finally:
        for proc in (engine, *sims):
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)

    config = load_config(REPO / "channels")
    rows = db_rows(db, "SELECT id, destination, appointment_id, control_id, status"
                       " FROM outbound ORDER BY id")
    assert all(status == "acked" for *_, status in rows)
    by_dest = {"ehr-main": sim_log(logs["main"]), "ehr-legacy": sim_log(logs["legacy"])}
    assert sum(len(v) for v in by_dest.values()) >= delivered_before
    for dest, seen in by_dest.items():
        ours = [r for r in rows if r[1] == dest]
        control_ids = {r[3] for r in ours}
        seen_ids = [s["msh10"] for s in seen]
        # every change arrived, under the one MSH-10 it was given; nothing else arrived
        assert set(seen_ids) == control_ids, dest
        # repeats are resends of the same MSH-10: per connection at most the message in
        # flight at the kill and the ACKs not yet committed (the destination's commit window)
        settings = config.destinations[dest].connection
        repeats = len(seen_ids) - len(set(seen_ids))
        bound = (settings.commit_window + 1) * settings.max_connections
        assert repeats <= bound, f"{dest}: {repeats} repeats"
        first = {}
        for i, cid in enumerate(seen_ids):
            first.setdefault(cid, i)
        per_appointment: dict[str, list[int]] = defaultdict(list)
        for _id, _d, appointment, cid, _s in ours:
            per_appointment[appointment].append(first[cid])
        for appointment, order in per_appointment.items():
            assert order == sorted(order), f"{dest}: {appointment} out of order"
