"""The ledger stream yields every event once, in log order, decoded, within the asked period."""

from __future__ import annotations

from datetime import UTC, datetime

from projections.ledger_stream import stream_ledger

NUMBER = "5000000000000000001"


async def collect(pool, app, **period):
    decode = app.state.service.ledger.mapper.to_domain_event
    return [e async for e in stream_ledger(pool, decode, **period)]


async def test_stream_yields_decoded_events_in_log_order_with_their_keys(http, world, pool, app):
    pos = world.pos.headers
    body = {"card_type": "dynamic19", "amount_minor": 5000, "number": NUMBER,
            "location_code": "SHOP1"}  # fmt: skip
    assert (await http.post("/v1/cards", json=body, headers=pos)).status_code == 201
    middle = datetime.now(UTC)
    pay = {"amount_minor": 1250, "location_code": "SHOP1"}
    response = await http.post(f"/v1/cards/{NUMBER}/redeem", json=pay,
                               headers={**pos, "Idempotency-Key": "till-7"})  # fmt: skip
    assert response.status_code == 200, response.text
    events = await collect(pool, app)
    assert [(e.type, e.amount_minor, e.location_code) for e in events] == [
        ("Sold", 5000, "SHOP1"),
        ("Redeemed", 1250, "SHOP1"),
    ]
    assert [e.version for e in events] == [1, 2]
    assert events[0].position < events[1].position
    assert {(e.number, e.currency, e.card_type) for e in events} == {(NUMBER, "EUR", "dynamic19")}
    assert [e.idempotency_key for e in events] == [None, "till-7"]
    assert [e.type for e in await collect(pool, app, occurred_from=middle)] == ["Redeemed"]
    assert [e.type for e in await collect(pool, app, occurred_to=middle)] == ["Sold"]
