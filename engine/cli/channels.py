"""Channel verbs for the `calhl7` CLI: check, schema, render (a preview of the SIU a booking makes).

`engine.cli` wires them in with `register(subparsers)`; each verb's `func` takes the parsed args
and returns an exit code. Output names files, paths and fields; `render` prints the message
itself on purpose (it is an analyst's preview of synthetic or test bookings).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from engine.appointments.normalize import normalize
from engine.channels.routing import OutboundMessage, probe_message, route
from engine.config.files import ConfigError
from engine.config.inbound import load_inbound_config, own_applications_of
from engine.config.outbound import Config, json_schema, load_config
from engine.settings import env

DEFAULT_DIR = env("CHANNELS", "channels")


def _preview_id(counter: Iterator[int]) -> str:
    return f"PREVIEW{next(counter):06d}"


def register(subparsers: Any) -> None:
    """Add `check`, `schema` and `render` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "check", help="check channel and destination files; list every problem"
    )
    p.add_argument(
        "dir", nargs="?", default=DEFAULT_DIR, help=f"channel directory (default {DEFAULT_DIR})"
    )
    p.set_defaults(func=cmd_check)

    p = subparsers.add_parser(
        "schema", help="print the JSON Schema of channel and destination files"
    )
    p.add_argument("--kind", choices=("all", "channel", "destination"), default="all")
    p.set_defaults(func=cmd_schema)

    p = subparsers.add_parser(
        "render", help="print the SIU a Cal.com webhook would produce on a channel"
    )
    p.add_argument(
        "--channel", required=True, type=Path, help="channel file (its directory is loaded)"
    )
    p.add_argument("webhook", type=Path, help="Cal.com webhook body (JSON)")
    p.add_argument("--previous", action="append", default=[], type=Path, metavar="PREV.json",
                   help="earlier webhooks of the same booking, oldest first (repeatable)")
    p.add_argument("--fields", action="store_true", help="also print a field-by-field table")
    p.add_argument("--now", help="ISO-8601 time for MSH-7 (default: now)")
    p.set_defaults(func=cmd_render)


def _load(directory: str | Path) -> Config | None:
    try:
        return load_config(directory)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s)", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.dir)
    if config is None:
        return 1
    from engine.hl7.validate import validate_strict  # lazy: hl7apy is slow to import

    bad = 0
    for channel in config.channels:
        # A template can compile and render yet produce a message the EHR would refuse.
        for problem in validate_strict(probe_message(config, channel)):
            shown = config.channel_files[channel.name].name
            print(f"{shown}: hl7.template: sample booking: {problem}", file=sys.stderr)
            bad += 1
    # inbound/*.yaml too: `serve` refuses to start on a problem there as well
    try:
        inbound = load_inbound_config(args.dir, own_applications_of(config))
    except ConfigError as exc:
        for issue in exc.problems:
            print(issue, file=sys.stderr)
        bad += len(exc.problems)
        inbound = None
    if bad:
        print(f"{bad} problem(s)", file=sys.stderr)
        return 1
    enabled = sum(1 for c in config.channels if c.enabled)
    inbound_count = len(inbound.channels) if inbound else 0
    print(f"OK: {len(config.channels)} channel(s) ({enabled} enabled), "
          f"{len(config.destinations)} destination(s), {inbound_count} inbound channel(s) "
          f"in {args.dir}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    schema = json_schema()
    print(json.dumps(schema if args.kind == "all" else schema[args.kind], indent=2))
    return 0


def field_table(er7: str) -> list[tuple[str, str]]:
    """(`SCH-7.2`, unescaped value) for every non-empty component, in message order."""
    import hl7  # lazy: preview only

    unescape = hl7.parse(er7).unescape
    rows: list[tuple[str, str]] = []
    for segment in filter(None, er7.split("\r")):
        fields = segment.split("|")
        seg_id = fields[0]
        if seg_id == "MSH":  # MSH-1 is the field separator itself, MSH-2 the encoding characters
            rows += [("MSH-1", "|"), ("MSH-2", fields[1])]
            numbered = list(enumerate(fields[2:], start=3))
        else:
            numbered = list(enumerate(fields[1:], start=1))
        for number, text in numbered:
            reps = text.split("~")
            for r, rep in enumerate(reps, start=1):
                comps = rep.split("^")
                for c, comp in enumerate(comps, start=1):
                    if comp == "":
                        continue
                    name = f"{seg_id}-{number}" + (f"({r})" if len(reps) > 1 else "")
                    name += f".{c}" if len(comps) > 1 else ""
                    rows.append((name, unescape(comp)))
    return rows


def _print_message(m: OutboundMessage, fields: bool) -> None:
    print(f"# channel {m.channel} -> {m.destination}: {m.message_type}, "
          f"MSH-10 {m.control_id}, lane {m.lane_key}")
    if m.error:
        print(f"# ERROR (would go to the error queue): {m.error}")
    for segment in filter(None, m.er7.split("\r")):
        print(segment)
    if fields and m.er7:
        print()
        rows = field_table(m.er7)
        width = max(len(n) for n, _ in rows)
        for name, value in rows:
            print(f"{name.ljust(width)} = {value}")
    print()


def cmd_render(args: argparse.Namespace) -> int:
    channel_file = args.channel.resolve()
    config = _load(channel_file.parent)
    if config is None:
        return 1
    names = [n for n, f in config.channel_files.items() if f.resolve() == channel_file]
    if not names:
        print(f"{args.channel}: not a channel file of {channel_file.parent}", file=sys.stderr)
        return 1
    only = replace(config, channels=(config.channel(names[0]),))
    now = datetime.fromisoformat(args.now) if args.now else datetime.now(UTC)

    # What the engine would hold after the earlier webhooks: states, uid links, S12s queued.
    states: dict[str, Any] = {}
    links: dict[str, str] = {}
    queued: set[tuple[str, str]] = set()

    def lookup(key: str) -> Any:
        return states.get(links.get(key, key))

    status = 0
    bodies = [*args.previous, args.webhook]
    for index, path in enumerate(bodies):
        last = index == len(bodies) - 1
        try:
            body = path.read_bytes()
        except OSError as exc:
            print(f"{path}: cannot read ({type(exc).__name__})", file=sys.stderr)
            return 1
        norm = normalize(body, source="preview", received_at=now, lookup=lookup)
        if norm.state is not None:
            states[norm.state.appointment_id] = norm.state
            for uid in norm.state.uids:
                links[uid] = norm.state.appointment_id
        links.update(norm.uid_links)
        if norm.event is None:
            if last:
                why = f" ({norm.reason})" if norm.reason else ""
                print(f"# {path.name}: {norm.disposition}{why}")
            continue
        counter = iter(range(1, 1_000_000))
        result = route(norm.event, only, destination_has=lambda d, a: (d, a) in queued,
                       make_control_id=partial(_preview_id, counter), now=now)
        for m in result.messages:
            if m.trigger == "S12" and m.error is None:
                queued.add((m.destination, m.appointment_id))
        if not last:
            continue
        ev = norm.event
        print(f"# {path.name}: {ev.kind.value} ({ev.trigger}, status {ev.status})")
        if result.unrouted:
            print(f"# channel {names[0]}: its match rules do not take this booking")
        for channel, reason in result.skipped:
            print(f"# channel {channel}: skipped: {reason}")
        for m in result.messages:
            _print_message(m, args.fields)
            if m.error:
                status = 1
    return status
