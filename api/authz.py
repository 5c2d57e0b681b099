"""Who may call what: roles as sets of scopes, and one rule per endpoint, checked by one guard.

Every route the app serves has exactly one rule here, keyed by its HTTP method and its path
template as Litestar knows it. The app-level guard `authorize` refuses a route without a rule
(deny by default), a request without a client on a protected route (401), and a client that
lacks the rule's scope (403). Where a rule is location-bound, the request names a location and
`api.context.origin_for` refuses a client limited to other locations (403 location_forbidden).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from projections.config import DEFAULT_CLIENT_SCOPES, SCOPES, Client

ADMIN_SCOPE = "admin"
# The scopes that change cards; a role holding none of them is read-only.
WRITE_SCOPES = frozenset({"cards:sell", "cards:redeem", "cards:reserve", ADMIN_SCOPE})

# A role is a named set of scopes, for `giftledger clients create --role`. Finance also reads
# cards, to look one up while it chases a settlement difference.
ROLES: dict[str, tuple[str, ...]] = {
    "pos": DEFAULT_CLIENT_SCOPES,  # A client created without --role or --scopes is a till.
    "issuer": ("cards:read", "cards:sell"),
    "auditor": ("cards:read", "audit:read"),
    "finance": ("cards:read", "finance:export"),
    "admin": (ADMIN_SCOPE,),
}
assert all(set(scopes) <= set(SCOPES) for scopes in ROLES.values())


@dataclass(frozen=True)
class Rule:
    """What a route needs: a scope (None: public, no token), and whether it acts at a location."""

    api: str
    scope: str | None
    located: bool = False
    # Query parameters that need a further scope when present, e.g. time travel with as_of.
    query_scopes: tuple[tuple[str, str], ...] = ()


def _public(api: str) -> Rule:
    return Rule(api, None)


def _needs(api: str, scope: str, *, located: bool = False) -> Rule:
    assert scope in SCOPES, scope
    return Rule(api, scope, located)


# A card read with as_of is time travel, an auditor's read.
TIME_TRAVEL = (("as_of", "audit:read"),)
_RESICO = "/api/giftcards/v1"

RULES: dict[tuple[str, str], Rule] = {
    ("GET", f"{_RESICO}/cards/{{card_id}}"): _needs("Resico", "cards:read"),
    ("POST", f"{_RESICO}/cards/{{card_id}}"): _needs("Resico", "cards:sell", located=True),
    ("POST", f"{_RESICO}/transactions/{{consumer_key}}/cards/{{card_id}}"):
        _needs("Resico", "cards:redeem", located=True),
    ("POST", f"{_RESICO}/reserve/{{card_id}}"): _needs("Resico", "cards:reserve", located=True),
    # Releases only the caller's own hold, wherever it was taken.
    ("GET", f"{_RESICO}/cancelreserve/{{card_id}}"): _needs("Resico", "cards:reserve"),
    ("POST", "/giftcard"): _needs("GiftStream", "cards:sell", located=True),
    ("POST", "/v1/cards"): _needs("native", "cards:sell", located=True),
    ("GET", "/v1/cards/{number}"): Rule("native", "cards:read", query_scopes=TIME_TRAVEL),
    ("POST", "/v1/cards/{number}/redeem"): _needs("native", "cards:redeem", located=True),
    ("POST", "/v1/cards/{number}/holds"): _needs("native", "cards:reserve", located=True),
    ("POST", "/v1/cards/{number}/holds/{hold_id}/capture"):
        _needs("native", "cards:redeem", located=True),
    # Releases only the caller's own hold, wherever it was taken.
    ("POST", "/v1/cards/{number}/holds/{hold_id}/void"): _needs("native", "cards:reserve"),
    ("POST", "/v1/cards/{number}/load"): _needs("native", "cards:sell", located=True),
    ("POST", "/v1/cards/{number}/refund"): _needs("native", "cards:redeem", located=True),
    ("POST", "/v1/cards/{number}/block"): _needs("admin", ADMIN_SCOPE),
    ("POST", "/v1/cards/{number}/unblock"): _needs("admin", ADMIN_SCOPE),
    ("GET", "/v1/cards/{number}/events"): _needs("audit", "audit:read"),
    ("GET", "/v1/audit/verify"): _needs("audit", "audit:read"),
    ("GET", "/v1/reports/liability"): _needs("reports", "finance:export"),
    ("GET", "/v1/reports/liability/series"): _needs("reports", "finance:export"),
    ("GET", "/v1/reports/daily"): _needs("reports", "finance:export"),
    ("GET", "/v1/reports/breakage"): _needs("reports", "finance:export"),
    ("POST", "/v1/reconciliations"): _needs("reconcile", "finance:export"),
    ("GET", "/v1/exports/ledger"): _needs("exports", "finance:export"),
    ("GET", "/v1/exports/ledger/manifest"): _needs("exports", "finance:export"),
    # The charts page carries no data: its script fetches the reports with the user's token.
    ("GET", "/reports"): _public("reports"),
    ("POST", "/oauth/token"): _public("auth"),
    ("GET", "/health"): _public("ops"),
    ("GET", "/health/live"): _public("ops"),
    ("GET", "/health/ready"): _public("ops"),
    ("GET", "/ping"): _public("ops"),
    # For the scraper on the internal network; the reverse proxy does not expose it.
    ("GET", "/metrics"): _public("ops"),
    ("GET", "/schema"): _public("docs"),
    ("GET", "/schema/scalar"): _public("docs"),
    ("GET", "/schema/openapi.json"): _public("docs"),
    ("GET", "/schema/oauth2-redirect.html"): _public("docs"),
    ("GET", "/schema/{path}"): _public("docs"),
}  # fmt: skip


def holds_scope(scopes: tuple[str, ...], scope: str) -> bool:
    """Whether a client (or a role) with these scopes may use a rule needing this one."""
    return scope in scopes or ADMIN_SCOPE in scopes


def check_scope(client: Client, scope: str) -> None:
    """Refuse (403) a client that holds neither the scope nor admin."""
    if not holds_scope(client.scopes, scope):
        raise PermissionDeniedException(f"this client lacks the scope {scope!r}")


# Set in a route's `opt` to mark an OPTIONS handler that answers only its path's Allow header.
ALLOW_ONLY = "allow_only"


def is_automatic_options(handler: BaseRouteHandler) -> bool:
    """An OPTIONS handler that answers only the Allow header: Litestar's own, or one marked
    ALLOW_ONLY that replaces it (api/resico.py). It reveals nothing, so it needs no rule."""
    if handler.opt.get(ALLOW_ONLY):
        return True
    qualname = getattr(getattr(handler, "fn", None), "__qualname__", "")
    return bool(qualname == "HTTPRoute.create_options_handler.<locals>.options_handler")


# The public path templates; a path is public for every method or for none.
PUBLIC_PATHS = frozenset(path for (_, path), rule in RULES.items() if rule.scope is None)
assert not PUBLIC_PATHS & {path for (_, path), rule in RULES.items() if rule.scope is not None}


def is_public_path(path: str) -> bool:
    """Whether the path template's rules are public (for the OpenAPI document's security)."""
    return path in PUBLIC_PATHS


async def authorize(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The one guard, on the app: the route's rule, or 403 when it has none.

    A coroutine on purpose: Litestar runs a plain function guard in a worker thread.
    """
    method = str(connection.scope.get("method", ""))
    rule = RULES.get((method, connection.scope["path_template"]))
    if rule is None:
        if method == "OPTIONS" and is_automatic_options(handler):
            return
        raise PermissionDeniedException("no authorisation rule for this route")
    if rule.scope is None:
        return
    # A protected route whose path the authentication middleware let through has no client.
    client = connection.scope.get("user")
    if not isinstance(client, Client):
        raise NotAuthorizedException("a bearer token is required")
    check_scope(client, rule.scope)
    for parameter, scope in rule.query_scopes:
        if parameter in connection.query_params:
            check_scope(client, scope)


