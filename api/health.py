"""Liveness, readiness and the start-up durability check."""

from __future__ import annotations

import logging

import asyncpg
from litestar import get
from litestar.datastructures import State

from api.context import utc_now
from api.errors import ApiError
from projections.database import DURABILITY_SETTINGS, unsafe_durability
from projections.schema import MIGRATIONS

logger = logging.getLogger("giftledger.health")

READY_PROJECTION_LAG_SECONDS_MAX = 5.0


@get("/health/live", tags=["ops"])
async def live() -> dict[str, str]:
    """The process serves requests; no I/O, so a slow database never restarts healthy pods."""
    return {"status": "live"}


@get("/health/ready", tags=["ops"])
async def ready(state: State) -> dict[str, object]:
    """Ready for traffic: the database answers and its schema is the one this code expects,
    the ledger writer takes commands, and the card projection does not trail the log by more
    than a few seconds (it is written in each event's own transaction, so it trails only when
    something damaged it).
    """
    try:
        version = await state.pool.fetchval("SELECT max(version) FROM schema_migrations")
    except (OSError, asyncpg.PostgresError) as exc:
        raise ApiError(
            "not_ready", 503, f"the database is unreachable: {type(exc).__name__}"
        ) from None
    if version != len(MIGRATIONS):
        raise ApiError("not_ready", 503, f"schema version {version}, expected {len(MIGRATIONS)}")
    writer_problem = await state.service.writer_problem()
    if writer_problem is not None:
        raise ApiError("not_ready", 503, writer_problem)
    lag_events, lag_seconds = await state.reader.projection_lag(utc_now())
    if lag_seconds > READY_PROJECTION_LAG_SECONDS_MAX:
        raise ApiError("not_ready", 503, f"the card projection trails by {lag_events} events")
    return {"status": "ready", "schema_version": version, "projection_lag_events": lag_events}


async def check_durability(pool: asyncpg.Pool, allow_unsafe: bool) -> None:
    """Refuse to start on a server that could lose acknowledged commits, unless told to."""
    values = {name: await pool.fetchval(f"SHOW {name}") for name in DURABILITY_SETTINGS}
    problems = unsafe_durability(values)
    if not problems:
        return
    message = f"PostgreSQL could lose acknowledged writes: {', '.join(problems)}"
    if allow_unsafe:
        logger.warning("%s (allowed by GIFTLEDGER_ALLOW_UNSAFE_DURABILITY)", message)
        return
    raise RuntimeError(f"{message}; fix the server or set GIFTLEDGER_ALLOW_UNSAFE_DURABILITY=1")
