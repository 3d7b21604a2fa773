"""Metric definitions. Labels are bounded sets only: channel, destination, source, trigger,
message type, outcome. Never a booking id, patient or provider.

One `Metrics` object per engine, on its own registry, handed to whoever counts: tests can
run several engines in one process and read each one's figures.
"""

from __future__ import annotations

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
            "calhl7_messages_total", "Delivery attempts by outcome",
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
        self.reconnects = Counter(
            "calhl7_mllp_reconnects_total", "MLLP (re)connection attempts by outcome",
            ["destination", "outcome"], registry=r,
        )
        self.queue_depth = Gauge(
            "calhl7_queue_depth_messages", "Messages waiting", ["destination"], registry=r,
        )
        self.oldest_age = Gauge(
            "calhl7_queue_oldest_age_seconds", "Age of the oldest waiting message",
            ["destination"], registry=r,
        )
        self.dead_letters = Gauge(
            "calhl7_dead_letters", "Dead-lettered messages", ["destination"], registry=r,
        )
        self.held_lanes = Gauge(
            "calhl7_held_lanes", "Lanes held by a dead letter", ["destination"], registry=r,
        )
        self.quarantined = Gauge(
            "calhl7_quarantined_events", "Signed webhooks waiting for a fix", registry=r,
        )
        self.listener = Counter(
            "calhl7_listener_messages_total", "Inbound MLLP messages by outcome",
            ["outcome"], registry=r,
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
