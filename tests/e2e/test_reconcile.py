"""Reconciliation sorts a settlement file against the ledger into four lists, by HTTP and CLI."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import pytest

from projections.reconcile import SETTLEMENT_BYTES_MAX
from tests.integration.test_cli import giftledger

RESICO = "/api/giftcards/v1"
FIXED = "1000000000000011"  # fixed16, EUR
OTHER = "1000000000000012"  # fixed16, EUR
DYNAMIC = "1000000000000000031"  # dynamic19, EUR
GOLD = "7700000000000021"  # gold, GBP
UNKEYED = "1000000000000013"  # fixed16, EUR, sold without any reference
HEADER = "date,location,reference,amount"


async def ok(response) -> dict[str, Any]:
    assert response.status_code in (200, 201), response.text
    return response.json()


async def resico_sale(http, world, number: str, amount: str, transaction_no: str, location: str):
    body = {"amount": amount, "transactionNo": transaction_no, "locationCode": location}
    await ok(await http.post(f"{RESICO}/cards/{number}", json=body, headers=world.pos.headers))


async def native(http, world, path: str, body: dict[str, Any], key: str | None) -> dict[str, Any]:
    headers = {**world.pos.headers, **({"Idempotency-Key": key} if key else {})}
    return await ok(await http.post(path, json=body, headers=headers))


@pytest.fixture
async def day(http, world, pool) -> date:
    """Sales, a use, a captured hold, a load and a refund, each under a reference; answers the
    UTC day they happened."""
    await resico_sale(http, world, FIXED, "50.00", "T-1001", "SHOP1")
    await resico_sale(http, world, OTHER, "20.00", "T-1002", "SHOP1")
    await resico_sale(http, world, GOLD, "15.00", "T-2001", "SHOP2")
    sale = {"card_type": "dynamic19", "amount_minor": 3000, "number": DYNAMIC,
            "location_code": "SHOP2"}  # fmt: skip
    await native(http, world, "/v1/cards", sale, "sale-dyn")
    unkeyed = {"card_type": "fixed16", "amount_minor": 900, "number": UNKEYED}
    await native(http, world, "/v1/cards", {**unkeyed, "location_code": "SHOP1"}, None)
    shop1, shop2 = {"location_code": "SHOP1"}, {"location_code": "SHOP2"}
    await native(http, world, f"/v1/cards/{FIXED}/redeem", {"amount_minor": 1250, **shop1},
                 "pay-1")  # fmt: skip
    hold = await native(http, world, f"/v1/cards/{FIXED}/holds", {"amount_minor": 1000, **shop1},
                        "hold-1")  # fmt: skip
    await native(http, world, f"/v1/cards/{FIXED}/holds/{hold['hold_id']}/capture",
                 {"amount_minor": 400, **shop1}, "cap-1")  # fmt: skip
    await native(http, world, f"/v1/cards/{DYNAMIC}/load", {"amount_minor": 700, **shop2},
                 "load-1")  # fmt: skip
    await native(http, world, f"/v1/cards/{FIXED}/refund", {"amount_minor": 250, **shop2},
                 "refund-1")  # fmt: skip
    occurred = await pool.fetchval("SELECT max(occurred_at) FROM ledger_log")
    return occurred.date()


def settlement(day: date, *rows: tuple[str, str, str]) -> bytes:
    """A file of (location, reference, amount) rows on `day`."""
    lines = [HEADER, *(f"{day},{location},{ref},{amount}" for location, ref, amount in rows)]
    return ("\n".join(lines) + "\n").encode()


EVERYTHING = (
    ("SHOP1", "T-1001", "50.00"),
    ("SHOP1", "T-1002", "20.00"),
    ("SHOP2", "T-2001", "15.00"),
    ("SHOP2", "sale-dyn", "30.00"),
    ("SHOP1", "pay-1", "12.50"),
    ("SHOP1", "cap-1", "4"),  # 4 is 4.00: amounts are exact decimals.
    ("SHOP2", "load-1", "7.00"),
    ("SHOP2", "refund-1", "2.50"),
)


async def upload(http, world, body: bytes, client=None, media_type="text/csv"):
    headers = {**(client or world.finance).headers, "Content-Type": media_type}
    return await http.post("/v1/reconciliations", content=body, headers=headers)


async def reconciled(http, world, body: bytes) -> dict[str, Any]:
    response = await upload(http, world, body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_file_that_names_every_keyed_entry_with_its_amount_is_ok(http, world, day):
    result = await reconciled(http, world, settlement(day, *EVERYTHING))
    assert result["ok"] is True, result
    assert result["counts"] == {"matched": 8, "missing_from_ledger": 0, "missing_from_file": 0,
                                "amount_mismatches": 0}  # fmt: skip
    assert (result["from"], result["to"]) == (day.isoformat(), day.isoformat())
    assert result["locations"] == ["SHOP1", "SHOP2"]
    by_reference = {m["reference"]: m for m in result["matched"]}
    assert {r: (m["kind"], m["currency"], m["ledger_amount_minor"])
            for r, m in by_reference.items()} == {
        "T-1001": ("sale", "EUR", 5000),
        "T-1002": ("sale", "EUR", 2000),
        "T-2001": ("sale", "GBP", 1500),
        "sale-dyn": ("sale", "EUR", 3000),
        "pay-1": ("redemption", "EUR", 1250),
        "cap-1": ("redemption", "EUR", 400),  # The captured part only, not the 1000 held.
        "load-1": ("load", "EUR", 700),
        "refund-1": ("refund", "EUR", 250),
    }  # fmt: skip
    assert by_reference["pay-1"]["card_numbers"] == [FIXED]
    assert by_reference["cap-1"]["line"] == 7


async def test_each_kind_of_difference_lands_in_its_own_list(http, world, day):
    rows = [r for r in EVERYTHING if r[1] != "T-1002"]  # The second sale is not in the file.
    rows = [("SHOP2", "T-2001", "15.5") if r[1] == "T-2001" else r for r in rows]
    rows.append(("SHOP1", "T-9999", "10.00"))  # No such transaction.
    rows.append(("SHOP2", "pay-1", "12.50"))  # A real key, at the wrong location.
    result = await reconciled(http, world, settlement(day, *rows))
    assert result["ok"] is False
    assert result["counts"] == {"matched": 6, "missing_from_ledger": 2, "missing_from_file": 1,
                                "amount_mismatches": 1}  # fmt: skip
    [mismatch] = result["amount_mismatches"]
    assert (mismatch["reference"], mismatch["currency"], mismatch["file_amount_minor"],
            mismatch["ledger_amount_minor"], mismatch["difference_minor"]) == (
        "T-2001", "GBP", 1550, 1500, 50)  # fmt: skip
    assert [(r["line"], r["location"], r["reference"], r["amount"])
            for r in result["missing_from_ledger"]] == [
        (9, "SHOP1", "T-9999", "10.00"), (10, "SHOP2", "pay-1", "12.50")]  # fmt: skip
    [missing] = result["missing_from_file"]
    assert (missing["location"], missing["reference"], missing["idempotency_key"],
            missing["currency"], missing["amount_minor"], missing["kind"],
            missing["card_numbers"], missing["date"]) == (
        "SHOP1", "T-1002", None, "EUR", 2000, "sale", [OTHER], day.isoformat())  # fmt: skip
    assert sorted(m["reference"] for m in result["matched"]) == sorted(
        ["T-1001", "sale-dyn", "pay-1", "cap-1", "load-1", "refund-1"]
    )


async def test_only_the_files_locations_and_days_can_be_missing_from_it(http, world, day):
    shop2 = [r for r in EVERYTHING if r[0] == "SHOP2"]
    result = await reconciled(http, world, settlement(day, *shop2))
    assert result["ok"] is True, result
    assert result["locations"] == ["SHOP2"]
    # A file dated the next day still finds the day's entries (local-time files), but the
    # day's unnamed entries are outside its days.
    tomorrow = day + timedelta(days=1)
    result = await reconciled(http, world, settlement(tomorrow, ("SHOP1", "T-1001", "50.00")))
    assert (result["ok"], result["counts"]["matched"]) == (True, 1)
    far = day + timedelta(days=3)
    result = await reconciled(http, world, settlement(far, ("SHOP1", "T-1001", "50.00")))
    assert (result["ok"], result["counts"]["missing_from_ledger"]) == (False, 1)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", None, "empty"),
        ("date,location,amount\n", 1, "reference"),
        (f"{HEADER}\n", None, "no rows"),
        (f"{HEADER}\n2026-02-30,SHOP1,T-1,1.00\n", 2, "not a day"),
        (f"{HEADER}\n2026-02-01,SHOP1,T-1,1.00\n22/02/2026,SHOP1,T-2,1.00\n", 3, "YYYY-MM-DD"),
        (f"{HEADER}\n2026-02-01,SHOP1,T-1,-1.00\n", 2, "positive decimal"),
        (f"{HEADER}\n2026-02-01,SHOP1,T-1,1e3\n", 2, "positive decimal"),
        (f"{HEADER}\n2026-02-01,SHOP1,T-1\n", 2, "fields"),
        (f"{HEADER}\n2026-02-01,,T-1,1.00\n", 2, "location"),
        (f"{HEADER}\n2026-02-01,SHOP1,T-1,1.00\n\n2026-02-01,SHOP1,T-1,2.00\n", 4, "line 2"),
        (f"{HEADER}\n2026-01-01,SHOP1,T-1,1.00\n2026-06-01,SHOP1,T-2,1.00\n", None, "days"),
    ],
)
async def test_a_malformed_file_is_refused_naming_the_line(http, world, text, line, fragment):
    response = await upload(http, world, text.encode())
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_settlement_file"
    assert fragment in problem["detail"]
    if line is not None:
        assert problem["detail"].startswith(f"line {line}: ")


async def test_an_amount_with_more_decimals_than_the_entrys_currency_is_refused(
    http, world, day
):
    response = await upload(http, world, settlement(day, ("SHOP1", "T-1001", "50.001")))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail.startswith("line 2: amount 50.001 in EUR")


async def test_the_upload_has_its_own_body_limit_above_the_global_one(http, world, day):
    # About 200 KiB: far above the service's global request body limit.
    rows = [("SHOP1", f"X-{n:08d}", "1.00") for n in range(5_000)]
    body = settlement(day, *rows)
    assert len(body) > 128 * 1024
    result = await reconciled(http, world, body)
    assert result["counts"]["missing_from_ledger"] == 5_000
    too_large = await upload(http, world, b"x" * (SETTLEMENT_BYTES_MAX + 1))
    assert too_large.status_code == 413


async def test_reconciliation_needs_finance_export_and_csv(http, world):
    body = settlement(date(2026, 1, 1), ("SHOP1", "T-1", "1.00"))
    for client in (world.pos, world.auditor):
        assert (await upload(http, world, body, client=client)).status_code == 403
    response = await upload(http, world, body, media_type="application/json")
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


# The CLI.


async def test_the_cli_exits_zero_when_the_file_agrees(database_url, world, http, day, tmp_path):
    path = tmp_path / "settlement.csv"
    path.write_bytes(settlement(day, *EVERYTHING))
    done = await giftledger(database_url, "reconcile", str(path))
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "matched 8, amount mismatches 0" in done.stdout
    assert done.stdout.rstrip().endswith("OK: the file and the ledger agree")


async def test_the_cli_exits_one_and_shows_each_difference(database_url, world, http, day,
                                                           tmp_path):  # fmt: skip
    rows = [r for r in EVERYTHING if r[1] != "T-1002"]
    rows = [("SHOP2", "T-2001", "15.5") if r[1] == "T-2001" else r for r in rows]
    path = tmp_path / "settlement.csv"
    path.write_bytes(settlement(day, *rows, ("SHOP1", "T-9999", "10.00")))
    done = await giftledger(database_url, "reconcile", str(path))
    assert done.returncode == 1, (done.stdout, done.stderr)
    out = done.stdout
    assert "Amount mismatches (1)" in out
    assert "15.50 GBP  15.00 GBP  0.50 GBP" in out
    assert "Missing from the ledger (1)" in out
    assert "T-9999" in out
    assert "Missing from the file (1)" in out
    assert f"{day}  SHOP1     T-1002" in out
    assert out.rstrip().endswith("DIFFERENCES FOUND")
    as_json = await giftledger(database_url, "reconcile", str(path), "--json")
    assert as_json.returncode == 1
    result = json.loads(as_json.stdout)
    assert (result["ok"], result["counts"]["amount_mismatches"]) == (False, 1)
    assert result["missing_from_file"][0]["reference"] == "T-1002"


async def test_the_cli_exits_two_naming_the_line_of_a_malformed_file(database_url, world,
                                                                     tmp_path):  # fmt: skip
    path = tmp_path / "settlement.csv"
    path.write_text(f"{HEADER}\n2026-02-01,SHOP1,T-1,1.00\n2026-02-01,SHOP1,T-2,ten\n")
    done = await giftledger(database_url, "reconcile", str(path))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "line 3: amount 'ten'" in done.stderr
    assert "Traceback" not in done.stderr
