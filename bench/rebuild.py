"""Rebuild the projections from 1,000,000 events: generate them, then time `projections rebuild`."""

from __future__ import annotations

import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.service import CardLedger, ledger_env, open_ledger
from bench.seed import BENCH_CARD_TYPE, card_number
from bench.server import venv_command
from ledger.card import Card, CardTerms, Origin
from projections.database import eventsourcing_env

REBUILD_EVENTS = 1_000_000
REBUILD_CARDS = 10_000
EVENTS_PER_CARD = REBUILD_EVENTS // REBUILD_CARDS  # One Sold, then Redeemed events.
REBUILD_BALANCE_MINOR = 1_000_000
GENERATOR_PROCESSES = 2
REF_BASE = 1_000_000_000
REBUILD_TIMEOUT_SECONDS = 300
KIB = 1024
TIME_RSS_PATTERN = re.compile(r"Maximum resident set size \(kbytes\): (\d+)")


@dataclass(frozen=True)
class RebuildResult:
    events: int
    generate_seconds: float
    rebuild_seconds: float
    peak_rss_mib: float
    output: str


def _card_with_history(index: int, terms: CardTerms, origin: Origin) -> Card:
    card = Card.sell(card_number(index), REF_BASE + index, terms, REBUILD_BALANCE_MINOR, origin)
    for _ in range(EVENTS_PER_CARD - 1):
        card.redeem(1, origin)
    return card


def _copy_cards(url: str, first: int, last: int) -> int:
    """COPY the events of cards [first, last) into the event table, in one transaction.

    The events come from the real aggregate and the ledger's own mapper, so they replay exactly
    as written ones do; the card projection is left to the rebuild being measured.
    """
    origin = Origin(datetime.now(UTC), "bench:rebuild", "SHOP1", 1)
    terms = CardTerms(BENCH_CARD_TYPE.name, BENCH_CARD_TYPE.currency, True, True, True, None)
    # generate_events created the tables; several processes creating them at once collide in
    # PostgreSQL's catalog ("tuple concurrently updated").
    ledger = CardLedger(env={**ledger_env(eventsourcing_env(url)), "CREATE_TABLE": "n"})
    recorder: Any = ledger.recorder
    table = f"{recorder.datastore.schema}.{recorder.events_table_name}"
    written = 0
    try:
        with (
            recorder.datastore.transaction(commit=True) as curs,
            curs.copy(
                f"COPY {table} (originator_id, originator_version, topic, state) FROM STDIN"
            ) as copy,
        ):
            for index in range(first, last):
                for event in _card_with_history(index, terms, origin).collect_events():
                    stored = ledger.mapper.to_stored_event(event)
                    copy.write_row(
                        (stored.originator_id, stored.originator_version, stored.topic,
                         stored.state)
                    )  # fmt: skip
                    written += 1
    finally:
        ledger.close()
    return written


def generate_events(url: str) -> float:
    """Write REBUILD_EVENTS events, one COPY per process; returns the seconds it took."""
    started = time.perf_counter()
    open_ledger(url).close()  # Creates the event table.
    share = -(-REBUILD_CARDS // GENERATOR_PROCESSES)
    ranges = [(i, min(i + share, REBUILD_CARDS)) for i in range(0, REBUILD_CARDS, share)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=GENERATOR_PROCESSES, mp_context=context) as pool:
        written = sum(pool.map(_copy_cards, [url] * len(ranges), *zip(*ranges, strict=True)))
    assert written == REBUILD_EVENTS, written
    return time.perf_counter() - started


def _rebuild_command() -> list[str]:
    command = [venv_command("giftledger"), "projections", "rebuild"]
    time_program = shutil.which("time", path="/usr/bin")
    return [time_program, "-v", *command] if time_program else command


def rebuild(url: str) -> tuple[float, float, str]:
    """Run `giftledger projections rebuild`; returns (seconds, peak RSS MiB, its output)."""
    env = {**os.environ, "GIFTLEDGER_DATABASE_URL": url}
    started = time.perf_counter()
    done = subprocess.run(  # noqa: S603 - our own console script.
        _rebuild_command(), env=env, capture_output=True, text=True,
        timeout=REBUILD_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"rebuild failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    found = TIME_RSS_PATTERN.search(done.stderr)
    # Without /usr/bin/time, the largest child so far stands in (an upper bound).
    peak_kib = (
        int(found.group(1)) if found else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    return seconds, peak_kib / KIB, done.stdout.strip()


def measure_rebuild(url: str) -> RebuildResult:
    generate_seconds = generate_events(url)
    seconds, peak_mib, output = rebuild(url)
    return RebuildResult(REBUILD_EVENTS, generate_seconds, seconds, peak_mib, output)
