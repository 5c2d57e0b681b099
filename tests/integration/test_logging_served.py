"""`giftledger serve` writes only JSON lines to stderr, uvicorn's own included, with request ids."""

from __future__ import annotations

import json

import httpx

from tests.integration.served import served, unpinned_env

NUMBER = "7100000000000000031"


async def test_serve_writes_one_json_object_per_stderr_line_with_the_request_id(
    database_url, world, tmp_path
):
    body = {"card_type": "dynamic19", "amount_minor": 500, "number": NUMBER}
    async with (
        served(unpinned_env(database_url), tmp_path) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        # The served process signs with the database's keys: a token of its own.
        credentials = {"grant_type": "client_credentials", "client_id": world.pos.client_id,
                       "client_secret": world.pos.client_secret}  # fmt: skip
        token = (await http.post("/oauth/token", data=credentials)).json()["access_token"]
        sold = await http.post("/v1/cards", json=body, headers={
            "Authorization": f"Bearer {token}", "X-Request-ID": "sale-1"})  # fmt: skip
        refused = await http.get(f"/v1/cards/{NUMBER}")
    assert (sold.status_code, sold.headers["x-request-id"]) == (201, "sale-1")
    assert refused.status_code == 401
    lines = [json.loads(line) for line in (tmp_path / "stderr.log").read_text().splitlines()]
    assert {"timestamp", "level", "logger", "message"} <= set(lines[0])
    # uvicorn's own lines come out as JSON too, and its access log gives way to ours.
    assert any(line["message"].startswith("Started server process") for line in lines)
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
    access = {x.get("request_id"): x for x in lines if x["logger"] == "giftledger.access"}
    sale = access["sale-1"]
    assert {k: sale[k] for k in ("method", "path", "status", "client_id")} == {
        "method": "POST", "path": "/v1/cards", "status": 201, "client_id": world.pos.client_id,
    }  # fmt: skip
    refusal = access[refused.headers["x-request-id"]]
    assert (refusal["path"], refusal["status"]) == ("/v1/cards/{number}", 401)
    assert NUMBER not in (tmp_path / "stderr.log").read_text()
