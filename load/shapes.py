"""Load shapes for the calhl7 scenarios (Locust LoadTestShape).

Each shape scales the number of webhook users over the run: with a constant throughput per
user (`--rate` / `--peak-users` webhooks/s each) the webhook rate follows the curve. Times are
fractions of `--duration`, so the same shape works for a 5-second smoke run and a 10-minute
one. Users that are not part of the curve (the clinic cancelling a session, the EHR front
desk over MLLP) have a `fixed_count` and are added on top.

  steady              `--rate` webhooks/s for the whole run (sustained throughput)
  clinic-day          a working day compressed: morning peak, lunch dip, a smaller afternoon
  monday-burst        quiet, then Monday 08:00: everyone at once, then a long tail
  mass-cancellation   steady background; a provider falls ill: `--cancel-count` cancellations
                      (default 500) within `--cancel-window` (default 60 s)
  slow-ehr            clinic-day traffic and the cancellation burst against a slow EHR (the
                      runner starts sim-ehr with --delay-ms 200 and gives ehr-main 8
                      connections): the queue absorbs the peak and drains afterwards
"""

from __future__ import annotations

import time
from typing import Any

from locust import LoadTestShape

# shared with the users in this process: when the cancellation burst starts
TIMELINE: dict[str, float] = {"t0": 0.0, "fill_until": 0.0, "burst_start": 0.0,
                              "burst_window": 60.0}


def interpolate(points: list[tuple[float, float]], x: float) -> float:
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return points[-1][1]


CURVES: dict[str, list[tuple[float, float]]] = {
    # 07:00 .. 19:00 compressed; peak 09:00-11:00
    "clinic-day": [(0.0, 0.15), (0.1, 0.6), (0.18, 1.0), (0.35, 1.0), (0.45, 0.5),
                   (0.55, 0.45), (0.65, 0.7), (0.8, 0.6), (0.95, 0.25), (1.0, 0.15)],
    # quiet weekend tail, 08:00 Monday everyone books at once, then the week's normal
    "monday-burst": [(0.0, 0.1), (0.15, 0.1), (0.151, 1.0), (0.4, 1.0), (0.6, 0.3),
                     (1.0, 0.3)],
    "mass-cancellation": [(0.0, 0.3), (1.0, 0.3)],
    # flat out at --rate for the whole run (the sustained-throughput floor)
    "steady": [(0.0, 1.0), (1.0, 1.0)],
    "slow-ehr": [(0.0, 0.15), (0.1, 0.6), (0.18, 1.0), (0.35, 1.0), (0.45, 0.5),
                 (0.55, 0.45), (0.65, 0.7), (0.8, 0.6), (0.95, 0.25), (1.0, 0.15)],
}
WITH_BURST = {"mass-cancellation", "slow-ehr"}


def burst_timeline(scenario: str, duration: float, window: float) -> dict[str, float]:
    """When the cancelling users post their bookings (fill) and cancel them (burst)."""
    now = time.time()
    if scenario not in WITH_BURST:
        return {"t0": now, "fill_until": now, "burst_start": now, "burst_window": 0.0}
    fill = min(0.3 * duration, 60.0)
    start = min(0.4 * duration, fill + 30.0)
    window = min(window, max(1.0, duration - start - 1.0))
    return {"t0": now, "fill_until": now + fill, "burst_start": now + start,
            "burst_window": window}


class ScenarioShape(LoadTestShape):
    """The base: `curve` over `--duration`, scaled to `--peak-users` webhook users."""

    abstract = True
    scenario = "clinic-day"

    def options(self) -> Any:
        assert self.runner is not None
        return self.runner.environment.parsed_options

    def webhook_users(self, fraction: float) -> int:
        return max(1, round(self.options().peak_users * fraction))

    def tick(self) -> tuple[int, float, list[Any] | None] | None:
        opts = self.options()
        t = self.get_run_time()
        if t >= opts.duration_seconds:
            return None
        frac = interpolate(CURVES[self.scenario], t / opts.duration_seconds)
        users = self.webhook_users(frac)
        fixed = sum(getattr(c, "fixed_count", 0) for c in self.runner.user_classes)  # type: ignore[union-attr]
        return users + fixed, max(10.0, float(opts.peak_users) * 4), None


class ClinicDayShape(ScenarioShape):
    scenario = "clinic-day"


class MondayBurstShape(ScenarioShape):
    scenario = "monday-burst"


class MassCancellationShape(ScenarioShape):
    scenario = "mass-cancellation"


class SlowEhrShape(ScenarioShape):
    scenario = "slow-ehr"


SHAPES = {c.scenario: c for c in (ClinicDayShape, MondayBurstShape, MassCancellationShape,
                                  SlowEhrShape)}
