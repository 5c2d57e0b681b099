"""The ledger writer in a process of its own (api/writer_process.py): workers send it commands
over a Unix socket, it batches them with everyone else's, and answers each once its batch has
committed. Here the writer serves from a thread of the test process, on a real PostgreSQL; the
served tests below run it as `giftledger serve` does, in a process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path

import httpx
import pytest

from api.errors import IdempotencyKeyReused, OutcomeUnknown, WriterUnavailable
from api.idempotency import IdempotentWrite
from api.resico import resico_card
from api.service import CardLedger, CardService, Job, _redeem, card_call, ledger_env
from api.writer_process import (
    FRAME_HEADER,
    METRICS_REFRESH_SECONDS,
    RemoteCardService,
    WriterClient,
    WriterServer,
    frame,
    pickles,
)
from ledger.card import Card, CardTerms, Origin, card_id_for
from ledger.errors import InsufficientFunds
from projections.database import eventsourcing_env
from tests.conftest import TEST_JWT_SECRET
from tests.integration.served import is_ledger_writer, served, server_logs

NUMBER = "7000000000000001"
TERMS = CardTerms("open", "EUR", False, True, True, date(2099, 1, 1), None, 2)
START_MINOR = 1_000_000
PAYMENTS_PER_WORKER = 100
WORKERS = 2
WRITER_RESTART_SECONDS_MAX = 30


def origin(client: str = "pos") -> Origin:
    return Origin(occurred_at=datetime.now(UTC), actor=client, location_code="SHOP1", site_id=1)


@pytest.fixture
def socket_path() -> Iterator[str]:
    # A Unix socket's path is limited to 107 bytes; pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="gl-writer-")
    try:
        yield os.path.join(directory, "writer.sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def open_ledger(database_url: str) -> CardLedger:
    return CardLedger(env=ledger_env(eventsourcing_env(database_url)))


@contextmanager
def writer_server(database_url: str, path: str) -> Iterator[WriterServer]:
    """The writer process's parts, serving from a thread."""
    ledger = open_ledger(database_url)
    service = CardService(ledger, 900)
    server = WriterServer(service, path)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=10)
        service.close()
        ledger.close()


@asynccontextmanager
async def worker(database_url: str, path: str) -> AsyncIterator[RemoteCardService]:
    """A worker's service: its ledger for reads, its commands to the writer."""
    ledger = open_ledger(database_url)
    service = RemoteCardService(ledger, 900, WriterClient(path))
    try:
        yield service
    finally:
        service.close()
        ledger.close()


def stored_topics(ledger: CardLedger, number: str) -> list[str]:
    return [type(e).__name__ for e in ledger.events.get(card_id_for(number))]


def batches_committed(families) -> float:
    family = next(f for f in families if f.name == "giftledger_batch_commands")
    return next(s.value for s in family.samples if s.name.endswith("_count"))


def test_every_command_of_the_service_pickles_and_applies_as_the_call_it_stands_for():
    # Given two copies of one card
    when = origin("pos")
    cards = [Card.sell(NUMBER, 1, TERMS, START_MINOR, when) for _ in range(2)]
    # When one gets commands sent through pickle and the other the direct calls
    commands = [
        partial(_redeem, Decimal("1.25"), when),
        card_call("reserve", amount_minor=500, ttl_seconds=600, origin=when, hold_id="h1"),
        card_call("capture", hold_id="h1", amount_minor=200, origin=when),
        card_call("load", amount_minor=50, origin=when),
        card_call("block", reason="audit", origin=when),
        card_call("unblock", origin=when),
    ]
    for command in commands:
        pickle.loads(pickle.dumps(command))(cards[0])
    cards[1].redeem(125, when)
    cards[1].reserve(500, 600, when, "h1")
    cards[1].capture("h1", 200, when)
    cards[1].load(50, when)
    cards[1].block("audit", when)
    cards[1].unblock(when)
    # Then both recorded the same events
    sent, direct = ([(type(e).__name__, e.__dict__ | {"timestamp": None}) for e in c.pending_events]
                    for c in cards)  # fmt: skip
    assert sent == direct
    assert cards[0].balance_minor == START_MINOR - 125 - 200 + 50


def test_a_frame_holds_its_objects_in_order():
    payload = b"".join(pickle.dumps(n) for n in (1, "two", (3,)))
    data = frame(payload)
    (size,) = FRAME_HEADER.unpack(data[: FRAME_HEADER.size])
    assert size == len(payload)
    assert list(pickles(data[FRAME_HEADER.size :])) == [1, "two", (3,)]


