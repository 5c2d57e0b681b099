"""The per-card read model: balances, holds and status, folded from the Card events."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from psycopg.types.json import Json

from ledger.card import Card, CardStatus, mask_card_number
from ledger.errors import CardNotFound
from projections.params import json_records, record

# The projection lag is measured over this many of the newest events.
PROJECTION_LAG_WINDOW_EVENTS = 10_000


class HoldView(msgspec.Struct, frozen=True):
    hold_id: str
    client_id: str
    amount_minor: int
    expires_at: datetime


class CardView(msgspec.Struct, frozen=True):
    card_id: UUID
    number: str
    ref: int
    card_type: str
    currency: str
    original_minor: int
    balance_minor: int
    reserved_minor: int
    status: str
    fixed_amount: bool
    redeem_allowed: bool
    reservations_allowed: bool
    location_code: str | None
    locked_site_id: int | None
    expires_on: date | None
    presentation: int | None
    version: int
    holds: tuple[HoldView, ...] = ()

    @property
    def available_minor(self) -> int:
        return self.balance_minor - self.reserved_minor


def view_of(card: Card) -> CardView:
    """The read model of a card is a pure function of the state its events folded to."""
    terms = card.terms
    return CardView(
        card_id=card.id,
        number=card.number,
        ref=card.ref,
        card_type=terms.card_type,
        currency=terms.currency,
        original_minor=card.original_minor,
        balance_minor=card.balance_minor,
        reserved_minor=card.reserved_minor,
        status=CardStatus(card.status).value,
        fixed_amount=terms.fixed_amount,
        redeem_allowed=terms.redeem_allowed,
        reservations_allowed=terms.reservations_allowed,
        location_code=card.sold_location_code,
        locked_site_id=terms.locked_site_id,
        expires_on=terms.expires_on,
        presentation=terms.presentation,
        version=card.version,
        holds=tuple(
            HoldView(h.hold_id, h.client_id, h.amount_minor, h.expires_at)
            for h in sorted(card.holds.values(), key=lambda h: h.hold_id)
        ),
    )


# The columns of card_views, in the order of card_row().
CARD_COLUMN_NAMES = (
    "card_id", "number", "ref", "card_type", "currency", "original_minor", "balance_minor",
    "reserved_minor", "status", "fixed_amount", "redeem_allowed", "reservations_allowed",
    "location_code", "locked_site_id", "expires_on", "presentation", "version",
)  # fmt: skip
_CARD_COLUMNS = ", ".join(CARD_COLUMN_NAMES)
_CARD_COLUMN_TYPES = (
    "uuid", "text", "bigint", "text", "text", "bigint", "bigint", "bigint", "text", "boolean",
    "boolean", "boolean", "text", "integer", "date", "integer", "integer",
)  # fmt: skip
_CARD_RECORD = record(tuple(zip(CARD_COLUMN_NAMES, _CARD_COLUMN_TYPES, strict=True)))
# One statement for a whole batch of cards: their rows travel as one JSON parameter (psycopg
# dumped the 17 arrays this took before in Python, the writer's largest cost per batch).
UPSERT_CARDS_SQL = (
    f"INSERT INTO card_views ({_CARD_COLUMNS})"  # noqa: S608
    f" SELECT * FROM json_to_recordset(%s) AS r({_CARD_RECORD})"
    " ON CONFLICT (card_id) DO UPDATE SET balance_minor = EXCLUDED.balance_minor,"
    " reserved_minor = EXCLUDED.reserved_minor, status = EXCLUDED.status,"
    " version = EXCLUDED.version"
)
# A statement of its own, after the upsert, never a part of it: the upsert may wait for another
# writer's batch on the same cards, and only a statement begun after that batch committed sees
# the holds it wrote (in one statement, its snapshot predates them, they stay, and writing the
# holds again fails on their keys).
DELETE_HOLDS_SQL = "DELETE FROM card_holds WHERE card_id = ANY(%b::uuid[])"
INSERT_HOLD_SQL = (
    "INSERT INTO card_holds (hold_id, card_id, client_id, amount_minor, expires_at)"
    " VALUES (%s, %s, %s, %s, %s)"
)


def card_row(view: CardView) -> tuple[Any, ...]:
    return (
        view.card_id, view.number, view.ref, view.card_type, view.currency, view.original_minor,
        view.balance_minor, view.reserved_minor, view.status, view.fixed_amount,
        view.redeem_allowed, view.reservations_allowed, view.location_code, view.locked_site_id,
        view.expires_on, view.presentation, view.version,
    )  # fmt: skip


def card_rows_json(views: Iterable[CardView]) -> Json:
    """The views as UPSERT_CARDS_SQL's parameter."""
    return json_records(CARD_COLUMN_NAMES, (card_row(v) for v in views))


