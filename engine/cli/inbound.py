"""Verbs of the inbound path and of reconciliation.

    calhl7 reconcile --since 6h            # or an ISO time, or "watermark"
    calhl7 inbound-jobs [--status dead]    # Cal.com API jobs from EHR SIU
    calhl7 inbound-retry JOB_ID            # put a dead job back at the head of its queue

The Cal.com key and address come from CALHL7_CALCOM_API_KEY and CALHL7_CALCOM_API_URL; the
store from --data/--store (CALHL7_DATA / CALHL7_STORE), like the other operator verbs. A
running engine picks up what `reconcile` stored within a second.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from engine.cli.common import store_args, table, with_service
from engine.operator import OperatorService
from engine.settings import Settings

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, now: datetime | None = None) -> datetime | None:
    """`6h`, `90m`, `2d`, an ISO-8601 time (UTC when no offset), or `watermark` (None)."""
    v = value.strip()
    if v.lower() == "watermark":
        return None
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(v.lower())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 6h / 90m / 2d, an ISO-8601 time or 'watermark', got {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def register(subparsers: Any, parent: argparse.ArgumentParser | None = None) -> None:
    parents = [parent or store_args()]
    p = subparsers.add_parser("reconcile", parents=parents,
                              help="fetch bookings changed in Cal.com since TIME and feed what "
                                   "we missed into the pipeline")
    p.add_argument("--since", required=True, type=parse_since,
                   help="6h, 90m, 2d, an ISO-8601 time, or 'watermark' (the periodic job's)")
    p.add_argument("--source", default="default", help="webhook source these bookings belong to")
    p.add_argument("--set-watermark", action="store_true",
                   help="move the periodic job's watermark to the end of this run")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=_reconcile)

    p = subparsers.add_parser("inbound-jobs", parents=parents,
                              help="Cal.com API jobs made from EHR SIU (dead letters first)")
    p.add_argument("--status", choices=("queued", "done", "dead"), default=None)
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=with_service(_jobs))

    p = subparsers.add_parser("inbound-retry", parents=parents,
                              help="put a dead inbound job back at the head of its queue")
    p.add_argument("job", type=int)
    p.set_defaults(func=with_service(_retry))


def _reconcile(args: argparse.Namespace) -> int:
    if not Settings.from_env().calcom_api_key:  # said before any store is opened
        print("calhl7: set CALHL7_CALCOM_API_KEY (a Cal.com API key) to reconcile.",
              file=sys.stderr)
        return 2
    return with_service(_reconcile_with)(args)


async def _reconcile_with(service: OperatorService, args: argparse.Namespace) -> int:
    from engine.calcom.api import CalcomApi, CalcomError
    from engine.reconcile import ReconcileSummary

    def progress(s: ReconcileSummary) -> None:
        if not args.quiet:
            print(f"\rpage {s.pages}: {s.listed} bookings, {s.fed} new events, "
                  f"{s.duplicates} already known", end="", file=sys.stderr, flush=True)

    api = CalcomApi.from_settings(Settings.from_env())
    assert api is not None  # the key was checked before
    async with api:
        try:
            done = await service.reconcile(api, args.since, args.source,
                                           set_watermark=args.set_watermark, progress=progress)
        except CalcomError as exc:
            print(f"\ncalhl7: Cal.com: {exc.status or 'unreachable'}: {exc.message}",
                  file=sys.stderr)
            return 1
    if done is None:
        print("calhl7: no watermark stored yet for this source; pass --since", file=sys.stderr)
        return 2
    since, summary = done
    if not args.quiet:
        print(file=sys.stderr)
    print(f"{summary.line()} (since {since.isoformat()})")
    for problem in summary.errors:
        print(f"  note: {problem}")
    return 0


async def _jobs(service: OperatorService, args: argparse.Namespace) -> int:
    rows = [asdict(j) for j in await service.inbound_jobs(args.status, args.limit)]
    for r in rows:
        r["result"] = (r["result"] or {}).get("did")
    print(table(rows, ("id", "channel", "ehr_appointment_id", "trigger", "control_id",
                       "status", "attempts", "result", "error")))
    return 0


async def _retry(service: OperatorService, args: argparse.Namespace) -> int:
    ok = await service.inbound_retry(args.job)
    print("queued again" if ok else "no dead job with that id")
    return 0 if ok else 1

