"""/oauth/token issues tokens only over HTTPS, from loopback, or where the operator allows it."""

from __future__ import annotations

import dataclasses
import json

import httpx
import pytest

from tests.integration.served import cli_ok, served, unpinned_env

# Litestar's test client connects from the address "testclient", which is not loopback.
PLAIN = "http://testserver.local/oauth/token"
SECURE = "https://testserver.local/oauth/token"
# uvicorn trusts X-Forwarded-* from 127.0.0.1 by default (FORWARDED_ALLOW_IPS), as from nginx.
REMOTE = {"X-Forwarded-For": "203.0.113.9"}


def fields(client) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": client.client_id,
            "client_secret": client.client_secret}  # fmt: skip


def assert_insecure_refusal(response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "insecure_transport"
    assert "access_token" not in response.json()


async def test_plain_http_from_elsewhere_is_refused_without_checking_the_secret(http, world):
    assert_insecure_refusal(await http.post(PLAIN, data=fields(world.pos)))
    assert_insecure_refusal(await http.post(PLAIN, data={"client_id": "x", "client_secret": "y"}))


async def test_https_issues_a_token(http, world):
    response = await http.post(SECURE, data=fields(world.pos))
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


async def test_the_operators_setting_allows_plain_http(http, world, app):
    settings = app.state.settings
    app.state.settings = dataclasses.replace(settings, allow_insecure_tokens=True)
    try:
        response = await http.post(PLAIN, data=fields(world.pos))
    finally:
        app.state.settings = settings
    assert response.status_code == 200, response.text
    assert response.json()["access_token"]


def test_the_setting_is_read_from_the_environment():
    from api.settings import Settings

    assert Settings.from_env({"GIFTLEDGER_ALLOW_INSECURE_TOKENS": "1"}).allow_insecure_tokens
    assert not Settings.from_env({}).allow_insecure_tokens


@pytest.fixture(scope="module")
async def served_client(database_url, http, tmp_path_factory):
    """A client of the test database, and its credentials, for a real `giftledger serve`."""
    env = unpinned_env(database_url)
    created = json.loads(await cli_ok(env, "clients", "create", "tls", "--json"))
    return env, {"grant_type": "client_credentials", **{k: created[k] for k in
                 ("client_id", "client_secret")}}  # fmt: skip


async def test_behind_the_proxy_loopback_and_forwarded_https_are_served_and_plain_is_refused(
    served_client, tmp_path
):
    env, body = served_client
    async with served(env, tmp_path) as base, httpx.AsyncClient(base_url=base) as client:
        # A request from this machine itself, over plain HTTP.
        assert (await client.post("/oauth/token", data=body)).status_code == 200
        proxied_https = REMOTE | {"X-Forwarded-Proto": "https"}
        response = await client.post("/oauth/token", data=body, headers=proxied_https)
        assert response.status_code == 200, response.text
        proxied_plain = REMOTE | {"X-Forwarded-Proto": "http"}
        assert_insecure_refusal(
            await client.post("/oauth/token", data=body, headers=proxied_plain)
        )


async def test_the_flag_lets_a_served_process_issue_over_plain_http(served_client, tmp_path):
    env, body = served_client
    allowed = env | {"GIFTLEDGER_ALLOW_INSECURE_TOKENS": "1"}
    async with served(allowed, tmp_path) as base, httpx.AsyncClient(base_url=base) as client:
        headers = REMOTE | {"X-Forwarded-Proto": "http"}
        response = await client.post("/oauth/token", data=body, headers=headers)
        assert response.status_code == 200, response.text
