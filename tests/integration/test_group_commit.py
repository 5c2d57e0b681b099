"""Group commit: a batch commits together, a refused command fails alone, a lost ack is no error."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError

from api.idempotency import IdempotentWrite
from api.service import (
    BATCH_RERUNS_MAX,
    WRITER_OS_THREAD_NAME,
    CardLedger,
    CardService,
    Job,
    ledger_env,
)
from ledger.card import CardTerms, Origin
from ledger.errors import CardNotFound, InsufficientFunds
from projections.database import eventsourcing_env
from projections.history import card_history

TERMS = CardTerms("fixed16", "EUR", True, True, True, None)


@pytest.fixture
def service(world, database_url):
    ledger = CardLedger(env=ledger_env(eventsourcing_env(database_url)))
    # A long linger: these tests hand batches to commit_batch themselves.
    card_service = CardService(ledger, 900, batch_size_max=64, batch_linger_seconds=0.05)
    yield card_service
    card_service.close()
    ledger.close()


def origin() -> Origin:
    return Origin(occurred_at=datetime.now(UTC), actor="pos", location_code="SHOP1", site_id=1)


def redeem(number: str, amount_minor: int) -> Job:
    return Job(number, lambda card: card.redeem(amount_minor, origin()), None)


def versions(service: CardService, number: str) -> list[str]:
    return [entry.type for entry in card_history(service.ledger, number, 0, 100)]


def test_a_refused_command_fails_alone_and_the_rest_of_its_batch_commits(service):
    service.sell_now("6000000000000001", 1, TERMS, 1000, origin())
    service.sell_now("6000000000000002", 2, TERMS, 1000, origin())
    jobs = [
        redeem("6000000000000001", 300),
        redeem("6000000000000002", 5000),  # More than the balance.
        redeem("6000000000000001", 200),
        redeem("6000000000000009", 100),  # No such card.
        redeem("6000000000000002", 400),
    ]

    service.commit_batch(jobs)

    assert [j.future.result().balance_minor for j in jobs[::2]] == [700, 500, 600]
    assert isinstance(jobs[1].future.exception(), InsufficientFunds)
    assert isinstance(jobs[3].future.exception(), CardNotFound)
    assert versions(service, "6000000000000001") == ["Sold", "Redeemed", "Redeemed"]
    assert versions(service, "6000000000000002") == ["Sold", "Redeemed"]
    assert service.card_now("6000000000000002").balance_minor == 600


def test_a_card_changed_twice_in_one_batch_is_projected_as_after_its_last_command(
    service, database_url
):
    service.sell_now("6000000000000005", 5, TERMS, 1000, origin())
    jobs = [redeem("6000000000000005", 300), redeem("6000000000000005", 200)]

    service.commit_batch(jobs)

    assert [j.future.result().balance_minor for j in jobs] == [700, 500]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT balance_minor, version FROM card_views WHERE number = %s",
            ("6000000000000005",),
        ).fetchone()
    assert row == (500, 3)


def test_concurrent_submissions_share_batches_and_all_commit(service):
    service.sell_now("6000000000000003", 3, TERMS, 10_000, origin())
    futures = [
        service.submit("6000000000000003", lambda c: c.redeem(7, origin())) for _ in range(40)
    ]

    balances = sorted(f.result(timeout=10).balance_minor for f in futures)

    assert balances == [10_000 - 7 * n for n in range(40, 0, -1)]
    assert versions(service, "6000000000000003").count("Redeemed") == 40


def test_a_commit_whose_acknowledgement_was_lost_is_neither_an_error_nor_a_second_write(
    service, monkeypatch
):
    service.sell_now("6000000000000004", 4, TERMS, 1000, origin())
    real_save = service.ledger.save

    def save_then_lose_the_ack(*args, **kwargs):
        real_save(*args, **kwargs)
        raise IntegrityError("connection lost after commit; the retry met its own rows")

    monkeypatch.setattr(service.ledger, "save", save_then_lose_the_ack)
    job = redeem("6000000000000004", 250)
    service.commit_batch([job])

    assert job.future.result().balance_minor == 750
    assert versions(service, "6000000000000004") == ["Sold", "Redeemed"]


@pytest.fixture
def rival(database_url):
    """Another process's writer on the same database."""
    rival_ledger = CardLedger(env=ledger_env(eventsourcing_env(database_url)))
    rival = CardService(rival_ledger, 900)
    yield rival
    rival.close()
    rival_ledger.close()


