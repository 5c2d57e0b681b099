"""A known history over several days, three currencies' worth of card types, two locations and
one expiry, for the report tests; every figure they assert follows from the table below."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock

from ledger.card import CardTerms, Origin

EXPIRY_WAIT_SECONDS_MAX = 10

FIXED = "4100000000000001"  # fixed16, EUR, sold at SHOP1
DYNAMIC = "4100000000000000002"  # dynamic19, EUR, sold at SHOP2
GOLD = "7700000000000003"  # gold, GBP, sold at SHOP1
PROMO = "4100000000000004"  # promo, EUR, sold at SHOP2, expires after its second day


@dataclass(frozen=True)
class History:
    first: date  # The day of the sales; the others follow it.
    second: date
    third: date
    expired_on: date  # The day the service expired PROMO (today, when the history was made).


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, clock(hour, minute), tzinfo=UTC)


def terms(card_type: str, currency: str, fixed: bool, expires_on: date | None) -> CardTerms:
    return CardTerms(card_type, currency, fixed, True, True, expires_on)


async def make_history(app, world, pool) -> History:
    """Five days ago, sales; then a use, a load and a refund; then a capture and a use in GBP;
    today the service expires PROMO with 9.00 on it.

    | day    | location | currency | sold | loaded | redeemed | refunded | expired |
    | first  | SHOP1    | EUR      | 5000 |        |          |          |         |
    | first  | SHOP1    | GBP      | 2000 |        |          |          |         |
    | first  | SHOP2    | EUR      | 3900 |        |          |          |         |
    | second | SHOP1    | EUR      |      |        | 1200     |          |         |
    | second | SHOP2    | EUR      |      | 700    |          | 200      |         |
    | third  | SHOP1    | EUR      |      |        | 400 (captured hold)  |         |
    | third  | SHOP2    | GBP      |      |        | 500      |          |         |
    | today  | SHOP2    | EUR      |      |        |          |          | 900     |
    """
    service = app.state.service
    first = datetime.now(UTC).date() - timedelta(days=5)
    second, third = first + timedelta(days=1), first + timedelta(days=2)

    def origin(when: datetime, location: str) -> Origin:
        site = {"SHOP1": 1, "SHOP2": 2}[location]
        return Origin(occurred_at=when, actor=world.pos.client_id, location_code=location,
                      site_id=site)  # fmt: skip

    sales = (
        (FIXED, terms("fixed16", "EUR", True, None), 5000, at(first, 10), "SHOP1"),
        (DYNAMIC, terms("dynamic19", "EUR", False, None), 3000, at(first, 11), "SHOP2"),
        (GOLD, terms("gold", "GBP", True, None), 2000, at(first, 12), "SHOP1"),
        (PROMO, terms("promo", "EUR", True, second), 900, at(first, 13), "SHOP2"),
    )
    for number, card_terms, amount, when, location in sales:
        ref = await world.config.next_card_ref()
        await service.sell(number, ref, card_terms, amount, origin(when, location))
    await service.redeem(FIXED, 1200, origin(at(second, 9), "SHOP1"))
    await service.load(DYNAMIC, 700, origin(at(second, 10), "SHOP2"))
    await service.refund(FIXED, 200, origin(at(second, 11), "SHOP2"))
    hold_at = origin(at(third, 9), "SHOP1")

    def hold_and_capture(card) -> None:
        # One command, so the hold cannot expire (it is days old by now) before its capture.
        card.reserve(1000, 900, hold_at, "hold-1")
        card.capture("hold-1", 400, hold_at)

    await service.execute(FIXED, hold_and_capture)
    await service.redeem(GOLD, 500, origin(at(third, 10), "SHOP2"))
    return History(first, second, third, await wait_for_expiry(pool))


async def wait_for_expiry(pool) -> date:
    """The service's own sweeper expires PROMO; wait for it and answer the day it happened."""
    deadline = time.monotonic() + EXPIRY_WAIT_SECONDS_MAX
    while time.monotonic() < deadline:
        status = await pool.fetchval("SELECT status FROM card_views WHERE number = $1", PROMO)
        if status == "expired":
            occurred = await pool.fetchval(
                "SELECT max(occurred_at) FROM ledger_log l JOIN card_views v USING (card_id)"
                " WHERE v.number = $1",
                PROMO,
            )
            return occurred.astimezone(UTC).date()
        await asyncio.sleep(0.2)
    raise AssertionError("the sweeper did not expire the promo card")
