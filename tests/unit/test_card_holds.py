"""Given a card's events, hold commands and hold expiry record exactly these events or refuse."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from ledger.card import HOLDS_PER_CARD_MAX, Card, CardStatus, Hold
from ledger.errors import (
    CaptureExceedsHold,
    CardBlocked,
    ErrorCode,
    HoldNotFound,
    InsufficientFunds,
    InvalidAmount,
    ReservationNotSupported,
    TooManyHolds,
)
from tests.unit.support import (
    CLIENT,
    OTHER,
    T0,
    assert_replays_to,
    at,
    facts,
    given_card,
    names,
    origin,
    refused,
)

TTL = 600


def given_held(*holds: tuple[str, str, int], amount_minor: int = 10_000) -> tuple[Card, list[Any]]:
    """A sold card with (client, hold id, amount) holds taken at T0, events collected."""
    card, history = given_card(amount_minor)
    for client, hold_id, amount in holds:
        card.reserve(amount, TTL, origin(client), hold_id)
    return card, history + card.collect_events()


# Reserve.


def test_reserve_without_amount_holds_the_whole_available_balance() -> None:
    card, history = given_held((OTHER, "h0", 4000))
    hold = card.reserve(None, TTL, origin(CLIENT), "h1")
    events = card.collect_events()
    assert facts(events, "hold_id", "client_id", "amount_minor", "expires_at") == [
        ("Reserved", "h1", CLIENT, 6000, T0 + timedelta(seconds=TTL))
    ]
    assert hold == Hold("h1", CLIENT, 6000, T0 + timedelta(seconds=TTL))
    assert (card.balance_minor, card.reserved_minor, card.available_minor) == (10_000, 10_000, 0)
    assert_replays_to(card, history + events)


def test_reserve_of_part_of_the_balance_holds_that_amount() -> None:
    card, history = given_card(10_000)
    card.reserve(2500, TTL, origin(), "h1")
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor") == [("Reserved", "h1", 2500)]
    assert (card.reserved_minor, card.available_minor) == (2500, 7500)
    assert_replays_to(card, history + events)


def test_reserve_of_more_than_available_is_refused() -> None:
    card, _ = given_held((OTHER, "h0", 4000))
    error = refused(card, InsufficientFunds, lambda: card.reserve(6001, TTL, origin(), "h1"))
    assert error.code == ErrorCode.INSUFFICIENT_FUNDS


@pytest.mark.parametrize("amount", [None, 1])
def test_reserve_with_nothing_available_is_refused(amount: int | None) -> None:
    card, _ = given_held((OTHER, "h0", 10_000))
    refused(card, InsufficientFunds, lambda: card.reserve(amount, TTL, origin(), "h1"))


def test_reserve_without_amount_on_an_empty_card_is_refused() -> None:
    card, _ = given_card(0)
    refused(card, InsufficientFunds, lambda: card.reserve(None, TTL, origin(), "h1"))


def test_reserve_of_zero_is_an_invalid_amount() -> None:
    card, _ = given_card(10_000)
    refused(card, InvalidAmount, lambda: card.reserve(0, TTL, origin(), "h1"))


def test_reserve_on_a_type_without_reservations_is_unsupported() -> None:
    card, _ = given_card(10_000, reservations_allowed=False)
    error = refused(card, ReservationNotSupported, lambda: card.reserve(100, TTL, origin(), "h1"))
    assert error.code == ErrorCode.UNSUPPORTED_OPERATION == "unsupported_operation"


def test_reserve_on_a_blocked_card_is_refused() -> None:
    card, _ = given_card(10_000)
    card.block("lost", origin())
    card.collect_events()
    refused(card, CardBlocked, lambda: card.reserve(100, TTL, origin(), "h1"))


def test_second_reserve_by_the_same_client_replaces_its_hold() -> None:
    card, history = given_held((CLIENT, "h1", 3000))
    card.reserve(5000, TTL, origin(CLIENT, at(60)), "h2")
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationReleased", "h1", 3000, "cancelled"),
        ("Reserved", "h2", 5000, None),
    ]
    assert card.holds == {"h2": Hold("h2", CLIENT, 5000, at(60 + TTL))}
    assert_replays_to(card, history + events)


def test_replacing_a_hold_may_reuse_the_funds_it_held() -> None:
    card, history = given_held((CLIENT, "h1", 10_000))
    card.reserve(None, TTL, origin(CLIENT), "h2")
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor") == [
        ("ReservationReleased", "h1", 10_000),
        ("Reserved", "h2", 10_000),
    ]
    assert_replays_to(card, history + events)


def test_a_card_holds_at_most_holds_per_card_max_holds() -> None:
    clients = [(f"client-{i}", f"h{i}", 1) for i in range(HOLDS_PER_CARD_MAX)]
    card, history = given_held(*clients)
    error = refused(card, TooManyHolds, lambda: card.reserve(1, TTL, origin("late"), "hx"))
    assert error.code == ErrorCode.TOO_MANY_HOLDS
    card.reserve(2, TTL, origin("client-0"), "h0b")
    events = card.collect_events()
    assert names(events) == ["ReservationReleased", "Reserved"]
    assert (len(card.holds), card.reserved_minor) == (HOLDS_PER_CARD_MAX, HOLDS_PER_CARD_MAX + 1)
    assert_replays_to(card, history + events)


# Cancel a reservation.


def test_cancel_reservation_releases_only_the_callers_hold() -> None:
    card, history = given_held((CLIENT, "h1", 3000), (OTHER, "h2", 1000))
    card.cancel_reservation(origin(CLIENT))
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationReleased", "h1", 3000, "cancelled")
    ]
    assert (list(card.holds), card.reserved_minor, card.balance_minor) == (["h2"], 1000, 10_000)
    assert_replays_to(card, history + events)


def test_cancel_reservation_without_a_hold_records_nothing() -> None:
    card, history = given_held((OTHER, "h2", 1000))
    card.cancel_reservation(origin(CLIENT))
    assert names(card.collect_events()) == []
    assert card.reserved_minor == 1000
    assert_replays_to(card, history)


def test_cancel_reservation_on_a_type_without_reservations_is_unsupported() -> None:
    card, _ = given_card(10_000, reservations_allowed=False)
    refused(card, ReservationNotSupported, lambda: card.cancel_reservation(origin()))


# Holds expire.


def test_the_next_command_releases_expired_holds_first() -> None:
    card, history = given_held((CLIENT, "h1", 3000), (OTHER, "h2", 1000))
    card.redeem(9000, origin("pos-3", at(TTL)))
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationReleased", "h1", 3000, "expired"),
        ("ReservationReleased", "h2", 1000, "expired"),
        ("Redeemed", None, 9000, None),
    ]
    assert (card.balance_minor, card.holds) == (1000, {})
    assert_replays_to(card, history + events)


def test_a_hold_still_binds_until_its_expiry_instant() -> None:
    card, _ = given_held((CLIENT, "h1", 3000))
    refused(card, InsufficientFunds, lambda: card.redeem(7001, origin(OTHER, at(TTL - 1))))
    card.release_expired_holds(origin(when=at(TTL - 1)))
    assert names(card.collect_events()) == []
    assert card.reserved_minor == 3000


def test_release_expired_holds_releases_them_in_expiry_order_and_keeps_live_ones() -> None:
    card, history = given_card(10_000)
    card.reserve(1000, 300, origin(CLIENT), "late")
    card.reserve(2000, 100, origin(OTHER), "early")
    card.reserve(3000, 900, origin("pos-3"), "live")
    history += card.collect_events()
    card.release_expired_holds(origin(when=at(300)))
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationReleased", "early", 2000, "expired"),
        ("ReservationReleased", "late", 1000, "expired"),
    ]
    assert (list(card.holds), card.reserved_minor) == (["live"], 3000)
    assert_replays_to(card, history + events)


def test_redeem_after_own_hold_expired_spends_from_the_available_balance() -> None:
    card, history = given_held((CLIENT, "h1", 3000))
    card.redeem(500, origin(CLIENT, at(TTL + 1)))
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationReleased", "h1", 3000, "expired"),
        ("Redeemed", None, 500, None),
    ]
    assert_replays_to(card, history + events)


# Capture and void by hold id.


def test_capture_without_amount_spends_the_whole_hold() -> None:
    card, history = given_held((CLIENT, "h1", 3000))
    card.capture("h1", None, origin())
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor") == [("ReservationCaptured", "h1", 3000)]
    assert (card.balance_minor, card.spent_minor, card.holds) == (7000, 3000, {})
    assert_replays_to(card, history + events)


def test_capture_of_part_of_a_hold_releases_the_remainder() -> None:
    card, history = given_held((CLIENT, "h1", 3000))
    card.capture("h1", 1200, origin())
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationCaptured", "h1", 1200, None),
        ("ReservationReleased", "h1", 1800, "remainder"),
    ]
    assert (card.balance_minor, card.reserved_minor, card.spent_minor) == (8800, 0, 1200)
    assert_replays_to(card, history + events)


@pytest.mark.parametrize("hold_id", ["h2", "nope"])
def test_capture_of_a_hold_that_is_not_the_callers_is_refused(hold_id: str) -> None:
    card, _ = given_held((CLIENT, "h1", 3000), (OTHER, "h2", 1000))
    error = refused(card, HoldNotFound, lambda: card.capture(hold_id, None, origin(CLIENT)))
    assert error.code == ErrorCode.HOLD_NOT_FOUND


def test_capture_of_more_than_the_hold_is_refused() -> None:
    card, _ = given_held((CLIENT, "h1", 3000))
    error = refused(card, CaptureExceedsHold, lambda: card.capture("h1", 3001, origin()))
    assert error.code == ErrorCode.CAPTURE_EXCEEDS_HOLD


def test_capture_of_zero_is_an_invalid_amount() -> None:
    card, _ = given_held((CLIENT, "h1", 3000))
    refused(card, InvalidAmount, lambda: card.capture("h1", 0, origin()))


def test_capture_on_a_blocked_card_is_refused() -> None:
    card, _ = given_held((CLIENT, "h1", 3000))
    card.block("lost", origin())
    card.collect_events()
    refused(card, CardBlocked, lambda: card.capture("h1", None, origin()))


def test_void_releases_the_callers_hold_even_on_a_blocked_card() -> None:
    card, history = given_held((CLIENT, "h1", 3000))
    card.block("lost", origin())
    history += card.collect_events()
    card.void("h1", origin())
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationReleased", "h1", 3000, "cancelled")
    ]
    assert (card.holds, card.balance_minor, card.status) == ({}, 10_000, CardStatus.BLOCKED)
    assert_replays_to(card, history + events)


def test_void_of_another_clients_hold_is_refused() -> None:
    card, _ = given_held((OTHER, "h2", 1000))
    refused(card, HoldNotFound, lambda: card.void("h2", origin(CLIENT)))


@pytest.mark.parametrize("command", ["capture", "void"])
def test_capture_and_void_on_a_type_without_reservations_are_unsupported(command: str) -> None:
    card, _ = given_card(10_000, reservations_allowed=False)
    args = ("h1", None, origin()) if command == "capture" else ("h1", origin())
    refused(card, ReservationNotSupported, lambda: getattr(card, command)(*args))


def test_capture_of_an_expired_hold_is_refused_and_records_nothing() -> None:
    card, _ = given_held((CLIENT, "h1", 3000))
    refused(card, HoldNotFound, lambda: card.capture("h1", None, origin(when=at(TTL))))


def test_redeem_refused_on_a_blocked_card_records_nothing_even_after_holds_expired() -> None:
    card, _ = given_held((CLIENT, "h1", 3000))
    card.block("lost", origin())
    card.collect_events()
    refused(card, CardBlocked, lambda: card.redeem(100, origin(OTHER, at(TTL))))


def test_void_of_an_expired_hold_is_refused_and_records_nothing() -> None:
    card, _ = given_held((CLIENT, "h1", 3000))
    refused(card, HoldNotFound, lambda: card.void("h1", origin(when=at(TTL))))


def test_an_expired_hold_binds_nothing_even_before_its_release_is_recorded() -> None:
    card, history = given_held((CLIENT, "h1", 3000))
    card.reserve(None, TTL, origin(OTHER, at(TTL)), "h2")
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationReleased", "h1", 3000, "expired"),
        ("Reserved", "h2", 10_000, None),
    ]
    assert_replays_to(card, history + events)


def test_cancel_after_the_hold_expired_records_only_the_expiry() -> None:
    card, history = given_held((CLIENT, "h1", 3000))
    card.cancel_reservation(origin(CLIENT, at(TTL)))
    events = card.collect_events()
    assert facts(events, "hold_id", "amount_minor", "reason") == [
        ("ReservationReleased", "h1", 3000, "expired")
    ]
    assert_replays_to(card, history + events)


def test_expired_holds_do_not_count_towards_holds_per_card_max() -> None:
    clients = [(f"client-{i}", f"h{i}", 1) for i in range(HOLDS_PER_CARD_MAX)]
    card, history = given_held(*clients)
    card.reserve(5, TTL, origin("late", at(TTL)), "hx")
    events = card.collect_events()
    assert names(events) == ["ReservationReleased"] * HOLDS_PER_CARD_MAX + ["Reserved"]
    assert {e.reason for e in events[:-1]} == {"expired"}
    assert (list(card.holds), card.reserved_minor) == (["hx"], 5)
    assert_replays_to(card, history + events)