def hold_rows(views: Iterable[CardView]) -> list[tuple[Any, ...]]:
    return [
        (h.hold_id, v.card_id, h.client_id, h.amount_minor, h.expires_at)
        for v in views
        for h in v.holds
    ]


# A card's view and its holds in one round trip: card lookups are the busiest reads.
_SELECT_CARD_SQL = (
    f"SELECT {', '.join(f'v.{c}' for c in CARD_COLUMN_NAMES)}, ARRAY("  # noqa: S608
    "SELECT ROW(h.hold_id, h.client_id, h.amount_minor, h.expires_at) FROM card_holds h"
    " WHERE h.card_id = v.card_id ORDER BY h.hold_id) AS holds"
    " FROM card_views v WHERE v.number = $1"
)


class CardReader:
    """Asynchronous reads of the card projection."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def get(self, number: str) -> CardView | None:
        row = await self._pool.fetchrow(_SELECT_CARD_SQL, number)
        if row is None:
            return None
        fields = dict(row)
        holds = fields.pop("holds")
        return CardView(**fields, holds=tuple(HoldView(*hold) for hold in holds))

    async def require(self, number: str) -> CardView:
        """The card's view, or the refusal every API answers for an unknown card."""
        view = await self.get(number)
        if view is None:
            raise CardNotFound(f"card {mask_card_number(number)} does not exist")
        return view

    async def numbers_past_expiry(self, today: date, limit: int) -> list[str]:
        """Cards whose last valid day is before `today` (UTC) and that are not yet expired."""
        rows = await self._pool.fetch(
            "SELECT number FROM card_views WHERE expires_on < $1 AND status <> 'expired'"
            " ORDER BY expires_on LIMIT $2",
            today,
            limit,
        )
        return [r["number"] for r in rows]

    async def scheduler_backlog(self, now: datetime) -> tuple[int, int]:
        """(cards with an expired hold, cards past expiry) the scheduler has still to handle."""
        row = await self._pool.fetchrow(
            "SELECT (SELECT count(DISTINCT card_id) FROM card_holds WHERE expires_at <= $1),"
            " (SELECT count(*) FROM card_views WHERE expires_on < $2 AND status <> 'expired')",
            now,
            now.date(),
        )
        assert row is not None
        return int(row[0]), int(row[1])

    async def projection_lag(self, now: datetime) -> tuple[int, float]:
        """(events, seconds) the card projection trails the newest events of the log.

        Written in each event's own transaction, the projection should never trail; this
        measures it anyway, over the newest events, so a broken rebuild or a hand edit shows.
        """
        row = await self._pool.fetchrow(
            "SELECT count(*), min(l.occurred_at) FROM ledger_log l"
            " LEFT JOIN card_views v USING (card_id)"
            " WHERE l.position > (SELECT coalesce(max(position), 0) FROM ledger_log) - $1"
            " AND (v.version IS NULL OR l.version > v.version)",
            PROJECTION_LAG_WINDOW_EVENTS,
        )
        assert row is not None
        oldest = row[1]
        return int(row[0]), (now - oldest).total_seconds() if oldest else 0.0

    async def ledger_head(self) -> int:
        return int(await self._pool.fetchval("SELECT coalesce(max(position), 0) FROM ledger_log"))

    async def numbers_with_expired_holds(self, now: datetime, limit: int) -> list[str]:
        rows = await self._pool.fetch(
            # card_views before card_holds: the one lock order every statement here keeps.
            "SELECT DISTINCT v.number FROM card_views v JOIN card_holds h USING (card_id)"
            " WHERE h.expires_at <= $1 LIMIT $2",
            now,
            limit,
        )
        return [r["number"] for r in rows]
