"""The ledger writer in a process of its own, shared by every worker of `giftledger serve`.

In a worker, the event loop and an in-process writer thread share one GIL: a payment's HTTP
work and its ledger work are done one after the other on one core. With the writer here, the
workers' event loops keep their cores to themselves, and one writer batches the commands of all
workers together (no conflicts between two writers of one instance).

The protocol, over a Unix socket in a private directory (only this user can connect):

- a worker sends frames of one or more requests, each a pickled (request id, kind, body): a
  COMMAND, whose body is (card number, command, idempotent write, create), or a METRICS
  request, whose body is None;
- the writer answers each request once, in frames of pickled (request id, failed, outcome);
  a batch's answers to one worker go out in one frame, after the batch has committed. A METRICS
  answer is the writer's metric families (batches, conflicts, snapshots), which the worker
  exports as its own (api/metrics.py).

A frame is a 4-byte big-endian length, then that many bytes. Pickle is safe here because only
this service's own processes, run by the same user, can reach the socket.

The writer stops when `giftledger serve` tells it to, after the workers have stopped, or
when `giftledger serve` is gone; SIGTERM and SIGINT, which a terminal or a process manager may
send to the whole process group, do not stop it before the workers have drained.

Should the writer stop while a command is with it, the worker answers `outcome_unknown`: the
command may have committed. A retry with the same Idempotency-Key then gets the first answer.
A command the writer never received is answered 503 `writer_unavailable`, with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import logging
import logging.config
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from api import metrics
from api.errors import OutcomeUnknown, WriteContention, WriterUnavailable
from api.logs import logging_dict
from api.redaction import install_log_redaction
from api.service import (
    CardLedger,
    CardService,
    Job,
    Outcome,
    deliver,
    name_os_thread,
    open_ledger,
    service_for,
)
from api.settings import Settings

logger = logging.getLogger("giftledger.writer")

FRAME_HEADER = struct.Struct(">I")
# A frame holds at most a batch's worth of commands or answers, a few hundred bytes each.
FRAME_BYTES_MAX = 64 * 1024 * 1024
SOCKET_NAME = "writer.sock"
# The OS name of the writer's threads that read a worker's commands (the batches are committed
# by service.WRITER_OS_THREAD_NAME): `make bench` counts both as the writer's CPU.
CONNECTION_OS_THREAD_NAME = "ledger-conn"
LISTEN_BACKLOG = 128
# How long `giftledger serve` waits for a new writer to accept connections.
WRITER_START_TIMEOUT_SECONDS = 60
WRITER_STOP_TIMEOUT_SECONDS = 20
# How often the supervisor checks that the writer is still there.
WATCH_SECONDS = 1.0
# Restarts of a writer that keeps dying are spaced by this much, so a broken database does not
# turn into a busy loop of start-ups.
RESTART_DELAY_SECONDS = 1.0
START_POLL_SECONDS = 0.05
# How often a worker fetches the writer's metrics, which its /metrics then serves: they are at
# most this old (Prometheus scrapes every 15 s or more; a fetch is one local round trip).
METRICS_REFRESH_SECONDS = 1.0
PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
COMMAND = "command"
METRICS = "metrics"


def frame(payload: bytes) -> bytes:
    if len(payload) > FRAME_BYTES_MAX:
        raise ValueError(f"a frame of {len(payload)} bytes is over {FRAME_BYTES_MAX}")
    return FRAME_HEADER.pack(len(payload)) + payload


def pickles(payload: bytes) -> Iterable[Any]:
    """The objects of a frame, pickled one after the other."""
    stream = io.BytesIO(payload)
    while stream.tell() < len(payload):
        yield pickle.load(stream)  # noqa: S301 - our own processes only (see the docstring).


def answer_bytes(request_id: int, future: Future[Outcome]) -> bytes:
    exc = future.exception()
    if exc is None:
        return pickle.dumps((request_id, False, future.result()), PICKLE_PROTOCOL)
    try:
        return pickle.dumps((request_id, True, exc), PICKLE_PROTOCOL)
    except Exception:  # An error of a library that does not pickle: keep its words.
        plain = RuntimeError(f"{type(exc).__name__}: {exc}")
        return pickle.dumps((request_id, True, plain), PICKLE_PROTOCOL)


# The writer's side.


class Channel:
    """One worker's connection; answers are sent by the writer thread, under a lock."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, payload: bytes) -> None:
        with self.lock, contextlib.suppress(OSError):  # The worker went away: nobody waits.
            self.conn.sendall(frame(payload))

    def answer(self, settled: list[tuple[int, Future[Outcome]]]) -> None:
        self.send(b"".join(answer_bytes(request_id, future) for request_id, future in settled))


@dataclass
class Reply:
    """Where a job's outcome goes: service.deliver calls channel.answer once per batch."""

    channel: Channel
    request_id: int


class WriterServer:
    def __init__(self, service: CardService, path: str) -> None:
        self.service = service
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under another name and renamed once listening: a worker that finds the path
        # can connect to it.
        binding = f"{path}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(binding)
        self.listener.bind(binding)
        self.listener.listen(LISTEN_BACKLOG)
        os.replace(binding, path)
        self.stopping = threading.Event()
        # Held to submit a command and to stop: once stopped, nothing more enters the queue, so
        # service.close() commits everything that did.
        self._submitting = threading.Lock()

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                break  # Closed by stop().
            name = "giftledger-writer-conn"
            threading.Thread(target=self._serve_conn, args=(conn,), name=name, daemon=True).start()

    def stop(self) -> None:
        """Take no more connections or commands; those queued are committed by close()."""
        with self._submitting:
            self.stopping.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _serve_conn(self, conn: socket.socket) -> None:
        name_os_thread(CONNECTION_OS_THREAD_NAME)
        channel = Channel(conn)
        stream = conn.makefile("rb")
        try:
            while (header := stream.read(FRAME_HEADER.size)) and len(header) == FRAME_HEADER.size:
                (size,) = FRAME_HEADER.unpack(header)
                payload = stream.read(size)
                if len(payload) != size:
                    break
                for request_id, kind, body in pickles(payload):
                    if kind == METRICS:
                        families = metrics.writer_families()
                        channel.send(pickle.dumps((request_id, False, families), PICKLE_PROTOCOL))
                        continue
                    number, command, idem, create = body
                    self._submit(channel, request_id, Job(number, command, idem, create=create))
        except ConnectionError:
            pass  # The worker stopped: what it sent and the writer took is still committed.
        except Exception:
            logger.exception("a worker's connection to the writer failed")
        finally:
            stream.close()
            conn.close()

    def _submit(self, channel: Channel, request_id: int, job: Job) -> None:
        job.reply = Reply(channel, request_id)
        try:
            with self._submitting:
                if self.stopping.is_set():
                    raise WriterUnavailable("the ledger writer is stopping")
                self.service.submit_job(job)
        except WriteContention as exc:  # Not applied: answered at once, the worker may retry.
            job.future.set_exception(exc)
            deliver([job])


