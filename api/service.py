"""The application service: runs Card commands against the event store, for every API alike.

Card commands go through one writer thread per process, which applies the commands of concurrent
requests to their cards and commits them together, in one transaction (group commit). A request
is answered only after its batch has committed. A command that breaks a rule fails alone; the
rest of its batch commits. If another process wrote one of the batch's cards first, the
store's optimistic concurrency refuses the batch: it is re-run whole with fresh reads (up to
BATCH_RERUNS_MAX times), then each command alone, never the write replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import queue
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import partial
from typing import Any, ClassVar, NamedTuple, TypeVar

import anyio.to_thread
import psycopg
from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    LRUCache,
    ProcessingEvent,
)
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, JSONTranscoder, StoredEvent, Transcoding

from api import metrics
from api.errors import IdempotencyKeyReused, WriteContention
from api.idempotency import IdempotentWrite, StoredResponse
from api.settings import DEFAULT_CARD_CACHE_SIZE, Settings
from ledger.card import (
    Card,
    CardTerms,
    Hold,
    Origin,
    card_id_for,
    check_card_number,
    mask_card_number,
)
from ledger.errors import CardAlreadyExists, CardNotFound, LedgerError
from ledger.money import currency, to_minor
from projections.audit import AuditReport, verify_ledger
from projections.cards import CardView, view_of
from projections.database import eventsourcing_env
from projections.history import HistoryEntry, card_history
from projections.idempotency import select_stored
from projections.log import adopt_unchained_log
from projections.params import json_rows
from projections.schema import SCHEMA_LOCK_KEY

logger = logging.getLogger("giftledger.service")

# Re-runs of a command whose write lost a race with another process, before giving up with 503.
CONFLICT_RETRIES_MAX = 10
# A batch beaten by another process's commit is re-run whole, with fresh reads, this many times
# before each of its commands is re-run alone: one more transaction rather than one per command.
BATCH_RERUNS_MAX = 2
# Jittered exponential backoff between re-runs, so two processes hammering one card take turns
# instead of colliding again at once: at most 1 ms, 2 ms, 4 ms ... capped at 50 ms a wait.
CONFLICT_BACKOFF_BASE_SECONDS = 0.001
CONFLICT_BACKOFF_MAX_SECONDS = 0.05
# Group commit: a batch closes at this many commands, or this long after its first command (when
# the batch before it held more than one; see CardService.linger_after).
BATCH_SIZE_MAX_DEFAULT = 64
BATCH_LINGER_SECONDS_DEFAULT = 0.001
# Commands waiting for the writer; beyond this the service answers 503 rather than queue forever.
WRITE_QUEUE_MAX = 10_000
# A card is snapshotted by the save that carries it past a multiple of this many events, so a
# card not in memory replays fewer than this many events (plus one batch) after its snapshot. A
# snapshot costs the writer about 0.3 ms; replaying costs about 30 µs an event. At 50, a card's
# snapshots cost 6 µs an event, and a cold read replays 25 events (0.8 ms) on average, against
# 100 (3 ms) at 200: cards beyond the aggregate cache, or read after a restart, are cold reads.
SNAPSHOT_INTERVAL_EVENTS = 50
# The writer thread's name as the OS shows it (top -H, pidstat -t, /proc/<pid>/task/*/comm), so
# its share of a worker's CPU can be told apart from the event loop's (make bench prints both).
WRITER_OS_THREAD_NAME = "ledger-writer"
OS_THREAD_NAME_BYTES_MAX = 15  # Linux's limit, without the terminating NUL.
_PR_SET_NAME = 15

T = TypeVar("T")
Outcome = CardView | StoredResponse


def _backoff(attempt: int) -> None:
    ceiling = min(CONFLICT_BACKOFF_BASE_SECONDS * 2**attempt, CONFLICT_BACKOFF_MAX_SECONDS)
    time.sleep(random.uniform(0, ceiling))  # noqa: S311 - jitter, not cryptography.


def name_os_thread(name: str) -> None:
    """Name the calling thread for the OS; best effort, and only on Linux."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_NAME, name.encode()[:OS_THREAD_NAME_BYTES_MAX], 0, 0, 0)


class DateAsISO(Transcoding):
    type = date
    name = "date_iso"

    def encode(self, obj: date) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> date:
        return date.fromisoformat(data)


