"""Bearer JWTs for API clients: the client_credentials token endpoint and token verification.

Which client may call which route is decided in api/authz.py."""

from __future__ import annotations

import ipaddress
import secrets
import time
import uuid
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
import msgspec
from litestar import Request, Response, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from api.authz import public_path_patterns
from api.fields import (
    CLIENT_ID_LENGTH_MAX,
    CLIENT_SECRET_LENGTH_MAX,
    GRANT_TYPE_LENGTH_MAX,
    SCOPE_LENGTH_MAX,
)
from projections.config import Client, ConfigStore, SigningKey

TOKEN_ISSUER = "giftledger"  # noqa: S105 - not a secret.
TOKEN_AUDIENCE = "giftledger"  # noqa: S105 - not a secret.
# Pinned: a token's own header never chooses the algorithm, so "none" and RS256/HS256
# confusion are refused by the decoder before any key is tried.
TOKEN_ALGORITHM = "HS256"  # noqa: S105 - not a secret.
TOKEN_REQUIRED_CLAIMS = ("sub", "exp", "nbf", "iat", "iss", "aud")
# The key set is re-read at most this often per process, so a removed key's tokens stop
# working within this many seconds everywhere; a rotated-in key is picked up as fast.
KEY_CACHE_TTL_SECONDS = 1.0
# A token naming a kid this process does not know yet (rotated in by another process less
# than a second ago) re-reads the key set at once, but at most this often.
KEY_REFRESH_ON_MISS_SECONDS_MIN = 0.1
# Client records are re-read at most this often per process, so a revoked client or a changed
# scope takes effect within this many seconds without a database read on every request.
CLIENT_CACHE_TTL_SECONDS = 1.0
CLIENT_CACHE_ENTRIES_MAX = 10_000
# Verified tokens remembered per process; the cache is emptied when it reaches this size.
VERIFIED_TOKENS_MAX = 10_000
TOKEN_REQUEST_BYTES_MAX = 4096


def issue_token(key: SigningKey, client_id: str, ttl_seconds: int) -> str:
    """A bearer token for the client, signed with the key and naming it by kid."""
    now = datetime.now(UTC)
    token = Token(
        sub=client_id,
        exp=now + timedelta(seconds=ttl_seconds),
        iat=now,
        iss=TOKEN_ISSUER,
        aud=TOKEN_AUDIENCE,
        jti=uuid.uuid4().hex,
    )
    # Token.encode takes no header, and would nest `extras`; the claims are the Token's own.
    claims = {k: v for k, v in asdict(token).items() if v is not None and k != "extras"}
    return jwt.encode(
        {**claims, "nbf": token.iat},
        key.secret,
        algorithm=TOKEN_ALGORITHM,
        headers={"kid": key.kid},
    )


class KeyCache:
    """The signing keys by kid: the pinned one alone, or the database's set, briefly cached."""

    def __init__(self, config: ConfigStore, pinned: SigningKey | None = None) -> None:
        self._config = config
        self._pinned = pinned
        self._keys: dict[str, SigningKey] = {pinned.kid: pinned} if pinned else {}
        self._read_at = -KEY_CACHE_TTL_SECONDS

    async def _refresh(self, age_seconds_max: float) -> None:
        now = time.monotonic()
        if self._pinned is None and now - self._read_at >= age_seconds_max:
            self._keys = {key.kid: key for key in await self._config.signing_keys()}
            self._read_at = now

    async def get(self, kid: str) -> SigningKey | None:
        await self._refresh(KEY_CACHE_TTL_SECONDS)
        if kid not in self._keys:
            await self._refresh(KEY_REFRESH_ON_MISS_SECONDS_MIN)
        return self._keys.get(kid)

    async def newest(self) -> SigningKey:
        await self._refresh(KEY_CACHE_TTL_SECONDS)
        assert self._keys, "prepare_database creates a key and the last is never removed"
        return list(self._keys.values())[-1]


class KeyedJWTAuthenticationMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware, with the verifying key chosen by the token's kid.

    Only the key lookup is new: Token.decode still checks the signature with the pinned
    algorithm, and exp, nbf, iss, aud and the required claims.
    """

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        state = connection.app.state
        verified: VerifiedTokens = state.setdefault("verified_tokens", VerifiedTokens())
        token = await verified.get(encoded_token, state.signing_keys)
        if token is None:
            key = await _key_for(encoded_token, state.signing_keys)
            token = self._verify(encoded_token, key)
            verified.put(encoded_token, token, key)
        user = await self.retrieve_user_handler(token, connection)
        if not user:
            raise NotAuthorizedException()
        return AuthenticationResult(user=user, auth=token)

    def _verify(self, encoded_token: str, key: SigningKey) -> Token:
        token: Token = self.token_cls.decode(
            encoded_token=encoded_token,
            secret=key.secret,
            algorithm=self.algorithm,
            audience=self.token_audience,
            issuer=self.token_issuer,
            require_claims=self.require_claims,
            verify_exp=self.verify_expiry,
            verify_nbf=self.verify_not_before,
            strict_audience=self.strict_audience,
        )
        return token


class VerifiedTokens:
    """Tokens whose signature and claims were checked, so a client's next request skips the
    HMAC and JSON work (a fifth of a payment's CPU). A hit is re-checked against the clock
    (exp, nbf) and the current key set, so an expired token or a removed key is refused exactly
    as without the cache; the client itself is looked up on every request."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[Token, SigningKey]] = {}

    async def get(self, encoded_token: str, keys: KeyCache) -> Token | None:
        entry = self._tokens.get(encoded_token)
        if entry is None:
            return None
        token, key = entry
        now = datetime.now(UTC)
        not_before = token.extras.get("nbf")
        if (
            await keys.get(key.kid) != key
            or not token.exp > now
            or not isinstance(not_before, int | float)
            or not_before > now.timestamp()
        ):
            del self._tokens[encoded_token]
            return None
        return token

    def put(self, encoded_token: str, token: Token, key: SigningKey) -> None:
        if len(self._tokens) >= VERIFIED_TOKENS_MAX:
            self._tokens.clear()
        self._tokens[encoded_token] = (token, key)


async def _key_for(encoded_token: str, keys: KeyCache) -> SigningKey:
    try:
        kid = jwt.get_unverified_header(encoded_token).get("kid")
    except jwt.InvalidTokenError:
        raise NotAuthorizedException("Invalid token") from None
    key = await keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise NotAuthorizedException("Invalid token")
    return key


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


def jwt_auth() -> JWTAuth[Client, Token]:
    return JWTAuth[Client, Token](
        retrieve_user_handler=retrieve_client,
        # Never used: KeyedJWTAuthenticationMiddleware verifies with the token's own key. A
        # random value makes sure that nothing could verify with it by mistake.
        token_secret=secrets.token_urlsafe(48),
        algorithm=TOKEN_ALGORITHM,
        accepted_issuers=[TOKEN_ISSUER],
        accepted_audiences=[TOKEN_AUDIENCE],
        require_claims=TOKEN_REQUIRED_CLAIMS,
        verify_expiry=True,
        verify_not_before=True,
        strict_audience=True,
        authentication_middleware_class=KeyedJWTAuthenticationMiddleware,
        exclude=public_path_patterns(),
    )


# RFC 6749 section 3.2: the server MUST ignore unrecognized request parameters, so unknown
# fields are let through here, unlike every other body; none of them can set anything.
class TokenRequest(msgspec.Struct, forbid_unknown_fields=False):
    grant_type: Annotated[str, msgspec.Meta(max_length=GRANT_TYPE_LENGTH_MAX)] = (
        "client_credentials"
    )
    client_id: Annotated[str, msgspec.Meta(max_length=CLIENT_ID_LENGTH_MAX)] = ""
    client_secret: Annotated[str, msgspec.Meta(max_length=CLIENT_SECRET_LENGTH_MAX)] = ""
    scope: Annotated[str, msgspec.Meta(max_length=SCOPE_LENGTH_MAX)] | None = None


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


INSECURE_TRANSPORT = "insecure_transport"


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def transport_allows_token(request: Request[Any, Any, Any]) -> bool:
    """A client secret and the token it buys travel in clear over plain HTTP, so they are only
    exchanged over HTTPS, from this machine, or where the operator allowed it.

    The scheme is HTTPS when TLS ends in uvicorn, or when a proxy uvicorn trusts
    (`--forwarded-allow-ips`, 127.0.0.1 by default) sends `X-Forwarded-Proto: https`; uvicorn
    then also names the forwarded client address, so a proxied plain request is not loopback.
    """
    if request.app.state.settings.allow_insecure_tokens or request.url.scheme == "https":
        return True
    return _is_loopback(request.client.host if request.client else None)


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
    if not transport_allows_token(request):
        return _oauth_error(
            403, INSECURE_TRANSPORT, "tokens are issued over HTTPS only (see README: Security)"
        )
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
    token = issue_token(await state.signing_keys.newest(), client.client_id, ttl)
    return Response(
        TokenResponse(access_token=token, token_type="Bearer", expires_in=ttl),  # noqa: S106
        headers={"Cache-Control": "no-store"},
    )
