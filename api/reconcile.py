"""POST /v1/reconciliations: a settlement file in, the four lists of its reconciliation out.

The body is the CSV file itself, `Content-Type: text/csv` (`curl --data-binary @file.csv`),
not a multipart form: a settlement is one file with nothing beside it, and a raw body needs no
form parser and no temporary file. The rules are in projections/reconcile.py. The answer is
200 with `ok: false` when the file and the ledger differ; a malformed file is a 422 problem
(`invalid_settlement_file`) whose detail names the line.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import msgspec
from litestar import Request, Router, post
from litestar.datastructures import State

from api.errors import ApiError
from projections.reconcile import (
    SETTLEMENT_BYTES_MAX,
    LedgerEntry,
    Match,
    Reconciliation,
    SettlementRow,
    parse_settlement,
    reconcile,
)

# Spreadsheets and processors label CSV either way.
SETTLEMENT_MEDIA_TYPES = ("text/csv", "application/csv")


class FileRow(msgspec.Struct):
    line: int
    day: date = msgspec.field(name="date")
    location: str
    reference: str
    amount: str


class Entry(msgspec.Struct):
    day: date = msgspec.field(name="date")
    location: str
    reference: str | None
    idempotency_key: str | None
    currency: str
    amount_minor: int
    kind: str
    card_numbers: list[str]
    occurred_at: datetime


class Matched(msgspec.Struct):
    line: int
    day: date = msgspec.field(name="date")
    location: str
    reference: str
    currency: str
    file_amount_minor: int
    ledger_amount_minor: int
    difference_minor: int
    kind: str
    ledger_date: date
    idempotency_key: str | None
    card_numbers: list[str]


class Counts(msgspec.Struct):
    matched: int
    missing_from_ledger: int
    missing_from_file: int
    amount_mismatches: int


class ReconciliationResult(msgspec.Struct):
    ok: bool
    first: date = msgspec.field(name="from")
    last: date = msgspec.field(name="to")
    locations: list[str] = msgspec.field(default_factory=list)
    rows: int = 0
    counts: Counts | None = None
    matched: list[Matched] = msgspec.field(default_factory=list)
    missing_from_ledger: list[FileRow] = msgspec.field(default_factory=list)
    missing_from_file: list[Entry] = msgspec.field(default_factory=list)
    amount_mismatches: list[Matched] = msgspec.field(default_factory=list)


def _file_row(row: SettlementRow) -> FileRow:
    return FileRow(row.line, row.day, row.location, row.reference, row.amount)


def _entry(entry: LedgerEntry) -> Entry:
    return Entry(
        entry.day, entry.location, entry.reference, entry.idempotency_key, entry.currency,
        entry.amount_minor, entry.kind, list(entry.card_numbers), entry.occurred_at,
    )  # fmt: skip


def _matched(found: Match) -> Matched:
    row, entry = found.row, found.entry
    return Matched(
        row.line, row.day, row.location, row.reference, entry.currency, found.amount_minor,
        entry.amount_minor, found.difference_minor, entry.kind, entry.day,
        entry.idempotency_key, list(entry.card_numbers),
    )  # fmt: skip


def reconciliation_result(report: Reconciliation) -> ReconciliationResult:
    """The JSON answer of the HTTP route and of `giftledger reconcile --json`."""
    return ReconciliationResult(
        ok=report.ok,
        first=report.first,
        last=report.last,
        locations=list(report.locations),
        rows=report.rows,
        counts=Counts(
            matched=len(report.matched),
            missing_from_ledger=len(report.missing_from_ledger),
            missing_from_file=len(report.missing_from_file),
            amount_mismatches=len(report.amount_mismatches),
        ),
        matched=[_matched(m) for m in report.matched],
        missing_from_ledger=[_file_row(r) for r in report.missing_from_ledger],
        missing_from_file=[_entry(e) for e in report.missing_from_file],
        amount_mismatches=[_matched(m) for m in report.amount_mismatches],
    )


@post(
    "/reconciliations",
    status_code=200,
    request_max_body_size=SETTLEMENT_BYTES_MAX,
)
async def reconcile_settlement(
    request: Request[Any, Any, Any], state: State
) -> ReconciliationResult:
    """Reconcile a settlement file, sent as the `text/csv` body, against the ledger.

    The file's header names `date,location,reference,amount`; each row is one transaction's
    day, location code, reference (a Resico transactionNo or an Idempotency-Key) and the money
    it moved in decimal major units. The answer lists what matched, what is missing from the
    ledger, what is missing from the file, and amount mismatches; `ok` is true when only matches
    were found. Nothing is stored.
    """
    if request.content_type[0] not in SETTLEMENT_MEDIA_TYPES:
        raise ApiError("unsupported_media_type", 415, "send the settlement file as text/csv")
    rows = parse_settlement(await request.body())
    return reconciliation_result(await reconcile(state.pool, rows))


def reconcile_router() -> Router:
    return Router(path="/v1", route_handlers=[reconcile_settlement], tags=["reconciliation"])
