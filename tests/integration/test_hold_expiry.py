"""Expired holds are released by the app itself, with no request, and holds last the set TTL."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

FIXED = "1000000000000001"
POLL_SECONDS = 0.2
# The sweeper runs every 0.2 s in tests; a release may take a sweep plus a command to land.
RELEASE_GRACE_SECONDS = 5


async def sell(http, headers, number: str = FIXED, amount_minor: int = 5000) -> None:
    body = {"card_type": "fixed16", "amount_minor": amount_minor, "number": number}
    response = await http.post("/v1/cards", json=body, headers=headers)
    assert response.status_code == 201, response.text


async def hold(http, headers, number: str = FIXED, **body: Any) -> str:
    response = await http.post(f"/v1/cards/{number}/holds", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["hold_id"]


async def card(http, headers, number: str = FIXED) -> dict[str, Any]:
    response = await http.get(f"/v1/cards/{number}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def events(http, headers, number: str = FIXED) -> list[dict[str, Any]]:
    response = await http.get(f"/v1/cards/{number}/events", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["events"]


async def poll_until_reserved(http, headers, reserved_minor: int, deadline: float) -> float:
    """Read the card (reads only) until it shows reserved_minor; returns when that was seen."""
    while True:
        view = await card(http, headers)
        if view["reserved_minor"] == reserved_minor:
            return time.monotonic()
        assert time.monotonic() < deadline, f"reserved stayed at {view['reserved_minor']}"
        await asyncio.sleep(POLL_SECONDS)


def assert_expires_in(expires_at: str, start: datetime, ttl_seconds: int) -> None:
    """The hold expires ttl_seconds after a moment between start and now (one process clock)."""
    ttl = timedelta(seconds=ttl_seconds)
    assert start + ttl <= datetime.fromisoformat(expires_at) <= datetime.now(UTC) + ttl


async def test_an_expired_hold_is_released_without_any_request(http, world):
    await sell(http, world.pos.headers)
    created = time.monotonic()
    hold_id = await hold(http, world.pos.headers, amount_minor=2000, ttl_seconds=1)
    seen_at = await poll_until_reserved(
        http, world.pos.headers, 0, created + 1 + RELEASE_GRACE_SECONDS
    )
    assert seen_at - created >= 1 - POLL_SECONDS
    view = await card(http, world.pos.headers)
    assert (view["balance_minor"], view["available_minor"], view["holds"]) == (5000, 5000, [])
    log = await events(http, world.auditor.headers)
    assert [e["type"] for e in log] == ["Sold", "Reserved", "ReservationReleased"]
    released = log[-1]
    assert released["data"] == {"hold_id": hold_id, "reason": "expired"}
    assert released["amount_minor"] == 2000
    assert released["actor"].startswith("system:")


async def test_only_the_expired_hold_is_released(http, world):
    await sell(http, world.pos.headers)
    short = await hold(http, world.pos.headers, amount_minor=1000, ttl_seconds=1)
    long = await hold(http, world.other.headers, amount_minor=1500, ttl_seconds=600)
    await poll_until_reserved(
        http, world.pos.headers, 1500, time.monotonic() + 1 + RELEASE_GRACE_SECONDS
    )
    view = await card(http, world.pos.headers)
    assert [(h["hold_id"], h["amount_minor"]) for h in view["holds"]] == [(long, 1500)]
    released = [
        e for e in await events(http, world.auditor.headers) if e["type"] == "ReservationReleased"
    ]
    assert [e["data"]["hold_id"] for e in released] == [short]


async def test_an_expired_hold_can_no_longer_be_captured(http, world):
    await sell(http, world.pos.headers)
    hold_id = await hold(http, world.pos.headers, amount_minor=1000, ttl_seconds=1)
    await poll_until_reserved(
        http, world.pos.headers, 0, time.monotonic() + 1 + RELEASE_GRACE_SECONDS
    )
    response = await http.post(
        f"/v1/cards/{FIXED}/holds/{hold_id}/capture", json={}, headers=world.pos.headers
    )
    assert response.status_code == 422
    assert response.json()["code"] == "hold_not_found"
    assert (await card(http, world.pos.headers))["balance_minor"] == 5000


async def test_a_resico_reserve_holds_for_the_configured_ttl(http, world, settings):
    await sell(http, world.pos.headers)
    start = datetime.now(UTC)
    response = await http.post(
        f"/api/giftcards/v1/reserve/{FIXED}",
        json={"locationCode": "SHOP1"},
        headers=world.pos.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["reservedBalance"] == 50.0
    view = await card(http, world.pos.headers)
    [held] = view["holds"]
    assert (held["client_id"], held["amount_minor"]) == (world.pos.client_id, 5000)
    assert_expires_in(held["expires_at"], start, settings.hold_ttl_seconds)


async def test_a_native_hold_ttl_above_the_configured_one_is_capped(http, world, settings):
    await sell(http, world.pos.headers)
    start = datetime.now(UTC)
    await hold(
        http, world.pos.headers, amount_minor=100, ttl_seconds=settings.hold_ttl_seconds * 10
    )
    [held] = (await card(http, world.pos.headers))["holds"]
    assert_expires_in(held["expires_at"], start, settings.hold_ttl_seconds)


async def test_a_native_hold_without_a_ttl_lasts_the_configured_one(http, world, settings):
    await sell(http, world.pos.headers)
    start = datetime.now(UTC)
    await hold(http, world.pos.headers, amount_minor=100)
    [held] = (await card(http, world.pos.headers))["holds"]
    assert_expires_in(held["expires_at"], start, settings.hold_ttl_seconds)
