"""Tokens name their signing key by kid; keys rotate and are removed; every forgery gets 401."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from litestar.testing import AsyncTestClient

from api.app import create_app
from api.auth import KEY_CACHE_TTL_SECONDS, KEY_REFRESH_ON_MISS_SECONDS_MIN, issue_token
from projections.config import ConfigStore
from tests.conftest import TEST_SIGNING_KEY

CARD = "1000000000000888"
# A real public key: "HS256 signed with the public key" is the classic RS/ES-to-HS confusion.
PUBLIC_KEY_PEM = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEa48ZChZDKqqxgIE2m5haJUooSRtf
BYLIi4q7nPiSMLc6htxFxpHdSyY6+7WdNVAPAHcRoKJz5XYL6ZJJByHNtw==
-----END PUBLIC KEY-----
"""
SECRET = TEST_SIGNING_KEY.secret.encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: dict[str, Any], claims: dict[str, Any], key: bytes | None, digest: str = "sha256"
) -> str:
    """A JWT built by hand, so any header, claim or key can be used (PyJWT refuses some)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = b"" if key is None else hmac.digest(key, signing_input.encode(), digest)
    return f"{signing_input}.{_b64(signature)}"


def header(**changes: Any) -> dict[str, Any]:
    base = {"alg": "HS256", "typ": "JWT", "kid": TEST_SIGNING_KEY.kid}
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def claims(sub: str, **changes: Any) -> dict[str, Any]:
    """Valid claims; a change to None leaves that claim out."""
    now = int(time.time())
    base = {"sub": sub, "exp": now + 600, "iat": now - 5, "nbf": now - 5, "iss": "giftledger",
            "aud": "giftledger", "jti": "j1"}  # fmt: skip
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def valid(sub: str) -> str:
    return forge(header(), claims(sub), SECRET)


def _past(seconds: int) -> int:
    return int(time.time()) - seconds


FORGERIES = {
    "alg-none": lambda sub: forge(header(alg="none"), claims(sub), None),
    "alg-none-signed": lambda sub: forge(header(alg="none"), claims(sub), SECRET),
    "hs256-signed-with-a-public-key": lambda sub: forge(
        header(), claims(sub), PUBLIC_KEY_PEM.encode()
    ),
    "rs256-header-hmac-with-the-public-key": lambda sub: forge(
        header(alg="RS256"), claims(sub), PUBLIC_KEY_PEM.encode()
    ),
    "hs512-with-the-right-key": lambda sub: forge(
        header(alg="HS512"), claims(sub), SECRET, digest="sha512"
    ),
    "signed-with-another-secret": lambda sub: forge(header(), claims(sub), b"another" * 8),
    "expired": lambda sub: forge(
        header(), claims(sub, exp=_past(60), iat=_past(700), nbf=_past(700)), SECRET
    ),
    "nbf-in-the-future": lambda sub: forge(
        header(), claims(sub, nbf=int(time.time()) + 600), SECRET
    ),
    "wrong-audience": lambda sub: forge(header(), claims(sub, aud="somebody-else"), SECRET),
    "audience-list": lambda sub: forge(
        header(), claims(sub, aud=["giftledger", "somebody-else"]), SECRET
    ),
    "wrong-issuer": lambda sub: forge(header(), claims(sub, iss="somebody-else"), SECRET),
    "missing-nbf": lambda sub: forge(header(), claims(sub, nbf=None), SECRET),
    "missing-exp": lambda sub: forge(header(), claims(sub, exp=None), SECRET),
    "missing-aud": lambda sub: forge(header(), claims(sub, aud=None), SECRET),
    "missing-iss": lambda sub: forge(header(), claims(sub, iss=None), SECRET),
    "missing-kid": lambda sub: forge(header(kid=None), claims(sub), SECRET),
    "unknown-kid": lambda sub: forge(header(kid="no-such-key"), claims(sub), SECRET),
    "kid-not-a-string": lambda sub: forge(header(kid=7), claims(sub), SECRET),
    "truncated-signature": lambda sub: valid(sub)[:-6],
    "signature-stripped": lambda sub: valid(sub).rsplit(".", 1)[0] + ".",
    "header-only": lambda sub: valid(sub).split(".", 1)[0],
    "other-clients-subject": lambda sub: forge(header(), claims("cl_nobody"), SECRET),
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sell(http, world, number: str = CARD) -> None:
    response = await http.post(
        f"/api/giftcards/v1/cards/{number}",
        json={"amount": "5.00", "transactionNo": "1", "locationCode": "SHOP1"},
        headers=world.pos.headers,
    )
    assert response.status_code == 200, response.text


async def read_card(http, token: str, number: str = CARD):
    return await http.get(f"/v1/cards/{number}", headers=bearer(token))


async def token_from_endpoint(http, client) -> str:
    response = await http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client.client_id,
            "client_secret": client.client_secret,
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


async def test_a_hand_built_token_with_valid_claims_is_accepted(http, world):
    """The control for every forgery below: the builder itself makes acceptable tokens."""
    await sell(http, world)
    response = await read_card(http, valid(world.pos.client_id))
    assert response.status_code == 200, response.text
    assert response.json()["number"] == CARD


async def test_a_token_accepted_before_is_refused_once_it_expires(http, world):
    """Verified tokens are remembered to save CPU; expiry must still apply to them."""
    await sell(http, world)
    token = forge(header(), claims(world.pos.client_id, exp=int(time.time()) + 2), SECRET)
    assert (await read_card(http, token)).status_code == 200
    assert (await read_card(http, token)).status_code == 200
    await asyncio.sleep(max(0.0, jwt.decode(token, options={"verify_signature": False})["exp"]
                            - time.time()) + 0.2)  # fmt: skip
    assert (await read_card(http, token)).status_code == 401


@pytest.mark.parametrize("kind", FORGERIES)
async def test_forged_or_invalid_tokens_get_401(http, world, kind):
    await sell(http, world)
    response = await read_card(http, FORGERIES[kind](world.pos.client_id))
    assert response.status_code == 401, response.text
    assert response.json()["status"] == 401
    assert response.json()["code"] == "unauthorized"
    assert CARD not in response.text


async def test_issued_tokens_name_their_key_and_carry_every_checked_claim(http, world):
    token = await token_from_endpoint(http, world.pos)
    assert jwt.get_unverified_header(token) == {
        "alg": "HS256",
        "typ": "JWT",
        "kid": TEST_SIGNING_KEY.kid,
    }
    decoded = jwt.decode(token, TEST_SIGNING_KEY.secret, algorithms=["HS256"],
                         audience="giftledger", issuer="giftledger")  # fmt: skip
    assert decoded["sub"] == world.pos.client_id
    assert decoded["nbf"] == decoded["iat"]
    assert decoded["nbf"] <= time.time() < decoded["exp"]
    assert decoded["exp"] - decoded["iat"] == 3600


async def test_a_pinned_service_refuses_tokens_of_the_database_key_set(http, world, pool):
    await sell(http, world)
    database_key = (await ConfigStore(pool).signing_keys())[-1]
    assert database_key.kid != TEST_SIGNING_KEY.kid
    response = await read_card(http, issue_token(database_key, world.pos.client_id, 600))
    assert response.status_code == 401, response.text


# The same database served by an app without GIFTLEDGER_JWT_SECRET: it uses the key set.


@pytest.fixture(scope="module")
async def keyed(settings):
    app = create_app(dataclasses.replace(settings, jwt_secret=None))
    async with AsyncTestClient(app=app, base_url="https://testserver.local") as client:
        yield client


async def _until_status(http, token: str, status: int, seconds: float) -> float:
    """Poll until a read answers `status`; returns how long that took."""
    started = time.monotonic()
    while (answer := (await read_card(http, token)).status_code) != status:
        assert time.monotonic() - started < seconds, f"still {answer} after {seconds} s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_rotation_signs_new_tokens_with_the_new_key_and_old_tokens_stay_valid(
    keyed, http, world, pool
):
    await sell(http, world)
    config = ConfigStore(pool)
    old_token = await token_from_endpoint(keyed, world.pos)
    assert jwt.get_unverified_header(old_token)["kid"] == (await config.signing_keys())[-1].kid
    new_key = await config.add_signing_key()
    await asyncio.sleep(KEY_CACHE_TTL_SECONDS + 0.1)
    new_token = await token_from_endpoint(keyed, world.pos)
    assert jwt.get_unverified_header(new_token)["kid"] == new_key.kid
    assert jwt.decode(new_token, new_key.secret, algorithms=["HS256"], audience="giftledger")
    for token in (old_token, new_token):
        response = await read_card(keyed, token)
        assert response.status_code == 200, response.text
        assert response.json()["number"] == CARD


async def test_a_removed_keys_tokens_are_refused_within_a_second(keyed, http, world, pool):
    await sell(http, world)
    config = ConfigStore(pool)
    doomed = await config.add_signing_key()
    kept = await config.add_signing_key()
    doomed_token = issue_token(doomed, world.pos.client_id, 600)
    kept_token = issue_token(kept, world.pos.client_id, 600)
    await _until_status(keyed, doomed_token, 200, 1.5)
    assert await config.remove_signing_key(doomed.kid)
    assert await _until_status(keyed, doomed_token, 401, 3.0) <= 1.5
    assert doomed.kid not in [k.kid for k in await config.signing_keys()]
    assert (await read_card(keyed, kept_token)).status_code == 200


async def test_a_key_rotated_in_elsewhere_is_accepted_at_once(keyed, http, world, pool):
    """Another process may sign with a key this one has not read yet: an unknown kid re-reads
    the key set instead of refusing for up to a second."""
    await sell(http, world)
    config = ConfigStore(pool)
    warm = issue_token((await config.signing_keys())[-1], world.pos.client_id, 600)
    assert (await read_card(keyed, warm)).status_code == 200
    await asyncio.sleep(KEY_REFRESH_ON_MISS_SECONDS_MIN + 0.05)
    fresh = await config.add_signing_key()
    response = await read_card(keyed, issue_token(fresh, world.pos.client_id, 600))
    assert response.status_code == 200, response.text


async def test_the_last_key_is_never_removed(pool):
    config = ConfigStore(pool)
    await config.add_signing_key()
    *older, last = await config.signing_keys()
    for key in older:
        assert await config.remove_signing_key(key.kid)
    assert not await config.remove_signing_key(last.kid)
    assert [k.kid for k in await config.signing_keys()] == [last.kid]
    assert not await config.remove_signing_key("no-such-key")
