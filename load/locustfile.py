"""Locust scenarios for calhl7: signed Cal.com webhooks in, SIU over MLLP out (and in).

Usually started by `load/run.py`, which starts the engine and two simulated EHRs, runs this
headless, checks exactly-once delivery and writes the reports. By hand, against a running
`calhl7 serve` whose secret is in CALHL7_WEBHOOK_SECRET:

    .venv/bin/locust -f load/locustfile.py --headless --host http://127.0.0.1:8080 \
        --scenario clinic-day --peak-users 50 --rate 250 --duration 60s \
        --ledger ledger.jsonl --stop-timeout 15

Users:
  WebhookUser        one story at a time from StoryTeller (new, requested then confirmed or
                     rejected, reschedule chains, cancellations, no-shows; both providers, in
                     person and video; hard names), its webhooks in order, plus redeliveries,
                     pings and unrouted bookings; constant throughput of rate / peak-users
  CancellingClinic   (mass-cancellation, slow-ehr) books a session's appointments, then
                     cancels them all inside the burst window
  FrontDeskMllp      (with --mllp-target HOST:PORT) SIU from the EHR to an MLLP listener
Every webhook and its answer goes to the ledger (--ledger) for the correctness check.
"""

from __future__ import annotations

import math
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locust import FastHttpUser, constant, constant_throughput, events, task  # noqa: E402

from engine.sim.bookings import compact, sign  # noqa: E402
from load import shapes  # noqa: E402
from load.correctness import sha_of  # noqa: E402
from load.mllp_user import MllpUser  # noqa: E402
from load.scenarios import Hook, Ledger, LoadStory, StoryMix  # noqa: E402

WEBHOOK_PATH = "/webhooks/calcom"
LEDGER = Ledger(None)


def _seconds(text: str) -> float:
    text = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("calhl7")
    g.add_argument("--scenario", choices=sorted(shapes.CURVES), default="clinic-day")
    g.add_argument("--duration", default="60s", help="length of the shape, e.g. 60s, 10m")
    g.add_argument("--peak-users", type=int, default=50, help="webhook users at the peak")
    g.add_argument("--rate", type=float, default=250.0, help="webhooks/s at the peak")
    g.add_argument("--secret", default=os.environ.get("CALHL7_WEBHOOK_SECRET", "load-secret"))
    g.add_argument("--ledger", default="", help="JSON-lines file of every webhook sent")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--cancel-count", type=int, default=500)
    g.add_argument("--cancel-window", default="60s")
    g.add_argument("--mllp-target", default="", help="HOST:PORT of an MLLP listener")
    g.add_argument("--mllp-users", type=int, default=4)
    g.add_argument("--mllp-rate", type=float, default=20.0, help="front-desk bookings/s in all")


_user_no = 0


def _next_user() -> int:
    global _user_no
    _user_no += 1
    return _user_no


class _Poster:
    """Posting a story's webhooks in order, one per call, with the ledger kept."""

    def _post(self: Any, story: LoadStory, index: int, hook: Hook) -> int | None:
        body = compact(hook.body)
        headers = {"Content-Type": "application/json",
                   "X-Cal-Signature-256": sign(body, self.environment.parsed_options.secret)}
        status: int | None = None
        try:
            with self.client.post(WEBHOOK_PATH, data=body, headers=headers,
                                  name=f"webhook {hook.trigger}", catch_response=True) as r:
                status = r.status_code or None
                if status is not None and 200 <= status < 300:
                    r.success()
                else:
                    r.failure(f"HTTP {status}")
        finally:
            LEDGER.record(story, index, hook, status, sha=sha_of(body))
        return status


class WebhookUser(_Poster, FastHttpUser):
    """One appointment story at a time, its webhooks in order."""

    wait_time = constant_throughput(5.0)  # set from --rate / --peak-users at init
    connection_timeout = 10.0
    network_timeout = 30.0

    def on_start(self) -> None:
        n = _next_user()
        seed = self.environment.parsed_options.seed * 100_003 + n
        self.mix = StoryMix(seed=seed, prefix=f"w{n}")
        self.story: LoadStory | None = None
        self.index = 0

    @task
    def next_webhook(self) -> None:
        if self.story is None or self.index >= len(self.story.hooks):
            self.story, self.index = self.mix.next(), 0
        story, i = self.story, self.index
        status = self._post(story, i, story.hooks[i])
        if status is None or not 200 <= status < 300:
            self.story = None  # Cal.com does not retry: the rest of this story never comes
        else:
            self.index += 1


