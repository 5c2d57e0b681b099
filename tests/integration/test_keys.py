"""`giftledger keys` rotates and removes signing keys, and `clients limit` sets a client's rate,
and a served process follows both within a second."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
import pytest

from api.auth import KEY_CACHE_TTL_SECONDS
from projections.config import ConfigStore
from tests.conftest import TEST_JWT_SECRET
from tests.integration.served import cli, cli_ok, served, unpinned_env

CARD = "1000000000004242"


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


@pytest.fixture
async def server(database_url, world, tmp_path):
    async with served(unpinned_env(database_url), tmp_path) as base:
        yield base


async def sell(http, world) -> None:
    response = await http.post(
        f"/api/giftcards/v1/cards/{CARD}",
        json={"amount": "5.00", "transactionNo": "1", "locationCode": "SHOP1"},
        headers=world.pos.headers,
    )
    assert response.status_code == 200, response.text


async def token_from(client: httpx.AsyncClient, world) -> str:
    response = await client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": world.pos.client_id,
            "client_secret": world.pos.client_secret,
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def read_status(client: httpx.AsyncClient, token: str) -> int:
    response = await client.get(f"/v1/cards/{CARD}", headers={"Authorization": f"Bearer {token}"})
    if response.status_code == 200:
        assert response.json()["number"] == CARD
    return response.status_code


async def test_keys_list_rotate_and_remove(database_url, world, pool):
    env = unpinned_env(database_url)
    listed = json_lines(await cli_ok(env, "keys", "list"))
    assert listed, "a key exists from the first start"
    assert all(set(row) == {"kid", "created_at", "signing"} for row in listed)
    assert [row["signing"] for row in listed] == [False] * (len(listed) - 1) + [True]
    rotated = json.loads(await cli_ok(env, "keys", "rotate"))
    after = json_lines(await cli_ok(env, "keys", "list"))
    assert [row["kid"] for row in after] == [row["kid"] for row in listed] + [rotated["kid"]]
    assert after[-1]["signing"] is True
    secrets = [r["secret"] for r in await pool.fetch("SELECT secret FROM signing_keys")]
    assert not any(secret in json.dumps(after) for secret in secrets), "never print a secret"
    assert await cli_ok(env, "keys", "remove", rotated["kid"]) == f"removed {rotated['kid']}\n"
    remaining = [row["kid"] for row in json_lines(await cli_ok(env, "keys", "list"))]
    assert remaining == [row["kid"] for row in listed]
    unknown = await cli(env, "keys", "remove", "no-such-key")
    assert unknown.returncode != 0
    assert "no-such-key" in unknown.stderr


async def test_the_last_key_cannot_be_removed_from_the_cli(database_url, world, pool):
    env = unpinned_env(database_url)
    config = ConfigStore(pool)
    *older, last = await config.signing_keys()
    for key in older:
        assert await config.remove_signing_key(key.kid)
    refused = await cli(env, "keys", "remove", last.kid)
    assert refused.returncode != 0
    assert "only key" in refused.stderr
    assert [k.kid for k in await config.signing_keys()] == [last.kid]


async def test_keys_commands_warn_when_the_environment_pins_the_key(database_url, world):
    pinned = unpinned_env(database_url, GIFTLEDGER_JWT_SECRET=TEST_JWT_SECRET)
    done = await cli(pinned, "keys", "list")
    assert done.returncode == 0, done.stderr
    assert "GIFTLEDGER_JWT_SECRET" in done.stderr


async def test_a_served_process_follows_rotation_and_removal(server, http, database_url, world):
    await sell(http, world)
    env = unpinned_env(database_url)
    async with httpx.AsyncClient(base_url=server) as client:
        old_token = await token_from(client, world)
        old_kid = kid_of(old_token)
        new_kid = json.loads(await cli_ok(env, "keys", "rotate"))["kid"]
        await asyncio.sleep(KEY_CACHE_TTL_SECONDS + 0.1)
        new_token = await token_from(client, world)
        assert kid_of(new_token) == new_kid
        assert await read_status(client, old_token) == 200, "old tokens live until they expire"
        assert await read_status(client, new_token) == 200
        issued = (await cli_ok(env, "tokens", "issue", world.pos.client_id)).strip()
        assert kid_of(issued) == new_kid
        assert await read_status(client, issued) == 200

        assert await cli_ok(env, "keys", "remove", old_kid) == f"removed {old_kid}\n"
        removed_at = time.monotonic()
        while (status := await read_status(client, old_token)) == 200:
            assert time.monotonic() - removed_at < 3, "a removed key's token still works"
            await asyncio.sleep(0.05)
        assert status == 401
        assert time.monotonic() - removed_at <= 1.5
        assert await read_status(client, new_token) == 200


async def test_clients_limit_reaches_a_served_process(server, http, database_url, world):
    await sell(http, world)
    env = unpinned_env(database_url)
    options = ("--rate-per-second", "50", "--burst", "60", "--json")
    created = json.loads(await cli_ok(env, "clients", "create", "till", *options))
    client_id = created["client_id"]
    listed = {row["client_id"]: row for row in json_lines(await cli_ok(env, "clients", "list"))}
    assert (listed[client_id]["rate_per_second"], listed[client_id]["rate_burst"]) == (50, 60)
    limited = json.loads(
        await cli_ok(env, "clients", "limit", client_id, "--rate-per-second", "0.5", "--burst", "2")
    )
    assert (limited["rate_per_second"], limited["rate_burst"]) == (0.5, 2)
    token = (await cli_ok(env, "tokens", "issue", client_id)).strip()
    async with httpx.AsyncClient(base_url=server) as client:
        assert [await read_status(client, token) for _ in range(2)] == [200, 200]
        refused = await client.get(
            f"/v1/cards/{CARD}", headers={"Authorization": f"Bearer {token}"}
        )
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "2"
    reset = json.loads(await cli_ok(env, "clients", "limit", client_id, "--default"))
    assert (reset["rate_per_second"], reset["rate_burst"]) == (None, None)
    for wrong in ((), ("--default", "--burst", "3"), ("--burst", "0")):
        done = await cli(env, "clients", "limit", client_id, *wrong)
        assert done.returncode != 0, wrong
    unknown = await cli(env, "clients", "limit", "cl_nobody", "--burst", "3")
    assert unknown.returncode != 0
    assert "cl_nobody" in unknown.stderr
