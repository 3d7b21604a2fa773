"""End to end on PostgreSQL against SQLite, in one run (issue 8's benchmark).

    .venv/bin/python load/bench_pg.py [--runs 3] [--webhooks 3000] [--connections 8]
                                      [--nodes 1 2 3] [--failover]

Each run: a fresh store (SQLite file / PostgreSQL schema), one simulator, the engine nodes;
N signed webhooks posted by 32 clients, spread over the nodes; messages/s from the first post
to the last ACK committed. Floor: one PostgreSQL node at least 60% of one SQLite node. Several
nodes share this machine's two cores with PostgreSQL, so their figures have no floor.

Every run is also checked: each webhook answered 2xx, stored and processed; each message
reached the EHR, under its one MSH-10, once per change, in order per appointment (see
load/correctness.check_outbound).

`--failover`: two nodes, webhooks posted to the second; once 400 messages are acknowledged the
first (started first, so it holds every connection slot and the processing lead) is killed
with SIGKILL. Reported: how long delivery stopped, and when the lanes it held went on.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402

from load import bench_intake  # noqa: E402
from load.bench import engine_env, main_only_channels, start_engine  # noqa: E402
from load.correctness import check_outbound, read_sim_log  # noqa: E402
from load.harness import Procs  # noqa: E402
from load.httpload import send_all  # noqa: E402
from load.run import start_sim  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432/test"
CLIENTS = 32
# check_outbound's columns, then when the ACK was recorded
_OUTBOUND = ("SELECT id, appointment_id, control_id, status, event_id, channel, message_type,"
             " acked_at FROM outbound")


@dataclass
class Run:
    rate: float  # messages acknowledged per second, first post to last ACK
    problems: dict[str, int]  # all 0 in a clean run


@contextmanager
def pg_schema() -> Iterator[str]:
    schema = "bench_" + uuid.uuid4().hex[:10]
    asyncio.run(_exec(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG}?options=-csearch_path%3D{schema}"
    finally:
        asyncio.run(_exec(f'DROP SCHEMA "{schema}" CASCADE'))


async def _exec(sql: str) -> None:
    conn = await asyncpg.connect(PG)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _pg_fetch(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def _sqlite_fetch(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _drained(fetch: Any) -> bool:
    queued = fetch("SELECT COUNT(*) FROM outbound WHERE status = 'queued'")[0][0]
    return queued == 0 and _intake(fetch)[1] == 0


def _drain(fetch: Any) -> tuple[list[tuple[Any, ...]], int, int]:
    """Wait (5 min at most) until nothing is queued or pending; then the outbound rows, the
    webhooks stored, and those still pending (a drain that gave up shows in the check)."""
    deadline = time.time() + 300
    while not _drained(fetch) and time.time() < deadline:
        time.sleep(0.1)
    return fetch(_OUTBOUND), *_intake(fetch)


def _intake(fetch: Any) -> tuple[int, int]:
    """Webhooks stored, and of those still pending."""
    stored, pending = fetch("SELECT COUNT(*), COUNT(*) FILTER (WHERE state = 'pending')"
                            " FROM received_events")[0]
    return stored, pending or 0


def _problems(rows: list[tuple[Any, ...]], sim_log: Path, answered: int, sent: int,
              stored: int, pending: int) -> dict[str, int]:
    """Everything that makes a run unclean: the webhooks (each body is unique, so every one
    must be answered 2xx and stored, and none left pending), then check_outbound."""
    return {"refused": sent - answered, "not_stored": answered - stored, "pending": pending,
            **check_outbound(rows, read_sim_log(sim_log))}


async def _post_spread(ports: list[int], webhooks: list[bytes]) -> int:
    """A load balancer's round robin: webhook i to node i mod n. Returns how many got a 2xx."""
    n = len(ports)
    results = await asyncio.gather(*(
        send_all("127.0.0.1", port, webhooks[i::n], max(1, CLIENTS // n))
        for i, port in enumerate(ports)))
    return sum(r.ok for r in results)


def once(kind: str, webhooks: list[bytes], connections: int, tmp: Path, nodes: int = 1) -> Run:
    with pg_schema() if kind == "postgres" else nullcontext() as url:
        procs = Procs()
        try:
            sim_port, sim_log = start_sim(procs, "sim", tmp)
            channels = main_only_channels(tmp / "channels", connections)
            ports = []
            for i in range(nodes):
                extra = ["--store", url, "--node-id", f"node-{i}"] if url else []
                _, port = start_engine(procs, tmp / f"data{i}", channels, engine_env(sim_port),
                                       tmp / f"engine{i}.out", extra)
                ports.append(port)
            time.sleep(0.5)

            def fetch(sql: str) -> list[tuple[Any, ...]]:
                return (asyncio.run(_pg_fetch(url, sql)) if url
                        else _sqlite_fetch(tmp / "data0" / "calhl7.sqlite3", sql))

            t0 = time.time()
            answered = asyncio.run(_post_spread(ports, webhooks))
            rows, stored, pending = _drain(fetch)
        finally:
            procs.stop()  # the simulator's log is complete once it has stopped
    acked_at = [r[7] for r in rows if r[3] == "acked"]
    rate = len(acked_at) / (max(acked_at) - t0) if acked_at else 0.0
    return Run(rate, _problems(rows, sim_log, answered, len(webhooks), stored, pending))


def failover_once(webhooks: list[bytes], connections: int, tmp: Path) -> dict[str, Any]:
    with pg_schema() as url:
        procs = Procs()
        try:
            sim_port, sim_log = start_sim(procs, "sim", tmp)
            channels = main_only_channels(tmp / "channels", connections)

            def fetch(sql: str) -> list[tuple[Any, ...]]:
                return asyncio.run(_pg_fetch(url, sql))

            def start(name: str) -> tuple[Any, int]:
                return start_engine(procs, tmp / name, channels, engine_env(sim_port),
                                    tmp / f"{name}.out", ["--store", url, "--node-id", name])

            victim, _ = start("node-a")  # first: it takes every slot (and the lead)
            deadline = time.time() + 30
            while fetch("SELECT COUNT(*) FROM destination_slots WHERE owner LIKE 'node-a/%'"
                        )[0][0] < connections:
                if time.time() > deadline:
                    raise SystemExit("failover: node-a never took every connection slot")
                time.sleep(0.05)
            _, intake_port = start("node-b")
            killed = asyncio.run(_kill_mid_stream(url, victim, intake_port, webhooks))
            rows, stored, pending = _drain(fetch)
            # per lane the dead node held: its first ACK after the kill
            resumed = [r[0] for r in asyncio.run(_pg_fetch(
                url, "SELECT MIN(acked_at) FROM outbound WHERE lane_id = ANY($1::bigint[])"
                     " AND acked_at > $2 GROUP BY lane_id", killed["lanes"], killed["at"]))]
        finally:
            procs.stop()
    after = [r[7] for r in rows if r[7] is not None and r[7] > killed["at"]]
    return {
        "slots_held": killed["slots"], "lanes_held": len(killed["lanes"]),
        "delivery_stopped_s": (min(after) - killed["at"]) if after else None,
        "its_lanes_resumed_s": (max(resumed) - killed["at"]) if resumed else None,
        "problems": _problems(rows, sim_log, killed["answered"], len(webhooks), stored,
                              pending),
    }


async def _kill_mid_stream(url: str, victim: Any, intake_port: int,
                           webhooks: list[bytes]) -> dict[str, Any]:
    posting = asyncio.create_task(send_all("127.0.0.1", intake_port, webhooks, CLIENTS))
    conn = await asyncpg.connect(url)
    try:
        deadline = time.time() + 120
        while await conn.fetchval("SELECT COUNT(*) FROM outbound WHERE status = 'acked'") < 400:
            if time.time() > deadline:
                raise SystemExit("failover: 400 messages were never acknowledged; use more"
                                 " --webhooks, or see the engines' output")
            await asyncio.sleep(0.02)
        slots = await conn.fetchval("SELECT COUNT(*) FROM destination_slots"
                                    " WHERE owner LIKE 'node-a/%' AND lease_until > $1",
                                    time.time())
        lanes = [r[0] for r in await conn.fetch("SELECT id FROM lanes"
                                                " WHERE owner LIKE 'node-a/%'")]
        victim.send_signal(signal.SIGKILL)
        killed_at = time.time()
    finally:
        await conn.close()
    answered = (await posting).ok
    return {"at": killed_at, "slots": slots, "lanes": lanes, "answered": answered}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--webhooks", type=int, default=3000)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1],
                    help="PostgreSQL node counts to run (SQLite always runs one)")
    ap.add_argument("--failover", action="store_true", help="also the failover run")
    args = ap.parse_args()
    webhooks = bench_intake.requests(args.webhooks, seed=17)[:args.webhooks]
    kinds = [("sqlite", 1)] + [("postgres", n) for n in args.nodes]
    figures: dict[tuple[str, int], list[float]] = {k: [] for k in kinds}
    clean = True
    for run in range(args.runs):
        for kind, nodes in kinds:  # interleaved: the same machine state for each
            with tempfile.TemporaryDirectory() as tmp:
                result = once(kind, webhooks, args.connections, Path(tmp), nodes)
            figures[(kind, nodes)].append(result.rate)
            bad = {k: v for k, v in result.problems.items() if v}
            clean &= not bad
            print(f"run {run + 1}: {kind:<8} {nodes} node{'s' if nodes > 1 else ' '}"
                  f" {result.rate:,.0f} msg/s end to end; {bad or 'clean'}", flush=True)
    sq = statistics.median(figures[("sqlite", 1)])
    print(f"\nmedians over {args.runs} runs (SQLite, one node: {sq:,.0f} msg/s):")
    for (kind, nodes), rates in figures.items():
        if kind == "postgres":
            floor = " (floor 0.60)" if nodes == 1 else ""
            print(f"  PostgreSQL, {nodes} node{'s' if nodes > 1 else ''}:"
                  f" {statistics.median(rates):,.0f} msg/s, ratio"
                  f" {statistics.median(rates) / sq:.2f}{floor}")
    if args.failover:
        with tempfile.TemporaryDirectory() as tmp:
            f = failover_once(webhooks, args.connections, Path(tmp))
        bad = {k: v for k, v in f["problems"].items() if v}
        clean &= not bad
        print(f"\nfailover: node-a held {f['slots_held']} connection slots and"
              f" {f['lanes_held']} lanes when killed; delivery stopped for"
              f" {_seconds(f['delivery_stopped_s'])}; the last of its lanes went on after"
              f" {_seconds(f['its_lanes_resumed_s'])}; {bad or 'clean'}")
    print("\nevery run clean (every webhook stored and processed; every message delivered once,"
          " under its one MSH-10, in order)" if clean else "\nNOT CLEAN: see the runs above")


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    main()
