"""Operators can see the service: liveness, readiness, Prometheus metrics, a durability guard."""

from __future__ import annotations

import dataclasses
import gc
import secrets
import sys
import traceback

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from api.app import GC_GEN0_THRESHOLD, GIL_SWITCH_INTERVAL_SECONDS, create_app
from projections.database import unsafe_durability
from tests.conftest import with_database

NUMBER = "7100000000000000001"


async def test_live_answers_without_the_database(http):
    response = await http.get("/health/live")
    assert (response.status_code, response.json()) == (200, {"status": "live"})


async def test_ready_checks_schema_and_projection_lag(http, world, pool):
    response = await http.get("/health/ready")
    assert response.status_code == 200, response.text
    assert response.json()["projection_lag_events"] == 0
    body = {"card_type": "dynamic19", "amount_minor": 500, "number": NUMBER}
    assert (await http.post("/v1/cards", json=body, headers=world.pos.headers)).status_code == 201
    # Damage the projection as a bad hand edit would: it now trails the log by one event.
    await pool.execute("UPDATE card_views SET version = version - 1 WHERE number = $1", NUMBER)
    await pool.execute("UPDATE ledger_log SET occurred_at = occurred_at - interval '1 minute'")
    response = await http.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["code"] == "not_ready"
    await pool.execute("UPDATE card_views SET version = version + 1 WHERE number = $1", NUMBER)
    assert (await http.get("/health/ready")).status_code == 200


async def test_metrics_count_requests_per_route_and_batches_without_card_numbers(http, world):
    body = {"card_type": "dynamic19", "amount_minor": 900, "number": NUMBER}
    assert (await http.post("/v1/cards", json=body, headers=world.pos.headers)).status_code == 201
    pay = {"amount_minor": 100}
    headers = world.pos.headers
    assert (await http.post(f"/v1/cards/{NUMBER}/redeem", json=pay, headers=headers)).is_success
    response = await http.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'path="/v1/cards/{number}/redeem"' in text
    assert "giftledger_batch_commands_count" in text
    assert "giftledger_batch_linger_seconds_bucket" in text
    assert "giftledger_conflict_retries_total" in text
    assert "giftledger_scheduler_holds_to_expire" in text
    assert "giftledger_projection_lag_events" in text
    assert NUMBER not in text


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_request_metrics_count_each_answer_by_route_and_status(http, world):
    body = {"card_type": "dynamic19", "amount_minor": 900, "number": NUMBER}
    assert (await http.post("/v1/cards", json=body, headers=world.pos.headers)).status_code == 201
    route = {"app_name": "giftledger", "method": "POST", "path": "/v1/cards/{number}/redeem"}
    paid, missing = ({**route, "status_code": status} for status in ("200", "404"))
    series = [tuple(sorted(labels.items())) for labels in (paid, missing)]
    names = ("giftledger_requests_total", "giftledger_request_duration_seconds_count")
    before = (await http.get("/metrics")).text
    pay = {"amount_minor": 100}
    headers = world.pos.headers
    assert (await http.post(f"/v1/cards/{NUMBER}/redeem", json=pay, headers=headers)).is_success
    unknown = "7100000000000000019"
    answer = await http.post(f"/v1/cards/{unknown}/redeem", json=pay, headers=headers)
    assert answer.status_code == 404
    after = (await http.get("/metrics")).text
    for name in names:
        old, new = _samples(before, name), _samples(after, name)
        assert [new[key] - old.get(key, 0.0) for key in series] == [1.0, 1.0], name
    # The gauge is labelled as Litestar labels it (status 200, before any answer), and is back
    # to zero once both answers are out.
    in_progress = _samples(after, "giftledger_requests_in_progress")
    assert in_progress[tuple(sorted({**route, "status_code": "200"}.items()))] == 0.0


def test_durability_settings_that_could_lose_commits_are_named():
    safe = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    assert unsafe_durability(safe) == []
    assert unsafe_durability({**safe, "synchronous_commit": "local"}) == []
    assert unsafe_durability({**safe, "fsync": "off"}) == ["fsync=off"]
    assert unsafe_durability({**safe, "synchronous_commit": "off", "full_page_writes": "off"}) == [
        "synchronous_commit=off",
        "full_page_writes=off",
    ]


@pytest.fixture
async def database_without_synchronous_commit(server_url: str):
    name = f"giftledger_unsafe_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
        yield with_database(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_the_service_refuses_to_start_where_commits_could_be_lost(
    database_without_synchronous_commit, settings
):
    unsafe = dataclasses.replace(settings, database_url=database_without_synchronous_commit)
    with pytest.raises(BaseExceptionGroup) as refused:  # The test client groups errors.
        async with AsyncTestClient(app=create_app(unsafe)):
            pass
    assert "could lose acknowledged writes: synchronous_commit=off" in "".join(
        traceback.format_exception(refused.value)
    )
    allowed = dataclasses.replace(unsafe, allow_unsafe_durability=True)
    async with AsyncTestClient(app=create_app(allowed)) as client:
        assert (await client.get("/health/ready")).status_code == 200


async def test_a_served_app_tunes_its_runtime_once_started(settings):
    before = gc.get_threshold()
    switch_before = sys.getswitchinterval()
    assert switch_before != GIL_SWITCH_INTERVAL_SECONDS
    try:
        async with AsyncTestClient(app=create_app(settings)):
            # Tests and tools keep CPython's defaults.
            assert gc.get_threshold() == before
            assert sys.getswitchinterval() == switch_before
        app = create_app(settings, served=True)
        assert gc.get_threshold() == before
        async with AsyncTestClient(app=app) as client:
            assert (await client.get("/health/live")).status_code == 200
            assert gc.get_threshold() == (GC_GEN0_THRESHOLD, *before[1:])
            assert gc.get_freeze_count() > 0
            assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL_SECONDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        sys.setswitchinterval(switch_before)
