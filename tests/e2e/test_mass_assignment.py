"""No write body sets a balance, status or ref, or carries an over-long string: 422, no event."""

from __future__ import annotations

from typing import Any

import pytest

from api.fields import LOCATION_CODE_LENGTH_MAX as LOCATION_MAX
from api.fields import REASON_LENGTH_MAX
from api.fields import TRANSACTION_NO_LENGTH_MAX as TRANSACTION_MAX

CARD = "1000000000000077"
DYNAMIC = "1000000000000000077"
SMUGGLED = ({"balance": 999999}, {"status": "active"}, {"ref": 1}, {"reserved": 0},
            {"balance_minor": 999999}, {"currentBalance": 9999.0})  # fmt: skip


async def event_count(pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM giftledger_events")


async def sold(http, world) -> tuple[dict[str, Any], str]:
    """A fixed card of 50.00 with a hold on it, and the hold's id."""
    body = {"card_type": "fixed16", "amount_minor": 5000, "number": CARD, "location_code": "SHOP1"}
    response = await http.post("/v1/cards", json=body, headers=world.pos.headers)
    assert response.status_code == 201, response.text
    response = await http.post(f"/v1/cards/{CARD}/holds", json={"amount_minor": 100},
                               headers=world.pos.headers)  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()["card"], response.json()["hold_id"]


def native_writes(hold_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/v1/cards", {"card_type": "fixed16", "amount_minor": 100, "number": "1000000000000078"}),
        (f"/v1/cards/{CARD}/redeem", {"amount_minor": 1}),
        (f"/v1/cards/{CARD}/holds", {"amount_minor": 1}),
        (f"/v1/cards/{CARD}/holds/{hold_id}/capture", {"amount_minor": 1}),
        (f"/v1/cards/{CARD}/holds/{hold_id}/void", {}),
        (f"/v1/cards/{DYNAMIC}/load", {"amount_minor": 1}),
        (f"/v1/cards/{CARD}/refund", {"amount_minor": 1}),
        (f"/v1/cards/{CARD}/block", {"reason": "lost"}),
        (f"/v1/cards/{CARD}/unblock", {}),
    ]


@pytest.mark.parametrize("extra", SMUGGLED)
async def test_a_native_write_with_an_unknown_field_is_refused_and_appends_nothing(
    http, world, pool, extra
):
    admin = await world.client("admin", ("admin",))
    before, hold_id = await sold(http, world)
    events = await event_count(pool)
    for path, body in native_writes(hold_id):
        response = await http.post(path, json=body | extra, headers=admin.headers)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["code"] == "validation_failed", path
    assert await event_count(pool) == events
    after = (await http.get(f"/v1/cards/{CARD}", headers=world.pos.headers)).json()
    assert after == before


@pytest.mark.parametrize("extra", SMUGGLED)
async def test_a_resico_write_with_an_unknown_field_is_refused_and_appends_nothing(
    http, world, pool, extra
):
    before, _ = await sold(http, world)
    events = await event_count(pool)
    writes = [
        (f"/api/giftcards/v1/cards/{DYNAMIC}",
         {"amount": 10.00, "transactionNo": "00000001", "locationCode": "SHOP1"}),
        (f"/api/giftcards/v1/transactions/{world.pos.consumer_key}/cards/{CARD}", {"amount": 1.00}),
        (f"/api/giftcards/v1/reserve/{CARD}", {"locationCode": "SHOP1"}),
    ]  # fmt: skip
    for path, body in writes:
        response = await http.post(path, json=body | extra, headers=world.pos.headers)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["code"] == "validation_failed", path
    assert await event_count(pool) == events
    after = (await http.get(f"/v1/cards/{CARD}", headers=world.pos.headers)).json()
    assert after == before


async def test_the_resico_seed_bodies_are_still_accepted(http, world):
    sale = {"amount": 57.23, "transactionNo": "00000045", "locationCode": "SHOP1"}
    response = await http.post(f"/api/giftcards/v1/cards/{CARD}", json=sale,
                               headers=world.pos.headers)  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["currentBalance"] == 57.23
    response = await http.post(f"/api/giftcards/v1/reserve/{CARD}", json={"locationCode": "SHOP1"},
                               headers=world.pos.headers)  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["reservedBalance"] == 57.23


@pytest.mark.parametrize("extra", [{"balance": "100"}, {"status": "active"}, {"ref": "1"}])
async def test_a_giftstream_field_outside_its_document_is_refused_and_sells_nothing(
    http, world, pool, extra
):
    events = await event_count(pool)
    fields = {"cardType": "2", "currencyCode": "826", "identifier": "GS-77",
              "initialBalance": "2.99", "siteId": "1"} | extra  # fmt: skip
    for send in ({"data": fields}, {"json": fields}):
        response = await http.post("/giftcard", headers=world.pos.headers, **send)
        assert response.status_code == 400, response.text
        assert response.json()["message"].startswith("Data Invalid: Unknown field")
    assert await event_count(pool) == events
    response = await http.get("/v1/cards/GS-77", headers=world.pos.headers)
    assert response.status_code == 404


async def test_the_giftstream_seed_form_is_still_accepted(http, world):
    body = "cardType=2&currencyCode=826&expiry=2030-02-28&identifier=&initialBalance=2.99&siteId=1"
    response = await http.post(
        "/giftcard", content=body, headers=world.pos.headers
        | {"Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["data"]["initialBalance"] == 2.99


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/cards", {"card_type": "fixed16", "amount_minor": 1,
                       "location_code": "S" * (LOCATION_MAX + 1)}),
        ("/v1/cards", {"card_type": "x" * 65, "amount_minor": 1}),
        (f"/v1/cards/{CARD}/block", {"reason": "r" * (REASON_LENGTH_MAX + 1)}),
        (f"/api/giftcards/v1/cards/{DYNAMIC}", {"amount": 1.00, "locationCode": "SHOP1",
                                               "transactionNo": "1" * (TRANSACTION_MAX + 1)}),
        (f"/api/giftcards/v1/reserve/{CARD}", {"locationCode": "S" * (LOCATION_MAX + 1)}),
        (f"/v1/cards/{CARD}/redeem", {"amount_minor": 1, "location_code": "SHOP\u00001"}),
    ],
)  # fmt: skip
async def test_an_over_long_or_control_character_string_is_refused_and_appends_nothing(
    http, world, pool, path, body
):
    admin = await world.client("admin", ("admin",))
    await sold(http, world)
    events = await event_count(pool)
    response = await http.post(path, json=body, headers=admin.headers)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_failed"
    assert await event_count(pool) == events


async def test_an_over_long_giftstream_identifier_or_number_is_refused(http, world, pool):
    events = await event_count(pool)
    for fields in ({"cardType": "2", "currencyCode": "826", "identifier": "9" * 257},
                   {"cardType": "9" * 5000, "currencyCode": "826"}):  # fmt: skip
        response = await http.post("/giftcard", json=fields, headers=world.pos.headers)
        assert response.status_code == 400, response.text
        assert response.json()["message"].startswith("Data Invalid")
    assert await event_count(pool) == events


async def test_an_over_long_token_request_field_is_an_oauth_invalid_request(http, world):
    body = {"grant_type": "client_credentials", "client_id": "c" * 129, "client_secret": "s"}
    response = await http.post("/oauth/token", data=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_a_query_instant_given_as_a_number_is_refused(http, world):
    response = await http.get("/v1/reports/liability", params={"as_of": "0.5"},
                              headers=world.finance.headers)  # fmt: skip
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"


async def test_the_events_page_size_is_capped(http, world):
    await sold(http, world)
    response = await http.get(f"/v1/cards/{CARD}/events", params={"limit": 501},
                              headers=world.auditor.headers)  # fmt: skip
    assert response.status_code == 422
    assert response.json()["code"] == "validation_failed"
