"""Shared fixtures: a real PostgreSQL (embedded or GIFTLEDGER_TEST_DATABASE_URL), app, clients."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import issue_token
from api.bootstrap import run_blocking
from api.settings import Settings
from projections.config import SCOPES, CardType, ConfigStore, pinned_signing_key
from projections.database import embedded_url, stop_embedded

TEST_JWT_SECRET = "test-secret-" + "x" * 40
TEST_SIGNING_KEY = pinned_signing_key(TEST_JWT_SECRET)
TEST_HOLD_TTL_SECONDS = 900


def with_database(url: str, name: str) -> str:
    """The server's URL naming another database; the query (an embedded socket folder) stays."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """The PostgreSQL server under test: this machine's when configured, else an embedded one."""
    configured = os.environ.get("GIFTLEDGER_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # A folder of its own, not pytest's tmp_path: pytest prunes old tmp folders, and a run in
    # parallel could prune the one a live server stands in.
    data_dir = Path(tempfile.mkdtemp(prefix="giftledger-test-pg-"))
    yield embedded_url(data_dir)
    stop_embedded(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    name = f"giftledger_test_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_blocking(admin(f'CREATE DATABASE "{name}"'))
    yield with_database(server_url, name)
    run_blocking(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=Path(tmp_path_factory.mktemp("data")),
        hold_ttl_seconds=TEST_HOLD_TTL_SECONDS,
        jwt_secret=TEST_JWT_SECRET,
        hold_sweep_interval_seconds=0.2,
    )


@pytest.fixture(scope="session")
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture(scope="session")
async def http(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    # HTTPS, as behind the TLS proxy: the test client's address is not loopback, and the token
    # endpoint refuses plain HTTP from elsewhere (tests/e2e/test_tls.py).
    async with AsyncTestClient(app=app, base_url="https://testserver.local") as client:
        yield client


@pytest.fixture(scope="session")
async def pool(database_url: str, http: AsyncTestClient[Litestar]) -> AsyncIterator[asyncpg.Pool]:
    """The tests' own pool on the database the app writes (after the app has migrated it)."""
    async with asyncpg.create_pool(database_url, min_size=1, max_size=4) as test_pool:
        yield test_pool


# In the lock order the app keeps (card rows, then the event table), so a sweep or write still
# in flight cannot deadlock with the truncation.
TABLES = (
    "card_views, card_holds, giftledger_events, giftledger_snapshots, idempotency_keys, ledger_log,"
    " locations, card_types, clients"
)


@dataclass(frozen=True)
class ApiClient:
    client_id: str
    consumer_key: str
    client_secret: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class World:
    """The configuration most tests start from."""

    config: ConfigStore
    pos: ApiClient
    other: ApiClient
    # Read-only roles: an auditor reads history and verifies; finance exports and reports.
    auditor: ApiClient
    finance: ApiClient

    async def client(self, name: str, scopes: tuple[str, ...] = SCOPES,
                     locations: tuple[str, ...] = ()) -> ApiClient:  # fmt: skip
        created = await self.config.create_client(name, scopes, locations)
        return ApiClient(
            created.client.client_id,
            created.client.consumer_key,
            created.client_secret,
            issue_token(TEST_SIGNING_KEY, created.client.client_id, 600),
        )


FIXED16 = CardType("fixed16", "", 16, "0123456789", True, True, True, 36, "EUR")
DYNAMIC19 = CardType("dynamic19", "", 19, "0123456789", False, True, False, 36, "EUR")
PREFIXED = CardType("gold", "77", 16, "0123456789", True, True, True, 12, "GBP")


TRUNCATE_ATTEMPTS_MAX = 5


async def _truncate(pool: asyncpg.Pool) -> None:
    """Empty the tables. The app's background sweep reads some tables in one statement whose
    locks PostgreSQL takes in its own order, so a truncation can still be picked as a deadlock
    victim; it is then rolled back whole, and done again."""
    for attempt in range(TRUNCATE_ATTEMPTS_MAX):
        try:
            await pool.execute(f"TRUNCATE {TABLES}")
            return
        except asyncpg.exceptions.DeadlockDetectedError:
            if attempt == TRUNCATE_ATTEMPTS_MAX - 1:
                raise


@pytest.fixture
async def world(pool: asyncpg.Pool, app: Litestar) -> World:
    """Empty ledger; locations SHOP1 (site 1) and SHOP2 (site 2); three card types; POS clients
    pos and other, and the read-only auditor and finance."""
    await _truncate(pool)
    app.state.service.forget_cached_cards()
    config = ConfigStore(pool)
    await config.add_location("SHOP1", 1, "Shop one")
    await config.add_location("SHOP2", 2, "Shop two")
    for card_type in (FIXED16, DYNAMIC19, PREFIXED):
        await config.add_card_type(card_type)
    scopes = ("cards:read", "cards:sell", "cards:redeem", "cards:reserve")
    empty = World(config, None, None, None, None)  # type: ignore[arg-type]
    return World(
        config,
        await empty.client("pos", scopes),
        await empty.client("other", scopes),
        await empty.client("auditor", ("cards:read", "audit:read")),
        await empty.client("finance", ("cards:read", "finance:export")),
    )
