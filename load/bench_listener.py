"""Inbound MLLP listener benchmark: SIU in, durable commit (SQLite, synchronous=FULL, group
commit), AA out. The listener runs in its own process (uvloop when installed); the senders
run here, each on its own connection, one message in flight per connection (MLLP original
mode), closed loop.

    .venv/bin/python load/bench_listener.py [--runs 3] [--messages 4000] [--senders 1,16]

Prints, per sender count, messages/s and p50/p99 frame->ACK latency, medians over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.mllp.framing import FrameReader, frame  # noqa: E402

_STAMP = time.strftime("%Y%m%d", time.gmtime(time.time() + 3 * 86400))


def message(i: int, run: str) -> bytes:
    appt = f"BENCH{run}{i}"
    s = f"{_STAMP}{9 + i % 8:02d}0000-0500"
    e = f"{_STAMP}{9 + i % 8:02d}3000-0500"
    return ("\r".join([
        f"MSH|^~\\&|MAIN_EHR|ACME_CLINIC|CALCOM_HL7|ACME_CLINIC|{_STAMP}090000-0500||"
        f"SIU^S12^SIU_S12|{run}{i:08d}|P|2.5.1||||||UNICODE UTF-8",
        f"SCH|{appt}^EHR|{appt}^EHR||||ROUTINE^Routine^HL70276|FU30^Follow-up^L|Normal|30|"
        f"min^minutes^ISO+|^^M30^{s}^{e}|||||1234567893^Careful^Cara^^^Dr^^^NPI|||||"
        "FRONTDESK^Front desk|||||Booked",
        f"TQ1|1|||||30^min&minutes&ISO+|{s}|{e}",
        "PID|1||TP0001234^^^ACME^MR||Testpatient^Ada^^^^^L||19840712|F",
        "RGS|1|A",
        f"AIS|1|A|FU30^Follow-up visit 30 min^L|{s}|0|min|30|min||Booked",
        f"AIL|1|A|FAMMED^EXAM1^^ACME_CLINIC|||{s}|0|min|30|min||Booked",
        f"AIP|1|A|1234567893^Careful^Cara^^^Dr^^^NPI|ATT^Attending^L||{s}|0|min|30|min||Booked",
    ]) + "\r").encode()


def _serve(data_dir: str, conn: object, linger_ms: float | None = None) -> None:
    """Child process: the listener on a fresh SQLite store."""

    async def main() -> None:
        from engine.config.inbound import load_inbound_config
        from engine.inbound.listener import start_listener
        from engine.metrics import Metrics
        from engine.store.sqlite import SQLiteStore

        store = SQLiteStore(Path(data_dir) / "bench.sqlite3")
        if linger_ms is not None:
            store.inbound_linger_seconds = linger_ms / 1000.0
        await store.open()
        config = load_inbound_config(REPO / "channels")
        server = await start_listener("127.0.0.1", 0, store=store, config_getter=lambda: config,
                                      metrics=Metrics())
        conn.send(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        await asyncio.Event().wait()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


async def _sender(port: int, msgs: list[bytes], lat: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    frames = FrameReader(reader)
    try:
        for m in msgs:
            t0 = time.perf_counter()
            writer.write(frame(m))
            reply = await frames.read_frame()
            lat.append(time.perf_counter() - t0)
            if reply is None or b"MSA|AA|" not in reply:
                raise SystemExit(f"not accepted: {reply!r}")
    finally:
        writer.close()


async def _run(port: int, senders: int, total: int, run: str) -> tuple[float, float, float]:
    per = total // senders
    msgs = [message(i, run) for i in range(per * senders)]
    lat: list[float] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(_sender(port, msgs[k * per:(k + 1) * per], lat)
                           for k in range(senders)))
    elapsed = time.perf_counter() - t0
    lat.sort()
    return len(lat) / elapsed, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99) - 1] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=4000, help="per run")
    ap.add_argument("--senders", default="1,16")
    ap.add_argument("--linger-ms", type=float, default=None,
                    help="group-commit linger of the inbound store (default: the store's)")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results: dict[int, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(tmp, child, args.linger_ms), daemon=True)
        proc.start()
        port = parent.recv()
        try:
            try:
                import uvloop

                runner = uvloop.run
            except ImportError:
                runner = asyncio.run
            runner(_run(port, 1, 200, "W"))  # warm-up
            for run in range(args.runs):
                for senders in (int(s) for s in args.senders.split(",")):
                    count = args.messages if senders > 1 else max(500, args.messages // 4)
                    r = runner(_run(port, senders, count, f"R{run}S{senders}X"))
                    results.setdefault(senders, []).append(r)
                    print(f"run {run + 1}, {senders:>2} sender(s): {r[0]:8,.0f} msg/s   "
                          f"p50 {r[1]:6.2f} ms   p99 {r[2]:6.2f} ms", flush=True)
        finally:
            proc.terminate()
            proc.join(5)
    print(f"\nmedians over {args.runs} runs (durable commit before every AA):")
    for senders, rs in results.items():
        print(f"  {senders:>2} sender(s): {statistics.median(r[0] for r in rs):8,.0f} msg/s   "
              f"p50 {statistics.median(r[1] for r in rs):6.2f} ms   "
              f"p99 {statistics.median(r[2] for r in rs):6.2f} ms")


if __name__ == "__main__":
    main()
