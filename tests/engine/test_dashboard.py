"""The Grafana dashboard queries only what the engine exports: every metric, label and outcome
in its PromQL is checked against a scrape of /metrics after a demo-like run."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from engine import metrics as m
from engine.sim.bookings import StoryTeller, compact
from engine.sim.ehr import SimPolicy, simulator_of
from tests.conftest import REPO
from tests.engine.test_metrics import quiet, samples, scrape
from tests.engine_harness import eventually, fast_channels, running_engine

GRAFANA = REPO / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "calhl7.json"
METRIC = re.compile(r"\bcalhl7_[a-zA-Z0-9_]+")
SELECTOR = re.compile(r"\b(calhl7_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
RATE = re.compile(r"\b(?:rate|irate|increase)\(\s*(calhl7_[a-zA-Z0-9_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# No demo exercises these (the inbound listener, the Cal.com API client and reconciliation
# run in their own tests and processes); they must still be exported by the engine.
NOT_IN_A_DEMO = {"calhl7_listener_messages_total", "calhl7_calcom_api_calls_total",
                 "calhl7_reconcile_runs_total"}
OUTCOMES = set(m.WEBHOOK_OUTCOMES) | set(m.MESSAGE_OUTCOMES) | {
    "routed", "unrouted", "no_change", "ignored", "quarantined",  # events
    "connected", "failed", "peer_closed"}  # reconnects


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard["panels"]) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var["type"] == "query":
            exprs.append(query)
    return exprs


def exported_types(text: str) -> dict[str, str]:
    """Sample names the exposition declares -> counter, gauge or histogram."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                types.update({name + s: kind for s in HISTOGRAM_SUFFIXES})
            else:
                types[name] = kind
    return types


def test_dashboard_and_provisioning_files_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dashboard["panels"]):
        if p["type"] == "row":
            continue
        assert p["title"] and p["targets"], p
        for t in p["targets"]:
            expr = t["expr"]
            assert METRIC.search(expr), expr
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert t["datasource"]["uid"] == "${datasource}"
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    assert [d["type"] for d in sources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/calhl7.yaml").read_text())
    assert providers["providers"][0]["options"]["path"]
    # what the brief asks the dashboard to show
    text = json.dumps(dashboard)
    for needed in ("histogram_quantile", "calhl7_end_to_end_latency_seconds_bucket",
                   "calhl7_ack_latency_seconds_bucket", "calhl7_queue_depth_messages",
                   "calhl7_queue_oldest_age_seconds", "calhl7_dead_letter_messages",
                   "calhl7_mllp_reconnects_total", "sum by (channel)"):
        assert needed in text, needed


async def test_every_queried_metric_exists_after_a_run(tmp_path: Path) -> None:
    exprs = expressions(json.loads(DASHBOARD.read_text()))
    queried = {name for e in exprs for name in METRIC.findall(e)}
    assert len(queried) >= 15

    # a demo-like run with the failures the dashboard is there for
    async with running_engine(tmp_path, channels_dir=fast_channels(tmp_path),
                              main_policy=SimPolicy(ae_every=3),
                              legacy_policy=SimPolicy(encoding="ascii", silent=True),
                              max_body_bytes=16 * 1024) as eng:
        teller = StoryTeller(seed=2026)
        for story in [teller.story() for _ in range(10)]:
            for hook in story.webhooks:
                assert (await eng.post(hook)).status_code == 200
        first = teller.story().webhooks[0]
        await eng.post(first)
        await eng.post(first)  # a redelivery
        await eng.post(first, secret="forged")
        await eng.post(compact({**first, "pad": "x" * 20_000}))
        await eng.post({"triggerEvent": "BOOKING_CREATED", "payload": {}})  # quarantined
        legacy = simulator_of(eng.sims["legacy_server"])
        await eventually(lambda: legacy.received >= 2)  # it says nothing: a timeout, a resend
        simulator_of(eng.sims["legacy_server"]).policy = SimPolicy(encoding="ascii")
        await quiet(eng)
        text = await scrape(eng.client)

    types = exported_types(text)
    present = samples(text)
    names_with_samples = {name for name, _ in present}
    labels_of: dict[str, set[str]] = {}
    for name, labels in present:
        labels_of.setdefault(name, set()).update(k for k, _ in labels)

    for name in sorted(queried):
        assert name in types, f"the dashboard queries {name}, which the engine does not export"
        if name not in NOT_IN_A_DEMO:
            assert name in names_with_samples, f"{name} has no samples after a run"

    for expr in exprs:
        # counters and histograms are read through rate(); gauges never are
        rated = set(RATE.findall(expr))
        for name in rated:
            assert types[name] in ("counter", "histogram"), f"rate() of a gauge: {expr}"
        if not expr.startswith("label_values("):  # a variable's values, not a graph
            for name in set(METRIC.findall(expr)) - rated:
                assert types[name] == "gauge", f"{name} is a {types[name]}: rate() it: {expr}"
        if "histogram_quantile" in expr:
            assert all(n.endswith("_bucket") for n in METRIC.findall(expr)), expr
            assert re.search(r"by \([^)]*\ble\b", expr), f"quantiles need `by (le)`: {expr}"
        # label names exist on the metric; outcome values are ones the engine uses
        names = set(METRIC.findall(expr))
        known = set().union(*(labels_of.get(n, set()) for n in names)) | {"le"}
        for name, body in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(body):
                if name in labels_of:
                    assert label in labels_of[name], f"{name} has no label {label}: {expr}"
                if label == "outcome":
                    wanted = value.split("|") if op == "=~" else [value]
                    assert set(wanted) <= OUTCOMES, f"unknown outcome in {expr}"
        if names - NOT_IN_A_DEMO == names:
            for group in GROUPING.findall(expr):
                for label in filter(None, (g.strip() for g in group.split(","))):
                    assert label in known, f"grouping by {label}, not a label of {names}"
