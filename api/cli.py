"""The `giftledger` command: the operator contract (serve, configuration, tokens, projections)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from typing import Any, TypeVar

import asyncpg
import click

from api import cli_audit, cli_ops
from api.authz import ROLES, matrix_markdown, matrix_text
from api.bootstrap import database_url, pinned_key, prepare_database, seed_demo
from api.cli_finance import export_command
from api.cli_reconcile import reconcile_command
from api.settings import Settings
from ledger.errors import LedgerError
from projections.config import (
    DEFAULT_ALLOWED_CHARS,
    DEFAULT_CLIENT_SCOPES,
    SCOPES,
    CardType,
    ConfigStore,
    SigningKey,
)

T = TypeVar("T")

# How long uvicorn's supervisor waits for a worker to answer its health ping before it kills and
# replaces the worker. uvicorn's 5 s is shorter than a worker's start on a loaded two-core host:
# it killed workers that were only starting, or busy, and dropped the requests they held.
WORKER_HEALTHCHECK_SECONDS = 60


def _settings() -> Settings:
    return Settings.from_env()


def _with_config(action: Callable[[ConfigStore], Awaitable[T]]) -> T:
    """Run one configuration action against a migrated database."""
    settings = _settings()
    url = database_url(settings)

    async def run() -> T:
        await prepare_database(url, settings)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
        try:
            return await action(ConfigStore(pool))
        except asyncpg.UniqueViolationError as exc:
            raise click.ClickException(f"already exists: {exc.detail or exc}") from None
        except LedgerError as exc:
            raise click.ClickException(exc.detail) from None
        finally:
            await pool.close()

    return asyncio.run(run())


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


@click.group()
def main() -> None:
    """giftledger: an event-sourced gift-card ledger."""


main.add_command(reconcile_command)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@click.option(
    "--worker-healthcheck-timeout", default=WORKER_HEALTHCHECK_SECONDS, show_default=True,
    type=click.IntRange(1, 3600),
    help="Seconds a worker may take to answer the supervisor before it is killed and replaced.",
)  # fmt: skip
@click.option(
    "--forwarded-allow-ips", default=None,
    help="Proxies whose X-Forwarded-For/-Proto are trusted (uvicorn's; default 127.0.0.1, or"
    " FORWARDED_ALLOW_IPS). The token endpoint needs HTTPS, so TLS proxies must be listed.",
)  # fmt: skip
def serve(
    host: str,
    port: int,
    workers: int,
    access_log: bool,
    worker_healthcheck_timeout: int,
    forwarded_allow_ips: str | None,
) -> None:
    """Serve the HTTP API (embedded PostgreSQL when GIFTLEDGER_DATABASE_URL is unset)."""
    import uvicorn

    from api.logs import logging_dict
    from api.tracing import TracingUnavailableError, check_tracing_available

    if not access_log:
        # The workers read their settings from the environment; our access log replaces
        # uvicorn's, so the flag reaches it this way.
        os.environ["GIFTLEDGER_ACCESS_LOG"] = "0"
    settings = _settings()
    if settings.otel_enabled:
        # Here as well as in each worker: refuse before the database starts, not after.
        try:
            check_tracing_available()
        except TracingUnavailableError as exc:
            raise click.ClickException(str(exc)) from None
    url = database_url(settings)
    asyncio.run(prepare_database(url, settings))
    demo = asyncio.run(seed_demo(url, settings.data_dir)) if settings.seed_demo else None
    # Workers inherit the resolved URL; this process owns the embedded server and stops it on exit.
    os.environ["GIFTLEDGER_DATABASE_URL"] = url
    if demo:
        _print_demo(demo, host, port)
    _exit_cleanly_on_signals()
    with writer_process(settings, url):
        uvicorn.run(
            "api.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_worker_healthcheck=worker_healthcheck_timeout,
            # uvicorn configures logging in this process and in each worker with this dictionary,
            # so its own lines come out in the service's format too.
            log_config=logging_dict(settings),
            access_log=False,
            proxy_headers=True,
            forwarded_allow_ips=forwarded_allow_ips,
        )


@contextlib.contextmanager
def writer_process(settings: Settings, url: str) -> Iterator[None]:
    """With GIFTLEDGER_WRITER=process, one ledger writer process for every worker, on a socket
    in a private directory; the workers find it in GIFTLEDGER_WRITER_SOCKET. It stops last."""
    if settings.writer_mode != "process":
        yield
        return
    from api.writer_process import WriterSupervisor

    with tempfile.TemporaryDirectory(prefix="giftledger-writer-") as directory:
        os.chmod(directory, 0o700)
        supervisor = WriterSupervisor(settings, url, directory)
        supervisor.start()
        os.environ["GIFTLEDGER_WRITER_SOCKET"] = supervisor.path
        try:
            yield
        finally:
            supervisor.stop()


def _exit_cleanly_on_signals() -> None:
    """Turn SIGTERM and SIGINT into a normal exit, so the embedded PostgreSQL is stopped.

    uvicorn shuts down gracefully, then re-raises the signal it caught against the handler that
    was installed before it; with the default handler the process would die without running
    its exit hooks, leaving the private database server behind.
    """

    def leave(signum: int, _frame: object) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)


def _print_demo(demo: dict[str, Any], host: str, port: int) -> None:
    base = f"http://{host}:{port}"
    click.echo("Demo client (from the embedded database's first start):")
    click.echo(f"  client_id     {demo['client_id']}")
    click.echo(f"  client_secret {demo['client_secret']}")
    click.echo(f"  consumer_key  {demo['consumer_key']}")
    click.echo("Try it:")
    click.echo(
        f"  TOKEN=$(curl -s {base}/oauth/token -d grant_type=client_credentials"
        f" -d client_id={demo['client_id']} -d client_secret={demo['client_secret']}"
        " | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    )
    click.echo(
        f"  curl -s -X POST {base}/api/giftcards/v1/cards/1234567812345678"
        " -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json'"
        ' -d \'{"amount": 25.00, "transactionNo": "00000001", "locationCode": "SHOP1"}\''
    )
    click.echo(f"  OpenAPI UI: {base}/schema")


@main.group()
def locations() -> None:
    """Locations where cards are sold and used."""


@locations.command("add")
@click.argument("code")
@click.option("--site-id", required=True, type=int)
@click.option("--name", default="")
def locations_add(code: str, site_id: int, name: str) -> None:
    location = _with_config(lambda c: c.add_location(code, site_id, name))
    click.echo(json.dumps(asdict(location)))


@locations.command("list")
def locations_list() -> None:
    for location in _with_config(lambda c: c.locations()):
        click.echo(json.dumps(asdict(location)))


@main.group("card-types")
def card_types() -> None:
    """Card types: number format, amounts, reservations, validity and currency."""


@card_types.command("add")
@click.argument("name")
@click.option("--length", required=True, type=click.IntRange(1, 256))
@click.option("--prefix", default="")
@click.option("--chars", default=DEFAULT_ALLOWED_CHARS, show_default=True,
              help="Characters allowed in card numbers.")  # fmt: skip
@click.option("--dynamic", is_flag=True, help="Loadable, not fixed-amount, no reservations.")
@click.option("--no-reservations", is_flag=True)
@click.option("--no-redeem", is_flag=True, help="Cards of this type cannot be used to pay.")
@click.option("--currency", default="EUR", show_default=True)
@click.option("--validity-months", default=36, show_default=True, type=click.IntRange(0, 1200))
def card_types_add(
    name: str, length: int, prefix: str, chars: str, dynamic: bool, no_reservations: bool,
    no_redeem: bool, currency: str, validity_months: int,
) -> None:  # fmt: skip
    from ledger.money import CURRENCIES

    if currency.upper() not in CURRENCIES:
        raise click.BadParameter(f"unknown currency; known: {', '.join(CURRENCIES)}")
    card_type = CardType(
        name=name,
        prefix=prefix,
        length=length,
        allowed_chars=chars,
        fixed_amount=not dynamic,
        redeem_allowed=not no_redeem,
        reservations_allowed=not (dynamic or no_reservations),
        validity_months=validity_months,
        currency=currency.upper(),
    )
    click.echo(json.dumps(asdict(_with_config(lambda c: c.add_card_type(card_type)))))


@card_types.command("list")
def card_types_list() -> None:
    for card_type in _with_config(lambda c: c.card_types()):
        click.echo(json.dumps(asdict(card_type)))


@main.group()
def clients() -> None:
    """API clients, their scopes and allowed locations."""


_DEFAULT_SCOPES = ",".join(DEFAULT_CLIENT_SCOPES)
RATE_PER_SECOND = click.option(
    "--rate-per-second", type=click.FloatRange(min=0, min_open=True), default=None,
    help="This client's request rate limit, per process (default: GIFTLEDGER_RATE_LIMIT_*).",
)  # fmt: skip
RATE_BURST = click.option(
    "--burst", "rate_burst", type=click.IntRange(min=1), default=None,
    help="How many requests the client may send at once before the rate applies.",
)  # fmt: skip


def _wanted_scopes(role: str | None, scopes: str | None) -> tuple[str, ...]:
    """The scopes of the role, or the ones listed; a POS client's when neither is given."""
    if role is not None and scopes is not None:
        raise click.UsageError("give --role or --scopes, not both")
    if role is not None:
        return ROLES[role]
    return _csv(scopes) if scopes is not None else DEFAULT_CLIENT_SCOPES


