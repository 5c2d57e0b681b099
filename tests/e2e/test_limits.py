"""Abuse limits: per-client rates answer 429 with Retry-After, 404s are rationed, and request
bodies and pages are bounded."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from api.app import REQUEST_BODY_BYTES_MAX, create_app
from api.auth import issue_token
from api.settings import RateLimit
from projections.history import HISTORY_PAGE_SIZE_MAX
from tests.conftest import TEST_SIGNING_KEY, ApiClient

CARD = "1000000000000999"
MASKED_CARD = "*" * 12 + CARD[-4:]
SELL_SCOPES = ("cards:read", "cards:sell")


def assert_too_many(response: Any) -> None:
    """A problem+json 429 that says when to come back."""
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["code"] == "too_many_requests"


async def sell(http, client: ApiClient, number: str = CARD) -> None:
    response = await http.post(
        f"/api/giftcards/v1/cards/{number}",
        json={"amount": "5.00", "transactionNo": number[-8:], "locationCode": "SHOP1"},
        headers=client.headers,
    )
    assert response.status_code == 200, response.text


async def read(http, client: ApiClient, number: str = CARD):
    return await http.get(f"/v1/cards/{number}", headers=client.headers)


async def assert_reads(http, client: ApiClient, times: int) -> None:
    for _ in range(times):
        response = await read(http, client)
        assert response.status_code == 200, response.text
        assert response.json()["number"] == CARD


async def limited_client(world, rate_per_second: float, burst: int) -> ApiClient:
    created = await world.config.create_client(
        "limited", SELL_SCOPES, rate_per_second=rate_per_second, rate_burst=burst
    )
    client_id = created.client.client_id
    return ApiClient(
        client_id,
        created.client.consumer_key,
        created.client_secret,
        issue_token(TEST_SIGNING_KEY, client_id, 600),
    )


# Per-client limits, on the shared app (service-wide defaults far above these tests).


async def test_a_client_over_its_own_rate_gets_429_and_others_do_not(http, world):
    await sell(http, world.pos)
    limited = await limited_client(world, rate_per_second=1, burst=3)
    await assert_reads(http, limited, 3)
    refused = await read(http, limited)
    assert_too_many(refused)
    assert refused.headers["retry-after"] == "1"
    assert CARD not in refused.text
    await assert_reads(http, world.pos, 1)
    await asyncio.sleep(1.05)
    await assert_reads(http, limited, 1)


async def test_a_changed_client_limit_applies_within_a_second(http, world):
    await sell(http, world.pos)
    await assert_reads(http, world.pos, 5)
    assert await world.config.set_client_limit(world.pos.client_id, 1, 1)
    changed_at = time.monotonic()
    while (response := await read(http, world.pos)).status_code == 200:
        assert time.monotonic() - changed_at < 3, "the new limit never applied"
        await asyncio.sleep(0.05)
    assert_too_many(response)
    assert time.monotonic() - changed_at <= 1.5
    client = await world.config.client(world.pos.client_id)
    assert (client.rate_per_second, client.rate_burst) == (1, 1)


async def test_giftstream_answers_429_in_its_own_shape(http, world):
    limited = await limited_client(world, rate_per_second=0.1, burst=1)
    fields = {"cardType": "2", "currencyCode": "826", "initialBalance": "2.99", "siteId": "1"}
    first = await http.post("/giftcard", data=fields, headers=limited.headers)
    assert first.status_code == 200, first.text
    refused = await http.post("/giftcard", data=fields, headers=limited.headers)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) == 10
    assert set(refused.json()) == {"message", "timestamp"}


# Service-wide defaults from Settings, on an app of their own with small limits.

STRICT_CLIENT = RateLimit(per_second=0.5, burst=10)
STRICT_NOT_FOUND = RateLimit(per_second=0.01, burst=3)
STRICT_TOKEN = RateLimit(per_second=0.01, burst=2)


@pytest.fixture(scope="module")
async def strict(settings) -> AsyncIterator[AsyncTestClient[Any]]:
    strict_settings = dataclasses.replace(
        settings,
        client_rate_limit=STRICT_CLIENT,
        not_found_rate_limit=STRICT_NOT_FOUND,
        token_rate_limit=STRICT_TOKEN,
    )
    app = create_app(strict_settings)
    async with AsyncTestClient(app=app, base_url="https://testserver.local") as client:
        yield client


async def test_the_default_client_rate_comes_from_settings(strict, http, world):
    await sell(http, world.pos)
    await assert_reads(strict, world.other, STRICT_CLIENT.burst)
    assert_too_many(await read(strict, world.other))
    await assert_reads(strict, world.pos, 1)


async def test_repeated_404s_turn_card_lookups_into_429(strict, http, world):
    await sell(http, world.pos)
    for n in range(STRICT_NOT_FOUND.burst):
        unknown = f"10000000000055{n:02d}"
        missing = await read(strict, world.pos, unknown)
        assert missing.status_code == 404, missing.text
        assert unknown not in missing.text
        assert "*" * 12 + unknown[-4:] in missing.json()["detail"]
    # The card exists, but this client may no longer tell cards that do from cards that don't.
    assert_too_many(await read(strict, world.pos))
    assert_too_many(await strict.get(f"/api/giftcards/v1/cards/{CARD}", headers=world.pos.headers))
    await assert_reads(strict, world.other, 1)
    # Requests that name no card are not held back.
    issued = await strict.post(
        "/v1/cards", json={"card_type": "fixed16", "amount_minor": 100}, headers=world.pos.headers
    )
    assert issued.status_code == 201, issued.text


async def test_token_requests_are_limited_per_address(strict, world):
    fields = {"grant_type": "client_credentials", "client_id": world.pos.client_id,
              "client_secret": world.pos.client_secret}  # fmt: skip
    for _ in range(STRICT_TOKEN.burst):
        response = await strict.post("/oauth/token", data=fields)
        assert response.status_code == 200, response.text
        assert response.json()["access_token"]
    refused = await strict.post("/oauth/token", data=fields)
    assert_too_many(refused)
    assert "access_token" not in refused.json()


# Body sizes and page sizes, on the shared app.


def padded_issue_body(size: int) -> bytes:
    body = {"card_type": "fixed16", "amount_minor": 100, "pad": ""}
    overhead = len(json.dumps(body).encode())
    body["pad"] = "x" * (size - overhead)
    encoded = json.dumps(body).encode()
    assert len(encoded) == size
    return encoded


JSON = {"Content-Type": "application/json"}


async def test_bodies_over_16_kib_get_413(http, world):
    assert REQUEST_BODY_BYTES_MAX == 16 * 1024
    headers = {**world.pos.headers, **JSON}
    at_limit = await http.post(
        "/v1/cards", content=padded_issue_body(REQUEST_BODY_BYTES_MAX), headers=headers
    )
    assert at_limit.status_code == 422, at_limit.text  # read whole, refused for its "pad"
    assert at_limit.json()["code"] == "validation_failed"
    over = await http.post(
        "/v1/cards", content=padded_issue_body(REQUEST_BODY_BYTES_MAX + 1), headers=headers
    )
    assert over.status_code == 413, over.text
    assert over.json()["code"] == "payload_too_large"
    sale = await http.post(
        f"/api/giftcards/v1/cards/{CARD}",
        content=padded_issue_body(REQUEST_BODY_BYTES_MAX + 1),
        headers=headers,
    )
    assert sale.status_code == 413, sale.text
    assert (await read(http, world.pos)).status_code == 404, "nothing was sold"


async def test_giftstream_bodies_over_16_kib_get_413_in_its_own_shape(http, world):
    response = await http.post(
        "/giftcard",
        content=padded_issue_body(REQUEST_BODY_BYTES_MAX + 1),
        headers={**world.pos.headers, **JSON},
    )
    assert response.status_code == 413, response.text
    assert set(response.json()) == {"message", "timestamp"}


async def test_event_pages_are_capped(http, world):
    await sell(http, world.pos)
    path = f"/v1/cards/{CARD}/events"
    auditor = world.auditor.headers
    assert HISTORY_PAGE_SIZE_MAX <= 500
    full = await http.get(path, params={"limit": HISTORY_PAGE_SIZE_MAX}, headers=auditor)
    assert full.status_code == 200, full.text
    assert [e["type"] for e in full.json()["events"]] == ["Sold"]
    for limit in (HISTORY_PAGE_SIZE_MAX + 1, 10**9, 0, -1):
        refused = await http.get(path, params={"limit": limit}, headers=auditor)
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "validation_failed"
        assert CARD not in refused.text
        assert MASKED_CARD in refused.json()["detail"]
