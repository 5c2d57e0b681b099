"""Exports stream the exact rows of a period as CSV, JSON lines or Parquet, with a manifest."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.integration.test_cli import giftledger

FIXED = "1000000000000001"  # fixed16, EUR: reservations.
DYNAMIC = "5000000000000000001"  # dynamic19, EUR: loadable.
GOLD = "7700000000000001"  # gold, GBP.
EXPORT = "/v1/exports/ledger"
MANIFEST = "/v1/exports/ledger/manifest"
THROUGH = "Giftledger-Through-Position"
FAR_PAST = datetime(2000, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)

# What the history below records, in log order: (type, card, currency, amount, location, key).
EVENTS = [
    ("Sold", FIXED, "EUR", 5000, "SHOP1", None),
    ("Sold", DYNAMIC, "EUR", 2000, "SHOP2", None),
    ("Sold", GOLD, "GBP", 3000, "SHOP1", None),
    ("Redeemed", DYNAMIC, "EUR", 700, "SHOP2", "till-1"),
    ("Loaded", DYNAMIC, "EUR", 500, "SHOP1", None),
    ("Reserved", FIXED, "EUR", 1500, "SHOP1", None),
    ("ReservationCaptured", FIXED, "EUR", 1000, "SHOP1", None),
    ("ReservationReleased", FIXED, "EUR", 500, "SHOP1", None),
    ("Refunded", DYNAMIC, "EUR", 200, "SHOP2", None),
    ("Blocked", GOLD, "GBP", 0, None, None),
]


async def post(http, client, path: str, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {**client.headers, **({"Idempotency-Key": key} if key else {})}
    response = await http.post(path, json=body, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def history(http, world) -> None:
    """Three cards in two currencies and every kind of event that moves or holds money."""
    pos = world.pos
    for number, card_type, amount, shop in (
        (FIXED, "fixed16", 5000, "SHOP1"),
        (DYNAMIC, "dynamic19", 2000, "SHOP2"),
        (GOLD, "gold", 3000, "SHOP1"),
    ):
        body = {"card_type": card_type, "amount_minor": amount, "number": number,
                "location_code": shop}  # fmt: skip
        await post(http, pos, "/v1/cards", body)
    shop2 = {"location_code": "SHOP2"}
    await post(http, pos, f"/v1/cards/{DYNAMIC}/redeem", {"amount_minor": 700, **shop2}, "till-1")
    await post(
        http, pos, f"/v1/cards/{DYNAMIC}/load", {"amount_minor": 500, "location_code": "SHOP1"}
    )
    held = await post(
        http, pos, f"/v1/cards/{FIXED}/holds", {"amount_minor": 1500, "location_code": "SHOP1"}
    )
    capture = f"/v1/cards/{FIXED}/holds/{held['hold_id']}/capture"
    await post(http, pos, capture, {"amount_minor": 1000, "location_code": "SHOP1"})
    await post(http, pos, f"/v1/cards/{DYNAMIC}/refund", {"amount_minor": 200, **shop2})
    admin = await world.client("admin", scopes=("admin",))
    await post(http, admin, f"/v1/cards/{GOLD}/block", {"reason": "lost"})


def period(start: datetime = FAR_PAST, end: datetime = FAR_FUTURE, **more: Any) -> dict[str, Any]:
    return {"from": start.isoformat(), "to": end.isoformat(), **more}


async def export(http, world, **params: Any):
    response = await http.get(EXPORT, params=period(**params), headers=world.finance.headers)
    assert response.status_code == 200, response.text
    return response


def csv_rows(response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.text)))


def jsonl_lines(response) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows and the manifest that ends a JSON-lines export."""
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert set(lines[-1]) == {"manifest"}
    return lines[:-1], lines[-1]["manifest"]


async def log_rows(pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM ledger_log ORDER BY position")
    return [dict(row) for row in rows]


def check_events(rows: list[dict[str, Any]], manifest: dict[str, Any]) -> list[str]:
    """What a receiver checks an events export against its manifest; the problems it finds."""
    problems = []
    if len(rows) != manifest["rows"]:
        problems.append(f"{len(rows)} rows, manifest says {manifest['rows']}")
    sums: Counter[tuple[str, str]] = Counter()
    counts: Counter[tuple[str, str]] = Counter()
    for row in rows:
        sums[row["currency"], row["type"]] += int(row["amount_minor"])
        counts[row["currency"], row["type"]] += 1
    for line in manifest["event_sums"]:
        key = (line["currency"], line["type"])
        if (counts[key], sums[key]) != (line["rows"], line["amount_minor"]):
            problems.append(f"{key}: {counts[key]} rows of {sums[key]}, manifest says {line}")
    last = rows[-1] if rows else None
    if last and (int(last["position"]), last["chain_hash"]) != (
        manifest["last_position"],
        manifest["last_chain_hash"],
    ):
        problems.append("the last row is not the manifest's last event")
    return problems


# Events.


async def test_csv_export_has_every_event_of_the_period_with_exact_amounts(http, world, pool):
    await history(http, world)
    response = await export(http, world, format="csv", kind="events")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="ledger-events-20000101T000000Z-21000101T000000Z'
        f'-p{response.headers[THROUGH]}.csv"'
    )
    rows = csv_rows(response)
    found = [(r["type"], r["card_number"], r["currency"], int(r["amount_minor"]),
              r["location_code"] or None, r["idempotency_key"] or None) for r in rows]  # fmt: skip
    assert found == EVENTS
    log = await log_rows(pool)
    assert [int(r["position"]) for r in rows] == [r["position"] for r in log]
    assert [r["chain_hash"] for r in rows] == [r["chain_hash"].hex() for r in log]
    assert [r["card_hash"] for r in rows] == [r["card_hash"].hex() for r in log]
    assert [r["occurred_at"] for r in rows] == [
        r["occurred_at"].isoformat().replace("+00:00", "Z") for r in log
    ]
    assert [r["card_type"] for r in rows[:3]] == ["fixed16", "dynamic19", "gold"]
    assert [r["version"] for r in rows if r["card_number"] == DYNAMIC] == ["1", "2", "3", "4"]
    assert {r["actor"] for r in rows[:-1]} == {world.pos.client_id}
    assert int(response.headers[THROUGH]) == log[-1]["position"]


async def test_jsonl_export_has_the_same_rows_as_integers_and_ends_with_its_manifest(http, world):
    await history(http, world)
    as_csv = csv_rows(await export(http, world, format="csv"))
    rows, manifest = jsonl_lines(await export(http, world, format="jsonl"))
    assert all(isinstance(r["amount_minor"], int) for r in rows)
    assert [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows] == as_csv
    assert manifest["rows"] == manifest["events"] == len(EVENTS)
    assert check_events(rows, manifest) == []


async def test_parquet_export_reads_back_as_the_same_rows_with_its_manifest_in_the_footer(
    http, world
):
    await history(http, world)
    rows, manifest = jsonl_lines(await export(http, world, format="jsonl"))
    response = await export(http, world, format="parquet")
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    parquet = pq.ParquetFile(io.BytesIO(response.content))
    table = parquet.read()
    assert str(table.schema.field("amount_minor").type) == "int64"
    assert str(table.schema.field("occurred_at").type) == "timestamp[us, tz=UTC]"
    read = table.to_pylist()
    for row in read:
        row["occurred_at"] = row["occurred_at"].isoformat().replace("+00:00", "Z")
    assert read == rows
    footer = json.loads(parquet.metadata.metadata[b"giftledger.manifest"])
    assert footer == {**manifest, "format": "parquet"}


async def test_only_events_that_occurred_in_the_half_open_period_are_exported(http, world, pool):
    await history(http, world)
    log = await log_rows(pool)
    start, end = log[3]["occurred_at"], log[6]["occurred_at"]
    rows = csv_rows(await export(http, world, format="csv", start=start, end=end))
    assert [r["type"] for r in rows] == ["Redeemed", "Loaded", "Reserved"]
    later = csv_rows(await export(http, world, format="csv", start=end))
    assert [r["type"] for r in later] == [e[0] for e in EVENTS[6:]]
    empty = await export(http, world, format="csv", end=log[0]["occurred_at"])
    assert empty.text.splitlines() == [",".join(csv.DictReader(io.StringIO(empty.text)).fieldnames)]


# Postings.


