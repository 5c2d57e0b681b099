"""Two service processes on one database never overspend, lose or invent an event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time

import httpx
import pytest

from projections.config import CardType
from tests.conftest import TEST_JWT_SECRET
from tests.integration.served import served

CARDS = [f"9{n:015d}" for n in range(10)]
OPEN16 = CardType("open16", "9", 16, "0123456789", False, True, True, 12, "EUR")
LOAD_SECONDS = 4.0
CLIENTS_PER_SERVER = 8  # concurrent HTTP clients on each server
SERVERS = 2
CREDIT = ("Sold", "Loaded", "Refunded")
DEBIT = ("Redeemed", "ReservationCaptured", "Expired")


@pytest.fixture
async def servers(database_url, world, tmp_path):
    """Two `giftledger serve` processes, each logging to a folder of its own."""
    env = os.environ | {"GIFTLEDGER_DATABASE_URL": database_url,
                        "GIFTLEDGER_JWT_SECRET": TEST_JWT_SECRET}  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        bases = []
        for n in range(SERVERS):
            log_dir = tmp_path / f"server{n}"
            log_dir.mkdir()
            bases.append(await stack.enter_async_context(served(env, log_dir)))
        yield bases


async def random_traffic(base: str, clients, seed: int, deadline: float) -> list[tuple]:
    """Random uses, holds, voids and loads; returns (card, op, status, version) per request."""
    rng = random.Random(seed)
    holds: dict[tuple[str, str], str] = {}
    log = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while time.monotonic() < deadline:
            client, card = rng.choice(clients), rng.choice(CARDS)
            op = rng.choice(("redeem", "hold", "void", "load"))
            hold_id = holds.get((client.client_id, card))
            if op == "void" and hold_id is None:
                op = "hold"
            path = {"redeem": "redeem", "hold": "holds", "load": "load",
                    "void": f"holds/{hold_id}/void"}[op]  # fmt: skip
            body = {} if op == "void" else {"amount_minor": rng.randint(1, 900)}
            response = await http.post(
                f"/v1/cards/{card}/{path}", json=body, headers=client.headers
            )
            version = None
            if response.status_code < 300:
                payload = response.json()
                if op == "hold":
                    holds[(client.client_id, card)] = payload["hold_id"]
                    payload = payload["card"]
                version = payload["version"]
            log.append((card, op, response.status_code, version))
    return log


async def card_events(pool, number: str) -> list[tuple[int, str, dict]]:
    rows = await pool.fetch(
        "SELECT e.originator_version AS v, e.topic, convert_from(e.state, 'UTF8')::jsonb AS s"
        " FROM giftledger_events e JOIN card_views c ON c.card_id = e.originator_id"
        " WHERE c.number = $1 ORDER BY e.originator_version",
        number,
    )
    return [(r["v"], r["topic"].rsplit(".", 1)[-1], json.loads(r["s"])) for r in rows]


def fold(events) -> tuple[int, int]:
    """Balance and reserved after every event; both checked at every step."""
    balance = reserved = 0
    for _version, kind, state in events:
        amount = state.get("amount_minor", 0)
        balance += amount if kind in CREDIT else -amount if kind in DEBIT else 0
        reserved += amount if kind == "Reserved" else 0
        reserved -= amount if kind in ("ReservationCaptured", "ReservationReleased") else 0
        assert 0 <= reserved <= balance, (kind, balance, reserved)
    return balance, reserved


def producers(log, number: str) -> list[tuple[int, str]]:
    """The (version, op) of every 2xx on the card: each recorded events of its own."""
    return sorted((v, op) for card, op, status, v in log if card == number and status < 300)


EXPECTED = {
    "redeem": {"Redeemed", "ReservationCaptured", "ReservationReleased"},
    "hold": {"Reserved", "ReservationReleased"},
    "void": {"ReservationReleased"},
    "load": {"Loaded"},
}


async def test_two_processes_on_one_database_keep_every_card_exact(servers, world, pool, http):
    await world.config.add_card_type(OPEN16)
    for number in CARDS:
        issued = await http.post(
            "/v1/cards",
            json={"card_type": "open16", "amount_minor": 5000, "number": number},
            headers=world.pos.headers,
        )
        assert issued.status_code == 201, issued.text
    deadline = time.monotonic() + LOAD_SECONDS
    clients = [world.pos, world.other]
    logs = await asyncio.gather(
        *(
            random_traffic(base, clients, seed=i * 100 + n, deadline=deadline)
            for i, base in enumerate(servers)
            for n in range(CLIENTS_PER_SERVER)
        )
    )
    log = [entry for part in logs for entry in part]
    statuses = {status for *_, status, _ in log}
    assert statuses <= {200, 201, 404, 422}, f"only successes and refusals: {statuses}"
    assert sum(1 for *_, status, _ in log if status < 300) > 100, "the load reached the ledger"

    for number in CARDS:
        events = await card_events(pool, number)
        balance, reserved = fold(events)
        view = await pool.fetchrow("SELECT * FROM card_views WHERE number = $1", number)
        assert (view["balance_minor"], view["reserved_minor"]) == (balance, reserved)
        assert view["version"] == events[-1][0]
        writes = producers(log, number)
        assert len({v for v, _ in writes}) == len(writes), "each 2xx has events of its own"
        previous = 1
        for version, op in writes:
            kinds = {kind for v, kind, _ in events if previous < v <= version}
            assert kinds, (number, op, version)
            assert kinds <= EXPECTED[op], (number, op, kinds)
            previous = version
        assert previous == events[-1][0], "no event without an acknowledged request"
