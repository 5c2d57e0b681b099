"""Stream the ledger in log order, between two instants, with bounded memory (asyncpg cursor).

Exports, reports and reconciliation all read the ledger this way: each stored event with its
ledger log row (position, time, request keys, hashes) and its card's fixed facts (number,
currency, card type). The rows come from one REPEATABLE READ snapshot, so a stream never shows
half of a concurrent commit, and its last chain hash commits to everything before it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from eventsourcing.persistence import StoredEvent

# The event store's table, as eventsourcing names it for the application "giftledger".
EVENTS_TABLE = "giftledger_events"
# Rows the cursor fetches per round trip: bounds the memory a stream holds at once.
STREAM_PREFETCH_ROWS = 2_000

_STREAM_SQL = f"""
    SELECT l.position, l.card_id, l.version, l.occurred_at, l.idempotency_key, l.reference,
           l.card_hash, l.chain_hash, e.topic, e.state, v.number, v.currency, v.card_type
    FROM ledger_log l
    JOIN {EVENTS_TABLE} e ON e.notification_id = l.position
    JOIN card_views v ON v.card_id = l.card_id
    WHERE ($1::timestamptz IS NULL OR l.occurred_at >= $1)
      AND ($2::timestamptz IS NULL OR l.occurred_at < $2)
      AND ($3::bigint IS NULL OR l.position <= $3)
    ORDER BY l.position
"""  # noqa: S608 - a constant table name.
_HEAD_SQL = "SELECT coalesce(max(position), 0) FROM ledger_log"
_COUNT_SQL = """
    SELECT count(*) FROM ledger_log l
    WHERE ($1::timestamptz IS NULL OR l.occurred_at >= $1)
      AND ($2::timestamptz IS NULL OR l.occurred_at < $2)
      AND ($3::bigint IS NULL OR l.position <= $3)
"""


@dataclass(frozen=True)
class LoggedEvent:
    position: int
    card_id: UUID
    version: int
    occurred_at: datetime
    type: str
    event: Any  # The domain event, e.g. Card.Redeemed, with amount_minor and location_code.
    number: str
    currency: str
    card_type: str
    idempotency_key: str | None
    reference: str | None
    card_hash: bytes
    chain_hash: bytes

    @property
    def amount_minor(self) -> int:
        return getattr(self.event, "amount_minor", 0) or 0

    @property
    def location_code(self) -> str | None:
        return getattr(self.event, "location_code", None)


Decode = Callable[[StoredEvent], Any]


async def stream_ledger(
    pool: asyncpg.Pool,
    decode: Decode,
    occurred_from: datetime | None = None,
    occurred_to: datetime | None = None,
    through_position: int | None = None,
) -> AsyncIterator[LoggedEvent]:
    """Events that occurred in [occurred_from, occurred_to), in log order.

    `decode` turns a stored event into its domain event: the ledger application's
    `mapper.to_domain_event`, which knows the card's transcodings and upcasters.
    With `through_position` (e.g. a `head_position` read earlier), only events at or before
    that position: the same call then yields the same events however much was written since.
    """
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = conn.cursor(
            _STREAM_SQL, occurred_from, occurred_to, through_position,
            prefetch=STREAM_PREFETCH_ROWS,
        )  # fmt: skip
        async for row in cursor:
            stored = StoredEvent(row["card_id"], row["version"], row["topic"], bytes(row["state"]))
            yield LoggedEvent(
                position=row["position"],
                card_id=row["card_id"],
                version=row["version"],
                occurred_at=row["occurred_at"],
                type=row["topic"].rsplit(".", 1)[-1],
                event=decode(stored),
                number=row["number"],
                currency=row["currency"],
                card_type=row["card_type"],
                idempotency_key=row["idempotency_key"],
                reference=row["reference"],
                card_hash=bytes(row["card_hash"]),
                chain_hash=bytes(row["chain_hash"]),
            )


async def head_position(pool: asyncpg.Pool) -> int:
    """The position of the newest event in the log, 0 when it is empty.

    Writers append under the event table's lock and positions are taken in commit order, so once
    this position is visible every event before it is too: "through this position" names a set
    of events that no later commit changes.
    """
    return int(await pool.fetchval(_HEAD_SQL))


async def count_ledger(
    pool: asyncpg.Pool,
    occurred_from: datetime | None = None,
    occurred_to: datetime | None = None,
    through_position: int | None = None,
) -> int:
    """How many events `stream_ledger` yields for the same bounds (e.g. for a progress bar)."""
    return int(await pool.fetchval(_COUNT_SQL, occurred_from, occurred_to, through_position))
