"""GIFTLEDGER_GIFTSTREAM_CARD_TYPE gives GiftStream cards a configured card type's rules."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from ledger.card import add_months
from projections.config import CardType

GS_FIXED = CardType("gs-fixed", "", 32, "0123456789abcdef", True, True, False, 6, "EUR")


@pytest.fixture
async def configured(settings, world):
    await world.config.add_card_type(GS_FIXED)
    app = create_app(dataclasses.replace(settings, giftstream_card_type="gs-fixed"))
    async with AsyncTestClient(app=app) as client:
        yield client


async def test_giftstream_cards_follow_the_configured_card_type(configured, world):
    created = await configured.post(
        "/giftcard",
        json={"cardType": "1", "currencyCode": "826", "initialBalance": "10.00"},
        headers=world.pos.headers,
    )
    assert created.status_code == 200, created.text
    data = created.json()["data"]
    assert data["expiry"] == add_months(datetime.now(UTC).date(), 6).isoformat()
    card = (await configured.get(f"/v1/cards/{data['cardId']}", headers=world.pos.headers)).json()
    assert card["card_type"] == "gs-fixed"
    assert card["fixed_amount"] is True
    assert card["reservations_allowed"] is False
    assert card["currency"] == "GBP", "the request's currency code decides the currency"
    held = await configured.post(
        f"/v1/cards/{data['cardId']}/holds", json={"amount_minor": 100}, headers=world.pos.headers
    )
    assert held.status_code == 422
    assert held.json()["code"] == "unsupported_operation"
