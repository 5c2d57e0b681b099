"""The authorisation matrix holds: every endpoint for every role, and at a foreign location."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from api.authz import (
    REFUSED,
    ROLES,
    RULES,
    WRITE_SCOPES,
    authorize,
    is_automatic_options,
    matrix_markdown,
    outcome,
)
from api.service import new_hold_id
from ledger.card import Origin
from tests.conftest import ApiClient

RESICO = "/api/giftcards/v1"
CARD = "1000000000000001"  # fixed16, 50.00 EUR, sold at SHOP1, holds 10.00 for the actor
LOADABLE = "1000000000000000002"  # dynamic19, 50.00 EUR, 10.00 spent
BLOCKED = "1000000000000003"  # fixed16, blocked
NEW = "1000000000000099"
ANONYMOUS = "anonymous"  # no token at all
README = Path(__file__).resolve().parents[2] / "README.md"
MATRIX_START = "<!-- authz-matrix:start (giftledger authz matrix --markdown) -->\n"
MATRIX_END = "<!-- authz-matrix:end -->\n"


@dataclass(frozen=True)
class Context:
    actor: ApiClient | None
    # Whose consumer key Resico's use names, and whose hold the capture and void name.
    owner: ApiClient
    hold_id: str
    location: str = "SHOP1"
    site_id: int = 1


Request = tuple[str, dict[str, Any]]  # the URL, and the test client's keyword arguments


def _day(offset_days: int = 0) -> str:
    return (datetime.now(UTC).date() + timedelta(days=offset_days)).isoformat()


def _settlement() -> bytes:
    return f"date,location,reference,amount\n{_day()},SHOP1,nobody,1.00\n".encode()


def _instants() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"from": (now - timedelta(days=1)).isoformat(), "to": now.isoformat()}


@dataclass(frozen=True)
class Case:
    """One endpoint: the roles allowed (stated here again, apart from RULES), the status an
    allowed role gets, and its request."""

    method: str
    path: str
    allowed: frozenset[str]
    ok: int
    request: Callable[[Context], Request]
    located: bool = field(default=False)

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


EVERYONE = frozenset(ROLES)
POS_ADMIN = frozenset({"pos", "admin"})
SELLERS = frozenset({"pos", "issuer", "admin"})
AUDIT = frozenset({"auditor", "admin"})
FINANCE = frozenset({"finance", "admin"})
ADMIN = frozenset({"admin"})


def _located(method: str, path: str, allowed: frozenset[str], ok: int,
             request: Callable[[Context], Request]) -> Case:  # fmt: skip
    return Case(method, path, allowed, ok, request, located=True)


CASES = [
    Case("GET", f"{RESICO}/cards/{{card_id}}", EVERYONE, 200,
         lambda c: (f"{RESICO}/cards/{CARD}", {})),
    _located("POST", f"{RESICO}/cards/{{card_id}}", SELLERS, 200,
             lambda c: (f"{RESICO}/cards/{NEW}", {"json": {
                 "amount": "5.00", "transactionNo": "77", "locationCode": c.location}})),
    _located("POST", f"{RESICO}/transactions/{{consumer_key}}/cards/{{card_id}}", POS_ADMIN, 200,
             lambda c: (f"{RESICO}/transactions/{c.owner.consumer_key}/cards/{CARD}",
                        {"json": {"amount": "1.00", "locationCode": c.location}})),
    _located("POST", f"{RESICO}/reserve/{{card_id}}", POS_ADMIN, 200,
             lambda c: (f"{RESICO}/reserve/{CARD}",
                        {"json": {"amount": "1.00", "locationCode": c.location}})),
    Case("GET", f"{RESICO}/cancelreserve/{{card_id}}", POS_ADMIN, 200,
         lambda c: (f"{RESICO}/cancelreserve/{CARD}", {})),
    _located("POST", "/giftcard", SELLERS, 200,
             lambda c: ("/giftcard", {"json": {
                 "cardType": "2", "currencyCode": "978", "expiry": _day(400), "identifier": "",
                 "initialBalance": "2.99", "siteId": str(c.site_id)}})),
    _located("POST", "/v1/cards", SELLERS, 201,
             lambda c: ("/v1/cards", {"json": {
                 "card_type": "fixed16", "amount_minor": 500, "location_code": c.location}})),
    Case("GET", "/v1/cards/{number}", EVERYONE, 200, lambda c: (f"/v1/cards/{CARD}", {})),
    _located("POST", "/v1/cards/{number}/redeem", POS_ADMIN, 200,
             lambda c: (f"/v1/cards/{CARD}/redeem",
                        {"json": {"amount_minor": 100, "location_code": c.location}})),
    _located("POST", "/v1/cards/{number}/holds", POS_ADMIN, 201,
             lambda c: (f"/v1/cards/{CARD}/holds",
                        {"json": {"amount_minor": 100, "location_code": c.location}})),
    _located("POST", "/v1/cards/{number}/holds/{hold_id}/capture", POS_ADMIN, 200,
             lambda c: (f"/v1/cards/{CARD}/holds/{c.hold_id}/capture",
                        {"json": {"amount_minor": 100, "location_code": c.location}})),
    Case("POST", "/v1/cards/{number}/holds/{hold_id}/void", POS_ADMIN, 200,
         lambda c: (f"/v1/cards/{CARD}/holds/{c.hold_id}/void", {})),
    _located("POST", "/v1/cards/{number}/load", SELLERS, 200,
             lambda c: (f"/v1/cards/{LOADABLE}/load",
                        {"json": {"amount_minor": 100, "location_code": c.location}})),
    _located("POST", "/v1/cards/{number}/refund", POS_ADMIN, 200,
             lambda c: (f"/v1/cards/{LOADABLE}/refund",
                        {"json": {"amount_minor": 100, "location_code": c.location}})),
    Case("POST", "/v1/cards/{number}/block", ADMIN, 200,
         lambda c: (f"/v1/cards/{CARD}/block", {"json": {"reason": "lost"}})),
    Case("POST", "/v1/cards/{number}/unblock", ADMIN, 200,
         lambda c: (f"/v1/cards/{BLOCKED}/unblock", {})),
    Case("GET", "/v1/cards/{number}/events", AUDIT, 200,
         lambda c: (f"/v1/cards/{CARD}/events", {})),
    Case("GET", "/v1/audit/verify", AUDIT, 200, lambda c: ("/v1/audit/verify", {})),
    Case("GET", "/v1/reports/liability", FINANCE, 200, lambda c: ("/v1/reports/liability", {})),
    Case("GET", "/v1/reports/liability/series", FINANCE, 200,
         lambda c: ("/v1/reports/liability/series", {})),
    Case("GET", "/v1/reports/daily", FINANCE, 200, lambda c: ("/v1/reports/daily", {})),
    Case("GET", "/v1/reports/breakage", FINANCE, 200, lambda c: ("/v1/reports/breakage", {})),
    Case("POST", "/v1/reconciliations", FINANCE, 200,
         lambda c: ("/v1/reconciliations", {"content": _settlement(),
                                            "headers": {"Content-Type": "text/csv"}})),
    Case("GET", "/v1/exports/ledger", FINANCE, 200,
         lambda c: ("/v1/exports/ledger", {"params": _instants()})),
    Case("GET", "/v1/exports/ledger/manifest", FINANCE, 200,
         lambda c: ("/v1/exports/ledger/manifest", {"params": _instants()})),
    Case("GET", "/reports", EVERYONE, 200, lambda c: ("/reports", {})),
    Case("POST", "/oauth/token", EVERYONE, 200,
         lambda c: ("/oauth/token", {"data": {"grant_type": "client_credentials",
                                              "client_id": c.owner.client_id,
                                              "client_secret": c.owner.client_secret}})),
    Case("GET", "/health", EVERYONE, 200, lambda c: ("/health", {})),
    Case("GET", "/health/live", EVERYONE, 200, lambda c: ("/health/live", {})),
    Case("GET", "/health/ready", EVERYONE, 200, lambda c: ("/health/ready", {})),
    Case("GET", "/ping", EVERYONE, 200, lambda c: ("/ping", {})),
    Case("GET", "/metrics", EVERYONE, 200, lambda c: ("/metrics", {})),
    Case("GET", "/schema", EVERYONE, 200, lambda c: ("/schema", {})),
    Case("GET", "/schema/scalar", EVERYONE, 200, lambda c: ("/schema/scalar", {})),
    Case("GET", "/schema/openapi.json", EVERYONE, 200, lambda c: ("/schema/openapi.json", {})),
    Case("GET", "/schema/oauth2-redirect.html", EVERYONE, 200,
         lambda c: ("/schema/oauth2-redirect.html", {})),
    # Litestar's answer to a document it does not have; public, so not 401 or 403.
    Case("GET", "/schema/{path}", EVERYONE, 404, lambda c: ("/schema/nothing", {})),
]  # fmt: skip
PUBLIC_CASES = {case.id for case in CASES if RULES[(case.method, case.path)].scope is None}


async def prepare(http: Any, world: Any, app: Litestar, owner: ApiClient) -> Context:
    """The cards every case acts on, and a hold on CARD that `owner` took."""
    sale = {"amount": "50.00", "transactionNo": "1", "locationCode": "SHOP1"}
    sold = await http.post(f"{RESICO}/cards/{CARD}", json=sale, headers=world.pos.headers)
    assert sold.status_code == 200, sold.text
    for number, card_type in ((LOADABLE, "dynamic19"), (BLOCKED, "fixed16")):
        body = {"card_type": card_type, "amount_minor": 5000, "number": number,
                "location_code": "SHOP1"}  # fmt: skip
        issued = await http.post("/v1/cards", json=body, headers=world.pos.headers)
        assert issued.status_code == 201, issued.text
    spent = await http.post(f"/v1/cards/{LOADABLE}/redeem", headers=world.pos.headers,
                            json={"amount_minor": 1000, "location_code": "SHOP1"})  # fmt: skip
    assert spent.status_code == 200, spent.text
    # Straight through the service: a role that may not reserve still needs a hold to name.
    service = app.state.service
    now = datetime.now(UTC)
    await service.block(BLOCKED, "lost", Origin(now, world.pos.client_id))
    hold_id = new_hold_id()
    await service.reserve(CARD, 1000, None, Origin(now, owner.client_id, "SHOP1", 1), hold_id)
    return Context(actor=None, owner=owner, hold_id=hold_id)


async def events_logged(pool: Any) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM ledger_log"))


async def send(http: Any, case: Case, context: Context) -> Any:
    url, options = case.request(context)
    headers = {**options.pop("headers", {}), **(context.actor.headers if context.actor else {})}
    return await http.request(case.method, url, headers=headers, **options)


def assert_refused(response: Any, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    if response.headers["content-type"].startswith("application/problem+json"):
        assert response.json()["code"] == {401: "unauthorized", 403: "forbidden"}.get(
            status, response.json()["code"]
        ), response.text
    assert detail in response.text, response.text


@pytest.mark.parametrize("role", [*ROLES, ANONYMOUS])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
async def test_every_endpoint_answers_each_role_as_the_matrix_says(
    http, world, app, pool, case, role
):
    actor = None if role == ANONYMOUS else await world.client(role, ROLES[role])
    context = await prepare(http, world, app, actor or world.pos)
    context = Context(actor, context.owner, context.hold_id)
    logged = await events_logged(pool)
    response = await send(http, case, context)
    if case.id in PUBLIC_CASES or role in case.allowed:
        assert response.status_code == case.ok, response.text
    elif role == ANONYMOUS:
        assert_refused(response, 401, "")
        assert await events_logged(pool) == logged
    else:
        assert_refused(response, 403, "lacks the scope")
        assert await events_logged(pool) == logged


@pytest.mark.parametrize("case", [case for case in CASES if case.located], ids=lambda case: case.id)
@pytest.mark.parametrize(("location", "site_id"), [("SHOP1", 1), ("SHOP2", 2)])
async def test_a_client_limited_to_a_location_acts_only_there(
    http, world, app, pool, case, location, site_id
):
    role = "issuer" if case.allowed == SELLERS else "pos"
    actor = await world.client("till", ROLES[role], locations=("SHOP1",))
    context = await prepare(http, world, app, actor)
    context = Context(actor, actor, context.hold_id, location, site_id)
    logged = await events_logged(pool)
    response = await send(http, case, context)
    if location == "SHOP1":
        assert response.status_code == case.ok, response.text
        assert await events_logged(pool) > logged
        return
    assert response.status_code == 403, response.text
    if case.path == "/giftcard":
        assert response.json()["message"] == "Forbidden: this client may not act at that site"
    else:
        assert response.json()["code"] == "location_forbidden", response.text
    assert await events_logged(pool) == logged


def test_every_case_is_a_rule_and_every_rule_a_case_with_the_same_location_binding():
    assert {(case.method, case.path) for case in CASES} == set(RULES)
    for case in CASES:
        assert RULES[(case.method, case.path)].located == case.located, case.id


def test_every_registered_route_has_a_rule_and_every_rule_a_route(app):
    registered = {
        (method, route.path_format)
        for route in app.routes
        for handler in route.route_handlers
        for method in getattr(handler, "http_methods", ())
        if not is_automatic_options(handler)
    }
    assert registered == set(RULES)


async def test_a_route_without_a_rule_is_refused():
    @get("/unruled", sync_to_thread=False)
    def unruled() -> str:
        return "should not be served"

    async with AsyncTestClient(app=Litestar([unruled], guards=[authorize])) as client:
        response = await client.get("/unruled")
    assert response.status_code == 403
    assert "no authorisation rule" in response.text


async def test_a_protected_path_that_contains_a_public_one_still_needs_a_token(http, world):
    # Litestar searches the exclude patterns anywhere in the path: these once skipped auth.
    for path in (f"{RESICO}/cards/ping", "/v1/cards/health", "/v1/cards/metrics/events"):
        assert_refused(await http.get(path), 401, "")


async def test_automatic_options_answers_only_the_allowed_methods(http, world):
    response = await http.options(f"{RESICO}/cards/{CARD}")
    assert response.status_code == 204
    assert "GET" in response.headers["allow"].split(", ")
    assert response.content == b""


@pytest.mark.parametrize("role", list(ROLES))
async def test_time_travel_needs_audit_read(http, world, app, role):
    actor = await world.client(role, ROLES[role])
    await prepare(http, world, app, actor)
    params = {"as_of": datetime.now(UTC).isoformat()}
    response = await http.get(f"/v1/cards/{CARD}", params=params, headers=actor.headers)
    if role in AUDIT:
        assert response.status_code == 200, response.text
        assert response.json()["number"] == CARD
    else:
        assert_refused(response, 403, "lacks the scope 'audit:read'")


POS_FORBIDDEN = [
    ("GET", f"/v1/cards/{CARD}/events"),
    ("GET", "/v1/audit/verify"),
    ("GET", "/v1/exports/ledger"),
    ("GET", "/v1/exports/ledger/manifest"),
    ("GET", "/v1/reports/liability"),
    ("POST", "/v1/reconciliations"),
    ("POST", f"/v1/cards/{CARD}/block"),
    ("POST", f"/v1/cards/{BLOCKED}/unblock"),
]


async def test_a_pos_client_cannot_read_history_export_or_administer(http, world, app, pool):
    await prepare(http, world, app, world.pos)
    logged = await events_logged(pool)
    for method, url in POS_FORBIDDEN:
        response = await http.request(method, url, headers=world.pos.headers)
        assert_refused(response, 403, "lacks the scope")
    assert await events_logged(pool) == logged


async def test_an_auditor_is_refused_every_write_and_changes_nothing(http, world, app, pool):
    assert not set(ROLES["auditor"]) & WRITE_SCOPES
    context = await prepare(http, world, app, world.auditor)
    context = Context(world.auditor, world.auditor, context.hold_id)
    logged = await events_logged(pool)
    writes = [case for case in CASES if RULES[(case.method, case.path)].scope in WRITE_SCOPES]
    assert len(writes) == 14
    for case in writes:
        assert_refused(await send(http, case, context), 403, "lacks the scope")
    assert await events_logged(pool) == logged


def test_admin_is_allowed_everywhere_and_every_role_is_refused_somewhere():
    for rule in RULES.values():
        assert outcome(rule.scope, rule.located, ROLES["admin"]) != REFUSED
    for role in ROLES.keys() - {"admin"}:
        assert any(outcome(r.scope, r.located, ROLES[role]) == REFUSED for r in RULES.values())


def test_the_readme_matrix_is_the_generated_one():
    readme = README.read_text()
    match = re.search(re.escape(MATRIX_START) + "(.*?)" + re.escape(MATRIX_END), readme, re.S)
    assert match, "the README's Security section lost its matrix markers"
    assert match.group(1) == matrix_markdown(), "run: giftledger authz matrix --markdown"
