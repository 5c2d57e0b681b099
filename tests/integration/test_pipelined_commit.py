"""The writer stages the next batch while the one before it commits: batches still commit one at
a time and in order, a batch that shares a card with the committing one waits for it, and a
batch that fails to commit takes nothing staged after it down with it.

The committing batch is held inside its transaction by a real PostgreSQL trigger, which waits
for an advisory lock the test holds, so "while it commits" does not depend on timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from api.service import CardLedger, CardService, ledger_env
from ledger.card import CardTerms, Origin, card_id_for
from projections.database import eventsourcing_env
from projections.history import HISTORY_PAGE_SIZE_MAX, card_history

TERMS = CardTerms("fixed16", "EUR", True, True, True, None)
HELD = "6000000000000101"  # The card whose batch the trigger holds in its transaction.
OTHER = "6000000000000102"
GATE_LOCK_KEY = 7_201_101
WAIT_SECONDS = 10
POLL_SECONDS = 0.01
# Longer than the writer's linger: by then a batch not waiting for another would be staged.
SETTLE_SECONDS = 0.3

HOLD_SQL = """
    CREATE FUNCTION hold_card() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.number = '{number}' THEN
            PERFORM pg_advisory_xact_lock_shared({key});  -- Waits while the test holds it.
            {then}
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER hold_card BEFORE INSERT ON card_views
    FOR EACH ROW EXECUTE FUNCTION hold_card();
"""
RELEASE_SQL = """
    DROP TRIGGER IF EXISTS hold_card ON card_views;
    DROP FUNCTION IF EXISTS hold_card();
