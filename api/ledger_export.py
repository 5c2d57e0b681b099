"""Ledger exports for finance: rows of events or postings as CSV, JSON lines or Parquet, and a
manifest of exactly those rows.

An export is fixed by its period [from, to) and by `through_position`, the log's head when it
started: the same three always name the same events, however much is written meanwhile, so a
manifest computed again later describes the same rows. The rows are produced a batch at a time
from the ledger stream, and each batch is encoded and handed on before the next is read, so
memory holds a batch, never the export.

The manifest counts events and rows, sums the amounts per currency (and per event type, or
debit and credit per memo flag for postings), and names the position and chain hash of the last
event read. A receiver who recounts and resums what it got, and compares the last row's chain
hash, knows whether anything was lost. JSON lines carry the manifest as their last line and
Parquet files in their footer's key-value metadata; for CSV it is asked for separately.

This module knows nothing of HTTP: the router (api/exports.py) and the CLI both use it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg
import msgspec

from ledger.postings import postings_for
from projections.ledger_stream import Decode, LoggedEvent, stream_ledger

# Rows encoded into one CSV or JSON-lines chunk: bounds what a chunk holds before it is sent.
EXPORT_CHUNK_ROWS = 1_000
# Rows per Parquet row group: each is built in memory, written, and handed on whole.
PARQUET_ROW_GROUP_ROWS = 25_000
# Where a Parquet file keeps its manifest: the footer's key-value metadata.
PARQUET_MANIFEST_KEY = "giftledger.manifest"
MEDIA_TYPES = {
    "csv": "text/csv",  # Litestar adds "; charset=utf-8" to text types.
    "jsonl": "application/jsonl",
    "parquet": "application/vnd.apache.parquet",
}


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"


class ExportKind(StrEnum):
    EVENTS = "events"
    POSTINGS = "postings"


class ParquetUnavailable(Exception):
    """pyarrow is not installed (it is the optional `parquet` extra)."""


@dataclass(frozen=True)
class ExportSpec:
    kind: ExportKind
    format: ExportFormat
    occurred_from: datetime
    occurred_to: datetime  # Exclusive.
    through_position: int

    def __post_init__(self) -> None:
        assert self.occurred_from.tzinfo is not None
        assert self.occurred_to.tzinfo is not None
        assert self.occurred_from < self.occurred_to
        assert self.through_position >= 0


@dataclass(frozen=True)
class ExportQuery:
    """What was asked for; the log position is added when reading starts."""

    kind: ExportKind
    format: ExportFormat
    occurred_from: datetime
    occurred_to: datetime

    def through(self, position: int) -> ExportSpec:
        return ExportSpec(self.kind, self.format, self.occurred_from, self.occurred_to, position)


class EventRow(msgspec.Struct):
    position: int
    occurred_at: datetime
    card_number: str
    card_type: str
    currency: str
    type: str
    version: int
    amount_minor: int
    location_code: str | None
    actor: str | None
    idempotency_key: str | None
    reference: str | None
    card_hash: str
    chain_hash: str


class PostingRow(msgspec.Struct):
    position: int
    occurred_at: datetime
    card_number: str
    currency: str
    event_type: str
    account: str
    debit_minor: int
    credit_minor: int
    memo: bool


Row = EventRow | PostingRow
EVENT_COLUMNS = EventRow.__struct_fields__
POSTING_COLUMNS = PostingRow.__struct_fields__


def event_row(logged: LoggedEvent) -> EventRow:
    return EventRow(
        position=logged.position,
        occurred_at=logged.occurred_at.astimezone(UTC),
        card_number=logged.number,
        card_type=logged.card_type,
        currency=logged.currency,
        type=logged.type,
        version=logged.version,
        amount_minor=logged.amount_minor,
        location_code=logged.location_code,
        actor=getattr(logged.event, "actor", None),
        idempotency_key=logged.idempotency_key,
        reference=logged.reference,
        card_hash=logged.card_hash.hex(),
        chain_hash=logged.chain_hash.hex(),
    )


def posting_rows(logged: LoggedEvent) -> list[PostingRow]:
    """One row per posting, in the order the double-entry rules give them (debit, credit)."""
    occurred_at = logged.occurred_at.astimezone(UTC)
    return [
        PostingRow(
            position=logged.position,
            occurred_at=occurred_at,
            card_number=logged.number,
            currency=posting.currency,
            event_type=logged.type,
            account=posting.account,
            debit_minor=max(posting.amount_minor, 0),
            credit_minor=max(-posting.amount_minor, 0),
            memo=posting.memo,
        )
        for posting in postings_for(logged.type, logged.event, logged.currency)
    ]


# The manifest.


class EventSum(msgspec.Struct):
    currency: str
    type: str
    rows: int
    amount_minor: int


class PostingSum(msgspec.Struct):
    currency: str
    memo: bool
    rows: int
    debit_minor: int
    credit_minor: int


class Manifest(msgspec.Struct, omit_defaults=True):
    """What a receiver checks an export against; the same for every format of the same rows."""

    kind: str
    format: str
    from_: datetime = msgspec.field(name="from")
    to: datetime = msgspec.field()
    through_position: int = msgspec.field()
    # Events read in the period (a Blocked event posts no rows, so postings may be fewer).
    events: int = msgspec.field()
    rows: int = msgspec.field()
    first_position: int | None = msgspec.field()
    last_position: int | None = msgspec.field()
    last_chain_hash: str | None = msgspec.field()
    event_sums: list[EventSum] | None = None
    posting_sums: list[PostingSum] | None = None


class ManifestLine(msgspec.Struct):
    """The last line of a JSON-lines export."""

    manifest: Manifest


class Tally:
    """Counts and sums of the rows as they pass; bounded by currencies times event types."""

    def __init__(self) -> None:
        self.events = 0
        self.rows = 0
        self.first_position: int | None = None
        self.last: LoggedEvent | None = None
        self.event_sums: dict[tuple[str, str], list[int]] = {}
        self.posting_sums: dict[tuple[str, bool], list[int]] = {}

    def add(self, logged: LoggedEvent, rows: list[Row]) -> None:
        self.events += 1
        self.rows += len(rows)
        if self.first_position is None:
            self.first_position = logged.position
        self.last = logged
        for row in rows:
            if isinstance(row, EventRow):
                sums = self.event_sums.setdefault((row.currency, row.type), [0, 0])
                sums[0] += 1
                sums[1] += row.amount_minor
            else:
                sums = self.posting_sums.setdefault((row.currency, row.memo), [0, 0, 0])
                sums[0] += 1
                sums[1] += row.debit_minor
                sums[2] += row.credit_minor

    def manifest(self, spec: ExportSpec) -> Manifest:
        event_sums = posting_sums = None
        if spec.kind is ExportKind.EVENTS:
            event_sums = [
                EventSum(c, t, n, a) for (c, t), (n, a) in sorted(self.event_sums.items())
            ]
        else:
            posting_sums = [
                PostingSum(c, m, n, d, k) for (c, m), (n, d, k) in sorted(self.posting_sums.items())
            ]
        return Manifest(
            kind=spec.kind.value,
            format=spec.format.value,
            from_=spec.occurred_from.astimezone(UTC),
            to=spec.occurred_to.astimezone(UTC),
            through_position=spec.through_position,
            events=self.events,
            rows=self.rows,
            first_position=self.first_position,
            last_position=self.last.position if self.last else None,
            last_chain_hash=self.last.chain_hash.hex() if self.last else None,
            event_sums=event_sums,
            posting_sums=posting_sums,
        )


# The export.


class LedgerExport:
    """One export: `chunks()` gives its bytes, then `manifest()` describes exactly those rows."""

    def __init__(self, pool: asyncpg.Pool, decode: Decode, spec: ExportSpec) -> None:
        self.pool = pool
        self.decode = decode
        self.spec = spec
        self.tally = Tally()
        self._rows_of: Callable[[LoggedEvent], list[Any]] = (
            (lambda logged: [event_row(logged)]) if spec.kind is ExportKind.EVENTS else posting_rows
        )

    @property
    def columns(self) -> tuple[str, ...]:
        return EVENT_COLUMNS if self.spec.kind is ExportKind.EVENTS else POSTING_COLUMNS

    async def batches(self, rows_max: int) -> AsyncIterator[list[Row]]:
        """The rows in log order, about `rows_max` at a time (an event's postings stay together)."""
        spec = self.spec
        batch: list[Row] = []
        async for logged in stream_ledger(
            self.pool, self.decode, spec.occurred_from, spec.occurred_to, spec.through_position
        ):
            rows = self._rows_of(logged)
            self.tally.add(logged, rows)
            batch.extend(rows)
            if len(batch) >= rows_max:
                yield batch
                batch = []
        if batch:
            yield batch

    def chunks(self) -> AsyncIterator[bytes]:
        encoders = {
            ExportFormat.CSV: _csv_chunks,
            ExportFormat.JSONL: _jsonl_chunks,
            ExportFormat.PARQUET: _parquet_chunks,
        }
        return encoders[self.spec.format](self)

    def manifest(self) -> Manifest:
        return self.tally.manifest(self.spec)


async def compute_manifest(pool: asyncpg.Pool, decode: Decode, spec: ExportSpec) -> Manifest:
    """The manifest of the export `spec` names, read again without encoding any rows."""
    export = LedgerExport(pool, decode, spec)
    async for _ in export.batches(EXPORT_CHUNK_ROWS):
        pass
    return export.manifest()


def encode_manifest(manifest: Manifest) -> bytes:
    return msgspec.json.encode(manifest)


# Encoders: each turns batches of rows into chunks of bytes as they come.


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def _csv_text(rows: list[Any]) -> bytes:
    # A fresh StringIO per chunk: one that is truncated and reused keeps a 4-byte-per-character
    # buffer as large as its largest chunk.
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


async def _csv_chunks(export: LedgerExport) -> AsyncIterator[bytes]:
    yield _csv_text([export.columns])  # An empty period still gets its column names.
    async for batch in export.batches(EXPORT_CHUNK_ROWS):
        yield _csv_text([[_csv_value(v) for v in msgspec.structs.astuple(r)] for r in batch])


async def _jsonl_chunks(export: LedgerExport) -> AsyncIterator[bytes]:
    encoder = msgspec.json.Encoder()
    async for batch in export.batches(EXPORT_CHUNK_ROWS):
        yield encoder.encode_lines(batch)
    yield encoder.encode_lines([ManifestLine(export.manifest())])


def require_parquet() -> Any:
    """The pyarrow modules, imported only when a Parquet export is asked for."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ParquetUnavailable(
            "Parquet exports need pyarrow: install giftledger with the 'parquet' extra"
        ) from None
    return pyarrow


def _parquet_schema(pa: Any, kind: ExportKind) -> Any:
    text, whole = pa.string(), pa.int64()
    when = pa.timestamp("us", tz="UTC")
    if kind is ExportKind.EVENTS:
        types = {"position": whole, "occurred_at": when, "version": whole, "amount_minor": whole}
        return pa.schema([(name, types.get(name, text)) for name in EVENT_COLUMNS])
    types = {"position": whole, "occurred_at": when, "debit_minor": whole, "credit_minor": whole,
             "memo": pa.bool_()}  # fmt: skip
    return pa.schema([(name, types.get(name, text)) for name in POSTING_COLUMNS])


class _Drain(io.RawIOBase):
    """A write-only sink that hands on what pyarrow wrote so far.

    Writing Parquet never seeks: row groups go out in order and the footer last, so each row
    group can be sent as soon as it is written. Only a reader needs the whole file.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._written += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._written

    def drain(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


async def _parquet_chunks(export: LedgerExport) -> AsyncIterator[bytes]:
    pa = require_parquet()
    schema = _parquet_schema(pa, export.spec.kind)
    sink = _Drain()
    writer = pa.parquet.ParquetWriter(sink, schema)
    try:
        async for batch in export.batches(PARQUET_ROW_GROUP_ROWS):
            columns = [[getattr(row, name) for row in batch] for name in export.columns]
            writer.write_batch(pa.record_batch(columns, schema=schema))
            yield sink.drain()
        manifest = encode_manifest(export.manifest()).decode()
        writer.add_key_value_metadata({PARQUET_MANIFEST_KEY: manifest})
    finally:
        writer.close()
    yield sink.drain()
