"""create_app(settings): the one place that wires the event store, projections and HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
import asyncpg
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from api.auth import ClientCache, jwt_auth, token_endpoint
from api.bootstrap import database_url, prepare_database, run_blocking
from api.errors import problem_details_plugin
from api.exports import exports_router
from api.giftstream import giftstream_router
from api.native import native_router
from api.resico import resico_router
from api.service import CardLedger, CardService, ledger_env
from api.settings import Settings
from api.sweeper import run_sweeper
from projections.cards import CardReader
from projections.config import ConfigStore
from projections.database import eventsourcing_env

READ_POOL_SIZE_MAX = 20
REQUEST_BODY_BYTES_MAX = 64 * 1024


@get("/health", tags=["ops"])
async def health(state: State) -> dict[str, str]:
    """Liveness and database reachability."""
    await state.pool.fetchval("SELECT 1")
    return {"status": "ok"}


@get("/ping", tags=["ops"], media_type="text/plain")
async def ping() -> str:
    """No I/O at all: the HTTP floor the benchmark compares every endpoint with."""
    return "pong"


def _from_state(name: str) -> Provide:
    def provide(state: State) -> Any:
        return state[name]

    return Provide(provide, sync_to_thread=False)


DEPENDENCIES = {name: _from_state(name) for name in ("service", "config", "reader", "settings")}


def create_app(settings: Settings) -> Litestar:
    url = database_url(settings)
    jwt_secret = run_blocking(prepare_database(url, settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=READ_POOL_SIZE_MAX)
        ledger = await anyio.to_thread.run_sync(
            lambda: CardLedger(env=ledger_env(eventsourcing_env(url)))
        )
        await anyio.to_thread.run_sync(ledger.adopt_unchained_log)
        service = CardService(
            ledger,
            settings.hold_ttl_seconds,
            batch_size_max=settings.batch_size_max,
            batch_linger_seconds=settings.batch_linger_ms / 1000,
        )
        config = ConfigStore(pool)
        reader = CardReader(pool)
        app.state.update(
            pool=pool, service=service, config=config, reader=reader, settings=settings,
            clients=ClientCache(config), jwt_secret=jwt_secret,
        )  # fmt: skip
        sweeper = asyncio.create_task(
            run_sweeper(reader, service, settings.hold_sweep_interval_seconds)
        )
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await anyio.to_thread.run_sync(service.close)
            await pool.close()
            ledger.close()

    return Litestar(
        route_handlers=[
            health,
            ping,
            token_endpoint,
            resico_router(DEPENDENCIES),
            giftstream_router(DEPENDENCIES),
            native_router(DEPENDENCIES),
            exports_router(DEPENDENCIES),
        ],
        lifespan=[lifespan],
        on_app_init=[jwt_auth(jwt_secret).on_app_init],
        plugins=[problem_details_plugin()],
        request_max_body_size=REQUEST_BODY_BYTES_MAX,
        openapi_config=OpenAPIConfig(
            title="giftledger",
            version="0.1.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(path="/"), ScalarRenderPlugin(path="/scalar")],
        ),
    )


def app_from_env() -> Litestar:
    """The uvicorn factory: settings are read from the environment exactly once, here."""
    return create_app(Settings.from_env())
