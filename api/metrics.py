"""Prometheus metrics beyond Litestar's per-route request counts and latencies.

The collectors live in prometheus_client's default registry, which Litestar's PrometheusController
serves at /metrics. Each worker process has its own registry; to aggregate several uvicorn
workers, run with PROMETHEUS_MULTIPROC_DIR set (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from prometheus_client import Counter, Gauge, Histogram

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


def prometheus_config() -> PrometheusConfig:
    # group_path labels requests by their route template (/v1/cards/{number:str}), so no card
    # number ever becomes a label value, and the series stay few.
    return PrometheusConfig(
        app_name="giftledger",
        prefix="giftledger",
        group_path=True,
        buckets=list(LATENCY_BUCKETS_SECONDS),
        exclude=[METRICS_PATH],
    )


class MetricsController(PrometheusController):
    path = METRICS_PATH
