"""Start-up steps shared by the server and the CLI: find the database, migrate, seed the demo."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from api.settings import Settings
from projections.config import (
    SCOPES,
    CardType,
    ConfigStore,
    SigningKey,
    ensure_signing_key,
    pinned_signing_key,
)
from projections.database import embedded_url
from projections.schema import migrate

T = TypeVar("T")
DEMO_CLIENT_FILE = "demo-client.json"
DEMO_LOCATION = ("SHOP1", 1, "Demo shop")
DEMO_CARD_TYPES = (
    CardType("fixed16", "", 16, "0123456789", True, True, True, 36, "EUR"),
    CardType("dynamic19", "", 19, "0123456789", False, True, False, 36, "EUR"),
)


def database_url(settings: Settings) -> str:
    return settings.database_url or embedded_url(settings.data_dir)


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def prepare_database(url: str, settings: Settings) -> None:
    """Migrate the schema and make sure a token signing key exists (shared by every process,
    unless settings.jwt_secret pins one)."""
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        await ensure_signing_key(conn)
    finally:
        await conn.close()


def pinned_key(settings: Settings) -> SigningKey | None:
    return pinned_signing_key(settings.jwt_secret) if settings.jwt_secret else None


async def seed_demo(url: str, data_dir: Path) -> dict[str, str] | None:
    """On the first start of an embedded database, create the demo set; return its client."""
    demo_file = data_dir / DEMO_CLIENT_FILE
    conn = await asyncpg.connect(url)
    try:
        first = await conn.fetchval(
            "INSERT INTO service_settings (key, value) VALUES ('demo_seeded', 'yes')"
            " ON CONFLICT DO NOTHING RETURNING key"
        )
        if first:
            config = ConfigStore(conn)
            await config.add_location(*DEMO_LOCATION)
            for card_type in DEMO_CARD_TYPES:
                await config.add_card_type(card_type)
            created = await config.create_client("demo", SCOPES)
            demo = {**asdict(created.client), "client_secret": created.client_secret}
            demo_file.write_text(json.dumps(demo, indent=2))
            demo_file.chmod(0o600)
    finally:
        await conn.close()
    return json.loads(demo_file.read_text()) if demo_file.exists() else None