_PATH_PARAMETER = re.compile(r"\{[^}]+\}")


def _anchored(template: str) -> str:
    parts = [re.escape(part) for part in _PATH_PARAMETER.split(template)]
    return "^" + "[^/]+".join(parts) + "/?$"


def public_path_patterns() -> list[str]:
    """Anchored patterns of the public paths, for the authentication middleware to skip.

    Anchored, since Litestar searches a pattern anywhere in the path: a bare "/ping" would also
    skip authentication for /v1/cards/ping.
    """
    return [_anchored(path) for path in sorted(PUBLIC_PATHS)]


# The matrix: what each role gets on each rule.
ALLOWED = "allowed"
ALLOWED_AT_OWN_LOCATIONS = "allowed, own locations"
REFUSED = "403"
PUBLIC = "public"


def outcome(rule_scope: str | None, located: bool, role_scopes: tuple[str, ...]) -> str:
    if rule_scope is None:
        return PUBLIC
    if not holds_scope(role_scopes, rule_scope):
        return REFUSED
    return ALLOWED_AT_OWN_LOCATIONS if located else ALLOWED


def matrix() -> list[list[str]]:
    """Rows of API, endpoint, scope and one outcome per role; a header row first."""
    rows = [["API", "endpoint", "scope", *ROLES]]
    for (method, path), rule in RULES.items():
        outcomes = [outcome(rule.scope, rule.located, scopes) for scopes in ROLES.values()]
        rows.append([rule.api, f"{method} {path}", rule.scope or "-", *outcomes])
        for parameter, scope in rule.query_scopes:
            outcomes = [outcome(scope, rule.located, scopes) for scopes in ROLES.values()]
            rows.append([rule.api, f"{method} {path}?{parameter}=", scope, *outcomes])
    return rows


def matrix_markdown() -> str:
    rows = matrix()
    cells = [[f"`{cell}`" if column in (1, 2) and cell != "-" else cell
              for column, cell in enumerate(row)] for row in rows[1:]]  # fmt: skip
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def matrix_text() -> str:
    rows = matrix()
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )
