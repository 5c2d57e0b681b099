"""The PostgreSQL server the benchmark runs on, its throwaway databases and ledger queries."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from projections.database import embedded_url, stop_embedded

BENCH_URL_VARIABLE = "GIFTLEDGER_BENCH_DATABASE_URL"
LOCAL_SERVER_URL = "postgresql://root@127.0.0.1:5432/test"
CONNECT_TIMEOUT_SECONDS = 3
DATABASE_PREFIX = "giftledger_bench_"
EVENTS_TABLE = "giftledger_events"
# Polls for writes that were in flight when wrk stopped, until the sum holds still.
SETTLE_POLL_SECONDS = 0.5
SETTLE_POLLS_MAX = 20
REDEEMED_AMOUNT = "(convert_from(state, 'UTF8')::jsonb->>'amount_minor')::bigint"
REDEEMED_SUM_SQL = (
    f"SELECT COALESCE(SUM({REDEEMED_AMOUNT}), 0) FROM {EVENTS_TABLE}"  # noqa: S608 - constants.
    " WHERE topic LIKE '%Card.Redeemed'"
)


@dataclass(frozen=True)
class Server:
    url: str
    label: str
    embedded_dir: Path | None = None


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def choose_server() -> Server:
    """GIFTLEDGER_BENCH_DATABASE_URL, else this machine's PostgreSQL, else an embedded one."""
    configured = os.environ.get(BENCH_URL_VARIABLE)
    if configured:
        return Server(configured, f"{BENCH_URL_VARIABLE}")
    if asyncio.run(_reachable(LOCAL_SERVER_URL)):
        return Server(LOCAL_SERVER_URL, "local PostgreSQL at 127.0.0.1:5432")
    data_dir = Path(tempfile.mkdtemp(prefix="giftledger-bench-pg-"))
    return Server(embedded_url(data_dir), "embedded PostgreSQL", data_dir)


def stop_server(server: Server) -> None:
    if server.embedded_dir is not None:
        stop_embedded(server.embedded_dir)
        shutil.rmtree(server.embedded_dir, ignore_errors=True)


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def server_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


@contextmanager
def fresh_database(server_url: str, suffix: str = "") -> Iterator[str]:
    """A new database on the server, dropped again however the block ends."""
    name = f"{DATABASE_PREFIX}{secrets.token_hex(4)}{suffix}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _redeemed_minor(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        total = await conn.fetchval(REDEEMED_SUM_SQL)
        return int(total)
    finally:
        await conn.close()


def redeemed_minor(url: str) -> int:
    """The sum of amount_minor over every Redeemed event in the ledger."""
    return asyncio.run(_redeemed_minor(url))


def settled_redeemed_minor(url: str) -> int:
    """The Redeemed sum once writes still in flight have landed (bounded wait)."""
    last = redeemed_minor(url)
    for _ in range(SETTLE_POLLS_MAX):
        time.sleep(SETTLE_POLL_SECONDS)
        now = redeemed_minor(url)
        if now == last:
            return now
        last = now
    return last
