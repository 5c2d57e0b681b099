"""`giftledger reconcile SETTLEMENT.csv`: a settlement file against the ledger, on the console.

Exit status as diff(1) has it: 0 when the file and the ledger agree, 1 when they differ, 2 when
the file cannot be read (the message names the line). The rules are in projections/reconcile.py.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import asyncpg
import click
import msgspec

from api.bootstrap import database_url, prepare_database
from api.settings import Settings
from ledger.money import currency, to_major
from projections.reconcile import (
    SETTLEMENT_BYTES_MAX,
    Match,
    Reconciliation,
    SettlementRow,
    parse_settlement,
    reconcile,
)
from projections.reports import ReportRefused

EXIT_DIFFERENT = 1
EXIT_UNREADABLE = 2


class UnreadableSettlement(click.ClickException):
    exit_code = EXIT_UNREADABLE


def _read(path: str) -> bytes:
    if path == "-":
        data = sys.stdin.buffer.read(SETTLEMENT_BYTES_MAX + 1)
    else:
        with open(path, "rb") as file:
            data = file.read(SETTLEMENT_BYTES_MAX + 1)
    return data


async def _reconcile(rows: list[SettlementRow]) -> Reconciliation:
    settings = Settings.from_env()
    url = database_url(settings)
    await prepare_database(url, settings)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        return await reconcile(pool, rows)
    finally:
        await pool.close()


@click.command("reconcile")
@click.argument("settlement", type=click.Path(dir_okay=False, allow_dash=True, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the JSON the HTTP route answers.")
def reconcile_command(settlement: str, as_json: bool) -> None:
    """Match SETTLEMENT (CSV: date,location,reference,amount; - for stdin) against the ledger.

    Lists what matched, amount mismatches, rows missing from the ledger and ledger entries
    missing from the file. Exits 1 on any difference, 2 if the file cannot be read.
    """
    try:
        report = asyncio.run(_reconcile(parse_settlement(_read(settlement))))
    except ReportRefused as exc:
        raise UnreadableSettlement(f"{settlement}: {exc.detail}") from None
    if as_json:
        from api.reconcile import reconciliation_result  # Litestar loads only when needed.

        click.echo(msgspec.json.encode(reconciliation_result(report)).decode())
    else:
        for line in report_lines(report):
            click.echo(line)
    if not report.ok:
        sys.exit(EXIT_DIFFERENT)


def _money(amount_minor: int, currency_code: str) -> str:
    return f"{to_major(amount_minor, currency(currency_code).minor_digits)} {currency_code}"


def _table(title: str, header: Sequence[str], rows: list[tuple[str, ...]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(str(r[i])) for r in [tuple(header), *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return ["", f"{title} ({len(rows)})", line(header), *(line(r) for r in rows)]


def _match_rows(matches: list[Match]) -> list[tuple[str, ...]]:
    return [
        (str(m.row.line), m.row.day.isoformat(), m.row.location, m.row.reference, m.entry.kind,
         _money(m.amount_minor, m.entry.currency), _money(m.entry.amount_minor, m.entry.currency),
         _money(m.difference_minor, m.entry.currency))
        for m in matches
    ]  # fmt: skip


def report_lines(report: Reconciliation) -> list[str]:
    """The reconciliation as tables: the differences first, then the matches."""
    lines = [
        f"Settlement of {report.first} to {report.last} at {', '.join(report.locations)}:"
        f" {report.rows} rows",
        f"matched {len(report.matched)}, amount mismatches {len(report.amount_mismatches)},"
        f" missing from the ledger {len(report.missing_from_ledger)},"
        f" missing from the file {len(report.missing_from_file)}",
    ]
    match_header = ("line", "date", "location", "reference", "kind", "file", "ledger",
                    "file - ledger")  # fmt: skip
    lines += _table("Amount mismatches", match_header, _match_rows(report.amount_mismatches))
    lines += _table(
        "Missing from the ledger", ("line", "date", "location", "reference", "amount"),
        [(str(r.line), r.day.isoformat(), r.location, r.reference, r.amount)
         for r in report.missing_from_ledger],
    )  # fmt: skip
    lines += _table(
        "Missing from the file",
        ("date", "location", "reference", "idempotency key", "kind", "amount", "cards"),
        [(e.day.isoformat(), e.location, e.reference or "", e.idempotency_key or "", e.kind,
          _money(e.amount_minor, e.currency), " ".join(e.card_numbers))
         for e in report.missing_from_file],
    )  # fmt: skip
    lines += _table("Matched", match_header, _match_rows(report.matched))
    verdict = "OK: the file and the ledger agree" if report.ok else "DIFFERENCES FOUND"
    return [*lines, "", verdict]
