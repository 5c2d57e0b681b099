"""Reconcile a settlement file (from a POS system or a processor) against the ledger.

The file is CSV with a header naming at least the columns `date`, `location`, `reference` and
`amount` (in any order; other columns are ignored). Each row says: on `date`, at `location`,
the transaction `reference` moved `amount`.

- `date` is the transaction's day, `YYYY-MM-DD`.
- `location` is a location code, as in the ledger.
- `reference` names one request to the ledger: a Resico `transactionNo`, or the
  `Idempotency-Key` the request was sent with.
- `amount` is the money that moved for that reference, in decimal major units with at most
  the currency's decimals, always positive: a sale's or a load's value, a redemption's value
  (the captured part of a hold included), a refund's value. It is read exactly in the currency
  of the ledger entry it matches, never through a float.

A ledger entry is the money one request moved at one location: the Sold, Loaded, Redeemed,
ReservationCaptured or Refunded events the request recorded, which the ledger log keeps with
its reference and Idempotency-Key (holds and their releases move no money). Its day is the
UTC day it occurred.

A row matches the entry at its location that its reference names (by transactionNo or by
Idempotency-Key). Settlement files often date transactions in local time, so an entry up to
DATE_TOLERANCE_DAYS from the row's date still matches; when several entries share a reference
(a key reused after its 72 hours), the row takes the one nearest its date. Each entry matches
at most one row. The outcome is four lists:

- matched: the row's amount equals the entry's;
- amount mismatches: the row found its entry but the amounts differ;
- missing from the ledger: no entry at the row's location carries its reference;
- missing from the file: entries at the file's locations, on the file's days (its first to
  its last date, UTC), that no row names.

A malformed file is refused as a whole with the line at fault: a reconciliation that quietly
skipped a line would report a difference that is not there, or hide one that is.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

import asyncpg

from ledger.errors import LedgerError
from ledger.money import currency, to_minor
from projections.reports import (
    ReportRefused,
    money_event_params,
    money_events_sql,
    utc_midnight,
)

# A settlement upload is at most this large, with at most this many rows; a larger settlement
# is split by day or location.
SETTLEMENT_BYTES_MAX = 8 * 1024 * 1024
SETTLEMENT_ROWS_MAX = 100_000
# The longest span of days one file may cover, and the most ledger entries one run compares.
SETTLEMENT_DAYS_MAX = 92
LEDGER_ENTRIES_MAX = 500_000
DATE_TOLERANCE_DAYS = 1
SETTLEMENT_COLUMNS = ("date", "location", "reference", "amount")
LOCATION_LENGTH_MAX = 64
REFERENCE_LENGTH_MAX = 255

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_AMOUNT = re.compile(r"[0-9]+(\.[0-9]+)?")
# What each money event is, for people reading the lists.
KIND_BY_TYPE = {
    "Sold": "sale",
    "Loaded": "load",
    "Redeemed": "redemption",
    "ReservationCaptured": "redemption",
    "Refunded": "refund",
}
MONEY_TYPES = tuple(KIND_BY_TYPE)


class SettlementFileError(ReportRefused):
    """The file cannot be read as a settlement; `line` is its 1-based line, when one is at fault."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__("invalid_settlement_file", f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True)
class SettlementRow:
    line: int
    day: date
    location: str
    reference: str
    amount: str  # Decimal major units as written; read in the currency of the entry it matches.


@dataclass
class LedgerEntry:
    day: date
    location: str
    reference: str | None  # The POS transactionNo, when the request had one.
    idempotency_key: str | None
    currency: str
    amount_minor: int
    kind: str
    card_numbers: tuple[str, ...]
    occurred_at: datetime
    claimed: bool = False

    @property
    def name(self) -> str:
        """How a settlement file would most likely name it."""
        name = self.reference or self.idempotency_key
        assert name is not None
        return name


@dataclass(frozen=True)
class Match:
    row: SettlementRow
    entry: LedgerEntry
    amount_minor: int  # The row's amount in the entry's currency.

    @property
    def difference_minor(self) -> int:
        """What the file says moved minus what the ledger says."""
        return self.amount_minor - self.entry.amount_minor


