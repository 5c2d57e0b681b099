"""The service expires cards past their date by itself, moving the rest to breakage."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from ledger.card import CardTerms, Origin

EXPIRY_WAIT_SECONDS_MAX = 5


async def test_a_card_past_its_expiry_date_is_expired_without_any_request(http, world, app):
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    terms = CardTerms("open", "EUR", False, True, True, yesterday)
    sold_at = datetime.now(UTC) - timedelta(days=3)
    service = app.state.service
    await asyncio.to_thread(
        service.sell_now, "8100000000000001", 1, terms, 4200,
        Origin(occurred_at=sold_at, actor="pos", location_code="SHOP1", site_id=1),
    )  # fmt: skip

    deadline = time.monotonic() + EXPIRY_WAIT_SECONDS_MAX
    while time.monotonic() < deadline:
        card = (await http.get("/v1/cards/8100000000000001", headers=world.pos.headers)).json()
        if card["status"] == "expired":
            break
        await asyncio.sleep(0.2)

    assert card["status"] == "expired"
    assert (card["balance_minor"], card["reserved_minor"]) == (0, 0)
    events = (
        await http.get("/v1/cards/8100000000000001/events", headers=world.auditor.headers)
    ).json()["events"]
    # Releasing a live hold on expiry (reason card_expired) is shown in tests/unit/test_card.py.
    assert [e["type"] for e in events] == ["Sold", "Expired"]
    assert events[1]["amount_minor"] == 4200
    assert events[1]["actor"] == "system:card-expiry"


async def test_a_card_valid_today_is_left_alone(http, world, app):
    terms = CardTerms("open", "EUR", False, True, True, datetime.now(UTC).date())
    await asyncio.to_thread(
        app.state.service.sell_now, "8100000000000002", 2, terms, 500,
        Origin(occurred_at=datetime.now(UTC), actor="pos"),
    )  # fmt: skip
    await asyncio.sleep(1.0)  # Several sweeps.
    card = (await http.get("/v1/cards/8100000000000002", headers=world.pos.headers)).json()
    assert (card["status"], card["balance_minor"]) == ("active", 500)