"""
REFUSE = "RAISE EXCEPTION 'the card view store refused the batch';"


def origin() -> Origin:
    return Origin(occurred_at=datetime.now(UTC), actor="pos", location_code="SHOP1", site_id=1)


def pay(service: CardService, number: str, amount_minor: int) -> Any:
    return service.submit(number, lambda card: card.redeem(amount_minor, origin()))


@pytest.fixture
def service(world, database_url) -> Iterator[CardService]:
    ledger = CardLedger(env=ledger_env(eventsourcing_env(database_url)))
    card_service = CardService(ledger, 900, batch_size_max=64, batch_linger_seconds=0.01)
    card_service.sell_now(HELD, 1, TERMS, 1000, origin())
    card_service.sell_now(OTHER, 2, TERMS, 1000, origin())
    yield card_service
    card_service.close()
    ledger.close()


@pytest.fixture
def staged_batches(service, monkeypatch) -> list[list[str]]:
    """The card numbers of each batch the writer staged, in order."""
    staged: list[list[str]] = []
    real_stage = service._stage_batch

    def stage(jobs, card_ids, rerun=0):
        staged.append([job.number for job in jobs])
        return real_stage(jobs, card_ids, rerun)

    monkeypatch.setattr(service, "_stage_batch", stage)
    return staged


@contextmanager
def held_commit(database_url: str, then: str = "") -> Iterator[psycopg.Connection[Any]]:
    """While inside, a batch that writes HELD's card view waits in its transaction (then runs
    `then`, e.g. REFUSE, once the gate opens)."""
    with psycopg.connect(database_url, autocommit=True) as admin, \
            psycopg.connect(database_url, autocommit=True) as gate:  # fmt: skip
        admin.execute(HOLD_SQL.format(number=HELD, key=GATE_LOCK_KEY, then=then))
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE_LOCK_KEY,))
        try:
            yield admin
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", (GATE_LOCK_KEY,))
            admin.execute(RELEASE_SQL)


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(POLL_SECONDS)


def a_commit_waits_at_the_gate(admin: psycopg.Connection[Any]) -> bool:
    row = admin.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND objid = %s",
        (GATE_LOCK_KEY,),
    ).fetchone()
    return row is not None and row[0] > 0


def positions(database_url: str, number: str) -> list[int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT notification_id FROM giftledger_events WHERE originator_id = %s"
            " ORDER BY originator_version",
            (card_id_for(number),),
        ).fetchall()
    return [row[0] for row in rows]


def types(service: CardService, number: str) -> list[str]:
    return [entry.type for entry in card_history(service.ledger, number, 0, HISTORY_PAGE_SIZE_MAX)]


def test_the_next_batch_is_staged_while_one_commits_and_commits_after_it(
    service, staged_batches, database_url
):
    with held_commit(database_url) as admin:
        first = pay(service, HELD, 100)
        wait_until(lambda: a_commit_waits_at_the_gate(admin), "the first batch is committing")
        second = pay(service, OTHER, 200)
        wait_until(lambda: len(staged_batches) == 2, "the second batch is staged")
        time.sleep(SETTLE_SECONDS)
        # Staged, but it does not begin its transaction before the first has committed.
        assert not first.done()
        assert not second.done()

    assert first.result(timeout=WAIT_SECONDS).balance_minor == 900
    assert second.result(timeout=WAIT_SECONDS).balance_minor == 800
    assert staged_batches == [[HELD], [OTHER]]
    assert positions(database_url, HELD)[-1] < positions(database_url, OTHER)[-1]


def test_a_batch_sharing_a_card_with_the_committing_one_waits_to_read_it(
    service, staged_batches, database_url
):
    with held_commit(database_url) as admin:
        first = pay(service, HELD, 100)
        wait_until(lambda: a_commit_waits_at_the_gate(admin), "the first batch is committing")
        second = pay(service, HELD, 50)
        time.sleep(SETTLE_SECONDS)
        assert staged_batches == [[HELD]]  # The second has not read the card yet.
        assert not second.done()

    assert first.result(timeout=WAIT_SECONDS).balance_minor == 900
    assert second.result(timeout=WAIT_SECONDS).balance_minor == 850
    assert staged_batches == [[HELD], [HELD]]
    assert types(service, HELD) == ["Sold", "Redeemed", "Redeemed"]


def test_only_one_batch_is_staged_ahead_of_the_committing_one(
    service, staged_batches, database_url
):
    """A third batch is compared with the batch committing, not only with the one staged after
    it: it is not staged until the first has committed."""
    with held_commit(database_url) as admin:
        first = pay(service, HELD, 100)
        wait_until(lambda: a_commit_waits_at_the_gate(admin), "the first batch is committing")
        second = pay(service, OTHER, 200)
        wait_until(lambda: len(staged_batches) == 2, "the second batch is staged")
        third = pay(service, HELD, 50)
        time.sleep(SETTLE_SECONDS)
        assert staged_batches == [[HELD], [OTHER]]

    assert [f.result(timeout=WAIT_SECONDS).balance_minor for f in (first, second, third)] == [
        900, 800, 850
    ]
    assert staged_batches == [[HELD], [OTHER], [HELD]]


def test_a_batch_that_fails_to_commit_leaves_the_batch_staged_after_it_whole(
    service, staged_batches, database_url
):
    with held_commit(database_url, then=REFUSE) as admin:
        failed = pay(service, HELD, 100)
        wait_until(lambda: a_commit_waits_at_the_gate(admin), "the first batch is committing")
        second = pay(service, OTHER, 200)
        wait_until(lambda: len(staged_batches) == 2, "the second batch is staged")
        # Leaving opens the gate: the first batch's transaction fails, then the second commits.

    with pytest.raises(Exception, match="refused the batch"):
        failed.result(timeout=WAIT_SECONDS)
    assert second.result(timeout=WAIT_SECONDS).balance_minor == 800
    assert types(service, HELD) == ["Sold"]
    assert types(service, OTHER) == ["Sold", "Redeemed"]
    # The failed batch left nothing in the cached card: the next payment starts from 1000.
    assert pay(service, HELD, 300).result(timeout=WAIT_SECONDS).balance_minor == 700
    assert pay(service, OTHER, 100).result(timeout=WAIT_SECONDS).balance_minor == 700
    assert types(service, HELD) == ["Sold", "Redeemed"]


def test_concurrent_payments_on_a_few_cards_each_commit_exactly_once(service, database_url):
    """Many threads paying into a few cards: batches overlap and are disjoint at random, and
    every card's balance and versions come out exact."""
    numbers = [f"60000000000002{i:02d}" for i in range(4)]
    payments_per_payer = 40
    for i, number in enumerate(numbers):
        service.sell_now(number, 10 + i, TERMS, 100_000, origin())
    paid: dict[str, int] = dict.fromkeys(numbers, 0)
    lock = threading.Lock()

    def payer(seed: int) -> None:
        for n in range(payments_per_payer):
            number = numbers[(seed * 7 + n * 3) % len(numbers)]
            amount = 1 + (seed + n) % 9
            pay(service, number, amount).result(timeout=WAIT_SECONDS)
            with lock:
                paid[number] += amount

    threads = [threading.Thread(target=payer, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    events = {number: positions(database_url, number) for number in numbers}
    assert sum(len(found) - 1 for found in events.values()) == 16 * payments_per_payer
    for number in numbers:
        card = service.card_now(number)
        assert card.balance_minor == 100_000 - paid[number]
        assert card.version == len(events[number])
