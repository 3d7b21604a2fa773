"""The calhl7 benchmark suite: every figure, each with its baseline and its floor, in one run.

    ./dev bench            (= .venv/bin/python load/bench.py)      about 10 minutes
    ./dev bench --quick    shorter runs, 1 run each, a 100,000-message backlog: ~3 minutes

Figures (medians over --runs runs; each ratio is to a baseline measured in the same run):
  intake      accepted webhooks/s (32 connections, closed loop) vs the bare endpoint on the
              same server stack; p99 at a fixed 500/s (open loop)       [load/bench_intake.py]
  render      SIU renders/s on one core                               [load/bench_render.py]
  end to end  webhook -> SIU -> ACK AA recorded in the store, with 1 and 8 connections to
              ehr-main (only the family-medicine channel): messages/s from the first webhook
              posted to the last ACK recorded, p50/p99 of acked_at - accepted_at; vs the raw
              MLLP transport: the same rendered messages sent by engine.mllp's client to the
              same simulator process over the same number of connections. Two workloads,
              each a burst posted by 32 clients: family-medicine bookings only (each webhook
              one SIU for ehr-main) and mixed clinic traffic (about 4 in 10 webhooks are
              physiotherapy bookings, routed nowhere here); then the floor's rate offered
              steadily (open loop) for --sustained seconds
  listener    SIU/s into `calhl7 serve --mllp` from 16 senders (skipped while serve has no
              --mllp; the same 16 senders against sim-ehr are printed for reference)
  backlog     engine RSS with a 1,000,000-message backlog while the EHR is down (queued
              through the store's own commit in a set-up step, see `make_backlog`), vs the
              RSS of the same engine with an empty store; then the EHR comes up and the drain
              rate is measured over --drain-seconds
Floors: intake 2,000/s and p99 < 20 ms at 500/s; rendering 10,000/s; end to end 1,000 msg/s;
listener 2,000/s with 16 senders.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from load import bench_intake  # noqa: E402
from load.harness import (  # noqa: E402
    Procs,
    engine_command,
    engine_has_mllp_listener,
    free_port,
    serve_args,
    wait_port,
)
from load.httpload import closed_loop, median, open_loop, send_all  # noqa: E402
from load.run import copy_channels, start_sim  # noqa: E402

FLOORS = {"intake": 2000.0, "intake_p99_ms": 20.0, "render": 10000.0, "e2e": 1000.0,
          "listener": 2000.0}
RESULTS: dict[str, Any] = {}


def say(text: str = "") -> None:
    print(text, flush=True)


def vs_floor(value: float, floor: float, higher_is_better: bool = True) -> str:
    ratio = value / floor if higher_is_better else floor / value if value else float("inf")
    ok = ratio >= 1.0
    return f"{ratio:.2f}x the floor {'(ok)' if ok else '(BELOW)'}"


def engine_env(main_port: int, legacy_port: int | None = None) -> dict[str, str]:
    return {**os.environ, "CALHL7_WEBHOOK_SECRET": bench_intake.SECRET,
            "CALHL7_LOG_LEVEL": "warning", "EHR_MAIN_HOST": "127.0.0.1",
            "CALHL7_CALCOM_API_URL": "http://127.0.0.1:9",  # nothing leaves this machine
            "EHR_MAIN_PORT": str(main_port), "EHR_LEGACY_HOST": "127.0.0.1",
            "EHR_LEGACY_PORT": str(legacy_port or free_port())}


def start_engine(procs: Procs, data: Path, channels: Path, env: dict[str, str], log: Path,
                 extra: list[str] | None = None) -> tuple[subprocess.Popen[Any], int]:
    port = free_port()
    p = procs.start("engine", engine_command(*serve_args(data, port, channels, extra)), log, env)
    try:
        wait_port(port, p)
    except SystemExit:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise SystemExit(f"the engine did not start; its output:\n{tail}") from None
    return p, port


def main_only_channels(dst: Path, connections: int, extra_connection: str = "") -> Path:
    """family-medicine -> ehr-main only, with `connections` connections."""
    copy_channels(REPO / "channels", dst, {"ehr-main": connections})
    for f in dst.glob("*.yaml"):
        if f.name != "family-medicine.yaml":
            f.unlink()
    for f in (dst / "destinations").glob("*.yaml"):
        if f.name != "ehr-main.yaml":
            f.unlink()
    if extra_connection:
        f = dst / "destinations" / "ehr-main.yaml"
        f.write_text(f.read_text().replace("connection:\n", "connection:\n" + extra_connection, 1))
    return dst


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


# ---------------------------------------------------------------------- intake
@contextmanager
def _fresh_engine() -> Iterator[int]:
    """`calhl7 serve` on an empty data directory with the example channels: its HTTP port."""
    with tempfile.TemporaryDirectory() as tmp:
        procs = Procs()
        try:
            _, port = start_engine(procs, Path(tmp) / "data", REPO / "channels",
                                   engine_env(free_port()), Path(tmp) / "engine.out")
            yield port
        finally:
            procs.stop()


def bench_intake_suite(runs: int, seconds: float) -> None:
    """Accepted webhooks/s (closed loop) and latency at 500/s (open loop), the latter twice:
    on a fresh engine, which processes what arrives as it arrives (the floor's "at 500/s"),
    and right after the closed loop, while the engine also works through the backlog that
    flood left (tens of thousands of webhooks: a load well above 500/s)."""
    say(f"== intake: calhl7 serve vs the bare endpoint ({runs} runs x {seconds:g} s, "
        "32 connections); 500/s open loop on a fresh engine, and again after the flood")
    pool = bench_intake.requests(int(seconds * 6000) + 20000, seed=1)
    at_500 = pool[-int(500 * seconds) - 10:]
    bare, eng, ratios, p99s, p50s, flood_p99s, flood_p50s = [], [], [], [], [], [], []
    for run in range(runs):
        procs = Procs()
        try:
            port = free_port()
            procs.start("bare", [sys.executable, str(REPO / "load" / "bare_asgi.py"), str(port)],
                        Path(os.devnull))
            wait_port(port)
            # the bare endpoint ignores bodies: cycle, it may answer more than the pool holds
            base = asyncio.run(closed_loop("127.0.0.1", port, itertools.cycle(pool), 32,
                                           seconds))
        finally:
            procs.stop()
        with _fresh_engine() as port:
            steady = asyncio.run(open_loop("127.0.0.1", port, iter(at_500), 500, seconds))
        with _fresh_engine() as port:
            res = asyncio.run(closed_loop("127.0.0.1", port, iter(pool[run * 7:]), 32, seconds))
            flood = asyncio.run(open_loop("127.0.0.1", port, iter(at_500), 500, seconds))
        say(f"  run {run + 1}: bare {base.rate:,.0f}/s; calhl7 {res.rate:,.0f}/s "
            f"(ratio {res.rate / base.rate:.2f}); at 500/s p50 {steady.pct(50):.2f} ms "
            f"p99 {steady.pct(99):.2f} ms; after the flood p50 {flood.pct(50):.2f} ms "
            f"p99 {flood.pct(99):.2f} ms; statuses {res.statuses}")
        bare.append(base.rate)
        eng.append(res.rate)
        ratios.append(res.rate / base.rate)
        p50s.append(steady.pct(50))
        p99s.append(steady.pct(99))
        flood_p50s.append(flood.pct(50))
        flood_p99s.append(flood.pct(99))
    RESULTS["intake"] = {"bare": median(bare), "engine": median(eng), "ratio": median(ratios),
                         "p50_ms_at_500": median(p50s), "p99_ms_at_500": median(p99s),
                         "p50_ms_at_500_after_flood": median(flood_p50s),
                         "p99_ms_at_500_after_flood": median(flood_p99s),
                         "runs": runs, "seconds": seconds}
    say(f"  intake: {median(eng):,.0f} webhooks/s, ratio to bare {median(ratios):.2f} "
        f"(bare {median(bare):,.0f}/s); {vs_floor(median(eng), FLOORS['intake'])}")
    say(f"  intake p99 at 500/s: {median(p99s):.2f} ms (p50 {median(p50s):.2f}); "
        f"{vs_floor(median(p99s), FLOORS['intake_p99_ms'], higher_is_better=False)}")
    say(f"  the same right after the flood, its backlog being processed: p99"
        f" {median(flood_p99s):.2f} ms (p50 {median(flood_p50s):.2f}); no floor")


# ---------------------------------------------------------------------- render
def bench_render_suite(seconds: float) -> None:
    say("== rendering (load/bench_render.py: 5 runs, median)")
    out = subprocess.run([sys.executable, str(REPO / "load" / "bench_render.py"), "--seconds",
                          str(seconds)], cwd=REPO, capture_output=True, text=True, check=True)
    m = re.search(r"median: ([\d,]+) renders/s", out.stdout)
    rate = float(m.group(1).replace(",", "")) if m else float("nan")
    RESULTS["render"] = {"rate": rate}
    say(f"  rendering: {rate:,.0f} SIU/s; {vs_floor(rate, FLOORS['render'])}")


# ---------------------------------------------------------------------- end to end
async def _raw_mllp(port: int, payloads: list[bytes], connections: int) -> float:
    from engine.hl7.ack import parse_ack
    from engine.mllp.client import open_connection
    from engine.mllp.settings import ConnectionSettings

    conns = [await open_connection("127.0.0.1", port, ConnectionSettings())
             for _ in range(connections)]
    it = iter(payloads)
    bad = 0

    async def sender(conn: Any) -> None:
        nonlocal bad
        for msg in it:
            if parse_ack(await conn.send(msg)).code != "AA":
                bad += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(sender(c) for c in conns))
    elapsed = time.perf_counter() - t0
    for c in conns:
        await c.close()
    if bad:
        raise SystemExit(f"raw MLLP: {bad} non-AA replies")
    return len(payloads) / elapsed


def _wait_drained(db: Path, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                q = conn.execute("SELECT COUNT(*) FROM outbound WHERE status = 'queued'").fetchone()[0]
                p = conn.execute("SELECT COUNT(*) FROM received_events WHERE state = 'pending'"
                                 ).fetchone()[0]
            finally:
                conn.close()
            if q == 0 and p == 0:
                return True
        except sqlite3.Error:
            pass
        time.sleep(0.2)
    return False


def e2e_once(connections: int, webhooks: list[bytes], tmp: Path,
             offered: float | None = None) -> dict[str, float]:
    """Post the webhooks (as fast as 32 clients can, or open loop at `offered`/s), wait until
    every SIU is acknowledged, then send the same SIU straight to the same simulator."""
    procs = Procs()
    try:
        sim_port, sim_log = start_sim(procs, "sim", tmp)
        channels = main_only_channels(tmp / "channels", connections)
        data = tmp / "data"
        _, port = start_engine(procs, data, channels, engine_env(sim_port), tmp / "engine.out")
        time.sleep(0.5)
        t0 = time.time()
        if offered is None:
            posted = asyncio.run(send_all("127.0.0.1", port, webhooks, 32))
        else:
            posted = asyncio.run(open_loop("127.0.0.1", port, iter(webhooks), offered,
                                           len(webhooks) / offered))
        if posted.ok != len(webhooks):
            raise SystemExit(f"end to end: {len(webhooks) - posted.ok} webhooks not accepted")
        if not _wait_drained(data / "calhl7.sqlite3", 300):
            raise SystemExit("end to end: the queue did not drain in 300 s")
        conn = sqlite3.connect(f"file:{data / 'calhl7.sqlite3'}?mode=ro", uri=True)
        rows = conn.execute("SELECT accepted_at, acked_at, status, payload FROM outbound"
                            " ORDER BY id").fetchall()
        conn.close()
        acked = [r for r in rows if r[2] == "acked"]
        if len(acked) != len(rows):
            raise SystemExit(f"end to end: {len(rows) - len(acked)} messages not acked")
        last = max(r[1] for r in acked)
        lat = sorted(r[1] - r[0] for r in acked)
        rate = len(acked) / (last - t0)
        # the raw transport, same simulator process, same messages with fresh MSH-10s
        payloads = [re.sub(rb"\|SIU\^(S\d\d)\^SIU_S12\|[^|]+\|",
                           lambda m, i=i: b"|SIU^" + m.group(1) + b"^SIU_S12|RAW%017d|" % i,
                           bytes(r[3]), count=1) for i, r in enumerate(acked)]
        raw = asyncio.run(_raw_mllp(sim_port, payloads, connections))
        return {"messages": len(acked), "rate": rate, "raw": raw, "ratio": rate / raw,
                "p50_ms": lat[len(lat) // 2] * 1000,
                "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000,
                "post_rate": posted.rate, "webhook_rate": len(webhooks) / (last - t0)}
    finally:
        procs.stop()


# the workloads: every webhook a family-medicine booking (each one SIU for ehr-main), and a
# clinic's mixed traffic, where physiotherapy bookings (about 4 in 10 webhooks) are received,
# checked and processed but routed nowhere, since only family-medicine -> ehr-main is kept
WORKLOADS = {"ehr-main only": ("family",), "mixed clinic traffic": None}


def bench_e2e_suite(runs: int, n_webhooks: int, sustained_seconds: float) -> None:
    for workload, organizers in WORKLOADS.items():
        reqs = bench_intake.requests(n_webhooks, seed=11, organizers=organizers)[:n_webhooks]
        for connections in (1, 8):
            say(f"== end to end, {workload}, {connections} connection(s) to ehr-main: "
                f"{n_webhooks} webhooks posted by 32 clients -> last ACK in the store; raw MLLP"
                f" baseline ({runs} runs)")
            results = []
            for run in range(runs):
                with tempfile.TemporaryDirectory() as tmp:
                    r = e2e_once(connections, reqs, Path(tmp))
                results.append(r)
                say(f"  run {run + 1}: {r['messages']} SIU in {r['messages'] / r['rate']:.1f} s"
                    f" = {r['rate']:,.0f} msg/s ({r['webhook_rate']:,.0f} webhooks/s; posted "
                    f"at {r['post_rate']:,.0f}/s); raw MLLP {r['raw']:,.0f} msg/s (ratio "
                    f"{r['ratio']:.2f}); accepted->acked p50 {r['p50_ms']:.0f} ms p99 "
                    f"{r['p99_ms']:.0f} ms")
            med = {k: statistics.median(r[k] for r in results) for k in results[0]}
            key = f"e2e_{connections}" if organizers else f"e2e_mixed_{connections}"
            RESULTS[key] = med
            say(f"  end to end ({workload}, {connections} conn): {med['rate']:,.0f} msg/s "
                f"({med['webhook_rate']:,.0f} webhooks/s), ratio to raw MLLP {med['ratio']:.2f}"
                f" (raw {med['raw']:,.0f}/s); p50 {med['p50_ms']:.0f} ms, p99 "
                f"{med['p99_ms']:.0f} ms; {vs_floor(med['rate'], FLOORS['e2e'])}")
    # sustained: the floor's rate offered steadily; keeping up means ACKs at that rate and a
    # latency that stays small (a backlog would grow it for the whole run)
    n = int(FLOORS["e2e"] * sustained_seconds)
    reqs = bench_intake.requests(n, seed=12, organizers=("family",))[:n]
    for connections in (1, 8):
        say(f"== end to end, sustained: {FLOORS['e2e']:,.0f} ehr-main webhooks/s for "
            f"{sustained_seconds:g} s (open loop), {connections} connection(s) ({runs} runs)")
        results = []
        for run in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                r = e2e_once(connections, reqs, Path(tmp), offered=FLOORS["e2e"])
            results.append(r)
            say(f"  run {run + 1}: {r['messages']} SIU at {r['rate']:,.0f} msg/s acked; "
                f"accepted->acked p50 {r['p50_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms")
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        RESULTS[f"e2e_sustained_{connections}"] = med
        say(f"  sustained ({connections} conn): {med['rate']:,.0f} msg/s acked, p50 "
            f"{med['p50_ms']:.0f} ms, p99 {med['p99_ms']:.0f} ms")


# ---------------------------------------------------------------------- listener
async def _senders(port: int, n: int, senders: int, app: str) -> tuple[float, dict[str, int]]:
    from datetime import UTC, datetime, timedelta

    from engine.hl7.ack import parse_ack
    from engine.mllp.client import open_connection
    from engine.mllp.settings import ConnectionSettings
    from load.mllp_user import siu

    start = datetime(2026, 6, 15, 13, 0, tzinfo=UTC)
    msgs = [siu("S12", f"LB{i:010d}", f"LB{i:016d}", start + timedelta(minutes=30 * (i % 500)),
                sending_application=app) for i in range(n)]
    codes: dict[str, int] = {}
    it = iter(msgs)

    async def sender() -> None:
        conn = await open_connection("127.0.0.1", port, ConnectionSettings())
        try:
            for m in it:
                a = parse_ack(await conn.send(m))
                codes[a.code or "?"] = codes.get(a.code or "?", 0) + 1
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return n / (time.perf_counter() - t0), codes


INBOUND_CHANNEL = """\
# written by load/bench.py for the listener benchmark
name: bench-front-desk
sending_application: MAIN_EHR
sending_facility: ACME_CLINIC
message_types: [S12, S13, S14, S15]
echo_destinations: [ehr-main]
timezone: America/New_York
providers:
  "1234567893": {calcom_user_id: 4211, event_type_id: 990001}
"""


def bench_listener_suite(runs: int, n: int) -> None:
    say(f"== listener: {n} SIU from 16 senders ({runs} runs)")
    ref = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            procs = Procs()
            try:
                port, _ = start_sim(procs, "sim", Path(tmp))
                rate, _codes = asyncio.run(_senders(port, n, 16, "MAIN_EHR"))
                ref.append(rate)
            finally:
                procs.stop()
    RESULTS["listener_sim_reference"] = median(ref)
    if not engine_has_mllp_listener():
        RESULTS["listener"] = None
        say(f"  listener: SKIPPED, `calhl7 serve` has no --mllp option yet. Reference: the same "
            f"16 senders against sim-ehr: {median(ref):,.0f} msg/s")
        return
    rates = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            procs = Procs()
            try:
                channels = Path(tmp) / "channels"
                copy_channels(REPO / "channels", channels, {})
                if not list((channels / "inbound").glob("*.yaml")):
                    (channels / "inbound").mkdir(exist_ok=True)
                    (channels / "inbound" / "bench-front-desk.yaml").write_text(INBOUND_CHANNEL)
                mllp_port = free_port()
                eng, _ = start_engine(procs, Path(tmp) / "data", channels,
                                      engine_env(free_port()), Path(tmp) / "engine.out",
                                      ["--mllp", f"127.0.0.1:{mllp_port}"])
                wait_port(mllp_port, eng)
                rate, codes = asyncio.run(_senders(mllp_port, n, 16, "MAIN_EHR"))
                say(f"  run: {rate:,.0f} msg/s, ACK codes {codes}")
                rates.append(rate)
            finally:
                procs.stop()
    RESULTS["listener"] = median(rates)
    say(f"  listener: {median(rates):,.0f} msg/s with 16 senders, ratio to sim-ehr "
        f"{median(rates) / median(ref):.2f}; {vs_floor(median(rates), FLOORS['listener'])}")


# ---------------------------------------------------------------------- backlog
def make_backlog(data: Path, n: int, per_lane: int = 4) -> float:
    """Put `n` queued SIU for ehr-main in a fresh store through the store's own intake and
    commit (as processing would): one lane per appointment, `per_lane` messages each, payloads
    rendered by the family-medicine channel with a unique MSH-10 each. Returns the seconds it
    took."""
    import hashlib
    from datetime import UTC, datetime

    from engine.channels.routing import render_message
    from engine.config.outbound import load_config
    from engine.store.records import (
        PENDING,
        PROCESSED,
        IncomingWebhook,
        NewMessage,
        ProcessedEvent,
    )
    from engine.store.sqlite import SQLiteStore
    from load.bench_render import sample_event

    t0 = time.time()
    config = load_config(REPO / "channels")
    msg = render_message(config, config.channel("family-medicine"), sample_event(0),
                         trigger="S12", control_id="X" * 20, now=datetime.now(UTC))
    template = msg.payload
    appt_old = b"abHAVhYH1N5x7DhE000000"
    per_commit = per_lane * 1024  # whole lanes per transaction

    def message(i: int) -> NewMessage:
        appt = f"BACKLOG{i // per_lane:015d}"
        cid = f"BL{i:018d}"
        return NewMessage(
            channel="family-medicine", destination="ehr-main", lane_key=appt,
            appointment_id=appt, message_type="SIU^S12" if i % per_lane == 0 else "SIU^S14",
            control_id=cid, event_json="{}",
            payload=template.replace(b"X" * 20, cid.encode(), 1).replace(appt_old,
                                                                         appt.encode()))

    async def seed() -> None:
        store = SQLiteStore(data / "calhl7.sqlite3")
        await store.open()
        try:
            for first in range(0, n, per_commit):
                # one received event per transaction, processed into its share of the backlog
                body = f'{{"backlog":{first}}}'.encode()
                event = await store.accept_webhook(IncomingWebhook(
                    source="backlog", body=body, body_sha256=hashlib.sha256(body).digest(),
                    content_type="application/json", trigger=None, booking_uid=None,
                    received_at=time.time(), correlation_id=f"backlog-{first}", state=PENDING))
                messages = tuple(message(i) for i in range(first, min(n, first + per_commit)))
                await store.commit_processed([ProcessedEvent(
                    event_id=event.event_id, state=PROCESSED, messages=messages)])
        finally:
            await store.close()

    asyncio.run(seed())
    return time.time() - t0


def _queued(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM outbound WHERE status = 'queued'").fetchone()[0]
    finally:
        conn.close()


def bench_backlog_suite(n: int, hold_seconds: float, drain_seconds: float) -> None:
    say(f"== backlog: {n:,} queued messages, EHR down, then up")
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        ehr_port = free_port()
        fast = "  reconnect_max_seconds: 1\n"
        # the baseline: the same engine and channels with an empty store
        procs = Procs()
        try:
            (tmpd / "empty").mkdir()
            channels = main_only_channels(tmpd / "channels", 2, fast)
            eng, _ = start_engine(procs, tmpd / "empty", channels, engine_env(ehr_port),
                                  tmpd / "engine0.out")
            time.sleep(hold_seconds)
            empty_rss = rss_mb(eng.pid)
        finally:
            procs.stop()
        (tmpd / "data").mkdir()
        took = make_backlog(tmpd / "data", n)
        db = tmpd / "data" / "calhl7.sqlite3"
        size = db.stat().st_size / 2**20
        say(f"  set-up: {n:,} messages queued through the store in {took:.0f} s"
            f" ({size:,.0f} MB on disk)")
        procs = Procs()
        try:
            eng, _ = start_engine(procs, tmpd / "data", channels, engine_env(ehr_port),
                                  tmpd / "engine.out")
            samples = []
            t_end = time.time() + hold_seconds
            while time.time() < t_end:
                samples.append(rss_mb(eng.pid))
                time.sleep(0.5)
            down_rss = max(samples)
            say(f"  EHR down: engine RSS {down_rss:.0f} MB with the backlog vs {empty_rss:.0f} MB "
                f"with an empty store (ratio {down_rss / empty_rss:.2f})")
            start_q = _queued(db)
            sim_procs = Procs()
            try:
                # the EHR comes back on the port the destination points at
                cmd = engine_command("sim-ehr", "--port", str(ehr_port), "--uvloop", "--log",
                                     str(tmpd / "sim.jsonl"))
                sim_procs.start("sim", cmd, tmpd / "sim.out")
                wait_port(ehr_port)
                # measure from the first ACK
                first = time.time() + 60
                while time.time() < first and _queued(db) == start_q:
                    time.sleep(0.2)
                q0, t0 = _queued(db), time.time()
                rss_drain = []
                while time.time() - t0 < drain_seconds:
                    rss_drain.append(rss_mb(eng.pid))
                    time.sleep(1.0)
                q1, t1 = _queued(db), time.time()
            finally:
                sim_procs.stop()
        finally:
            procs.stop()
    rate = (q0 - q1) / (t1 - t0)
    RESULTS["backlog"] = {"messages": n, "empty_rss_mb": empty_rss, "down_rss_mb": down_rss,
                          "rss_ratio": down_rss / empty_rss, "drain_rate": rate,
                          "drain_rss_max_mb": max(rss_drain), "drain_seconds": drain_seconds,
                          "setup_seconds": took, "db_mb": size}
    say(f"  drain: {rate:,.0f} msg/s over {drain_seconds:g} s (2 connections, as ehr-main is "
        f"configured); RSS while draining {min(rss_drain):.0f}-{max(rss_drain):.0f} MB; the "
        f"whole backlog would take {n / rate / 60 if rate else float('inf'):.0f} min; "
        f"{vs_floor(rate, FLOORS['e2e'])} (end-to-end floor)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--quick", action="store_true", help="shorter runs (about 3 minutes)")
    ap.add_argument("--runs", type=int, help="runs per figure (default 3, --quick 1)")
    ap.add_argument("--only", action="append", default=[],
                    choices=["intake", "render", "e2e", "listener", "backlog"])
    ap.add_argument("--backlog", type=int, help="backlog size (default 1,000,000; quick 100,000)")
    ap.add_argument("--drain-seconds", type=float, help="drain measurement (60 s; quick 15 s)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    parts = args.only or ["intake", "render", "e2e", "listener", "backlog"]
    say(f"calhl7 benchmarks on {os.cpu_count()} cores, Python {sys.version.split()[0]}"
        f"{' (quick)' if args.quick else ''}")
    t0 = time.time()
    if "intake" in parts:
        bench_intake_suite(runs, 5 if args.quick else 10)
    if "render" in parts:
        bench_render_suite(0.5 if args.quick else 1.0)
    if "e2e" in parts:
        bench_e2e_suite(runs, 2000 if args.quick else 5000, 5 if args.quick else 15)
    if "listener" in parts:
        bench_listener_suite(runs, 5000 if args.quick else 20000)
    if "backlog" in parts:
        bench_backlog_suite(args.backlog or (100_000 if args.quick else 1_000_000),
                            5 if args.quick else 15,
                            args.drain_seconds or (15 if args.quick else 60))
    say(f"\ndone in {time.time() - t0:.0f} s")
    say(json.dumps(RESULTS, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(RESULTS, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
