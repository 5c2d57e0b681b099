"""Given a card's history, when a command, then its events post exactly these balanced entries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from ledger.card import Card
from ledger.postings import postings_for, trial_balance
from tests.unit.support import EXPIRES_ON, given_card, names, origin

# The location support.origin() acts at.
CLEARING = "location_clearing:LOC-1"
REVENUE = "location_revenue:LOC-1"
TTL = 600
DAY_AFTER_EXPIRY = datetime.combine(EXPIRES_ON + timedelta(days=1), time(), UTC)


def posted(events: Sequence[Any], currency: str = "EUR") -> list[tuple[str, int, bool]]:
    """Each posting of the events as (account, amount: debit positive, memo)."""
    found = []
    for event in events:
        for posting in postings_for(type(event).__name__, event, currency):
            assert posting.currency == currency
            found.append((posting.account, posting.amount_minor, posting.memo))
    return found


def assert_balanced(events: Sequence[Any]) -> None:
    postings = [p for e in events for p in postings_for(type(e).__name__, e, "EUR")]
    assert set(trial_balance(postings).values()) <= {0}


def given_held(hold_minor: int = 1000, amount_minor: int = 10_000) -> tuple[Card, list[Any]]:
    card, history = given_card(amount_minor)
    card.reserve(hold_minor, TTL, origin(), "h1")
    return card, history + card.collect_events()


def test_a_sale_debits_the_locations_clearing_and_credits_card_liability() -> None:
    _, events = given_card(2500)
    assert names(events) == ["Sold"]
    assert posted(events) == [(CLEARING, 2500, False), ("card_liability", -2500, False)]
    assert_balanced(events)


def test_a_sale_of_nothing_posts_nothing() -> None:
    _, events = given_card(0)
    assert posted(events) == []


def test_a_load_posts_like_a_sale() -> None:
    card, _ = given_card(1000)
    card.load(300, origin())
    events = card.collect_events()
    assert posted(events) == [(CLEARING, 300, False), ("card_liability", -300, False)]
    assert_balanced(events)


def test_a_redemption_debits_card_liability_and_credits_the_locations_revenue() -> None:
    card, _ = given_card(1000)
    card.redeem(400, origin())
    events = card.collect_events()
    assert posted(events) == [("card_liability", 400, False), (REVENUE, -400, False)]
    assert_balanced(events)


def test_a_refund_goes_the_other_way() -> None:
    card, _ = given_card(1000)
    card.redeem(400, origin())
    card.collect_events()
    card.refund(150, origin())
    events = card.collect_events()
    assert posted(events) == [(REVENUE, 150, False), ("card_liability", -150, False)]
    assert_balanced(events)


def test_a_hold_is_a_memo_entry_that_moves_no_money() -> None:
    card, _ = given_card(1000)
    card.reserve(600, TTL, origin(), "h1")
    events = card.collect_events()
    assert names(events) == ["Reserved"]
    assert posted(events) == [("holds", 600, True), ("holds_available", -600, True)]
    assert_balanced(events)


def test_a_capture_spends_from_the_hold_and_its_memo_shrinks_by_as_much() -> None:
    card, _ = given_held(1000)
    card.capture("h1", 600, origin())
    events = card.collect_events()
    assert names(events) == ["ReservationCaptured", "ReservationReleased"]
    assert posted(events) == [
        ("card_liability", 600, False),
        (REVENUE, -600, False),
        ("holds_available", 600, True),
        ("holds", -600, True),
        ("holds_available", 400, True),  # The remainder is released.
        ("holds", -400, True),
    ]
    assert_balanced(events)


def test_a_release_reverses_the_holds_memo_entry() -> None:
    card, history = given_held(1000)
    card.void("h1", origin())
    events = card.collect_events()
    assert names(events) == ["ReservationReleased"]
    assert posted(events) == [("holds_available", 1000, True), ("holds", -1000, True)]
    memo = [p for p in posted(history + events) if p[2]]
    assert sum(amount for account, amount, _ in memo if account == "holds") == 0


def test_an_expiry_moves_the_remaining_balance_from_card_liability_to_breakage() -> None:
    card, _ = given_held(1000, amount_minor=2500)
    card.expire(origin(when=DAY_AFTER_EXPIRY))
    events = card.collect_events()
    assert names(events) == ["ReservationReleased", "Expired"]
    assert posted(events) == [
        ("holds_available", 1000, True),
        ("holds", -1000, True),
        ("card_liability", 2500, False),
        ("breakage_income", -2500, False),
    ]
    assert_balanced(events)


def test_a_block_and_an_unblock_post_nothing() -> None:
    card, _ = given_card(1000)
    card.block("lost", origin())
    card.unblock(origin())
    events = card.collect_events()
    assert names(events) == ["Blocked", "Unblocked"]
    assert posted(events) == []


def test_a_card_spent_to_nothing_has_no_liability_left() -> None:
    card, history = given_card(1000)
    card.redeem(700, origin())
    card.load(200, origin())
    card.redeem(500, origin())
    events = history + card.collect_events()
    liability = sum(a for account, a, _ in posted(events) if account == "card_liability")
    assert liability == -card.balance_minor == 0


def test_postings_are_in_the_cards_currency() -> None:
    _, events = given_card(800, currency="GBP")
    assert posted(events, "GBP") == [(CLEARING, 800, False), ("card_liability", -800, False)]


def test_an_event_type_without_a_rule_is_a_programmer_error() -> None:
    _, events = given_card(800)
    with pytest.raises(AssertionError, match="no postings rule"):
        postings_for("Teleported", events[0], "EUR")
