"""The HTTP edge against slow and hostile clients, over the real server: bodies announced and
never sent, connections that never finish their headers, floods of connections; and values
from outside quoted in stored error texts only up to a bound."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.sim.bookings import compact, sign
from tests.calcom_factory import load_sample as sample
from tests.engine_harness import SECRET, running_engine


async def test_an_organizer_id_of_thousands_of_digits_is_quoted_only_in_part(
        tmp_path: Path) -> None:
    async with running_engine(tmp_path) as eng:
        for digits in (4000, 5000):  # 5000: over Python's integer-parsing limit as well
            hook = sample("booking_created")
            hook["payload"]["organizer"]["id"] = 7
            hook["payload"]["uid"] = f"long-organizer-{digits}"
            body = compact(hook).replace(b'"id":7,', b'"id":' + b"9" * digits + b",", 1)
            r = await eng.client.post("/webhooks/calcom", content=body, headers={
                "Content-Type": "application/json", "X-Cal-Signature-256": sign(body, SECRET)})
            assert r.status_code in (200, 202), r.text  # intake never refuses a signed body
        await eng.settle()
        texts = [str(d["error"]) for d in await eng.store.dead_letters(50)]
        texts += [str(e.reason) for e in await eng.store.events("quarantined", 50)]
        assert texts, "the unmapped organizer went nowhere"
        for text in texts:
            assert "9" * 100 not in text and len(text) < 400
        assert any("4000" in t for t in texts)  # says how long the value was


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes | None:
    """What the server sent before closing, or None while it keeps the connection open."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except TimeoutError:
        return None


async def test_a_body_announced_and_never_sent_gets_408(tmp_path: Path) -> None:
    async with running_engine(tmp_path, http_body_timeout_seconds=0.5) as eng:
        reader, writer = await asyncio.open_connection("127.0.0.1", eng.engine.http_port)
        writer.write(b"POST /webhooks/calcom HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nX-Cal-Signature-256: 00\r\n"
                     b"Content-Length: 100\r\n\r\n" + b"{")
        await writer.drain()
        answer = await _closed_by_server(reader, 5)
        writer.close()
        assert answer is not None and answer.split()[1] == b"408"
        assert eng.engine.metrics.webhooks.labels("default", "other", "timeout")._value.get() == 1
        assert await eng.store.counts() == {}
        # the next, well-behaved client is served
        assert (await eng.post(sample("booking_created"))).status_code == 200


async def test_unfinished_headers_and_connection_floods_are_cut_off(tmp_path: Path) -> None:
    async with running_engine(tmp_path, http_header_timeout_seconds=0.5,
                              http_max_connections=20) as eng:
        port = eng.engine.http_port
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]
        for _, writer in conns:
            writer.write(b"POST /webhooks/calcom HTTP/1.1\r\nHost: x\r\nContent-")
        # those over the cap at once, the rest when their headers do not come
        answers = await asyncio.gather(*(_closed_by_server(r, 5) for r, _ in conns))
        assert all(a is not None for a in answers)
        for _, writer in conns:
            writer.close()
        closed = eng.engine.metrics.http_connections_closed
        assert closed.labels("over_cap")._value.get() == 10
        assert closed.labels("header_timeout")._value.get() == 20
        assert (await eng.post(sample("booking_created"))).status_code == 200
