"""The ledger log: one row per stored event, with its hash chains, its time and its request.

The row is written by the recorder in the transaction that inserts the event, after the event
table is locked, so the log's order is the notification order and the chain has no gaps. Beside
the hashes it keeps what auditors and finance select on and the event row cannot index:
`occurred_at`, the Idempotency-Key of the request that caused the event, and the POS's own
transaction reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import StoredEvent
from psycopg import Cursor
from psycopg.rows import DictRow

from ledger.integrity import GENESIS_HASH, card_hash, chain_hash
from projections.params import json_rows, record

# What a request said about the event it caused: its Idempotency-Key and the POS's own
# transaction number (Resico's transactionNo), either of which a settlement file may quote.
EventKeys = Mapping[tuple[UUID, int], tuple[str | None, str | None]]

LOG_TABLE_SQL = """
    CREATE TABLE ledger_log (
        position bigint PRIMARY KEY,
        card_id uuid NOT NULL,
        version bigint NOT NULL,
        occurred_at timestamptz NOT NULL,
        idempotency_key text,
        reference text,
        card_hash bytea NOT NULL,
        chain_hash bytea NOT NULL,
        UNIQUE (card_id, version)
    );
    CREATE INDEX ledger_log_occurred_at ON ledger_log (occurred_at);
    CREATE INDEX ledger_log_reference ON ledger_log (reference) WHERE reference IS NOT NULL;
"""

# LATERAL: one probe of the (card_id, version) index per card, whatever the table's size.
_PREVIOUS_HASHES_SQL = (
    "SELECT l.card_id, l.card_hash AS hash FROM json_to_recordset(%s) AS t(id uuid, v bigint)"
    " CROSS JOIN LATERAL (SELECT card_id, card_hash FROM ledger_log"
    "  WHERE card_id = t.id AND version = t.v LIMIT 1) l"
    " UNION ALL (SELECT NULL, chain_hash FROM ledger_log ORDER BY position DESC LIMIT 1)"
)
_LOG_COLUMNS = (
    ("position", "bigint"), ("card_id", "uuid"), ("version", "bigint"),
    ("occurred_at", "timestamptz"), ("idempotency_key", "text"), ("reference", "text"),
    ("card_hash", "text"), ("chain_hash", "text"),
)  # fmt: skip
# The hashes travel as hex in the JSON rows.
_INSERT_SQL = (
    "INSERT INTO ledger_log (position, card_id, version, occurred_at, idempotency_key,"  # noqa: S608
    " reference, card_hash, chain_hash) SELECT position, card_id, version, occurred_at,"
    " idempotency_key, reference, decode(card_hash, 'hex'), decode(chain_hash, 'hex')"
    f" FROM json_to_recordset(%s) AS r({record(_LOG_COLUMNS)})"
)
# Rows per round trip while adopting a log written before the chain existed.
ADOPT_BATCH_ROWS = 5_000


class _Timed(msgspec.Struct):
    occurred_at: dict[str, str] | None = None
    timestamp: dict[str, str] | None = None


_TIMED_DECODER = msgspec.json.Decoder(_Timed)


def occurred_at_of(state: bytes) -> datetime:
    """The event's business time, read straight from its stored JSON (no full decode)."""
    timed = _TIMED_DECODER.decode(state)
    stamp = timed.occurred_at or timed.timestamp
    assert stamp is not None, "every card event carries occurred_at or a timestamp"
    return datetime.fromisoformat(stamp["_data_"])


def ask_previous_hashes(curs: Cursor[DictRow], stored_events: Sequence[StoredEvent]) -> None:
    """Send the read of what the events chain onto: each card's hash before its first event
    here, and the log's last chain hash. The caller holds the event table's lock. In the
    writer's pipeline this read travels with the batch's inserts, so the log costs no round trip
    of its own; `write_log` reads the answer from this cursor."""
    firsts: dict[UUID, int] = {}
    for stored in stored_events:
        card_id = _uuid(stored.originator_id)
        version = stored.originator_version
        firsts[card_id] = min(version, firsts.get(card_id, version))
    wanted = [{"id": c, "v": version - 1} for c, version in firsts.items() if version > 1]
    curs.execute(_PREVIOUS_HASHES_SQL, (json_rows(wanted),))


def write_log(
    curs: Cursor[DictRow],
    stored_events: Sequence[StoredEvent],
    positions: Sequence[int],
    event_keys: EventKeys,
    asked: Cursor[DictRow] | None = None,
) -> None:
    """Chain and record the events just inserted; the caller holds the event table's lock.
    `asked` is the cursor `ask_previous_hashes` already sent the events' read on; without it,
    the read is made here."""
    assert len(stored_events) == len(positions)
    if asked is None:
        ask_previous_hashes(curs, stored_events)
        asked = curs
    placed = sorted(zip(positions, stored_events, strict=True), key=lambda p: p[0])
    previous: dict[UUID, bytes] = {}
    chain = GENESIS_HASH
    for row in asked.fetchall():
        if row["card_id"] is None:
            chain = bytes(row["hash"])
        else:
            previous[row["card_id"]] = bytes(row["hash"])
    rows: list[dict[str, Any]] = []
    for position, stored in placed:
        card_id = _uuid(stored.originator_id)
        version = stored.originator_version
        own = card_hash(previous.get(card_id, GENESIS_HASH), card_id, version, stored.topic,
                        stored.state)  # fmt: skip
        previous[card_id] = own
        chain = chain_hash(chain, position, own)
        idempotency_key, reference = event_keys.get((card_id, version), (None, None))
        rows.append({"position": position, "card_id": card_id, "version": version,
                     "occurred_at": occurred_at_of(stored.state),
                     "idempotency_key": idempotency_key, "reference": reference,
                     "card_hash": own.hex(), "chain_hash": chain.hex()})  # fmt: skip
    curs.execute(_INSERT_SQL, (json_rows(rows),))


def _log_has_rows(curs: Cursor[DictRow]) -> bool:
    curs.execute("SELECT EXISTS (SELECT 1 FROM ledger_log)")
    row = curs.fetchone()
    assert row is not None
    return bool(row["exists"])


def adopt_unchained_log(curs: Cursor[DictRow], events_table: str) -> int:
    """Chain a log written before the ledger log existed; returns the events chained.

    Only a log with no chain at all is adopted: once any row is chained, a missing row is
    evidence of tampering and must stay visible to `audit verify`, not be papered over.
    """
    # Every process start asks; only the first start of an old ledger needs the lock, which
    # would otherwise queue each start behind the writes in flight, and hold new ones back.
    if _log_has_rows(curs):
        return 0
    curs.execute(f"LOCK TABLE {events_table} IN EXCLUSIVE MODE")
    if _log_has_rows(curs):  # another process adopted it while this one waited
        return 0
    adopted = 0
    after = 0
    while True:
        curs.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state"  # noqa: S608
            f" FROM {events_table} WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
            (after, ADOPT_BATCH_ROWS),
        )
        batch = curs.fetchall()
        if not batch:
            return adopted
        stored = [
            StoredEvent(r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"]))
            for r in batch
        ]
        write_log(curs, stored, [r["notification_id"] for r in batch], {})
        adopted += len(batch)
        after = batch[-1]["notification_id"]


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)
