"""The real `giftledger` console script configures the database the app serves and issues tokens."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from api.authz import ROLES, RULES, matrix_markdown
from tests.conftest import TEST_JWT_SECRET

GIFTLEDGER = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "giftledger"
CLI_TIMEOUT_SECONDS = 120
ADD_GIFTX = ("card-types", "add", "giftx", "--length", "12", "--prefix", "55", "--dynamic",
             "--currency", "GBP", "--validity-months", "12")  # fmt: skip


async def giftledger(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the console script against the test database; never raises on a non-zero exit."""
    env = {
        **os.environ,
        "GIFTLEDGER_DATABASE_URL": database_url,
        "GIFTLEDGER_JWT_SECRET": TEST_JWT_SECRET,
    }
    return await asyncio.to_thread(
        subprocess.run,
        [str(GIFTLEDGER), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
        check=False,
    )


async def ok(database_url: str, *args: str) -> str:
    done = await giftledger(database_url, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def by_key(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in rows}


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_client(database_url: str, name: str, *options: str) -> dict[str, str]:
    return json.loads(await ok(database_url, "clients", "create", name, *options, "--json"))


# Locations and card types.


async def test_a_location_added_is_listed(database_url, world):
    added = json.loads(
        await ok(database_url, "locations", "add", "SHOP9", "--site-id", "9", "--name", "X")
    )
    assert added == {"code": "SHOP9", "site_id": 9, "name": "X"}
    listed = by_key(json_lines(await ok(database_url, "locations", "list")), "code")
    assert set(listed) == {"SHOP1", "SHOP2", "SHOP9"}
    assert listed["SHOP9"] == added


async def test_a_location_with_a_taken_site_id_is_refused(database_url, world):
    done = await giftledger(database_url, "locations", "add", "SHOP8", "--site-id", "1")
    assert done.returncode != 0
    listed = json_lines(await ok(database_url, "locations", "list"))
    assert [row["code"] for row in listed] == ["SHOP1", "SHOP2"]


@pytest.mark.parametrize(
    "args",
    [
        ("locations", "add", "SHOP1", "--site-id", "7"),
        ("locations", "add", "SHOP8", "--site-id", "1"),
        ("card-types", "add", "fixed16", "--length", "16"),
        ("card-types", "add", "bad", "--length", "8", "--currency", "XXX"),
    ],
)
async def test_a_refused_configuration_change_is_an_error_message_not_a_traceback(
    database_url, world, args
):
    done = await giftledger(database_url, *args)
    # click exits 1 for a refused action and 2 for a bad option value.
    assert done.returncode in (1, 2)
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("Error: ")


async def test_a_dynamic_card_type_is_loadable_without_reservations(database_url, world):
    await ok(database_url, *ADD_GIFTX)
    listed = by_key(json_lines(await ok(database_url, "card-types", "list")), "name")
    assert set(listed) == {"fixed16", "dynamic19", "gold", "giftx"}
    assert listed["giftx"] == {
        "name": "giftx",
        "prefix": "55",
        "length": 12,
        "allowed_chars": "0123456789",
        "fixed_amount": False,
        "redeem_allowed": True,
        "reservations_allowed": False,
        "validity_months": 12,
        "currency": "GBP",
    }


async def test_a_card_type_without_reservations_stays_fixed_amount(database_url, world):
    await ok(database_url, "card-types", "add", "plain", "--length", "10", "--no-reservations")
    listed = by_key(json_lines(await ok(database_url, "card-types", "list")), "name")
    plain = listed["plain"]
    assert (plain["fixed_amount"], plain["reservations_allowed"]) == (True, False)
    assert (plain["currency"], plain["validity_months"], plain["prefix"]) == ("EUR", 36, "")


async def test_a_card_type_added_by_the_cli_is_served_by_the_app(http, database_url, world):
    await ok(database_url, *ADD_GIFTX)
    body = {"card_type": "giftx", "amount_minor": 1000, "number": "551234567890"}
    issued = await http.post("/v1/cards", json=body, headers=world.pos.headers)
    assert issued.status_code == 201, issued.text
    assert (issued.json()["currency"], issued.json()["fixed_amount"]) == ("GBP", False)
    held = await http.post(
        "/v1/cards/551234567890/holds", json={"amount_minor": 1}, headers=world.pos.headers
    )
    assert held.json()["code"] == "unsupported_operation"


async def test_a_card_type_with_an_unknown_currency_is_refused(database_url, world):
    done = await giftledger(
        database_url, "card-types", "add", "bad", "--length", "8", "--currency", "XXX"
    )
    assert done.returncode != 0
    names = [row["name"] for row in json_lines(await ok(database_url, "card-types", "list"))]
    assert "bad" not in names


# Clients and tokens.


async def test_clients_create_json_prints_exactly_the_credentials(database_url, world):
    created = await create_client(
        database_url, "till", "--scopes", "cards:read,cards:redeem", "--locations", "SHOP1"
    )
    assert set(created) == {"client_id", "client_secret", "consumer_key"}
    assert created["client_id"].startswith("cl_")
    assert all(isinstance(v, str) and v for v in created.values())
    listed = by_key(json_lines(await ok(database_url, "clients", "list")), "client_id")
    till = listed[created["client_id"]]
    assert till["name"] == "till"
    assert till["consumer_key"] == created["consumer_key"]
    assert till["scopes"] == ["cards:read", "cards:redeem"]
    assert till["locations"] == ["SHOP1"]
    assert till["revoked"] is False
    assert "client_secret" not in till
    assert created["client_secret"] not in json.dumps(listed)


async def test_clients_list_shows_every_client(database_url, world):
    created = await create_client(database_url, "kiosk")
    listed = by_key(json_lines(await ok(database_url, "clients", "list")), "client_id")
    world_clients = {c.client_id for c in (world.pos, world.other, world.auditor, world.finance)}
    assert set(listed) == {*world_clients, created["client_id"]}
    default_scopes = ["cards:read", "cards:sell", "cards:redeem", "cards:reserve"]
    assert listed[created["client_id"]]["scopes"] == default_scopes


async def test_clients_create_with_an_unknown_scope_is_refused(database_url, world):
    done = await giftledger(database_url, "clients", "create", "x", "--scopes", "cards:steal")
    assert done.returncode != 0
    assert "cards:steal" in done.stderr
    listed = json_lines(await ok(database_url, "clients", "list"))
    assert "x" not in [row["name"] for row in listed]


@pytest.mark.parametrize(
    ("role", "scopes"),
    [("pos", ["cards:read", "cards:sell", "cards:redeem", "cards:reserve"]),
     ("issuer", ["cards:read", "cards:sell"]), ("auditor", ["cards:read", "audit:read"]),
     ("finance", ["cards:read", "finance:export"]), ("admin", ["admin"])],
)  # fmt: skip
async def test_clients_create_with_a_role_gets_the_roles_scopes(database_url, world, role, scopes):
    created = await create_client(database_url, role, "--role", role, "--locations", "SHOP1")
    listed = by_key(json_lines(await ok(database_url, "clients", "list")), "client_id")
    assert listed[created["client_id"]]["scopes"] == scopes
    assert listed[created["client_id"]]["locations"] == ["SHOP1"]


async def test_clients_create_with_a_role_and_scopes_is_refused(database_url, world):
    done = await giftledger(
        database_url, "clients", "create", "x", "--role", "pos", "--scopes", "admin"
    )
    assert done.returncode == 2
    assert "--role or --scopes" in done.stderr
    listed = json_lines(await ok(database_url, "clients", "list"))
    assert "x" not in [row["name"] for row in listed]


async def test_authz_matrix_prints_every_rule_with_each_roles_outcome(database_url):
    stdout = await ok(database_url, "authz", "matrix")
    lines = stdout.splitlines()
    assert lines[0].split() == ["API", "endpoint", "scope", *ROLES]
    block = next(line for line in lines if "POST /v1/cards/{number}/block " in line)
    assert block.split()[-5:] == ["403", "403", "403", "403", "allowed"]
    assert len(lines) == 1 + len(RULES) + 1  # and the as_of row of time travel
    markdown = await ok(database_url, "authz", "matrix", "--markdown")
    assert markdown == matrix_markdown()


async def test_an_issued_token_is_one_jwt_the_app_accepts(http, database_url, world):
    created = await create_client(database_url, "till", "--scopes", "cards:read")
    stdout = await ok(database_url, "tokens", "issue", created["client_id"], "--ttl-seconds", "60")
    assert stdout.endswith("\n")
    assert len(stdout.splitlines()) == 1
    token = stdout.strip()
    assert len(token.split(".")) == 3
    claims = jwt_claims(token)
    assert claims["sub"] == created["client_id"]
    assert claims["exp"] - claims["iat"] == 60
    response = await http.get("/v1/cards/x", headers=bearer(token))
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "card_not_found"


async def test_a_token_lacking_a_scope_is_forbidden(http, database_url, world):
    created = await create_client(database_url, "reader", "--scopes", "cards:read")
    token = (await ok(database_url, "tokens", "issue", created["client_id"])).strip()
    body = {"card_type": "fixed16", "amount_minor": 100}
    response = await http.post("/v1/cards", json=body, headers=bearer(token))
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


async def test_tokens_for_an_unknown_client_are_refused(database_url, world):
    done = await giftledger(database_url, "tokens", "issue", "cl_nobody")
    assert done.returncode != 0
    assert done.stdout == ""
    assert "cl_nobody" in done.stderr


async def test_a_revoked_client_gets_no_token_and_its_tokens_stop_working(
    http, database_url, world
):
    created = await create_client(database_url, "till")
    client_id = created["client_id"]
    token = (await ok(database_url, "tokens", "issue", client_id)).strip()
    assert (await http.get("/v1/cards/x", headers=bearer(token))).status_code == 404
    revoked = await ok(database_url, "clients", "revoke", client_id)
    assert revoked == f"revoked {client_id}\n"
    done = await giftledger(database_url, "tokens", "issue", client_id)
    assert done.returncode != 0
    assert done.stdout == ""
    listed = by_key(json_lines(await ok(database_url, "clients", "list")), "client_id")
    assert listed[client_id]["revoked"] is True
    again = await giftledger(database_url, "clients", "revoke", client_id)
    assert again.returncode != 0
    deadline = time.monotonic() + 5  # the app caches client records for about a second
    while (await http.get("/v1/cards/x", headers=bearer(token))).status_code != 401:
        assert time.monotonic() < deadline, "a revoked client's token still works"
        await asyncio.sleep(0.2)


async def test_cli_credentials_obtain_a_working_token_from_the_token_endpoint(
    http, database_url, world
):
    created = await create_client(database_url, "till", "--scopes", "cards:read,cards:sell")
    form = {
        "grant_type": "client_credentials",
        "client_id": created["client_id"],
        "client_secret": created["client_secret"],
    }
    response = await http.post("/oauth/token", data=form)
    assert response.status_code == 200, response.text
    granted = response.json()
    assert granted["token_type"] == "Bearer"
    assert jwt_claims(granted["access_token"])["sub"] == created["client_id"]
    headers = bearer(granted["access_token"])
    body = {"card_type": "fixed16", "amount_minor": 700, "number": "4000000000000004"}
    issued = await http.post("/v1/cards", json=body, headers=headers)
    assert issued.status_code == 201, issued.text
    got = await http.get("/v1/cards/4000000000000004", headers=headers)
    assert got.json()["balance_minor"] == 700


async def test_a_wrong_secret_gets_no_token(http, database_url, world):
    created = await create_client(database_url, "till")
    form = {
        "grant_type": "client_credentials",
        "client_id": created["client_id"],
        "client_secret": created["client_secret"] + "x",
    }
    response = await http.post("/oauth/token", data=form)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


# Projections.


async def test_projections_rebuild_of_an_empty_ledger_reports_nothing(database_url, world):
    stdout = await ok(database_url, "projections", "rebuild")
    assert stdout.strip() == "rebuilt 0 cards from 0 events"
