"""The ledger writer beside a busy event loop, in-process: why a served process switches the GIL
every 1 ms (api/app.py GIL_SWITCH_INTERVAL_SECONDS).

A batch of payments is committed by CardService.commit_batch, as the writer thread does it:
alone, then beside a thread that never blocks (as an event loop under load is rarely idle), at
CPython's default switch interval and at the served process's. Each wait of the batch on
PostgreSQL gives up the GIL; the writer then queues for it behind the busy thread.
"""

from __future__ import annotations

import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from api.app import GIL_SWITCH_INTERVAL_SECONDS
from api.service import CardService, Job, open_ledger
from bench.seed import CARD_COUNT, LOCATION_CODE, LOCATION_SITE_ID, card_number
from ledger.card import Origin

BATCH_COMMANDS = 30
WARM_BATCHES = 20  # Brings the batches' cards into the writer's cache first.
MEASURED_BATCHES = 60
CPYTHON_SWITCH_INTERVAL_SECONDS = 0.005
HOLD_TTL_SECONDS = 900
BUSY_LOOP_STEPS = 1000
MILLISECONDS = 1000


@dataclass(frozen=True)
class WriterResult:
    alone_ms: float
    busy_default_ms: float
    busy_served_ms: float

    def line(self) -> str:
        return (
            f"Writer, a batch of {BATCH_COMMANDS} payments (median of {MEASURED_BATCHES}):"
            f" {self.alone_ms:.1f} ms alone; beside a thread that never blocks,"
            f" {self.busy_default_ms:.1f} ms at CPython's GIL switch interval"
            f" ({CPYTHON_SWITCH_INTERVAL_SECONDS * MILLISECONDS:g} ms) and"
            f" {self.busy_served_ms:.1f} ms at the served process's"
            f" ({GIL_SWITCH_INTERVAL_SECONDS * MILLISECONDS:g} ms)."
        )


@contextmanager
def busy_thread(switch_interval: float) -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)
    stop = threading.Event()

    def spin() -> None:
        total = 0
        while not stop.is_set():
            for step in range(BUSY_LOOP_STEPS):
                total += step

    thread = threading.Thread(target=spin, name="bench-busy")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(before)


def _median_batch_ms(service: CardService, rng: random.Random, batches: int) -> float:
    origin = Origin(datetime.now(UTC), "bench-writer", LOCATION_CODE, LOCATION_SITE_ID)
    took: list[float] = []
    for _ in range(batches):
        numbers = rng.sample(range(CARD_COUNT), BATCH_COMMANDS)
        jobs = [Job(card_number(i), lambda card: card.redeem(1, origin), None) for i in numbers]
        started = time.perf_counter()
        service.commit_batch(jobs)
        took.append(time.perf_counter() - started)
        assert all(job.future.exception() is None for job in jobs)
    return statistics.median(took) * MILLISECONDS


def measure_writer(url: str) -> WriterResult:
    """On the bench's seeded database (its cards have balance enough for every payment)."""
    ledger = open_ledger(url)
    service = CardService(ledger, HOLD_TTL_SECONDS)
    rng = random.Random(BATCH_COMMANDS)  # noqa: S311 - which cards pay, not a secret.
    try:
        _median_batch_ms(service, rng, WARM_BATCHES)
        alone = _median_batch_ms(service, rng, MEASURED_BATCHES)
        with busy_thread(CPYTHON_SWITCH_INTERVAL_SECONDS):
            busy_default = _median_batch_ms(service, rng, MEASURED_BATCHES)
        with busy_thread(GIL_SWITCH_INTERVAL_SECONDS):
            busy_served = _median_batch_ms(service, rng, MEASURED_BATCHES)
    finally:
        service.close()
        ledger.close()
    return WriterResult(alone, busy_default, busy_served)
