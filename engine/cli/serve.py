"""`calhl7 serve`: run the engine. Options can also come from CALHL7_* environment variables."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from engine.cli.common import run_fast, sqlite_ok
from engine.settings import Settings, env, host_port, host_port_or_none


def register(sub: Any, store_args: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[store_args], help="run the engine")
    p.add_argument("--http", type=host_port, default=host_port(env("HTTP", "127.0.0.1:8080")),
                   help="webhook address (default 127.0.0.1:8080)")
    p.add_argument("--metrics", type=host_port,
                   default=host_port_or_none(env("METRICS")),
                   help="serve /metrics and health on their own address")
    p.add_argument("--channels", default=env("CHANNELS", "channels"),
                   help="channel configuration directory (default ./channels)")
    p.add_argument("--max-body-bytes", type=int, default=int(env("MAX_BODY_BYTES", "1048576")))
    p.add_argument("--insecure-dev", action="store_true",
                   default=env("INSECURE_DEV", "") in ("1", "true", "yes"),
                   help="accept unsigned webhooks (development only)")
    p.add_argument("--http-max-connections", type=int,
                   default=int(env("HTTP_MAX_CONNECTIONS", "500")),
                   help="open HTTP connections at once; more are answered 503 and closed")
    p.add_argument("--node-id", default=env("NODE_ID"))
    p.add_argument("--mllp", type=host_port,
                   default=host_port_or_none(env("MLLP")),
                   help="listen for SIU from the EHR here (e.g. 127.0.0.1:2575)")
    p.add_argument("--mllp-tls-cert", default=env("MLLP_TLS_CERT"))
    p.add_argument("--mllp-tls-key", default=env("MLLP_TLS_KEY"))
    p.add_argument("--mllp-tls-client-ca", default=env("MLLP_TLS_CLIENT_CA"),
                   help="require EHR client certificates signed by this CA")
    p.add_argument("--mllp-max-frame-bytes", type=int,
                   default=int(env("MLLP_MAX_FRAME_BYTES", "1048576")))
    p.add_argument("--mllp-processing-ids", default=env("MLLP_PROCESSING_IDS", "P"),
                   help="MSH-11 values the listener takes, comma-separated (default P: a test "
                        "system's T messages get AR 202); a test engine says T")
    p.add_argument("--mllp-max-connections", type=int,
                   default=int(env("MLLP_MAX_CONNECTIONS", "100")),
                   help="connections the listener holds at once; more are closed and counted")
    p.add_argument("--mllp-vt-in-frame", choices=("data", "restart"),
                   default=env("MLLP_VT_IN_FRAME", "data"),
                   help="a 0x0B inside a frame: data (default: the message is kept) or restart "
                        "(a new frame begins; the cut message gets no answer)")
    p.add_argument("--reconcile-interval", type=float,
                   default=float(env("RECONCILE_INTERVAL", "300")),
                   help="seconds between Cal.com reconciliation runs (0: off; needs "
                        "CALHL7_CALCOM_API_KEY)")
    p.add_argument("--processing-processes", type=int,
                   default=int(env("PROCESSING_PROCESSES", "1")),
                   help="1: normalize/route/render in a helper process (0: in the engine;"
                        " more than 1 is used as 1)")
    p.add_argument("--log-level", default=env("LOG_LEVEL", "info"))
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from engine import logs
    from engine.app import build_engine
    from engine.config.files import ConfigError
    from engine.store.lock import StoreInUse

    logs.configure(args.log_level)
    settings = Settings.from_serve_args(args)
    if not settings.secrets and not args.insecure_dev:
        print("calhl7: no webhook secret configured. Set CALHL7_WEBHOOK_SECRET (the secret of "
              "your Cal.com webhook), or pass --insecure-dev to accept unsigned webhooks "
              "on a development machine.", file=sys.stderr)
        return 2
    if not args.store and not sqlite_ok():
        return 2
    try:
        run_fast(build_engine(settings).run())
    except ConfigError as exc:
        print(f"calhl7: the channel configuration has problems:\n{exc}", file=sys.stderr)
        return 2
    except StoreInUse as exc:
        print(f"calhl7: {exc}", file=sys.stderr)
        return 2
    return 0
