"""`calhl7 sim-ehr`: run the EHR simulator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from engine.sim.ehr import SimPolicy, run_sim, simulator_of, stop_sim


def register(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sim-ehr", help="run a simulated legacy EHR (MLLP listener answering SIU with ACKs)"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2575, help="0 picks a free port (printed)")
    p.add_argument("--delay-ms", type=int, default=0, help="answer after this many ms")
    p.add_argument("--ae-every", type=int, default=0, metavar="N", help="AE every Nth message")
    p.add_argument("--ae-code", default="204", help="ERR-3 of those AEs (default 204)")
    p.add_argument("--ar-match", action="append", default=[], metavar="FIELD=VALUE",
                   help="AR when a field matches, e.g. MSH-9.2=S26 (repeatable)")
    p.add_argument("--ar-code", default="201", help="ERR-3 of those ARs; 'none' for no ERR")
    p.add_argument("--silent", action="store_true", help="never answer")
    p.add_argument("--wrong-msa2", action="store_true", help="answer with a wrong MSA-2")
    p.add_argument("--close-after-read", action="store_true", help="hang up after reading")
    p.add_argument("--duplicate-key-ae", action="store_true",
                   help="AE ERR-3 205 for an MSH-10 already seen")
    p.add_argument("--close-match", action="append", default=[], metavar="FIELD=VALUE",
                   help="hang up without answering when a field matches (repeatable)")
    p.add_argument("--close-mid-ack", action="store_true", help="send half an ACK, hang up")
    p.add_argument("--duplicate-ack", action="store_true", help="send every ACK twice")
    p.add_argument("--ca-then-aa", action="store_true",
                   help="enhanced mode: a commit ACK (CA), then the application ACK")
    p.add_argument("--bom", action="store_true", help="a UTF-8 byte order mark before MSH")
    p.add_argument("--lf", action="store_true", help="end ACK segments with LF, not CR")
    p.add_argument("--msa6", action="store_true",
                   help="error condition in MSA-6 and no ERR segment (v2.1-2.4 style)")
    p.add_argument("--ae-severity", default="E", choices=["E", "W", "I", "F"],
                   help="ERR-4 of the AEs: W or I make them warnings (default E)")
    p.add_argument("--never-read", action="store_true", help="accept, never read")
    p.add_argument("--read-bytes-per-second", type=float, default=0, metavar="N",
                   help="read this slowly, a byte at a time (e.g. 1)")
    p.add_argument("--accept-then-reset", action="store_true",
                   help="accept each connection, then reset it")
    p.add_argument("--log", metavar="FILE", help="JSON-lines log of received messages")
    p.add_argument("--log-raw", action="store_true", help="include raw messages in the log")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop when installed")
    p.set_defaults(func=main)
    return p


def policy_from_args(args: argparse.Namespace) -> SimPolicy:
    return SimPolicy(
        delay_ms=args.delay_ms,
        ae_every=args.ae_every,
        ae_error_code=args.ae_code,
        ar_match=list(args.ar_match),
        ar_error_code=None if str(args.ar_code).lower() == "none" else args.ar_code,
        silent=args.silent,
        wrong_msa2=args.wrong_msa2,
        close_after_read=args.close_after_read,
        duplicate_key_ae=args.duplicate_key_ae,
        close_match=list(args.close_match),
        close_mid_ack=args.close_mid_ack,
        duplicate_ack=args.duplicate_ack,
        commit_then_app_ack=args.ca_then_aa,
        bom=args.bom,
        lf_line_ends=args.lf,
        error_in_msa6=args.msa6,
        ae_severity=args.ae_severity,
        never_read=args.never_read,
        read_bytes_per_second=args.read_bytes_per_second,
        accept_then_reset=args.accept_then_reset,
        log_raw=args.log_raw,
    )


async def _serve(args: argparse.Namespace, policy: SimPolicy) -> None:
    server = await run_sim(args.host, args.port, policy, args.log)
    port = server.sockets[0].getsockname()[1]
    print(f"sim-ehr listening on {args.host}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    sim = simulator_of(server)
    await stop_sim(server)
    if sim is not None:
        print(f"sim-ehr stopped after {sim.received} messages: {sim.acks}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    try:
        policy = policy_from_args(args)
    except ValueError as exc:
        print(f"sim-ehr: {exc}", file=sys.stderr)
        return 2
    if args.uvloop:
        try:
            import uvloop

            uvloop.run(_serve(args, policy))
            return 0
        except ImportError:
            print("sim-ehr: uvloop not installed, using asyncio", file=sys.stderr)
    asyncio.run(_serve(args, policy))
    return 0


if __name__ == "__main__":  # python -m engine.cli.sim sim-ehr ...
    parser = argparse.ArgumentParser(prog="calhl7")
    register(parser.add_subparsers(dest="verb", required=True))
    ns = parser.parse_args()
    sys.exit(ns.func(ns))
