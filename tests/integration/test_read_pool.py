"""The read pools skip asyncpg's reset query on release (api.app.keep_session); what must still
be undone, is."""

from __future__ import annotations

import asyncpg

from api.app import keep_session


async def test_a_connection_released_inside_a_transaction_comes_back_outside_it(database_url):
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1, reset=keep_session)
    try:
        conn = await pool.acquire()
        await conn.execute("BEGIN")
        await conn.execute("SET LOCAL statement_timeout = '1234ms'")
        await conn.execute("SELECT pg_advisory_xact_lock(424242)")
        await pool.release(conn)

        async with pool.acquire() as again:
            assert not again.is_in_transaction()
            assert await again.fetchval("SHOW statement_timeout") != "1234ms"
            held = (
                "SELECT count(*) FROM pg_locks"
                " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            assert await again.fetchval(held) == 0
    finally:
        await pool.close()
