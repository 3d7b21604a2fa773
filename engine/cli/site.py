"""`calhl7 demo` and `calhl7 init`: the whole path on this machine, and a new site's files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.cli.common import sqlite_ok


def register(sub: Any) -> None:
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


def _demo(args: argparse.Namespace) -> int:
    from engine import logs
    from engine.demo import run_demo
    from engine.store.lock import StoreInUse

    if not sqlite_ok():  # the demo runs on the embedded store
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
