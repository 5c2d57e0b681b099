"""The log is tamper-evident: verify recomputes every hash and card and names the first mismatch."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from ledger.integrity import GENESIS_HASH, card_hash, chain_hash

FIXED = "4000000000000000001"
SECOND = "4000000000000000002"
WRITE_IN_FLIGHT_SECONDS = 5  # a start that waited for the open write would take until it ended


async def post(http, path: str, body: dict[str, Any], headers, key: str | None = None) -> Any:
    extra = {"Idempotency-Key": key} if key else {}
    response = await http.post(path, json=body, headers={**headers, **extra})
    assert response.status_code in (200, 201), response.text
    return response.json()


async def some_history(http, world) -> None:
    """Two cards, interleaved, so both chains (per card and global) have several links."""
    pos = world.pos.headers
    for number in (FIXED, SECOND):
        body = {"card_type": "dynamic19", "amount_minor": 5000, "number": number}
        await post(http, "/v1/cards", {**body, "location_code": "SHOP1"}, pos)
    await post(http, f"/v1/cards/{FIXED}/redeem", {"amount_minor": 700}, pos, key="pay-1")
    await post(http, f"/v1/cards/{SECOND}/load", {"amount_minor": 300}, pos)
    await post(http, f"/v1/cards/{FIXED}/refund", {"amount_minor": 200}, pos)
    await post(http, f"/v1/cards/{SECOND}/redeem", {"amount_minor": 100}, pos)


async def verify(http, world) -> dict[str, Any]:
    response = await http.get("/v1/audit/verify", headers=world.auditor.headers)
    assert response.status_code == 200, response.text
    return response.json()


async def log_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state,"
        " l.card_hash, l.chain_hash, l.idempotency_key FROM giftledger_events e"
        " JOIN ledger_log l ON l.position = e.notification_id ORDER BY e.notification_id"
    )


async def test_every_event_is_chained_to_its_cards_previous_and_to_the_log(http, world, pool):
    await some_history(http, world)
    rows = await log_rows(pool)
    assert len(rows) == 6
    chain, per_card = GENESIS_HASH, {}
    for row in rows:
        card_id = row["originator_id"]
        own = card_hash(per_card.get(card_id, GENESIS_HASH), card_id, row["originator_version"],
                        row["topic"], bytes(row["state"]))  # fmt: skip
        assert bytes(row["card_hash"]) == own
        chain = chain_hash(chain, row["notification_id"], own)
        assert bytes(row["chain_hash"]) == chain
        per_card[card_id] = own
    assert [r["idempotency_key"] for r in rows].count("pay-1") == 1


async def test_an_untouched_log_verifies(http, world):
    await some_history(http, world)
    report = await verify(http, world)
    assert report["ok"] is True, report
    assert (report["events"], report["cards"], report["mismatches_total"]) == (6, 2, 0)
    assert len(report["head_hash"]) == 64


async def test_an_event_altered_with_sql_is_caught_at_its_position(http, world, pool):
    await some_history(http, world)
    target = (await log_rows(pool))[2]  # The redemption of 700.
    changed = bytes(target["state"]).replace(b'"amount_minor":700', b'"amount_minor":70')
    assert changed != bytes(target["state"])
    await pool.execute(
        "UPDATE giftledger_events SET state = $1 WHERE notification_id = $2",
        changed, target["notification_id"],
    )  # fmt: skip
    report = await verify(http, world)
    assert report["ok"] is False
    first = report["mismatches"][0]
    assert (first["kind"], first["position"]) == ("altered_event", target["notification_id"])
    # The card rebuilt from the altered events no longer matches its projected balance either.
    assert "projection_differs" in {m["kind"] for m in report["mismatches"]}


async def test_an_event_deleted_with_sql_is_caught_at_its_position(http, world, pool):
    await some_history(http, world)
    target = (await log_rows(pool))[3]
    await pool.execute(
        "DELETE FROM giftledger_events WHERE notification_id = $1", target["notification_id"]
    )
    report = await verify(http, world)
    assert report["ok"] is False
    first = report["mismatches"][0]
    assert (first["kind"], first["position"]) == ("missing_event", target["notification_id"])


async def test_an_event_deleted_with_its_log_row_breaks_the_chain_after_it(http, world, pool):
    await some_history(http, world)
    rows = await log_rows(pool)
    target = rows[2]
    async with pool.acquire() as conn, conn.transaction():
        position = target["notification_id"]
        await conn.execute("DELETE FROM giftledger_events WHERE notification_id = $1", position)
        await conn.execute("DELETE FROM ledger_log WHERE position = $1", position)
    report = await verify(http, world)
    assert report["ok"] is False
    kinds_at = {(m["kind"], m["position"]) for m in report["mismatches"]}
    # The next event of the log no longer follows from its predecessor's chain hash ...
    assert ("broken_chain", rows[3]["notification_id"]) in kinds_at
    # ... and the next event of the same card skips a version.
    assert ("version_gap", rows[4]["notification_id"]) in kinds_at


async def test_an_event_inserted_behind_the_services_back_is_caught(http, world, pool):
    await some_history(http, world)
    last = (await log_rows(pool))[-1]
    position = await pool.fetchval(
        "INSERT INTO giftledger_events (originator_id, originator_version, topic, state)"
        " VALUES ($1, $2, $3, $4) RETURNING notification_id",
        last["originator_id"], last["originator_version"] + 1, last["topic"], last["state"],
    )  # fmt: skip
    report = await verify(http, world)
    assert report["ok"] is False
    assert (report["mismatches"][0]["kind"], report["mismatches"][0]["position"]) == (
        "unchained_event",
        position,
    )


async def test_a_projection_row_edited_with_sql_is_caught(http, world, pool):
    await some_history(http, world)
    await pool.execute("UPDATE card_views SET balance_minor = balance_minor + 1 WHERE number = $1",
                       SECOND)  # fmt: skip
    report = await verify(http, world)
    assert report["ok"] is False
    [mismatch] = report["mismatches"]
    assert mismatch["kind"] == "projection_differs"
    assert "balance_minor" in mismatch["detail"]


async def test_verify_needs_audit_read(http, world):
    response = await http.get("/v1/audit/verify", headers=world.pos.headers)
    assert response.status_code == 403


async def test_a_ledger_stored_before_its_log_is_chained_once_at_start(http, world, pool, app):
    ledger = app.state.service.ledger
    await some_history(http, world)
    await pool.execute("TRUNCATE ledger_log")
    events = await pool.fetchval("SELECT count(*) FROM giftledger_events")

    assert await asyncio.to_thread(ledger.adopt_unchained_log) == events
    assert await asyncio.to_thread(ledger.adopt_unchained_log) == 0
    assert (await verify(http, world))["ok"] is True


async def test_a_start_on_a_chained_ledger_does_not_wait_for_writes_in_flight(
    http, world, pool, app
):
    """Only a ledger with no log at all is locked to be chained; a start on a chained one must
    not queue behind a write transaction, nor hold new writes back while it waits."""
    await some_history(http, world)
    writer = await pool.acquire()
    try:
        async with writer.transaction():
            await writer.execute("LOCK TABLE giftledger_events IN ROW EXCLUSIVE MODE")
            adopted = await asyncio.wait_for(
                asyncio.to_thread(app.state.service.ledger.adopt_unchained_log),
                WRITE_IN_FLIGHT_SECONDS,
            )
    finally:
        await pool.release(writer)
    assert adopted == 0
