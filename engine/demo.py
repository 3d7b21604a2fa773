"""The demo: the whole path on one machine, in one command.

Starts two simulated EHRs (a v2.5.1 main EHR and a legacy v2.3 front-desk system), the
engine on the embedded store with the example channels, replays a small clinic's bookings as
signed Cal.com webhooks, waits for every message to be acknowledged, and shows what each EHR
received, with the commands to look further.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import httpx

from engine.app import build_engine
from engine.settings import Settings
from engine.sim.bookings import Story, StoryTeller, compact, sign
from engine.sim.ehr import SimPolicy, run_sim, stop_sim
from engine.site_init import copy_data, example_channels

DEMO_SECRET = "demo-secret-not-for-production"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_first_booking(stories: list[Story], uid: str | None, path: Path) -> Path | None:
    """Write the webhook that opened appointment `uid` (pretty-printed) for `calhl7 render`."""
    for story in stories:
        if story.appointment_uid == uid and story.webhooks:
            body = json.dumps(story.webhooks[0], indent=2, ensure_ascii=False)
            path.write_text(body + "\n", "utf-8")
            return path
    return None


def run_demo(args: argparse.Namespace) -> int:
    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="calhl7-demo-"))
    return asyncio.run(_demo(data, quiet=args.quiet))


async def _demo(data: Path, quiet: bool = False) -> int:
    say = (lambda *a: None) if quiet else print
    main_port, legacy_port, http_port = _free_port(), _free_port(), _free_port()
    os.environ.update({"EHR_MAIN_HOST": "127.0.0.1", "EHR_MAIN_PORT": str(main_port),
                       "EHR_LEGACY_HOST": "127.0.0.1", "EHR_LEGACY_PORT": str(legacy_port)})
    data.mkdir(parents=True, exist_ok=True)
    # the example channels are package data: copied out, they work from an installed wheel
    # too, and the analyst's render command below can point at them
    channels = data / "channels"
    copy_data(example_channels(), channels)
    main_log, legacy_log = data / "ehr-main.jsonl", data / "ehr-legacy.jsonl"
    # the legacy system refuses S26, like many do; the main EHR takes everything
    sims = [await run_sim("127.0.0.1", main_port, SimPolicy(sending_application="MAIN_EHR"),
                          main_log),
            await run_sim("127.0.0.1", legacy_port,
                          SimPolicy(sending_application="LEGACY_PM", encoding="ascii",
                                    ar_match=["MSH-9.2=S26"]), legacy_log)]
    say(f"simulated EHRs: main (v2.5.1) on 127.0.0.1:{main_port}, "
        f"legacy (v2.3, ASCII) on 127.0.0.1:{legacy_port}")
    engine = build_engine(Settings.from_env(http_port=http_port, data_dir=data,
                                            channels_dir=channels,
                                            secrets={"default": [DEMO_SECRET]}))
    ready = asyncio.Event()
    task = asyncio.create_task(engine.run(ready))
    started = asyncio.ensure_future(ready.wait())
    await asyncio.wait([task, started], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task.done():  # it stopped before it was ready (the data directory in use...): say why
        started.cancel()
        task.result()
    await asyncio.wait_for(started, 30)
    say(f"engine: webhooks on http://127.0.0.1:{http_port}/webhooks/calcom, "
        f"store {data / 'calhl7.sqlite3'}\n")

    teller = StoryTeller(seed=2026)
    stories = [teller.story() for _ in range(24)]
    sent = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
        for story in stories:
            for hook in story.webhooks:
                body = compact(hook)
                r = await client.post("/webhooks/calcom", content=body, headers={
                    "Content-Type": "application/json",
                    "X-Cal-Signature-256": sign(body, DEMO_SECRET)})
                r.raise_for_status()
                sent += 1
        # Cal.com sends some webhooks twice; a redelivery is answered and produces nothing
        body = compact(stories[0].webhooks[0])
        dup = await client.post("/webhooks/calcom", content=body, headers={
            "Content-Type": "application/json", "X-Cal-Signature-256": sign(body, DEMO_SECRET)})
        bad = await client.post("/webhooks/calcom", content=body, headers={
            "Content-Type": "application/json", "X-Cal-Signature-256": "0" * 64})
    say(f"posted {sent} signed webhooks for {len(stories)} appointments "
        f"(a redelivery: {dup.json()['status']}; a forged signature: HTTP {bad.status_code})")

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = await engine.store.counts()
        if counts.get("events_pending", 0) == 0 and counts.get("messages_queued", 0) == 0:
            break
        await asyncio.sleep(0.2)
    counts = await engine.store.counts()
    engine.stop.set()
    await task
    for sim in sims:
        await stop_sim(sim)

    first_s12: str | None = None
    for title, log in (("main EHR (v2.5.1)", main_log), ("legacy front desk (v2.3)", legacy_log)):
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        s12s = [str(r["sch1"]).split("^")[0] for r in lines
                if str(r.get("type", "")).startswith("SIU^S12") and r.get("sch1")]
        first_s12 = first_s12 or (s12s[0] if s12s else None)
        say(f"\n{title}: received {len(lines)} messages")
        say(f"  {'MSH-10':<22}{'type':<17}{'SCH-1 (appointment)':<32}ACK")
        for rec in lines:
            say(f"  {rec.get('msh10') or '-':<22}{rec.get('type') or '-':<17}"
                f"{rec.get('sch1') or '-':<32}{rec.get('ack') or '-'}"
                f"{'  (repeat)' if rec.get('repeat') else ''}")
    say(f"\nstore: {json.dumps(counts)}")
    d = f"--data {data}"
    verb = _command_name()
    say("\nlook further:\n"
        f"  {verb} queue {d} --lanes        # depth and oldest age per destination and lane\n"
        f"  {verb} dead-letters {d}         # what needs an analyst\n"
        f"  {verb} message 1 {d}            # one SIU, each attempt, each ACK\n"
        f"  {verb} audit {d}                # who booked, moved or cancelled what, what we sent")
    booking = _save_first_booking(stories, first_s12, data / "first_booking.json")
    if booking is not None:  # a body the demo posted, so the preview works wherever it ran
        say(f"  {verb} render --channel {channels / 'family-medicine.yaml'} {booking}")
    drained = counts.get("events_pending", 0) == 0 and counts.get("messages_queued", 0) == 0
    return 0 if drained else 1


def _command_name() -> str:
    """`./dev` in a checkout (it sets up the venv), `calhl7` where the engine is installed."""
    checkout = Path(__file__).resolve().parents[1]
    return "./dev" if (checkout / "dev").is_file() and (checkout / "pyproject.toml").is_file() \
        else "calhl7"
