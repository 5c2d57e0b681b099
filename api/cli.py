"""The `giftledger` command: the operator contract (serve, configuration, tokens, projections)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

import asyncpg
import click

from api.bootstrap import database_url, prepare_database, seed_demo
from api.cli_finance import export_command
from api.settings import Settings
from ledger.errors import LedgerError
from projections.config import (
    DEFAULT_ALLOWED_CHARS,
    DEFAULT_CLIENT_SCOPES,
    SCOPES,
    CardType,
    ConfigStore,
)

T = TypeVar("T")


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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--access-log/--no-access-log", default=True, show_default=True)
def serve(host: str, port: int, workers: int, access_log: bool) -> None:
    """Serve the HTTP API (embedded PostgreSQL when GIFTLEDGER_DATABASE_URL is unset)."""
    import uvicorn

    settings = _settings()
    url = database_url(settings)
    asyncio.run(prepare_database(url, settings))
    demo = asyncio.run(seed_demo(url, settings.data_dir)) if settings.seed_demo else None
    # Workers inherit the resolved URL; this process owns the embedded server and stops it on exit.
    os.environ["GIFTLEDGER_DATABASE_URL"] = url
    if demo:
        _print_demo(demo, host, port)
    _exit_cleanly_on_signals()
    uvicorn.run(
        "api.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
    )


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


@clients.command("create")
@click.argument("name")
@click.option("--scopes", default=",".join(DEFAULT_CLIENT_SCOPES), show_default=True)
@click.option("--locations", "allowed", default="", help="Comma-separated location codes.")
@click.option("--json", "as_json", is_flag=True)
def clients_create(name: str, scopes: str, allowed: str, as_json: bool) -> None:
    wanted = _csv(scopes)
    unknown = set(wanted) - set(SCOPES)
    if unknown:
        raise click.BadParameter(f"unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}")
    created = _with_config(lambda c: c.create_client(name, wanted, _csv(allowed)))
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

    async def secret_for_client(config: ConfigStore) -> str:
        client = await config.client(client_id)
        if client is None or client.revoked:
            raise click.ClickException(f"no active client {client_id}")
        return await prepare_database(database_url(settings), settings)

    secret = _with_config(secret_for_client)
    click.echo(issue_token(secret, client_id, ttl_seconds or settings.token_ttl_seconds))


@main.group()
def projections() -> None:
    """Read models built from the events."""


@projections.command("rebuild")
def projections_rebuild() -> None:
    from api.service import CardLedger, ledger_env
    from projections.database import eventsourcing_env
    from projections.rebuild import rebuild_card_projection

    settings = _settings()
    url = database_url(settings)
    asyncio.run(prepare_database(url, settings))
    ledger = CardLedger(env=ledger_env(eventsourcing_env(url)))
    try:
        events, cards = rebuild_card_projection(ledger)
    finally:
        ledger.close()
    click.echo(f"rebuilt {cards} cards from {events} events")


main.add_command(export_command)
