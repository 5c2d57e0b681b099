"""Finance reports over HTTP: liability, daily totals per location, breakage; JSON or CSV.

Every amount is an integer count of minor units beside its currency. Each JSON report also
carries `minor_digits` per currency, so a reader can show major units without a table of its
own. The /reports page draws these reports in the browser.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import MediaType, Response, Router, get
from litestar.datastructures import State
from litestar.params import QueryParameter

from api.fields import AsOf, parse_instant
from api.reports_page import PAGE_HEADERS, PAGE_HTML
from ledger.money import currency as currency_of
from projections import reports
from projections.reports import Period

# Litestar appends "; charset=utf-8" to a text/* media type itself; naming it here too
# answered the parameter twice.
CSV_MEDIA_TYPE = "text/csv"

Format = Annotated[Literal["json", "csv"], QueryParameter(name="format")]
FromDay = Annotated[date | None, QueryParameter(name="from", description="first UTC day, included")]
ToDay = Annotated[date | None, QueryParameter(name="to", description="last UTC day, included")]


class LiabilityLine(msgspec.Struct):
    currency: str
    card_type: str
    balance_minor: int
    cards_with_balance: int


class CurrencyAmount(msgspec.Struct):
    currency: str
    amount_minor: int


class LiabilityReport(msgspec.Struct):
    as_of: datetime
    lines: list[LiabilityLine]
    totals: list[CurrencyAmount]
    minor_digits: dict[str, int]


class LiabilityPoint(msgspec.Struct):
    day: date
    currency: str
    balance_minor: int


class LiabilitySeries(msgspec.Struct):
    first: date = msgspec.field(name="from")
    last: date = msgspec.field(name="to")
    points: list[LiabilityPoint] = msgspec.field(default_factory=list)
    minor_digits: dict[str, int] = msgspec.field(default_factory=dict)


class DailyLine(msgspec.Struct):
    day: date
    location_code: str | None
    currency: str
    sold_minor: int
    loaded_minor: int
    redeemed_minor: int
    refunded_minor: int
    expired_minor: int


class DailyReport(msgspec.Struct):
    first: date = msgspec.field(name="from")
    last: date = msgspec.field(name="to")
    days: list[date] = msgspec.field(default_factory=list)
    rows: list[DailyLine] = msgspec.field(default_factory=list)
    minor_digits: dict[str, int] = msgspec.field(default_factory=dict)


class BreakageDay(msgspec.Struct):
    day: date
    currency: str
    expired_minor: int
    cards: int


class BreakageTotal(msgspec.Struct):
    currency: str
    expired_minor: int
    cards: int


class BreakageReport(msgspec.Struct):
    first: date = msgspec.field(name="from")
    last: date = msgspec.field(name="to")
    totals: list[BreakageTotal] = msgspec.field(default_factory=list)
    days: list[BreakageDay] = msgspec.field(default_factory=list)
    minor_digits: dict[str, int] = msgspec.field(default_factory=dict)


def minor_digits(currencies: Sequence[str]) -> dict[str, int]:
    return {c: currency_of(c).minor_digits for c in sorted(set(currencies))}


def csv_response(rows: Sequence[msgspec.Struct], row_type: type[msgspec.Struct],
                 filename: str) -> Response[str]:  # fmt: skip
    """The rows as CSV, one column per field, with a header; an empty value is a null."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(f.encode_name for f in msgspec.structs.fields(row_type))
    for row in rows:
        values = msgspec.to_builtins(msgspec.structs.astuple(row))
        writer.writerow("" if value is None else value for value in values)
    return Response(
        out.getvalue(),
        media_type=CSV_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{filename}.csv"'},
    )


def _period(first: date | None, last: date | None) -> Period:
    return Period.of(first, last, datetime.now(UTC).date())


def _stamp(period: Period) -> str:
    return f"{period.first.isoformat()}_{period.last.isoformat()}"


@get("/v1/reports/liability")
async def liability_report(
    state: State, as_of: AsOf = None, fmt: Format = "json"
) -> Response[Any]:
    """Card liability (what the cards hold) per currency and card type, as of an instant.

    `as_of` is ISO 8601 with a time zone and defaults to now; events at `as_of` count.
    """
    instant = datetime.now(UTC) if as_of is None else parse_instant("as_of", as_of)
    rows = [LiabilityLine(**vars(r)) for r in await reports.liability(state.pool, instant)]
    if fmt == "csv":
        return csv_response(rows, LiabilityLine, f"liability_{instant:%Y%m%dT%H%M%S%z}")
    totals: dict[str, int] = {}
    for row in rows:
        totals[row.currency] = totals.get(row.currency, 0) + row.balance_minor
    return Response(
        LiabilityReport(
            as_of=instant,
            lines=rows,
            totals=[CurrencyAmount(c, a) for c, a in sorted(totals.items())],
            minor_digits=minor_digits(list(totals)),
        )
    )


@get("/v1/reports/liability/series")
async def liability_series_report(
    state: State, first: FromDay = None, last: ToDay = None, fmt: Format = "json"
) -> Response[Any]:
    """Card liability per currency at the end of each UTC day from `from` to `to`."""
    period = _period(first, last)
    points = [LiabilityPoint(**vars(p)) for p in await reports.liability_series(state.pool, period)]
    if fmt == "csv":
        return csv_response(points, LiabilityPoint, f"liability_series_{_stamp(period)}")
    digits = minor_digits([p.currency for p in points])
    return Response(LiabilitySeries(period.first, period.last, points, digits))


@get("/v1/reports/daily")
async def daily_report(
    state: State, first: FromDay = None, last: ToDay = None, fmt: Format = "json"
) -> Response[Any]:
    """Per UTC day, location and currency: sold, loaded, redeemed (captured holds included),
    refunded and expired. An expiry counts at the location that sold the card."""
    period = _period(first, last)
    rows = [DailyLine(**vars(r)) for r in await reports.daily_totals(state.pool, period)]
    if fmt == "csv":
        return csv_response(rows, DailyLine, f"daily_{_stamp(period)}")
    days = [period.first + timedelta(days=n) for n in range((period.last - period.first).days + 1)]
    digits = minor_digits([r.currency for r in rows])
    return Response(DailyReport(period.first, period.last, days, rows, digits))


@get("/v1/reports/breakage")
async def breakage_report(
    state: State, first: FromDay = None, last: ToDay = None, fmt: Format = "json"
) -> Response[Any]:
    """The value left on cards when they expired, per currency, and per UTC day."""
    period = _period(first, last)
    rows = await reports.breakage(state.pool, period)
    days = [BreakageDay(**vars(r)) for r in rows]
    if fmt == "csv":
        return csv_response(days, BreakageDay, f"breakage_{_stamp(period)}")
    totals = [
        BreakageTotal(currency, amount, cards)
        for currency, (amount, cards) in reports.breakage_totals(rows).items()
    ]
    digits = minor_digits([t.currency for t in totals])
    return Response(BreakageReport(period.first, period.last, totals, days, digits))


@get("/reports", exclude_from_auth=True, include_in_schema=False, media_type=MediaType.HTML,
     sync_to_thread=False)  # fmt: skip
def reports_page() -> Response[str]:
    """The charts page. It carries no data: its script fetches the reports with a token."""
    return Response(PAGE_HTML, media_type=MediaType.HTML, headers=PAGE_HEADERS)


def reports_router() -> Router:
    return Router(
        path="/",
        route_handlers=[
            liability_report,
            liability_series_report,
            daily_report,
            breakage_report,
            reports_page,
        ],
        tags=["reports"],
    )