class CancellingClinic(_Poster, FastHttpUser):
    """A provider falls ill: the session's bookings, then all of them cancelled in a burst."""

    fixed_count = 0  # set at init for the burst scenarios
    wait_time = constant(0)
    connection_timeout = 10.0
    network_timeout = 30.0
    share = 25

    def on_start(self) -> None:
        n = _next_user()
        opts = self.environment.parsed_options
        self.mix = StoryMix(seed=opts.seed * 200_003 + n, prefix=f"c{n}")
        self.stories = self.mix.mass_cancellation(self.share)
        self.done = False

    def _pace_until(self, start: float, end: float, hooks: list[tuple[LoadStory, int]]) -> None:
        if not hooks:
            return
        step = max(0.0, end - start) / len(hooks)
        for k, (story, i) in enumerate(hooks):
            due = start + k * step
            delay = due - time.time()
            if delay > 0:
                self._sleep(delay)
            status = self._post(story, i, story.hooks[i])
            if status is None or not 200 <= status < 300:
                story.hooks = story.hooks[:i]  # abandoned: no cancellation follows

    def _sleep(self, seconds: float) -> None:
        import gevent

        gevent.sleep(seconds)

    @task
    def session(self) -> None:
        if self.done:
            self._sleep(1.0)
            return
        tl = shapes.TIMELINE
        self._pace_until(time.time(), tl["fill_until"], [(s, 0) for s in self.stories])
        wait = tl["burst_start"] - time.time()
        if wait > 0:
            self._sleep(wait)
        # each user cancels its share evenly over the window, offset so the users interleave
        offset = (zlib.crc32(self.mix.prefix.encode()) % 1000) / 1000 * (
            tl["burst_window"] / max(1, len(self.stories)))
        start = tl["burst_start"] + offset
        live = [(s, 1) for s in self.stories if len(s.hooks) > 1]
        self._pace_until(start, start + tl["burst_window"], live)
        self.done = True


class FrontDeskMllp(MllpUser):
    abstract = True  # concrete only with --mllp-target (see _init)
    fixed_count = 0
    wait_time = constant_throughput(5.0)


class CalHl7Shape(shapes.ScenarioShape):
    """The shape named by --scenario (see load/shapes.py)."""

    @property  # type: ignore[override]
    def scenario(self) -> str:
        return self.options().scenario


@events.init.add_listener
def _init(environment: Any, **_kw: Any) -> None:
    opts = environment.parsed_options
    if opts is None:
        return
    opts.duration_seconds = _seconds(opts.duration)
    per_user = opts.rate / max(1, opts.peak_users)
    WebhookUser.wait_time = constant_throughput(per_user)
    if opts.ledger:
        LEDGER.path = Path(opts.ledger)
    window = _seconds(opts.cancel_window)
    if opts.scenario in shapes.WITH_BURST and opts.cancel_count > 0:
        users = min(20, max(1, math.ceil(opts.cancel_count / 25)))
        CancellingClinic.fixed_count = users
        CancellingClinic.share = math.ceil(opts.cancel_count / users)
    else:
        CancellingClinic.fixed_count = 0
    shapes.TIMELINE.update(shapes.burst_timeline(opts.scenario, opts.duration_seconds, window))
    if opts.mllp_target:
        host, _, port = opts.mllp_target.rpartition(":")
        FrontDeskMllp.target = (host or "127.0.0.1", int(port))
        FrontDeskMllp.fixed_count = max(1, opts.mllp_users)
        FrontDeskMllp.wait_time = constant_throughput(opts.mllp_rate / max(1, opts.mllp_users))
        FrontDeskMllp.abstract = False
    classes: list[Any] = [WebhookUser]
    if CancellingClinic.fixed_count:
        classes.append(CancellingClinic)
    if opts.mllp_target:
        classes.append(FrontDeskMllp)
    environment.user_classes = classes


@events.test_start.add_listener
def _start(environment: Any, **_kw: Any) -> None:
    opts = environment.parsed_options
    shapes.TIMELINE.update(shapes.burst_timeline(opts.scenario, opts.duration_seconds,
                                                 _seconds(opts.cancel_window)))


@events.test_stop.add_listener
def _stop(environment: Any, **_kw: Any) -> None:
    LEDGER.flush()


@events.quit.add_listener
def _quit(**_kw: Any) -> None:
    LEDGER.flush()
