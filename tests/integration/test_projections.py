"""The card projection always equals a fold of the events, and `projections rebuild` restores it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.integration.test_cli import giftledger

RESICO = "/api/giftcards/v1"
FIXED = "1000000000000001"
GOLD = "7712345678123456"
DYNAMIC = "1000000000000000002"
BLOCKED = "1000000000000003"

BALANCE_SIGN = {
    "Sold": 1,
    "Loaded": 1,
    "Refunded": 1,
    "Redeemed": -1,
    "ReservationCaptured": -1,
    "Expired": -1,
}
RESERVED_SIGN = {"Reserved": 1, "ReservationCaptured": -1, "ReservationReleased": -1}


async def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()


async def post(http, path: str, body: dict[str, Any], client, status: int = 200):
    return await ok(await http.post(path, json=body, headers=client.headers), status)


async def write_history(http, world) -> None:
    """Sells, uses, reservations, cancellations, loads, refunds and a block, through HTTP."""
    pos, other = world.pos, world.other
    admin = await world.client("admin", scopes=("admin",))
    for number, amount in ((FIXED, 20.0), (GOLD, 50.0), (BLOCKED, 10.0)):
        sale = {"amount": amount, "transactionNo": number[-8:], "locationCode": "SHOP1"}
        await post(http, f"{RESICO}/cards/{number}", sale, pos)
    await post(
        http, f"{RESICO}/transactions/{pos.consumer_key}/cards/{FIXED}", {"amount": 5.0}, pos
    )
    await post(http, f"{RESICO}/reserve/{FIXED}", {"locationCode": "SHOP1"}, pos)
    await ok(await http.get(f"{RESICO}/cancelreserve/{FIXED}", headers=pos.headers))
    await post(http, f"{RESICO}/reserve/{GOLD}", {"locationCode": "SHOP1", "amount": 10.0}, pos)
    held = await post(http, f"/v1/cards/{GOLD}/holds", {"amount_minor": 1500}, other, 201)
    capture = f"/v1/cards/{GOLD}/holds/{held['hold_id']}/capture"
    await post(http, capture, {"amount_minor": 400}, other)
    await post(http, f"/v1/cards/{GOLD}/holds", {"amount_minor": 700}, other, 201)
    issue = {"card_type": "dynamic19", "amount_minor": 0, "number": DYNAMIC}
    await post(http, "/v1/cards", issue, pos, 201)
    for action, amount in (("load", 2500), ("redeem", 900), ("refund", 300), ("load", 100)):
        await post(http, f"/v1/cards/{DYNAMIC}/{action}", {"amount_minor": amount}, pos)
    await post(http, f"/v1/cards/{BLOCKED}/block", {"reason": "lost"}, admin)


async def all_events(http, headers, number: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await ok(
            await http.get(
                f"/v1/cards/{number}/events",
                params={"after_version": after, "limit": 3},
                headers=headers,
            )
        )
        events += page["events"]
        if page["next_after_version"] is None:
            return events
        after = page["next_after_version"]


def signed(signs: dict[str, int], event: dict[str, Any]) -> int:
    return signs.get(event["type"], 0) * (event["amount_minor"] or 0)


def fold(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Balance, reserved amount, open holds and version, from the events alone."""
    balance = sum(signed(BALANCE_SIGN, e) for e in events)
    reserved = sum(signed(RESERVED_SIGN, e) for e in events)
    holds: Counter[str] = Counter()
    for e in events:
        holds[e["data"].get("hold_id", "")] += signed(RESERVED_SIGN, e)
    return {
        "balance_minor": balance,
        "reserved_minor": reserved,
        "holds": {hold_id: amount for hold_id, amount in holds.items() if amount},
        "version": events[-1]["version"],
    }


