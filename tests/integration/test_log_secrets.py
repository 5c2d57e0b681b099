"""A full session against a served process leaves no token, client secret or full card number in
its logs or in any error body; card numbers show only their last 4 characters."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import REQUEST_BODY_BYTES_MAX
from tests.integration.served import served, server_logs, unpinned_env

RESICO_CARD = "5000000000001234"  # fixed16
NATIVE_CARD = "5000000000000005678"  # dynamic19
GIFTSTREAM_CARD = "6000000000004321"
UNKNOWN_CARD = "5000000000009999"
UNFITTING_CARD = "50000000000000000002468"  # 23 digits: no card type fits
CARDS = (RESICO_CARD, NATIVE_CARD, GIFTSTREAM_CARD, UNKNOWN_CARD, UNFITTING_CARD)


def masked(number: str) -> str:
    return "*" * (len(number) - 4) + number[-4:]


class Session:
    """An HTTP client that keeps every answer, to check error bodies afterwards."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.answers: list[httpx.Response] = []

    async def __call__(self, method: str, path: str, expect: int, **kwargs) -> httpx.Response:
        response = await self.http.request(method, path, **kwargs)
        self.answers.append(response)
        assert response.status_code == expect, (method, path, response.text)
        return response


async def run_session(call: Session, world) -> list[str]:
    """Every API, successes and refusals; returns the tokens the session used."""
    pos = world.pos
    credentials = {"grant_type": "client_credentials", "client_id": pos.client_id,
                   "client_secret": pos.client_secret}  # fmt: skip
    token = (await call("POST", "/oauth/token", 200, data=credentials)).json()["access_token"]
    auditor = {"grant_type": "client_credentials", "client_id": world.auditor.client_id,
               "client_secret": world.auditor.client_secret}  # fmt: skip
    audit_token = (await call("POST", "/oauth/token", 200, json=auditor)).json()["access_token"]
    # A careless client puts its credentials in the query string.
    await call("POST", "/oauth/token", 400, params=credentials, data={"grant_type": "x"})
    h = {"Authorization": f"Bearer {token}"}
    sale = {"amount": 57.23, "transactionNo": "00000045", "locationCode": "SHOP1"}
    await call("POST", f"/api/giftcards/v1/cards/{RESICO_CARD}", 200, json=sale, headers=h)
    await call("POST", f"/api/giftcards/v1/cards/{RESICO_CARD}", 200, json=sale, headers=h)
    await call("GET", f"/api/giftcards/v1/cards/{RESICO_CARD}", 200, headers=h)
    await call("POST", f"/api/giftcards/v1/reserve/{RESICO_CARD}", 200,
               json={"locationCode": "SHOP1", "amount": 5}, headers=h)  # fmt: skip
    await call("POST", f"/api/giftcards/v1/transactions/{pos.consumer_key}/cards/{RESICO_CARD}",
               200, json={"amount": 10.00}, headers=h)  # fmt: skip
    await call("GET", f"/api/giftcards/v1/cancelreserve/{RESICO_CARD}", 200, headers=h)
    await call("POST", f"/api/giftcards/v1/transactions/{pos.consumer_key}/cards/{RESICO_CARD}",
               422, json={"amount": 1000.00}, headers=h)  # fmt: skip
    await call("POST", f"/api/giftcards/v1/cards/{UNFITTING_CARD}", 422,
               json={**sale, "transactionNo": "00000046"}, headers=h)  # fmt: skip
    issue = {"card_type": "dynamic19", "amount_minor": 5000, "number": NATIVE_CARD}
    await call("POST", "/v1/cards", 201, json=issue, headers=h)
    await call("POST", "/v1/cards", 409, json=issue, headers=h)
    await call("GET", f"/v1/cards/{NATIVE_CARD}", 200, headers=h)
    # Tokens are taken from the Authorization header only; one in the query is refused.
    await call("GET", f"/v1/cards/{NATIVE_CARD}", 401, params={"access_token": token})
    await call("POST", f"/v1/cards/{NATIVE_CARD}/redeem", 200, json={"amount_minor": 100},
               headers=h)  # fmt: skip
    await call("POST", f"/v1/cards/{NATIVE_CARD}/redeem", 422, json={"amount_minor": "x"},
               headers=h)  # fmt: skip
    await call("POST", f"/v1/cards/{NATIVE_CARD}/load", 200, json={"amount_minor": 100},
               headers=h)  # fmt: skip
    audit = {"Authorization": f"Bearer {audit_token}"}
    await call("GET", f"/v1/cards/{NATIVE_CARD}/events", 200, headers=audit)
    await call("GET", f"/v1/cards/{NATIVE_CARD}/events", 422, params={"limit": 100_000},
               headers=audit)  # fmt: skip
    await call("GET", f"/v1/cards/{UNKNOWN_CARD}", 404, headers=h)
    await call("GET", f"/v1/cards/{UNKNOWN_CARD}/events", 404, headers=audit)
    await call("POST", f"/v1/cards/{UNKNOWN_CARD}/redeem", 404, json={"amount_minor": 1},
               headers=h)  # fmt: skip
    await call("GET", f"/v1/card/{RESICO_CARD}", 404, headers=h)  # a mistyped path
    await call("GET", f"/v1/cards/{RESICO_CARD}", 401, headers={"Authorization": "Bearer x"})
    await call("GET", f"/v1/cards/{RESICO_CARD}", 401,
               headers={"Authorization": f"Bearer {token[:-4]}"})  # fmt: skip
    gift = {"cardType": "2", "currencyCode": "826", "initialBalance": "2.99", "siteId": "1",
            "identifier": GIFTSTREAM_CARD}  # fmt: skip
    await call("POST", "/giftcard", 200, data=gift, headers=h)
    await call("POST", "/giftcard", 400, data=gift, headers=h)
    await call("POST", "/giftcard", 400, data={**gift, "identifier": "no spaces"}, headers=h)

    async def chunks() -> AsyncIterator[bytes]:  # sent chunked: no Content-Length
        yield b'{"card_type": "fixed16", "number": "' + RESICO_CARD.encode() + b'", "pad": "'
        yield b"x" * REQUEST_BODY_BYTES_MAX
        yield b'"}'

    await call("POST", "/v1/cards", 413, content=chunks(), headers=h)
    return [token, audit_token]


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_no_secret_reaches_a_log_line_or_an_error_body(
    database_url, world, tmp_path, log_format
):
    """Two workers, so the logging of the spawned worker processes is covered too."""
    env = unpinned_env(database_url, GIFTLEDGER_LOG_FORMAT=log_format)
    async with (
        served(env, tmp_path, "--workers", "2") as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        call = Session(http)
        tokens = await run_session(call, world)
    logs = server_logs(tmp_path)
    secrets = [*tokens, *(t.split(".")[2] for t in tokens), world.pos.client_secret,
               world.auditor.client_secret, *CARDS]  # fmt: skip
    for secret in secrets:
        assert secret not in logs, f"{secret[:6]}... is in the logs"
    # The logs are there, and show what they may: route templates, statuses, and a path no
    # route matched as it came, masked.
    assert "GET /api/giftcards/v1/cards/{card_id} 200" in logs
    assert "GET /v1/cards/{number}/events 200" in logs
    assert "GET /v1/cards/{number} 404" in logs
    assert f"GET /v1/card/{masked(RESICO_CARD)} 404" in logs
    assert "POST /oauth/token 400" in logs
    refusals = [a for a in call.answers if a.status_code >= 400]
    assert {a.status_code for a in refusals} >= {400, 401, 404, 409, 413, 422}
    for answer in refusals:
        for secret in secrets:
            assert secret not in answer.text, (answer.request.url.path, answer.text)
    not_found = next(a for a in refusals if a.json().get("code") == "card_not_found")
    assert masked(UNKNOWN_CARD) in not_found.json()["detail"]
