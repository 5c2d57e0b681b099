"""Prometheus metrics beyond Litestar's per-route request counts and latencies.

The collectors live in prometheus_client's default registry, which Litestar's PrometheusController
serves at /metrics. Each worker process has its own registry; to aggregate several uvicorn
workers, run with PROMETHEUS_MULTIPROC_DIR set (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from litestar.enums import ScopeType
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController, PrometheusMiddleware
from litestar.status_codes import HTTP_200_OK, HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import Message, Receive, Scope, Send
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

METRICS_PATH = "/metrics"
# Request latency buckets in seconds: POS answers are expected in milliseconds.
LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

BATCH_SIZE = Histogram(
    "giftledger_batch_commands", "Commands committed per group-commit batch",
    buckets=BATCH_SIZE_BUCKETS,
)  # fmt: skip
BATCH_LINGER = Histogram(
    "giftledger_batch_linger_seconds", "Time a batch waited for more commands after its first",
    buckets=LATENCY_BUCKETS_SECONDS,
)  # fmt: skip
BATCH_COMMIT = Histogram(
    "giftledger_batch_commit_seconds", "Time to apply and commit one batch",
    buckets=LATENCY_BUCKETS_SECONDS,
)  # fmt: skip
CONFLICT_RETRIES = Counter(
    "giftledger_conflict_retries", "Commands re-run with fresh reads after a version conflict"
)
SNAPSHOT_FAILURES = Counter(
    "giftledger_snapshot_failures",
    "Snapshots the store refused after their events had committed (the writes still succeed)",
)
# What the ledger writer records. With the writer in a process of its own, the workers export
# its figures (fetched by api/writer_process.py) in place of their own, which stay at zero.
WRITER_METRICS = (BATCH_SIZE, BATCH_LINGER, BATCH_COMMIT, CONFLICT_RETRIES, SNAPSHOT_FAILURES)
WRITE_CONTENTION = Counter(
    "giftledger_write_contention", "Writes refused with 503 because retries or the queue ran out"
)
HOLDS_TO_EXPIRE = Gauge(
    "giftledger_scheduler_holds_to_expire", "Cards with an expired hold not yet released"
)
CARDS_TO_EXPIRE = Gauge(
    "giftledger_scheduler_cards_to_expire", "Cards past their expiry date not yet expired"
)
LEDGER_HEAD_POSITION = Gauge(
    "giftledger_ledger_head_position", "Position of the newest event in the ledger log"
)
PROJECTION_LAG_EVENTS = Gauge(
    "giftledger_projection_lag_events",
    "Newest events not yet in the card projection (0 unless the projection was damaged: it is"
    " written in each event's own transaction)",
)
PROJECTION_LAG_SECONDS = Gauge(
    "giftledger_projection_lag_seconds", "Age of the oldest of those events"
)


# Labelled series the request metrics keep handles to: (method, route, status) combinations,
# which are few since paths are route templates. Beyond this they are looked up per request.
ROUTE_SERIES_CACHED_MAX = 10_000


class RouteMetricsMiddleware(PrometheusMiddleware):
    """Litestar's Prometheus middleware, with its four metrics and their labels unchanged, minus
    two costs every payment paid: it parsed the request's URL only to drop it for the route
    template (group_path), and it looked each labelled series up, under a lock, on every request.
    Here the labels come from the scope, and each series is looked up once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self._config
        assert config.group_path, "labels are route templates, never raw paths"
        unsupported = [name for name in ("labels", "exemplars", "excluded_http_methods")
                       if getattr(config, name)]  # fmt: skip
        assert not unsupported, f"this middleware does not implement {unsupported}"
        self._in_progress: dict[tuple[str, str], Any] = {}
        self._finished: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}

    def _labels(self, method: str, path: str, status: int) -> dict[str, str | int | float]:
        return {"method": method, "path": path, "status_code": status,
                "app_name": self._config.app_name}  # fmt: skip

    def _in_progress_series(self, method: str, path: str) -> Any:
        series = self._in_progress.get((method, path))
        if series is None:
            # Litestar labels the in-progress gauge with status 200, before any answer.
            labels = self._labels(method, path, HTTP_200_OK)
            series = self.requests_in_progress(labels).labels(*labels.values())
            if len(self._in_progress) < ROUTE_SERIES_CACHED_MAX:
                self._in_progress[(method, path)] = series
        return series

    def _finished_series(self, method: str, path: str, status: int) -> tuple[Any, Any, Any]:
        series = self._finished.get((method, path, status))
        if series is None:
            labels = self._labels(method, path, status)
            values = [*labels.values()]
            series = (
                self.request_count(labels).labels(*values),
                self.request_time(labels).labels(*values),
                self.requests_error_count(labels).labels(*values),
            )
            if len(self._finished) < ROUTE_SERIES_CACHED_MAX:
                self._finished[(method, path, status)] = series
        return series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"] if scope["type"] == ScopeType.HTTP else scope["type"]
        path = scope["path_template"]
        started = time.perf_counter()
        status = HTTP_200_OK
        duration = 0.0

        async def send_noting(message: Message) -> None:
            nonlocal status, duration
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                duration = time.perf_counter() - started
            await send(message)

        in_progress = self._in_progress_series(method, path)
        in_progress.inc()
        try:
            await self.app(scope, receive, send_noting)
        finally:
            in_progress.dec()
            count, timing, errors = self._finished_series(method, path, status)
            if status >= HTTP_500_INTERNAL_SERVER_ERROR:
                errors.inc()
            count.inc()
            timing.observe(duration)


def prometheus_config() -> PrometheusConfig:
    # group_path labels requests by their route template (/v1/cards/{number:str}), so no card
    # number ever becomes a label value, and the series stay few.
    return PrometheusConfig(
        app_name="giftledger",
        prefix="giftledger",
        group_path=True,
        buckets=list(LATENCY_BUCKETS_SECONDS),
        exclude=[METRICS_PATH],
        middleware_class=RouteMetricsMiddleware,
    )


class MetricsController(PrometheusController):
    path = METRICS_PATH


def writer_families() -> list[Metric]:
    """The writer's metric families, as this process has them."""
    return [family for metric in WRITER_METRICS for family in metric.collect()]


class WriterMetrics(Collector):
    """In a worker whose writer is another process: the writer's families, as last fetched."""

    def __init__(self) -> None:
        self.source: Callable[[], list[Metric]] = list
        self.registered = False

    def collect(self) -> Iterable[Metric]:
        return self.source()


WRITER_EXPORT = WriterMetrics()


def export_writer_metrics(families: Callable[[], list[Metric]]) -> None:
    """Serve the writer process's figures in place of this process's own (which stay at 0)."""
    WRITER_EXPORT.source = families
    if WRITER_EXPORT.registered:  # A second app in this process: its client is the source now.
        return
    for metric in WRITER_METRICS:
        REGISTRY.unregister(metric)
    REGISTRY.register(WRITER_EXPORT)
    WRITER_EXPORT.registered = True


class Uncounted:
    """A counter that counts nothing, for a process whose events another process counts."""

    def inc(self, amount: float = 1) -> None:
        pass