async def projection_rows(pool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    views = await pool.fetch("SELECT * FROM card_views ORDER BY card_id")
    holds = await pool.fetch("SELECT * FROM card_holds ORDER BY hold_id")
    return [dict(r) for r in views], [dict(r) for r in holds]


async def assert_projection_is_the_fold_of_the_events(http, pool, headers) -> int:
    """Every projected card equals the fold of its events; returns how many events there are."""
    views, holds = await projection_rows(pool)
    assert views, "no cards projected"
    total = 0
    for view in views:
        events = await all_events(http, headers, view["number"])
        total += len(events)
        folded = fold(events)
        own_holds = {
            h["hold_id"]: h["amount_minor"] for h in holds if h["card_id"] == view["card_id"]
        }
        assert {
            "balance_minor": view["balance_minor"],
            "reserved_minor": view["reserved_minor"],
            "holds": own_holds,
            "version": view["version"],
        } == folded, view["number"]
        served = await ok(await http.get(f"/v1/cards/{view['number']}", headers=headers))
        assert served["balance_minor"] == folded["balance_minor"]
        assert served["reserved_minor"] == folded["reserved_minor"]
        assert {h["hold_id"]: h["amount_minor"] for h in served["holds"]} == folded["holds"]
    return total


async def rebuild(database_url: str) -> str:
    done = await giftledger(database_url, "projections", "rebuild")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def test_every_projected_card_is_the_fold_of_its_events(http, pool, world):
    await write_history(http, world)
    assert await assert_projection_is_the_fold_of_the_events(http, pool, world.auditor.headers) > 0
    views, _ = await projection_rows(pool)
    by_number = {v["number"]: v for v in views}
    assert set(by_number) == {FIXED, GOLD, DYNAMIC, BLOCKED}
    assert (by_number[FIXED]["balance_minor"], by_number[FIXED]["reserved_minor"]) == (1500, 0)
    assert (by_number[GOLD]["balance_minor"], by_number[GOLD]["reserved_minor"]) == (4600, 1700)
    assert (by_number[DYNAMIC]["balance_minor"], by_number[DYNAMIC]["reserved_minor"]) == (2000, 0)
    assert by_number[BLOCKED]["status"] == "blocked"


async def test_rebuild_restores_corrupted_rows_exactly(http, pool, world, database_url):
    await write_history(http, world)
    views_before, holds_before = await projection_rows(pool)
    assert len(holds_before) == 2
    auditor = world.auditor.headers
    total_events = await assert_projection_is_the_fold_of_the_events(http, pool, auditor)

    await pool.execute("UPDATE card_views SET balance_minor = 1, reserved_minor = 0")
    await pool.execute("UPDATE card_views SET status = 'active', version = 99")
    await pool.execute("DELETE FROM card_holds")
    await pool.execute("DELETE FROM card_views WHERE number = $1", DYNAMIC)
    assert await projection_rows(pool) != (views_before, holds_before)

    assert await rebuild(database_url) == f"rebuilt 4 cards from {total_events} events"
    assert await projection_rows(pool) == (views_before, holds_before)


async def test_rebuild_drops_rows_no_event_supports(http, pool, world, database_url):
    await write_history(http, world)
    views_before, holds_before = await projection_rows(pool)
    card_id = views_before[0]["card_id"]
    await pool.execute(
        "INSERT INTO card_holds (hold_id, card_id, client_id, amount_minor, expires_at)"
        " VALUES ('ghost', $1, 'cl_ghost', 1, now() + interval '1 hour')",
        card_id,
    )
    await pool.execute(
        "INSERT INTO card_views (card_id, number, ref, card_type, currency, original_minor,"
        " balance_minor, reserved_minor, status, fixed_amount, redeem_allowed,"
        " reservations_allowed, version)"
        " VALUES (gen_random_uuid(), 'ghost', 1, 'fixed16', 'EUR', 1, 1, 0, 'active', true,"
        " true, true, 1)"
    )
    await rebuild(database_url)
    assert await projection_rows(pool) == (views_before, holds_before)


async def test_rebuild_is_idempotent(http, pool, world, database_url):
    await write_history(http, world)
    rows = await projection_rows(pool)
    first = await rebuild(database_url)
    assert await projection_rows(pool) == rows
    assert await rebuild(database_url) == first
    assert await projection_rows(pool) == rows


async def test_the_app_keeps_writing_consistently_after_a_rebuild(http, pool, world, database_url):
    await write_history(http, world)
    await pool.execute("UPDATE card_views SET balance_minor = 1, reserved_minor = 0")
    await rebuild(database_url)
    redeemed = await http.post(
        f"/v1/cards/{FIXED}/redeem", json={"amount_minor": 250}, headers=world.pos.headers
    )
    assert (await ok(redeemed))["balance_minor"] == 1250
    await assert_projection_is_the_fold_of_the_events(http, pool, world.auditor.headers)
