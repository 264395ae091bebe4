"""What `GET /metrics` exposes, in the Prometheus text format (`prometheus-client`).

Two kinds of figure:

- counted in the process that saw it: ingest outcomes by status and dialect, request latency
  by route template, method and status, group-commit batch sizes. With `serve --workers N`
  each worker writes its counts to files in `PROMETHEUS_MULTIPROC_DIR` (the supervisor
  creates the directory and removes it at stop) and a scrape of any worker sums every
  worker's files, those of restarted workers included, so the figures are the service's.
- read from the stores at scrape time: projection positions, lags and quarantined counts,
  the log's head, the findings of the last kept reconciliation run, the webhook outbox's
  pending and failed deliveries and failing endpoints. They are the same whichever worker answers.

Labels are bounded: route templates (never raw paths), the methods litestar serves, statuses,
four ingest statuses, four dialects, projection names and versions, finding causes. No
customer, key or event id is ever a label.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
INGEST_STATUSES = ("accepted", "duplicate", "conflict", "rejected")
DIALECTS = ("v1", "stripe", "lago", "openmeter")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
CONTENT_TYPE = "text/plain; version=0.0.4"  # litestar adds the charset

# No `_created` series beside each counter and histogram: they double the exposition.
disable_created_metrics()  # type: ignore[no-untyped-call]


def multiprocess() -> bool:
    """Whether this process shares its counts with sibling workers through files."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The counters and histograms of one application, and its scrape."""

    def __init__(self, services: Any = None) -> None:
        self.shared = multiprocess()
        # One registry per application in a single process (tests build many); in
        # multiprocess mode the values live in the files and a scrape reads them all.
        self._own = None if self.shared else CollectorRegistry(auto_describe=True)
        self.ingest = Counter(
            "billing_ingest_events",
            "Usage events by outcome and the dialect that sent them",
            ["status", "dialect"],
            registry=self._own,
        )
        self.latency = Histogram(
            "billing_http_request_duration_seconds",
            "Time to answer a request, by route template, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self._own,
        )
        self.batch_size = Histogram(
            "billing_group_commit_batch_size",
            "Single-event ingests that shared one durable commit",
            buckets=BATCH_BUCKETS,
            registry=self._own,
        )
        for status in INGEST_STATUSES:
            for dialect in DIALECTS:
                self.ingest.labels(status=status, dialect=dialect)
        self._store = StoreCollector(services) if services is not None else None

    def ingested(self, dialect: str, statuses: Iterable[str]) -> None:
        for status in statuses:
            self.ingest.labels(status=status, dialect=dialect).inc()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.latency.labels(route=route, method=method, status=str(status)).observe(seconds)

    def committed(self, size: int) -> None:
        self.batch_size.observe(size)

    def scrape(self) -> bytes:
        """The text exposition of every figure."""
        if self._own is not None:
            registry = self._own
            output = generate_latest(registry)
        else:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            output = generate_latest(registry)
        if self._store is not None:
            store = CollectorRegistry(auto_describe=False)
            store.register(self._store)
            output += generate_latest(store)
        return output


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)


class StoreCollector(Collector):
    """Figures read from the stores when scraped: identical in every worker."""

    def __init__(self, services: Any) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        yield from self._projections()
        yield from self._reconciliation()
        yield from webhook_metrics(self.services)

    def _projections(self) -> Iterator[Metric]:
        models = self.services.read_models
        head = _gauge("billing_event_log_position", "The newest notification id in the log", [])
        head.add_metric([], float(models.max_position()))
        yield head
        labels = ["projection", "version", "state"]
        position = _gauge(
            "billing_projection_position", "The last notification a projection applied", labels
        )
        lag = _gauge(
            "billing_projection_lag",
            "Notifications in the log a projection has not applied",
            labels,
        )
        held = _gauge(
            "billing_projection_quarantined",
            "Notifications a projection set aside (GET /v1/projections/{name}/quarantine)",
            labels,
        )
        for row in models.status():
            if row["state"] == "retired":
                continue
            values = [row["name"], str(row["version"]), row["state"]]
            position.add_metric(values, float(row["position"]))
            lag.add_metric(values, float(row["lag"]))
            held.add_metric(values, float(row["quarantined"]))
        yield from (position, lag, held)

    def _reconciliation(self) -> Iterator[Metric]:
        from api.console import runs

        kept = runs.listed(self.services)
        findings = _gauge(
            "billing_reconciliation_findings",
            "Findings by cause of the last kept reconciliation run",
            ["cause"],
        )
        last = _gauge(
            "billing_reconciliation_last_run_timestamp_seconds",
            "When the last kept reconciliation run was made",
            [],
        )
        ok = _gauge(
            "billing_reconciliation_last_run_ok", "1 when the last kept run found nothing", []
        )
        if kept:
            newest = kept[0]
            for cause, count in sorted((newest.get("summary") or {}).items()):
                findings.add_metric([str(cause)], float(count))
            last.add_metric([], _epoch(newest["at"]))
            ok.add_metric([], 1.0 if newest["ok"] else 0.0)
        yield from (findings, last, ok)


def _epoch(stamped: str) -> float:
    return datetime.fromisoformat(stamped.replace("Z", "+00:00")).timestamp()


DELIVERY_STATUSES = ("pending", "failed")  # delivered rows are never counted: they grow


def webhook_metrics(services: Any) -> Iterable[Metric]:
    """The webhook outbox's figures, when the services have one (`services.webhooks` with a
    `backlog()` of counts: deliveries pending for active endpoints and failed ones, failing
    endpoints, the oldest pending delivery's time)."""
    reads = getattr(services, "webhooks", None)
    backlog: Callable[[], dict[str, Any]] | None = getattr(reads, "backlog", None)
    if backlog is None:
        return []
    counts = backlog()
    deliveries = _gauge(
        "billing_webhook_deliveries",
        "Webhook deliveries waiting (pending, for active endpoints) or given up on (failed)",
        ["status"],
    )
    for status in DELIVERY_STATUSES:
        deliveries.add_metric([status], float(counts.get(status) or 0))
    failing = _gauge("billing_webhook_failing_endpoints", "Webhook endpoints marked failing", [])
    failing.add_metric([], float(counts.get("failing_endpoints") or 0))
    age = _gauge(
        "billing_webhook_oldest_pending_age_seconds",
        "How long the oldest pending webhook delivery has waited (0 when none)",
        [],
    )
    oldest = counts.get("oldest_pending_at")
    try:
        waited = max(time.time() - _epoch(str(oldest)), 0.0) if oldest else 0.0
    except ValueError:  # a time this code cannot read: say nothing rather than fail
        waited = 0.0
    age.add_metric([], waited)
    return [deliveries, failing, age]
