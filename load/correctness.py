"""Exactly once, in order, per (appointment change, destination): checked after a load run.

Sources:
  - the engine store (SQLite file in the data dir): `outbound` rows are the changes the
    engine took on, one row per (change, destination), with their MSH-10 (`control_id`), in id
    order per appointment; `received_events` holds the webhook bodies it accepted;
  - each simulator's JSON-lines log: what that EHR really received (msh10, type, sch1), in
    arrival order; a repeat of the same msh10 is an allowed resend;
  - the load ledger (optional): every webhook sent, its story and its HTTP answer.

Counts (all must be zero for a clean run):
  lost          a change (outbound row, not dead) its destination never received; includes
                rows still queued when the drain timed out (`stuck` tells them apart); plus
                2xx'd webhooks missing from received_events (`intake_lost`)
  duplicated    the EHR got an MSH-10 the store does not know for it, or one change under two
                MSH-10s (two rows for the same event, channel and trigger), or more messages
                for an appointment than its stories call for
  out_of_order  per (destination, appointment): messages received in an order other than
                their id order (n minus the longest in-order run)
  model_missing per (destination, appointment): fewer messages than the 2xx'd stories call for
  dead          dead letters (none expected with the load mix)

    .venv/bin/python load/correctness.py --data DIR --sim ehr-main=main.jsonl \
        --sim ehr-legacy=legacy.jsonl [--ledger ledger.jsonl --channels DIR]
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from load.scenarios import channel_rules, expected_from_ledger, read_ledger  # noqa: E402

FAIL_KEYS = ("lost", "duplicated", "out_of_order", "model_missing", "dead", "quarantined")


def db_path(data: str | Path) -> Path:
    p = Path(data)
    return p if p.suffix in (".sqlite3", ".db") else p / "calhl7.sqlite3"


def connect_ro(data: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{db_path(data)}?mode=ro", uri=True, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def queue_depth(conn: sqlite3.Connection) -> dict[str, int]:
    """destination -> queued messages, plus 'events_pending' (webhooks not yet processed)."""
    out = {d: n for d, n in conn.execute(
        "SELECT destination, COUNT(*) FROM outbound WHERE status = 'queued' GROUP BY destination")}
    out["events_pending"] = conn.execute(
        "SELECT COUNT(*) FROM received_events WHERE state = 'pending'").fetchone()[0]
    return out


def read_sim_log(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with p.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line cut by a kill: not a message we can count
                    continue
    return out


def _trigger(msg_type: str | None) -> str:
    parts = (msg_type or "").split("^")
    return parts[1] if len(parts) > 1 else ""


def _lis(seq: list[int]) -> int:
    tails: list[int] = []
    for x in seq:
        i = bisect.bisect_left(tails, x)
        if i == len(tails):
            tails.append(x)
        else:
            tails[i] = x
    return len(tails)


def check(data: str | Path, sims: dict[str, str | Path], ledger: str | Path | None = None,
          channels: str | Path | None = None, examples: int = 5) -> dict[str, Any]:
    conn = connect_ro(data)
    try:
        rows = conn.execute(
            "SELECT id, destination, appointment_id, control_id, status, message_type, event_id,"
            " channel FROM outbound ORDER BY id").fetchall()
        event_states = dict(conn.execute(
            "SELECT state, COUNT(*) FROM received_events GROUP BY state").fetchall())
        hashes = None
        if ledger:
            hashes = {bytes(h).hex() if isinstance(h, (bytes, memoryview)) else str(h)
                      for (h,) in conn.execute("SELECT body_sha256 FROM received_events")}
    finally:
        conn.close()

    res: dict[str, Any] = {k: 0 for k in FAIL_KEYS}
    res.update(changes=len(rows), acked=0, stuck=0, unknown_msh10=0, intake_lost=0,
               resends=0, received=0, model_extra=0, model_checked=0,
               events=event_states, examples=[])
    res["quarantined"] = event_states.get("quarantined", 0)

    def example(text: str) -> None:
        if len(res["examples"]) < examples:
            res["examples"].append(text)

    # what each EHR received: msh10 -> first arrival position, per destination
    arrivals: dict[str, dict[str, int]] = {}
    received_by_appt: dict[tuple[str, str], list[tuple[int, str, str]]] = defaultdict(list)
    for dest, path in sims.items():
        first: dict[str, int] = {}
        for pos, rec in enumerate(read_sim_log(path)):
            msh10 = rec.get("msh10")
            if msh10 is None:
                continue
            res["received"] += 1
            if msh10 in first:
                res["resends"] += 1
                continue
            first[msh10] = pos
            appt = (rec.get("sch1") or "").split("^")[0]
            received_by_appt[(dest, appt)].append((pos, msh10, _trigger(rec.get("type"))))
        arrivals[dest] = first

    known: dict[str, set[str]] = defaultdict(set)
    per_appt: dict[tuple[str, str], list[str]] = defaultdict(list)  # control ids in id order
    same_change: dict[tuple[Any, ...], int] = defaultdict(int)
    for mid, dest, appt, cid, status, mtype, event_id, channel in rows:
        known[dest].add(cid)
        if status == "dead":
            res["dead"] += 1
            example(f"dead letter: message {mid} to {dest} ({mtype})")
            continue
        if status == "skipped":
            continue
        same_change[(event_id, channel, mtype)] += 1
        if status == "acked":
            res["acked"] += 1
        got = arrivals.get(dest, {})
        if cid not in got:
            res["lost"] += 1
            if status == "queued":
                res["stuck"] += 1
            example(f"lost: message {mid} {mtype} to {dest} (status {status}, MSH-10 {cid})")
            continue
        per_appt[(dest, appt)].append(cid)
    for key, n in same_change.items():
        if n > 1:
            res["duplicated"] += n - 1
            example(f"one change, {n} rows: event {key[0]} channel {key[1]} {key[2]}")
    for dest, got in arrivals.items():
        for cid in got:
            if cid not in known[dest]:
                res["unknown_msh10"] += 1
                res["duplicated"] += 1
                example(f"{dest} received MSH-10 {cid} the store does not know")
    for (dest, appt), cids in per_appt.items():
        order = [arrivals[dest][c] for c in cids]
        bad = len(order) - _lis(order)
        if bad:
            res["out_of_order"] += bad
            example(f"out of order at {dest} for appointment {appt}: {bad} message(s)")

    if ledger:
        rules = channel_rules(channels) if channels else []
        records = list(read_ledger(ledger))
        sure, maybe, counts = expected_from_ledger(records, rules)
        res.update(counts)
        assert hashes is not None
        for r in records:
            h = r.get("sha")
            s = r.get("status")
            if h and s is not None and 200 <= s < 300 and h not in hashes:
                res["intake_lost"] += 1
                res["lost"] += 1
                example(f"a 2xx'd webhook ({r['trigger']}) is not in received_events")
        res["expected_messages"] = sum(len(v) for v in sure.values())
        for key in set(sure) | set(maybe) | set(received_by_appt):
            got = [t for _, _, t in received_by_appt.get(key, [])]
            want, alt = sure.get(key, []), maybe.get(key, [])
            res["model_checked"] += 1
            if got == want or got == alt:
                continue
            if len(got) < len(want):
                res["model_missing"] += len(want) - len(got)
                example(f"{key[0]} appointment {key[1]}: expected {want}, received {got}")
            elif len(got) > max(len(want), len(alt)):
                res["model_extra"] += len(got) - max(len(want), len(alt))
                res["duplicated"] += len(got) - max(len(want), len(alt))
                example(f"{key[0]} appointment {key[1]}: expected {want}, received {got}")
            else:
                res["model_missing"] += 1  # same count, other triggers: a wrong message
                example(f"{key[0]} appointment {key[1]}: expected {want}, received {got}")
    return res


def check_outbound(rows: list[tuple[Any, ...]], seen: list[dict[str, Any]]) -> dict[str, int]:
    """The short check, on any store. `rows` are one destination's outbound rows (id,
    appointment, MSH-10, status, event id, channel, message type), `seen` what its EHR received
    in arrival order.
      lost          a message that is not dead and never arrived
      stuck         a message still queued (arrived or not: its ACK was never recorded)
      unknown       an MSH-10 the store never gave out
      duplicated    one change queued twice (two rows for one event, channel and type)
      out_of_order  appointments whose messages arrived in another order than queued"""
    first: dict[str, int] = {}
    for i, s in enumerate(seen):
        first.setdefault(s["msh10"], i)
    changes: dict[tuple[Any, ...], int] = defaultdict(int)
    for r in rows:
        changes[(r[4], r[5], r[6])] += 1
    arrivals: dict[str, list[int]] = defaultdict(list)
    for r in sorted(rows):
        if r[2] in first:
            arrivals[r[1]].append(first[r[2]])
    return {
        "lost": sum(1 for r in rows if r[3] != "dead" and r[2] not in first),
        "stuck": sum(1 for r in rows if r[3] == "queued"),
        "unknown": len(set(first) - {r[2] for r in rows}),
        "duplicated": sum(n - 1 for n in changes.values()),
        "out_of_order": sum(1 for a in arrivals.values() if a != sorted(a)),
        "dead": sum(1 for r in rows if r[3] == "dead"),
    }


def ok(res: dict[str, Any]) -> bool:
    return all(res.get(k, 0) == 0 for k in FAIL_KEYS)


def describe(res: dict[str, Any]) -> str:
    lines = [
        f"changes in store {res['changes']} (acked {res['acked']}), received by EHRs "
        f"{res['received']} (allowed resends {res['resends']})",
        f"lost {res['lost']} (stuck in queue {res['stuck']}, intake {res['intake_lost']}), "
        f"duplicated {res['duplicated']} (unknown MSH-10 {res['unknown_msh10']}, "
        f"beyond the stories {res['model_extra']}), out of order {res['out_of_order']}, "
        f"dead {res['dead']}, quarantined {res['quarantined']}",
    ]
    if "stories" in res:
        lines.append(
            f"stories {res['stories']}, webhooks {res['webhooks']} ({res['webhooks_2xx']} 2xx, "
            f"{res['webhooks_failed']} failed), expected messages {res['expected_messages']}, "
            f"(destination, appointment) pairs checked {res['model_checked']}, "
            f"missing vs stories {res['model_missing']}")
    lines += [f"  e.g. {e}" for e in res.get("examples", [])]
    return "\n".join(lines)


def sha_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--sim", action="append", default=[], metavar="DEST=LOG")
    ap.add_argument("--ledger")
    ap.add_argument("--channels")
    args = ap.parse_args()
    sims = dict(s.split("=", 1) for s in args.sim)
    res = check(args.data, sims, args.ledger, args.channels)
    print(describe(res))
    return 0 if ok(res) else 1


if __name__ == "__main__":
    raise SystemExit(main())
