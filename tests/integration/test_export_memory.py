"""An export streams: its peak memory stays the same when it exports four times as many rows."""

from __future__ import annotations

import asyncio
import tracemalloc
from datetime import UTC, datetime, timedelta

from api.ledger_export import ExportFormat, ExportKind, ExportSpec, LedgerExport
from ledger.card import Card, CardTerms, Origin
from projections.cards import view_of
from projections.ledger_stream import head_position

EVENTS_PER_CARD = 100  # One sale, then redemptions.
SMALL_CARDS = 50  # 5,000 events: more than the stream prefetches and a chunk holds together.
LARGE_CARDS = 200  # 20,000 events.
# Rows held at once are bounded by the stream's prefetch and the chunk size, not by the export:
# a streaming export peaks at about the same memory for both sizes, while one that gathered its
# rows, or its bytes, first would need about four times as much for the larger one.
PEAK_GROWTH_MAX = 1.25


def seed(ledger, now: datetime, first: int, last: int) -> None:
    """Cards and their events written straight through the ledger, log rows and views included."""
    terms = CardTerms("dynamic19", "EUR", False, True, False, None)
    origin = Origin(now, "seed", "SHOP1", 1)
    for index in range(first, last):
        card = Card.sell(f"{9_000_000_000_000_000_000 + index}", index + 1, terms, 10**6, origin)
        for _ in range(EVENTS_PER_CARD - 1):
            card.redeem(1, origin)
        ledger.save(card, card_views=[view_of(card)])


async def traced_export(pool, ledger, now: datetime) -> tuple[int, int, int]:
    """Export every event as CSV under tracemalloc: (rows, bytes written, peak bytes traced)."""
    spec = ExportSpec(ExportKind.EVENTS, ExportFormat.CSV, now - timedelta(days=1),
                      now + timedelta(days=1), await head_position(pool))  # fmt: skip
    export = LedgerExport(pool, ledger.mapper.to_domain_event, spec)
    written = 0
    tracemalloc.start()
    try:
        async for chunk in export.chunks():
            written += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return export.manifest().rows, written, peak


async def test_exporting_four_times_the_rows_takes_no_more_memory(app, pool, world):
    now = datetime.now(UTC)
    ledger = app.state.service.ledger
    await asyncio.to_thread(seed, ledger, now, 0, SMALL_CARDS)
    small_rows, small_bytes, small_peak = await traced_export(pool, ledger, now)
    await asyncio.to_thread(seed, ledger, now, SMALL_CARDS, LARGE_CARDS)
    large_rows, large_bytes, large_peak = await traced_export(pool, ledger, now)
    assert (small_rows, large_rows) == (
        SMALL_CARDS * EVENTS_PER_CARD,
        LARGE_CARDS * EVENTS_PER_CARD,
    )
    assert large_bytes > 3.5 * small_bytes
    assert large_peak < PEAK_GROWTH_MAX * small_peak, (small_peak, large_peak, large_bytes)
