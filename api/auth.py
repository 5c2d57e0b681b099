"""Bearer JWTs for API clients: the client_credentials token endpoint, and scope guards."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.connection import ASGIConnection
from litestar.exceptions import PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.security.jwt import JWTAuth, Token

from projections.config import Client, ConfigStore

TOKEN_ISSUER = "giftledger"  # noqa: S105 - not a secret.
TOKEN_AUDIENCE = "giftledger"  # noqa: S105 - not a secret.
TOKEN_ALGORITHM = "HS256"  # noqa: S105 - not a secret.
# Client records are re-read at most this often per process, so a revoked client or a changed
# scope takes effect within this many seconds without a database read on every request.
CLIENT_CACHE_TTL_SECONDS = 1.0
CLIENT_CACHE_ENTRIES_MAX = 10_000
TOKEN_REQUEST_BYTES_MAX = 4096
# /metrics is for the scraper on the internal network; the reverse proxy does not expose it.
PUBLIC_PATHS = ["/oauth/token", "/schema", "/health", "/ping", "/metrics"]


def issue_token(secret: str, client_id: str, ttl_seconds: int) -> str:
    now = datetime.now(UTC)
    token = Token(
        sub=client_id,
        exp=now + timedelta(seconds=ttl_seconds),
        iat=now,
        iss=TOKEN_ISSUER,
        aud=TOKEN_AUDIENCE,
        jti=uuid.uuid4().hex,
    )
    return token.encode(secret=secret, algorithm=TOKEN_ALGORITHM)


class ClientCache:
    def __init__(self, config: ConfigStore) -> None:
        self._config = config
        self._entries: dict[str, tuple[float, Client | None]] = {}

    async def get(self, client_id: str) -> Client | None:
        now = time.monotonic()
        cached = self._entries.get(client_id)
        if cached is not None and now - cached[0] < CLIENT_CACHE_TTL_SECONDS:
            return cached[1]
        client = await self._config.client(client_id)
        if len(self._entries) >= CLIENT_CACHE_ENTRIES_MAX:
            self._entries.clear()
        self._entries[client_id] = (now, client)
        return client


async def retrieve_client(
    token: Token, connection: ASGIConnection[Any, Any, Any, Any]
) -> Client | None:
    client: Client | None = await connection.app.state.clients.get(token.sub)
    if client is None or client.revoked:
        return None
    return client


def jwt_auth(secret: str) -> JWTAuth[Client, Token]:
    return JWTAuth[Client, Token](
        retrieve_user_handler=retrieve_client,
        token_secret=secret,
        algorithm=TOKEN_ALGORITHM,
        accepted_issuers=[TOKEN_ISSUER],
        accepted_audiences=[TOKEN_AUDIENCE],
        exclude=PUBLIC_PATHS,
    )


def check_scope(client: Client, scope: str) -> None:
    """Refuse (403) a client that holds neither the scope nor admin."""
    if scope not in client.scopes and "admin" not in client.scopes:
        raise PermissionDeniedException(f"this client lacks the scope {scope!r}")


def requires(scope: str) -> Any:
    """A guard that lets through only clients that hold the scope (or admin)."""

    def guard(connection: ASGIConnection[Any, Client, Any, Any], _: BaseRouteHandler) -> None:
        check_scope(connection.user, scope)

    return guard


class TokenRequest(msgspec.Struct, forbid_unknown_fields=False):
    grant_type: str = "client_credentials"
    client_id: str = ""
    client_secret: str = ""
    scope: str | None = None


class TokenResponse(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int


def _oauth_error(status: int, error: str, description: str) -> Response[Any]:
    """RFC 6749 section 5.2 error body, which OAuth client libraries parse."""
    return Response(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


async def _token_request(request: Request[Any, Any, Any]) -> TokenRequest | None:
    body = await request.body()
    if len(body) > TOKEN_REQUEST_BYTES_MAX:
        return None
    try:
        if request.content_type[0] == "application/x-www-form-urlencoded":
            form = await request.form()
            return msgspec.convert(dict(form), TokenRequest)
        return msgspec.json.decode(body or b"{}", type=TokenRequest)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


@post("/oauth/token", status_code=200, tags=["auth"], summary="client_credentials grant")
async def token_endpoint(request: Request[Any, Any, Any]) -> Response[Any]:
    """Exchange a client id and secret for a bearer token (form-encoded or JSON body)."""
    form = await _token_request(request)
    if form is None:
        return _oauth_error(400, "invalid_request", "send grant_type, client_id and client_secret")
    if form.grant_type != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
    state = request.app.state
    client = await state.config.authenticate(form.client_id, form.client_secret)
    if client is None:
        return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
    ttl = state.settings.token_ttl_seconds
    token = issue_token(state.jwt_secret, client.client_id, ttl)
    return Response(
        TokenResponse(access_token=token, token_type="Bearer", expires_in=ttl),  # noqa: S106
        headers={"Cache-Control": "no-store"},
    )
