"""Configuration and 10,000 cards, written in-process through the ledger's own write path."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from api.auth import issue_token
from api.bootstrap import prepare_database
from api.service import open_ledger
from api.settings import Settings
from ledger.card import Card, CardTerms, Origin, add_months
from projections.cards import view_of
from projections.config import SCOPES, CardType, ConfigStore, pinned_signing_key

JWT_SECRET = "giftledger-bench-secret-" + "b" * 40
TOKEN_TTL_SECONDS = 3600
LOCATION_CODE = "SHOP1"
LOCATION_SITE_ID = 1
CARD_TYPE_NAME = "bench"
CARD_PREFIX = "40"
CARD_NUMBER_LENGTH = 16
CARD_CURRENCY = "EUR"
CARD_VALIDITY_MONTHS = 36
CARD_BALANCE_MINOR = 100_000_000  # 1,000,000.00 EUR: pays never run out.
CARD_COUNT = 10_000
CARDS_PER_COMMIT = 500
# The bench measures throughput: its clients' rate limits are far above what it can reach.
BENCH_RATE_PER_SECOND = 1_000_000.0
BENCH_RATE_BURST = 1_000_000
BENCH_CARD_TYPE = CardType(
    name=CARD_TYPE_NAME,
    prefix=CARD_PREFIX,
    length=CARD_NUMBER_LENGTH,
    allowed_chars="0123456789",
    fixed_amount=True,
    redeem_allowed=True,
    reservations_allowed=True,
    validity_months=CARD_VALIDITY_MONTHS,
    currency=CARD_CURRENCY,
)


@dataclass(frozen=True)
class BenchClient:
    client_id: str
    consumer_key: str
    token: str


@dataclass(frozen=True)
class Seeded:
    pos: BenchClient  # pays, reads and creates
    reserver: BenchClient  # reserves and cancels: its holds never meet the pays
    cards: int
    seconds: float


def card_number(index: int) -> str:
    """The same numbers the Lua scripts generate: prefix, then the index zero-padded."""
    return f"{CARD_PREFIX}{index:0{CARD_NUMBER_LENGTH - len(CARD_PREFIX)}d}"


def bench_settings(url: str) -> Settings:
    return Settings(database_url=url, data_dir=Path(".giftledger"), jwt_secret=JWT_SECRET)


async def _configure(url: str) -> tuple[BenchClient, BenchClient, list[int]]:
    await prepare_database(url, bench_settings(url))
    conn = await asyncpg.connect(url)
    try:
        config = ConfigStore(conn)
        await config.add_location(LOCATION_CODE, LOCATION_SITE_ID, "Bench shop")
        await config.add_card_type(BENCH_CARD_TYPE)
        clients = [
            await config.create_client(
                name, SCOPES, rate_per_second=BENCH_RATE_PER_SECOND, rate_burst=BENCH_RATE_BURST
            )
            for name in ("pos", "reserver")
        ]
        refs = await conn.fetch(
            "SELECT nextval('card_ref_seq') AS ref FROM generate_series(1, $1)", CARD_COUNT
        )
    finally:
        await conn.close()
    pos, reserver = (
        BenchClient(
            c.client.client_id,
            c.client.consumer_key,
            issue_token(pinned_signing_key(JWT_SECRET), c.client.client_id, TOKEN_TTL_SECONDS),
        )
        for c in clients
    )
    return pos, reserver, [int(r["ref"]) for r in refs]


def _sell_all(url: str, refs: list[int], actor: str) -> None:
    now = datetime.now(UTC)
    terms = CardTerms(
        card_type=CARD_TYPE_NAME,
        currency=CARD_CURRENCY,
        fixed_amount=True,
        redeem_allowed=True,
        reservations_allowed=True,
        expires_on=add_months(now.date(), CARD_VALIDITY_MONTHS),
    )
    origin = Origin(now, actor, LOCATION_CODE, LOCATION_SITE_ID)
    ledger = open_ledger(url)
    try:
        for start in range(0, len(refs), CARDS_PER_COMMIT):
            cards = [
                Card.sell(card_number(i), refs[i], terms, CARD_BALANCE_MINOR, origin)
                for i in range(start, min(start + CARDS_PER_COMMIT, len(refs)))
            ]
            # The same call the service's group commit makes: events and projection together.
            ledger.save(*cards, card_views=[view_of(c) for c in cards])
    finally:
        ledger.close()


def seed(url: str) -> Seeded:
    started = time.perf_counter()
    pos, reserver, refs = asyncio.run(_configure(url))
    _sell_all(url, refs, pos.client_id)
    return Seeded(pos, reserver, len(refs), time.perf_counter() - started)
