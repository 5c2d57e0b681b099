"""Shared givens for unit tests: fixed time, card terms, origins, event names and replay."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from ledger.card import Card, CardTerms, Hold, Origin
from ledger.errors import LedgerError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EXPIRES_ON = date(2026, 6, 30)
CLIENT = "pos-1"
OTHER = "pos-2"
NUMBER = "6034-0001"


def at(seconds: int = 0, *, days: int = 0) -> datetime:
    return T0 + timedelta(days=days, seconds=seconds)


def origin(actor: str = CLIENT, when: datetime = T0, site_id: int | None = None) -> Origin:
    return Origin(occurred_at=when, actor=actor, location_code="LOC-1", site_id=site_id)


def terms(**overrides: Any) -> CardTerms:
    """A dynamic card type that can be redeemed and reserved, expiring on EXPIRES_ON."""
    values: dict[str, Any] = {
        "card_type": "dynamic",
        "currency": "EUR",
        "fixed_amount": False,
        "redeem_allowed": True,
        "reservations_allowed": True,
        "expires_on": EXPIRES_ON,
    }
    values.update(overrides)
    return CardTerms(**values)


def given_card(amount_minor: int = 10_000, **term_overrides: Any) -> tuple[Card, list[Any]]:
    """A sold card with its events already collected: the history the next command builds on."""
    card = Card.sell(NUMBER, 1, terms(**term_overrides), amount_minor, origin())
    return card, card.collect_events()


def names(events: Sequence[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def facts(events: Sequence[Any], *fields: str) -> list[tuple[Any, ...]]:
    """Each event as (type name, *fields); a field the event lacks reads as None."""
    return [(type(e).__name__, *(getattr(e, f, None) for f in fields)) for e in events]


def replay(events: Sequence[Any]) -> Card:
    card = None
    for event in events:
        card = event.mutate(card)
    assert isinstance(card, Card)
    return card


def snapshot(card: Card) -> tuple[int, int, dict[str, Hold], str, int]:
    holds = {
        k: Hold(h.hold_id, h.client_id, h.amount_minor, h.expires_at) for k, h in card.holds.items()
    }
    return card.balance_minor, card.reserved_minor, holds, card.status, card.spent_minor


def assert_replays_to(card: Card, events: Sequence[Any]) -> None:
    """Rebuilding the card from all its events gives exactly the live card's state."""
    assert snapshot(replay(events)) == snapshot(card)
    assert card.version == len(events)


def refused(card: Card, error: type[LedgerError], command: Callable[[], object]) -> LedgerError:
    """The command raises `error`, records no event and leaves the card's state as it was."""
    before = snapshot(card)
    with pytest.raises(error) as info:
        command()
    assert names(card.collect_events()) == []
    assert snapshot(card) == before
    return info.value