async def test_payments_from_two_workers_are_batched_together_and_answered_once_each(
    world, database_url, socket_path
):
    with writer_server(database_url, socket_path):
        async with (
            worker(database_url, socket_path) as one,
            worker(database_url, socket_path) as two,
        ):
            sold = await one.sell(NUMBER, 1, TERMS, START_MINOR, origin())
            assert sold.balance_minor == START_MINOR
            await one.client.fetch_metrics()
            before = batches_committed(one.client.writer_families)
            payments = [w.redeem(NUMBER, 1, origin()) for w in (one, two)
                        for _ in range(PAYMENTS_PER_WORKER)]  # fmt: skip
            answers = await asyncio.gather(*payments)
            await two.client.fetch_metrics()
            batches = batches_committed(two.client.writer_families) - before
            ledger = one.ledger
            topics = stored_topics(ledger, NUMBER)
    payments = WORKERS * PAYMENTS_PER_WORKER
    # Each answer is its own payment's: one version each, every balance on the way down.
    assert sorted(a.version for a in answers) == list(range(2, payments + 2))
    assert sorted(a.balance_minor for a in answers) == list(
        range(START_MINOR - payments, START_MINOR)
    )
    assert topics == ["Sold"] + ["Redeemed"] * payments
    assert 1 <= batches < payments, "the two workers' payments shared batches"


async def test_a_refusal_reaches_the_worker_as_the_same_error_and_records_nothing(
    world, database_url, socket_path
):
    with writer_server(database_url, socket_path):
        async with worker(database_url, socket_path) as service:
            await service.sell(NUMBER, 1, TERMS, 100, origin())
            with pytest.raises(InsufficientFunds) as refused:
                await service.redeem(NUMBER, 101, origin())
            paid = await service.redeem(NUMBER, 100, origin())
            topics = stored_topics(service.ledger, NUMBER)
    assert refused.value.code == InsufficientFunds.code
    assert paid.balance_minor == 0
    assert topics == ["Sold", "Redeemed"]


async def test_a_keyed_retry_replays_its_answer_and_a_reused_key_is_refused(
    world, database_url, socket_path
):
    def keyed(request_hash: str) -> IdempotentWrite:
        return IdempotentWrite((("client:pos", "k1"),), request_hash, 200, resico_card)

    with writer_server(database_url, socket_path):
        async with worker(database_url, socket_path) as service:
            await service.sell(NUMBER, 1, TERMS, 1000, origin())
            first, retry = await asyncio.gather(
                service.redeem(NUMBER, 10, origin(), keyed("h")),
                service.redeem(NUMBER, 10, origin(), keyed("h")),
            )
            with pytest.raises(IdempotencyKeyReused):
                await service.redeem(NUMBER, 20, origin(), keyed("other"))
            topics = stored_topics(service.ledger, NUMBER)
    assert first.body == retry.body
    assert {first.replayed, retry.replayed} == {False, True}
    assert topics == ["Sold", "Redeemed"]


async def test_a_command_that_does_not_pickle_fails_alone(world, database_url, socket_path):
    with writer_server(database_url, socket_path):
        async with worker(database_url, socket_path) as service:
            await service.sell(NUMBER, 1, TERMS, 1000, origin())
            local = origin()
            unpicklable, paid = await asyncio.gather(
                service.execute(NUMBER, lambda card: card.redeem(1, local)),
                service.redeem(NUMBER, 2, origin()),
                return_exceptions=True,
            )
            topics = stored_topics(service.ledger, NUMBER)
    assert isinstance(unpicklable, pickle.PicklingError | AttributeError), unpicklable
    assert paid.balance_minor == 998
    assert topics == ["Sold", "Redeemed"]


async def test_without_a_writer_a_command_is_refused_as_unavailable(
    world, database_url, socket_path
):
    async with worker(database_url, socket_path) as service:
        with pytest.raises(WriterUnavailable):
            await service.redeem(NUMBER, 1, origin())
        assert await service.writer_problem() is not None


