"""Operator commands for deployments: `giftledger migrate` (the Kubernetes migration Job)."""

from __future__ import annotations

import asyncio

import asyncpg
import click

from api.bootstrap import database_url
from api.settings import Settings
from projections.schema import MIGRATIONS, migrate


@click.command("migrate")
def migrate_command() -> None:
    """Apply the schema migrations this database has not seen (safe to run concurrently)."""
    url = database_url(Settings.from_env())

    async def run() -> int:
        conn = await asyncpg.connect(url)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    applied = asyncio.run(run())
    click.echo(f"applied {applied} migrations; schema version {len(MIGRATIONS)}")
