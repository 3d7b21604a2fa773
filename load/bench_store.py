"""accept_webhook throughput with 64 concurrent callers: SQLite vs PostgreSQL (median of 3).

    .venv/bin/python load/bench_store.py [sqlite] [postgres] [postgres-unbatched]

`postgres-unbatched` stores each webhook in its own statement and commit (what intake would
cost without group commit), for reference. PostgreSQL: CALHL7_TEST_PG or the local server;
every run gets a fresh schema, dropped afterwards. Bodies are ~1.5 KB, like a booking webhook.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from engine.store import base
from engine.store.base import AcceptResult, IncomingWebhook
from engine.store.sqlite import SQLiteStore

PG_URL = os.environ.get("CALHL7_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CALLERS = 64
TOTAL = int(os.environ.get("BENCH_TOTAL", "20000"))
RUNS = 3
_PAD = b"x" * 1400


def _hook(i: int, run: str) -> IncomingWebhook:
    body = b'{"run":"%s","n":%d,"pad":"%s"}' % (run.encode(), i, _PAD)
    return IncomingWebhook("default", body, hashlib.sha256(body).digest(), "application/json",
                           "BOOKING_CREATED", f"uid-{i}", time.time(), f"c{i}", base.PENDING)


async def _drive(store: Any) -> float:
    run = uuid.uuid4().hex
    hooks = iter([_hook(i, run) for i in range(TOTAL)])

    async def caller() -> None:
        for h in hooks:
            await store.accept_webhook(h)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return TOTAL / (time.perf_counter() - started)


async def _once(kind: str) -> float:
    if kind == "sqlite":
        sqlite = SQLiteStore(Path(tempfile.mkdtemp(prefix="bench-store-")) / "s.sqlite3")
        await sqlite.open()
        try:
            return await _drive(sqlite)
        finally:
            await sqlite.close()
    import asyncpg

    from engine.store.postgres import PostgresStore

    schema = "bench_" + uuid.uuid4().hex[:10]
    admin = await asyncpg.connect(PG_URL)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    store = PostgresStore(f"{PG_URL}?options=-csearch_path%3D{schema}")
    try:
        await store.open()
        if kind == "postgres-unbatched":
            async def one_by_one(w: IncomingWebhook) -> AcceptResult:
                return (await store._insert_events([w]))[0]

            store.accept_webhook = one_by_one  # type: ignore[method-assign]
        return await _drive(store)
    finally:
        await store.close()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def main(kinds: list[str]) -> None:
    for kind in kinds:
        runs = [await _once(kind) for _ in range(RUNS)]
        print(f"{kind:20s} median {statistics.median(runs):8.0f} webhooks/s"
              f"   runs {[round(r) for r in runs]}   ({CALLERS} callers, {TOTAL} each run)",
              flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["sqlite", "postgres", "postgres-unbatched"]))
