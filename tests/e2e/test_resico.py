"""Resico's Gift Card API over HTTP: get, sell, use, reserve and cancel, with their refusals."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from ledger.card import add_months

BASE = "/api/giftcards/v1"
CARD_KEYS = {
    "id", "giftCardNo", "originalBalance", "currentBalance", "reservedBalance",
    "availableBalance", "fixedAmount", "redeemAllowed", "locationCode", "status",
    "expiryDate", "currency",
}  # fmt: skip


def D(text: str) -> Decimal:
    return Decimal(text)


def body(response: Any) -> dict[str, Any]:
    """The JSON body with numbers parsed exactly, so 57.23 is Decimal('57.23'), never a float."""
    return json.loads(response.text, parse_float=Decimal)


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    problem = body(response)
    assert problem["code"] == code, problem
    assert problem["status"] == status
    assert problem["detail"]
    return problem


def balances(card: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal]:
    return card["currentBalance"], card["reservedBalance"], card["availableBalance"]


async def sell(http, client, number, amount: Any = "20.00", location="SHOP1", transaction_no=None):
    # A POS numbers its transactions; reusing one for another sale is refused as a key reuse.
    transaction_no = number[-8:] if transaction_no is None else transaction_no
    payload = {"amount": amount, "transactionNo": transaction_no, "locationCode": location}
    return await http.post(f"{BASE}/cards/{number}", json=payload, headers=client.headers)


async def sold(http, client, number, amount: Any = "20.00") -> dict[str, Any]:
    response = await sell(http, client, number, amount)
    assert response.status_code == 200, response.text
    return body(response)


async def get_card(http, client, number):
    return await http.get(f"{BASE}/cards/{number}", headers=client.headers)


async def card_of(http, client, number) -> dict[str, Any]:
    response = await get_card(http, client, number)
    assert response.status_code == 200, response.text
    return body(response)


async def use(http, client, number, amount: Any, location=None, consumer_key=None):
    payload = {"amount": amount}
    if location is not None:
        payload["locationCode"] = location
    key = consumer_key or client.consumer_key
    return await http.post(
        f"{BASE}/transactions/{key}/cards/{number}", json=payload, headers=client.headers
    )


async def reserve(http, client, number, location="SHOP1", amount=None):
    payload = {"locationCode": location}
    if amount is not None:
        payload["amount"] = amount
    return await http.post(f"{BASE}/reserve/{number}", json=payload, headers=client.headers)


async def cancel(http, client, number):
    return await http.get(f"{BASE}/cancelreserve/{number}", headers=client.headers)


async def giftstream_card(http, client, site_id: int) -> str:
    fields = {"cardType": "2", "currencyCode": "978", "initialBalance": "30.00",
              "siteId": str(site_id)}  # fmt: skip
    response = await http.post("/giftcard", data=fields, headers=client.headers)
    assert response.status_code == 200, response.text
    return body(response)["data"]["cardId"]


# Get card info.


async def test_get_card_returns_exactly_the_documented_fields(http, world):
    await sold(http, world.pos, "1000000000000001", "57.23")
    card = await card_of(http, world.pos, "1000000000000001")
    assert set(card) == CARD_KEYS
    assert isinstance(card["id"], int)
    assert card["giftCardNo"] == "1000000000000001"
    assert card["originalBalance"] == D("57.23")
    assert balances(card) == (D("57.23"), D("0.00"), D("57.23"))
    assert card["fixedAmount"] is True
    assert card["redeemAllowed"] is True
    assert card["locationCode"] == "SHOP1"
    assert card["status"] == "active"
    assert card["currency"] == "EUR"
    assert card["expiryDate"] == add_months(datetime.now(UTC).date(), 36).isoformat()


async def test_get_unknown_card_is_not_found(http, world):
    assert_problem(await get_card(http, world.pos, "1000000000000002"), 404, "card_not_found")


# Sell.


async def test_sell_returns_the_new_card(http, world):
    card = await sold(http, world.pos, "1000000000000010", "25.00")
    assert set(card) == CARD_KEYS
    assert card["giftCardNo"] == "1000000000000010"
    assert card["originalBalance"] == D("25.00")
    assert balances(card) == (D("25.00"), D("0.00"), D("25.00"))
    assert card["status"] == "active"
    assert card["currency"] == "EUR"


@pytest.mark.parametrize("amount", [57.23, "57.23"], ids=["json-number", "string"])
async def test_sell_amount_is_kept_exactly(http, world, amount):
    response = await sell(http, world.pos, "1000000000000011", amount)
    assert response.status_code == 200, response.text
    assert '"currentBalance":57.23' in response.text
    assert body(response)["originalBalance"] == D("57.23")
    assert (await card_of(http, world.pos, "1000000000000011"))["currentBalance"] == D("57.23")


@pytest.mark.parametrize(
    ("amount", "code"),
    [(0, "invalid_amount"), ("0.00", "invalid_amount"), (-5, "invalid_amount"),
     ("-5.00", "invalid_amount"), (57.234, "invalid_amount"), ("57.234", "invalid_amount"),
     ("NaN", "invalid_amount"), ("abc", "validation_failed")],
)  # fmt: skip
async def test_sell_with_invalid_amount_is_refused_and_creates_nothing(http, world, amount, code):
    assert_problem(await sell(http, world.pos, "1000000000000012", amount), 422, code)
    assert (await get_card(http, world.pos, "1000000000000012")).status_code == 404


async def test_sell_without_amount_is_refused(http, world):
    response = await http.post(
        f"{BASE}/cards/1000000000000013",
        json={"transactionNo": "1", "locationCode": "SHOP1"},
        headers=world.pos.headers,
    )
    assert_problem(response, 422, "validation_failed")
    assert (await get_card(http, world.pos, "1000000000000013")).status_code == 404


async def test_sell_with_transaction_no_longer_than_8_is_refused(http, world):
    ok = await sell(http, world.pos, "1000000000000014", transaction_no="12345678")
    assert ok.status_code == 200, ok.text
    refused = await sell(http, world.pos, "1000000000000015", transaction_no="123456789")
    assert_problem(refused, 422, "validation_failed")
    assert (await get_card(http, world.pos, "1000000000000015")).status_code == 404


async def test_sell_at_unknown_location_is_refused(http, world):
    response = await sell(http, world.pos, "1000000000000016", location="NOWHERE")
    assert_problem(response, 422, "unknown_location")
    assert (await get_card(http, world.pos, "1000000000000016")).status_code == 404


@pytest.mark.parametrize("number", ["123", "12345678901234567", "12345678abcd5678"])
async def test_sell_number_fitting_no_card_type_is_refused(http, world, number):
    assert_problem(await sell(http, world.pos, number), 422, "no_matching_card_type")


async def test_sell_routes_numbers_to_card_types_by_prefix(http, world):
    gold = await sold(http, world.pos, "7700000000000001", "10.00")
    plain = await sold(http, world.pos, "7800000000000002", "10.00")
    dynamic = await sold(http, world.pos, "1234567890123456789", "10.00")
    assert gold["currency"] == "GBP"
    assert gold["expiryDate"] == add_months(datetime.now(UTC).date(), 12).isoformat()
    assert plain["currency"] == "EUR"
    assert plain["fixedAmount"] is True
    assert dynamic["currency"] == "EUR"
    assert dynamic["fixedAmount"] is False


async def test_selling_an_existing_card_conflicts_and_keeps_the_original(http, world):
    original = await sold(http, world.pos, "1000000000000017", "20.00")
    again = await sell(http, world.other, "1000000000000017", "99.00", location="SHOP2")
    assert_problem(again, 409, "card_exists")
    assert await card_of(http, world.pos, "1000000000000017") == original


# Use.


async def test_use_deducts_the_amount(http, world):
    await sold(http, world.pos, "1000000000000020", "20.00")
    response = await use(http, world.pos, "1000000000000020", "7.55")
    assert response.status_code == 200, response.text
    assert balances(body(response)) == (D("12.45"), D("0.00"), D("12.45"))
    assert body(response)["originalBalance"] == D("20.00")


async def test_use_beyond_balance_is_refused_and_changes_nothing(http, world):
    before = await sold(http, world.pos, "1000000000000021", "20.00")
    assert_problem(
        await use(http, world.pos, "1000000000000021", "20.01"), 422, "insufficient_funds"
    )
    assert await card_of(http, world.pos, "1000000000000021") == before


async def test_use_with_another_clients_consumer_key_is_forbidden(http, world):
    before = await sold(http, world.pos, "1000000000000022", "20.00")
    response = await use(
        http, world.pos, "1000000000000022", "5.00", consumer_key=world.other.consumer_key
    )
    assert_problem(response, 403, "forbidden")
    assert await card_of(http, world.pos, "1000000000000022") == before


async def test_use_unknown_card_is_not_found(http, world):
    assert_problem(await use(http, world.pos, "1000000000000023", "5.00"), 404, "card_not_found")


@pytest.mark.parametrize(
    ("amount", "code"),
    [(0, "invalid_amount"), ("-1.00", "invalid_amount"), ("1.001", "invalid_amount"),
     ("abc", "validation_failed")],
)  # fmt: skip
async def test_use_with_invalid_amount_is_refused(http, world, amount, code):
    before = await sold(http, world.pos, "1000000000000024", "20.00")
    assert_problem(await use(http, world.pos, "1000000000000024", amount), 422, code)
    assert await card_of(http, world.pos, "1000000000000024") == before


@pytest.mark.parametrize("operation", ["sell", "use", "reserve"])
async def test_amount_with_huge_exponent_is_an_invalid_amount(http, world, operation):
    before = await sold(http, world.pos, "1000000000000025", "20.00")
    response = {
        "sell": lambda: sell(http, world.pos, "1000000000000026", "1e999999"),
        "use": lambda: use(http, world.pos, "1000000000000025", "1e999999"),
        "reserve": lambda: reserve(http, world.pos, "1000000000000025", amount="1e999999"),
    }[operation]
    assert_problem(await response(), 422, "invalid_amount")
    assert await card_of(http, world.pos, "1000000000000025") == before


# Reserve and cancel.


async def test_reserve_holds_the_whole_available_balance(http, world):
    await sold(http, world.pos, "1000000000000030", "20.00")
    response = await reserve(http, world.pos, "1000000000000030")
    assert response.status_code == 200, response.text
    assert balances(body(response)) == (D("20.00"), D("20.00"), D("0.00"))
    assert balances(await card_of(http, world.pos, "1000000000000030")) == balances(body(response))


async def test_reserve_with_amount_holds_only_that_amount(http, world):
    await sold(http, world.pos, "1000000000000031", "20.00")
    response = await reserve(http, world.pos, "1000000000000031", amount="7.50")
    assert response.status_code == 200, response.text
    assert balances(body(response)) == (D("20.00"), D("7.50"), D("12.50"))


async def test_reserve_beyond_available_is_refused(http, world):
    await sold(http, world.pos, "1000000000000032", "20.00")
    assert (await reserve(http, world.other, "1000000000000032", amount="15.00")).status_code == 200
    refused = await reserve(http, world.pos, "1000000000000032", amount="5.01")
    assert_problem(refused, 422, "insufficient_funds")
    card = await card_of(http, world.pos, "1000000000000032")
    assert balances(card) == (D("20.00"), D("15.00"), D("5.00"))


async def test_reserve_and_cancel_are_unsupported_on_dynamic_cards(http, world):
    before = await sold(http, world.pos, "1000000000000000033", "20.00")
    assert_problem(await reserve(http, world.pos, "1000000000000000033"), 422,
                   "unsupported_operation")  # fmt: skip
    assert_problem(await cancel(http, world.pos, "1000000000000000033"), 422,
                   "unsupported_operation")  # fmt: skip
    assert await card_of(http, world.pos, "1000000000000000033") == before


async def test_reserve_at_unknown_location_is_refused(http, world):
    before = await sold(http, world.pos, "1000000000000034", "20.00")
    response = await reserve(http, world.pos, "1000000000000034", location="NOWHERE")
    assert_problem(response, 422, "unknown_location")
    assert await card_of(http, world.pos, "1000000000000034") == before


async def test_use_by_the_holder_captures_its_hold_first_and_releases_the_rest(http, world):
    await sold(http, world.pos, "1000000000000035", "20.00")
    assert (await reserve(http, world.pos, "1000000000000035", amount="10.00")).status_code == 200
    response = await use(http, world.pos, "1000000000000035", "4.00")
    assert response.status_code == 200, response.text
    assert balances(body(response)) == (D("16.00"), D("0.00"), D("16.00"))


async def test_use_by_the_holder_may_spend_its_hold_and_the_available_rest(http, world):
    await sold(http, world.pos, "1000000000000036", "20.00")
    assert (await reserve(http, world.pos, "1000000000000036", amount="10.00")).status_code == 200
    response = await use(http, world.pos, "1000000000000036", "15.00")
    assert response.status_code == 200, response.text
    assert balances(body(response)) == (D("5.00"), D("0.00"), D("5.00"))


async def test_another_client_can_spend_only_the_available_balance(http, world):
    await sold(http, world.pos, "1000000000000037", "20.00")
    assert (await reserve(http, world.pos, "1000000000000037")).status_code == 200
    refused = await use(http, world.other, "1000000000000037", "0.01")
    assert_problem(refused, 422, "insufficient_funds")
    card = await card_of(http, world.pos, "1000000000000037")
    assert balances(card) == (D("20.00"), D("20.00"), D("0.00"))


async def test_another_client_spends_around_a_partial_hold(http, world):
    await sold(http, world.pos, "1000000000000038", "20.00")
    assert (await reserve(http, world.pos, "1000000000000038", amount="15.00")).status_code == 200
    assert_problem(await use(http, world.other, "1000000000000038", "5.01"), 422,
                   "insufficient_funds")  # fmt: skip
    spent = await use(http, world.other, "1000000000000038", "5.00")
    assert spent.status_code == 200, spent.text
    assert balances(body(spent)) == (D("15.00"), D("15.00"), D("0.00"))


async def test_reserving_again_replaces_the_callers_hold(http, world):
    await sold(http, world.pos, "1000000000000041", "20.00")
    assert (await reserve(http, world.pos, "1000000000000041", amount="5.00")).status_code == 200
    again = await reserve(http, world.pos, "1000000000000041")
    assert again.status_code == 200, again.text
    assert balances(body(again)) == (D("20.00"), D("20.00"), D("0.00"))
    assert_problem(await reserve(http, world.other, "1000000000000041"), 422, "insufficient_funds")


async def test_reserve_and_cancel_unknown_card_are_not_found(http, world):
    assert_problem(await reserve(http, world.pos, "1000000000000042"), 404, "card_not_found")
    assert_problem(await cancel(http, world.pos, "1000000000000042"), 404, "card_not_found")


async def test_cancel_reserve_releases_the_hold(http, world):
    await sold(http, world.pos, "1000000000000039", "20.00")
    assert (await reserve(http, world.pos, "1000000000000039")).status_code == 200
    response = await cancel(http, world.pos, "1000000000000039")
    assert response.status_code == 200, response.text
    assert balances(body(response)) == (D("20.00"), D("0.00"), D("20.00"))
    assert balances(await card_of(http, world.pos, "1000000000000039")) == balances(body(response))


async def test_cancel_reserve_touches_only_the_callers_hold(http, world):
    await sold(http, world.pos, "1000000000000040", "20.00")
    assert (await reserve(http, world.pos, "1000000000000040", amount="8.00")).status_code == 200
    response = await cancel(http, world.other, "1000000000000040")
    assert response.status_code == 200, response.text
    assert balances(body(response)) == (D("20.00"), D("8.00"), D("12.00"))


# Scopes and locations.


async def test_client_without_redeem_scope_cannot_use(http, world):
    before = await sold(http, world.pos, "1000000000000050", "20.00")
    reader = await world.client("reader", scopes=("cards:read", "cards:sell", "cards:reserve"))
    assert_problem(await use(http, reader, "1000000000000050", "1.00"), 403, "forbidden")
    assert await card_of(http, world.pos, "1000000000000050") == before


async def test_client_without_sell_scope_cannot_sell(http, world):
    spender = await world.client("spender", scopes=("cards:read", "cards:redeem"))
    assert_problem(await sell(http, spender, "1000000000000051"), 403, "forbidden")
    assert (await get_card(http, world.pos, "1000000000000051")).status_code == 404


async def test_client_without_read_scope_cannot_get(http, world):
    await sold(http, world.pos, "1000000000000052")
    seller = await world.client("seller", scopes=("cards:sell",))
    response = await get_card(http, seller, "1000000000000052")
    assert_problem(response, 403, "forbidden")
    assert "giftCardNo" not in response.text


async def test_client_limited_to_a_location_cannot_sell_elsewhere(http, world):
    shop1 = await world.client("shop1", locations=("SHOP1",))
    assert_problem(await sell(http, shop1, "1000000000000053", location="SHOP2"), 403,
                   "location_forbidden")  # fmt: skip
    assert (await get_card(http, world.pos, "1000000000000053")).status_code == 404
    allowed = await sell(http, shop1, "1000000000000053", location="SHOP1")
    assert allowed.status_code == 200, allowed.text


async def test_site_locked_card_needs_a_location_of_its_site(http, world):
    number = await giftstream_card(http, world.pos, site_id=1)
    assert_problem(await use(http, world.pos, number, "1.00"), 422, "wrong_location")
    assert_problem(await use(http, world.pos, number, "1.00", location="SHOP2"), 422,
                   "wrong_location")  # fmt: skip
    assert (await card_of(http, world.pos, number))["currentBalance"] == D("30.00")
    response = await use(http, world.pos, number, "1.00", location="SHOP1")
    assert response.status_code == 200, response.text
    assert body(response)["currentBalance"] == D("29.00")


# Concurrency.


async def test_concurrent_uses_never_spend_more_than_the_balance(http, world):
    await sold(http, world.pos, "1000000000000070", "20.00")
    clients = [world.pos, world.other] * 5
    answers = await asyncio.gather(
        *(use(http, client, "1000000000000070", "3.00") for client in clients)
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 6 + [422] * 4, [a.text for a in answers]
    assert all(body(a)["code"] == "insufficient_funds" for a in answers if a.status_code == 422)
    card = await card_of(http, world.pos, "1000000000000070")
    assert balances(card) == (D("2.00"), D("0.00"), D("2.00"))


async def test_concurrent_sells_of_one_number_create_it_once(http, world):
    answers = await asyncio.gather(
        *(
            sell(http, world.pos, "1000000000000071", f"{n}.00", transaction_no=str(n))
            for n in range(1, 6)
        )
    )
    won = [a for a in answers if a.status_code == 200]
    assert len(won) == 1, [a.text for a in answers]
    assert all(body(a)["code"] == "card_exists" for a in answers if a.status_code != 200)
    assert await card_of(http, world.pos, "1000000000000071") == body(won[0])


# Read-your-writes.


async def test_every_write_is_visible_to_the_next_read(http, world):
    number = "1000000000000060"
    steps = [
        lambda: sell(http, world.pos, number, "20.00"),
        lambda: use(http, world.pos, number, "2.50"),
        lambda: reserve(http, world.pos, number, amount="5.00"),
        lambda: use(http, world.other, number, "1.00"),
        lambda: cancel(http, world.pos, number),
        lambda: reserve(http, world.other, number),
        lambda: use(http, world.other, number, "0.50"),
    ]
    expected = [("20.00", "0.00", "20.00"), ("17.50", "0.00", "17.50"),
                ("17.50", "5.00", "12.50"), ("16.50", "5.00", "11.50"),
                ("16.50", "0.00", "16.50"), ("16.50", "16.50", "0.00"),
                ("16.00", "0.00", "16.00")]  # fmt: skip
    for step, want in zip(steps, expected, strict=True):
        written = await step()
        assert written.status_code == 200, written.text
        read = await card_of(http, world.pos, number)
        assert read == body(written)
        assert balances(read) == tuple(D(x) for x in want)


# Deduplication of sales on (locationCode, transactionNo).


async def test_a_retried_sale_replays_its_answer_and_sells_once(http, world, pool):
    first = await sell(http, world.pos, "1000000000000080", "20.00", transaction_no="T80")
    again = await sell(http, world.pos, "1000000000000080", "20.00", transaction_no="T80")
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    events = await pool.fetchval(
        "SELECT count(*) FROM giftledger_events e JOIN card_views v ON v.card_id = e.originator_id"
        " WHERE v.number = $1",
        "1000000000000080",
    )
    assert events == 1


async def test_another_sale_under_a_used_transaction_number_is_refused(http, world):
    await sold(http, world.pos, "1000000000000081", "20.00")
    other = await sell(http, world.pos, "1000000000000082", "20.00", transaction_no="00000081")
    assert_problem(other, 422, "idempotency_key_reused")
    missing = await http.get(f"{BASE}/cards/1000000000000082", headers=world.pos.headers)
    assert missing.status_code == 404
