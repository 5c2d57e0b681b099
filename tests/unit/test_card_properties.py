"""Random command sequences, valid or not, keep a card consistent with a simple model and events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ledger.card import Card, CardTerms, Origin
from ledger.errors import LedgerError
from ledger.money import AMOUNT_MINOR_MAX, BALANCE_MINOR_MAX
from ledger.postings import (
    CARD_LIABILITY,
    HOLDS_MEMO,
    account_balances,
    postings_for,
    trial_balance,
)
from tests.unit.card_model import Model
from tests.unit.support import NUMBER, T0, facts, names, replay, snapshot, terms

CLIENTS = ("pos-1", "pos-2", "pos-3")
SITE = 7
DYNAMIC = terms()
PROFILES = (
    *[DYNAMIC] * 6,
    terms(fixed_amount=True),
    terms(reservations_allowed=False),
    terms(redeem_allowed=False),
    terms(locked_site_id=SITE),
)
SIGN = {
    "Sold": 1,
    "Loaded": 1,
    "Refunded": 1,
    "Redeemed": -1,
    "ReservationCaptured": -1,
    "Expired": -1,
}

clients = st.sampled_from(CLIENTS)
sites = st.sampled_from([SITE, SITE, None, 8])


class CardMachine(RuleBasedStateMachine):
    """Drives one card with random commands; the model moves only when the card accepted one."""

    @initialize(
        profile=st.sampled_from(PROFILES),
        amount=st.integers(0, 20_000),
        days=st.sampled_from([30, 2, 0, 365]),
    )
    def sell(self, profile: CardTerms, amount: int, days: int) -> None:
        card_terms = replace(profile, expires_on=T0.date() + timedelta(days=days))
        self.now = T0
        self.card = Card.sell(NUMBER, 1, card_terms, amount, self.origin(CLIENTS[0], SITE))
        self.events = self.card.collect_events()
        self.model = Model(terms=card_terms, balance=amount)
        self.issued: list[str] = []

    def origin(self, client: str, site: int | None) -> Origin:
        return Origin(occurred_at=self.now, actor=client, location_code="LOC", site_id=site)

    def amounts(self, data: st.DataObject, *anchors: int) -> int:
        """An amount within the balance, or at or beside an anchor, or an edge case."""
        live = self.model.copy()
        live.release_expired(self.now)
        anchors = (self.model.balance, live.available(), *anchors)
        within = st.integers(1, max(1, self.model.balance))
        beside = st.sampled_from(sorted({a + d for a in anchors for d in (-1, 0, 1)}))
        edges = st.sampled_from([-1, 0, AMOUNT_MINOR_MAX, AMOUNT_MINOR_MAX + 1])
        return data.draw(st.one_of(within, within, within, beside, beside, edges), label="amount")

    def spendable_by(self, client: str) -> int:
        held = next((a for c, a, _ in self.model.holds.values() if c == client), 0)
        return held + self.model.available()

    def attempt(self, command: Callable[[Card], object], expect: Callable[[Model], None]) -> None:
        """Run the command on the card and on a copy of the model; their outcomes must agree."""
        trial = self.model.copy()
        expected: type[LedgerError] | None = None
        try:
            expect(trial)
        except LedgerError as error:
            expected = type(error)
        before = snapshot(self.card)
        refusal: LedgerError | None = None
        try:
            command(self.card)
        except LedgerError as error:
            refusal = error
        if refusal is not None:
            assert type(refusal) is expected, f"card refused {refusal!r}; model expected {expected}"
            self.check_refusal_left_no_trace(before)
            return
        assert expected is None, f"card accepted; model expected {expected.__name__}"
        recorded = self.card.collect_events()
        assert facts(recorded, "hold_id", "amount_minor", "reason") == trial.log
        self.events += recorded
        self.model = trial

    def check_refusal_left_no_trace(self, before: tuple[object, ...]) -> None:
        assert names(self.card.collect_events()) == []
        assert snapshot(self.card) == before

    # Time.

    @rule(minutes=st.integers(0, 120))
    def advance_minutes(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    @rule(hours=st.integers(1, 30))
    def advance_hours(self, hours: int) -> None:
        self.now += timedelta(hours=hours)

    def advance_to(self, moment: datetime) -> None:
        self.now = max(self.now, moment)

    @precondition(lambda self: self.model.holds)
    @rule(offset=st.sampled_from([0, -1, 1]), data=st.data())
    def advance_to_a_hold_expiry(self, offset: int, data: st.DataObject) -> None:
        """Land on, just before or just after the instant a hold expires."""
        expiries = sorted({expires_at for _, _, expires_at in self.model.holds.values()})
        expires_at = data.draw(st.sampled_from(expiries), label="expires_at")
        self.advance_to(expires_at + timedelta(seconds=offset))

    # Commands.

    @rule(client=clients, site=sites, data=st.data())
    def redeem(self, client: str, site: int | None, data: st.DataObject) -> None:
        amount = self.amounts(data, self.spendable_by(client))
        now, origin = self.now, self.origin(client, site)
        self.attempt(
            lambda c: c.redeem(amount, origin), lambda m: m.redeem(client, amount, now, site)
        )

    @rule(
        client=clients, site=sites, whole=st.booleans(), minutes=st.integers(1, 180), data=st.data()
    )
    def reserve(
        self, client: str, site: int | None, whole: bool, minutes: int, data: st.DataObject
    ) -> None:
        amount = None if whole else self.amounts(data, self.spendable_by(client))
        hold_id, now, origin = f"h{len(self.issued)}", self.now, self.origin(client, site)
        self.issued.append(hold_id)
        self.attempt(
            lambda c: c.reserve(amount, minutes * 60, origin, hold_id),
            lambda m: m.reserve(client, amount, minutes * 60, now, site, hold_id),
        )

    @rule(client=clients)
    def cancel_reservation(self, client: str) -> None:
        now, origin = self.now, self.origin(client, None)
        self.attempt(lambda c: c.cancel_reservation(origin), lambda m: m.cancel(client, now))

    def pick_hold(self, data: st.DataObject) -> tuple[str, str]:
        """A hold id, mostly a held one, and a client, mostly its owner."""
        any_id = st.sampled_from([*self.issued, "unknown"])
        live = st.sampled_from(sorted(self.model.holds))
        hold_id = data.draw(st.one_of(live, live, any_id), label="hold_id")
        owner = self.model.holds.get(hold_id, (CLIENTS[0],))[0]
        return hold_id, data.draw(st.sampled_from([owner, owner, *CLIENTS]), label="client")

    @precondition(lambda self: self.model.holds)
    @rule(site=sites, whole=st.booleans(), data=st.data())
    def capture(self, site: int | None, whole: bool, data: st.DataObject) -> None:
        hold_id, client = self.pick_hold(data)
        held = self.model.holds[hold_id][1] if hold_id in self.model.holds else 0
        amount = None if whole else self.amounts(data, held)
        now, origin = self.now, self.origin(client, site)
        self.attempt(
            lambda c: c.capture(hold_id, amount, origin),
            lambda m: m.capture(client, hold_id, amount, now, site),
        )

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        hold_id, client = self.pick_hold(data)
        now, origin = self.now, self.origin(client, None)
        self.attempt(lambda c: c.void(hold_id, origin), lambda m: m.void(client, hold_id, now))

    @rule(site=sites, data=st.data())
    def load(self, site: int | None, data: st.DataObject) -> None:
        amount = self.amounts(data, BALANCE_MINOR_MAX - self.model.balance)
        now, origin = self.now, self.origin(CLIENTS[0], site)
        self.attempt(lambda c: c.load(amount, origin), lambda m: m.load(amount, now, site))

    @rule(site=sites, data=st.data())
    def refund(self, site: int | None, data: st.DataObject) -> None:
        amount = self.amounts(data, self.model.spent)
        now, origin = self.now, self.origin(CLIENTS[0], site)
        self.attempt(lambda c: c.refund(amount, origin), lambda m: m.refund(amount, now, site))

    @rule()
    def block(self) -> None:
        now, origin = self.now, self.origin(CLIENTS[0], None)
        self.attempt(lambda c: c.block("suspicious", origin), lambda m: m.block("suspicious", now))

    @rule()
    def unblock(self) -> None:
        now, origin = self.now, self.origin(CLIENTS[0], None)
        self.attempt(lambda c: c.unblock(origin), lambda m: m.unblock(now))

    @rule()
    def expire(self) -> None:
        now, origin = self.now, self.origin("scheduler", None)
        self.attempt(lambda c: c.expire(origin), lambda m: m.expire(now))

    @rule()
    def release_expired_holds(self) -> None:
        now, origin = self.now, self.origin("scheduler", None)
        self.attempt(lambda c: c.release_expired_holds(origin), lambda m: m.release_expired(now))

    # Invariants.

    @invariant()
    def money_is_never_negative_and_holds_fit_the_balance(self) -> None:
        card = self.card
        assert card.balance_minor >= 0
        assert 0 <= card.reserved_minor <= card.balance_minor
        assert card.available_minor == card.balance_minor - card.reserved_minor
        assert all(h.amount_minor > 0 for h in card.holds.values())

    @invariant()
    def balance_is_the_sum_of_the_recorded_money_events(self) -> None:
        total = sum(
            SIGN[type(e).__name__] * e.amount_minor for e in self.events if type(e).__name__ in SIGN
        )
        assert self.card.balance_minor == total

    @invariant()
    def postings_balance_and_tie_to_the_card(self) -> None:
        """Over the whole history and over every period of it, debits equal credits, card
        liability is what the card holds, and the memo holds are what it has reserved."""
        currency = self.card.terms.currency
        postings = [p for e in self.events for p in postings_for(type(e).__name__, e, currency)]
        assert all(total == 0 for total in trial_balance(postings).values())
        balances = account_balances(postings)
        assert -balances.get((CARD_LIABILITY, currency), 0) == self.card.balance_minor
        assert balances.get((HOLDS_MEMO, currency), 0) == self.card.reserved_minor
        for cut in range(len(self.events) + 1):  # Any period [cut, end) balances on its own.
            period = self.events[cut:]
            assert not any(trial_balance(
                p for e in period for p in postings_for(type(e).__name__, e, currency)
            ).values())  # fmt: skip

    @invariant()
    def replaying_every_recorded_event_rebuilds_the_same_card(self) -> None:
        assert snapshot(replay(self.events)) == snapshot(self.card)
        assert self.card.version == len(self.events)

    @invariant()
    def card_agrees_with_the_model(self) -> None:
        card, model = self.card, self.model
        assert (card.balance_minor, card.spent_minor) == (model.balance, model.spent)
        assert card.status == model.status
        holds = {k: (h.client_id, h.amount_minor, h.expires_at) for k, h in card.holds.items()}
        assert holds == model.holds


CardMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestCardMachine = CardMachine.TestCase
