"""Concurrent payments never overspend a card, within one service and across two."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from api.service import CardLedger, CardService, ledger_env, open_ledger
from ledger.card import Origin
from ledger.errors import InsufficientFunds
from projections.database import eventsourcing_env

CARD = "4000000000000001"


async def _sell(http, client, number: str, amount: str) -> None:
    response = await http.post(
        f"/api/giftcards/v1/cards/{number}",
        json={"amount": amount, "transactionNo": "T1", "locationCode": "SHOP1"},
        headers=client.headers,
    )
    assert response.status_code == 200, response.text


async def _redeemed_events(pool, number: str) -> list[int]:
    rows = await pool.fetch(
        "SELECT convert_from(e.state, 'UTF8')::jsonb ->> 'amount_minor' AS amount"
        " FROM giftledger_events e JOIN card_views v ON v.card_id = e.originator_id"
        " WHERE v.number = $1 AND e.topic LIKE '%Card.Redeemed'",
        number,
    )
    return [int(r["amount"]) for r in rows]


async def test_fifty_concurrent_uses_of_one_unit_on_twenty_spend_exactly_twenty(http, world, pool):
    await _sell(http, world.pos, CARD, "20.00")
    path = f"/api/giftcards/v1/transactions/{world.pos.consumer_key}/cards/{CARD}"

    responses = await asyncio.gather(
        *(http.post(path, json={"amount": "1.00"}, headers=world.pos.headers) for _ in range(50))
    )

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 20
    assert statuses.count(422) == 30
    assert {r.json()["code"] for r in responses if r.status_code == 422} == {"insufficient_funds"}
    card = await http.get(f"/api/giftcards/v1/cards/{CARD}", headers=world.pos.headers)
    assert card.json()["currentBalance"] == 0.0
    assert await _redeemed_events(pool, CARD) == [100] * 20


def test_two_services_on_one_database_never_overspend(http, world, database_url):
    """Two independent CardService instances race on one card; the store's concurrency wins."""
    env = ledger_env(eventsourcing_env(database_url))
    ledgers = [CardLedger(env=env), CardLedger(env=env)]
    services = [CardService(ledger, 900) for ledger in ledgers]
    try:
        _race_two_services(services)
    finally:
        for service, ledger in zip(services, ledgers, strict=True):
            service.close()
            ledger.close()


def _race_two_services(services: list[CardService]) -> None:
    from ledger.card import CardTerms

    now = datetime.now(UTC)
    origin = Origin(occurred_at=now, actor="race", location_code="SHOP1", site_id=1)
    terms = CardTerms("fixed16", "EUR", True, True, True, None)
    services[0].sell_now("4000000000000002", 1, terms, 3000, origin)

    def pay(index: int) -> bool:
        try:
            services[index % 2].submit("4000000000000002", lambda c: c.redeem(100, origin)).result()
        except InsufficientFunds:
            return False
        return True

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(pay, range(60)))

    assert outcomes.count(True) == 30
    final = services[1].card_now("4000000000000002")
    assert final.balance_minor == 0
    assert final.version == 31


LEDGER_OPENERS = 4
OPENING_ROUNDS = 5


def test_ledgers_opened_at_once_all_open(database_url):
    """A service's workers start together, and each opens the ledger, whose construction
    creates and alters the event store's tables: unserialized, that failed with "tuple
    concurrently updated", and uvicorn then stopped the whole service."""
    for _ in range(OPENING_ROUNDS):
        with ThreadPoolExecutor(max_workers=LEDGER_OPENERS) as pool:
            ledgers = list(pool.map(lambda _: open_ledger(database_url), range(LEDGER_OPENERS)))
        for ledger in ledgers:
            ledger.close()