@dataclass
class Reconciliation:
    first: date
    last: date
    locations: tuple[str, ...]
    rows: int
    matched: list[Match] = field(default_factory=list)
    amount_mismatches: list[Match] = field(default_factory=list)
    missing_from_ledger: list[SettlementRow] = field(default_factory=list)
    missing_from_file: list[LedgerEntry] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.amount_mismatches or self.missing_from_ledger or self.missing_from_file)


# Reading the file.


def parse_settlement(data: bytes) -> list[SettlementRow]:
    """The file's rows, checked; refused as a whole, naming the line, if any row is malformed."""
    if len(data) > SETTLEMENT_BYTES_MAX:
        raise SettlementFileError(None, f"the file is larger than {SETTLEMENT_BYTES_MAX} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SettlementFileError(line, "the file is not UTF-8 text") from None
    records = _records(text)
    columns = _header(records)
    rows: list[SettlementRow] = []
    seen: dict[tuple[str, str], int] = {}
    for line, fields in records:
        if len(rows) == SETTLEMENT_ROWS_MAX:
            raise SettlementFileError(None, f"the file has more than {SETTLEMENT_ROWS_MAX} rows")
        row = _row(line, fields, columns)
        earlier = seen.setdefault((row.location, row.reference), row.line)
        if earlier != row.line:
            raise SettlementFileError(
                row.line, f"reference {row.reference!r} at {row.location} is already on line"
                f" {earlier}",
            )  # fmt: skip
        rows.append(row)
    if not rows:
        raise SettlementFileError(None, "the file has a header but no rows")
    days = sorted({r.day for r in rows})
    if (days[-1] - days[0]).days + 1 > SETTLEMENT_DAYS_MAX:
        raise SettlementFileError(
            None, f"the file spans more than {SETTLEMENT_DAYS_MAX} days; split it"
        )
    return rows


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """The file's non-blank records with the line each ends on (a quoted field may span lines)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise SettlementFileError(reader.line_num, f"not CSV: {exc}") from None
        if any(f.strip() for f in fields):
            yield reader.line_num, fields


def _header(records: Iterator[tuple[int, list[str]]]) -> dict[str, int]:
    wanted = ",".join(SETTLEMENT_COLUMNS)
    header = next(records, None)
    if header is None:
        raise SettlementFileError(None, f"the file is empty; its first line names {wanted}")
    line, fields = header
    names = [name.strip().lower() for name in fields]
    missing = [c for c in SETTLEMENT_COLUMNS if c not in names]
    if missing:
        raise SettlementFileError(
            line, f"the header lacks the column(s) {', '.join(missing)}; it needs {wanted}"
        )
    repeated = [c for c in SETTLEMENT_COLUMNS if names.count(c) > 1]
    if repeated:
        raise SettlementFileError(line, f"the header names {', '.join(repeated)} more than once")
    return {c: names.index(c) for c in SETTLEMENT_COLUMNS}


def _row(line: int, fields: list[str], columns: dict[str, int]) -> SettlementRow:
    if len(fields) <= max(columns.values()):
        raise SettlementFileError(line, f"expected at least {max(columns.values()) + 1} fields,"
                                        f" found {len(fields)}")  # fmt: skip
    value = {name: fields[index].strip() for name, index in columns.items()}
    if not _DATE.fullmatch(value["date"]):
        raise SettlementFileError(line, f"date {value['date']!r} is not YYYY-MM-DD")
    try:
        day = date.fromisoformat(value["date"])
    except ValueError:
        raise SettlementFileError(line, f"date {value['date']!r} is not a day") from None
    location, reference, amount = value["location"], value["reference"], value["amount"]
    if not 1 <= len(location) <= LOCATION_LENGTH_MAX:
        raise SettlementFileError(line, f"location must be 1 to {LOCATION_LENGTH_MAX} characters")
    if not 1 <= len(reference) <= REFERENCE_LENGTH_MAX or not reference.isprintable():
        raise SettlementFileError(
            line, f"reference must be 1 to {REFERENCE_LENGTH_MAX} printable characters"
        )
    if not _AMOUNT.fullmatch(amount):
        raise SettlementFileError(
            line, f"amount {amount!r} is not a positive decimal in major units, e.g. 12.50"
        )
    return SettlementRow(line, day, location, reference, amount)


# Reading the ledger. The events of one request share its keys, its location and its
# occurred_at (the command's one origin), so grouping on these gives one entry per request,
# even when a key comes back after its 72 hours.

_KEYED_IN_PERIOD = (
    "l.occurred_at >= $3 AND l.occurred_at < $4"
    " AND (l.reference IS NOT NULL OR l.idempotency_key IS NOT NULL)"
)
_ENTRIES_SQL = f"""
    WITH money AS ({money_events_sql(_KEYED_IN_PERIOD)})
    SELECT location_code, reference, idempotency_key, currency, occurred_at,
           sum(amount_minor)::bigint AS amount_minor,
           array_agg(DISTINCT type ORDER BY type) AS types,
           array_agg(DISTINCT number ORDER BY number) AS numbers
    FROM money WHERE location_code = ANY($5::text[])
    GROUP BY location_code, reference, idempotency_key, currency, occurred_at
    ORDER BY occurred_at, reference, idempotency_key LIMIT $6
"""  # noqa: S608 - built from constants.


async def ledger_entries(
    pool: asyncpg.Pool, start: datetime, end: datetime, locations: tuple[str, ...]
) -> list[LedgerEntry]:
    """The money each keyed request moved at the locations in [start, end)."""
    rows = await pool.fetch(
        _ENTRIES_SQL, *money_event_params(MONEY_TYPES), start, end, list(locations),
        LEDGER_ENTRIES_MAX + 1,
    )  # fmt: skip
    if len(rows) > LEDGER_ENTRIES_MAX:
        raise ReportRefused(
            "settlement_too_large",
            f"the file's days and locations hold more than {LEDGER_ENTRIES_MAX} ledger entries;"
            " split it",
        )
    return [
        LedgerEntry(
            day=row["occurred_at"].date(),  # asyncpg answers timestamptz in UTC.
            location=row["location_code"],
            reference=row["reference"],
            idempotency_key=row["idempotency_key"],
            currency=row["currency"],
            amount_minor=row["amount_minor"],
            kind="+".join(sorted({KIND_BY_TYPE[t] for t in row["types"]})),
            card_numbers=tuple(row["numbers"]),
            occurred_at=row["occurred_at"],
        )
        for row in rows
    ]


# Matching.


async def reconcile(pool: asyncpg.Pool, rows: list[SettlementRow]) -> Reconciliation:
    """Match the file's rows against the ledger; see the module's docstring for the rules."""
    assert rows
    first, last = min(r.day for r in rows), max(r.day for r in rows)
    locations = tuple(sorted({r.location for r in rows}))
    tolerance = timedelta(days=DATE_TOLERANCE_DAYS)
    start, end = utc_midnight(first - tolerance), utc_midnight(last + tolerance + timedelta(1))
    entries = await ledger_entries(pool, start, end, locations)
    return match(rows, entries, first, last, locations)


def match(rows: list[SettlementRow], entries: list[LedgerEntry], first: date, last: date,
          locations: tuple[str, ...]) -> Reconciliation:  # fmt: skip
    named: dict[tuple[str, str], list[LedgerEntry]] = {}
    for entry in entries:
        for name in {entry.reference, entry.idempotency_key} - {None}:
            named.setdefault((entry.location, str(name)), []).append(entry)
    result = Reconciliation(first, last, locations, len(rows))
    tolerance = DATE_TOLERANCE_DAYS
    for row in rows:
        candidates = [
            e for e in named.get((row.location, row.reference), ())
            if not e.claimed and abs((e.day - row.day).days) <= tolerance
        ]  # fmt: skip
        if not candidates:
            result.missing_from_ledger.append(row)
            continue
        entry = min(candidates, key=lambda e: (abs((e.day - row.day).days), e.occurred_at))
        entry.claimed = True
        found = Match(row, entry, _row_amount_minor(row, entry.currency))
        (result.matched if found.difference_minor == 0 else result.amount_mismatches).append(found)
    result.missing_from_file = [e for e in entries if not e.claimed and first <= e.day <= last]
    return result


def _row_amount_minor(row: SettlementRow, currency_code: str) -> int:
    digits = currency(currency_code).minor_digits
    try:
        return to_minor(Decimal(row.amount), digits, allow_zero=True)
    except LedgerError as exc:
        raise SettlementFileError(
            row.line, f"amount {row.amount} in {currency_code}: {exc.detail}"
        ) from None
