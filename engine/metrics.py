"""Metric definitions. Labels are bounded sets only: channel, destination, source, trigger,
message type, outcome (and the Cal.com API endpoint family). Never a booking id, a control id,
a patient or a provider: 10,000 bookings make no more series than 100
(tests/engine/test_metrics.py).

One `Metrics` object per engine, on its own registry, handed to whoever counts: tests can
run several engines in one process and read each one's figures.

Counters count what this process did since it started (they start at zero on a restart, as
Prometheus expects). Gauges that describe what waits on disk (queue depth, oldest age, dead
letters, held lanes, quarantined events) are read from the store, so they are right from the
first scrape after a restart and agree across nodes sharing one store.

Names follow the Prometheus conventions: `calhl7_` prefix, base units in the name (`_seconds`,
`_messages`), `_total` on counters.

Outcome label values:
- webhooks:  accepted, duplicate, ignored, quarantined, rejected_signature, too_large,
             timeout (body not received in time), unknown_source, store_error (a webhook
             refused or not stored has no trusted trigger: trigger="other")
- events:    routed, unrouted, no_change, ignored, quarantined
- messages:  acked, application_error (AE/CE), rejected (AR/CR), timeout, connection_error,
             bad_reply (MSA-2 mismatch, unparsable), dead_lettered, resent (the same bytes and
             MSH-10 again), reprocessed (sent under a new MSH-10 after an operator's fix)
- reconnects: connected, failed, peer_closed
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_E2E_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# Cal.com triggers we name in labels; anything else is counted as "other".
KNOWN_TRIGGERS = frozenset(
    {
        "BOOKING_CREATED", "BOOKING_REQUESTED", "BOOKING_RESCHEDULED", "BOOKING_CANCELLED",
        "BOOKING_REJECTED", "BOOKING_NO_SHOW_UPDATED", "MEETING_STARTED", "MEETING_ENDED",
        "PING",
    }
)

WEBHOOK_OUTCOMES = ("accepted", "duplicate", "ignored", "quarantined", "rejected_signature",
                    "too_large", "timeout", "unknown_source", "store_error")
MESSAGE_OUTCOMES = ("acked", "application_error", "rejected", "timeout", "connection_error",
                    "bad_reply", "dead_lettered", "resent", "reprocessed")


def trigger_label(trigger: str | None) -> str:
    return trigger if trigger in KNOWN_TRIGGERS else "other"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.webhooks = Counter(
            "calhl7_webhooks_received_total", "Cal.com webhooks by outcome",
            ["source", "trigger", "outcome"], registry=r,
        )
        self.webhook_seconds = Histogram(
            "calhl7_webhook_request_duration_seconds", "Webhook request time, to the 2xx",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.events = Counter(
            "calhl7_events_total", "Appointment events by outcome (routed, unrouted, ...)",
            ["outcome"], registry=r,
        )
        self.messages_queued = Counter(
            "calhl7_messages_queued_total", "SIU messages rendered and queued",
            ["channel", "destination", "message_type"], registry=r,
        )
        self.messages = Counter(
            "calhl7_messages_total", "Delivery attempts and results by outcome",
            ["channel", "destination", "message_type", "outcome"], registry=r,
        )
        self.ack_seconds = Histogram(
            "calhl7_ack_latency_seconds", "Send to ACK received", ["destination"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "calhl7_end_to_end_latency_seconds", "Webhook accepted to ACK AA committed",
            ["destination"], buckets=_E2E_BUCKETS, registry=r,
        )
        self.connections = Gauge(
            "calhl7_mllp_connections", "Open MLLP connections", ["destination"], registry=r,
        )
        self.stale_acks = Counter(
            "calhl7_stale_acks_total", "Extra ACKs for messages already answered (a duplicate"
            " ACK, the AA after a CA), set aside", ["destination"], registry=r,
        )
        self.reconnects = Counter(
            "calhl7_mllp_reconnects_total", "MLLP (re)connection attempts by outcome",
            ["destination", "outcome"], registry=r,
        )
        self.queue_depth = Gauge(
            "calhl7_queue_depth_messages", "Messages waiting (from the store)", ["destination"],
            registry=r,
        )
        self.oldest_age = Gauge(
            "calhl7_queue_oldest_age_seconds",
            "Age of the oldest waiting message, from webhook accepted (from the store)",
            ["destination"], registry=r,
        )
        self.dead_letters = Gauge(
            "calhl7_dead_letter_messages", "Dead-lettered messages waiting for an analyst "
            "(from the store)", ["destination"], registry=r,
        )
        self.held_lanes = Gauge(
            "calhl7_held_lanes", "Lanes held by a dead letter (from the store)", ["destination"],
            registry=r,
        )
        self.quarantined = Gauge(
            "calhl7_quarantined_events", "Signed webhooks waiting for a fix (from the store)",
            registry=r,
        )
        self.listener = Counter(
            "calhl7_listener_messages_total", "Inbound MLLP messages by outcome",
            ["outcome"], registry=r,
        )
        self.http_connections_closed = Counter(
            "calhl7_http_connections_closed_total", "HTTP connections the engine closed: "
            "over_cap (answered 503), header_timeout (headers never finished)", ["reason"],
            registry=r,
        )
        self.listener_connections = Counter(
            "calhl7_listener_connections_closed_total", "Inbound MLLP connections the listener "
            "closed: refused (over the connection cap), write_timeout (ACKs left unread)",
            ["outcome"], registry=r,
        )
        self.listener_reused_ids = Counter(
            "calhl7_listener_reused_control_ids_total", "Inbound SIU stored as new although "
            "their sender had used the MSH-10 before for other content", ["channel"], registry=r,
        )
        self.calcom_calls = Counter(
            "calhl7_calcom_api_calls_total", "Cal.com API v2 calls by outcome",
            ["endpoint", "outcome"], registry=r,
        )
        self.reconcile_runs = Counter(
            "calhl7_reconcile_runs_total", "Reconciliation runs", ["outcome"], registry=r,
        )
        self.reconcile_found = Counter(
            "calhl7_reconcile_changes_total", "Changes found by reconciliation", registry=r,
        )
        self.config_reloads = Counter(
            "calhl7_config_reloads_total", "Channel configuration reloads", ["outcome"],
            registry=r,
        )

    # ------------------------------------------------------------------ zero series
    # A series that appears only at its first increment hides that increment from rate()
    # and increase(); the label values known at start are exported at zero right away.
    def init_source(self, source: str) -> None:
        for outcome in ("rejected_signature", "too_large", "timeout"):
            self.webhooks.labels(source, "other", outcome)

    def init_destination(self, destination: str) -> None:
        self.connections.labels(destination)
        for outcome in ("connected", "failed", "peer_closed"):
            self.reconnects.labels(destination, outcome)
        for gauge in (self.queue_depth, self.oldest_age, self.dead_letters, self.held_lanes):
            gauge.labels(destination)

    def set_queue_gauges(self, summary: Iterable[dict[str, object]],
                         destinations: Iterable[str], quarantined: int) -> None:
        """Gauges from the store: `summary` is Store.queue_summary(); a configured destination
        absent from it has nothing waiting."""
        seen = set()
        # arg-type ignores below: the store's summary rows are untyped; these four are numbers
        for row in summary:
            d = str(row["destination"])
            seen.add(d)
            self.queue_depth.labels(d).set(row["queued"])  # type: ignore[arg-type]
            self.oldest_age.labels(d).set(row["oldest_age_seconds"])  # type: ignore[arg-type]
            self.dead_letters.labels(d).set(row["dead"])  # type: ignore[arg-type]
            self.held_lanes.labels(d).set(row["held_lanes"])  # type: ignore[arg-type]
        for d in set(destinations) - seen:
            for gauge in (self.queue_depth, self.oldest_age, self.dead_letters, self.held_lanes):
                gauge.labels(d).set(0)
        self.quarantined.set(quarantined)