def run_writer(path: str, settings: Settings, url: str, stop: Connection) -> None:
    """The writer process: serve the socket until `stop`, a pipe from `giftledger serve`, is
    closed (by WriterSupervisor.stop, or by the system when that process is gone)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # See the module's docstring.
    # The workers' log format and redaction: a spawned process starts with neither.
    logging.config.dictConfig(logging_dict(settings))
    install_log_redaction()
    # Refusals for lack of room or of retries reach the worker as errors, which counts them:
    # counted here as well, they would count twice where workers share PROMETHEUS_MULTIPROC_DIR.
    metrics.WRITE_CONTENTION = metrics.Uncounted()  # type: ignore[assignment]
    ledger: CardLedger = open_ledger(url, settings.card_cache_size)
    service = service_for(ledger, settings)
    server = WriterServer(service, path)

    def watch() -> None:
        # A pipe rather than a multiprocessing.Event: setting an Event that a killed writer was
        # waiting on blocks forever, which would hang `giftledger serve` on exit.
        stop.poll(None)
        server.stop()

    threading.Thread(target=watch, name="giftledger-writer-watch", daemon=True).start()
    from api.app import tune_runtime  # api.app imports this module.

    tune_runtime()
    server.serve()
    service.close()  # Commits and answers every command already queued.
    ledger.close()


# The workers' side.


class _Connection:
    """One connection to the writer: the commands waiting for an answer on it, and those to
    send at the end of this turn of the event loop. Each connection answers only its own: a
    connection that closes fails its commands, never those of the next connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.outbox: list[tuple[int, bytes]] = []
        self.flush_scheduled = False
        self.task: asyncio.Task[None] | None = None

    @property
    def closing(self) -> bool:
        return self.writer.transport.is_closing()

    def send(self, request_id: int, request: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self.pending[request_id] = waiter
        self.outbox.append((request_id, request))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_soon(self.flush)
        return waiter

    def flush(self) -> None:
        """Every command of one turn of the event loop, in one frame."""
        self.flush_scheduled = False
        outbox, self.outbox = self.outbox, []
        if self.closing:
            self._fail([request_id for request_id, _ in outbox],
                       WriterUnavailable("the ledger writer closed the connection"))  # fmt: skip
            return
        self.writer.transport.write(frame(b"".join(request for _, request in outbox)))

    async def read_answers(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(FRAME_HEADER.size)
                (size,) = FRAME_HEADER.unpack(header)
                for request_id, failed, outcome in pickles(await self.reader.readexactly(size)):
                    waiter = self.pending.pop(request_id, None)
                    if waiter is None or waiter.done():
                        continue  # Its request went away.
                    if failed:
                        waiter.set_exception(outcome)
                    else:
                        waiter.set_result(outcome)
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self.writer.close()
            unsent = {request_id for request_id, _ in self.outbox}
            self._fail(list(unsent), WriterUnavailable("the ledger writer closed the connection"))
            self._fail(list(self.pending),
                       OutcomeUnknown("the ledger writer stopped before it answered"))  # fmt: skip

    def _fail(self, request_ids: list[int], exc: Exception) -> None:
        for request_id in request_ids:
            waiter = self.pending.pop(request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)


class WriterClient:
    """A worker's connection to the writer, on the worker's event loop; a new one is made when
    the last has closed (the writer restarted)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._connection: _Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self.writer_families: list[Any] = []

    async def submit(self, job: Job) -> Outcome:
        request_id = next(self._ids)
        # Pickled first: a command that does not pickle fails alone, before anything is sent.
        body = (job.number, job.command, job.idem, job.create)
        request = pickle.dumps((request_id, COMMAND, body), PICKLE_PROTOCOL)
        try:
            outcome: Outcome = await self._ask(request_id, request)
        except WriteContention:
            metrics.WRITE_CONTENTION.inc()
            raise
        return outcome

    async def fetch_metrics(self) -> None:
        """Keep the writer's latest metric families, for this worker's /metrics."""
        request_id = next(self._ids)
        request = pickle.dumps((request_id, METRICS, None), PICKLE_PROTOCOL)
        self.writer_families = await self._ask(request_id, request)

    async def refresh_metrics(self) -> None:
        """Until cancelled; a writer that cannot answer keeps its last figures."""
        while True:
            with contextlib.suppress(WriteContention, OutcomeUnknown):
                await self.fetch_metrics()
            await asyncio.sleep(METRICS_REFRESH_SECONDS)

    async def _ask(self, request_id: int, request: bytes) -> Any:
        connection = await self._connected()
        waiter = connection.send(request_id, request)
        try:
            return await waiter
        finally:
            connection.pending.pop(request_id, None)

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closing:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            connection = self._connection
            if connection is None or connection.closing:
                try:
                    reader, writer = await asyncio.open_unix_connection(self.path)
                except OSError as exc:
                    raise WriterUnavailable(f"the ledger writer is unreachable: {exc}") from None
                connection = _Connection(reader, writer)
                # Held by the connection: the event loop keeps only a weak reference to a
                # task, and a reader collected as garbage would close the connection under the
                # waiting commands.
                connection.task = asyncio.get_running_loop().create_task(connection.read_answers())
                self._connection = connection
        return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.writer.close()


class RemoteCardService(CardService):
    """A worker's CardService whose writes go to the writer process; reads stay local."""

    def __init__(self, ledger: CardLedger, hold_ttl_seconds: int, client: WriterClient) -> None:
        super().__init__(ledger, hold_ttl_seconds, writer_thread=False)
        self.client = client

    async def _await(self, job: Job) -> Outcome:
        return await self.client.submit(job)

    def submit_job(self, job: Job) -> Future[Outcome]:
        # This process has no writer thread: a job queued here would wait forever.
        raise TypeError("commands go to the writer process, through the asynchronous methods")

    async def writer_problem(self) -> str | None:
        try:
            await self.client.fetch_metrics()  # One round trip to the writer.
        except (WriteContention, OutcomeUnknown) as exc:
            return str(exc)
        return None

    def close(self) -> None:
        self.client.close()


# `giftledger serve`'s side.


class WriterSupervisor:
    """Starts the writer process, restarts it if it dies, and stops it last."""

    def __init__(self, settings: Settings, url: str, directory: str) -> None:
        self.settings = settings
        self.url = url
        self.path = os.path.join(directory, SOCKET_NAME)
        self._context = multiprocessing.get_context("spawn")
        # Held to start a writer and to stop: no writer starts once stop() has begun.
        self._lock = threading.Lock()
        self._stopping = False
        self._process: Any = None
        self._stop_writer: Connection | None = None

    def start(self) -> None:
        with self._lock:
            self._spawn()
        name = "giftledger-writer-supervisor"
        threading.Thread(target=self._watch, name=name, daemon=True).start()

    def _spawn(self) -> None:
        if self._stop_writer is not None:
            self._stop_writer.close()  # The previous writer's pipe.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        stop, self._stop_writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_writer, args=(self.path, self.settings, self.url, stop),
            name="giftledger-writer",
        )  # fmt: skip
        process.start()
        stop.close()  # The writer's end: only the writer may hold it, or it would never see EOF.
        self._process = process
        deadline = time.monotonic() + WRITER_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline and process.is_alive():
            if os.path.exists(self.path):  # Renamed into place once it listens.
                return
            time.sleep(START_POLL_SECONDS)
        raise RuntimeError("the ledger writer did not start")

    def _watch(self) -> None:
        while True:
            process = self._process
            process.join(timeout=WATCH_SECONDS)
            if process.is_alive():
                continue
            with self._lock:
                if self._stopping:
                    return
                logger.error("the ledger writer exited with %s; restarting it", process.exitcode)
            time.sleep(RESTART_DELAY_SECONDS)
            with self._lock:
                if self._stopping:
                    return
                try:
                    self._spawn()
                except Exception:
                    logger.exception("the ledger writer did not restart; trying again")

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            process = self._process
            if self._stop_writer is not None:
                self._stop_writer.close()  # It commits and answers what it holds, then exits.
        if process is None:
            return
        process.join(timeout=WRITER_STOP_TIMEOUT_SECONDS)
        if process.is_alive():
            logger.error("the ledger writer did not stop in time; killing it")
            process.kill()
            process.join()
