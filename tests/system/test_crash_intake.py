"""kill -9 while webhooks stream in: every webhook that got a 2xx is in the store afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from engine.sim.bookings import StoryTeller, compact, sign
from load import harness
from load.harness import free_port, wait_ready
from tests.engine_harness import eventually

SECRET = "crash-test-secret"


def start_engine(data: Path, port: int) -> subprocess.Popen[bytes]:
    return harness.start_engine(data, port, harness.engine_env(SECRET))


@pytest.mark.slow
def _pending(data: Path) -> int:
    db = sqlite3.connect(data / "calhl7.sqlite3")
    try:
        return db.execute("SELECT COUNT(*) FROM received_events WHERE state = 'pending'"
                          ).fetchone()[0]
    finally:
        db.close()


async def test_sigkill_loses_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    port = free_port()
    proc = start_engine(tmp_path, port)
    await wait_ready(port, proc)
    teller = StoryTeller(seed=99)
    bodies = [compact(h) for _ in range(400) for h in teller.story().webhooks]
    acknowledged: list[bytes] = []

    async def sender(chunk: list[bytes]) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for body in chunk:
                try:
                    r = await client.post("/webhooks/calcom", content=body, headers={
                        "Content-Type": "application/json",
                        "X-Cal-Signature-256": sign(body, SECRET)})
                except httpx.TransportError:
                    return  # the engine is gone
                if 200 <= r.status_code < 300:
                    acknowledged.append(body)

    async def killer() -> None:
        while len(acknowledged) < 150:
            await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGKILL)

    chunks = [bodies[i::16] for i in range(16)]
    await asyncio.gather(killer(), *(sender(c) for c in chunks))
    proc.wait(10)
    assert len(acknowledged) >= 150 and len(acknowledged) < len(bodies)

    db = sqlite3.connect(tmp_path / "calhl7.sqlite3")
    stored = {row[0] for row in db.execute("SELECT body_sha256 FROM received_events")}
    db.close()
    missing = [b for b in acknowledged if hashlib.sha256(b).digest() not in stored]
    assert missing == [], f"{len(missing)} acknowledged webhooks lost"

    # the restarted engine picks the pending ones up
    proc = start_engine(tmp_path, port)
    try:
        await wait_ready(port, proc)
        await eventually(lambda: _pending(tmp_path) == 0, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0  # clean shutdown on SIGTERM