def test_a_batch_beaten_by_another_writer_is_rerun_whole_with_fresh_reads(
    service, rival, monkeypatch
):
    service.sell_now("6000000000000008", 8, TERMS, 1000, origin())
    real_fresh = service._fresh_cards
    reads = []

    def read_then_let_the_rival_write_once(card_ids):
        cards = real_fresh(card_ids)
        reads.append(sorted(card.version for card in cards.values()))
        if len(reads) == 1:  # Another process commits to a card of the first read's batch.
            rival.submit("6000000000000008", lambda c: c.redeem(100, origin())).result(10)
        return cards

    monkeypatch.setattr(service, "_fresh_cards", read_then_let_the_rival_write_once)
    jobs = [redeem("6000000000000008", 300), redeem("6000000000000008", 650)]
    service.commit_batch(jobs)

    assert reads == [[1], [2]]  # One more read and transaction for the batch, not per command.
    assert jobs[0].future.result().balance_minor == 600
    assert isinstance(jobs[1].future.exception(), InsufficientFunds)
    assert versions(service, "6000000000000008") == ["Sold", "Redeemed", "Redeemed"]


def test_a_batch_beaten_again_and_again_reruns_each_command_alone(service, rival, monkeypatch):
    service.sell_now("6000000000000005", 5, TERMS, 1000, origin())
    real_fresh, real_load = service._fresh_cards, service._load
    loads = []

    def read_then_let_the_rival_write(card_ids):
        cards = real_fresh(card_ids)  # The batch's read ...
        loads.extend(card.version for card in cards.values())
        # ... then another process commits to the same card before the batch does.
        rival.submit("6000000000000005", lambda c: c.redeem(100, origin())).result(timeout=10)
        return cards

    def load_alone(number):
        card = real_load(number)
        loads.append(card.version)
        return card

    monkeypatch.setattr(service, "_fresh_cards", read_then_let_the_rival_write)
    monkeypatch.setattr(service, "_load", load_alone)
    jobs = [redeem("6000000000000005", 300), redeem("6000000000000005", 650)]
    service.commit_batch(jobs)

    # Each of the batch's reads (the first and BATCH_RERUNS_MAX more) was beaten by the rival.
    # From the second read on, the 650 no longer fitted, and was refused there; the 300 was
    # then re-run alone, from the card as stored.
    rival_writes = 1 + BATCH_RERUNS_MAX
    assert loads == [*range(1, 1 + rival_writes), 1 + rival_writes]
    balance = 1000 - 100 * rival_writes
    assert jobs[0].future.result().balance_minor == balance - 300
    assert isinstance(jobs[1].future.exception(), InsufficientFunds)
    assert versions(service, "6000000000000005") == ["Sold"] + ["Redeemed"] * (rival_writes + 1)


def test_a_batch_that_does_not_commit_leaves_no_trace_in_the_cached_cards(service, monkeypatch):
    """The writer applies commands to its cached cards in place; a batch that fails to commit
    must not leave its changes there for the next batch to build on."""
    service.sell_now("6000000000000006", 6, TERMS, 1000, origin())
    service.commit_batch([redeem("6000000000000006", 100)])  # Now cached, at 900.
    real_save = service.ledger.save

    def database_gone(*args, **kwargs):
        raise ConnectionError("the database went away before the commit")

    monkeypatch.setattr(service.ledger, "save", database_gone)
    with pytest.raises(ConnectionError):
        service.commit_batch([redeem("6000000000000006", 300)])
    monkeypatch.setattr(service.ledger, "save", real_save)
    job = redeem("6000000000000006", 50)
    service.commit_batch([job])

    assert job.future.result().balance_minor == 850
    assert versions(service, "6000000000000006") == ["Sold", "Redeemed", "Redeemed"]


def test_commands_rerun_after_a_conflict_start_from_the_stored_card(service, monkeypatch):
    service.sell_now("6000000000000007", 7, TERMS, 1000, origin())
    service.commit_batch([redeem("6000000000000007", 100)])  # Now cached, at 900.
    real_save = service.ledger.save
    refusals = []

    def conflict_once(*args, **kwargs):
        if not refusals:
            refusals.append(args)
            raise IntegrityError("another process wrote this card first")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(service.ledger, "save", conflict_once)
    jobs = [redeem("6000000000000007", 300), redeem("6000000000000007", 200)]
    service.commit_batch(jobs)

    assert [job.future.result().balance_minor for job in jobs] == [600, 400]
    assert versions(service, "6000000000000007") == ["Sold", "Redeemed", "Redeemed", "Redeemed"]