@clients.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(list(ROLES)), default=None,
              help="Take the scopes of a role (see `giftledger authz matrix`).")  # fmt: skip
@click.option("--scopes", default=None, help=f"Comma-separated; default: {_DEFAULT_SCOPES}.")
@click.option("--locations", "allowed", default="", help="Comma-separated location codes.")
@RATE_PER_SECOND
@RATE_BURST
@click.option("--json", "as_json", is_flag=True)
def clients_create(
    name: str, role: str | None, scopes: str | None, allowed: str,
    rate_per_second: float | None, rate_burst: int | None, as_json: bool,
) -> None:  # fmt: skip
    wanted = _wanted_scopes(role, scopes)
    unknown = set(wanted) - set(SCOPES)
    if unknown:
        raise click.BadParameter(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    created = _with_config(
        lambda c: c.create_client(name, wanted, _csv(allowed), rate_per_second, rate_burst)
    )
    out = {
        "client_id": created.client.client_id,
        "client_secret": created.client_secret,
        "consumer_key": created.client.consumer_key,
    }
    if as_json:
        click.echo(json.dumps(out))
    else:
        for key, value in out.items():
            click.echo(f"{key}: {value}")


@clients.command("list")
def clients_list() -> None:
    for client in _with_config(lambda c: c.clients()):
        click.echo(json.dumps(asdict(client)))


@clients.command("limit")
@click.argument("client_id")
@RATE_PER_SECOND
@RATE_BURST
@click.option("--default", "use_default", is_flag=True, help="Use the service-wide default.")
def clients_limit(
    client_id: str, rate_per_second: float | None, rate_burst: int | None, use_default: bool
) -> None:
    """Set a client's request rate limit; it takes effect within a second."""
    if use_default == (rate_per_second is not None or rate_burst is not None):
        raise click.UsageError("give --rate-per-second and/or --burst, or --default")
    if not _with_config(lambda c: c.set_client_limit(client_id, rate_per_second, rate_burst)):
        raise click.ClickException(f"no client {client_id}")
    client = _with_config(lambda c: c.client(client_id))
    assert client is not None
    click.echo(json.dumps(asdict(client)))


@clients.command("revoke")
@click.argument("client_id")
def clients_revoke(client_id: str) -> None:
    if not _with_config(lambda c: c.revoke_client(client_id)):
        raise click.ClickException(f"no active client {client_id}")
    click.echo(f"revoked {client_id}")


@main.group()
def tokens() -> None:
    """Bearer tokens for clients (the operator's 'obtain a token from support' flow)."""


@tokens.command("issue")
@click.argument("client_id")
@click.option("--ttl-seconds", type=click.IntRange(1, 366 * 86400), default=None)
def tokens_issue(client_id: str, ttl_seconds: int | None) -> None:
    from api.auth import issue_token

    settings = _settings()

    async def key_for_client(config: ConfigStore) -> SigningKey:
        client = await config.client(client_id)
        if client is None or client.revoked:
            raise click.ClickException(f"no active client {client_id}")
        return pinned_key(settings) or (await config.signing_keys())[-1]

    key = _with_config(key_for_client)
    click.echo(issue_token(key, client_id, ttl_seconds or settings.token_ttl_seconds))


@main.group()
def keys() -> None:
    """Token signing keys: the newest signs, every listed key verifies its own tokens."""


def _warn_if_pinned() -> None:
    if _settings().jwt_secret:
        click.echo(
            "warning: GIFTLEDGER_JWT_SECRET is set; servers started with it use that one key"
            " and ignore the key set below",
            err=True,
        )


@keys.command("list")
def keys_list() -> None:
    """Every key, oldest first (never its secret); the last one signs new tokens."""
    _warn_if_pinned()
    listed = _with_config(lambda c: c.signing_keys())
    for key in listed:
        created_at = key.created_at.isoformat() if key.created_at else None
        row = {"kid": key.kid, "created_at": created_at, "signing": key is listed[-1]}
        click.echo(json.dumps(row))


@keys.command("rotate")
def keys_rotate() -> None:
    """Add a key that signs new tokens from now on; tokens of older keys stay valid."""
    _warn_if_pinned()
    key = _with_config(lambda c: c.add_signing_key())
    click.echo(json.dumps({"kid": key.kid}))


@keys.command("remove")
@click.argument("kid")
def keys_remove(kid: str) -> None:
    """Remove a key: every token it signed is refused within a second."""
    _warn_if_pinned()
    if not _with_config(lambda c: c.remove_signing_key(kid)):
        raise click.ClickException(f"no key {kid}, or it is the only key (rotate first)")
    click.echo(f"removed {kid}")


@main.group()
def projections() -> None:
    """Read models built from the events."""


@projections.command("rebuild")
def projections_rebuild() -> None:
    from api.service import open_ledger
    from projections.rebuild import rebuild_card_projection

    settings = _settings()
    url = database_url(settings)
    asyncio.run(prepare_database(url, settings))
    ledger = open_ledger(url)
    try:
        events, cards = rebuild_card_projection(ledger)
    finally:
        ledger.close()
    click.echo(f"rebuilt {cards} cards from {events} events")


@main.group()
def authz() -> None:
    """Who may call what: roles and the rule of every endpoint."""


@authz.command("matrix")
@click.option("--markdown", is_flag=True, help="A markdown table, as in the README.")
def authz_matrix(markdown: bool) -> None:
    """Every endpoint against every role: allowed, allowed at own locations, 403 or public."""
    click.echo(matrix_markdown() if markdown else matrix_text(), nl=False)


main.add_command(cli_audit.history)
main.add_command(cli_audit.audit)
main.add_command(cli_ops.migrate_command)
main.add_command(export_command)
