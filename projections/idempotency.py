"""Stored answers of idempotent writes, kept beside the events they produced."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from psycopg import Cursor
from psycopg.rows import DictRow

# Keys are kept at least this long; a sweep deletes older ones.
IDEMPOTENCY_RETENTION_HOURS = 72

INSERT_SQL = (
    "INSERT INTO idempotency_keys"
    " (scope, key, request_hash, status_code, response_body, media_type)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
# LATERAL with LIMIT (which keeps the planner from flattening it): one probe of the primary key
# per key asked for, however big the table; a semi-join may be planned as a sequential scan.
SELECT_SQL = (
    "SELECT i.scope, i.key, i.request_hash, i.status_code, i.response_body, i.media_type"
    " FROM unnest(%b::text[], %b::text[]) AS t(scope, key) CROSS JOIN LATERAL"
    " (SELECT * FROM idempotency_keys WHERE scope = t.scope AND key = t.key LIMIT 1) i"
)


def write_idempotency_rows(curs: Cursor[DictRow], rows: Sequence[tuple[Any, ...]]) -> None:
    if rows:
        curs.executemany(INSERT_SQL, rows)


def select_stored(
    curs: Cursor[DictRow], keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    if not keys:
        return {}
    curs.execute(SELECT_SQL, ([s for s, _ in keys], [k for _, k in keys]))
    return {(row["scope"], row["key"]): row for row in curs.fetchall()}


async def purge_expired_keys(pool: asyncpg.Pool) -> int:
    """Delete keys older than the retention; returns how many went."""
    status = await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
        IDEMPOTENCY_RETENTION_HOURS,
    )
    return int(str(status).rsplit(" ", 1)[-1])