async def test_postings_export_balances_to_zero_per_currency_and_holds_are_memo(http, world):
    await history(http, world)
    rows, manifest = jsonl_lines(await export(http, world, format="jsonl", kind="postings"))
    balance: Counter[tuple[str, bool]] = Counter()
    for row in rows:
        balance[row["currency"], row["memo"]] += row["debit_minor"] - row["credit_minor"]
    assert set(balance) == {("EUR", False), ("EUR", True), ("GBP", False)}
    assert set(balance.values()) == {0}
    redeemed = [(r["account"], r["debit_minor"], r["credit_minor"]) for r in rows
                if r["event_type"] == "Redeemed"]  # fmt: skip
    assert redeemed == [("card_liability", 700, 0), ("location_revenue:SHOP2", 0, 700)]
    captured = [(r["account"], r["debit_minor"], r["credit_minor"], r["memo"]) for r in rows
                if r["event_type"] == "ReservationCaptured"]  # fmt: skip
    assert captured == [
        ("card_liability", 1000, 0, False),
        ("location_revenue:SHOP1", 0, 1000, False),
        ("holds_available", 1000, 0, True),
        ("holds", 0, 1000, True),
    ]
    assert "Blocked" not in {r["event_type"] for r in rows}
    assert (manifest["events"], manifest["rows"]) == (len(EVENTS), len(rows))
    assert manifest["posting_sums"] == [
        {"currency": "EUR", "memo": False, "rows": 12, "debit_minor": 9400, "credit_minor": 9400},
        {"currency": "EUR", "memo": True, "rows": 6, "debit_minor": 3000, "credit_minor": 3000},
        {"currency": "GBP", "memo": False, "rows": 2, "debit_minor": 3000, "credit_minor": 3000},
    ]


# The manifest.


async def test_manifest_counts_sums_and_names_the_last_event_of_the_period(http, world, pool):
    await history(http, world)
    response = await export(http, world, format="csv")
    through = int(response.headers[THROUGH])
    got = await http.get(MANIFEST, params=period(format="csv", through_position=through),
                         headers=world.finance.headers)  # fmt: skip
    assert got.status_code == 200, got.text
    manifest = got.json()
    last = (await log_rows(pool))[-1]
    assert manifest["through_position"] == through == last["position"]
    assert (manifest["last_position"], manifest["last_chain_hash"]) == (
        last["position"], last["chain_hash"].hex()
    )  # fmt: skip
    assert (manifest["kind"], manifest["format"], manifest["rows"]) == ("events", "csv", 10)
    assert manifest["from"] == "2000-01-01T00:00:00Z"
    assert manifest["to"] == "2100-01-01T00:00:00Z"
    assert manifest["event_sums"] == [
        {"currency": "EUR", "type": "Loaded", "rows": 1, "amount_minor": 500},
        {"currency": "EUR", "type": "Redeemed", "rows": 1, "amount_minor": 700},
        {"currency": "EUR", "type": "Refunded", "rows": 1, "amount_minor": 200},
        {"currency": "EUR", "type": "ReservationCaptured", "rows": 1, "amount_minor": 1000},
        {"currency": "EUR", "type": "ReservationReleased", "rows": 1, "amount_minor": 500},
        {"currency": "EUR", "type": "Reserved", "rows": 1, "amount_minor": 1500},
        {"currency": "EUR", "type": "Sold", "rows": 2, "amount_minor": 7000},
        {"currency": "GBP", "type": "Blocked", "rows": 1, "amount_minor": 0},
        {"currency": "GBP", "type": "Sold", "rows": 1, "amount_minor": 3000},
    ]
    assert check_events(csv_rows(response), manifest) == []


async def test_a_receiver_who_lost_a_row_finds_out_from_the_manifest(http, world):
    await history(http, world)
    response = await export(http, world, format="csv")
    rows = csv_rows(response)
    got = await http.get(
        MANIFEST, params=period(through_position=response.headers[THROUGH]),
        headers=world.finance.headers,
    )  # fmt: skip
    manifest = got.json()
    assert check_events(rows, manifest) == []
    assert check_events(rows[:4] + rows[5:], manifest) != []
    assert check_events(rows[:-1], manifest) != []


async def test_the_manifest_of_an_export_stays_the_same_while_the_ledger_grows(http, world):
    await history(http, world)
    response = await export(http, world, format="jsonl")
    _, trailer = jsonl_lines(response)
    await post(http, world.pos, f"/v1/cards/{DYNAMIC}/redeem", {"amount_minor": 1})
    params = period(format="jsonl", through_position=response.headers[THROUGH])
    later = await http.get(MANIFEST, params=params, headers=world.finance.headers)
    assert later.json() == trailer
    now = await http.get(MANIFEST, params=period(format="jsonl"), headers=world.finance.headers)
    assert now.json()["rows"] == trailer["rows"] + 1
    assert now.json()["through_position"] > trailer["through_position"]


