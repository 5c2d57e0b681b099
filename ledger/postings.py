"""Double entry: every card event maps to postings on named accounts that balance.

The books finance keeps see a gift card as a liability: money taken for it is owed back in goods
until it is spent, refunded into it, or it expires. So:

- a sale or a load debits the selling location's cash clearing and credits card liability;
- a redemption (or a captured hold) debits card liability and credits the location's revenue;
- a refund goes the other way: it debits location revenue and credits card liability;
- an expiry debits card liability and credits breakage income.

A hold moves no money. It is a memo entry, on the memo accounts `holds` and `holds_available`,
which balance among themselves and which the trial balance keeps apart from the real accounts.
Blocking and unblocking post nothing.

Amounts are integer minor units of the card's currency; a debit is positive and a credit
negative, so the postings of one event, and of any set of events, sum to zero per currency.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

CARD_LIABILITY = "card_liability"
BREAKAGE_INCOME = "breakage_income"
HOLDS_MEMO = "holds"
HOLDS_AVAILABLE_MEMO = "holds_available"
# Where money moved at no named location (e.g. the service's own expiry run).
NO_LOCATION = "none"


def clearing(location_code: str | None) -> str:
    return f"location_clearing:{location_code or NO_LOCATION}"


def revenue(location_code: str | None) -> str:
    return f"location_revenue:{location_code or NO_LOCATION}"


@dataclass(frozen=True)
class Posting:
    account: str
    amount_minor: int  # Debit positive, credit negative.
    currency: str
    memo: bool = False


def _fixed(account: str) -> Callable[[str | None], str]:
    return lambda _location: account


# Per event type: the (debit, credit, memo) legs it posts, each leg naming its accounts from the
# event's location. Every leg posts the event's amount_minor.
_Leg = tuple[Callable[[str | None], str], Callable[[str | None], str], bool]
_RULES: dict[str, tuple[_Leg, ...]] = {
    "Sold": ((clearing, _fixed(CARD_LIABILITY), False),),
    "Loaded": ((clearing, _fixed(CARD_LIABILITY), False),),
    "Redeemed": ((_fixed(CARD_LIABILITY), revenue, False),),
    # The captured part of a hold is spent, and the memo hold shrinks by as much.
    "ReservationCaptured": (
        (_fixed(CARD_LIABILITY), revenue, False),
        (_fixed(HOLDS_AVAILABLE_MEMO), _fixed(HOLDS_MEMO), True),
    ),
    "Refunded": ((revenue, _fixed(CARD_LIABILITY), False),),
    "Expired": ((_fixed(CARD_LIABILITY), _fixed(BREAKAGE_INCOME), False),),
    "Reserved": ((_fixed(HOLDS_MEMO), _fixed(HOLDS_AVAILABLE_MEMO), True),),
    "ReservationReleased": ((_fixed(HOLDS_AVAILABLE_MEMO), _fixed(HOLDS_MEMO), True),),
    "Blocked": (),
    "Unblocked": (),
}
EVENT_TYPES = tuple(_RULES)


def postings_for(event_type: str, event: Any, currency: str) -> list[Posting]:
    """The postings of one card event; `event` carries amount_minor and location_code."""
    assert event_type in _RULES, f"no postings rule for {event_type}"
    amount: int = getattr(event, "amount_minor", 0) or 0
    if amount == 0:
        return []
    location = getattr(event, "location_code", None)
    postings = []
    for debit, credit, memo in _RULES[event_type]:
        postings.append(Posting(debit(location), amount, currency, memo))
        postings.append(Posting(credit(location), -amount, currency, memo))
    return postings


def trial_balance(postings: Iterable[Posting]) -> dict[tuple[str, bool], int]:
    """The sum of postings per (currency, memo); every value is zero when the books balance."""
    sums: dict[tuple[str, bool], int] = {}
    for posting in postings:
        key = (posting.currency, posting.memo)
        sums[key] = sums.get(key, 0) + posting.amount_minor
    return sums


def account_balances(postings: Iterable[Posting]) -> dict[tuple[str, str], int]:
    """Balance per (account, currency): card liability is minus what the cards hold."""
    sums: dict[tuple[str, str], int] = {}
    for posting in postings:
        key = (posting.account, posting.currency)
        sums[key] = sums.get(key, 0) + posting.amount_minor
    return sums
