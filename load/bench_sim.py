"""How many request/ACK round trips per second the EHR simulator sustains on one connection.

Starts `sim-ehr` in its own process (so client and simulator do not share a core), sends N
pre-built SIU^S12 messages one at a time with engine.mllp's client, waiting for each ACK,
and prints msg/s: the median of 3 runs.

    .venv/bin/python load/bench_sim.py [-n 20000] [--log] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.hl7.ack import parse_ack  # noqa: E402
from engine.mllp.client import open_connection  # noqa: E402
from engine.mllp.settings import ConnectionSettings  # noqa: E402

SAMPLE = ROOT / "tests" / "fixtures" / "hl7" / "siu_s12_v251.hl7"
SAMPLE_ID = b"S12-20261005-000017"  # its MSH-10


def messages(n: int) -> list[bytes]:
    text = SAMPLE.read_bytes()  # bytes: the segments end in CR
    if SAMPLE_ID not in text:
        raise SystemExit(f"{SAMPLE}: MSH-10 is no longer {SAMPLE_ID.decode()}; update SAMPLE_ID")
    return [text.replace(SAMPLE_ID, f"B{i:012d}".encode(), 1) for i in range(n)]


async def run_once(port: int, batch: list[bytes], check: bool) -> float:
    conn = await open_connection("127.0.0.1", port, ConnectionSettings())
    try:
        t0 = time.perf_counter()
        for msg in batch:
            reply = await conn.send(msg)
            if check and parse_ack(reply).code != "AA":
                raise SystemExit("unexpected non-AA reply")
        elapsed = time.perf_counter() - t0
    finally:
        await conn.close()
    return len(batch) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="messages per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--log", action="store_true", help="let the simulator write its JSON-lines log")
    ap.add_argument("--uvloop", action="store_true", help="simulator on uvloop")
    ap.add_argument("--check", action="store_true", help="parse every ACK on the client side too")
    args = ap.parse_args()
    batch = messages(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "engine.cli.sim", "sim-ehr", "--port", "0"]
        if args.log:
            cmd += ["--log", os.path.join(tmp, "sim.jsonl")]
        if args.uvloop:
            cmd.append("--uvloop")
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()  # "sim-ehr listening on host:port"
            port = int(line.strip().rsplit(":", 1)[1])
            rates = []
            for i in range(args.runs):
                # each run uses fresh MSH-10s so the simulator never sees repeats
                run = [m.replace(b"|B", f"|R{i}".encode(), 1) for m in batch]
                rates.append(asyncio.run(run_once(port, run, args.check)))
                print(f"run {i + 1}: {rates[-1]:,.0f} msg/s", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"sim-ehr: {statistics.median(rates):,.0f} msg/s (median of {args.runs}, "
          f"n={args.n}, one connection, log={'on' if args.log else 'off'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
