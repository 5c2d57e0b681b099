"""`giftledger history` and `giftledger audit verify` give auditors the ledger's proof offline."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from tests.integration.test_cli import giftledger, json_lines, ok

NUMBER = "6100000000000000001"


async def a_card_with_history(http, world) -> datetime:
    """Sold for 50.00, paid 12.50 with a key, then (after the returned instant) loaded 5.00."""
    pos = world.pos.headers
    body = {"card_type": "dynamic19", "amount_minor": 5000, "number": NUMBER,
            "location_code": "SHOP1"}  # fmt: skip
    assert (await http.post("/v1/cards", json=body, headers=pos)).status_code == 201
    pay = {"amount_minor": 1250, "location_code": "SHOP1"}
    response = await http.post(f"/v1/cards/{NUMBER}/redeem", json=pay,
                               headers={**pos, "Idempotency-Key": "till-9"})  # fmt: skip
    assert response.status_code == 200, response.text
    await asyncio.sleep(0.01)
    between = datetime.now(UTC)
    await asyncio.sleep(0.01)
    load = {"amount_minor": 500, "location_code": "SHOP2"}
    assert (await http.post(f"/v1/cards/{NUMBER}/load", json=load, headers=pos)).status_code == 200
    return between


async def test_history_prints_a_running_balance(database_url, http, world):
    await a_card_with_history(http, world)
    out = await ok(database_url, "history", NUMBER)
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["ver", "position", "occurred_at", "type"]
    rows = [line.split() for line in lines[1:4]]
    # type, amount, balance, reserved, available for each event, in order.
    assert [r[3:8] for r in rows] == [
        ["Sold", "50.00", "50.00", "0.00", "50.00"],
        ["Redeemed", "12.50", "37.50", "0.00", "37.50"],
        ["Loaded", "5.00", "42.50", "0.00", "42.50"],
    ]
    assert "till-9" in lines[2]
    assert out.strip().endswith("now: balance 42.50 reserved 0.00 available 42.50 EUR")


async def test_history_as_of_stops_at_that_instant(database_url, http, world):
    between = await a_card_with_history(http, world)
    out = await ok(database_url, "history", NUMBER, "--as-of", between.isoformat(), "--json")
    events = json_lines(out)
    assert [(e["type"], e["balance_minor"]) for e in events] == [("Sold", 5000), ("Redeemed", 3750)]
    assert events[1]["idempotency_key"] == "till-9"
    assert all(len(e["card_hash"]) == 64 and e["position"] for e in events)


async def test_history_refuses_a_time_without_zone_and_an_unknown_card(database_url, world):
    done = await giftledger(database_url, "history", NUMBER, "--as-of", "2026-01-01T00:00:00")
    assert done.returncode == 2
    assert "time zone" in done.stderr
    done = await giftledger(database_url, "history", "6100000000000000999")
    assert done.returncode == 1
    assert "does not exist" in done.stderr


async def test_audit_verify_passes_then_fails_after_tampering(database_url, http, world, pool):
    await a_card_with_history(http, world)
    report = json.loads(await ok(database_url, "audit", "verify", "--json"))
    assert (report["ok"], report["events"], report["cards"]) == (True, 3, 1)
    position = await pool.fetchval("SELECT max(notification_id) FROM giftledger_events")
    await pool.execute(
        "UPDATE giftledger_events SET state = convert_to(replace(convert_from(state, 'UTF8'),"
        " '\"amount_minor\":500', '\"amount_minor\":5000'), 'UTF8') WHERE notification_id = $1",
        position,
    )
    done = await giftledger(database_url, "audit", "verify")
    assert done.returncode == 1
    assert f"altered_event at position {position}" in done.stderr
