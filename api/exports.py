"""Finance exports over HTTP: `GET /v1/exports/ledger` streams the ledger between two instants,
and `GET /v1/exports/ledger/manifest` describes exactly the rows an export carried.

Every export answers the header `Giftledger-Through-Position`: the log's head when it began. The
export holds the events of the period at or before that position, so asking for the manifest
with the same period and `through_position` describes the same rows, whenever it is asked.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, TypeVar

from litestar import Router, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter, QueryParameter
from litestar.response import Stream

from api.errors import ApiError
from api.fields import INSTANT_LENGTH_MAX, parse_instant
from api.ledger_export import (
    MEDIA_TYPES,
    ExportFormat,
    ExportKind,
    ExportQuery,
    ExportSpec,
    LedgerExport,
    Manifest,
    ParquetUnavailable,
    compute_manifest,
    require_parquet,
)
from api.service import CardService
from projections.ledger_stream import head_position

THROUGH_POSITION_HEADER = "Giftledger-Through-Position"
# The longest choice, "parquet" or "postings", with room to spare.
CHOICE_LENGTH_MAX = 16

Instant = Annotated[
    str | None,
    QueryParameter(name="from", max_length=INSTANT_LENGTH_MAX,
              description="Required. ISO 8601 instant with a time zone, e.g. 2026-01-01T00:00:00Z"),
]  # fmt: skip
UntilInstant = Annotated[
    str | None,
    QueryParameter(name="to", max_length=INSTANT_LENGTH_MAX,
              description="Required. ISO 8601 instant with a time zone; exclusive"),
]  # fmt: skip
FormatParameter = Annotated[
    str,
    QueryParameter(
        name="format", max_length=CHOICE_LENGTH_MAX, description="csv, jsonl or parquet"
    ),
]
KindParameter = Annotated[
    str, Parameter(max_length=CHOICE_LENGTH_MAX, description="events or postings")
]


PERIOD_CODE = "invalid_export_period"
Choice = TypeVar("Choice", ExportFormat, ExportKind)


def parse_choice(kind: type[Choice], code: str, value: str) -> Choice:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise ApiError(code, 422, f"{value!r} is not one of {known}") from None


def export_query(
    occurred_from: str | None, occurred_to: str | None, format_: str, kind: str
) -> ExportQuery:
    """The export the query asks for, or a 422 naming what is wrong with it."""
    start = parse_instant("from", occurred_from, PERIOD_CODE)
    end = parse_instant("to", occurred_to, PERIOD_CODE)
    if start >= end:
        raise ApiError(PERIOD_CODE, 422, "from must be before to")
    return ExportQuery(
        kind=parse_choice(ExportKind, "invalid_export_kind", kind),
        format=parse_choice(ExportFormat, "invalid_export_format", format_),
        occurred_from=start,
        occurred_to=end,
    )


def check_parquet_available(query: ExportQuery) -> None:
    if query.format is ExportFormat.PARQUET:
        try:
            require_parquet()
        except ParquetUnavailable as exc:
            raise ApiError("parquet_unavailable", 422, str(exc)) from None


def file_name(spec: ExportSpec) -> str:
    def stamp(instant: datetime) -> str:
        return instant.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")

    period = f"{stamp(spec.occurred_from)}-{stamp(spec.occurred_to)}"
    return f"ledger-{spec.kind}-{period}-p{spec.through_position}.{spec.format}"


@get("/exports/ledger")
async def export_ledger(
    state: State,
    service: CardService,
    occurred_from: Instant = None,
    occurred_to: UntilInstant = None,
    format_: FormatParameter = "csv",
    kind: KindParameter = "events",
) -> Stream:
    """The ledger's events or postings that occurred in [from, to), streamed in log order.

    Amounts are integer minor units. The `Giftledger-Through-Position` header names the last
    log position the export may include; pass it to `/v1/exports/ledger/manifest` to get the
    manifest of exactly these rows (JSON lines also end with it, Parquet keeps it in its footer).
    """
    query = export_query(occurred_from, occurred_to, format_, kind)
    check_parquet_available(query)
    through = await head_position(state.pool)
    spec = query.through(through)
    export = LedgerExport(state.pool, service.ledger.mapper.to_domain_event, spec)
    headers = {
        THROUGH_POSITION_HEADER: str(through),
        "Content-Disposition": f'attachment; filename="{file_name(spec)}"',
    }
    return Stream(export.chunks(), media_type=MEDIA_TYPES[spec.format], headers=headers)


@get("/exports/ledger/manifest")
async def export_manifest(
    state: State,
    service: CardService,
    occurred_from: Instant = None,
    occurred_to: UntilInstant = None,
    format_: FormatParameter = "csv",
    kind: KindParameter = "events",
    through_position: Annotated[int | None, Parameter(ge=0)] = None,
) -> Manifest:
    """The manifest of the export with the same parameters, up to `through_position` (from the
    export's `Giftledger-Through-Position` header; without it, the log's head now)."""
    query = export_query(occurred_from, occurred_to, format_, kind)
    head = await head_position(state.pool)
    if through_position is not None and through_position > head:
        detail = f"through_position {through_position} is past the log's head {head}"
        raise ApiError("invalid_through_position", 422, detail)
    spec = query.through(head if through_position is None else through_position)
    return await compute_manifest(state.pool, service.ledger.mapper.to_domain_event, spec)


def exports_router(dependencies: dict[str, Provide]) -> Router:
    return Router(
        path="/v1",
        route_handlers=[export_ledger, export_manifest],
        dependencies=dependencies,
        tags=["finance"],
    )
