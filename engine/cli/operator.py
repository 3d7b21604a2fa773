"""The operator verbs: parse the arguments, call the operator service, print what it returns.

Each verb opens the store named by `--data DIR` or `--store URL`, works in a short
transaction and exits; a running engine picks the change up within a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from engine.cli.common import fmt_time, table, with_service
from engine.operator import OperatorService, Reprocessed, Resent
from engine.settings import env
from engine.store.requeue import Held


async def cmd_queue(service: OperatorService, args: argparse.Namespace) -> int:
    summary = [asdict(d) for d in await service.queue()]
    print(table(summary, ["destination", "queued", "dead", "held_lanes", "oldest_age_seconds"]))
    if args.lanes:
        print()
        lanes: list[dict[str, Any]] = []
        for lane in await service.lanes(args.destination, args.limit):
            lanes.append({**asdict(lane), "ready_at": fmt_time(lane.ready_at),
                          "held": "HELD" if lane.held else ""})
        print(table(lanes, ["lane", "destination", "lane_key", "head", "queued", "held",
                            "ready_at", "owner"]))
    return 0


async def cmd_dead_letters(service: OperatorService, args: argparse.Namespace) -> int:
    rows = [asdict(r) for r in await service.dead_letters(args.limit)]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    for r in rows:
        r["created_at"] = fmt_time(r["created_at"])
    print(table(rows, ["id", "lane", "destination", "channel", "message_type", "control_id",
                       "attempts", "error"]))
    return 0


async def cmd_message(service: OperatorService, args: argparse.Namespace) -> int:
    msg = await service.message(args.id)
    if msg is None:
        print(f"no message {args.id}", file=sys.stderr)
        return 1
    print(f"message {msg.id}  {msg.message_type}  MSH-10 {msg.control_id}  "
          f"status {msg.status}  destination {msg.destination}  channel {msg.channel}")
    # every send on record; the message's own counter is its retry budget, which a resend or
    # a reprocess starts again, and which a send whose claim was taken over does not raise
    sends = len(msg.attempt_log)
    budget = "" if msg.attempts == sends else f" ({msg.attempts} in its retry budget)"
    print(f"appointment {msg.appointment_id}  lane {msg.lane}  "
          f"correlation {msg.correlation_id}  attempts {sends}{budget}")
    print(f"accepted {fmt_time(msg.accepted_at)}  queued {fmt_time(msg.created_at)}  "
          f"acked {fmt_time(msg.acked_at)}")
    if msg.error:
        print(f"error: {msg.error}")
    print("\n" + bytes(msg.payload).decode("utf-8", "replace").replace("\r", "\n"))
    print("attempts:")
    for a in msg.attempt_log:
        ack = bytes(a.ack).decode("utf-8", "replace").replace("\r", " | ") if a.ack else ""
        print(f"  {fmt_time(a.at)}  {a.control_id}  {a.outcome:<9} "
              f"{a.ack_code or '-':<3} {a.detail or ''}")
        if ack:
            print(f"      ACK: {ack}")
    return 0


def _held_lines(held: Sequence[Held]) -> str:
    return "\n".join(f"  {h.line()}" for h in held)


def _newer_text(later: Sequence[Held]) -> str:
    return ("its destination has, or may have, later changes of the same appointment:\n"
            f"{_held_lines(later)}\n"
            "Sent now, it would reach the EHR after them and put the appointment back in an"
            " older state (an S12 after an S15 books a cancelled appointment again).")


async def cmd_resend(service: OperatorService, args: argparse.Namespace) -> int:
    done: Resent = await service.resend(args.id, force=args.force)
    if done.refused:
        print(f"message {args.id} was not queued: {_newer_text(done.later)}\nIf the EHR must"
              f" get it anyway, after them: calhl7 resend {args.id} --force", file=sys.stderr)
        return 1
    if done.forced:
        print(f"warning: message {args.id} goes out after later changes of its appointment"
              f" (--force):\n{_held_lines(done.later)}", file=sys.stderr)
    print(f"message {args.id} queued again with its original bytes and MSH-10" if done.queued
          else f"no message {args.id}")
    return 0 if done.queued else 1


async def cmd_reprocess(service: OperatorService, args: argparse.Namespace) -> int:
    """Render a message again with today's channel files (after a mapping fix): it keeps its
    place in its lane and gets a new MSH-10, since its content changed."""
    r = await service.reprocess(args.id, args.channels, force=args.force)
    for passed in r.forced:
        why = ("is rendered again although the EHR may have it" if passed.reason == "may_be_held"
               else "goes out after later changes of its appointment")
        print(f"warning: message {args.id} {why} (--force):\n{_held_lines(passed.held)}",
              file=sys.stderr)
    text, code = _reprocess_text(r, args)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _reprocess_text(r: Reprocessed, args: argparse.Namespace) -> tuple[str, int]:
    i = args.id
    match r.outcome:
        case "rendered":
            return (f"message {i} rendered again as MSH-10 {r.control_id} "
                    f"(was {r.was_control_id}); it goes out in its lane's order", 0)
        case "no_message":
            return f"no message {i}", 1
        case "acked":
            return f"message {i} was acknowledged by the EHR; nothing to reprocess", 1
        case "config_problems":
            return f"the channel files have problems; fix them first:\n{r.detail}", 2
        case "channel_gone":
            return f"channel {r.channel} is no longer configured in {args.channels}", 1
        case "render_failed":
            return f"still cannot render message {i}: {r.detail}", 1
        case "in_flight":
            return (f"{r.detail}: nothing changed. The same change under a new MSH-10 would"
                    f" reach the EHR twice. Wait for its outcome (calhl7 message {i}); to"
                    f" keep it from being sent again meanwhile, pause its channel first (calhl7"
                    f" pause {r.channel}) and reprocess once the claim has ended.", 1)
        case "may_be_held":
            return (f"message {i} was not changed: the EHR may have it already:\n"
                    f"{_held_lines(r.held)}\nThe same change under a new MSH-10 would"
                    f" reach it twice. To send it again, resend it (calhl7 resend"
                    f" {i}: same bytes and MSH-10, so the EHR can tell a repeat). If"
                    f" the EHR confirms it has none of these MSH-10s: calhl7 reprocess"
                    f" {i} --force", 1)
        case "later_changes":
            return (f"message {i} was not changed: {_newer_text(r.later)}\nIf the"
                    f" EHR must get it anyway, after them: calhl7 reprocess {i}"
                    f" --force", 1)
        case "acked_meanwhile":
            return f"message {i} was acknowledged meanwhile; nothing changed", 1
    raise AssertionError(r.outcome)


async def cmd_release(service: OperatorService, args: argparse.Namespace) -> int:
    ok = await service.release(args.lane)
    print(f"lane {args.lane} released: its dead letter is skipped, the next message goes" if ok
          else f"lane {args.lane} is not held by a dead letter")
    return 0 if ok else 1


async def cmd_pause(service: OperatorService, args: argparse.Namespace) -> int:
    if args.verb == "pause":
        await service.pause(args.channel)
    else:
        await service.resume(args.channel)
    print(f"channel {args.channel} {'paused' if args.verb == 'pause' else 'resumed'}")
    return 0


async def cmd_quarantine(service: OperatorService, args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = [
            {"id": e.id, "source": e.source, "received": fmt_time(e.received_at),
             "trigger": e.trigger, "reason": e.reason}
            for e in await service.quarantined(args.limit)
        ]
        print(table(rows, ["id", "source", "received", "trigger", "reason"]))
        return 0
    done = await service.requeue_quarantined(args.ids, args.limit)
    print(f"{len(done)} event(s) queued for processing again: {done}")
    return 0


async def cmd_audit(service: OperatorService, args: argparse.Namespace) -> int:
    since: float | None = None
    if args.since:
        try:
            when = datetime.fromisoformat(args.since.replace("Z", "+00:00"))
        except ValueError:
            print(f"--since: not an ISO time: {args.since!r}", file=sys.stderr)
            return 2
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        since = when.timestamp()
    rows = [asdict(r) for r in await service.audit(args.appointment, since, args.limit)]
    if args.json:
        for r in rows:
            print(json.dumps({**r, "at": fmt_time(r["at"])}))
        return 0
    for r in rows:
        r["at"] = fmt_time(r["at"])
        r["detail"] = json.dumps(r["detail"], separators=(",", ":"))
    print(table(rows, ["at", "kind", "appointment_id", "actor", "trigger", "source", "detail"]))
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    store_args: argparse.ArgumentParser,
) -> None:
    p = sub.add_parser("queue", parents=[store_args], help="depth and oldest age per destination")
    p.add_argument("--lanes", action="store_true", help="list lanes too")
    p.add_argument("--destination")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=with_service(cmd_queue))

    p = sub.add_parser("dead-letters", parents=[store_args], help="messages that need an analyst")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=with_service(cmd_dead_letters))

    p = sub.add_parser("message", parents=[store_args], help="one message: SIU, attempts, ACKs")
    p.add_argument("id", type=int)
    p.set_defaults(func=with_service(cmd_message))

    p = sub.add_parser("resend", parents=[store_args], help="send the same bytes, same MSH-10")
    p.add_argument("id", type=int)
    p.add_argument("--force", action="store_true",
                   help="even after later changes of its appointment (prints them)")
    p.set_defaults(func=with_service(cmd_resend))

    p = sub.add_parser("reprocess", parents=[store_args],
                       help="render a message again with today's channels (new MSH-10)")
    p.add_argument("id", type=int)
    p.add_argument("--channels", default=env("CHANNELS", "channels"))
    p.add_argument("--force", action="store_true",
                   help="even if the EHR may have it, or has later changes of its appointment"
                        " (prints them); never while it is being sent")
    p.set_defaults(func=with_service(cmd_reprocess))

    p = sub.add_parser("release", parents=[store_args], help="let a held lane move on")
    p.add_argument("lane", type=int)
    p.set_defaults(func=with_service(cmd_release))

    for verb in ("pause", "resume"):
        p = sub.add_parser(verb, parents=[store_args], help=f"{verb} sending for a channel")
        p.add_argument("channel")
        p.set_defaults(func=with_service(cmd_pause), verb=verb)

    p = sub.add_parser("quarantine", parents=[store_args],
                       help="signed webhooks we could not use: list, reprocess after a fix")
    p.add_argument("action", choices=["list", "reprocess"])
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(func=with_service(cmd_quarantine))

    p = sub.add_parser("audit", parents=[store_args],
                       help="who booked, moved or cancelled what, and what we sent")
    p.add_argument("--appointment", help="appointment id or any booking uid of it")
    p.add_argument("--since", help="ISO time, e.g. 2026-03-10T00:00:00Z")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=with_service(cmd_audit))
