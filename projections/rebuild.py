"""Rebuild the card projection from zero by replaying every stored event in order."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder

from ledger.card import Card
from projections.cards import view_of
from projections.recorder import write_card_views

# Rows fetched per round trip while replaying; bounds the memory of one batch.
REBUILD_BATCH_ROWS = 5_000


def rebuild_card_projection(ledger: Application[Any]) -> tuple[int, int]:
    """Replay the log into fresh card rows; returns (events replayed, cards written).

    No write can slip between the replay and the swap of the projection rows: the projection
    tables and then the event table are locked for the duration, in the order every writer
    takes them (a writer upserts card rows before it locks the event table), so the two never
    wait on each other in a cycle.
    """
    recorder = ledger.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    table = f"{recorder.datastore.schema}.{recorder.events_table_name}"
    cards: dict[UUID, Card] = {}
    replayed = 0
    with recorder.datastore.transaction(commit=True) as curs:
        curs.execute("LOCK TABLE card_views, card_holds IN ACCESS EXCLUSIVE MODE")
        curs.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        with curs.connection.cursor(name="giftledger_rebuild") as rows:
            rows.execute(
                "SELECT originator_id, originator_version, topic, state"  # noqa: S608
                f" FROM {table} ORDER BY notification_id"
            )
            while batch := rows.fetchmany(REBUILD_BATCH_ROWS):
                for row in batch:
                    stored = StoredEvent(
                        originator_id=row["originator_id"],
                        originator_version=row["originator_version"],
                        topic=row["topic"],
                        state=bytes(row["state"]),
                    )
                    domain_event = ledger.mapper.to_domain_event(stored)
                    card_id = domain_event.originator_id
                    cards[card_id] = domain_event.mutate(cards.get(card_id))  # type: ignore[attr-defined]
                    replayed += 1
        curs.execute("TRUNCATE card_views, card_holds")
        write_card_views(curs, [view_of(card) for card in cards.values()])
    return replayed, len(cards)
