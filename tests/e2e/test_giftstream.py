"""GiftStream's POST /giftcard over HTTP: seed request shapes, seed responses and 400 messages."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

FUTURE = (datetime.now(UTC).date() + timedelta(days=400)).isoformat()
NO_EXPIRY = "0000-00-00 00:00:00"
EXPIRY_MESSAGE = "Data Invalid: Invalid Expiry Date. Please use format YYYY-MM-DD"
CURRENCY_MESSAGE = "Data Invalid: Currency Code not supported"
DATA_KEYS = {"cardId", "initialBalance", "cardType", "currencyCode", "expiry", "siteId", "ref"}


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.text, parse_float=Decimal)


def seed_fields(**changes: str | None) -> dict[str, str]:
    """The seed's own request, with an expiry in the future; None drops a field."""
    fields: dict[str, str | None] = {
        "cardType": "2", "currencyCode": "826", "expiry": FUTURE, "identifier": "",
        "initialBalance": "2.99", "siteId": "1",
    }  # fmt: skip
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


async def post_form(http, client, fields: dict[str, str]):
    return await http.post("/giftcard", data=fields, headers=client.headers)


async def post_json(http, client, payload: dict[str, Any]):
    return await http.post("/giftcard", json=payload, headers=client.headers)


async def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    answer = body(response)
    assert answer["message"] == "OK"
    assert answer["records_updated"] == 1
    assert abs(answer["timestamp"] - time.time()) < 30
    assert set(answer["data"]) == DATA_KEYS
    return answer["data"]


def assert_refused(response: Any, message: str | None = None, prefix: str | None = None) -> str:
    assert response.status_code == 400, response.text
    answer = body(response)
    assert set(answer) == {"message", "timestamp"}
    assert isinstance(answer["timestamp"], int)
    assert abs(answer["timestamp"] - time.time()) < 30
    if message is not None:
        assert answer["message"] == message
    if prefix is not None:
        assert answer["message"].startswith(prefix), answer["message"]
    return answer["message"]


