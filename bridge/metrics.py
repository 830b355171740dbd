"""Every Prometheus metric the daemon exports, defined once. Names are a contract: dashboards and
alerts depend on them. Prefix `taskbridge_`, base units, bounded labels (connector, route, op,
result, source, method, status_class; never a task id).

Gauges that describe the store (outbox depth, conflicts, linked tasks, watermark age) are set by
`refresh_store_gauges`, run periodically, so they read the same on every replica.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from bridge.defaults import DEFAULT_LOOP_LAG_EVERY

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)

remote_requests = Counter(
    "taskbridge_remote_requests_total",
    "HTTP requests made to platforms.",
    ["connector", "method", "status_class"],
    registry=REGISTRY,
)
remote_request_duration = Histogram(
    "taskbridge_remote_request_duration_seconds",
    "Duration of HTTP requests to platforms.",
    ["connector"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
polls = Counter(
    "taskbridge_polls_total", "Polls of a connector's scopes.", ["connector", "result"], registry=REGISTRY
)
poll_duration = Histogram(
    "taskbridge_poll_duration_seconds",
    "Duration of one poll of a connector (all its scopes).",
    ["connector"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
changes_detected = Counter(
    "taskbridge_changes_detected_total",
    "Observed remote or API changes that changed a canonical task.",
    ["connector", "source"],
    registry=REGISTRY,
)
writes = Counter(
    "taskbridge_writes_total",
    "Outbox operations applied to platforms, by result (ok, retry, rate_limited, parked).",
    ["connector", "op", "result"],
    registry=REGISTRY,
)
propagation = Histogram(
    "taskbridge_propagation_seconds",
    "Time from observing a change to the last mirror written.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
webhooks_received = Counter(
    "taskbridge_webhooks_received_total",
    "Webhook deliveries received, by result (ok, unchanged, bad_signature, duplicate, malformed, too_large, unknown_connector).",
    ["connector", "result"],
    registry=REGISTRY,
)
webhooks_processed = Counter(
    "taskbridge_webhooks_processed_total",
    "Webhook deliveries processed, by the state each attempt left them in (done, pending: to be "
    "retried, failed: set aside).",
    ["connector", "result"],
    registry=REGISTRY,
)
deletion_guard = Counter(
    "taskbridge_deletion_guard_tripped_total",
    "Polls that would have deleted more than the route's max_delete_share and stopped.",
    ["route"],
    registry=REGISTRY,
)
conflicts_detected = Counter(
    "taskbridge_conflicts_total", "Conflicts found, by policy.", ["route", "policy"], registry=REGISTRY
)
outbox_depth = Gauge(
    "taskbridge_outbox_depth",
    "Outbox operations waiting (pending or claimed).",
    ["connector"],
    registry=REGISTRY,
)
outbox_oldest_age = Gauge(
    "taskbridge_outbox_oldest_age_seconds",
    "Age of the oldest waiting outbox operation.",
    ["connector"],
    registry=REGISTRY,
)
outbox_parked = Gauge(
    "taskbridge_outbox_parked",
    "Outbox operations parked after a permanent error.",
    ["connector"],
    registry=REGISTRY,
)
conflicts_open = Gauge(
    "taskbridge_conflicts_open", "Conflicts waiting for a person.", ["route"], registry=REGISTRY
)
linked_tasks = Gauge(
    "taskbridge_linked_tasks", "Tasks linked on each connector.", ["connector"], registry=REGISTRY
)
watermark_age = Gauge(
    "taskbridge_watermark_age_seconds",
    "Time since a connector's polling last completed (its oldest scope).",
    ["connector"],
    registry=REGISTRY,
)
connector_up = Gauge(
    "taskbridge_connector_up",
    "1 when the connector's last poll succeeded, else 0.",
    ["connector"],
    registry=REGISTRY,
)
store_lost = Gauge(
    "taskbridge_store_lost",
    "1 once the store this process opened was deleted or replaced under it (writes stopped).",
    registry=REGISTRY,
)
event_loop_lag = Histogram(
    "taskbridge_event_loop_lag_seconds",
    f"How late the event loop woke a timer (one every {DEFAULT_LOOP_LAG_EVERY:g} s): how long every "
    "webhook answer and every platform's reply waits for the daemon's one thread. Near 0 at rest; "
    "tens of ms steadily means the process is near the end of its core.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=REGISTRY,
)
leases_held = Gauge("taskbridge_leases_held", "Poll leases this replica holds.", registry=REGISTRY)
build_info = Info("taskbridge_build", "The running version.", registry=REGISTRY)


def observe_request(connector: str, method: str, status_class: str, seconds: float) -> None:
    """The connectors' RequestObserver."""
    remote_requests.labels(connector, method, status_class).inc()
    remote_request_duration.labels(connector).observe(seconds)


# Retention (bridge/engine/retention.py): what store.retention deleted.
PRUNED_TABLES = ("inbox", "outbox", "history", "conflicts")
pruned_rows = Counter(
    "taskbridge_pruned_rows_total",
    "Rows deleted by retention (store.retention), by table.",
    ["table"],
    registry=REGISTRY,
)
for _table in PRUNED_TABLES:
    pruned_rows.labels(_table)  # at 0 from the start, so rate() and increase() see the first run
prune_duration = Histogram(
    "taskbridge_prune_duration_seconds",
    "Duration of one retention run (every table, batch after batch).",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900),
    registry=REGISTRY,
)
