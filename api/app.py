"""create_app(settings): the one place that wires the event store, projections and HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
import asyncpg
from litestar import Litestar, Request, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from api import metrics
from api.auth import ClientCache, KeyCache, jwt_auth, token_endpoint
from api.authz import authorize
from api.bootstrap import database_url, pinned_key, prepare_database, run_blocking
from api.errors import problem_details_plugin
from api.exports import exports_router
from api.giftstream import giftstream_router
from api.health import check_durability, live, ready
from api.limits import AbuseLimitMiddleware, AbuseLimits
from api.logs import litestar_logging_config
from api.metrics import MetricsController, prometheus_config
from api.native import native_router
from api.openapi import refine_openapi
from api.reconcile import reconcile_router
from api.redaction import install_log_redaction
from api.replica import ReadRouting, read_your_writes_middleware
from api.reports import reports_router
from api.request_context import RequestContextMiddleware
from api.resico import resico_router
from api.service import CardLedger, CardService, open_ledger, service_for
from api.settings import Settings
from api.sweeper import run_sweeper
from api.tracing import name_server_span, tracing_plugin
from api.writer_process import RemoteCardService, WriterClient
from projections.cards import CardReader
from projections.config import ConfigStore

READ_POOL_SIZE_MAX = 20
# Allocations between two young-generation collections in a served process (CPython's default
# is 700). Each request allocates thousands of objects, so at the default the collector ran
# every few requests, and its older-generation passes over the cached cards stalled the event
# loop. Measured under wrk at 64 connections: pay's p99 fell from about 150 ms to 60 ms.
GC_GEN0_THRESHOLD = 50_000
# How long a served process's thread may keep the GIL while another waits for it (CPython's
# default is 5 ms). The ledger writer gives up the GIL at each of a batch's waits on PostgreSQL
# and then queues behind the event loop for it. `make bench` measures a batch of 30 payments
# beside a thread that never blocks, as the event loop under load (bench/writer.py); in one
# run, 84 ms a batch at 5 ms, 23 ms at 1 ms, 8 ms alone. Under wrk at 64 connections, pay
# gained about a tenth at 1 worker; at 2 workers, where the cores are full anyway, the
# difference was within the host's noise.
GIL_SWITCH_INTERVAL_SECONDS = 0.001
# Every body this service takes is a few hundred bytes. A route that takes files sets its own
# larger `request_max_body_size`; this is the limit everywhere else (413 beyond it).
REQUEST_BODY_BYTES_MAX = 16 * 1024


@get("/health", tags=["ops"])
async def health(state: State) -> dict[str, str]:
    """Liveness and database reachability."""
    await state.pool.fetchval("SELECT 1")
    return {"status": "ok"}


@get("/ping", tags=["ops"], media_type="text/plain")
async def ping() -> str:
    """No I/O at all: the HTTP floor the benchmark compares every endpoint with."""
    return "pong"


# The app's singletons, handed to handlers by name. Litestar resolves the dependencies of one
# level together in a new task group, which cost a payment a sixth of its event-loop time; so
# each provider below names the one before it (and ignores it), every level holds one, and
# Litestar awaits each inline. They read the app's state through the request: a provider that
# asked for `state` would get a fresh copy of the whole state for each call.
def _service(request: Request[Any, Any, Any]) -> CardService:
    return request.app.state.service


def _config(request: Request[Any, Any, Any], service: CardService) -> ConfigStore:
    return request.app.state.config


def _reader(request: Request[Any, Any, Any], config: ConfigStore) -> CardReader:
    return request.app.state.reader


def _settings(request: Request[Any, Any, Any], reader: CardReader) -> Settings:
    return request.app.state.settings


def _routing(request: Request[Any, Any, Any], settings: Settings) -> ReadRouting:
    return request.app.state.routing


DEPENDENCIES = {
    name: Provide(provider, sync_to_thread=False)
    for name, provider in (
        ("service", _service), ("config", _config), ("reader", _reader),
        ("settings", _settings), ("routing", _routing),
    )
}  # fmt: skip


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pools' reset on release, in place of asyncpg's reset query (advisory unlocks, CLOSE
    ALL, UNLISTEN, RESET ALL), a round trip that cost every card read as much PostgreSQL CPU as
    the read itself. asyncpg still rolls back a transaction left open before calling this.
    Nothing else needs undoing: the service takes only transaction-scoped locks and settings
    (pg_advisory_xact_lock, SET LOCAL), its cursors live in transactions, and it never LISTENs."""