class DataclassAsDict(Transcoding):
    """Stores a flat dataclass of the card's state (in snapshots) as a dict of its fields."""

    def __init__(self, cls: type[Any], name: str) -> None:
        self.type = cls
        self.name = name

    def encode(self, obj: Any) -> dict[str, Any]:
        return dataclasses.asdict(obj)

    def decode(self, data: dict[str, Any]) -> Any:
        return self.type(**data)


class CardProcessingEvent(ProcessingEvent[uuid.UUID]):
    """Collects a Card's events without asking, per card, whether it is a domain event or an
    aggregate: those are runtime Protocol checks, a few percent of the writer's time."""

    def collect_events(self, *objs: Any, **kwargs: Any) -> None:
        for obj in objs:
            if type(obj) is Card:
                self.events.extend(obj.collect_events())
                self.aggregates[obj.id] = obj
            else:
                super().collect_events(obj)
        self.saved_kwargs.update(kwargs)


class CardLedger(Application[uuid.UUID]):
    name = "giftledger"
    # A cold read of a card replays at most this many events after its latest snapshot.
    snapshotting_intervals: ClassVar[dict[type[Aggregate], int]] = {Card: SNAPSHOT_INTERVAL_EVENTS}

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(DateAsISO())
        transcoder.register(DataclassAsDict(CardTerms, "card_terms"))
        transcoder.register(DataclassAsDict(Hold, "hold"))

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        """Application.save, with CardProcessingEvent for ProcessingEvent."""
        processing_event = CardProcessingEvent()
        processing_event.collect_events(*objs, **kwargs)
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    def _take_snapshots(self, processing_event: ProcessingEvent[uuid.UUID]) -> None:
        """Snapshot each card this save carried past a multiple of SNAPSHOT_INTERVAL_EVENTS, from
        the card in memory, whose events have just committed: its state is the stored one, at
        its version. eventsourcing's own take_snapshot re-reads the card from the store at that
        version instead, which cost the writer 6 ms for 200 events against 0.3 ms.

        All of a save's snapshots go in one transaction, after the events' own. A snapshot only
        saves later reads work: the store refusing it must not turn the committed write into an
        error (a client told a payment failed could pay again), so that is logged and counted.
        """
        crossed = {
            event.originator_id
            for event in processing_event.events
            if event.originator_version % SNAPSHOT_INTERVAL_EVENTS == 0
        }
        cards = [processing_event.aggregates[card_id] for card_id in crossed]
        if not cards or self.snapshots is None:
            return
        snapshots = [Card.Snapshot.take(card) for card in cards]
        try:
            self.snapshots.put(snapshots)
        except Exception:
            metrics.SNAPSHOT_FAILURES.inc(len(snapshots))
            logger.exception("%d card snapshot(s) were not stored; their events were", len(cards))

    def events_table(self) -> str:
        recorder: Any = self.recorder
        return f"{recorder.datastore.schema}.{recorder.events_table_name}"

    def adopt_unchained_log(self) -> int:
        """Chain events stored before the ledger log existed (a no-op once it has rows)."""
        with self.recorder.datastore.transaction(commit=True) as curs:  # type: ignore[attr-defined]
            return adopt_unchained_log(curs, self.events_table())


