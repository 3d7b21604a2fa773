"""A 5-second smoke run of each load scenario through load/run.py: real engine, two simulated
EHRs, Locust headless; exactly once and in order per (appointment change, destination).

About 12 s per scenario on a 2-core machine (start-up, 5 s of load, drain, check).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import REPO


SCENARIOS = {
    "clinic-day": ["--users", "8", "--rate", "40"],
    "monday-burst": ["--users", "8", "--rate", "40"],
    # 60 cancellations inside 1.5 s, with the front desk sending SIU over MLLP at the same time
    "mass-cancellation": ["--users", "4", "--rate", "20", "--cancel-count", "60",
                          "--cancel-window", "1.5s", "--mllp-users", "2", "--mllp-rate", "20"],
    # ehr-main answers after 200 ms on 8 connections: the burst queues up and must drain
    "slow-ehr": ["--users", "4", "--rate", "20", "--cancel-count", "60",
                 "--cancel-window", "1.5s", "--drain-timeout", "30s"],
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_delivers_exactly_once_in_order(scenario: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [sys.executable, str(REPO / "load" / "run.py"), "--scenario", scenario,
           "--duration", "5s", "--results", str(out), "--quiet",
           *SCENARIOS[scenario]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=55)
    result = json.loads((out / "result.json").read_text())
    c = result["correctness"]
    assert c is not None, proc.stdout[-3000:]
    assert (c["lost"], c["duplicated"], c["out_of_order"]) == (0, 0, 0), proc.stdout[-3000:]
    assert c["dead"] == 0 and c["quarantined"] == 0 and c["model_missing"] == 0
    assert c["webhooks_2xx"] > 20 and c["changes"] > 20  # the load really ran
    assert c["acked"] == c["changes"]                     # and the queue drained
    assert result["drained_at"] is not None
    if scenario in ("mass-cancellation", "slow-ehr"):
        cancels = [r for r in map(json.loads, (out / "ledger.jsonl").read_text().splitlines())
                   if r["story"].startswith("c") and r["kind"] == "cancel"]
        assert len(cancels) == 60
    if scenario == "mass-cancellation":
        assert any(r["type"] == "MLLP" and r["requests"] > 0 for r in _rows(out))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (out / "summary.md").exists() and (out / "queue.png").exists()
    assert (out / "locust.html").exists() and (out / "locust_stats.csv").exists()


def _rows(out: Path) -> list[dict[str, object]]:
    import csv

    with (out / "locust_stats.csv").open() as f:
        return [{"type": r["Type"], "requests": int(r["Request Count"])}
                for r in csv.DictReader(f) if r["Name"] != "Aggregated"]