@pytest.mark.skipif(sys.platform != "linux", reason="thread names are read from /proc")
def test_the_writer_thread_is_named_for_the_os(service):
    # Once the writer has answered a command, it has named itself.
    refused = service.submit("6000000000000999", lambda card: None)
    assert isinstance(refused.exception(timeout=10), CardNotFound)
    comm = Path(f"/proc/self/task/{service._writer.native_id}/comm").read_text().strip()
    assert comm == WRITER_OS_THREAD_NAME


LONG_LINGER_SECONDS = 1.0
SETTLE_SECONDS = 0.1  # far inside the linger: a batch that lingers is still open by then


@pytest.fixture
def lingering(world, database_url):
    ledger = CardLedger(env=ledger_env(eventsourcing_env(database_url)))
    card_service = CardService(ledger, 900, batch_linger_seconds=LONG_LINGER_SECONDS)
    yield card_service
    card_service.close()
    ledger.close()


def test_a_lone_command_after_a_lone_command_does_not_wait_for_the_linger(lingering):
    lingering.sell_now("6000000000000011", 11, TERMS, 1000, origin())
    lingering.submit("6000000000000011", lambda c: c.redeem(1, origin())).result(timeout=10)

    lone = lingering.submit("6000000000000011", lambda c: c.redeem(2, origin()))

    # Committed at once, not after the linger; a slow machine still has the whole linger.
    assert lone.result(timeout=LONG_LINGER_SECONDS * 0.8).balance_minor == 997


def enqueue_together(service: CardService, jobs: list[Job]) -> None:
    """Queue jobs in one step, as the stdlib Queue does one put, so the writer takes them as one
    batch: submitted one by one, a batch that does not linger could close between them."""
    queue = service._queue
    with queue.mutex:
        queue.queue.extend(jobs)
        queue.unfinished_tasks += len(jobs)
        queue.not_empty.notify()


def test_after_a_batch_of_several_the_next_batch_lingers_for_more(lingering):
    lingering.sell_now("6000000000000012", 12, TERMS, 1000, origin())
    lingering.sell_now("6000000000000013", 13, TERMS, 1000, origin())
    jobs = [redeem("6000000000000012", 1), redeem("6000000000000013", 1)]
    enqueue_together(lingering, jobs)
    assert [j.future.result(timeout=10).balance_minor for j in jobs] == [999, 999]

    first = lingering.submit("6000000000000012", lambda c: c.redeem(1, origin()))
    time.sleep(SETTLE_SECONDS)
    assert not first.done(), "the batch lingers for more commands"
    second = lingering.submit("6000000000000013", lambda c: c.redeem(1, origin()))

    assert [f.result(timeout=10).balance_minor for f in (first, second)] == [998, 998]
    assert lingering.linger_after(1) == 0.0
    assert lingering.linger_after(2) == LONG_LINGER_SECONDS


RACED_KEYS = 90  # card_history below reads at most 100 entries


def test_a_key_raced_by_two_writers_has_one_effect_and_every_later_batch_commits(
    service, rival
):
    """Two processes' writers get the same keyed request at once, key after key. One commits;
    the other's batch meets the stored key, is refused by the store and answers with the
    replay. Each key must leave one event and one answer, and no connection may be left unable
    to commit (psycopg once counted statements as prepared that an aborted pipeline skipped)."""
    number = "6000000000000014"
    service.sell_now(number, 14, TERMS, 1_000_000, origin())
    for n in range(RACED_KEYS):
        idem = IdempotentWrite((("client:pos", f"race-{n}"),), f"hash-{n}", 200,
                               lambda view: {"balance_minor": view.balance_minor})  # fmt: skip
        raced = [writer.submit(number, lambda c: c.redeem(1, origin()), idem)
                 for writer in (service, rival)]  # fmt: skip
        first, second = (future.result(timeout=10) for future in raced)
        assert first.body == second.body, n
    assert versions(service, number).count("Redeemed") == RACED_KEYS
    # Both writers still commit after all those refusals.
    for writer in (service, rival):
        assert writer.submit(number, lambda c: c.redeem(1, origin())).result(timeout=10)
    assert versions(service, number).count("Redeemed") == RACED_KEYS + 2
