"""The service's own scheduler: it releases expired holds and expires cards past their date,
recording the events itself, so no request is needed."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from api import metrics
from api.context import utc_now
from api.errors import WriteContention
from api.service import CardService
from ledger.errors import LedgerError
from projections.cards import CardReader
from projections.idempotency import purge_expired_keys

logger = logging.getLogger("giftledger.sweeper")

# Cards handled per sweep; the rest wait for the next one, a second later.
HOLD_SWEEP_BATCH_MAX = 200
# Cards expired per sweep; a backlog after downtime drains over the following seconds.
EXPIRY_SWEEP_BATCH_MAX = 200
# Idempotency keys past their retention are deleted this often.
IDEMPOTENCY_PURGE_INTERVAL_SECONDS = 3600
# The scheduler's backlog gauges count rows, so they are refreshed this often, not every sweep.
GAUGE_REFRESH_INTERVAL_SECONDS = 10.0


async def sweep_expired_holds(reader: CardReader, service: CardService) -> int:
    """Release every hold that has expired by now, card by card; returns the cards touched."""
    now = utc_now()
    numbers = await reader.numbers_with_expired_holds(now, HOLD_SWEEP_BATCH_MAX)
    return await _each(numbers, lambda number: service.release_expired_holds(number, now))


async def sweep_expired_cards(reader: CardReader, service: CardService) -> int:
    """Close every card past its expiry date: its holds are released, its rest is breakage."""
    now = utc_now()
    numbers = await reader.numbers_past_expiry(now.date(), EXPIRY_SWEEP_BATCH_MAX)
    return await _each(numbers, lambda number: service.expire(number, now))


async def _each(numbers: list[str], action: Callable[[str], Awaitable[object]]) -> int:
    for number in numbers:
        try:
            await action(number)
        except (LedgerError, WriteContention) as exc:
            # Another worker may be sweeping the same card; the next sweep sees the outcome.
            logger.info("sweep skipped card %s: %s", number, exc)
    return len(numbers)


async def refresh_gauges(reader: CardReader) -> None:
    holds, cards = await reader.scheduler_backlog(utc_now())
    metrics.HOLDS_TO_EXPIRE.set(holds)
    metrics.CARDS_TO_EXPIRE.set(cards)
    metrics.LEDGER_HEAD_POSITION.set(await reader.ledger_head())
    lag_events, lag_seconds = await reader.projection_lag(utc_now())
    metrics.PROJECTION_LAG_EVENTS.set(lag_events)
    metrics.PROJECTION_LAG_SECONDS.set(lag_seconds)


async def run_sweeper(reader: CardReader, service: CardService, interval_s: float) -> None:
    # Both run on the first pass: time.monotonic() counts from the host's boot, so a start 0.0
    # left a service on a host up for less than an hour without a purge until it was.
    last_purge = -math.inf
    last_gauges = -math.inf
    while True:
        try:
            if time.monotonic() - last_gauges > GAUGE_REFRESH_INTERVAL_SECONDS:
                last_gauges = time.monotonic()
                await refresh_gauges(reader)
            await sweep_expired_holds(reader, service)
            await sweep_expired_cards(reader, service)
            if time.monotonic() - last_purge > IDEMPOTENCY_PURGE_INTERVAL_SECONDS:
                last_purge = time.monotonic()
                await purge_expired_keys(reader.pool)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database may be briefly unreachable; the sweeper must outlive that.
            logger.exception("hold sweep failed; retrying in %ss", interval_s)
        await asyncio.sleep(interval_s)
