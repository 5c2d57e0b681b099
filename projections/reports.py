"""Finance reports: card liability as of any instant, daily totals per location, breakage.

Each report is one aggregate query in PostgreSQL over the ledger log (which indexes every event
by `occurred_at`), the stored events and the card projection (for the card's currency and type).
A report over a year of a busy ledger then sends a few hundred rows to Python instead of
millions of events, which is why these do not fold `stream_ledger` in Python.

The queries read two fields straight from each stored event's JSON, `amount_minor` and
`location_code`. Event schemas only grow and a field's type never changes (STYLE.md), so these
two mean the same in every stored version. Should the store ever compress or encrypt event
state, these reports must move to `stream_ledger`, which decodes through the application.
`tests/e2e/test_reports.py` checks that each report equals a fold over that stream.

Days are UTC days. A period is a range of whole days, both ends included, and is bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import SimpleNamespace

import asyncpg

from ledger.postings import CARD_LIABILITY, EVENT_TYPES, postings_for
from projections.ledger_stream import EVENTS_TABLE

# The longest period a daily, breakage or series report covers, and the most rows any report
# answers; a larger report is refused with a request to narrow it.
REPORT_DAYS_MAX = 366
REPORT_ROWS_MAX = 50_000
# Without `from`, a period ends today and covers this many days.
REPORT_DAYS_DEFAULT = 31


class ReportRefused(Exception):
    """A report or reconciliation the caller must ask for differently; `code` is stable."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _liability_effect(event_type: str) -> int:
    """+1 when the event raises card liability by its amount, -1 when it lowers it, else 0.

    Taken from the double-entry rules, so the reports and the books cannot disagree on what
    an event does to the money owed to card holders.
    """
    probe = SimpleNamespace(amount_minor=1, location_code=None)
    postings = postings_for(event_type, probe, "XXX")
    return -sum(p.amount_minor for p in postings if p.account == CARD_LIABILITY and not p.memo)


# The events that move money, with their effect on liability: Sold, Loaded, Refunded raise it;
# Redeemed, ReservationCaptured, Expired lower it. Holds and blocks move none.
LIABILITY_EFFECT: dict[str, int] = {
    t: effect for t in EVENT_TYPES if (effect := _liability_effect(t)) != 0
}
MONEY_EVENT_TYPES = tuple(LIABILITY_EFFECT)

# The daily report's columns and the event types each one sums. A captured hold is a redemption.
DAILY_COLUMNS: dict[str, tuple[str, ...]] = {
    "sold_minor": ("Sold",),
    "loaded_minor": ("Loaded",),
    "redeemed_minor": ("Redeemed", "ReservationCaptured"),
    "refunded_minor": ("Refunded",),
    "expired_minor": ("Expired",),
}
assert {t for types in DAILY_COLUMNS.values() for t in types} == set(MONEY_EVENT_TYPES)

# Every money event with its card's fixed facts. $1 and $2 are the event types wanted and their
# effects on liability; callers append their own WHERE on `l` (the ledger log).
_MONEY_EVENTS_SQL = f"""
    SELECT l.occurred_at, l.card_id, l.idempotency_key, l.reference, m.type, m.effect,
           v.number, v.currency, v.card_type, v.location_code AS sold_location_code,
           s.doc ->> 'location_code' AS location_code,
           (s.doc ->> 'amount_minor')::bigint AS amount_minor
    FROM ledger_log l
    JOIN {EVENTS_TABLE} e ON e.notification_id = l.position
    JOIN unnest($1::text[], $2::int[]) AS m (type, effect)
      ON m.type = substring(e.topic FROM '[^.]+$')
    JOIN card_views v ON v.card_id = l.card_id
    CROSS JOIN LATERAL (SELECT convert_from(e.state, 'UTF8')::jsonb AS doc) s
"""  # noqa: S608 - a constant table name.


def money_events_sql(where: str) -> str:
    """The money events CTE body, filtered by `where` (placeholders from $3 on)."""
    return f"{_MONEY_EVENTS_SQL} WHERE {where}"


def money_event_params(types: tuple[str, ...] = MONEY_EVENT_TYPES) -> tuple[list[str], list[int]]:
    return list(types), [LIABILITY_EFFECT[t] for t in types]


def utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


@dataclass(frozen=True)
class Period:
    """Whole UTC days from `first` to `last`, both included."""

    first: date
    last: date

    @classmethod
    def of(cls, first: date | None, last: date | None, today: date) -> Period:
        """The asked period, or refused. `last` defaults to today, and `first` to the day that
        makes the period REPORT_DAYS_DEFAULT days long."""
        last = last or today
        first = first or last - timedelta(days=REPORT_DAYS_DEFAULT - 1)
        if first > last:
            raise ReportRefused("invalid_period", f"from {first} is after to {last}")
        if (last - first).days + 1 > REPORT_DAYS_MAX:
            raise ReportRefused(
                "period_too_long", f"a report covers at most {REPORT_DAYS_MAX} days"
            )
        return cls(first, last)

    @property
    def start(self) -> datetime:
        return utc_midnight(self.first)

    @property
    def end(self) -> datetime:
        """The first instant after the period."""
        return utc_midnight(self.last + timedelta(days=1))


def _check_rows(rows: list[asyncpg.Record]) -> list[asyncpg.Record]:
    if len(rows) > REPORT_ROWS_MAX:
        raise ReportRefused(
            "report_too_large", f"the report has more than {REPORT_ROWS_MAX} rows; narrow it"
        )
    return rows


# Liability as of an instant.


@dataclass(frozen=True)
class LiabilityRow:
    currency: str
    card_type: str
    balance_minor: int
    cards_with_balance: int


