"""A plain model of one gift card for the stateful test: what it should hold, raise and record."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from ledger.card import HOLDS_PER_CARD_MAX, CardTerms
from ledger.errors import (
    BalanceLimitExceeded,
    CaptureExceedsHold,
    CardBlocked,
    CardExpired,
    CardNotBlocked,
    HoldNotFound,
    InsufficientFunds,
    InvalidAmount,
    LoadNotAllowed,
    RedeemNotAllowed,
    RefundExceedsSpent,
    ReservationNotSupported,
    TooManyHolds,
    WrongLocation,
)
from ledger.money import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX

# (event type, hold id, amount, reason): what one recorded event should say.
Fact = tuple[str, str | None, int | None, str | None]


def valid(amount: int) -> None:
    if not 1 <= amount <= AMOUNT_MINOR_MAX:
        raise InvalidAmount("model")


@dataclass
class Model:
    """Plain numbers and a hold table. A method raises what the card should raise; otherwise it
    updates the numbers and appends to `log` the facts of the events the card should record."""

    terms: CardTerms
    balance: int
    spent: int = 0
    status: str = "active"
    holds: dict[str, tuple[str, int, datetime]] = field(default_factory=dict)
    log: list[Fact] = field(default_factory=list)

    def copy(self) -> Model:
        return replace(self, holds=dict(self.holds), log=[])

    # Reading.

    def available(self) -> int:
        return self.balance - sum(amount for _, amount, _ in self.holds.values())

    def own(self, client: str) -> str | None:
        return next((k for k, (c, _, _) in self.holds.items() if c == client), None)

    # Guards.

    def usable(self, now: datetime, site: int | None) -> None:
        expires_on = self.terms.expires_on
        if self.status == "expired" or (expires_on and now.astimezone(UTC).date() > expires_on):
            raise CardExpired("model")
        if self.status == "blocked":
            raise CardBlocked("model")
        if self.terms.locked_site_id not in (None, site):
            raise WrongLocation("model")

    def reservations(self) -> None:
        if not self.terms.reservations_allowed:
            raise ReservationNotSupported("model")

    def own_hold(self, client: str, hold_id: str) -> int:
        if hold_id not in self.holds or self.holds[hold_id][0] != client:
            raise HoldNotFound("model")
        return self.holds[hold_id][1]

    # Changes, each with the fact it records.

    def release(self, hold_id: str, reason: str) -> None:
        self.log.append(("ReservationReleased", hold_id, self.holds.pop(hold_id)[1], reason))

    def release_expired(self, now: datetime) -> None:
        for hold_id, _ in sorted(self.holds.items(), key=lambda item: item[1][2]):
            if self.holds[hold_id][2] <= now:
                self.release(hold_id, "expired")

    def settle(self, hold_id: str, captured: int) -> None:
        held = self.holds.pop(hold_id)[1]
        self.log.append(("ReservationCaptured", hold_id, captured, None))
        if held > captured:
            self.log.append(("ReservationReleased", hold_id, held - captured, "remainder"))
        self.balance -= captured
        self.spent += captured

    # Commands.

    def redeem(self, client: str, amount: int, now: datetime, site: int | None) -> None:
        valid(amount)
        self.release_expired(now)
        self.usable(now, site)
        if not self.terms.redeem_allowed:
            raise RedeemNotAllowed("model")
        hold_id = self.own(client)
        held = self.holds[hold_id][1] if hold_id else 0
        if amount > held + self.available():
            raise InsufficientFunds("model")
        if hold_id:
            self.settle(hold_id, min(amount, held))
        if amount > held:
            self.log.append(("Redeemed", None, amount - held, None))
            self.balance -= amount - held
            self.spent += amount - held

    def reserve(
        self, client: str, amount: int | None, ttl: int, now: datetime, site: int | None, hold: str
    ) -> None:
        self.release_expired(now)
        self.reservations()
        self.usable(now, site)
        if amount is not None:
            valid(amount)
        previous = self.own(client)
        spendable = self.available() + (self.holds[previous][1] if previous else 0)
        wanted = spendable if amount is None else amount
        if wanted == 0 or wanted > spendable:
            raise InsufficientFunds("model")
        if previous is None and len(self.holds) >= HOLDS_PER_CARD_MAX:
            raise TooManyHolds("model")
        if previous:
            self.release(previous, "cancelled")
        self.holds[hold] = (client, wanted, now + timedelta(seconds=ttl))
        self.log.append(("Reserved", hold, wanted, None))

    def cancel(self, client: str, now: datetime) -> None:
        self.reservations()
        self.release_expired(now)
        if hold_id := self.own(client):
            self.release(hold_id, "cancelled")

    def capture(
        self, client: str, hold_id: str, amount: int | None, now: datetime, site: int | None
    ) -> None:
        self.reservations()
        self.release_expired(now)
        held = self.own_hold(client, hold_id)
        self.usable(now, site)
        captured = held if amount is None else amount
        valid(captured)
        if captured > held:
            raise CaptureExceedsHold("model")
        self.settle(hold_id, captured)

    def void(self, client: str, hold_id: str, now: datetime) -> None:
        self.reservations()
        self.release_expired(now)
        self.own_hold(client, hold_id)
        self.release(hold_id, "cancelled")

    def load(self, amount: int, now: datetime, site: int | None) -> None:
        valid(amount)
        self.usable(now, site)
        if self.terms.fixed_amount:
            raise LoadNotAllowed("model")
        if self.balance + amount > BALANCE_MINOR_MAX:
            raise BalanceLimitExceeded("model")
        self.release_expired(now)
        self.balance += amount
        self.log.append(("Loaded", None, amount, None))

    def refund(self, amount: int, now: datetime, site: int | None) -> None:
        valid(amount)
        self.usable(now, site)
        if amount > self.spent:
            raise RefundExceedsSpent("model")
        if self.balance + amount > BALANCE_MINOR_MAX:
            raise BalanceLimitExceeded("model")
        self.release_expired(now)
        self.balance += amount
        self.spent -= amount
        self.log.append(("Refunded", None, amount, None))

    def block(self, reason: str, now: datetime) -> None:
        if self.status != "active":
            raise CardExpired("model") if self.status == "expired" else CardBlocked("model")
        self.release_expired(now)
        self.status = "blocked"
        self.log.append(("Blocked", None, None, reason))

    def unblock(self, now: datetime) -> None:
        if self.status != "blocked":
            raise CardNotBlocked("model")
        self.release_expired(now)
        self.status = "active"
        self.log.append(("Unblocked", None, None, None))

    def expire(self, now: datetime) -> None:
        expires_on = self.terms.expires_on
        if self.status == "expired" or not expires_on or now.astimezone(UTC).date() <= expires_on:
            return
        for hold_id in list(self.holds):
            self.release(hold_id, "card_expired")
        self.log.append(("Expired", None, self.balance, None))
        self.balance = 0
        self.status = "expired"
