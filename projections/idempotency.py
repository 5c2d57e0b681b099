"""Stored answers of idempotent writes, kept beside the events they produced."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from psycopg import Cursor
from psycopg.rows import DictRow

from projections.params import json_records

# Keys are kept at least this long; a sweep deletes older ones.
IDEMPOTENCY_RETENTION_HOURS = 72

_INSERT_COLUMNS = ("scope", "key", "request_hash", "status_code", "response_body", "media_type")
# The rows as JSON, their bodies in base64.
INSERT_SQL = (
    "INSERT INTO idempotency_keys"
    " (scope, key, request_hash, status_code, response_body, media_type)"
    " SELECT scope, key, request_hash, status_code, decode(response_body, 'base64'), media_type"
    " FROM json_to_recordset(%s) AS r(scope text, key text, request_hash text,"
    " status_code integer, response_body text, media_type text)"
)
# LATERAL with LIMIT (which keeps the planner from flattening it): one probe of the primary key
# per key asked for, however big the table; a semi-join may be planned as a sequential scan.
SELECT_SQL = (
    "SELECT i.scope, i.key, i.request_hash, i.status_code, i.response_body, i.media_type"
    " FROM unnest(%b::text[], %b::text[]) AS t(scope, key) CROSS JOIN LATERAL"
    " (SELECT * FROM idempotency_keys WHERE scope = t.scope AND key = t.key LIMIT 1) i"
)


def write_idempotency_rows(curs: Cursor[DictRow], rows: Sequence[tuple[Any, ...]]) -> None:
    """Store the batch's answers. This insert fails when another process stored one of the keys
    first, so it is never prepared: see CardLedgerRecorder._insert_stored_events."""
    if rows:
        curs.execute(INSERT_SQL, (json_records(_INSERT_COLUMNS, rows),), prepare=False)


def select_stored(
    curs: Cursor[DictRow], keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    if not keys:
        return {}
    curs.execute(SELECT_SQL, ([s for s, _ in keys], [k for _, k in keys]))
    return {(row["scope"], row["key"]): row for row in curs.fetchall()}


# Expired keys are deleted this many per statement, each its own short transaction: an hour's
# keys at a few hundred writes a second are a million rows, and one DELETE of them all held one
# transaction open for seconds (and the vacuum horizon with it) and wrote its WAL in one burst.
PURGE_BATCH_ROWS = 10_000
# SKIP LOCKED: every worker's sweeper purges; at once, they share the rows instead of queueing
# on each other's row locks.
PURGE_SQL = (
    "DELETE FROM idempotency_keys WHERE (scope, key) IN"
    " (SELECT scope, key FROM idempotency_keys"
    "  WHERE created_at < now() - make_interval(hours => $1)"
    "  LIMIT $2 FOR UPDATE SKIP LOCKED)"
)


async def purge_expired_keys(pool: asyncpg.Pool, batch_rows: int = PURGE_BATCH_ROWS) -> int:
    """Delete keys older than the retention, batch_rows per transaction; returns how many went."""
    purged = 0
    while True:
        status = await pool.execute(PURGE_SQL, IDEMPOTENCY_RETENTION_HOURS, batch_rows)
        deleted = int(str(status).rsplit(" ", 1)[-1])
        purged += deleted
        if deleted < batch_rows:
            return purged