def open_ledger(url: str, cache_size: int = DEFAULT_CARD_CACHE_SIZE) -> CardLedger:
    """The card ledger on the database at url, its event store's tables created if need be.

    eventsourcing creates its tables, and alters their storage settings, each time a ledger is
    constructed. Two processes doing so at once (the workers of one `giftledger serve`
    starting together) failed with "tuple concurrently updated", and uvicorn then stopped the
    whole service; so construction holds the schema lock that migrations take.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK_KEY,))
        try:
            return CardLedger(env=ledger_env(eventsourcing_env(url), cache_size))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


def service_for(ledger: CardLedger, settings: Settings) -> CardService:
    """A CardService with its own writer thread, batching as the settings say."""
    return CardService(
        ledger,
        settings.hold_ttl_seconds,
        batch_size_max=settings.batch_size_max,
        batch_linger_seconds=settings.batch_linger_ms / 1000,
    )


def ledger_env(
    postgres_env: dict[str, str], cache_size: int = DEFAULT_CARD_CACHE_SIZE
) -> dict[str, str]:
    return {
        **postgres_env,
        "APPLICATION_RECORDER_TOPIC": "projections.recorder:CardLedgerRecorder",
        "CREATE_TABLE": "y",
        # Aggregates kept in memory per process, so a hot card is not re-read from its snapshot.
        "AGGREGATE_CACHE_MAXSIZE": str(cache_size),
        # Each read catches a cached card up with events other processes wrote since.
        "AGGREGATE_CACHE_FASTFORWARD": "y",
    }


# The writer's read of a batch's cards, in one statement. Its parameter is a JSON array of
# {"id": card id, "v": version}: a cached card's version, whose later events it needs, or -1
# for a card not in memory, which needs its newest snapshot and the events after it (or all of
# its events, if it has no snapshot). Each probe is LATERAL, so every card is one probe of a
# primary key however big the tables grow: a plain join of the ids was planned as a sequential
# scan of the whole event table, a cost that grew with the ledger. Rows come per card, its
# snapshot (flagged) before its events, in version order.
def fresh_cards_sql(events_table: str, snapshots_table: str) -> str:
    return (
        "WITH t AS (SELECT * FROM json_to_recordset(%s) AS t(id uuid, v integer)),"  # noqa: S608
        " s AS MATERIALIZED (SELECT s.originator_id, s.originator_version, s.topic, s.state"
        "  FROM t CROSS JOIN LATERAL"
        f"  (SELECT * FROM {snapshots_table} WHERE originator_id = t.id AND t.v < 0"
        "   ORDER BY originator_version DESC LIMIT 1) s)"
        " SELECT true AS snapshot, * FROM s"
        " UNION ALL"
        " SELECT false, e.originator_id, e.originator_version, e.topic, e.state"
        " FROM t LEFT JOIN s ON s.originator_id = t.id CROSS JOIN LATERAL"
        f" (SELECT * FROM {events_table} WHERE originator_id = t.id"
        "  AND originator_version > coalesce(s.originator_version, greatest(t.v, 0))"
        "  ORDER BY originator_version) e"
        " ORDER BY originator_id, originator_version"
    )


# The version that asks fresh_cards_sql for a card's newest snapshot and the events after it.
NOT_CACHED = -1


def new_hold_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Job:
    """One command for the writer; a sale creates its card instead of changing one."""

    number: str
    command: Callable[[Card], Any]
    idem: IdempotentWrite | None
    create: Callable[[], Card] | None = None
    future: Future[Outcome] = field(default_factory=Future)
    # An asynchronous caller's future, settled on its event loop together with the rest of its
    # batch (one wake-up of the loop per batch, not one per command).
    waiter: asyncio.Future[Outcome] | None = None
    # Where the outcome goes when the job came from another process (api/writer_process.py):
    # something with `channel.answer([(request_id, future), ...])` and `request_id`.
    reply: Any = None
    # A uuid5 of the number, asked for several times per job by the writer.
    card_id: uuid.UUID = field(init=False)

    def __post_init__(self) -> None:
        self.card_id = card_id_for(self.number)


class Staged(NamedTuple):
    """A command applied in a batch: its job, its answer, and its card's view after it (None
    for a refusal, which changed nothing and is only kept for a retry of its request)."""

    job: Job
    answer: Outcome
    view: CardView | None = None


class CardService:
    def __init__(
        self,
        ledger: CardLedger,
        hold_ttl_seconds: int,
        batch_size_max: int = BATCH_SIZE_MAX_DEFAULT,
        batch_linger_seconds: float = BATCH_LINGER_SECONDS_DEFAULT,
        writer_thread: bool = True,
    ) -> None:
        assert batch_size_max >= 1
        self.ledger = ledger
        self.hold_ttl_seconds = hold_ttl_seconds
        self.batch_size_max = batch_size_max
        self.batch_linger_seconds = batch_linger_seconds
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=WRITE_QUEUE_MAX)
        # Without a writer thread, a subclass sends the commands elsewhere (the writer process).
        self._writer: threading.Thread | None = None
        if writer_thread:
            self._writer = threading.Thread(
                target=self._write_loop, name="giftledger-writer", daemon=True
            )
            self._writer.start()

    def forget_cached_cards(self) -> None:
        """Drop every cached aggregate, e.g. after the event table was emptied behind our back."""
        cache = self.ledger.repository.cache
        assert cache is not None
        self.ledger.repository.cache = LRUCache(maxsize=cache.maxsize)

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=10)

    # The writer thread.

    def submit(self, number: str, command: Callable[[Card], Any],
               idem: IdempotentWrite | None = None) -> Future[Outcome]:  # fmt: skip
        check_card_number(number)
        return self.submit_job(Job(number, command, idem))

    def submit_job(self, job: Job) -> Future[Outcome]:
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            metrics.WRITE_CONTENTION.inc()
            raise WriteContention("too many writes are waiting") from None
        return job.future

    def _write_loop(self) -> None:
        name_os_thread(WRITER_OS_THREAD_NAME)
        previous_size = 0
        while (first := self._queue.get()) is not None:
            batch = [first]
            opened = time.monotonic()
            deadline = opened + self.linger_after(previous_size)
            stop = False
            while len(batch) < self.batch_size_max:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            previous_size = len(batch)
            closed = time.monotonic()
            metrics.BATCH_LINGER.observe(closed - opened)
            metrics.BATCH_SIZE.observe(len(batch))
            try:
                self.commit_batch(batch)
                metrics.BATCH_COMMIT.observe(time.monotonic() - closed)
            except Exception as exc:  # The writer must outlive a database outage.
                logger.exception("batch of %d failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                deliver(batch)
            if stop:
                return

    def linger_after(self, previous_size: int) -> float:
        """How long a batch waits for more commands after its first. A batch after a batch of
        one takes only what is already queued: with so little coming, waiting would delay each
        answer for nothing (2 ms of a lone payment's 10). Once batches hold several commands,
        the linger gathers more into each transaction, which costs the writer about 3 ms of CPU
        whatever its size."""
        return self.batch_linger_seconds if previous_size > 1 else 0.0

    def commit_batch(self, jobs: list[Job]) -> None:
        """Apply each job to its card and commit all of them in one transaction."""
        card_ids = {job.card_id for job in jobs}
        try:
            self._commit_batch(jobs, card_ids)
        except BaseException:
            # The batch's cards were changed in place and may not have been stored.
            self._evict(card_ids)
            raise
        finally:
            deliver(jobs)

    def _evict(self, card_ids: set[uuid.UUID]) -> None:
        cache = self.ledger.repository.cache
        assert cache is not None
        for card_id in card_ids:
            with contextlib.suppress(KeyError):
                cache.get(card_id, evict=True)

    def _commit_batch(self, jobs: list[Job], card_ids: set[uuid.UUID], rerun: int = 0) -> None:
        stored = self._stored_answers([k for j in jobs if j.idem for k in j.idem.keys])
        known = self._fresh_cards(card_ids)
        cards: dict[uuid.UUID, Card] = {}
        staged: list[Staged] = []
        event_keys: dict[tuple[uuid.UUID, int], tuple[str | None, str | None]] = {}
        alone: list[Job] = []
        keys_in_batch: set[tuple[str, str]] = set()
        for job in jobs:
            if job.idem is not None:
                if job.idem.keys and any(k in keys_in_batch for k in job.idem.keys):
                    alone.append(job)  # A retry racing its original: answer it after the commit.
                    continue
                keys_in_batch.update(job.idem.keys)
            self._stage(job, known, cards, stored, staged, event_keys)
        self._commit_staged(cards, staged, event_keys, rerun)
        for job in alone:
            self._resolve_alone(job)

    def _stage(
        self,
        job: Job,
        known: dict[uuid.UUID, Card],
        cards: dict[uuid.UUID, Card],
        stored: dict[tuple[str, str], dict[str, Any]],
        staged: list[Staged],
        event_keys: dict[tuple[uuid.UUID, int], tuple[str | None, str | None]],
    ) -> None:
        earlier = cards.get(job.card_id)
        already_pending = len(earlier.pending_events) if earlier is not None else 0
        try:
            replay = _replay(job.idem, stored)
            if replay is not None:
                job.future.set_result(replay)
                return
            card = self._card_for(job, known, cards)
        except LedgerError as exc:
            # Card commands check every rule before their first event, so a refusal leaves the
            # (cached) card as it was for the batch's next command.
            target = earlier or known.get(job.card_id)
            assert target is None or len(target.pending_events) == already_pending, (
                "a refused command recorded an event"
            )
            if job.idem is None:
                job.future.set_exception(exc)
            else:  # Stored with the batch, so a retry gets this same refusal.
                staged.append(Staged(job, job.idem.refusal(exc)))
            return
        except IdempotencyKeyReused as exc:
            job.future.set_exception(exc)
            return
        cards[job.card_id] = card
        if job.idem is not None:
            event_keys.update(_keys_of(card.pending_events[already_pending:], job.idem))
        view = view_of(card)
        staged.append(Staged(job, _answer(view, job.idem), view))

    def _card_for(
        self, job: Job, known: dict[uuid.UUID, Card], cards: dict[uuid.UUID, Card]
    ) -> Card:
        """The job's card after its command; guards run before any event, so a refusal
        leaves the card as it was."""
        if job.create is not None:
            if job.card_id in known or job.card_id in cards:
                raise CardAlreadyExists(f"card {mask_card_number(job.number)} already exists")
            return job.create()
        card = cards.get(job.card_id) or known.get(job.card_id)
        if card is None:
            raise CardNotFound(f"card {mask_card_number(job.number)} does not exist")
        job.command(card)
        return card

    def _fresh_cards(self, card_ids: set[uuid.UUID]) -> dict[uuid.UUID, Card]:
        """The batch's cards, whatever their number, in one query: cached cards are caught up
        with what other processes appended since; the others start from their latest snapshot,
        or from their first event. A card absent from the result does not exist."""
        cache = self.ledger.repository.cache
        assert cache is not None
        cards: dict[uuid.UUID, Card] = {}
        for card_id in card_ids:
            try:
                # The cached object itself, not a copy: only this thread touches the cache, and
                # a batch that does not commit evicts its cards (commit_batch).
                cards[card_id] = cache.get(card_id)
            except KeyError:
                continue
        versions = [{"id": card_id, "v": cards[card_id].version if card_id in cards
                     else NOT_CACHED} for card_id in card_ids]  # fmt: skip
        sql = fresh_cards_sql(self._table("events"), self._table("snapshots"))
        for row in self._fetch(sql, (json_rows(versions),)):
            card_id = row["originator_id"]
            known = None if row["snapshot"] else cards.get(card_id)
            cards[card_id] = self._decode(row).mutate(known)
        return cards

    def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """One read in autocommit: a single round trip, no BEGIN and ROLLBACK around it."""
        datastore: Any = self.ledger.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(sql, params)
            return list(curs.fetchall())

    def _decode(self, row: Any) -> Any:
        stored = StoredEvent(
            originator_id=row["originator_id"],
            originator_version=row["originator_version"],
            topic=row["topic"],
            state=bytes(row["state"]),
        )
        return self.ledger.mapper.to_domain_event(stored)

    def _table(self, kind: str) -> str:
        """The event store's `events` or `snapshots` table, as eventsourcing named it."""
        recorder: Any = self.ledger.recorder
        return f"{recorder.datastore.schema}.{self.ledger.name.lower()}_{kind}"

    def _commit_staged(
        self,
        cards: dict[uuid.UUID, Card],
        staged: list[Staged],
        event_keys: dict[tuple[uuid.UUID, int], tuple[str | None, str | None]],
        rerun: int,
    ) -> None:
        if not staged:
            return
        rows = [
            row
            for job, answer, _ in staged
            if job.idem and isinstance(answer, StoredResponse)
            for row in job.idem.rows(answer)
        ]
        # Each card's view after the batch is the one after its last command.
        views = {stage.job.card_id: stage.view for stage in staged if stage.view is not None}
        assert views.keys() == cards.keys()
        probe = next((e for c in cards.values() for e in c.pending_events), None)
        try:
            self.ledger.save(
                *cards.values(),
                card_views=list(views.values()),
                idempotency_rows=rows,
                event_keys=event_keys,
            )
        except IntegrityError:
            if probe is None or not self._landed(probe):
                # Another process wrote one of these cards first: re-run the commands from
                # their cards as stored (the cached ones hold this batch's changes).
                self._evict(set(cards))
                jobs = [stage.job for stage in staged]
                metrics.CONFLICT_RETRIES.inc(len(jobs))
                if rerun < BATCH_RERUNS_MAX:
                    self._commit_batch(jobs, {job.card_id for job in jobs}, rerun + 1)
                else:
                    for job in jobs:
                        self._resolve_alone(job)
                return
        cache = self.ledger.repository.cache
        assert cache is not None
        for card in cards.values():
            cache.put(card.id, card)  # Committed: the next batch starts from here.
        for job, answer, _ in staged:
            job.future.set_result(answer)

    def _resolve_alone(self, job: Job) -> None:
        try:
            if job.create is not None:
                outcome = self._create_now(job.number, job.create, job.idem)
            else:
                outcome = self.execute_now(job.number, job.command, job.idem)
            job.future.set_result(outcome)
        except (LedgerError, IdempotencyKeyReused, WriteContention) as exc:
            job.future.set_exception(exc)

    # Single commands, with fresh reads and bounded re-runs.

    def _load(self, number: str) -> Card:
        try:
            card: Card = self.ledger.repository.get(card_id_for(number))
        except AggregateNotFoundError:
            raise CardNotFound(f"card {mask_card_number(number)} does not exist") from None
        return card

    def execute_now(
        self, number: str, command: Callable[[Card], Any], idem: IdempotentWrite | None = None
    ) -> Outcome:
        for attempt in range(CONFLICT_RETRIES_MAX):
            replay = _replay(idem, self._stored_answers(idem.keys if idem else ()))
            if replay is not None:
                return replay
            try:
                card = self._load(number)
                command(card)
            except LedgerError as exc:
                if idem is None:
                    raise
                return self._store_refusal(idem, exc)
            answer = _answer(view_of(card), idem)
            if not card.pending_events and idem is None:
                return answer
            probe = next(iter(card.pending_events), None)
            try:
                self._save_alone(card, answer, idem)
            except IntegrityError:
                if probe is not None and self._landed(probe):
                    return answer
                metrics.CONFLICT_RETRIES.inc()
                _backoff(attempt)
                continue
            return answer
        metrics.WRITE_CONTENTION.inc()
        raise WriteContention(f"card {mask_card_number(number)} is busy")

    def sell_now(self, number: str, ref: int, terms: CardTerms, amount_minor: int,
                 origin: Origin, idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        return self._create_now(
            number, partial(Card.sell, number, ref, terms, amount_minor, origin), idem
        )

    def _create_now(
        self, number: str, create: Callable[[], Card], idem: IdempotentWrite | None
    ) -> Outcome:
        try:
            return self._create_once(number, create, idem)
        except LedgerError as exc:
            if idem is None:
                raise
            return self._store_refusal(idem, exc)

    def _create_once(
        self, number: str, create: Callable[[], Card], idem: IdempotentWrite | None
    ) -> Outcome:
        replay = _replay(idem, self._stored_answers(idem.keys if idem else ()))
        if replay is not None:
            return replay
        card = create()
        answer = _answer(view_of(card), idem)
        probe = card.pending_events[0]
        try:
            self._save_alone(card, answer, idem)
        except IntegrityError:
            if self._landed(probe):
                return answer
            replay = _replay(idem, self._stored_answers(idem.keys if idem else ()))
            if replay is not None:
                return replay
            raise CardAlreadyExists(f"card {mask_card_number(number)} already exists") from None
        return answer

    def _save_alone(self, card: Card, answer: Outcome, idem: IdempotentWrite | None) -> None:
        """One card, its projection row and its stored answer, in one transaction."""
        rows = idem.rows(answer) if idem and isinstance(answer, StoredResponse) else ()
        keys = _keys_of(card.pending_events, idem) if idem else {}
        self.ledger.save(card, card_views=[view_of(card)], idempotency_rows=rows, event_keys=keys)

    def _store_refusal(self, idem: IdempotentWrite, exc: LedgerError) -> StoredResponse:
        answer = idem.refusal(exc)
        try:
            self.ledger.save(idempotency_rows=idem.rows(answer))
        except IntegrityError:
            # A racing retry stored its answer first; that first answer is the answer.
            replay = _replay(idem, self._stored_answers(idem.keys))
            if replay is None:
                raise
            return replay
        return answer

    def card_now(self, number: str) -> CardView:
        return view_of(self._load(number))

    # Lookups in the store, for idempotency and for commits whose acknowledgement was lost.

    def _stored_answers(
        self, keys: tuple[tuple[str, str], ...] | list[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        if not keys:
            return {}
        datastore: Any = self.ledger.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn, conn.cursor() as curs:
            return select_stored(curs, list(keys))

    def _landed(self, probe: Any) -> bool:
        """Did a commit that reported an error in fact store this event? Atomicity makes one
        event enough to answer for its whole transaction."""
        stored = self.ledger.mapper.to_stored_event(probe)
        rows = self._fetch(
            f"SELECT state FROM {self._table('events')}"  # noqa: S608 - the store's own table.
            " WHERE originator_id = %s AND originator_version = %s",
            (stored.originator_id, stored.originator_version),
        )
        row = rows[0] if rows else None
        return row is not None and bytes(row["state"]) == stored.state

    # Asynchronous facade for the HTTP handlers.

    async def _run(self, func: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(func)

    async def execute(self, number: str, command: Callable[[Card], Any],
                      idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        check_card_number(number)
        return await self._await(Job(number, command, idem))

    async def writer_problem(self) -> str | None:
        """Why commands cannot be written now, if they cannot."""
        if self._writer is not None and self._writer.is_alive():
            return None
        return "the ledger writer thread has stopped"

    async def _await(self, job: Job) -> Outcome:
        job.waiter = asyncio.get_running_loop().create_future()
        self.submit_job(job)
        return await job.waiter

    async def sell(self, number: str, ref: int, terms: CardTerms, amount_minor: int,
                   origin: Origin, idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        check_card_number(number)
        job = Job(number, _no_command, idem,
                  create=partial(Card.sell, number, ref, terms, amount_minor, origin))  # fmt: skip
        return await self._await(job)

    async def redeem(self, number: str, amount: int | Decimal, origin: Origin,
                     idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        """Pay `amount`: minor units, or a Decimal in the card's own currency."""
        return await self.execute(number, partial(_redeem, amount, origin), idem)

    def hold_ttl(self, ttl_seconds: int | None) -> int:
        return min(ttl_seconds or self.hold_ttl_seconds, self.hold_ttl_seconds)

    async def reserve(self, number: str, amount: int | Decimal | None, ttl_seconds: int | None,
                      origin: Origin, hold_id: str,
                      idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        """Hold `amount` (minor units, or a Decimal in the card's currency), or all available."""
        command = partial(_reserve, amount, self.hold_ttl(ttl_seconds), origin, hold_id)
        return await self.execute(number, command, idem)

    async def cancel_reservation(self, number: str, origin: Origin,
                                 idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        return await self.execute(number, card_call("cancel_reservation", origin=origin), idem)

    async def capture(self, number: str, hold_id: str, amount_minor: int | None, origin: Origin,
                      idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        command = card_call("capture", hold_id=hold_id, amount_minor=amount_minor, origin=origin)
        return await self.execute(number, command, idem)

    async def void(self, number: str, hold_id: str, origin: Origin,
                   idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        return await self.execute(number, card_call("void", hold_id=hold_id, origin=origin), idem)

    async def load(self, number: str, amount_minor: int, origin: Origin,
                   idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        command = card_call("load", amount_minor=amount_minor, origin=origin)
        return await self.execute(number, command, idem)

    async def refund(self, number: str, amount_minor: int, origin: Origin,
                     idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        command = card_call("refund", amount_minor=amount_minor, origin=origin)
        return await self.execute(number, command, idem)

    async def block(self, number: str, reason: str, origin: Origin,
                    idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        return await self.execute(number, card_call("block", reason=reason, origin=origin), idem)

    async def unblock(self, number: str, origin: Origin,
                      idem: IdempotentWrite | None = None) -> Outcome:  # fmt: skip
        return await self.execute(number, card_call("unblock", origin=origin), idem)

    async def release_expired_holds(self, number: str, now: datetime) -> Outcome:
        origin = Origin(occurred_at=now, actor="system:hold-expiry")
        return await self.execute(number, card_call("release_expired_holds", origin=origin))

    async def expire(self, number: str, now: datetime) -> Outcome:
        origin = Origin(occurred_at=now, actor="system:card-expiry")
        return await self.execute(number, card_call("expire", origin=origin))

    async def card_as_of(self, number: str, as_of: datetime) -> CardView:
        return await self._run(partial(self.card_as_of_now, number, as_of))

    def card_as_of_now(self, number: str, as_of: datetime) -> CardView:
        """The card as its events had made it at `as_of`, from the events alone.

        Events are folded in their recorded order up to the first that occurred after `as_of`.
        """
        check_card_number(number)
        card: Card | None = None
        for domain_event in self.ledger.events.get(card_id_for(number)):
            if domain_event.occurred_at > as_of:  # type: ignore[attr-defined]
                break
            card = domain_event.mutate(card)  # type: ignore[attr-defined]
        if card is None:
            masked = mask_card_number(number)
            raise CardNotFound(f"card {masked} did not exist at {as_of.isoformat()}")
        return view_of(card)

    async def history(
        self, number: str, after_version: int, limit: int, as_of: datetime | None = None
    ) -> list[HistoryEntry]:
        return await self._run(
            partial(card_history, self.ledger, number, after_version, limit, as_of)
        )

    async def verify(self) -> AuditReport:
        return await self._run(partial(verify_ledger, self.ledger, self.ledger.events_table()))


def deliver(jobs: list[Job]) -> None:
    """Hand each settled job's outcome to its waiting coroutine, one call per event loop, or
    to the process that sent it, one message per process. Each is answered once, even if a
    failed batch is delivered again."""
    ready: dict[asyncio.AbstractEventLoop, list[Job]] = {}
    replies: dict[Any, list[tuple[int, Future[Outcome]]]] = {}
    for job in jobs:
        if not job.future.done():
            continue
        if job.waiter is not None:
            ready.setdefault(job.waiter.get_loop(), []).append(job)
        if job.reply is not None:
            reply, job.reply = job.reply, None
            replies.setdefault(reply.channel, []).append((reply.request_id, job.future))
    for channel, settled in replies.items():
        channel.answer(settled)
    for loop, settled in ready.items():
        with contextlib.suppress(RuntimeError):  # That loop has closed: nobody is waiting.
            loop.call_soon_threadsafe(_settle_waiters, settled)


def _settle_waiters(jobs: list[Job]) -> None:
    """On the waiters' event loop."""
    for job in jobs:
        waiter = job.waiter
        if waiter is None or waiter.done():  # Cancelled: its request went away.
            continue
        exc = job.future.exception()
        if exc is None:
            waiter.set_result(job.future.result())
        else:
            waiter.set_exception(exc)


def _answer(view: CardView, idem: IdempotentWrite | None) -> Outcome:
    """What the request is answered with: the card's view, rendered and kept when keyed."""
    return idem.answer(view) if idem else view


def _keys_of(
    events: Any, idem: IdempotentWrite
) -> dict[tuple[uuid.UUID, int], tuple[str | None, str | None]]:
    labels = idem.labels()
    return {(e.originator_id, e.originator_version): labels for e in events}


def _no_command(_: Card) -> None:
    """A sale's job creates its card; it has nothing to apply to an existing one."""


@dataclass(frozen=True)
class CardCall:
    """A card command as data, a method's name and its arguments: it pickles, so the writer may
    be another process. Commands that need the card first (an amount in its currency) are
    module-level functions under `partial`, which pickle too."""

    method: str
    kwargs: dict[str, Any]

    def __call__(self, card: Card) -> None:
        getattr(card, self.method)(**self.kwargs)


def card_call(method: str, **kwargs: Any) -> CardCall:
    return CardCall(method, kwargs)


def _redeem(amount: int | Decimal, origin: Origin, card: Card) -> None:
    card.redeem(_minor(amount, card), origin)


def _reserve(
    amount: int | Decimal | None, ttl: int, origin: Origin, hold_id: str, card: Card
) -> None:
    card.reserve(None if amount is None else _minor(amount, card), ttl, origin, hold_id)


def _minor(amount: int | Decimal, card: Card) -> int:
    """Minor units as given, or a decimal amount converted exactly in the card's currency."""
    if isinstance(amount, Decimal):
        return to_minor(amount, currency(card.terms.currency).minor_digits)
    return amount


def _replay(
    idem: IdempotentWrite | None, stored: dict[tuple[str, str], dict[str, Any]]
) -> StoredResponse | None:
    """The first answer stored under any of the write's keys, if its request was the same."""
    if idem is None:
        return None
    for scope_key in idem.keys:
        row = stored.get(scope_key)
        if row is None:
            continue
        if row["request_hash"] != idem.request_hash:
            raise IdempotencyKeyReused(
                f"key {scope_key[1]!r} was first used with a different request"
            )
        return StoredResponse(
            row["status_code"], bytes(row["response_body"]), row["media_type"], replayed=True
        )
    return None
