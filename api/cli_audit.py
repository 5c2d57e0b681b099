"""The auditor's commands: `giftledger history CARD [--as-of T]` and `giftledger audit verify`."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator
from datetime import datetime

import click
import msgspec

from api.bootstrap import database_url, prepare_database
from api.native import audit_result, native_event
from api.service import CardLedger, open_ledger
from api.settings import Settings
from ledger.errors import LedgerError
from ledger.money import currency, to_major
from projections.audit import AuditReport, verify_ledger
from projections.history import HISTORY_PAGE_SIZE_MAX, HistoryEntry, card_history

# Versions of one card the history command prints at most; a longer history is cut with a note.
HISTORY_ROWS_MAX = 100_000


@contextlib.contextmanager
def configured_ledger() -> Iterator[CardLedger]:
    """The event store of the configured (or embedded) database, migrated first."""
    settings = Settings.from_env()
    url = database_url(settings)
    asyncio.run(prepare_database(url, settings))
    ledger = open_ledger(url)
    try:
        yield ledger
    finally:
        ledger.close()


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use ISO 8601, e.g. 2026-11-22T12:00:00Z") from None
    if moment.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2026-11-22T12:00:00Z")
    return moment


@click.command("history")
@click.argument("number")
@click.option("--as-of", callback=_instant, help="Only events up to this instant (ISO 8601).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
def history(number: str, as_of: datetime | None, as_json: bool) -> None:
    """A card's events with the running balance, from the events alone."""
    with configured_ledger() as ledger:
        try:
            entries = _all_entries(ledger, number, as_of)
        except LedgerError as exc:
            raise click.ClickException(exc.detail) from None
    if not entries:
        raise click.ClickException(f"the card had no events at {as_of}")
    if as_json:
        for entry in entries:
            click.echo(msgspec.json.encode(native_event(entry)).decode())
        return
    digits = currency(entries[0].event.currency).minor_digits
    click.echo(_table(entries, digits))
    last = entries[-1]
    moment = f"as of {as_of.isoformat()}" if as_of else "now"
    click.echo(
        f"\n{moment}: balance {to_major(last.balance_minor, digits)}"
        f" reserved {to_major(last.reserved_minor, digits)}"
        f" available {to_major(last.available_minor, digits)} {entries[0].event.currency}"
    )


def _all_entries(ledger: CardLedger, number: str, as_of: datetime | None) -> list[HistoryEntry]:
    entries: list[HistoryEntry] = []
    while len(entries) < HISTORY_ROWS_MAX:
        page = card_history(ledger, number, len(entries), HISTORY_PAGE_SIZE_MAX, as_of)
        entries += page
        if len(page) < HISTORY_PAGE_SIZE_MAX:
            return entries
    click.echo(f"(only the first {HISTORY_ROWS_MAX} events are shown)", err=True)
    return entries


_COLUMNS = ("ver", "position", "occurred_at", "type", "amount", "balance", "reserved",
            "available", "location", "actor", "idempotency_key")  # fmt: skip


def _table(entries: list[HistoryEntry], digits: int) -> str:
    def money(value: int | None) -> str:
        return "" if value is None else str(to_major(value, digits))

    rows = [_COLUMNS] + [
        (
            str(e.event.originator_version),
            str(e.position or ""),
            e.event.occurred_at.isoformat(timespec="seconds"),
            e.type,
            money(e.amount_minor),
            money(e.balance_minor),
            money(e.reserved_minor),
            money(e.available_minor),
            e.event.location_code or "",
            e.event.actor,
            e.idempotency_key or e.reference or "",
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


@click.group()
def audit() -> None:
    """Prove that the log was not altered."""


@audit.command("verify")
@click.option("--json", "as_json", is_flag=True)
def audit_verify(as_json: bool) -> None:
    """Recompute every hash and every card; exit 1 on the first mismatch."""
    with configured_ledger() as ledger:
        report = verify_ledger(ledger, ledger.events_table())
    if as_json:
        click.echo(msgspec.json.encode(audit_result(report)).decode())
    else:
        _print_report(report)
    if not report.ok:
        sys.exit(1)


def _print_report(report: AuditReport) -> None:
    click.echo(f"verified {report.events} events of {report.cards} cards")
    click.echo(f"head: position {report.head_position} hash {report.head_hash}")
    if report.ok:
        click.echo("OK: every hash and every card matches")
        return
    first = report.mismatches[0]
    click.echo(f"MISMATCH ({report.mismatches_total} in all); the first:", err=True)
    click.echo(f"  {first.kind} at position {first.position} card {first.card_id}", err=True)
    click.echo(f"  {first.detail}", err=True)
    for other in report.mismatches[1:]:
        click.echo(f"  then {other.kind} at position {other.position}: {other.detail}", err=True)
