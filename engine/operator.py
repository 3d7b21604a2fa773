"""What an interface analyst does from the shell: look at queues and messages, act on them.

Each command opens the store named by `--data DIR` or `--store URL`, works in a short
transaction and exits; a running engine picks the change up within a second. Every action is
written to the audit trail with who did it.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from engine.store import open_store, requeue
from engine.store.base import QUARANTINED, Store


def _who() -> str:
    return os.environ.get("CALHL7_OPERATOR") or getpass.getuser()


def _fmt_time(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _store_from(args: argparse.Namespace) -> Store:
    return open_store(args.store or os.environ.get("CALHL7_STORE") or args.data)


def run_with_store(fn: Callable[[Store, argparse.Namespace], Awaitable[int]]) -> Callable[
        [argparse.Namespace], int]:
    def runner(args: argparse.Namespace) -> int:
        async def main() -> int:
            store = _store_from(args)
            await store.open()
            try:
                return await fn(store, args)
            finally:
                await store.close()

        return asyncio.run(main())

    return runner


# ---------------------------------------------------------------------- commands
async def cmd_queue(store: Store, args: argparse.Namespace) -> int:
    summary = await store.queue_summary(time.time())
    print(table(summary, ["destination", "queued", "dead", "held_lanes", "oldest_age_seconds"]))
    if args.lanes:
        print()
        lanes = await store.lanes(args.destination, args.limit)
        for lane in lanes:
            lane["ready_at"] = _fmt_time(lane["ready_at"])
            lane["held"] = "HELD" if lane["held"] else ""
        print(table(lanes, ["lane", "destination", "lane_key", "head", "queued", "held",
                            "ready_at", "owner"]))
    return 0


async def cmd_dead_letters(store: Store, args: argparse.Namespace) -> int:
    rows = await store.dead_letters(args.limit)
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    for r in rows:
        r["created_at"] = _fmt_time(r["created_at"])
    print(table(rows, ["id", "lane", "destination", "channel", "message_type", "control_id",
                       "attempts", "error"]))
    return 0


async def cmd_message(store: Store, args: argparse.Namespace) -> int:
    msg = await store.message(args.id)
    if msg is None:
        print(f"no message {args.id}", file=sys.stderr)
        return 1
    print(f"message {msg['id']}  {msg['message_type']}  MSH-10 {msg['control_id']}  "
          f"status {msg['status']}  destination {msg['destination']}  channel {msg['channel']}")
    # every send on record; the message's own counter is its retry budget, which a resend or
    # a reprocess starts again, and which a send whose claim was taken over does not raise
    sends = len(msg["attempt_log"])
    budget = "" if msg["attempts"] == sends else f" ({msg['attempts']} in its retry budget)"
    print(f"appointment {msg['appointment_id']}  lane {msg['lane']}  "
          f"correlation {msg['correlation_id']}  attempts {sends}{budget}")
    print(f"accepted {_fmt_time(msg['accepted_at'])}  queued {_fmt_time(msg['created_at'])}  "
          f"acked {_fmt_time(msg['acked_at'])}")
    if msg["error"]:
        print(f"error: {msg['error']}")
    print("\n" + bytes(msg["payload"]).decode("utf-8", "replace").replace("\r", "\n"))
    print("attempts:")
    for a in msg["attempt_log"]:
        ack = bytes(a["ack"]).decode("utf-8", "replace").replace("\r", " | ") if a["ack"] else ""
        print(f"  {_fmt_time(a['at'])}  {a['control_id']}  {a['outcome']:<9} "
              f"{a['ack_code'] or '-':<3} {a['detail'] or ''}")
        if ack:
            print(f"      ACK: {ack}")
    return 0


def _held_lines(held: Sequence[requeue.Held]) -> str:
    return "\n".join(f"  {h.line()}" for h in held)


async def cmd_resend(store: Store, args: argparse.Namespace) -> int:
    try:
        ok = await store.resend(args.id, _who())
    except requeue.LaterChangesSent as refused:
        if not args.force:
            print(f"message {args.id} was not queued: {_newer_text(refused)}\nIf the EHR must"
                  f" get it anyway, after them: calhl7 resend {args.id} --force",
                  file=sys.stderr)
            return 1
        print(f"warning: message {args.id} goes out after later changes of its appointment"
              f" (--force):\n{_held_lines(refused.later)}", file=sys.stderr)
        ok = await store.resend(args.id, _who(), force=True)
    print(f"message {args.id} queued again with its original bytes and MSH-10" if ok
          else f"no message {args.id}")
    return 0 if ok else 1


def _newer_text(refused: requeue.LaterChangesSent) -> str:
    return ("its destination has, or may have, later changes of the same appointment:\n"
            f"{_held_lines(refused.later)}\n"
            "Sent now, it would reach the EHR after them and put the appointment back in an"
            " older state (an S12 after an S15 books a cancelled appointment again).")


async def cmd_reprocess(store: Store, args: argparse.Namespace) -> int:
    """Render a message again with today's channel files (after a mapping fix): it keeps its
    place in its lane and gets a new MSH-10, since its content changed."""
    from engine.appointments.model import AppointmentEvent
    from engine.channels.routing import render_message
    from engine.config.files import ConfigError
    from engine.config.outbound import load_config
    from engine.hl7.controlid import new_control_id

    msg = await store.message(args.id)
    if msg is None:
        print(f"no message {args.id}", file=sys.stderr)
        return 1
    if msg["status"] == "acked":
        print(f"message {args.id} was acknowledged by the EHR; nothing to reprocess",
              file=sys.stderr)
        return 1
    try:
        config = load_config(args.channels)
    except ConfigError as exc:
        print(f"the channel files have problems; fix them first:\n{exc}", file=sys.stderr)
        return 2
    channel = next((c for c in config.channels if c.name == msg["channel"]), None)
    if channel is None:
        print(f"channel {msg['channel']} is no longer configured in {args.channels}",
              file=sys.stderr)
        return 1
    event = AppointmentEvent.from_dict(json.loads(msg["event_json"]))
    trigger = msg["message_type"].split("^")[1]
    rendered = render_message(config, channel, event, trigger=trigger,
                              control_id=new_control_id(), now=datetime.now(UTC))
    if rendered.error:
        print(f"still cannot render message {args.id}: {rendered.error}", file=sys.stderr)
        return 1

    force = False
    while True:  # a second time only with --force, after the warning
        try:
            ok = await store.replace_payload(args.id, rendered.control_id, rendered.payload,
                                             _who(), force=force)
            break
        except requeue.InFlight as refused:  # never forced: its bytes may be on the wire
            print(f"{refused}: nothing changed. The same change under a new MSH-10 would"
                  f" reach the EHR twice. Wait for its outcome (calhl7 message {args.id}); to"
                  f" keep it from being sent again meanwhile, pause its channel first (calhl7"
                  f" pause {msg['channel']}) and reprocess once the claim has ended.",
                  file=sys.stderr)
            return 1
        except requeue.MayBeHeld as refused:
            if not args.force:
                print(f"message {args.id} was not changed: the EHR may have it already:\n"
                      f"{_held_lines(refused.held)}\nThe same change under a new MSH-10 would"
                      f" reach it twice. To send it again, resend it (calhl7 resend"
                      f" {args.id}: same bytes and MSH-10, so the EHR can tell a repeat). If"
                      f" the EHR confirms it has none of these MSH-10s: calhl7 reprocess"
                      f" {args.id} --force", file=sys.stderr)
                return 1
            print(f"warning: message {args.id} is rendered again although the EHR may have"
                  f" it (--force):\n{_held_lines(refused.held + refused.later)}",
                  file=sys.stderr)
            force = True
        except requeue.LaterChangesSent as refused:
            if not args.force:
                print(f"message {args.id} was not changed: {_newer_text(refused)}\nIf the"
                      f" EHR must get it anyway, after them: calhl7 reprocess {args.id}"
                      f" --force", file=sys.stderr)
                return 1
            print(f"warning: message {args.id} goes out after later changes of its"
                  f" appointment (--force):\n{_held_lines(refused.later)}", file=sys.stderr)
            force = True
    if not ok:
        print(f"message {args.id} was acknowledged meanwhile; nothing changed", file=sys.stderr)
        return 1
    print(f"message {args.id} rendered again as MSH-10 {rendered.control_id} "
          f"(was {msg['control_id']}); it goes out in its lane's order")
    return 0


async def cmd_release(store: Store, args: argparse.Namespace) -> int:
    ok = await store.release_lane(args.lane, _who())
    print(f"lane {args.lane} released: its dead letter is skipped, the next message goes" if ok
          else f"lane {args.lane} is not held by a dead letter")
    return 0 if ok else 1


async def cmd_pause(store: Store, args: argparse.Namespace) -> int:
    await store.set_channel_paused(args.channel, args.verb == "pause", _who())
    print(f"channel {args.channel} {'paused' if args.verb == 'pause' else 'resumed'}")
    return 0


async def cmd_quarantine(store: Store, args: argparse.Namespace) -> int:
    if args.action == "list":
        rows = [
            {"id": e.id, "source": e.source, "received": _fmt_time(e.received_at),
             "trigger": e.trigger, "reason": e.reason}
            for e in await store.events(QUARANTINED, args.limit)
        ]
        print(table(rows, ["id", "source", "received", "trigger", "reason"]))
        return 0
    ids = args.ids or [e.id for e in await store.events(QUARANTINED, args.limit)]
    done = [i for i in ids if await store.requeue_event(i, _who())]
    print(f"{len(done)} event(s) queued for processing again: {done}")
    return 0


async def cmd_audit(store: Store, args: argparse.Namespace) -> int:
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
    appointment = args.appointment
    if appointment:  # a booking uid (each reschedule makes one) finds its appointment too
        states = await store.appointment_states([appointment])
        if appointment in states:
            appointment = json.loads(states[appointment]).get("appointment_id", appointment)
    rows = await store.audit(appointment, since, args.limit)
    if args.json:
        for r in rows:
            print(json.dumps({**r, "at": _fmt_time(r["at"])}))
        return 0
    for r in rows:
        r["at"] = _fmt_time(r["at"])
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
    p.set_defaults(func=run_with_store(cmd_queue))

    p = sub.add_parser("dead-letters", parents=[store_args], help="messages that need an analyst")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_with_store(cmd_dead_letters))

    p = sub.add_parser("message", parents=[store_args], help="one message: SIU, attempts, ACKs")
    p.add_argument("id", type=int)
    p.set_defaults(func=run_with_store(cmd_message))

    p = sub.add_parser("resend", parents=[store_args], help="send the same bytes, same MSH-10")
    p.add_argument("id", type=int)
    p.add_argument("--force", action="store_true",
                   help="even after later changes of its appointment (prints them)")
    p.set_defaults(func=run_with_store(cmd_resend))

    p = sub.add_parser("reprocess", parents=[store_args],
                       help="render a message again with today's channels (new MSH-10)")
    p.add_argument("id", type=int)
    p.add_argument("--channels", default=os.environ.get("CALHL7_CHANNELS", "channels"))
    p.add_argument("--force", action="store_true",
                   help="even if the EHR may have it, or has later changes of its appointment"
                        " (prints them); never while it is being sent")
    p.set_defaults(func=run_with_store(cmd_reprocess))

    p = sub.add_parser("release", parents=[store_args], help="let a held lane move on")
    p.add_argument("lane", type=int)
    p.set_defaults(func=run_with_store(cmd_release))

    for verb in ("pause", "resume"):
        p = sub.add_parser(verb, parents=[store_args], help=f"{verb} sending for a channel")
        p.add_argument("channel")
        p.set_defaults(func=run_with_store(cmd_pause), verb=verb)

    p = sub.add_parser("quarantine", parents=[store_args],
                       help="signed webhooks we could not use: list, reprocess after a fix")
    p.add_argument("action", choices=["list", "reprocess"])
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--limit", type=int, default=1000)
    p.set_defaults(func=run_with_store(cmd_quarantine))

    p = sub.add_parser("audit", parents=[store_args],
                       help="who booked, moved or cancelled what, and what we sent")
    p.add_argument("--appointment", help="appointment id or any booking uid of it")
    p.add_argument("--since", help="ISO time, e.g. 2026-03-10T00:00:00Z")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.set_defaults(func=run_with_store(cmd_audit))
