"""The `calhl7` verbs. Options can also come from CALHL7_* environment variables."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

from engine import operator


@overload
def _env(name: str, default: str) -> str: ...


@overload
def _env(name: str, default: None = None) -> str | None: ...


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"CALHL7_{name}", default)


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


def _host_port_or_none(value: str | None) -> tuple[str, int] | None:
    return host_port(value) if value else None


def run_fast(coro: Any) -> Any:
    """Run on uvloop when it is there (it comes with uvicorn[standard]), else asyncio's loop."""
    # the store's writer thread takes the GIL between statements: hand it back sooner, so a
    # webhook waiting on the event loop is not held up by a big commit
    sys.setswitchinterval(0.0005)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _sqlite_ok() -> bool:
    """Whether this Python's SQLite can hold the embedded store; if not, say why and what to do
    (before anything is opened, rather than a traceback from inside the store)."""
    from engine.store.sqlite_version import sqlite_problem

    try:
        problem = sqlite_problem()
    except ValueError as exc:  # CALHL7_MIN_SQLITE is not a version
        problem = f"CALHL7_MIN_SQLITE: {exc}"
    if problem:
        print(f"calhl7: {problem}", file=sys.stderr)
    return problem is None


def _serve(args: argparse.Namespace) -> int:
    from engine import logs
    from engine.app import Engine, EngineSettings, secrets_from_env

    logs.configure(args.log_level)
    secrets = secrets_from_env()
    if not secrets and not args.insecure_dev:
        print("calhl7: no webhook secret configured. Set CALHL7_WEBHOOK_SECRET (the secret of "
              "your Cal.com webhook), or pass --insecure-dev to accept unsigned webhooks "
              "on a development machine.", file=sys.stderr)
        return 2
    if not args.store and not _sqlite_ok():
        return 2
    http_host, http_port = args.http
    metrics = args.metrics
    settings = EngineSettings(
        http_host=http_host, http_port=http_port, data_dir=Path(args.data),
        channels_dir=Path(args.channels), store_url=args.store, secrets=secrets,
        max_body_bytes=args.max_body_bytes, insecure_unsigned=args.insecure_dev,
        metrics_host=metrics[0] if metrics else None, metrics_port=metrics[1] if metrics else None,
    )
    settings.http_max_connections = args.http_max_connections
    if args.node_id:
        settings.node_id = args.node_id
    settings.processing_processes = args.processing_processes
    settings.reconcile_interval_seconds = args.reconcile_interval
    if args.mllp:
        settings.mllp_host, settings.mllp_port = args.mllp
        settings.mllp_tls_cert, settings.mllp_tls_key = args.mllp_tls_cert, args.mllp_tls_key
        settings.mllp_tls_client_ca = args.mllp_tls_client_ca
        settings.mllp_max_frame_bytes = args.mllp_max_frame_bytes
        settings.mllp_vt_in_frame = args.mllp_vt_in_frame
        settings.mllp_max_connections = args.mllp_max_connections
        settings.mllp_processing_ids = tuple(
            v.strip().upper() for v in args.mllp_processing_ids.split(",") if v.strip())
    from engine.config.files import ConfigError
    from engine.store.lock import StoreInUse

    try:
        run_fast(Engine(settings).run())
    except ConfigError as exc:
        print(f"calhl7: the channel configuration has problems:\n{exc}", file=sys.stderr)
        return 2
    except StoreInUse as exc:
        print(f"calhl7: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from engine import logs
    from engine.demo import run_demo
    from engine.store.lock import StoreInUse

    if not _sqlite_ok():  # the demo runs on the embedded store
        return 2
    logs.configure("error")  # the demo prints its own story; its deliberate forgery is no alarm
    try:
        return run_demo(args)
    except StoreInUse as exc:
        print(f"calhl7: {exc}", file=sys.stderr)
        return 2


def _init(args: argparse.Namespace) -> int:
    from engine.site_init import InitError, init_site

    target = Path(args.dir)
    try:
        written = init_site(target, force=args.force)
    except InitError as exc:
        print(f"calhl7 init: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"  wrote {path}")
    print(f"\nNext: adapt the files in {target} (every option is shown, commented where it "
          f"keeps its default), then\n"
          f"  calhl7 check {target}\n"
          f"  calhl7 render --channel {target / 'clinic.yaml'} booking.json --fields\n"
          f"  calhl7 serve --channels {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calhl7", description="Cal.com bookings to HL7 v2 SIU over MLLP, and back.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    store_args = argparse.ArgumentParser(add_help=False)
    store_args.add_argument("--data", default=_env("DATA", "var"),
                            help="data directory of the embedded store (default ./var)")
    store_args.add_argument("--store", default=_env("STORE"),
                            help="store URL, e.g. postgresql://user@host/db (default: SQLite "
                                 "in --data)")

    p = sub.add_parser("serve", parents=[store_args], help="run the engine")
    p.add_argument("--http", type=host_port, default=host_port(_env("HTTP", "127.0.0.1:8080")),
                   help="webhook address (default 127.0.0.1:8080)")
    p.add_argument("--metrics", type=host_port,
                   default=_host_port_or_none(_env("METRICS")),
                   help="serve /metrics and health on their own address")
    p.add_argument("--channels", default=_env("CHANNELS", "channels"),
                   help="channel configuration directory (default ./channels)")
    p.add_argument("--max-body-bytes", type=int, default=int(_env("MAX_BODY_BYTES", "1048576")))
    p.add_argument("--insecure-dev", action="store_true",
                   default=_env("INSECURE_DEV", "") in ("1", "true", "yes"),
                   help="accept unsigned webhooks (development only)")
    p.add_argument("--http-max-connections", type=int,
                   default=int(_env("HTTP_MAX_CONNECTIONS", "500")),
                   help="open HTTP connections at once; more are answered 503 and closed")
    p.add_argument("--node-id", default=_env("NODE_ID"))
    p.add_argument("--mllp", type=host_port,
                   default=_host_port_or_none(_env("MLLP")),
                   help="listen for SIU from the EHR here (e.g. 127.0.0.1:2575)")
    p.add_argument("--mllp-tls-cert", default=_env("MLLP_TLS_CERT"))
    p.add_argument("--mllp-tls-key", default=_env("MLLP_TLS_KEY"))
    p.add_argument("--mllp-tls-client-ca", default=_env("MLLP_TLS_CLIENT_CA"),
                   help="require EHR client certificates signed by this CA")
    p.add_argument("--mllp-max-frame-bytes", type=int,
                   default=int(_env("MLLP_MAX_FRAME_BYTES", "1048576")))
    p.add_argument("--mllp-processing-ids", default=_env("MLLP_PROCESSING_IDS", "P"),
                   help="MSH-11 values the listener takes, comma-separated (default P: a test "
                        "system's T messages get AR 202); a test engine says T")
    p.add_argument("--mllp-max-connections", type=int,
                   default=int(_env("MLLP_MAX_CONNECTIONS", "100")),
                   help="connections the listener holds at once; more are closed and counted")
    p.add_argument("--mllp-vt-in-frame", choices=("data", "restart"),
                   default=_env("MLLP_VT_IN_FRAME", "data"),
                   help="a 0x0B inside a frame: data (default: the message is kept) or restart "
                        "(a new frame begins; the cut message gets no answer)")
    p.add_argument("--reconcile-interval", type=float,
                   default=float(_env("RECONCILE_INTERVAL", "300")),
                   help="seconds between Cal.com reconciliation runs (0: off; needs "
                        "CALHL7_CALCOM_API_KEY)")
    p.add_argument("--processing-processes", type=int,
                   default=int(_env("PROCESSING_PROCESSES", "1")),
                   help="1: normalize/route/render in a helper process (0: in the engine;"
                        " more than 1 is used as 1)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "info"))
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="the whole path on this machine: engine, two simulated "
                                    "EHRs, a day of bookings")
    p.add_argument("--data", default=None, help="keep the demo's store here (default: temp)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_demo)

    p = sub.add_parser("init", help="start a new site: a channel, a destination and an inbound "
                                    "file with every option shown, and the templates to adapt")
    p.add_argument("dir", help="the new site's channel folder (created)")
    p.add_argument("--force", action="store_true",
                   help="write into a folder that is not empty (files of the same name are "
                        "replaced, others left alone)")
    p.set_defaults(func=_init)

    operator.register(sub, store_args)
    from engine.config import cli as channels_cli
    from engine.inbound import cli as inbound_cli
    from engine.sim import cli as sim_cli

    channels_cli.register(sub)
    sim_cli.register(sub)
    inbound_cli.register(sub, store_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
