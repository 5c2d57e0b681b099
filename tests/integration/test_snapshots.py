"""A card with a long history is read from its latest snapshot, and reads back exactly."""

from __future__ import annotations

from datetime import UTC, date, datetime

from api.service import SNAPSHOT_INTERVAL_EVENTS, CardLedger, CardService, ledger_env
from ledger.card import CardTerms, Origin, card_id_for
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

    snapshots = list(ledger.snapshots.get(card_id_for(NUMBER), desc=True, limit=1))
    assert snapshots, "a snapshot was taken"
    assert snapshots[0].originator_version == 2 * SNAPSHOT_INTERVAL_EVENTS
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
