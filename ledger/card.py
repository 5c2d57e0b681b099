"""The Card aggregate: every change to a gift card is one of its events."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from eventsourcing.domain import Aggregate, event

from ledger.errors import (
    BalanceLimitExceeded,
    CaptureExceedsHold,
    CardBlocked,
    CardExpired,
    CardNotBlocked,
    HoldNotFound,
    InsufficientFunds,
    InvalidAmount,
    InvalidCardNumber,
    LoadNotAllowed,
    RedeemNotAllowed,
    RefundExceedsSpent,
    ReservationNotSupported,
    TooManyHolds,
    WrongLocation,
)
from ledger.money import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX

# Card numbers are identifiers chosen by issuers; 256 characters is GiftStream's documented maximum.
CARD_NUMBER_LENGTH_MAX = 256
# A card number is a bearer secret: logs and errors show its last 4 characters, like receipts,
# and only when at least 8 characters stay hidden.
CARD_NUMBER_SHOWN_CHARS = 4
CARD_NUMBER_MASKED_LENGTH_MIN = 12
# Concurrent holds on one card, one per client at most; a bound keeps a card's state small.
HOLDS_PER_CARD_MAX = 32
# Card ids are derived from card numbers, so the number alone finds the aggregate.
CARD_ID_NAMESPACE = uuid.UUID("6f1d3a52-31a4-4c2e-9a2f-5d8e0c7a9b11")
# Card ids remembered per process (about 200 bytes each).
CARD_IDS_CACHED_MAX = 65_536


class CardStatus(StrEnum):
    """Compared with ==, never `is`: a snapshot restores the status as its plain string."""

    ACTIVE = "active"
    BLOCKED = "blocked"
    EXPIRED = "expired"


class ReleaseReason(StrEnum):
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REMAINDER = "remainder"
    CARD_EXPIRED = "card_expired"


@dataclass(frozen=True)
class Origin:
    """Who acts, where and when. Time comes in from outside so that replay is deterministic."""

    occurred_at: datetime
    actor: str
    location_code: str | None = None
    site_id: int | None = None

    def __post_init__(self) -> None:
        assert self.occurred_at.tzinfo is not None, "occurred_at must be timezone-aware"


@dataclass(frozen=True)
class CardTerms:
    """What a card type promised when the card was sold; recorded on the card, never looked up."""

    card_type: str
    currency: str
    fixed_amount: bool
    redeem_allowed: bool
    reservations_allowed: bool
    expires_on: date | None
    locked_site_id: int | None = None
    presentation: int | None = None


@dataclass
class Hold:
    hold_id: str
    client_id: str
    amount_minor: int
    expires_at: datetime


@functools.lru_cache(maxsize=CARD_IDS_CACHED_MAX)
def card_id_for(number: str) -> uuid.UUID:
    """The card's aggregate id: a uuid5 of its number, remembered for the busiest numbers, as
    the SHA-1 behind it was a twentieth of a payment's event-loop time."""
    return uuid.uuid5(CARD_ID_NAMESPACE, number)


def check_card_number(number: str) -> None:
    """Card numbers travel in URL paths, so they hold no white space and no slash."""
    if (
        not 1 <= len(number) <= CARD_NUMBER_LENGTH_MAX
        or not number.isprintable()
        or any(ch.isspace() or ch == "/" for ch in number)
    ):
        raise InvalidCardNumber(
            f"card number must be 1 to {CARD_NUMBER_LENGTH_MAX} printable characters,"
            " without spaces or slashes"
        )


def mask_card_number(number: str) -> str:
    """The number as logs and error messages may show it: only its last 4 characters.

    A number too short to hide all but 4 characters is hidden whole.
    """
    shown = CARD_NUMBER_SHOWN_CHARS if len(number) >= CARD_NUMBER_MASKED_LENGTH_MIN else 0
    return "*" * (len(number) - shown) + number[len(number) - shown :]


def check_amount(amount_minor: int, *, allow_zero: bool = False) -> None:
    lowest = 0 if allow_zero else 1
    if not lowest <= amount_minor <= AMOUNT_MINOR_MAX:
        raise InvalidAmount(f"amount must be between {lowest} and {AMOUNT_MINOR_MAX} minor units")


