"""A card with a long history is read from its latest snapshot, and reads back exactly.

Snapshots are taken from the card in memory once its events have committed (CardLedger.
_take_snapshots); each must equal the fold of the card's events up to its version.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from prometheus_client import REGISTRY

from api.service import SNAPSHOT_INTERVAL_EVENTS, CardLedger, CardService, ledger_env
from api.settings import DEFAULT_CARD_CACHE_SIZE
from ledger.card import Card, CardTerms, Origin, card_id_for
from projections.database import eventsourcing_env

NUMBER = "7000000000000001"
TERMS = CardTerms("open", "EUR", False, True, True, date(2099, 1, 1), None, 2)


def origin(client: str = "pos") -> Origin:
    return Origin(occurred_at=datetime.now(UTC), actor=client, location_code="SHOP1", site_id=1)


def test_a_long_history_is_snapshotted_and_a_cold_read_equals_the_live_card(world, database_url):
    env = ledger_env(eventsourcing_env(database_url))
    ledger = CardLedger(env=env)
    service = CardService(ledger, 900)
    try:
        service.sell_now(NUMBER, 1, TERMS, 10**8, origin())
        futures = [service.submit(NUMBER, lambda c: c.redeem(3, origin())) for _ in range(450)]
        futures.append(service.submit(NUMBER, lambda c: c.reserve(500, 600, origin("b"), "h1")))
        futures.append(service.submit(NUMBER, lambda c: c.block("audit", origin("admin"))))
        live = [f.result(timeout=30) for f in futures][-1]
    finally:
        service.close()

    card_id = card_id_for(NUMBER)
    snapshots = list(ledger.snapshots.get(card_id, desc=True, limit=1))
    assert snapshots, "a snapshot was taken"
    # By the save that carried the card past the last multiple of the interval.
    last_multiple = live.version // SNAPSHOT_INTERVAL_EVENTS * SNAPSHOT_INTERVAL_EVENTS
    assert last_multiple <= snapshots[0].originator_version <= live.version
    ledger.close()

    cold_ledger = CardLedger(env=env)  # A new process: empty cache.
    try:
        cold = CardService(cold_ledger, 900)
        assert cold.card_now(NUMBER) == live
        card = cold_ledger.repository.get(card_id_for(NUMBER))
        assert card.status == "blocked"
        assert card.holds["h1"].amount_minor == 500
        assert card.terms == TERMS
        cold.close()
    finally:
        cold_ledger.close()

    batch_ledger = CardLedger(env=env)  # Another new process, whose writer reads the card.
    batch = CardService(batch_ledger, 900)
    try:
        unblocked = batch.submit(NUMBER, lambda c: c.unblock(origin("admin"))).result(timeout=10)
        assert unblocked.status == "active"
        assert unblocked.version == live.version + 1
        assert unblocked.balance_minor == live.balance_minor
        assert unblocked.holds == live.holds
    finally:
        batch.close()
        batch_ledger.close()


@contextmanager
def writer(database_url: str, cache_size: int = DEFAULT_CARD_CACHE_SIZE) -> Iterator[CardService]:
    """A ledger of its own (a process's, with an empty cache) and its writer."""
    ledger = CardLedger(env=ledger_env(eventsourcing_env(database_url), cache_size))
    service = CardService(ledger, 900)
    try:
        yield service
    finally:
        service.close()
        ledger.close()


def _is_cached(cache: Any, card_id: uuid.UUID) -> bool:
    try:
        cache.get(card_id)
    except KeyError:
        return False
    return True


def _state(card: Card) -> dict[str, Any]:
    return {name: value for name, value in vars(card).items() if name != "_pending_events"}


def _fold(ledger: CardLedger, card_id: uuid.UUID, version: int) -> Card:
    """The card from its events alone, up to version: no snapshot, no cache."""
    card: Any = None
    for event in ledger.events.get(card_id, lte=version):
        card = event.mutate(card)
    assert card is not None
    assert card.version == version
    return card


def test_every_snapshot_equals_the_fold_of_the_events_up_to_its_version(world, database_url):
    with writer(database_url) as service:
        ledger = service.ledger
        service.sell_now(NUMBER, 1, TERMS, 10**8, origin())
        # Holds taken and released, and payments, so a snapshot carries holds and balances.
        for step in range(3 * SNAPSHOT_INTERVAL_EVENTS + 7):
            if step % 10 == 3:
                command = lambda c, h=f"h{step}": c.reserve(5, 600, origin("b"), h)  # noqa: E731
            elif step % 10 == 4:
                command = lambda c: c.cancel_reservation(origin("b"))  # noqa: E731
            else:
                command = lambda c: c.redeem(2, origin())  # noqa: E731
            service.submit(NUMBER, command).result(timeout=10)
        card_id = card_id_for(NUMBER)
        snapshots = list(ledger.snapshots.get(card_id))
        assert len(snapshots) == 3
        for snapshot in snapshots:
            assert snapshot.originator_version % SNAPSHOT_INTERVAL_EVENTS == 0  # One at a time.
            from_snapshot = snapshot.mutate(None)
            assert _state(from_snapshot) == _state(_fold(ledger, card_id, from_snapshot.version))


def _snapshot_failures() -> float:
    return REGISTRY.get_sample_value("giftledger_snapshot_failures_total") or 0.0


REFUSE_SNAPSHOTS_SQL = """
    CREATE FUNCTION refuse_snapshot() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'the snapshot store is down'; END $$;
    CREATE TRIGGER refuse_snapshot BEFORE INSERT ON giftledger_snapshots
    FOR EACH ROW EXECUTE FUNCTION refuse_snapshot();
"""
ACCEPT_SNAPSHOTS_SQL = """
    DROP TRIGGER IF EXISTS refuse_snapshot ON giftledger_snapshots;
    DROP FUNCTION IF EXISTS refuse_snapshot();
"""


def test_a_snapshot_the_store_refuses_does_not_fail_the_committed_write(world, database_url):
    card_id = card_id_for(NUMBER)
    with writer(database_url) as service:
        ledger = service.ledger
        service.sell_now(NUMBER, 1, TERMS, 10**8, origin())
        for _ in range(SNAPSHOT_INTERVAL_EVENTS - 2):
            service.submit(NUMBER, lambda c: c.redeem(1, origin())).result(timeout=10)
        failures = _snapshot_failures()
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(REFUSE_SNAPSHOTS_SQL)
            try:
                # This payment carries the card to the interval: its snapshot is refused.
                paid = service.submit(NUMBER, lambda c: c.redeem(1, origin())).result(timeout=10)
            finally:
                conn.execute(ACCEPT_SNAPSHOTS_SQL)
        assert paid.version == SNAPSHOT_INTERVAL_EVENTS
        assert _snapshot_failures() == failures + 1
        assert list(ledger.snapshots.get(card_id)) == []
        stored = list(ledger.events.get(card_id))
        assert len(stored) == SNAPSHOT_INTERVAL_EVENTS  # The payment itself committed.

        for _ in range(SNAPSHOT_INTERVAL_EVENTS):
            service.submit(NUMBER, lambda c: c.redeem(1, origin())).result(timeout=10)
        versions = [s.originator_version for s in ledger.snapshots.get(card_id)]
        assert versions == [2 * SNAPSHOT_INTERVAL_EVENTS]  # The next multiple is snapshotted.


def test_a_card_beyond_the_configured_cache_is_read_back_and_pays_correctly(world, database_url):
    numbers = [f"70000000000000{i:02d}" for i in range(1, 4)]
    with writer(database_url, cache_size=2) as service:
        ledger = service.ledger
        for ref, number in enumerate(numbers, start=1):
            service.sell_now(number, ref, TERMS, 10_000, origin())
        # Past a snapshot, so that the cold read starts from one and replays the rest.
        for _ in range(SNAPSHOT_INTERVAL_EVENTS + 3):
            for number in numbers:
                service.submit(number, lambda c: c.redeem(1, origin())).result(timeout=10)
        cache: Any = ledger.repository.cache
        assert cache.maxsize == 2
        assert sum(_is_cached(cache, card_id_for(n)) for n in numbers) == 2

        # Each card in turn: at most two fit, so every read here evicts another card.
        for number in numbers:
            paid = service.submit(number, lambda c: c.redeem(7, origin())).result(timeout=10)
            assert paid.balance_minor == 10_000 - (SNAPSHOT_INTERVAL_EVENTS + 3) - 7
            assert paid.version == SNAPSHOT_INTERVAL_EVENTS + 5
            assert _state(ledger.repository.get(card_id_for(number))) == _state(
                _fold(ledger, card_id_for(number), paid.version)
            )
