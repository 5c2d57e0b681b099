"""GET /v1/cards/{number}?as_of= answers the card as it was at that instant, from its events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


async def post(http, client, path, body):
    response = await http.post(path, json=body, headers=client.headers)
    assert response.status_code < 300, response.text
    return response.json()


async def card_at(http, client, number, instant: datetime):
    return await http.get(
        f"/v1/cards/{number}", params={"as_of": instant.isoformat()}, headers=client.headers
    )


async def test_as_of_replays_the_card_to_each_past_instant(http, world):
    number = "1000000000009001"
    before_sale = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await post(http, world.pos, "/v1/cards", {"card_type": "fixed16", "amount_minor": 5000,
                                              "number": number})  # fmt: skip
    after_sale = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await post(http, world.pos, f"/v1/cards/{number}/redeem", {"amount_minor": 1200})
    await post(http, world.pos, f"/v1/cards/{number}/holds", {"amount_minor": 300})
    now = datetime.now(UTC)

    assert (await card_at(http, world.auditor, number, before_sale)).status_code == 404
    then = (await card_at(http, world.auditor, number, after_sale)).json()
    assert (then["balance_minor"], then["reserved_minor"], then["version"]) == (5000, 0, 1)
    latest = (await card_at(http, world.auditor, number, now + timedelta(seconds=1))).json()
    current = (await http.get(f"/v1/cards/{number}", headers=world.auditor.headers)).json()
    assert latest == current
    assert (latest["balance_minor"], latest["reserved_minor"]) == (3800, 300)


async def test_as_of_without_a_time_zone_is_refused(http, world):
    response = await http.get(
        "/v1/cards/1000000000009002", params={"as_of": "2026-01-01T00:00:00"},
        headers=world.auditor.headers,
    )  # fmt: skip
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"


async def test_time_travel_is_an_auditors_read_a_pos_client_cannot_make(http, world):
    number = "1000000000009003"
    await post(http, world.pos, "/v1/cards", {"card_type": "fixed16", "amount_minor": 100,
                                              "number": number})  # fmt: skip
    params = {"as_of": datetime.now(UTC).isoformat()}
    refused = await http.get(f"/v1/cards/{number}", params=params, headers=world.pos.headers)
    assert refused.status_code == 403
    assert (await http.get(f"/v1/cards/{number}", headers=world.pos.headers)).status_code == 200
