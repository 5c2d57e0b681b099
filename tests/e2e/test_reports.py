"""Finance reports give exact liability, daily totals and breakage, as JSON and as CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from projections.ledger_stream import stream_ledger
from projections.reports import LIABILITY_EFFECT, REPORT_DAYS_MAX
from tests.finance_history import History, at, make_history

ENDPOINTS = (
    "/v1/reports/liability",
    "/v1/reports/liability/series",
    "/v1/reports/daily",
    "/v1/reports/breakage",
)


@pytest.fixture
async def history(app, world, pool) -> History:
    return await make_history(app, world, pool)


async def report(http, world, path: str, **params: Any) -> dict[str, Any]:
    response = await http.get(path, params=params, headers=world.finance.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def csv_rows(http, world, path: str, **params: Any) -> list[dict[str, str]]:
    response = await http.get(path, params={**params, "format": "csv"},
                              headers=world.finance.headers)  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    return list(csv.DictReader(io.StringIO(response.text)))


def lines(liability: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int]]:
    return {(line["currency"], line["card_type"]): (line["balance_minor"],
            line["cards_with_balance"]) for line in liability["lines"]}  # fmt: skip


# Liability.


async def test_liability_now_is_what_the_cards_hold_per_currency_and_card_type(
    http, world, history, pool
):
    liability = await report(http, world, "/v1/reports/liability")
    assert lines(liability) == {
        ("EUR", "dynamic19"): (3700, 1),
        ("EUR", "fixed16"): (3600, 1),
        ("EUR", "promo"): (0, 0),  # Expired today: its 900 went to breakage.
        ("GBP", "gold"): (1500, 1),
    }
    assert liability["totals"] == [
        {"currency": "EUR", "amount_minor": 7300},
        {"currency": "GBP", "amount_minor": 1500},
    ]
    assert liability["minor_digits"] == {"EUR": 2, "GBP": 2}
    # The same as the card projection says, computed the other way: from the events.
    sql = "SELECT currency, card_type, sum(balance_minor)::bigint AS b FROM card_views"
    projected = await pool.fetch(f"{sql} GROUP BY 1, 2")
    assert {(r["currency"], r["card_type"]): r["b"] for r in projected} == {
        key: balance for key, (balance, _) in lines(liability).items()
    }


async def test_liability_as_of_the_past_leaves_out_later_events(http, world, history):
    end_of_first = at(history.second, 0) - timedelta(microseconds=1)
    liability = await report(http, world, "/v1/reports/liability", as_of=end_of_first.isoformat())
    assert lines(liability) == {
        ("EUR", "dynamic19"): (3000, 1),
        ("EUR", "fixed16"): (5000, 1),
        ("EUR", "promo"): (900, 1),
        ("GBP", "gold"): (2000, 1),
    }
    # Between the use at 09:00 and the refund at 11:00 of the second day.
    between = at(history.second, 10, 30).isoformat()
    assert lines(await report(http, world, "/v1/reports/liability", as_of=between))[
        ("EUR", "fixed16")
    ] == (3800, 1)
    # An event exactly at as_of counts.
    sale = at(history.first, 10).isoformat()
    assert lines(await report(http, world, "/v1/reports/liability", as_of=sale)) == {
        ("EUR", "fixed16"): (5000, 1)
    }
    before = at(history.first, 9).isoformat()
    empty = await report(http, world, "/v1/reports/liability", as_of=before)
    assert (empty["lines"], empty["totals"]) == ([], [])


async def test_liability_equals_a_fold_over_the_ledger_stream(http, world, history, pool, app):
    decode = app.state.service.ledger.mapper.to_domain_event
    folded: dict[tuple[str, str], int] = {}
    async for event in stream_ledger(pool, decode):
        key = (event.currency, event.card_type)
        effect = LIABILITY_EFFECT.get(event.type, 0)
        folded[key] = folded.get(key, 0) + effect * event.amount_minor
    liability = await report(http, world, "/v1/reports/liability")
    assert {key: balance for key, (balance, _) in lines(liability).items()} == folded


async def test_liability_series_is_the_liability_at_the_end_of_each_day(http, world, history):
    day_before = history.first - timedelta(days=1)
    period = {"from": day_before.isoformat(), "to": history.expired_on.isoformat()}
    series = await report(http, world, "/v1/reports/liability/series", **period)
    assert (series["from"], series["to"]) == (period["from"], period["to"])
    days = [(day_before + timedelta(days=n)).isoformat() for n in range(7)]
    assert history.expired_on.isoformat() == days[-1]
    eur = [p["balance_minor"] for p in series["points"] if p["currency"] == "EUR"]
    gbp = [p["balance_minor"] for p in series["points"] if p["currency"] == "GBP"]
    assert [p["day"] for p in series["points"]] == days + days
    assert eur == [0, 8900, 8600, 8200, 8200, 8200, 7300]
    assert gbp == [0, 2000, 2000, 1500, 1500, 1500, 1500]
    # A period that starts after the sales opens with what the cards held then.
    third = {"from": history.third.isoformat(), "to": history.third.isoformat()}
    later = await report(http, world, "/v1/reports/liability/series", **third)
    assert later["points"] == [
        {"day": history.third.isoformat(), "currency": "EUR", "balance_minor": 8200},
        {"day": history.third.isoformat(), "currency": "GBP", "balance_minor": 1500},
    ]


# Daily totals.


def daily_row(day, location, currency, sold=0, loaded=0, redeemed=0, refunded=0, expired=0):
    return {"day": day.isoformat(), "location_code": location, "currency": currency,
            "sold_minor": sold, "loaded_minor": loaded, "redeemed_minor": redeemed,
            "refunded_minor": refunded, "expired_minor": expired}  # fmt: skip


def expected_daily(h: History) -> list[dict[str, Any]]:
    return [
        daily_row(h.first, "SHOP1", "EUR", sold=5000),
        daily_row(h.first, "SHOP1", "GBP", sold=2000),
        daily_row(h.first, "SHOP2", "EUR", sold=3900),
        daily_row(h.second, "SHOP1", "EUR", redeemed=1200),
        daily_row(h.second, "SHOP2", "EUR", loaded=700, refunded=200),
        daily_row(h.third, "SHOP1", "EUR", redeemed=400),  # A captured hold.
        daily_row(h.third, "SHOP2", "GBP", redeemed=500),
        daily_row(h.expired_on, "SHOP2", "EUR", expired=900),  # Where PROMO was sold.
    ]


async def test_daily_totals_per_day_location_and_currency(http, world, history):
    period = {"from": history.first.isoformat(), "to": history.expired_on.isoformat()}
    daily = await report(http, world, "/v1/reports/daily", **period)
    assert daily["rows"] == expected_daily(history)
    assert daily["days"] == [(history.first + timedelta(days=n)).isoformat() for n in range(6)]
    assert daily["minor_digits"] == {"EUR": 2, "GBP": 2}
    # Only the days asked for.
    second = {"from": history.second.isoformat(), "to": history.second.isoformat()}
    assert (await report(http, world, "/v1/reports/daily", **second))["rows"] == (
        expected_daily(history)[3:5]
    )


async def test_daily_totals_equal_a_fold_over_the_ledger_stream(http, world, history, pool, app):
    decode = app.state.service.ledger.mapper.to_domain_event
    views = await pool.fetch("SELECT number, location_code FROM card_views")
    sold_at = {r["number"]: r["location_code"] for r in views}
    column = {"Sold": "sold_minor", "Loaded": "loaded_minor", "Redeemed": "redeemed_minor",
              "ReservationCaptured": "redeemed_minor", "Refunded": "refunded_minor",
              "Expired": "expired_minor"}  # fmt: skip
    folded: dict[tuple[str, str | None, str], dict[str, int]] = {}
    async for event in stream_ledger(pool, decode):
        if event.type not in column:
            continue
        location = event.location_code or (sold_at[event.number] if event.type == "Expired"
                                           else None)  # fmt: skip
        key = (event.occurred_at.date().isoformat(), location, event.currency)
        sums = folded.setdefault(key, dict.fromkeys(set(column.values()), 0))
        sums[column[event.type]] += event.amount_minor
    period = {"from": history.first.isoformat(), "to": history.expired_on.isoformat()}
    daily = await report(http, world, "/v1/reports/daily", **period)
    as_report = {
        (r["day"], r["location_code"], r["currency"]): {
            k: v for k, v in r.items() if k.endswith("_minor")
        }
        for r in daily["rows"]
    }
    assert as_report == folded


# Breakage.


async def test_breakage_is_the_value_left_on_expired_cards(http, world, history):
    period = {"from": history.first.isoformat(), "to": history.expired_on.isoformat()}
    breakage = await report(http, world, "/v1/reports/breakage", **period)
    assert breakage["totals"] == [{"currency": "EUR", "expired_minor": 900, "cards": 1}]
    assert breakage["days"] == [
        {"day": history.expired_on.isoformat(), "currency": "EUR", "expired_minor": 900,
         "cards": 1},
    ]  # fmt: skip
    before = {"from": history.first.isoformat(), "to": history.third.isoformat()}
    nothing = await report(http, world, "/v1/reports/breakage", **before)
    assert (nothing["totals"], nothing["days"]) == ([], [])


# CSV.


async def test_each_report_as_csv_parses_back_to_the_json_rows(http, world, history):
    period = {"from": history.first.isoformat(), "to": history.expired_on.isoformat()}

    def as_text(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
        return [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]

    liability = await report(http, world, "/v1/reports/liability")
    as_of = liability["as_of"]
    assert await csv_rows(http, world, "/v1/reports/liability", as_of=as_of) == as_text(
        liability["lines"]
    )
    series = await report(http, world, "/v1/reports/liability/series", **period)
    assert await csv_rows(http, world, "/v1/reports/liability/series", **period) == as_text(
        series["points"]
    )
    daily = await report(http, world, "/v1/reports/daily", **period)
    assert await csv_rows(http, world, "/v1/reports/daily", **period) == as_text(daily["rows"])
    breakage = await report(http, world, "/v1/reports/breakage", **period)
    assert await csv_rows(http, world, "/v1/reports/breakage", **period) == as_text(
        breakage["days"]
    )
    header = (await http.get("/v1/reports/daily", params={**period, "format": "csv"},
                             headers=world.finance.headers)).text.splitlines()[0]  # fmt: skip
    assert header == ("day,location_code,currency,sold_minor,loaded_minor,redeemed_minor,"
                      "refunded_minor,expired_minor")  # fmt: skip


# Access and parameters.


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_reports_need_finance_export(http, world, path):
    for client in (world.pos, world.auditor):
        response = await http.get(path, headers=client.headers)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "forbidden"
    assert (await http.get(path)).status_code == 401


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/v1/reports/daily", {"format": "xml"}, "validation_failed"),
        ("/v1/reports/daily", {"from": "yesterday"}, "validation_failed"),
        ("/v1/reports/daily", {"from": "2026-03-02", "to": "2026-03-01"}, "invalid_period"),
        ("/v1/reports/breakage", {"from": "2020-01-01", "to": "2026-01-01"}, "period_too_long"),
        ("/v1/reports/liability/series", {"from": "2026-02-30"}, "validation_failed"),
        ("/v1/reports/liability", {"as_of": "2026-03-01T00:00:00"}, "validation_failed"),
        ("/v1/reports/liability", {"as_of": "soon"}, "validation_failed"),
    ],
)
async def test_bad_report_parameters_are_refused(http, world, path, params, code):
    response = await http.get(path, params=params, headers=world.finance.headers)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == code, problem
    assert problem["detail"]


async def test_the_longest_period_allowed_is_served(http, world):
    last = datetime.now(UTC).date()
    first = last - timedelta(days=REPORT_DAYS_MAX - 1)
    series = await report(http, world, "/v1/reports/liability/series",
                          **{"from": first.isoformat(), "to": last.isoformat()})  # fmt: skip
    assert series["points"] == []
    daily = await report(http, world, "/v1/reports/daily",
                         **{"from": first.isoformat(), "to": last.isoformat()})  # fmt: skip
    assert len(daily["days"]) == REPORT_DAYS_MAX


async def test_the_reports_page_is_served_without_a_token_and_holds_no_data(http, world):
    response = await http.get("/reports")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "/v1/reports/liability/series" in response.text
    # Nothing is loaded from elsewhere: no script, style or image by URL.
    assert "<script src" not in response.text
    assert 'rel="stylesheet"' not in response.text
    assert "https://" not in response.text


async def test_the_reports_are_in_the_openapi_document(http):
    paths = (await http.get("/schema/openapi.json")).json()["paths"]
    assert set(ENDPOINTS) <= set(paths)
    assert "/reports" not in paths
    daily = paths["/v1/reports/daily"]["get"]
    assert {p["name"] for p in daily["parameters"]} == {"from", "to", "format"}
