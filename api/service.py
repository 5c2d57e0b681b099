"""The application service: runs Card commands against the event store, for every API alike.

Commands run in worker threads because eventsourcing's PostgreSQL recorder is synchronous.
Within a process, commands on one card take turns on a striped lock, so they rarely conflict;
across processes the event store's optimistic concurrency detects conflicts, and the whole
command is re-run with fresh reads, never the write replayed.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Transcoding

from ledger.card import Card, CardTerms, Origin, card_id_for, check_card_number
from ledger.errors import CardAlreadyExists, CardNotFound
from projections.cards import CardView, view_of

# Re-runs of a command whose write lost a race with another process, before giving up with 503.
CONFLICT_RETRIES_MAX = 10
# Jittered exponential backoff between re-runs, so two processes hammering one card take turns
# instead of colliding again at once: at most 1 ms, 2 ms, 4 ms ... capped at 50 ms a wait.
CONFLICT_BACKOFF_BASE_SECONDS = 0.001
CONFLICT_BACKOFF_MAX_SECONDS = 0.05
# Locks striped by card id: bounded memory however many cards are touched.
CARD_LOCK_STRIPES = 1024

T = TypeVar("T")


class WriteContention(Exception):
    """A card was written by others on every retry; the client should retry later."""

    retry_after_seconds = 1


def _backoff(attempt: int) -> None:
    ceiling = min(CONFLICT_BACKOFF_BASE_SECONDS * 2**attempt, CONFLICT_BACKOFF_MAX_SECONDS)
    time.sleep(random.uniform(0, ceiling))  # noqa: S311 - jitter, not cryptography.


class DateAsISO(Transcoding):
    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class CardLedger(Application[uuid.UUID]):
    name = "giftledger"

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())


def ledger_env(postgres_env: dict[str, str]) -> dict[str, str]:
    return {
        **postgres_env,
        "APPLICATION_RECORDER_TOPIC": "projections.recorder:CardLedgerRecorder",
        "CREATE_TABLE": "y",
    }


class CardService:
    def __init__(self, ledger: CardLedger, hold_ttl_seconds: int) -> None:
        self.ledger = ledger
        self.hold_ttl_seconds = hold_ttl_seconds
        self._locks = [threading.Lock() for _ in range(CARD_LOCK_STRIPES)]

    # Synchronous core, run in threads.

    def _lock_for(self, card_id: uuid.UUID) -> threading.Lock:
        return self._locks[card_id.int % CARD_LOCK_STRIPES]

    def _save(self, card: Card) -> CardView:
        view = view_of(card)
        self.ledger.save(card, card_views=[view])
        return view

    def sell_now(
        self, number: str, ref: int, terms: CardTerms, amount_minor: int, origin: Origin
    ) -> CardView:
        card = Card.sell(number, ref, terms, amount_minor, origin)
        try:
            return self._save(card)
        except IntegrityError:
            raise CardAlreadyExists(f"card {number} already exists") from None

    def execute_now(self, number: str, command: Callable[[Card], Any]) -> CardView:
        check_card_number(number)
        card_id = card_id_for(number)
        with self._lock_for(card_id):
            for attempt in range(CONFLICT_RETRIES_MAX):
                try:
                    card: Card = self.ledger.repository.get(card_id)
                except AggregateNotFoundError:
                    raise CardNotFound(f"card {number} does not exist") from None
                command(card)
                if not card.pending_events:
                    return view_of(card)
                try:
                    return self._save(card)
                except IntegrityError:
                    _backoff(attempt)
        raise WriteContention(f"card {number} is busy")

    def card_now(self, number: str, as_of_version: int | None = None) -> CardView:
        try:
            card: Card = self.ledger.repository.get(card_id_for(number), version=as_of_version)
        except AggregateNotFoundError:
            raise CardNotFound(f"card {number} does not exist") from None
        return view_of(card)

    # Asynchronous facade for the HTTP handlers.

    async def _run(self, func: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(func)

    async def sell(
        self, number: str, ref: int, terms: CardTerms, amount_minor: int, origin: Origin
    ) -> CardView:
        return await self._run(partial(self.sell_now, number, ref, terms, amount_minor, origin))

    async def redeem(self, number: str, amount_minor: int, origin: Origin) -> CardView:
        return await self._run(
            partial(self.execute_now, number, lambda c: c.redeem(amount_minor, origin))
        )

    async def reserve(
        self, number: str, amount_minor: int | None, ttl_seconds: int | None, origin: Origin
    ) -> tuple[CardView, str]:
        hold_id = uuid.uuid4().hex
        ttl = min(ttl_seconds or self.hold_ttl_seconds, self.hold_ttl_seconds)
        view = await self._run(
            partial(
                self.execute_now, number, lambda c: c.reserve(amount_minor, ttl, origin, hold_id)
            )
        )
        return view, hold_id

    async def cancel_reservation(self, number: str, origin: Origin) -> CardView:
        return await self._run(
            partial(self.execute_now, number, lambda c: c.cancel_reservation(origin))
        )

    async def capture(
        self, number: str, hold_id: str, amount_minor: int | None, origin: Origin
    ) -> CardView:
        return await self._run(
            partial(self.execute_now, number, lambda c: c.capture(hold_id, amount_minor, origin))
        )

    async def void(self, number: str, hold_id: str, origin: Origin) -> CardView:
        return await self._run(partial(self.execute_now, number, lambda c: c.void(hold_id, origin)))

    async def load(self, number: str, amount_minor: int, origin: Origin) -> CardView:
        return await self._run(
            partial(self.execute_now, number, lambda c: c.load(amount_minor, origin))
        )

    async def refund(self, number: str, amount_minor: int, origin: Origin) -> CardView:
        return await self._run(
            partial(self.execute_now, number, lambda c: c.refund(amount_minor, origin))
        )

    async def block(self, number: str, reason: str, origin: Origin) -> CardView:
        return await self._run(partial(self.execute_now, number, lambda c: c.block(reason, origin)))

    async def unblock(self, number: str, origin: Origin) -> CardView:
        return await self._run(partial(self.execute_now, number, lambda c: c.unblock(origin)))

    async def release_expired_holds(self, number: str, now: datetime) -> CardView:
        origin = Origin(occurred_at=now, actor="system:hold-expiry")
        return await self._run(
            partial(self.execute_now, number, lambda c: c.release_expired_holds(origin))
        )

    async def events(self, number: str, after_version: int, limit: int) -> list[Any]:
        return await self._run(partial(self.events_now, number, after_version, limit))

    def events_now(self, number: str, after_version: int, limit: int) -> list[Any]:
        check_card_number(number)
        events = list(
            self.ledger.events.get(card_id_for(number), gt=after_version or None, limit=limit)
        )
        if not events and after_version == 0:
            raise CardNotFound(f"card {number} does not exist")
        return events