def tune_runtime() -> None:
    """For a served process, once it has started: what exists now lives as long as the process,
    so it is frozen out of every future collection, and young collections are made rarer; and
    the writer thread waits less for the GIL."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, older, oldest)


def new_service(ledger: CardLedger, settings: Settings) -> CardService:
    """With `giftledger serve`'s writer process, commands go there; otherwise to a writer
    thread of this process."""
    if settings.writer_socket:
        client = WriterClient(settings.writer_socket)
        return RemoteCardService(ledger, settings.hold_ttl_seconds, client)
    return service_for(ledger, settings)


def create_app(settings: Settings, served: bool = False) -> Litestar:
    """`served` is for the process that serves HTTP (not tests): its garbage collector and GIL
    switching are tuned once the app has started."""
    url = database_url(settings)
    run_blocking(prepare_database(url, settings))
    install_log_redaction()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=READ_POOL_SIZE_MAX, reset=keep_session
        )
        await check_durability(pool, settings.allow_unsafe_durability)
        replica = None
        if settings.read_database_url:
            replica = await asyncpg.create_pool(
                settings.read_database_url, min_size=1, max_size=READ_POOL_SIZE_MAX,
                reset=keep_session,
            )  # fmt: skip
        ledger = await anyio.to_thread.run_sync(lambda: open_ledger(url, settings.card_cache_size))
        await anyio.to_thread.run_sync(ledger.adopt_unchained_log)
        service = new_service(ledger, settings)
        config = ConfigStore(pool)
        reader = CardReader(pool)
        app.state.update(
            pool=pool, service=service, config=config, reader=reader, settings=settings,
            clients=ClientCache(config), signing_keys=KeyCache(config, pinned_key(settings)),
            routing=ReadRouting(pool, replica),
        )  # fmt: skip
        sweeper = asyncio.create_task(
            run_sweeper(reader, service, settings.hold_sweep_interval_seconds)
        )
        background = [sweeper]
        if isinstance(service, RemoteCardService):
            client = service.client
            metrics.export_writer_metrics(lambda: client.writer_families)
            background.append(asyncio.create_task(client.refresh_metrics()))
        if served:
            tune_runtime()
        try:
            yield
        finally:
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await anyio.to_thread.run_sync(service.close)
            await pool.close()
            if replica is not None:
                await replica.close()
            ledger.close()

    app = Litestar(
        route_handlers=[
            health,
            live,
            ready,
            ping,
            MetricsController,
            token_endpoint,
            resico_router(DEPENDENCIES),
            giftstream_router(DEPENDENCIES),
            native_router(DEPENDENCIES),
            reports_router(),
            reconcile_router(),
            exports_router(DEPENDENCIES),
        ],
        lifespan=[lifespan],
        on_app_init=[jwt_auth().on_app_init],
        # The one authorisation check: every route's rule is in api/authz.py (deny by default).
        guards=[authorize],
        plugins=[problem_details_plugin(), *([tracing_plugin()] if settings.otel_enabled else [])],
        logging_config=litestar_logging_config(settings),
        # Metrics outermost, so refusals by the limits are counted too. The limits run after
        # authentication (which on_app_init puts first), so they know the client.
        middleware=[
            prometheus_config().middleware,
            AbuseLimitMiddleware(AbuseLimits(settings)),
            read_your_writes_middleware,
        ],
        request_max_body_size=REQUEST_BODY_BYTES_MAX,
        openapi_config=OpenAPIConfig(
            title="giftledger",
            version="0.1.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(path="/"), ScalarRenderPlugin(path="/scalar")],
        ),
    )
    # Around everything Litestar does, so even a path no route matches gets its request id.
    app.asgi_handler = RequestContextMiddleware(
        app.asgi_handler, name_server_span if settings.otel_enabled else None
    )
    refine_openapi(app)
    return app


def app_from_env() -> Litestar:
    """The uvicorn factory: settings are read from the environment exactly once, here."""
    return create_app(Settings.from_env(), served=True)