async def card_count(pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM card_views"))


# Creating cards.


async def test_form_request_like_the_seed_curl_creates_a_card(http, world):
    response = await http.post(
        "/giftcard",
        content=f"cardType=2&currencyCode=826&expiry={FUTURE}&identifier=&initialBalance=2.99"
        "&siteId=1",
        headers={**world.pos.headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    data = await created(response)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["cardId"]), data["cardId"]
    assert data["initialBalance"] == Decimal("2.99")
    assert data["cardType"] == 2
    assert data["currencyCode"] == 826
    assert data["expiry"] == FUTURE
    assert data["siteId"] == 1
    assert isinstance(data["ref"], int)


async def test_json_request_with_string_values_like_the_seed_payload_creates_a_card(http, world):
    data = await created(await post_json(http, world.pos, seed_fields(siteId="2")))
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["cardId"])
    assert data["initialBalance"] == Decimal("2.99")
    assert (data["cardType"], data["currencyCode"], data["siteId"]) == (2, 826, 2)
    assert data["expiry"] == FUTURE


async def test_json_request_with_native_json_types_creates_a_card(http, world):
    payload = {"cardType": 1, "currencyCode": 978, "initialBalance": 10.5, "expiry": FUTURE}
    data = await created(await post_json(http, world.pos, payload))
    assert data["initialBalance"] == Decimal("10.50")
    assert (data["cardType"], data["currencyCode"], data["siteId"]) == (1, 978, None)


async def test_given_identifier_becomes_the_card_id(http, world):
    data = await created(
        await post_json(http, world.pos, seed_fields(identifier="member-0042@example"))
    )
    assert data["cardId"] == "member-0042@example"


async def test_identifier_of_256_characters_is_accepted(http, world):
    identifier = "i" * 256
    data = await created(await post_form(http, world.pos, seed_fields(identifier=identifier)))
    assert data["cardId"] == identifier


async def test_initial_balance_zero_is_allowed(http, world):
    data = await created(await post_json(http, world.pos, seed_fields(initialBalance="0")))
    assert data["initialBalance"] == 0


async def test_initial_balance_maximum_is_allowed(http, world):
    data = await created(await post_json(http, world.pos, seed_fields(initialBalance="99999.99")))
    assert data["initialBalance"] == Decimal("99999.99")


async def test_absent_initial_balance_means_zero(http, world):
    data = await created(await post_form(http, world.pos, seed_fields(initialBalance=None)))
    assert data["initialBalance"] == 0


async def test_absent_expiry_is_answered_as_zero_date(http, world):
    data = await created(await post_form(http, world.pos, seed_fields(expiry=None, siteId=None)))
    assert data["expiry"] == NO_EXPIRY
    assert data["siteId"] is None


async def test_refs_are_unique_and_increasing(http, world):
    refs = []
    for _ in range(4):
        refs.append((await created(await post_form(http, world.pos, seed_fields())))["ref"])
    assert refs == sorted(refs)
    assert len(set(refs)) == len(refs)


# Refusals.


@pytest.mark.parametrize("expiry", ["2024/01/01", "2024-13-01", "20240101", "2024-02-30",
                                    "tomorrow", "2024-1-01"])  # fmt: skip
async def test_badly_formatted_expiry_is_refused_with_the_seed_message(http, world, pool, expiry):
    assert_refused(await post_form(http, world.pos, seed_fields(expiry=expiry)), EXPIRY_MESSAGE)
    assert await card_count(pool) == 0


@pytest.mark.parametrize("code", ["124", "999", "abc"])
async def test_unsupported_currency_is_refused_with_the_seed_message(http, world, pool, code):
    message = assert_refused(await post_form(http, world.pos, seed_fields(currencyCode=code)))
    if code.isdigit():
        assert message == CURRENCY_MESSAGE
    else:
        assert message.startswith("Data Invalid:")
    assert await card_count(pool) == 0


@pytest.mark.parametrize("balance", ["100000.00", "-1", "1.234", "abc"])
async def test_invalid_initial_balance_is_refused(http, world, pool, balance):
    response = await post_form(http, world.pos, seed_fields(initialBalance=balance))
    assert_refused(response, prefix="Data Invalid: Invalid Initial Balance")
    assert await card_count(pool) == 0


@pytest.mark.parametrize("balance", [100000.00, -1, 1.234])
async def test_invalid_initial_balance_as_json_number_is_refused(http, world, balance):
    response = await post_json(http, world.pos, {**seed_fields(), "initialBalance": balance})
    assert_refused(response, prefix="Data Invalid: Invalid Initial Balance")


@pytest.mark.parametrize("as_json", [False, True], ids=["form", "json-number"])
async def test_initial_balance_with_huge_exponent_is_refused(http, world, pool, as_json):
    if as_json:
        response = await http.post(
            "/giftcard",
            content=b'{"cardType": 2, "currencyCode": 826, "initialBalance": 1e999999}',
            headers={**world.pos.headers, "Content-Type": "application/json"},
        )
    else:
        response = await post_form(http, world.pos, seed_fields(initialBalance="1e999999"))
    assert_refused(response, prefix="Data Invalid: Invalid Initial Balance")
    assert await card_count(pool) == 0


@pytest.mark.parametrize("field", ["cardType", "currencyCode", "siteId"])
async def test_non_ascii_digit_in_integer_field_is_refused(http, world, pool, field):
    message = assert_refused(await post_form(http, world.pos, seed_fields(**{field: "\u00b2"})))
    assert message.startswith("Data Invalid:")
    assert await card_count(pool) == 0


async def test_site_id_beyond_any_site_is_not_found(http, world, pool):
    response = await post_form(http, world.pos, seed_fields(siteId="99999999999"))
    assert_refused(response, "Data Invalid: Site not found")
    assert await card_count(pool) == 0


async def test_missing_card_type_is_refused(http, world, pool):
    message = assert_refused(await post_form(http, world.pos, seed_fields(cardType=None)))
    assert message.startswith("Data Invalid:")
    assert "Card Type" in message
    assert await card_count(pool) == 0


@pytest.mark.parametrize("card_type", ["3", "0", "x"])
async def test_unknown_card_type_is_refused(http, world, pool, card_type):
    message = assert_refused(await post_form(http, world.pos, seed_fields(cardType=card_type)))
    assert message.startswith("Data Invalid:")
    assert "Card Type" in message
    assert await card_count(pool) == 0


async def test_unknown_site_is_refused(http, world, pool):
    response = await post_form(http, world.pos, seed_fields(siteId="99"))
    assert_refused(response, "Data Invalid: Site not found")
    assert await card_count(pool) == 0


async def test_identifier_longer_than_256_characters_is_refused(http, world, pool):
    message = assert_refused(await post_form(http, world.pos, seed_fields(identifier="i" * 257)))
    assert message.startswith("Data Invalid:")
    assert "256" in message
    assert await card_count(pool) == 0


async def test_duplicate_identifier_is_refused_and_keeps_the_first_card(http, world, pool):
    first = await created(
        await post_form(http, world.pos, seed_fields(identifier="dup-1", siteId=None))
    )
    again = await post_form(
        http, world.pos, seed_fields(identifier="dup-1", initialBalance="50.00", siteId=None)
    )
    message = assert_refused(again)
    assert "already exists" in message
    card = await http.get(f"/v1/cards/{first['cardId']}", headers=world.pos.headers)
    assert card.json()["balance_minor"] == 299
    assert await card_count(pool) == 1


async def test_expiry_in_the_past_is_refused(http, world, pool):
    message = assert_refused(await post_form(http, world.pos, seed_fields(expiry="2024-02-29")))
    assert message.startswith("Data Invalid:")
    assert await card_count(pool) == 0


async def test_request_without_token_is_unauthorized(http, world, pool):
    response = await http.post("/giftcard", data=seed_fields())
    assert response.status_code == 401, response.text
    assert set(body(response)) == {"message", "timestamp"}
    assert "cardId" not in response.text
    assert await card_count(pool) == 0


async def test_client_without_sell_scope_is_forbidden(http, world, pool):
    reader = await world.client("reader", scopes=("cards:read",))
    response = await post_form(http, reader, seed_fields())
    assert response.status_code == 403, response.text
    assert "cardId" not in response.text
    assert await card_count(pool) == 0


# One ledger across the APIs.


async def test_giftstream_card_is_read_and_used_through_resico(http, world):
    data = await created(
        await post_json(http, world.pos, seed_fields(initialBalance="10.00", siteId=None))
    )
    number = data["cardId"]
    got = await http.get(f"/api/giftcards/v1/cards/{number}", headers=world.pos.headers)
    assert got.status_code == 200, got.text
    card = body(got)
    assert card["giftCardNo"] == number
    assert card["id"] == data["ref"]
    assert card["currency"] == "GBP"
    assert card["currentBalance"] == Decimal("10.00")
    used = await http.post(
        f"/api/giftcards/v1/transactions/{world.pos.consumer_key}/cards/{number}",
        json={"amount": "3.25"},
        headers=world.pos.headers,
    )
    assert used.status_code == 200, used.text
    assert body(used)["currentBalance"] == Decimal("6.75")
    native = await http.get(f"/v1/cards/{number}", headers=world.pos.headers)
    assert native.json()["balance_minor"] == 675


async def test_resico_card_is_visible_in_the_native_api(http, world):
    sold = await http.post(
        "/api/giftcards/v1/cards/1000000000000099",
        json={"amount": "12.34", "transactionNo": "7", "locationCode": "SHOP2"},
        headers=world.pos.headers,
    )
    assert sold.status_code == 200, sold.text
    native = await http.get("/v1/cards/1000000000000099", headers=world.pos.headers)
    assert native.status_code == 200, native.text
    card = native.json()
    assert card["number"] == "1000000000000099"
    assert card["card_type"] == "fixed16"
    assert card["currency"] == "EUR"
    assert (card["original_minor"], card["balance_minor"], card["available_minor"]) == (
        1234, 1234, 1234
    )  # fmt: skip
    assert card["location_code"] == "SHOP2"
    assert card["ref"] == body(sold)["id"]


@pytest.mark.parametrize("identifier", ["a/b", "two words", " padded"])
async def test_identifier_that_no_url_path_could_address_is_refused(http, world, identifier):
    response = await http.post(
        "/giftcard",
        json={"cardType": "1", "currencyCode": "978", "identifier": identifier},
        headers=world.pos.headers,
    )
    assert response.status_code == 400
    assert response.json()["message"].startswith("Data Invalid: Identifier must be")