# Who may export, and what is refused.


@pytest.mark.parametrize("who", ["pos", "auditor"])
async def test_only_finance_may_export(http, world, who):
    client = getattr(world, who)
    for path in (EXPORT, MANIFEST):
        response = await http.get(path, params=period(), headers=client.headers)
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "forbidden"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"to": "2100-01-01T00:00:00Z"}, "invalid_export_period"),
        ({"from": "2000-01-01T00:00:00Z"}, "invalid_export_period"),
        (period() | {"from": "2000-01-01T00:00:00"}, "invalid_export_period"),
        (period() | {"to": "yesterday"}, "invalid_export_period"),
        (period(FAR_FUTURE, FAR_PAST), "invalid_export_period"),
        (period(FAR_PAST, FAR_PAST), "invalid_export_period"),
        (period(format="xml"), "invalid_export_format"),
        (period(kind="ledger"), "invalid_export_kind"),
    ],
)
async def test_bad_parameters_are_refused_with_a_stable_code(http, world, params, code):
    for path in (EXPORT, MANIFEST):
        response = await http.get(path, params=params, headers=world.finance.headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code


async def test_a_through_position_past_the_head_is_refused(http, world):
    await history(http, world)
    head = int((await export(http, world)).headers[THROUGH])
    response = await http.get(MANIFEST, params=period(through_position=head + 1),
                              headers=world.finance.headers)  # fmt: skip
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_through_position"


async def test_parquet_without_pyarrow_is_refused_with_its_own_code(http, world, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    response = await http.get(EXPORT, params=period(format="parquet"),
                              headers=world.finance.headers)  # fmt: skip
    assert response.status_code == 422
    assert response.json()["code"] == "parquet_unavailable"
    assert "parquet" in response.json()["detail"]
    csv_export = await http.get(EXPORT, params=period(), headers=world.finance.headers)
    assert csv_export.status_code == 200


# The command line.


async def test_cli_export_writes_the_file_and_its_manifest(http, world, database_url, tmp_path):
    await history(http, world)
    output = tmp_path / "postings.csv"
    done = await giftledger(
        database_url, "export", "--from", FAR_PAST.isoformat(), "--to", FAR_FUTURE.isoformat(),
        "--format", "csv", "--kind", "postings", "--output", str(output),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    over_http = await export(http, world, format="csv", kind="postings")
    assert output.read_text() == over_http.text
    manifest = json.loads((tmp_path / "postings.csv.manifest.json").read_text())
    params = period(kind="postings", through_position=over_http.headers[THROUGH])
    assert (
        manifest == (await http.get(MANIFEST, params=params, headers=world.finance.headers)).json()
    )
    assert manifest["rows"] == len(csv_rows(over_http)) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "postings.csv",
        "postings.csv.manifest.json",
    ]
    assert "events" in done.stderr
    assert str(output) in done.stdout


async def test_cli_export_refuses_a_period_without_a_time_zone(world, database_url, tmp_path):
    output = tmp_path / "x.csv"
    done = await giftledger(database_url, "export", "--from", "2026-01-01T00:00:00",
                            "--to", "2026-02-01T00:00:00Z", "--output", str(output))  # fmt: skip
    assert done.returncode == 2
    assert "time zone" in done.stderr
    assert not output.exists()


async def test_cli_export_of_an_empty_period_writes_the_header_and_a_manifest_of_nothing(
    world, database_url, tmp_path
):
    output = tmp_path / "nothing.jsonl"
    done = await giftledger(
        database_url, "export", "--from", "2001-01-01T00:00:00Z", "--to", "2001-01-02T00:00:00Z",
        "--format", "jsonl", "--output", str(output),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads(output.with_name("nothing.jsonl.manifest.json").read_text())
    assert [json.loads(line) for line in output.read_text().splitlines()] == [
        {"manifest": manifest}
    ]
    assert (manifest["events"], manifest["rows"], manifest["last_chain_hash"]) == (0, 0, None)
    assert manifest["event_sums"] == []
