"""The event store's recorder, which also writes the card projection in the same transaction.

Writing the read model inside the transaction that appends the events (the pattern of
eventsourcing's searchablecontent example) makes the projection exactly-once by construction:
either the events and their projected rows commit together, or neither does. A client that got a
2xx on a write therefore sees its effect on its next read, from any worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor
from psycopg.rows import DictRow

from projections.cards import (
    DELETE_HOLDS_SQL,
    INSERT_HOLD_SQL,
    UPSERT_CARD_SQL,
    CardView,
    card_row,
    hold_rows,
)
from projections.idempotency import write_idempotency_rows


class CardLedgerRecorder(PostgresApplicationRecorder):
    def _insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        card_views: Sequence[CardView] = (),
        idempotency_rows: Sequence[tuple[Any, ...]] = (),
        **kwargs: Any,
    ) -> None:
        super()._insert_events(curs, stored_events, **kwargs)
        write_card_views(curs, card_views)
        write_idempotency_rows(curs, idempotency_rows)


def write_card_views(curs: Cursor[DictRow], views: Sequence[CardView]) -> None:
    # Rows are written in card-id order, so two multi-card transactions cannot deadlock.
    ordered = sorted(views, key=lambda v: v.card_id)
    if not ordered:
        return
    curs.executemany(UPSERT_CARD_SQL, [card_row(v) for v in ordered])
    curs.executemany(DELETE_HOLDS_SQL, [(v.card_id,) for v in ordered])
    holds = hold_rows(ordered)
    if holds:
        curs.executemany(INSERT_HOLD_SQL, holds)