class Card(Aggregate):
    """A gift card. Commands check first, then record an event; event bodies only change state."""

    @staticmethod
    def create_id(number: str, **_: Any) -> uuid.UUID:
        return card_id_for(number)

    @classmethod
    def sell(
        cls, number: str, ref: int, terms: CardTerms, amount_minor: int, origin: Origin
    ) -> Card:
        check_card_number(number)
        check_amount(amount_minor, allow_zero=True)
        if amount_minor > BALANCE_MINOR_MAX:
            raise BalanceLimitExceeded("initial balance is above the card limit")
        return cls(
            number=number,
            ref=ref,
            card_type=terms.card_type,
            currency=terms.currency,
            amount_minor=amount_minor,
            fixed_amount=terms.fixed_amount,
            redeem_allowed=terms.redeem_allowed,
            reservations_allowed=terms.reservations_allowed,
            expires_on=terms.expires_on,
            locked_site_id=terms.locked_site_id,
            presentation=terms.presentation,
            occurred_at=origin.occurred_at,
            actor=origin.actor,
            location_code=origin.location_code,
        )

    @event("Sold")
    def __init__(
        self,
        number: str,
        ref: int,
        card_type: str,
        currency: str,
        amount_minor: int,
        fixed_amount: bool,
        redeem_allowed: bool,
        reservations_allowed: bool,
        expires_on: date | None,
        locked_site_id: int | None,
        presentation: int | None,
        occurred_at: datetime,
        actor: str,
        location_code: str | None,
    ) -> None:
        self.number = number
        self.ref = ref
        self.terms = CardTerms(
            card_type=card_type,
            currency=currency,
            fixed_amount=fixed_amount,
            redeem_allowed=redeem_allowed,
            reservations_allowed=reservations_allowed,
            expires_on=expires_on,
            locked_site_id=locked_site_id,
            presentation=presentation,
        )
        self.original_minor = amount_minor
        self.balance_minor = amount_minor
        self.spent_minor = 0
        self.status = CardStatus.ACTIVE
        self.sold_at = occurred_at
        self.sold_location_code = location_code
        self.holds: dict[str, Hold] = {}

    # Derived state.

    @property
    def reserved_minor(self) -> int:
        return sum(h.amount_minor for h in self.holds.values())

    @property
    def available_minor(self) -> int:
        return self.balance_minor - self.reserved_minor

    def live_holds(self, now: datetime) -> list[Hold]:
        """Holds still in force at `now`; an expired hold binds nothing, even before its release."""
        return [h for h in self.holds.values() if h.expires_at > now]

    def available_at(self, now: datetime) -> int:
        return self.balance_minor - sum(h.amount_minor for h in self.live_holds(now))

    def hold_of(self, client_id: str, now: datetime) -> Hold | None:
        return next((h for h in self.live_holds(now) if h.client_id == client_id), None)

    def is_past_expiry(self, now: datetime) -> bool:
        """A card can be used through its expiry date, in UTC, and not after it."""
        expires_on = self.terms.expires_on
        return expires_on is not None and now.astimezone(UTC).date() > expires_on

    # Guards. Every command checks all of them before it records its first event, expired-hold
    # releases included, so a refused command records nothing.

    def check_usable(self, origin: Origin) -> None:
        if self.status == CardStatus.EXPIRED or self.is_past_expiry(origin.occurred_at):
            raise CardExpired(f"card expired on {self.terms.expires_on}")
        if self.status == CardStatus.BLOCKED:
            raise CardBlocked("card is blocked")
        locked = self.terms.locked_site_id
        if locked is not None and origin.site_id != locked:
            raise WrongLocation(f"card can only be used at site {locked}")

    def check_reservations_allowed(self) -> None:
        if not self.terms.reservations_allowed:
            raise ReservationNotSupported(f"card type {self.terms.card_type} has no reservations")

    def check_funds(self, amount_minor: int, spendable_minor: int) -> None:
        if amount_minor > spendable_minor:
            raise InsufficientFunds(
                f"amount {amount_minor} exceeds the spendable {spendable_minor} minor units"
            )

    # Commands.

    def redeem(self, amount_minor: int, origin: Origin) -> None:
        """Pay with the card. The caller's own hold is captured first; its rest is released."""
        now = origin.occurred_at
        check_amount(amount_minor)
        self.check_usable(origin)
        if not self.terms.redeem_allowed:
            raise RedeemNotAllowed(f"card type {self.terms.card_type} cannot be redeemed")
        hold = self.hold_of(origin.actor, now)
        held_minor = hold.amount_minor if hold else 0
        self.check_funds(amount_minor, held_minor + self.available_at(now))
        self.release_expired_holds(origin)
        rest_minor = amount_minor
        if hold is not None:
            captured_minor = min(amount_minor, held_minor)
            self._settle_hold(hold, captured_minor, origin)
            rest_minor -= captured_minor
        if rest_minor:
            self._redeemed(rest_minor, *_where(origin))

    def reserve(
        self, amount_minor: int | None, ttl_seconds: int, origin: Origin, hold_id: str
    ) -> Hold:
        """Hold funds for the caller; no amount holds the whole available balance.

        A client has one hold per card at most: a new reservation replaces its previous hold.
        """
        assert ttl_seconds > 0
        now = origin.occurred_at
        self.check_reservations_allowed()
        self.check_usable(origin)
        if amount_minor is not None:
            check_amount(amount_minor)
        previous = self.hold_of(origin.actor, now)
        spendable_minor = self.available_at(now) + (previous.amount_minor if previous else 0)
        wanted_minor = spendable_minor if amount_minor is None else amount_minor
        if wanted_minor == 0:
            raise InsufficientFunds("nothing available to reserve")
        self.check_funds(wanted_minor, spendable_minor)
        if previous is None and len(self.live_holds(now)) >= HOLDS_PER_CARD_MAX:
            raise TooManyHolds(f"a card can have at most {HOLDS_PER_CARD_MAX} holds")
        self.release_expired_holds(origin)
        if previous is not None:
            self._reservation_released(
                previous.hold_id, previous.amount_minor, ReleaseReason.CANCELLED, *_where(origin)
            )
        assert hold_id not in self.holds, "hold ids are unique per card"
        expires_at = now + timedelta(seconds=ttl_seconds)
        self._reserved(hold_id, origin.actor, wanted_minor, expires_at, *_where(origin))
        return self.holds[hold_id]

    def cancel_reservation(self, origin: Origin) -> None:
        """Release the caller's hold, if it has one; cancelling twice changes nothing."""
        self.check_reservations_allowed()
        hold = self.hold_of(origin.actor, origin.occurred_at)
        self.release_expired_holds(origin)
        if hold is not None:
            self._reservation_released(
                hold.hold_id, hold.amount_minor, ReleaseReason.CANCELLED, *_where(origin)
            )

    def capture(self, hold_id: str, amount_minor: int | None, origin: Origin) -> None:
        """Spend from a named hold of the caller's; what is left of the hold is released."""
        self.check_reservations_allowed()
        hold = self._own_hold(hold_id, origin)
        self.check_usable(origin)
        captured_minor = hold.amount_minor if amount_minor is None else amount_minor
        check_amount(captured_minor)
        if captured_minor > hold.amount_minor:
            raise CaptureExceedsHold(f"hold {hold_id} holds only {hold.amount_minor}")
        self.release_expired_holds(origin)
        self._settle_hold(hold, captured_minor, origin)

    def void(self, hold_id: str, origin: Origin) -> None:
        self.check_reservations_allowed()
        hold = self._own_hold(hold_id, origin)
        self.release_expired_holds(origin)
        self._reservation_released(
            hold.hold_id, hold.amount_minor, ReleaseReason.CANCELLED, *_where(origin)
        )

    def load(self, amount_minor: int, origin: Origin) -> None:
        check_amount(amount_minor)
        self.check_usable(origin)
        if self.terms.fixed_amount:
            raise LoadNotAllowed("fixed-amount cards cannot be loaded")
        if self.balance_minor + amount_minor > BALANCE_MINOR_MAX:
            raise BalanceLimitExceeded(f"a card holds at most {BALANCE_MINOR_MAX} minor units")
        self.release_expired_holds(origin)
        self._loaded(amount_minor, *_where(origin))

    def refund(self, amount_minor: int, origin: Origin) -> None:
        """Give back value that was spent with this card; never more than was spent."""
        check_amount(amount_minor)
        self.check_usable(origin)
        if amount_minor > self.spent_minor:
            raise RefundExceedsSpent(f"only {self.spent_minor} minor units were spent")
        if self.balance_minor + amount_minor > BALANCE_MINOR_MAX:
            raise BalanceLimitExceeded(f"a card holds at most {BALANCE_MINOR_MAX} minor units")
        self.release_expired_holds(origin)
        self._refunded(amount_minor, *_where(origin))

    def block(self, reason: str, origin: Origin) -> None:
        if self.status == CardStatus.EXPIRED:
            raise CardExpired("an expired card cannot be blocked")
        if self.status == CardStatus.BLOCKED:
            raise CardBlocked("card is already blocked")
        self.release_expired_holds(origin)
        self._blocked(reason, *_where(origin))

    def unblock(self, origin: Origin) -> None:
        if self.status != CardStatus.BLOCKED:
            raise CardNotBlocked("card is not blocked")
        self.release_expired_holds(origin)
        self._unblocked(*_where(origin))

    def release_expired_holds(self, origin: Origin) -> None:
        """Record the release of every hold whose time is up. Safe to call at any moment."""
        for hold in sorted(self.holds.values(), key=lambda h: h.expires_at):
            if hold.expires_at <= origin.occurred_at:
                self._reservation_released(
                    hold.hold_id, hold.amount_minor, ReleaseReason.EXPIRED, *_where(origin)
                )

    def expire(self, origin: Origin) -> None:
        """Close a card past its expiry date: holds are released and the rest becomes breakage."""
        if self.status == CardStatus.EXPIRED or not self.is_past_expiry(origin.occurred_at):
            return
        for hold in list(self.holds.values()):
            self._reservation_released(
                hold.hold_id, hold.amount_minor, ReleaseReason.CARD_EXPIRED, *_where(origin)
            )
        self._expired(self.balance_minor, *_where(origin))

    # Helpers for commands.

    def _own_hold(self, hold_id: str, origin: Origin) -> Hold:
        hold = self.holds.get(hold_id)
        if hold is None or hold.client_id != origin.actor or hold.expires_at <= origin.occurred_at:
            raise HoldNotFound(f"no hold {hold_id} of yours on this card")
        return hold

    def _settle_hold(self, hold: Hold, captured_minor: int, origin: Origin) -> None:
        remainder_minor = hold.amount_minor - captured_minor
        self._reservation_captured(hold.hold_id, captured_minor, *_where(origin))
        if remainder_minor:
            self._reservation_released(
                hold.hold_id, remainder_minor, ReleaseReason.REMAINDER, *_where(origin)
            )

    # Events. Their bodies only change state: they run again on every replay.

    @event("Redeemed")
    def _redeemed(
        self, amount_minor: int, occurred_at: datetime, actor: str, location_code: str | None
    ) -> None:
        self.balance_minor -= amount_minor
        self.spent_minor += amount_minor

    @event("Reserved")
    def _reserved(
        self,
        hold_id: str,
        client_id: str,
        amount_minor: int,
        expires_at: datetime,
        occurred_at: datetime,
        actor: str,
        location_code: str | None,
    ) -> None:
        self.holds[hold_id] = Hold(hold_id, client_id, amount_minor, expires_at)

    @event("ReservationCaptured")
    def _reservation_captured(
        self,
        hold_id: str,
        amount_minor: int,
        occurred_at: datetime,
        actor: str,
        location_code: str | None,
    ) -> None:
        self._shrink_hold(hold_id, amount_minor)
        self.balance_minor -= amount_minor
        self.spent_minor += amount_minor

    @event("ReservationReleased")
    def _reservation_released(
        self,
        hold_id: str,
        amount_minor: int,
        reason: str,
        occurred_at: datetime,
        actor: str,
        location_code: str | None,
    ) -> None:
        self._shrink_hold(hold_id, amount_minor)

    @event("Loaded")
    def _loaded(
        self, amount_minor: int, occurred_at: datetime, actor: str, location_code: str | None
    ) -> None:
        self.balance_minor += amount_minor

    @event("Refunded")
    def _refunded(
        self, amount_minor: int, occurred_at: datetime, actor: str, location_code: str | None
    ) -> None:
        self.balance_minor += amount_minor
        self.spent_minor -= amount_minor

    @event("Blocked")
    def _blocked(
        self, reason: str, occurred_at: datetime, actor: str, location_code: str | None
    ) -> None:
        self.status = CardStatus.BLOCKED

    @event("Unblocked")
    def _unblocked(self, occurred_at: datetime, actor: str, location_code: str | None) -> None:
        self.status = CardStatus.ACTIVE

    @event("Expired")
    def _expired(
        self, amount_minor: int, occurred_at: datetime, actor: str, location_code: str | None
    ) -> None:
        self.balance_minor -= amount_minor
        self.status = CardStatus.EXPIRED

    def _shrink_hold(self, hold_id: str, amount_minor: int) -> None:
        hold = self.holds[hold_id]
        hold.amount_minor -= amount_minor
        assert hold.amount_minor >= 0
        if hold.amount_minor == 0:
            del self.holds[hold_id]


def _where(origin: Origin) -> tuple[datetime, str, str | None]:
    return origin.occurred_at, origin.actor, origin.location_code


def add_months(day: date, months: int) -> date:
    """The same day `months` later, clamped to the month's end (31 Jan + 1 month = 28/29 Feb)."""
    assert months >= 0
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    for candidate_day in (day.day, 30, 29, 28):
        try:
            return date(year, month, candidate_day)
        except ValueError:
            continue
    raise AssertionError("unreachable: every month has a 28th")
