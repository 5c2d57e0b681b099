"""The schema beside the event store, created and migrated automatically at start-up."""

from __future__ import annotations

import asyncpg

from projections.log import LOG_TABLE_SQL

# Migrations only ever append; each runs once, in order, under an advisory lock, so several
# workers or instances starting together migrate exactly once.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE locations (
        code text PRIMARY KEY,
        site_id integer NOT NULL UNIQUE,
        name text NOT NULL DEFAULT ''
    );
    CREATE TABLE card_types (
        name text PRIMARY KEY,
        prefix text NOT NULL DEFAULT '',
        length integer NOT NULL,
        allowed_chars text NOT NULL DEFAULT '0123456789',
        fixed_amount boolean NOT NULL,
        redeem_allowed boolean NOT NULL DEFAULT true,
        reservations_allowed boolean NOT NULL,
        validity_months integer NOT NULL DEFAULT 36,
        currency text NOT NULL
    );
    CREATE TABLE clients (
        client_id text PRIMARY KEY,
        name text NOT NULL,
        secret_hash text NOT NULL,
        consumer_key text NOT NULL UNIQUE,
        scopes text[] NOT NULL,
        locations text[] NOT NULL DEFAULT '{}',
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz
    );
    CREATE TABLE service_settings (
        key text PRIMARY KEY,
        value text NOT NULL
    );
    CREATE SEQUENCE card_ref_seq START 1000;
    CREATE TABLE card_views (
        card_id uuid PRIMARY KEY,
        number text NOT NULL UNIQUE,
        ref bigint NOT NULL,
        card_type text NOT NULL,
        currency text NOT NULL,
        original_minor bigint NOT NULL,
        balance_minor bigint NOT NULL CHECK (balance_minor >= 0),
        reserved_minor bigint NOT NULL CHECK (reserved_minor >= 0),
        status text NOT NULL,
        fixed_amount boolean NOT NULL,
        redeem_allowed boolean NOT NULL,
        reservations_allowed boolean NOT NULL,
        location_code text,
        locked_site_id integer,
        expires_on date,
        presentation integer,
        version integer NOT NULL,
        CHECK (reserved_minor <= balance_minor)
    );
    CREATE TABLE card_holds (
        hold_id text PRIMARY KEY,
        card_id uuid NOT NULL,
        client_id text NOT NULL,
        amount_minor bigint NOT NULL CHECK (amount_minor > 0),
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX card_holds_card_id ON card_holds (card_id);
    CREATE INDEX card_holds_expires_at ON card_holds (expires_at);
    """,
    """
    CREATE TABLE idempotency_keys (
        scope text NOT NULL,
        key text NOT NULL,
        request_hash text NOT NULL,
        status_code integer NOT NULL,
        response_body bytea NOT NULL,
        media_type text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (scope, key)
    );
    CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
    """,
    LOG_TABLE_SQL,
    # Token signing keys, named by kid; the newest signs. The single secret kept before is
    # dropped: tokens it signed carry no kid and are refused anyway.
    """
    CREATE TABLE signing_keys (
        seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
        kid text PRIMARY KEY,
        secret text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    DELETE FROM service_settings WHERE key = 'jwt_secret';
    """,
    # A client's own rate limit; NULL takes the service-wide default.
    """
    ALTER TABLE clients
        ADD COLUMN rate_per_second double precision CHECK (rate_per_second > 0),
        ADD COLUMN rate_burst integer CHECK (rate_burst >= 1);
    """,
)

# "gift" in hex: the advisory lock under which the schema changes, ours (migrate) and the event
# store's (api.service.open_ledger), so two processes never change it at once.
SCHEMA_LOCK_KEY = 0x6769667400


async def migrate(conn: asyncpg.Connection) -> int:
    """Apply the migrations this database has not seen; returns how many were applied."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        for version, statement in enumerate(MIGRATIONS, start=1):
            if version > done:
                await conn.execute(statement)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
        return len(MIGRATIONS) - int(done)