_LIABILITY_SQL = f"""
    WITH money AS ({money_events_sql("l.occurred_at <= $3")}),
    per_card AS (
        SELECT currency, card_type, card_id, sum(effect * amount_minor) AS balance
        FROM money GROUP BY currency, card_type, card_id
    )
    SELECT currency, card_type, sum(balance)::bigint AS balance_minor,
           count(*) FILTER (WHERE balance > 0) AS cards_with_balance
    FROM per_card GROUP BY currency, card_type ORDER BY currency, card_type LIMIT $4
"""  # noqa: S608 - built from constants.


async def liability(pool: asyncpg.Pool, as_of: datetime) -> list[LiabilityRow]:
    """What the cards held at `as_of` (events that occurred up to and at it), per currency and
    card type: the money owed to card holders."""
    assert as_of.tzinfo is not None
    rows = await pool.fetch(_LIABILITY_SQL, *money_event_params(), as_of, REPORT_ROWS_MAX + 1)
    return [LiabilityRow(**dict(row)) for row in _check_rows(rows)]


# Liability at the end of each day.


@dataclass(frozen=True)
class LiabilityPoint:
    day: date
    currency: str
    balance_minor: int


_SERIES_SQL = f"""
    WITH money AS ({money_events_sql("l.occurred_at < $4")}),
    opening AS (
        SELECT currency, sum(effect * amount_minor) AS amount
        FROM money WHERE occurred_at < $3 GROUP BY currency
    ),
    daily AS (
        SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, currency,
               sum(effect * amount_minor) AS amount
        FROM money WHERE occurred_at >= $3 GROUP BY 1, 2
    ),
    currencies AS (SELECT currency FROM opening UNION SELECT currency FROM daily),
    days AS (SELECT g::date AS day FROM generate_series($5::date, $6::date, '1 day') AS g)
    SELECT days.day, c.currency,
           (coalesce(o.amount, 0) + sum(coalesce(d.amount, 0))
               OVER (PARTITION BY c.currency ORDER BY days.day))::bigint AS balance_minor
    FROM days CROSS JOIN currencies c
    LEFT JOIN opening o ON o.currency = c.currency
    LEFT JOIN daily d ON d.currency = c.currency AND d.day = days.day
    ORDER BY c.currency, days.day
"""  # noqa: S608 - built from constants.


async def liability_series(pool: asyncpg.Pool, period: Period) -> list[LiabilityPoint]:
    """The liability per currency at the end of each day of the period."""
    rows = await pool.fetch(
        _SERIES_SQL, *money_event_params(), period.start, period.end, period.first, period.last
    )
    return [LiabilityPoint(**dict(row)) for row in _check_rows(rows)]


# Daily totals per location.


@dataclass(frozen=True)
class DailyRow:
    day: date
    location_code: str | None
    currency: str
    sold_minor: int
    loaded_minor: int
    redeemed_minor: int
    refunded_minor: int
    expired_minor: int


_DAILY_SUMS = ",\n".join(
    f"coalesce(sum(amount_minor) FILTER (WHERE type IN ({', '.join(repr(t) for t in types)})),"
    f" 0)::bigint AS {column}"
    for column, types in DAILY_COLUMNS.items()
)
# An expiry is the service's own act, at no location; it counts at the location that sold the
# card, so each shop sees the breakage of the cards it sold.
_DAILY_SQL = f"""
    WITH money AS ({money_events_sql("l.occurred_at >= $3 AND l.occurred_at < $4")})
    SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day,
           CASE WHEN type = 'Expired' THEN coalesce(location_code, sold_location_code)
                ELSE location_code END AS location_code,
           currency,
           {_DAILY_SUMS}
    FROM money GROUP BY 1, 2, 3 ORDER BY 1, 2 NULLS LAST, 3 LIMIT $5
"""  # noqa: S608 - built from constants.


async def daily_totals(pool: asyncpg.Pool, period: Period) -> list[DailyRow]:
    """Per UTC day, location and currency: what was sold, loaded, redeemed, refunded, expired."""
    rows = await pool.fetch(
        _DAILY_SQL, *money_event_params(), period.start, period.end, REPORT_ROWS_MAX + 1
    )
    return [DailyRow(**dict(row)) for row in _check_rows(rows)]


# Breakage.


@dataclass(frozen=True)
class BreakageRow:
    day: date
    currency: str
    expired_minor: int
    cards: int


_BREAKAGE_SQL = f"""
    WITH money AS ({money_events_sql("l.occurred_at >= $3 AND l.occurred_at < $4")})
    SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, currency,
           sum(amount_minor)::bigint AS expired_minor, count(*) AS cards
    FROM money GROUP BY 1, 2 ORDER BY 1, 2 LIMIT $5
"""  # noqa: S608 - built from constants.


async def breakage(pool: asyncpg.Pool, period: Period) -> list[BreakageRow]:
    """Per UTC day and currency, the value left on cards when they expired, and how many."""
    rows = await pool.fetch(
        _BREAKAGE_SQL, *money_event_params(("Expired",)), period.start, period.end,
        REPORT_ROWS_MAX + 1,
    )  # fmt: skip
    return [BreakageRow(**dict(row)) for row in _check_rows(rows)]


def breakage_totals(rows: list[BreakageRow]) -> dict[str, tuple[int, int]]:
    """Per currency: the value expired and the cards expired, over all the rows."""
    totals: dict[str, tuple[int, int]] = {}
    for row in rows:
        amount, cards = totals.get(row.currency, (0, 0))
        totals[row.currency] = (amount + row.expired_minor, cards + row.cards)
    return dict(sorted(totals.items()))
