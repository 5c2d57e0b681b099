"""The client_credentials token endpoint, revocation, and how client secrets are stored."""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest

from tests.conftest import TEST_JWT_SECRET, TEST_SIGNING_KEY

CARD = "1000000000000777"


async def token_by_form(http, client_id: str, secret: str, grant_type="client_credentials"):
    fields = {"grant_type": grant_type, "client_id": client_id, "client_secret": secret}
    return await http.post("/oauth/token", data=fields)


async def token_by_json(http, client_id: str, secret: str, grant_type="client_credentials"):
    payload = {"grant_type": grant_type, "client_id": client_id, "client_secret": secret}
    return await http.post("/oauth/token", json=payload)


async def get_card(http, token: str):
    return await http.get(
        f"/api/giftcards/v1/cards/{CARD}", headers={"Authorization": f"Bearer {token}"}
    )


async def sell_card(http, world) -> None:
    response = await http.post(
        f"/api/giftcards/v1/cards/{CARD}",
        json={"amount": "5.00", "transactionNo": "1", "locationCode": "SHOP1"},
        headers=world.pos.headers,
    )
    assert response.status_code == 200, response.text


def _jwt(secret: str | None, sub: str, expires_in: int, algorithm="HS256", **claims) -> str:
    now = int(time.time())
    payload = {"sub": sub, "exp": now + expires_in, "iat": now - 7200, "nbf": now - 7200,
               "iss": "giftledger", "aud": "giftledger", **claims}  # fmt: skip
    # Named by the test key's kid, so each case fails for its own reason, not a missing kid.
    return jwt.encode(payload, secret, algorithm=algorithm, headers={"kid": TEST_SIGNING_KEY.kid})


def _bearer(secret: str | None, sub: str, expires_in: int = 600, **options) -> str:
    return f"Bearer {_jwt(secret, sub, expires_in, **options)}"


OTHER_SECRET = "other-secret-" + "y" * 40
BAD_AUTHORIZATIONS = {
    "missing": lambda client_id: None,
    "garbage": lambda client_id: "Bearer not-a-jwt",
    "not-bearer": lambda client_id: "Basic dXNlcjpwYXNz",
    "expired": lambda client_id: _bearer(TEST_JWT_SECRET, client_id, -60),
    "wrong-secret": lambda client_id: _bearer(OTHER_SECRET, client_id),
    "wrong-issuer": lambda client_id: _bearer(TEST_JWT_SECRET, client_id, iss="x"),
    "wrong-audience": lambda client_id: _bearer(TEST_JWT_SECRET, client_id, aud="x"),
    "alg-none": lambda client_id: _bearer(None, client_id, algorithm="none"),
    "unknown-client": lambda client_id: _bearer(TEST_JWT_SECRET, "cl_nobody"),
}


def assert_oauth_error(response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"
    assert "access_token" not in response.json()


@pytest.mark.parametrize("request_token", [token_by_form, token_by_json], ids=["form", "json"])
async def test_client_credentials_grant_issues_a_working_bearer_token(http, world, request_token):
    await sell_card(http, world)
    response = await request_token(http, world.pos.client_id, world.pos.client_secret)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"access_token", "token_type", "expires_in"}
    assert answer["token_type"] == "Bearer"
    assert isinstance(answer["expires_in"], int)
    assert answer["expires_in"] > 0
    assert response.headers["cache-control"] == "no-store"
    claims = jwt.decode(
        answer["access_token"], TEST_JWT_SECRET, algorithms=["HS256"], audience="giftledger"
    )
    assert claims["sub"] == world.pos.client_id
    assert claims["iss"] == "giftledger"
    assert abs(claims["exp"] - time.time() - answer["expires_in"]) < 30
    card = await get_card(http, answer["access_token"])
    assert card.status_code == 200, card.text
    assert card.json()["giftCardNo"] == CARD


async def test_each_token_request_issues_a_distinct_token(http, world):
    first = await token_by_form(http, world.pos.client_id, world.pos.client_secret)
    second = await token_by_form(http, world.pos.client_id, world.pos.client_secret)
    assert first.json()["access_token"] != second.json()["access_token"]


@pytest.mark.parametrize("request_token", [token_by_form, token_by_json], ids=["form", "json"])
async def test_wrong_secret_is_an_invalid_client(http, world, request_token):
    response = await request_token(http, world.pos.client_id, world.pos.client_secret + "x")
    assert_oauth_error(response, 401, "invalid_client")


async def test_another_clients_secret_is_an_invalid_client(http, world):
    response = await token_by_form(http, world.pos.client_id, world.other.client_secret)
    assert_oauth_error(response, 401, "invalid_client")


async def test_unknown_client_is_an_invalid_client(http, world):
    response = await token_by_json(http, "cl_doesnotexist", world.pos.client_secret)
    assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize("grant_type", ["password", "authorization_code", ""])
async def test_unknown_grant_type_is_unsupported(http, world, grant_type):
    response = await token_by_form(http, world.pos.client_id, world.pos.client_secret, grant_type)
    assert_oauth_error(response, 400, "unsupported_grant_type")


async def test_malformed_token_request_is_invalid(http, world):
    response = await http.post(
        "/oauth/token", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize("kind", BAD_AUTHORIZATIONS)
async def test_card_api_refuses_missing_or_invalid_tokens(http, world, kind):
    await sell_card(http, world)
    authorization = BAD_AUTHORIZATIONS[kind](world.pos.client_id)
    headers = {} if authorization is None else {"Authorization": authorization}
    response = await http.get(f"/api/giftcards/v1/cards/{CARD}", headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["status"] == 401
    assert "giftCardNo" not in response.text


async def test_revoked_client_gets_no_token(http, world):
    assert await world.config.revoke_client(world.pos.client_id)
    response = await token_by_form(http, world.pos.client_id, world.pos.client_secret)
    assert_oauth_error(response, 401, "invalid_client")


async def test_revoked_clients_existing_token_is_refused_promptly(http, world):
    await sell_card(http, world)
    assert (await get_card(http, world.pos.token)).status_code == 200
    assert await world.config.revoke_client(world.pos.client_id)
    revoked_at = time.monotonic()
    status = 200
    while time.monotonic() - revoked_at < 3.0:
        status = (await get_card(http, world.pos.token)).status_code
        if status != 200:
            break
        await asyncio.sleep(0.05)
    assert status == 401
    assert time.monotonic() - revoked_at <= 1.5
    assert (await get_card(http, world.other.token)).status_code == 200


async def test_secrets_are_stored_as_scrypt_hashes(http, world, pool):
    rows = await pool.fetch("SELECT client_id, secret_hash FROM clients")
    clients = (world.pos, world.other, world.auditor, world.finance)
    secrets = {c.client_id: c.client_secret for c in clients}
    assert {r["client_id"] for r in rows} == set(secrets)
    for row in rows:
        stored = row["secret_hash"]
        assert stored.startswith("scrypt$")
        for secret in secrets.values():
            assert secret not in stored
    hashes = [r["secret_hash"] for r in rows]
    assert len(set(hashes)) == len(hashes)
