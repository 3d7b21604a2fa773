"""End to end on PostgreSQL against SQLite, one node each, in one run (issue 8's floor: the
PostgreSQL node at least 60% of the SQLite figure).

    .venv/bin/python load/bench_pg.py [--runs 3] [--webhooks 3000] [--connections 8]

Each run: a fresh store (SQLite file / PostgreSQL schema), one simulator, one engine; N signed
webhooks posted by 32 clients; messages/s from the first post to the last ACK committed.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402

from load import bench_intake  # noqa: E402
from load.bench import engine_env, main_only_channels, start_engine  # noqa: E402
from load.httpload import send_all  # noqa: E402
from load.run import Procs, start_sim  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/test"


async def pg_rows(url: str) -> tuple[int, int, list[tuple[float, float]]]:
    conn = await asyncpg.connect(url)
    try:
        queued = await conn.fetchval("SELECT COUNT(*) FROM outbound WHERE status = 'queued'")
        pending = await conn.fetchval(
            "SELECT COUNT(*) FROM received_events WHERE state = 'pending'")
        rows = await conn.fetch("SELECT accepted_at, acked_at FROM outbound WHERE status = 'acked'")
        return queued, pending, [(r[0], r[1]) for r in rows]
    finally:
        await conn.close()


def sqlite_rows(db: Path) -> tuple[int, int, list[tuple[float, float]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        queued = conn.execute("SELECT COUNT(*) FROM outbound WHERE status = 'queued'").fetchone()[0]
        pending = conn.execute(
            "SELECT COUNT(*) FROM received_events WHERE state = 'pending'").fetchone()[0]
        rows = conn.execute("SELECT accepted_at, acked_at FROM outbound"
                            " WHERE status = 'acked'").fetchall()
        return queued, pending, rows
    finally:
        conn.close()


def once(kind: str, webhooks: list[bytes], connections: int, tmp: Path) -> float:
    procs = Procs()
    url = None
    try:
        if kind == "postgres":
            schema = "bench_" + uuid.uuid4().hex[:10]
            asyncio.run(_exec(f'CREATE SCHEMA "{schema}"'))
            url = f"{PG}?options=-csearch_path%3D{schema}"
        sim_port, _ = start_sim(procs, "sim", tmp)
        channels = main_only_channels(tmp / "channels", connections)
        extra = ["--store", url] if url else []
        _, port = start_engine(procs, tmp / "data", channels, engine_env(sim_port),
                               tmp / "engine.out", extra)
        time.sleep(0.5)
        t0 = time.time()
        asyncio.run(send_all("127.0.0.1", port, webhooks, 32))
        deadline = time.time() + 300
        while time.time() < deadline:
            queued, pending, rows = (asyncio.run(pg_rows(url)) if url
                                     else sqlite_rows(tmp / "data" / "calhl7.sqlite3"))
            if queued == 0 and pending == 0:
                break
            time.sleep(0.1)
        return len(rows) / (max(r[1] for r in rows) - t0)
    finally:
        procs.stop()
        if url:
            asyncio.run(_exec(f'DROP SCHEMA "{schema}" CASCADE'))


async def _exec(sql: str) -> None:
    conn = await asyncpg.connect(PG)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--webhooks", type=int, default=3000)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    webhooks = bench_intake.requests(args.webhooks, seed=17)[:args.webhooks]
    figures: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    for run in range(args.runs):
        for kind in ("sqlite", "postgres"):  # interleaved: the same machine state for both
            with tempfile.TemporaryDirectory() as tmp:
                rate = once(kind, webhooks, args.connections, Path(tmp))
            figures[kind].append(rate)
            print(f"run {run + 1}: {kind:<8} {rate:,.0f} msg/s end to end", flush=True)
    sq, pg = (statistics.median(figures[k]) for k in ("sqlite", "postgres"))
    print(f"\nmedians over {args.runs} runs: SQLite {sq:,.0f} msg/s, PostgreSQL {pg:,.0f} msg/s,"
          f" ratio {pg / sq:.2f} (floor 0.60)")


if __name__ == "__main__":
    main()
