"""Webhook intake benchmark: a real `calhl7 serve` (SQLite, synchronous=FULL) against the
bare endpoint on the same server stack, in one run.

    .venv/bin/python load/bench_intake.py [--runs 3] [--seconds 10] [--connections 32]

Prints accepted webhooks/s (closed loop) with the ratio to the bare endpoint, and p50/p99
latency at a fixed 500 webhooks/s (open loop) on a fresh engine, and again right after the
closed loop while the engine works through the backlog it left; medians over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.sim.bookings import StoryTeller, compact, sign  # noqa: E402
from load import harness  # noqa: E402
from load.harness import free_port, wait_port  # noqa: E402
from load.httpload import build_request, closed_loop, median, open_loop  # noqa: E402

SECRET = "bench-secret"


def requests(count: int, seed: int, organizers: tuple[str, ...] | None = None) -> list[bytes]:
    """`count` signed webhook requests, whole appointment stories (of `organizers` only)."""
    teller = StoryTeller(seed=seed, organizers=organizers)
    out = []
    while len(out) < count:
        for hook in teller.story().webhooks:
            body = compact(hook)
            out.append(build_request("/webhooks/calcom", body, {
                "Content-Type": "application/json", "X-Cal-Signature-256": sign(body, SECRET)}))
    return out


def start_engine(data: Path, port: int) -> subprocess.Popen[bytes]:
    return harness.start_engine(data, port, harness.engine_env(SECRET), stdout=None, stderr=None)


@contextmanager
def fresh_engine() -> Iterator[int]:
    """`calhl7 serve` on an empty data directory: its HTTP port; stopped afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        eng = start_engine(Path(tmp), port)
        try:
            wait_port(port)
            yield port
        finally:
            eng.terminate()
            eng.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rate", type=float, default=500)
    args = ap.parse_args()
    pool = requests(int(args.seconds * 6000) + 20000, seed=1)
    bare_rates, engine_rates, ratios, p50s, p99s, closed_p99 = [], [], [], [], [], []
    flood_p99: list[float] = []
    for run in range(args.runs):
        port = free_port()
        bare = subprocess.Popen([sys.executable, str(REPO / "load" / "bare_asgi.py"), str(port)])
        wait_port(port)
        it = itertools.cycle(pool)  # the bare endpoint does not care about repeats
        base = asyncio.run(closed_loop("127.0.0.1", port, it, args.connections, args.seconds))
        bare.terminate()
        bare.wait()
        at_rate = pool[-int(args.rate * args.seconds) - 10:]
        with fresh_engine() as port:  # the fixed rate on a fresh engine
            lat = asyncio.run(open_loop("127.0.0.1", port, iter(at_rate), args.rate,
                                        args.seconds))
        with fresh_engine() as port:
            it = iter(pool[run * 7:])  # fresh bodies: no duplicates
            res = asyncio.run(closed_loop("127.0.0.1", port, it, args.connections, args.seconds))
            # the fixed rate again, while the engine works through the flood's backlog
            flood = asyncio.run(open_loop("127.0.0.1", port, iter(at_rate), args.rate,
                                          args.seconds))
        print(f"run {run + 1}: bare  {base.summary()}")
        print(f"run {run + 1}: calhl7 {res.summary()}")
        print(f"run {run + 1}: calhl7 at {args.rate:.0f}/s {lat.summary()}")
        print(f"run {run + 1}: calhl7 at {args.rate:.0f}/s after the flood {flood.summary()}")
        flood_p99.append(flood.pct(99))
        bare_rates.append(base.rate)
        engine_rates.append(res.rate)
        ratios.append(res.rate / base.rate)
        closed_p99.append(res.pct(99))
        p50s.append(lat.pct(50))
        p99s.append(lat.pct(99))
    print("\nmedians over", args.runs, "runs:")
    print(f"  bare endpoint (same stack)      {median(bare_rates):>8,.0f} req/s")
    print(f"  calhl7 accepted webhooks        {median(engine_rates):>8,.0f} /s "
          f"(ratio to bare {median(ratios):.2f}; p99 {median(closed_p99):.1f} ms at "
          f"{args.connections} connections)")
    print(f"  calhl7 at {args.rate:.0f}/s open loop       p50 {median(p50s):.2f} ms, "
          f"p99 {median(p99s):.2f} ms")
    print(f"  the same after the flood        p99 {median(flood_p99):.2f} ms (its backlog being"
          " processed meanwhile)")


if __name__ == "__main__":
    main()
