"""The writer's per-batch reads stay index probes however big the ledger grows.

A plain join of a batch's unnested card ids with the event table was planned as a sequential scan
of the whole table: every batch then cost time in proportion to the ledger's size. Here each
query is planned against tables that hold many cards, and its plan may not scan a table whole.
"""

from __future__ import annotations

import json
import re
import uuid

import anyio.to_thread
import asyncpg
import pytest
from litestar import Litestar

from api.service import NOT_CACHED, fresh_cards_sql
from projections.idempotency import SELECT_SQL as STORED_ANSWERS_SQL
from projections.log import _PREVIOUS_HASHES_SQL as PREVIOUS_HASHES_SQL

CARDS = 5_000
VERSIONS_PER_CARD = 10
BATCH_CARDS = 40
EVENTS = "giftledger_events"
SNAPSHOTS = "giftledger_snapshots"


async def fill(pool: asyncpg.Pool, analyze: bool) -> list[uuid.UUID]:
    """Many cards' worth of events, snapshots, log rows and stored answers."""
    card_ids = [uuid.uuid4() for _ in range(CARDS)]
    async with pool.acquire() as conn:
        for table in (EVENTS, SNAPSHOTS):
            await conn.execute(
                f"INSERT INTO {table} (originator_id, originator_version, topic, state)"
                " SELECT id, v, 'bench:Event', '{}'::bytea FROM unnest($1::uuid[]) AS id,"
                " generate_series(1, $2) AS v",
                card_ids, VERSIONS_PER_CARD,
            )  # fmt: skip
        await conn.execute(
            "INSERT INTO ledger_log (position, card_id, version, occurred_at, card_hash,"
            " chain_hash) SELECT row_number() OVER (), id, v, now(), '\\x00', '\\x00'"
            " FROM unnest($1::uuid[]) AS id, generate_series(1, $2) AS v",
            card_ids, VERSIONS_PER_CARD,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO idempotency_keys (scope, key, request_hash, status_code,"
            " response_body, media_type) SELECT 'client', id::text, 'h', 200, '\\x00', 'json'"
            " FROM unnest($1::uuid[]) AS id",
            card_ids,
        )
        for table in (EVENTS, SNAPSHOTS, "ledger_log", "idempotency_keys") if analyze else ():
            await conn.execute(f"ANALYZE {table}")
    return card_ids


async def plan(pool: asyncpg.Pool, sql: str, *args: object) -> str:
    """EXPLAIN of a psycopg-style query (%s or %b placeholders), run through asyncpg ($n)."""
    numbered = sql
    for n in range(1, len(args) + 1):
        numbered = re.sub("%[sb]", f"${n}", numbered, count=1)
    rows = await pool.fetch(f"EXPLAIN {numbered}", *args)
    return "\n".join(row[0] for row in rows)


# Planned both before statistics caught up with the tables' growth (as between two autovacuum
# runs; the sequential scan was seen so) and after.
@pytest.fixture(params=[False, True], ids=["stale-statistics", "analyzed"])
async def batch(request, world, pool: asyncpg.Pool) -> list[uuid.UUID]:
    card_ids = await fill(pool, analyze=request.param)
    return card_ids[:: CARDS // BATCH_CARDS]


def rows(**columns: list[object]) -> str:
    """Parallel columns as the JSON rows the writer sends (projections.params.json_rows)."""
    names = list(columns)
    return json.dumps([dict(zip(names, values, strict=True))
                       for values in zip(*columns.values(), strict=True)], default=str)  # fmt: skip


@pytest.mark.parametrize("version", [5, NOT_CACHED], ids=["cached", "not-cached"])
async def test_the_read_of_a_batchs_cards_probes_the_event_and_snapshot_indexes(
    pool, batch, version
):
    text = await plan(
        pool, fresh_cards_sql(EVENTS, SNAPSHOTS), rows(id=batch, v=[version] * len(batch))
    )
    assert f"Seq Scan on {EVENTS}" not in text, text
    assert f"Seq Scan on {SNAPSHOTS}" not in text, text


async def test_the_previous_hashes_of_a_batch_probe_the_log_index(pool, batch):
    text = await plan(pool, PREVIOUS_HASHES_SQL, rows(id=batch, v=[5] * len(batch)))
    assert "Seq Scan on ledger_log" not in text, text


async def test_stored_answers_are_looked_up_by_key(pool, batch):
    keys = [str(card_id) for card_id in batch]
    text = await plan(pool, STORED_ANSWERS_SQL, ["client"] * len(keys), keys)
    assert "Seq Scan on idempotency_keys" not in text, text


async def test_the_event_store_never_compiles_a_statement_with_jit(app: Litestar, world):
    """Past jit_above_cost PostgreSQL compiles a statement before running it: the read of a
    batch's cards crossed it as the ledger grew, and then spent 20-30 ms compiling a read that
    runs in under one (projections/recorder.py STORE_SESSION_OPTIONS)."""
    datastore = app.state.service.ledger.recorder.datastore

    def settings() -> list[str]:
        # Several connections at once, so that the pool opens more than the one it reuses.
        with datastore.get_connection() as first, datastore.get_connection() as second:
            return [conn.execute("SHOW jit").fetchone()["jit"] for conn in (first, second)]

    assert await anyio.to_thread.run_sync(settings) == ["off", "off"]
