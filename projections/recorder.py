"""The event store's recorder, which also writes the card projection in the same transaction.

Writing the read model inside the transaction that appends the events (the pattern of
eventsourcing's searchablecontent example) makes the projection exactly-once by construction:
either the events and their projected rows commit together, or neither does. A client that got a
2xx on a write therefore sees its effect on its next read, from any worker. The ledger log's
hash chain (projections/log.py) is written in that same transaction, after the events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composable, Composed

from projections.cards import (
    DELETE_HOLDS_SQL,
    INSERT_HOLD_SQL,
    UPSERT_CARDS_SQL,
    CardView,
    card_rows_json,
    hold_rows,
)
from projections.idempotency import write_idempotency_rows
from projections.log import EventKeys, write_log


class CardLedgerRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.insert_events_statement = binary_parameters(self.insert_events_statement)

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

    def _notify_channel(self, curs: Cursor[DictRow]) -> None:
        """No NOTIFY with each insert: it serves eventsourcing's LISTEN-based subscriptions,
        which giftledger does not use, and cost a statement per batch and, at each commit, a
        lock every database on the server shares."""

    def _fetch_ids_after_insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        event_keys: EventKeys | None = None,
        **kwargs: Any,
    ) -> Sequence[int] | None:
        # Runs after the insert, with the event table still locked: the positions are known
        # and no other writer can chain in between.
        positions = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        assert positions is not None
        write_log(curs, stored_events, positions, event_keys or {})
        return positions


def write_card_views(curs: Cursor[DictRow], views: Sequence[CardView]) -> None:
    # Rows are written in card-id order, so two multi-card transactions cannot deadlock.
    ordered = sorted(views, key=lambda v: v.card_id)
    if not ordered:
        return
    curs.execute(UPSERT_CARDS_SQL, (card_rows_json(ordered),))
    curs.execute(DELETE_HOLDS_SQL, ([v.card_id for v in ordered],))
    holds = hold_rows(ordered)
    if holds:
        curs.executemany(INSERT_HOLD_SQL, holds)


def binary_parameters(statement: Composable) -> Composable:
    """The statement with its parameters sent in binary (%b). psycopg dumps an array in binary
    5 to 15 times faster than as text, and eventsourcing sends a batch's events as one array of
    a composite type: its text dumping was the writer's largest single cost."""
    if isinstance(statement, SQL):
        return SQL(statement.as_string().replace("%s", "%b"))
    if isinstance(statement, Composed):
        return Composed([binary_parameters(part) for part in statement])
    return statement  # An identifier or a literal: no parameters in it.