@contextmanager
def vanishing_writer(path: str) -> Iterator[None]:
    """A writer that takes one connection, reads the start of a frame, and closes it; its
    socket is gone on exit, for another writer to take its place."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def take_and_vanish() -> None:
        conn, _ = listener.accept()
        conn.recv(FRAME_HEADER.size)
        conn.close()

    thread = threading.Thread(target=take_and_vanish, daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join(timeout=5)
        listener.close()
        os.unlink(path)


async def test_a_writer_gone_before_answering_leaves_the_outcome_unknown(socket_path):
    """It took the command and closed: the command may have committed, so no retry is advised
    (a Retry-After without the request's Idempotency-Key could pay twice)."""
    client = WriterClient(socket_path)
    try:
        with vanishing_writer(socket_path), pytest.raises(OutcomeUnknown):
            await client.submit(Job(NUMBER, card_call("unblock", origin=origin()), None))
    finally:
        client.close()


async def test_after_a_writer_is_gone_the_next_command_goes_to_its_successor(
    world, database_url, socket_path
):
    """The first connection's closing fails only what was sent on it; a command after it
    opens a new connection, to the writer that took the socket's place."""
    async with worker(database_url, socket_path) as service:
        with vanishing_writer(socket_path), pytest.raises(OutcomeUnknown):
            await service.sell(NUMBER, 1, TERMS, 1000, origin())
        with writer_server(database_url, socket_path):
            sold = await service.sell(NUMBER, 1, TERMS, 1000, origin())
            paid = await service.redeem(NUMBER, 1, origin())
    assert sold.balance_minor == 1000
    assert paid.balance_minor == 999


async def test_a_stopping_writer_commits_what_it_took_and_refuses_the_rest(
    world, database_url, socket_path
):
    with writer_server(database_url, socket_path) as server:
        async with worker(database_url, socket_path) as service:
            await service.sell(NUMBER, 1, TERMS, START_MINOR, origin())
            payments = [asyncio.ensure_future(service.redeem(NUMBER, 1, origin()))
                        for _ in range(PAYMENTS_PER_WORKER)]  # fmt: skip
            await asyncio.sleep(0)  # Sent in one frame, which the writer takes in part or whole.
            await asyncio.to_thread(server.stop)
            answers = await asyncio.gather(*payments, return_exceptions=True)
            late = await asyncio.gather(service.redeem(NUMBER, 1, origin()), return_exceptions=True)
            topics = stored_topics(service.ledger, NUMBER)
    paid = [a for a in answers if not isinstance(a, BaseException)]
    refused = [a for a in answers if isinstance(a, BaseException)]
    assert all(isinstance(e, WriterUnavailable) for e in refused), refused
    assert isinstance(late[0], WriterUnavailable)
    assert topics.count("Redeemed") == len(paid), "every payment answered is recorded, no other"


# The real `giftledger serve`, whose writer is a process of its own.


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _serving_pid(port: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(port).encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no `giftledger serve` on port {port}")


def _writer_of(serve_pid: int) -> int:
    deadline = time.monotonic() + WRITER_RESTART_SECONDS_MAX
    while time.monotonic() < deadline:
        writers = [pid for pid in _children(serve_pid) if is_ledger_writer(pid)]
        if writers:
            return writers[0]
        time.sleep(0.1)
    raise AssertionError("no ledger writer process")


async def writer_batches_in_metrics(api: httpx.AsyncClient) -> float:
    """The batch count the worker's /metrics shows, once it shows some (it refreshes the
    writer's figures every METRICS_REFRESH_SECONDS)."""
    deadline = time.monotonic() + METRICS_REFRESH_SECONDS * 10
    while True:
        text = (await api.get("/metrics")).text
        line = next((line for line in text.splitlines()
                     if line.startswith("giftledger_batch_commands_count")), "x 0")  # fmt: skip
        count = float(line.split()[-1])
        if count >= 1 or time.monotonic() > deadline:
            return count
        await asyncio.sleep(METRICS_REFRESH_SECONDS / 4)


async def test_served_a_killed_writer_is_restarted_and_no_payment_is_lost_or_invented(
    world, http, database_url, tmp_path, pool
):
    env = os.environ | {"GIFTLEDGER_DATABASE_URL": database_url,
                        "GIFTLEDGER_JWT_SECRET": TEST_JWT_SECRET}  # fmt: skip
    issued = await http.post(
        "/v1/cards", json={"card_type": "fixed16", "amount_minor": START_MINOR},
        headers=world.pos.headers,
    )  # fmt: skip
    number = issued.json()["number"]
    async with served(env, tmp_path) as base, httpx.AsyncClient(base_url=base, timeout=30) as api:
        serve_pid = _serving_pid(int(base.rsplit(":", 1)[1]))
        writer = _writer_of(serve_pid)
        assert (await api.get("/health/ready")).status_code == 200

        async def pay() -> int:
            answer = await api.post(f"/v1/cards/{number}/redeem", json={"amount_minor": 1},
                                    headers=world.pos.headers)  # fmt: skip
            return answer.status_code

        before = await asyncio.gather(*(pay() for _ in range(20)))
        metrics = await writer_batches_in_metrics(api)
        os.kill(writer, signal.SIGKILL)
        during = await asyncio.gather(*(pay() for _ in range(20)))
        restarted = _writer_of(serve_pid)
        deadline = time.monotonic() + WRITER_RESTART_SECONDS_MAX
        while (await api.get("/health/ready")).status_code != 200:
            assert time.monotonic() < deadline, "the writer was not restarted"
            await asyncio.sleep(0.2)
        after = await asyncio.gather(*(pay() for _ in range(20)))
    assert restarted != writer
    restart_lines = [json.loads(line) for line in server_logs(tmp_path).splitlines()
                     if "restarting it" in line]  # fmt: skip
    assert restart_lines, "the restart is logged, in the service's JSON lines"
    assert restart_lines[0]["logger"] == "giftledger.writer"
    assert before == [200] * 20
    assert after == [200] * 20
    assert set(during) <= {200, 503}, "while the writer is down, answers are 503, never 500"
    assert metrics >= 1, "the writer's batches are in the worker's /metrics"
    redeemed = await pool.fetchval(
        "SELECT count(*) FROM giftledger_events e JOIN card_views c ON c.card_id ="
        " e.originator_id WHERE c.number = $1 AND e.topic LIKE '%Redeemed'", number,
    )  # fmt: skip
    acknowledged = before.count(200) + during.count(200) + after.count(200)
    # A 503 while the writer died may or may not have been applied (outcome_unknown); every
    # 200 was, once.
    assert acknowledged <= redeemed <= acknowledged + during.count(503)
    assert not is_ledger_writer(restarted), "the writer stopped with the service"
