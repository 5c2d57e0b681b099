"""The native /v1 API does every card command in minor units and refuses with problem+json codes."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger.card import add_months

FIXED = "1000000000000001"
DYNAMIC = "1000000000000000002"


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem with the given status and stable code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["title"]
    assert body["detail"]
    return body


async def issue(
    http, headers, card_type: str = "fixed16", amount_minor: int = 5000, **extra: Any
) -> dict[str, Any]:
    body = {"card_type": card_type, "amount_minor": amount_minor, **extra}
    response = await http.post("/v1/cards", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def card(http, headers, number: str) -> dict[str, Any]:
    response = await http.get(f"/v1/cards/{number}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def command(http, headers, number: str, action: str, body: dict[str, Any] | None = None):
    return await http.post(f"/v1/cards/{number}/{action}", json=body or {}, headers=headers)


async def hold(http, headers, number: str, **body: Any) -> tuple[str, dict[str, Any]]:
    response = await command(http, headers, number, "holds", body)
    assert response.status_code == 201, response.text
    return response.json()["hold_id"], response.json()["card"]


async def event_types(http, headers, number: str) -> list[str]:
    response = await http.get(f"/v1/cards/{number}/events", headers=headers)
    assert response.status_code == 200, response.text
    return [e["type"] for e in response.json()["events"]]


def amounts(view: dict[str, Any]) -> tuple[int, int, int]:
    return view["balance_minor"], view["reserved_minor"], view["available_minor"]


# Issue and read.


async def test_issue_with_a_number_creates_the_card_with_the_types_terms(http, world):
    issued = await issue(http, world.pos.headers, number=FIXED, location_code="SHOP1")
    assert issued["number"] == FIXED
    assert issued["card_type"] == "fixed16"
    assert issued["currency"] == "EUR"
    assert issued["status"] == "active"
    assert (issued["original_minor"], *amounts(issued)) == (5000, 5000, 0, 5000)
    assert issued["fixed_amount"] is True
    assert issued["reservations_allowed"] is True
    assert issued["location_code"] == "SHOP1"
    assert issued["holds"] == []
    assert issued["expires_on"] == add_months(datetime.now(UTC).date(), 36).isoformat()
    assert await card(http, world.pos.headers, FIXED) == issued


async def test_issue_without_a_number_generates_a_distinct_32_character_one(http, world):
    issued = await issue(http, world.pos.headers, card_type="dynamic19", amount_minor=0)
    number = issued["number"]
    assert len(number) == 32
    assert set(number) <= set(string.ascii_letters + string.digits)
    assert amounts(await card(http, world.pos.headers, number)) == (0, 0, 0)
    again = await issue(http, world.pos.headers, card_type="dynamic19", amount_minor=0)
    assert (again["number"], again["ref"]) != (number, issued["ref"])


async def test_issue_of_an_unknown_card_type_is_refused(http, world):
    body = {"card_type": "platinum", "amount_minor": 100, "number": FIXED}
    response = await http.post("/v1/cards", json=body, headers=world.pos.headers)
    assert_problem(response, 422, "unknown_card_type")
    assert (await http.get(f"/v1/cards/{FIXED}", headers=world.pos.headers)).status_code == 404


@pytest.mark.parametrize(
    ("card_type", "number"),
    [
        ("fixed16", "123456781234567"),  # one digit short
        ("fixed16", "12345678123456789"),  # one digit long
        ("fixed16", "12345678abcd5678"),  # letters
        ("gold", "1234567812345678"),  # missing the 77 prefix
    ],
)
async def test_issue_of_a_number_that_does_not_fit_the_type_is_refused(
    http, world, card_type, number
):
    body = {"card_type": card_type, "amount_minor": 100, "number": number}
    response = await http.post("/v1/cards", json=body, headers=world.pos.headers)
    assert_problem(response, 422, "no_matching_card_type")
    assert number not in response.text  # A card number is a bearer secret: masked in errors.
    assert number[-4:] in response.json()["detail"]
    assert (await http.get(f"/v1/cards/{number}", headers=world.pos.headers)).status_code == 404


async def test_issue_of_a_prefixed_type_takes_its_currency(http, world):
    issued = await issue(http, world.pos.headers, card_type="gold", number="7712345678123456")
    assert (issued["card_type"], issued["currency"]) == ("gold", "GBP")


async def test_issuing_an_existing_number_again_is_a_conflict(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=100)
    body = {"card_type": "fixed16", "amount_minor": 999, "number": FIXED}
    response = await http.post("/v1/cards", json=body, headers=world.pos.headers)
    assert_problem(response, 409, "card_exists")
    assert amounts(await card(http, world.pos.headers, FIXED)) == (100, 0, 100)


async def test_issue_at_a_location_the_client_may_not_act_at_is_forbidden(http, world):
    till = await world.client("till", ("cards:sell", "cards:read"), ("SHOP1",))
    body = {"card_type": "fixed16", "amount_minor": 100, "number": FIXED, "location_code": "SHOP2"}
    response = await http.post("/v1/cards", json=body, headers=till.headers)
    assert_problem(response, 403, "location_forbidden")


async def test_an_unknown_card_is_a_404_problem(http, world):
    response = await http.get("/v1/cards/9999999999999999", headers=world.pos.headers)
    body = assert_problem(response, 404, "card_not_found")
    # The number is a bearer secret: errors show only its last 4 characters.
    assert "************9999" in body["detail"]
    assert "9999999999999999" not in response.text
    redeem = await command(
        http, world.pos.headers, "9999999999999999", "redeem", {"amount_minor": 1}
    )
    assert_problem(redeem, 404, "card_not_found")


# Redeem, hold, capture, void.


async def test_redeem_lowers_the_balance(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    response = await command(http, world.pos.headers, FIXED, "redeem", {"amount_minor": 1234})
    assert response.status_code == 200, response.text
    assert amounts(response.json()) == (3766, 0, 3766)
    assert amounts(await card(http, world.pos.headers, FIXED)) == (3766, 0, 3766)


async def test_redeem_of_more_than_the_balance_is_refused_and_changes_nothing(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=500)
    response = await command(http, world.pos.headers, FIXED, "redeem", {"amount_minor": 501})
    assert_problem(response, 422, "insufficient_funds")
    assert amounts(await card(http, world.pos.headers, FIXED)) == (500, 0, 500)
    assert await event_types(http, world.auditor.headers, FIXED) == ["Sold"]


async def test_hold_reserves_an_amount_for_the_caller(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    before = datetime.now(UTC)
    hold_id, view = await hold(http, world.pos.headers, FIXED, amount_minor=2000, ttl_seconds=60)
    assert amounts(view) == (5000, 2000, 3000)
    [held] = view["holds"]
    assert held["hold_id"] == hold_id
    assert held["client_id"] == world.pos.client_id
    assert held["amount_minor"] == 2000
    expires_at = datetime.fromisoformat(held["expires_at"])
    assert before + timedelta(seconds=59) <= expires_at <= datetime.now(UTC) + timedelta(seconds=61)
    assert await card(http, world.pos.headers, FIXED) == view


async def test_hold_without_an_amount_holds_everything_available(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    await hold(http, world.other.headers, FIXED, amount_minor=1500)
    _, view = await hold(http, world.pos.headers, FIXED)
    assert amounts(view) == (5000, 5000, 0)
    held = {h["client_id"]: h["amount_minor"] for h in view["holds"]}
    assert held == {world.other.client_id: 1500, world.pos.client_id: 3500}


async def test_hold_on_a_card_type_without_reservations_is_refused(http, world):
    await issue(http, world.pos.headers, card_type="dynamic19", number=DYNAMIC)
    response = await command(http, world.pos.headers, DYNAMIC, "holds", {"amount_minor": 100})
    assert_problem(response, 422, "unsupported_operation")


async def test_partial_capture_spends_that_much_and_releases_the_rest(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    hold_id, _ = await hold(http, world.pos.headers, FIXED, amount_minor=2000)
    response = await command(
        http, world.pos.headers, FIXED, f"holds/{hold_id}/capture", {"amount_minor": 700}
    )
    assert response.status_code == 200, response.text
    assert amounts(response.json()) == (4300, 0, 4300)
    assert response.json()["holds"] == []


async def test_capture_without_an_amount_spends_the_whole_hold(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    hold_id, _ = await hold(http, world.pos.headers, FIXED, amount_minor=2000)
    response = await command(http, world.pos.headers, FIXED, f"holds/{hold_id}/capture")
    assert amounts(response.json()) == (3000, 0, 3000)


async def test_capture_of_more_than_the_hold_is_refused(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    hold_id, _ = await hold(http, world.pos.headers, FIXED, amount_minor=2000)
    response = await command(
        http, world.pos.headers, FIXED, f"holds/{hold_id}/capture", {"amount_minor": 2001}
    )
    assert_problem(response, 422, "capture_exceeds_hold")
    assert amounts(await card(http, world.pos.headers, FIXED)) == (5000, 2000, 3000)


async def test_another_clients_hold_can_be_neither_captured_nor_voided(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    hold_id, _ = await hold(http, world.pos.headers, FIXED, amount_minor=2000)
    for action in ("capture", "void"):
        response = await command(http, world.other.headers, FIXED, f"holds/{hold_id}/{action}")
        assert_problem(response, 422, "hold_not_found")
    assert amounts(await card(http, world.pos.headers, FIXED)) == (5000, 2000, 3000)


async def test_a_client_of_several_locations_voids_its_hold_and_an_admin_blocks(http, world):
    """Releasing one's own hold, block and unblock are bound to no location, so a client allowed
    at several locations is not refused for naming none."""
    both = ("SHOP1", "SHOP2")
    till = await world.client("till", locations=both)
    await issue(http, till.headers, number=FIXED, amount_minor=5000, location_code="SHOP2")
    hold_id, _ = await hold(http, till.headers, FIXED, amount_minor=2000, location_code="SHOP1")
    response = await command(http, till.headers, FIXED, f"holds/{hold_id}/void")
    assert response.status_code == 200, response.text
    assert amounts(response.json()) == (5000, 0, 5000)
    admin = await world.client("admin", ("admin",), locations=both)
    for action, body in (("block", {"reason": "lost"}), ("unblock", None)):
        response = await command(http, admin.headers, FIXED, action, body)
        assert response.status_code == 200, response.text


async def test_void_releases_the_hold(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    hold_id, _ = await hold(http, world.pos.headers, FIXED, amount_minor=2000)
    response = await command(http, world.pos.headers, FIXED, f"holds/{hold_id}/void")
    assert response.status_code == 200, response.text
    assert amounts(response.json()) == (5000, 0, 5000)
    again = await command(http, world.pos.headers, FIXED, f"holds/{hold_id}/void")
    assert_problem(again, 422, "hold_not_found")


# Load, refund, block.


async def test_load_adds_to_a_dynamic_card(http, world):
    await issue(http, world.pos.headers, card_type="dynamic19", number=DYNAMIC, amount_minor=100)
    response = await command(http, world.pos.headers, DYNAMIC, "load", {"amount_minor": 2500})
    assert response.status_code == 200, response.text
    assert amounts(response.json()) == (2600, 0, 2600)
    assert response.json()["original_minor"] == 100


async def test_load_of_a_fixed_amount_card_is_refused(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    response = await command(http, world.pos.headers, FIXED, "load", {"amount_minor": 100})
    assert_problem(response, 422, "load_not_allowed")
    assert amounts(await card(http, world.pos.headers, FIXED)) == (5000, 0, 5000)


async def test_refund_gives_back_at_most_what_was_spent(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    await command(http, world.pos.headers, FIXED, "redeem", {"amount_minor": 1000})
    too_much = await command(http, world.pos.headers, FIXED, "refund", {"amount_minor": 1001})
    assert_problem(too_much, 422, "refund_exceeds_spent")
    response = await command(http, world.pos.headers, FIXED, "refund", {"amount_minor": 600})
    assert amounts(response.json()) == (4600, 0, 4600)
    rest = await command(http, world.pos.headers, FIXED, "refund", {"amount_minor": 401})
    assert_problem(rest, 422, "refund_exceeds_spent")
    response = await command(http, world.pos.headers, FIXED, "refund", {"amount_minor": 400})
    assert amounts(response.json()) == (5000, 0, 5000)


async def test_block_and_unblock_need_the_admin_scope(http, world):
    await issue(http, world.pos.headers, number=FIXED)
    blocked = await command(http, world.pos.headers, FIXED, "block", {"reason": "stolen"})
    assert_problem(blocked, 403, "forbidden")
    unblocked = await command(http, world.pos.headers, FIXED, "unblock")
    assert_problem(unblocked, 403, "forbidden")
    assert (await card(http, world.pos.headers, FIXED))["status"] == "active"
    assert await event_types(http, world.auditor.headers, FIXED) == ["Sold"]


async def test_a_blocked_card_refuses_redeem_until_unblocked(http, world):
    admin = await world.client("admin", scopes=("admin",))
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    blocked = await command(http, admin.headers, FIXED, "block", {"reason": "stolen"})
    assert blocked.status_code == 200, blocked.text
    assert blocked.json()["status"] == "blocked"
    refused = await command(http, world.pos.headers, FIXED, "redeem", {"amount_minor": 100})
    assert_problem(refused, 422, "card_blocked")
    again = await command(http, admin.headers, FIXED, "block", {"reason": "twice"})
    assert_problem(again, 422, "card_blocked")
    unblocked = await command(http, admin.headers, FIXED, "unblock")
    assert unblocked.json()["status"] == "active"
    redeemed = await command(http, world.pos.headers, FIXED, "redeem", {"amount_minor": 100})
    assert amounts(redeemed.json()) == (4900, 0, 4900)
    expected = ["Sold", "Blocked", "Unblocked", "Redeemed"]
    assert await event_types(http, admin.headers, FIXED) == expected


async def test_unblocking_an_active_card_is_refused(http, world):
    admin = await world.client("admin", scopes=("admin",))
    await issue(http, world.pos.headers, number=FIXED)
    assert_problem(await command(http, admin.headers, FIXED, "unblock"), 422, "card_not_blocked")


# Events.


async def test_events_list_every_change_in_order(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000, location_code="SHOP1")
    hold_id, _ = await hold(http, world.pos.headers, FIXED, amount_minor=2000)
    await command(http, world.pos.headers, FIXED, f"holds/{hold_id}/capture", {"amount_minor": 500})
    await command(http, world.pos.headers, FIXED, "redeem", {"amount_minor": 300})
    response = await http.get(f"/v1/cards/{FIXED}/events", headers=world.auditor.headers)
    page = response.json()
    events = page["events"]
    expected = ["Sold", "Reserved", "ReservationCaptured", "ReservationReleased", "Redeemed"]
    assert [e["type"] for e in events] == expected
    assert [e["version"] for e in events] == [1, 2, 3, 4, 5]
    assert [e["amount_minor"] for e in events] == [5000, 2000, 500, 1500, 300]
    assert {e["actor"] for e in events} == {world.pos.client_id}
    assert events[0]["location_code"] == "SHOP1"
    assert events[1]["data"]["hold_id"] == hold_id
    assert events[3]["data"] == {"hold_id": hold_id, "reason": "remainder"}
    assert page["next_after_version"] is None


async def test_events_page_through_with_next_after_version(http, world):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    for amount in (100, 200, 300):
        await command(http, world.pos.headers, FIXED, "redeem", {"amount_minor": amount})
    url = f"/v1/cards/{FIXED}/events"
    first = (await http.get(url, params={"limit": 2}, headers=world.auditor.headers)).json()
    assert [e["type"] for e in first["events"]] == ["Sold", "Redeemed"]
    assert first["next_after_version"] == 2
    params = {"limit": 2, "after_version": first["next_after_version"]}
    second = (await http.get(url, params=params, headers=world.auditor.headers)).json()
    assert [(e["type"], e["amount_minor"]) for e in second["events"]] == [
        ("Redeemed", 200),
        ("Redeemed", 300),
    ]
    params = {"limit": 2, "after_version": second["next_after_version"]}
    third = (await http.get(url, params=params, headers=world.auditor.headers)).json()
    assert third == {"events": [], "next_after_version": None}


async def test_events_of_an_unknown_card_are_a_404(http, world):
    response = await http.get("/v1/cards/9999999999999999/events", headers=world.auditor.headers)
    assert_problem(response, 404, "card_not_found")


# Validation.


@pytest.mark.parametrize("amount", [0, -5, 1.5, 10**12, "10", 10.0, "1e3"])
@pytest.mark.parametrize("action", ["redeem", "refund", "holds"])
async def test_a_bad_amount_is_a_validation_problem_and_changes_nothing(
    http, world, action, amount
):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    await command(http, world.pos.headers, FIXED, "redeem", {"amount_minor": 1000})
    response = await command(http, world.pos.headers, FIXED, action, {"amount_minor": amount})
    assert_problem(response, 422, "validation_failed")
    assert amounts(await card(http, world.pos.headers, FIXED)) == (4000, 0, 4000)
    assert await event_types(http, world.auditor.headers, FIXED) == ["Sold", "Redeemed"]


@pytest.mark.parametrize("action", ["redeem", "refund", "load"])
async def test_an_amount_is_required_where_there_is_no_default(http, world, action):
    await issue(http, world.pos.headers, number=FIXED, amount_minor=5000)
    response = await command(http, world.pos.headers, FIXED, action, {"location_code": "SHOP1"})
    assert_problem(response, 422, "validation_failed")
    assert await event_types(http, world.auditor.headers, FIXED) == ["Sold"]


@pytest.mark.parametrize(
    "body",
    [
        {"card_type": "fixed16", "amount_minor": -1, "number": FIXED},
        {"card_type": "fixed16", "amount_minor": 1.5, "number": FIXED},
        {"card_type": "fixed16", "amount_minor": "100", "number": FIXED},
        {"card_type": "fixed16", "number": FIXED},
        {"card_type": "", "amount_minor": 100, "number": FIXED},
        {"card_type": "fixed16", "amount_minor": 100, "number": FIXED, "colour": "red"},
    ],
)
async def test_a_bad_issue_body_is_a_validation_problem_and_creates_nothing(http, world, body):
    response = await http.post("/v1/cards", json=body, headers=world.pos.headers)
    assert_problem(response, 422, "validation_failed")
    assert (await http.get(f"/v1/cards/{FIXED}", headers=world.pos.headers)).status_code == 404


async def test_a_hold_ttl_of_zero_is_a_validation_problem(http, world):
    await issue(http, world.pos.headers, number=FIXED)
    response = await command(http, world.pos.headers, FIXED, "holds", {"ttl_seconds": 0})
    assert_problem(response, 422, "validation_failed")
    assert (await card(http, world.pos.headers, FIXED))["holds"] == []


async def test_requests_without_a_token_are_unauthorized(http, world):
    assert_problem(await http.get(f"/v1/cards/{FIXED}"), 401, "unauthorized")


# OpenAPI.


async def test_the_openapi_document_lists_every_api(http):
    response = await http.get("/schema/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/v1/cards/{number}", "/api/giftcards/v1/cards/{card_id}", "/giftcard"):
        assert path in paths
    assert "/v1/cards/{number}/holds/{hold_id}/capture" in paths


async def test_the_schema_page_is_html(http):
    response = await http.get("/schema")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()


async def test_ping_answers_without_a_token_or_the_database(http):
    response = await http.get("/ping")
    assert response.status_code == 200
    assert response.text == "pong"
