"""Given a card's events, each non-hold command records exactly the expected events or refuses."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from ledger.card import Card, CardStatus, card_id_for
from ledger.errors import (
    BalanceLimitExceeded,
    CardBlocked,
    CardExpired,
    CardNotBlocked,
    ErrorCode,
    InsufficientFunds,
    InvalidAmount,
    InvalidCardNumber,
    LoadNotAllowed,
    RedeemNotAllowed,
    RefundExceedsSpent,
    WrongLocation,
)
from ledger.money import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX
from tests.unit.support import (
    CLIENT,
    EXPIRES_ON,
    NUMBER,
    OTHER,
    T0,
    assert_replays_to,
    at,
    facts,
    given_card,
    names,
    origin,
    refused,
    terms,
)

DAY_AFTER_EXPIRY = datetime(2026, 7, 1, tzinfo=UTC)
LAST_SECOND_OF_EXPIRY_DAY = datetime(2026, 6, 30, 23, 59, 59, tzinfo=UTC)

# Sell.


def test_sell_records_sold_with_the_terms_and_the_opening_balance() -> None:
    card = Card.sell(NUMBER, 7, terms(card_type="gold"), 2500, origin())
    events = card.collect_events()
    assert names(events) == ["Sold"]
    assert (events[0].amount_minor, events[0].card_type, events[0].number) == (2500, "gold", NUMBER)
    assert (events[0].expires_on, events[0].actor) == (EXPIRES_ON, CLIENT)
    assert card.id == card_id_for(NUMBER)
    assert (card.balance_minor, card.spent_minor, card.reserved_minor) == (2500, 0, 0)
    assert (card.status, card.holds, card.terms) == (CardStatus.ACTIVE, {}, terms(card_type="gold"))
    assert_replays_to(card, events)


def test_sell_with_zero_amount_is_allowed() -> None:
    card, events = given_card(0)
    assert facts(events, "amount_minor") == [("Sold", 0)]
    assert card.balance_minor == 0


@pytest.mark.parametrize(
    "number", ["", "x" * 257, "12\n34", "12\x0034", "12 34", "12/34", "12\u300034"]
)
def test_sell_with_invalid_card_number_is_refused(number: str) -> None:
    with pytest.raises(InvalidCardNumber) as info:
        Card.sell(number, 1, terms(), 100, origin())
    assert info.value.code == ErrorCode.INVALID_CARD_NUMBER


def test_sell_accepts_a_card_number_of_the_maximum_length() -> None:
    card = Card.sell("9" * 256, 1, terms(), 100, origin())
    assert names(card.collect_events()) == ["Sold"]


@pytest.mark.parametrize("amount", [-1, AMOUNT_MINOR_MAX + 1])
def test_sell_with_amount_out_of_range_is_refused(amount: int) -> None:
    with pytest.raises(InvalidAmount) as info:
        Card.sell(NUMBER, 1, terms(), amount, origin())
    assert info.value.code == ErrorCode.INVALID_AMOUNT


# Redeem.


def test_redeem_within_available_records_redeemed_and_lowers_the_balance() -> None:
    card, history = given_card(10_000)
    card.redeem(1200, origin())
    events = card.collect_events()
    assert names(events) == ["Redeemed"]
    assert events[0].amount_minor == 1200
    assert (card.balance_minor, card.spent_minor) == (8800, 1200)
    assert_replays_to(card, history + events)


def test_redeem_of_the_whole_balance_leaves_zero() -> None:
    card, history = given_card(10_000)
    card.redeem(10_000, origin())
    events = card.collect_events()
    assert facts(events, "amount_minor") == [("Redeemed", 10_000)]
    assert card.balance_minor == 0
    assert_replays_to(card, history + events)


def test_redeem_more_than_the_balance_is_refused_and_changes_nothing() -> None:
    card, _ = given_card(10_000)
    error = refused(card, InsufficientFunds, lambda: card.redeem(10_001, origin()))
    assert error.code == ErrorCode.INSUFFICIENT_FUNDS


@pytest.mark.parametrize("amount", [0, -5, AMOUNT_MINOR_MAX + 1])
def test_redeem_of_an_invalid_amount_is_refused(amount: int) -> None:
    card, _ = given_card(10_000)
    error = refused(card, InvalidAmount, lambda: card.redeem(amount, origin()))
    assert error.code == ErrorCode.INVALID_AMOUNT


def test_redeem_captures_the_callers_hold_first_and_releases_the_remainder() -> None:
    card, history = given_card(10_000)
    card.reserve(3000, 600, origin(), "h1")
    history += card.collect_events()
    card.redeem(1000, origin())
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationCaptured", "h1", 1000, None),
        ("ReservationReleased", "h1", 2000, "remainder"),
    ]
    assert (card.balance_minor, card.reserved_minor, card.spent_minor) == (9000, 0, 1000)
    assert card.holds == {}
    assert_replays_to(card, history + events)


def test_redeem_equal_to_the_hold_only_captures_it() -> None:
    card, history = given_card(10_000)
    card.reserve(3000, 600, origin(), "h1")
    history += card.collect_events()
    card.redeem(3000, origin())
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor") == [("ReservationCaptured", "h1", 3000)]
    assert (card.balance_minor, card.holds) == (7000, {})
    assert_replays_to(card, history + events)


def test_redeem_larger_than_the_hold_uses_the_hold_then_the_available_balance() -> None:
    card, history = given_card(10_000)
    card.reserve(3000, 600, origin(), "h1")
    history += card.collect_events()
    card.redeem(5000, origin())
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor") == [
        ("ReservationCaptured", "h1", 3000),
        ("Redeemed", None, 2000),
    ]
    assert (card.balance_minor, card.reserved_minor, card.spent_minor) == (5000, 0, 5000)
    assert_replays_to(card, history + events)


def test_another_client_can_only_redeem_what_is_not_held() -> None:
    card, history = given_card(10_000)
    card.reserve(4000, 600, origin(CLIENT), "h1")
    history += card.collect_events()
    refused(card, InsufficientFunds, lambda: card.redeem(6001, origin(OTHER)))
    card.redeem(6000, origin(OTHER))
    events = card.collect_events()
    assert facts(events, "amount_minor") == [("Redeemed", 6000)]
    assert (card.balance_minor, card.reserved_minor, card.available_minor) == (4000, 4000, 0)
    assert_replays_to(card, history + events)


def test_redeem_beyond_own_hold_plus_available_is_refused() -> None:
    card, _ = given_card(10_000)
    card.reserve(3000, 600, origin(CLIENT), "h1")
    card.reserve(5000, 600, origin(OTHER), "h2")
    card.collect_events()
    refused(card, InsufficientFunds, lambda: card.redeem(5001, origin(CLIENT)))


def test_redeem_on_a_type_without_redemption_is_refused() -> None:
    card, _ = given_card(10_000, redeem_allowed=False)
    error = refused(card, RedeemNotAllowed, lambda: card.redeem(100, origin()))
    assert error.code == ErrorCode.REDEEM_NOT_ALLOWED


def test_redeem_after_the_expiry_date_is_refused() -> None:
    card, _ = given_card(10_000)
    error = refused(card, CardExpired, lambda: card.redeem(100, origin(when=DAY_AFTER_EXPIRY)))
    assert error.code == ErrorCode.CARD_EXPIRED


def test_redeem_on_the_expiry_date_itself_is_allowed() -> None:
    card, history = given_card(10_000)
    card.redeem(100, origin(when=LAST_SECOND_OF_EXPIRY_DAY))
    events = card.collect_events()
    assert facts(events, "amount_minor") == [("Redeemed", 100)]
    assert_replays_to(card, history + events)


def test_redeem_on_a_blocked_card_is_refused() -> None:
    card, _ = given_card(10_000)
    card.block("lost", origin())
    card.collect_events()
    error = refused(card, CardBlocked, lambda: card.redeem(100, origin()))
    assert error.code == ErrorCode.CARD_BLOCKED


@pytest.mark.parametrize("site_id", [None, 8])
def test_redeem_of_a_site_locked_card_elsewhere_is_refused(site_id: int | None) -> None:
    card, _ = given_card(10_000, locked_site_id=7)
    error = refused(card, WrongLocation, lambda: card.redeem(100, origin(site_id=site_id)))
    assert error.code == ErrorCode.WRONG_LOCATION


def test_redeem_of_a_site_locked_card_at_its_site_is_allowed() -> None:
    card, history = given_card(10_000, locked_site_id=7)
    card.redeem(100, origin(site_id=7))
    events = card.collect_events()
    assert facts(events, "amount_minor") == [("Redeemed", 100)]
    assert_replays_to(card, history + events)


# Load.


def test_load_of_a_dynamic_card_raises_the_balance() -> None:
    card, history = given_card(1000)
    card.load(500, origin())
    events = card.collect_events()
    assert facts(events, "amount_minor") == [("Loaded", 500)]
    assert (card.balance_minor, card.spent_minor) == (1500, 0)
    assert_replays_to(card, history + events)


def test_load_of_a_fixed_amount_card_is_refused() -> None:
    card, _ = given_card(1000, fixed_amount=True)
    error = refused(card, LoadNotAllowed, lambda: card.load(500, origin()))
    assert error.code == ErrorCode.LOAD_NOT_ALLOWED


def test_load_up_to_the_balance_limit_is_allowed_and_beyond_it_refused() -> None:
    card, history = given_card(1000)
    error = refused(
        card, BalanceLimitExceeded, lambda: card.load(BALANCE_MINOR_MAX - 999, origin())
    )
    assert error.code == ErrorCode.BALANCE_LIMIT
    card.load(BALANCE_MINOR_MAX - 1000, origin())
    events = card.collect_events()
    assert facts(events, "amount_minor") == [("Loaded", BALANCE_MINOR_MAX - 1000)]
    assert card.balance_minor == BALANCE_MINOR_MAX
    assert_replays_to(card, history + events)


@pytest.mark.parametrize(
    ("blocked", "when", "error"), [(True, T0, CardBlocked), (False, DAY_AFTER_EXPIRY, CardExpired)]
)
def test_load_of_an_unusable_card_is_refused(blocked: bool, when: datetime, error: type) -> None:
    card, _ = given_card(1000)
    if blocked:
        card.block("fraud", origin())
    card.collect_events()
    refused(card, error, lambda: card.load(500, origin(when=when)))


# Refund.


def test_refund_up_to_what_was_spent_gives_it_back() -> None:
    card, history = given_card(10_000)
    card.redeem(3000, origin())
    history += card.collect_events()
    card.refund(3000, origin())
    events = card.collect_events()
    assert facts(events, "amount_minor") == [("Refunded", 3000)]
    assert (card.balance_minor, card.spent_minor) == (10_000, 0)
    assert_replays_to(card, history + events)


def test_refund_of_more_than_was_spent_is_refused() -> None:
    card, _ = given_card(10_000)
    card.redeem(3000, origin())
    card.collect_events()
    error = refused(card, RefundExceedsSpent, lambda: card.refund(3001, origin()))
    assert error.code == ErrorCode.REFUND_EXCEEDS_SPENT


def test_refund_on_a_card_never_spent_is_refused() -> None:
    card, _ = given_card(10_000)
    refused(card, RefundExceedsSpent, lambda: card.refund(1, origin()))


def test_refund_cannot_raise_the_balance_above_the_limit() -> None:
    card, _ = given_card(BALANCE_MINOR_MAX)
    card.redeem(BALANCE_MINOR_MAX, origin())
    card.load(BALANCE_MINOR_MAX, origin())
    card.collect_events()
    refused(card, BalanceLimitExceeded, lambda: card.refund(1, origin()))


# Block and unblock.


def test_block_then_unblock_records_both_and_restores_use() -> None:
    card, history = given_card(10_000)
    card.reserve(1000, 600, origin(), "h1")
    history += card.collect_events()
    card.block("lost", origin())
    blocked = card.collect_events()
    assert facts(blocked, "reason") == [("Blocked", "lost")]
    assert (card.status, card.reserved_minor) == (CardStatus.BLOCKED, 1000)
    card.unblock(origin())
    unblocked = card.collect_events()
    assert names(unblocked) == ["Unblocked"]
    assert card.status == CardStatus.ACTIVE
    assert_replays_to(card, history + blocked + unblocked)


def test_block_of_a_blocked_card_is_refused() -> None:
    card, _ = given_card(10_000)
    card.block("lost", origin())
    card.collect_events()
    refused(card, CardBlocked, lambda: card.block("again", origin()))


def test_unblock_of_an_active_card_is_refused() -> None:
    card, _ = given_card(10_000)
    error = refused(card, CardNotBlocked, lambda: card.unblock(origin()))
    assert error.code == ErrorCode.CARD_NOT_BLOCKED


# Expire.


def test_expire_past_the_expiry_date_releases_holds_then_records_the_breakage() -> None:
    card, history = given_card(10_000)
    card.reserve(1000, 600, origin(CLIENT), "h1")
    card.reserve(2000, 600, origin(OTHER), "h2")
    card.redeem(500, origin("pos-3"))
    history += card.collect_events()
    card.expire(origin(when=DAY_AFTER_EXPIRY))
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationReleased", "h1", 1000, "card_expired"),
        ("ReservationReleased", "h2", 2000, "card_expired"),
        ("Expired", None, 9500, None),
    ]
    assert (card.balance_minor, card.holds, card.status) == (0, {}, CardStatus.EXPIRED)
    assert_replays_to(card, history + events)


@pytest.mark.parametrize("when", [T0, LAST_SECOND_OF_EXPIRY_DAY])
def test_expire_before_the_expiry_date_records_nothing(when: datetime) -> None:
    card, _ = given_card(10_000)
    card.expire(origin(when=when))
    assert names(card.collect_events()) == []
    assert (card.balance_minor, card.status) == (10_000, CardStatus.ACTIVE)


def test_expire_of_a_card_without_expiry_date_records_nothing() -> None:
    card, _ = given_card(10_000, expires_on=None)
    card.expire(origin(when=at(days=3650)))
    assert names(card.collect_events()) == []
    assert card.status == CardStatus.ACTIVE


def test_an_expired_card_expires_once_and_refuses_every_use() -> None:
    card, _ = given_card(10_000)
    card.expire(origin(when=DAY_AFTER_EXPIRY))
    card.collect_events()
    card.expire(origin(when=DAY_AFTER_EXPIRY + timedelta(days=1)))
    assert names(card.collect_events()) == []
    refused(card, CardExpired, lambda: card.block("late", origin(when=DAY_AFTER_EXPIRY)))
    refused(card, CardNotBlocked, lambda: card.unblock(origin(when=DAY_AFTER_EXPIRY)))
    refused(card, CardExpired, lambda: card.refund(1, origin(when=DAY_AFTER_EXPIRY)))


def test_expiry_is_judged_on_the_utc_date_whatever_the_offset() -> None:
    card, _ = given_card(10_000, expires_on=date(2026, 6, 30))
    # 2026-07-01 01:00 at UTC+2 is 2026-06-30 23:00 UTC: still the expiry day.
    card.redeem(100, origin(when=datetime(2026, 7, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))))
    assert facts(card.collect_events(), "amount_minor") == [("Redeemed", 100)]
    # 2026-06-30 23:00 at UTC-2 is 2026-07-01 01:00 UTC: the day after.
    late = origin(when=datetime(2026, 6, 30, 23, 0, tzinfo=timezone(timedelta(hours=-2))))
    refused(card, CardExpired, lambda: card.redeem(100, late))
