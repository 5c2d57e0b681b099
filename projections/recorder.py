"""The event store's recorder, which also writes the card projection in the same transaction.

Writing the read model inside the transaction that appends the events (the pattern of
eventsourcing's searchablecontent example) makes the projection exactly-once by construction:
either the events and their projected rows commit together, or neither does. A client that got a
2xx on a write therefore sees its effect on its next read, from any worker. The ledger log's
hash chain (projections/log.py) is written in that same transaction, after the events.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from projections.cards import (
    DELETE_HOLDS_SQL,
    INSERT_HOLD_SQL,
    UPSERT_CARDS_SQL,
    CardView,
    card_rows_json,
    hold_rows,
)
from projections.idempotency import write_idempotency_rows
from projections.log import EventKeys, ask_previous_hashes, write_log
from projections.params import json_rows

# Session settings of the event store's connections (libpq's `options`). No JIT: PostgreSQL
# compiles a statement with LLVM once its estimated cost passes jit_above_cost (100,000), which
# the writer's read of a batch's cards crossed once the ledger held some 100,000 events (its
# estimate assumes 100 cards of several hundred events each). Each batch then spent 20-30 ms of
# the database's CPU compiling a read that runs in under a millisecond: at 2 workers PostgreSQL
# used a whole core, and pay fell to half. These connections only run short statements.
STORE_SESSION_OPTIONS = "-c jit=off"


class CardLedgerRecorder(PostgresApplicationRecorder):
    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        # Before the pool opens (on its first use, in the constructor below), so that every
        # connection it makes has them.
        assert datastore.pool.closed, "the event store's pool opened before its options were set"
        # libpq takes `options` instead of PGOPTIONS: an operator's own options are kept.
        operator = os.environ.get("PGOPTIONS", "")
        datastore.pool.kwargs["options"] = f"{operator} {STORE_SESSION_OPTIONS}".strip()
        super().__init__(datastore, **kwargs)
        # eventsourcing's statement, with the events as one JSON parameter (their states in
        # base64) instead of an array of a composite type that psycopg dumps in Python.
        self.insert_events_statement = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state)"
            " SELECT originator_id, originator_version, topic, decode(state, 'base64')"
            " FROM json_to_recordset(%s)"
            " AS r(originator_id uuid, originator_version bigint, topic text, state text)"
            " RETURNING notification_id"
        ).format(
            schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name)
        )
        # Per thread (the writer, and the threads that save one card alone): the cursor on which
        # _insert_stored_events sent the ledger log's read, for _fetch_ids_after_insert_events.
        self._asked = threading.local()

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Any:
        try:
            return super().insert_events(stored_events, **kwargs)
        finally:
            self._asked.__dict__.pop("cursor", None)

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
        if not stored_events:
            # Only refusals to keep (eventsourcing inserts no events, so _insert_stored_events
            # does not run): the answers are the transaction's last statement.
            write_idempotency_rows(curs, idempotency_rows)

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        idempotency_rows: Sequence[tuple[Any, ...]] = (),
        **kwargs: Any,
    ) -> None:
        """eventsourcing's: lock the table, then insert (RETURNING the positions, in the
        events' order); without its NOTIFY, which serves LISTEN-based subscriptions giftledger
        does not use, and cost a statement per batch and, at each commit, a lock that every
        database on the server shares. Then the batch's stored answers.

        The two inserts that may fail (a version or a key another process stored first) are
        the last statements before the pipeline syncs. PostgreSQL skips what follows a failed
        statement up to the sync, and psycopg could then count as prepared a statement whose
        preparation was skipped: every later batch on that connection failed with "prepared
        statement _pg3_N does not exist". The answers' insert is never prepared, so skipping it
        after a failed event insert leaves nothing behind.

        The ledger log's read of the hashes it chains onto goes before the inserts, once the
        table is locked; its answer comes back at the same sync, one round trip per batch fewer.
        """
        self._lock_table(curs)
        # Before the inserts that may fail, so it is never a statement the failure skips; its
        # answer arrives with theirs, at the sync below.
        asked = curs.connection.cursor()
        ask_previous_hashes(asked, stored_events)
        self._asked.cursor = asked
        rows = [
            {"originator_id": e.originator_id, "originator_version": e.originator_version,
             "topic": e.topic, "state": e.state}
            for e in stored_events
        ]  # fmt: skip
        curs.execute(self.insert_events_statement, (json_rows(rows),))
        # A cursor of its own: eventsourcing reads the positions from this one's last result.
        with curs.connection.cursor() as answers:
            write_idempotency_rows(answers, idempotency_rows)

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
        asked = self._asked.__dict__.pop("cursor")
        with asked:
            write_log(curs, stored_events, positions, event_keys or {}, asked)
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
