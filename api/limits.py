"""Abuse limits: a request rate per client, a stricter budget for 404s, and a rate per address
on the token endpoint.

Every bucket lives in this process's memory, so each limit holds per process: a service run
with N workers or instances lets a client through up to N times its configured rate. That
keeps a shared store off the hot path of every request; the limits bound abuse, they are not
a billing quota.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from litestar.enums import ScopeType
from litestar.exceptions import TooManyRequestsException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.settings import RateLimit, Settings
from projections.config import Client

# Buckets kept per process; beyond this the least recently used is dropped (and starts full
# again if its client comes back), so memory stays bounded whatever the callers do.
BUCKETS_MAX = 100_000
# Requests that name a card by its number in the path: the ones enumeration would walk.
CARD_NUMBER_PATH_PARAMS = frozenset({"number", "card_id"})
# Unauthenticated paths limited per remote address: each token request runs scrypt.
ADDRESS_LIMITED_PATHS = frozenset({"/oauth/token"})
RETRY_AFTER_SECONDS_MIN = 1


@dataclass
class TokenBucket:
    limit: RateLimit
    tokens: float
    updated: float

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.limit.burst), self.tokens + elapsed * self.limit.per_second)
        self.updated = now

    def wait_seconds(self, now: float) -> float:
        """0 when a request may pass now, else how long until one may."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.limit.per_second

    def take(self, now: float) -> float:
        """Spend one token if there is one; answers as wait_seconds did."""
        wait = self.wait_seconds(now)
        if wait == 0.0:
            self.tokens -= 1
        return wait

    def drain(self, now: float) -> None:
        """Spend one token, or nothing if the bucket is empty: a cost already incurred."""
        self._refill(now)
        self.tokens = max(0.0, self.tokens - 1)


class Buckets:
    """Token buckets by key, bounded by BUCKETS_MAX (least recently used out first)."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def get(self, key: str, limit: RateLimit, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(limit, float(limit.burst), now)
            if len(self._buckets) > BUCKETS_MAX:
                self._buckets.popitem(last=False)
            return bucket
        self._buckets.move_to_end(key)
        if bucket.limit != limit:  # The operator changed this client's limit.
            bucket.limit = limit
            bucket.tokens = min(bucket.tokens, float(limit.burst))
        return bucket


class AbuseLimits:
    def __init__(self, settings: Settings) -> None:
        self._default = settings.client_rate_limit
        self._not_found_limit = settings.not_found_rate_limit
        self._address_limit = settings.token_rate_limit
        self._requests = Buckets()
        self._not_found = Buckets()
        self._addresses = Buckets()

    def client_limit(self, client: Client) -> RateLimit:
        if client.rate_per_second is None and client.rate_burst is None:
            return self._default
        return RateLimit(
            per_second=client.rate_per_second or self._default.per_second,
            burst=client.rate_burst or self._default.burst,
        )

    def admit_client(self, client: Client, names_a_card: bool, now: float) -> float:
        """0 to let the request through, else the seconds the client should wait."""
        if names_a_card:
            misses = self._not_found.get(client.client_id, self._not_found_limit, now)
            wait = misses.wait_seconds(now)
            if wait:
                return wait
        return self._requests.get(client.client_id, self.client_limit(client), now).take(now)

    def admit_address(self, address: str, now: float) -> float:
        return self._addresses.get(address, self._address_limit, now).take(now)

    def count_not_found(self, client_id: str, now: float) -> None:
        self._not_found.get(client_id, self._not_found_limit, now).drain(now)


def _too_many(wait_seconds: float) -> TooManyRequestsException:
    retry_after = max(RETRY_AFTER_SECONDS_MIN, math.ceil(wait_seconds))
    return TooManyRequestsException(
        detail="too many requests; retry later", headers={"Retry-After": str(retry_after)}
    )


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class AbuseLimitMiddleware(ASGIMiddleware):
    """Runs after authentication, so it knows the client; answers 429 with Retry-After."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, limits: AbuseLimits) -> None:
        self.limits = limits

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        client: Any = scope.get("user")
        if not isinstance(client, Client):
            if scope["path"] in ADDRESS_LIMITED_PATHS:
                wait = self.limits.admit_address(_address(scope), time.monotonic())
                if wait:
                    raise _too_many(wait)
            await next_app(scope, receive, send)
            return
        names_a_card = not CARD_NUMBER_PATH_PARAMS.isdisjoint(scope.get("path_params", {}))
        wait = self.limits.admit_client(client, names_a_card, time.monotonic())
        if wait:
            raise _too_many(wait)

        async def send_counting_not_found(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 404:
                self.limits.count_not_found(client.client_id, time.monotonic())
            await send(message)

        await next_app(scope, receive, send_counting_not_found)
