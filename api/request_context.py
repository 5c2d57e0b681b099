"""Each request's id, in the `X-Request-ID` response header and in its log lines; the access log.

A plain ASGI wrapper around the whole Litestar handler, not a Litestar middleware: those run per
route, so they never see a path no route matches, and the header must be on every answer (a
404 for a mistyped path, a 401 from authentication, a 429 from the limits, any problem details).
It is on the hot path of every payment, so it does little: one header scan, one id, one log line.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from api.logs import FIELDS, REQUEST_ID
from api.redaction import ACCESS_LOGGER, redact

HEADER = b"x-request-id"
# An incoming id is kept when it is short and made only of these characters (a UUID, a ULID, a
# W3C trace id, a load balancer's id all are); anything else could smuggle text into log lines
# or headers downstream, so it is replaced by one of ours.
REQUEST_ID_LENGTH_MAX = 128
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,%d}" % REQUEST_ID_LENGTH_MAX)

access_logger = logging.getLogger(ACCESS_LOGGER)
REQUEST_ID_BITS = 128


def _new_request_id() -> str:
    """32 hex digits. A request id only has to be unique, not unguessable: the secrets module's
    system calls cost a payment 3% of its event-loop time, this costs nothing measurable."""
    return f"{random.getrandbits(REQUEST_ID_BITS):032x}"


def incoming_request_id(headers: Any) -> str | None:
    for name, value in headers:
        if name == HEADER:
            return value.decode("ascii") if _SANE_REQUEST_ID.fullmatch(value) else None
    return None


def _route(scope: Scope) -> str:
    """The route template (`/v1/cards/{number}`); a path no route matched, redacted."""
    template = scope.get("path_template")
    return template if template else redact(scope["path"])


def _client_id(scope: Scope) -> str | None:
    return getattr(scope.get("user"), "client_id", None)


class RequestContextMiddleware:
    """Sets the request id for the request's context and answers it in `X-Request-ID`.

    `on_response_start`, when given, is called with the scope as the answer starts (tracing
    names its span after the route then); it returns attributes for the access log's record
    (the trace ids, which are gone from the context by the time that line is written).
    """

    def __init__(
        self,
        app: ASGIApp,
        on_response_start: Callable[[Scope], dict[str, Any]] | None = None,
    ) -> None:
        self.app = app
        self.on_response_start = on_response_start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = incoming_request_id(scope["headers"]) or _new_request_id()
        header = (HEADER, request_id.encode("ascii"))
        # What the server answers when the app fails before it starts an answer.
        status = 500
        extra: dict[str, Any] = {}

        async def send_with_id(message: Message) -> None:
            nonlocal status, extra
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
                if self.on_response_start is not None:
                    extra = self.on_response_start(scope)
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if access_logger.isEnabledFor(logging.INFO):
                _log_access(scope, status, time.perf_counter() - started, extra)
            REQUEST_ID.reset(token)


def _log_access(scope: Scope, status: int, duration_seconds: float, extra: dict[str, Any]) -> None:
    method, path = scope["method"], _route(scope)
    duration_ms = round(duration_seconds * 1000, 3)
    fields = {"method": method, "path": path, "status": status, "duration_ms": duration_ms}
    client_id = _client_id(scope)
    if client_id is not None:
        fields["client_id"] = client_id
    # Made of the route template, or a redacted path, a status, a duration and a client id:
    # nothing here needs the redaction every other record goes through.
    access_logger.info(
        f"{method} {path} {status} {duration_ms:.1f}ms client={client_id or '-'}",
        extra={FIELDS: fields, **extra},
    )
