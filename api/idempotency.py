"""Idempotency-Key: a retried POST replays its first answer and changes nothing again.

The answer of a write is stored in the same transaction as the write's events, so a key is
either committed with its effect or not at all: a retry after a lost acknowledgement finds it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
from litestar import Request, Response

from api.errors import ApiError, ledger_refusal
from ledger.errors import LedgerError
from projections.cards import CardView

IDEMPOTENCY_HEADER = "idempotency-key"
IDEMPOTENCY_KEY_LENGTH_MAX = 255
REPLAYED_HEADER = "Idempotent-Replayed"
# A key's scope: the client that sent the Idempotency-Key, or the location of a Resico sale.
CLIENT_SCOPE_PREFIX = "client:"
SALE_SCOPE_PREFIX = "resico-sale:"
_ENCODER = msgspec.json.Encoder(decimal_format="number")


class StoredResponse(NamedTuple):
    status_code: int
    body: bytes
    media_type: str
    replayed: bool

    def to_response(self) -> Response[bytes]:
        headers = {REPLAYED_HEADER: "true"} if self.replayed else {}
        return Response(
            self.body, status_code=self.status_code, media_type=self.media_type, headers=headers
        )


@dataclass(frozen=True)
class IdempotentWrite:
    """Where a write's answer is kept: one or more (scope, key) pairs, and how to render it."""

    keys: tuple[tuple[str, str], ...]
    request_hash: str
    status_code: int
    render: Callable[[CardView], Any]
    refuse: Callable[[LedgerError], tuple[int, Any, str]] = ledger_refusal

    def answer(self, view: CardView) -> StoredResponse:
        body = _ENCODER.encode(self.render(view))
        return StoredResponse(self.status_code, body, "application/json", replayed=False)

    def refusal(self, exc: LedgerError) -> StoredResponse:
        """A refusal is an answer too: a retry with the same key gets the same refusal."""
        status, body, media_type = self.refuse(exc)
        return StoredResponse(status, _ENCODER.encode(body), media_type, replayed=False)

    def labels(self) -> tuple[str | None, str | None]:
        """The Idempotency-Key and the POS transaction number, as the ledger log records them."""
        header = next((k for s, k in self.keys if s.startswith(CLIENT_SCOPE_PREFIX)), None)
        transaction = next((k for s, k in self.keys if s.startswith(SALE_SCOPE_PREFIX)), None)
        return header, transaction

    def rows(self, answer: StoredResponse) -> list[tuple[Any, ...]]:
        return [
            (scope, key, self.request_hash, answer.status_code, answer.body, answer.media_type)
            for scope, key in self.keys
        ]


def present(result: CardView | StoredResponse, render: Callable[[CardView], Any]) -> Any:
    """What a handler returns: the stored bytes of an idempotent write, else the rendered view."""
    if isinstance(result, StoredResponse):
        return result.to_response()
    return render(result)


async def idempotent_write(
    request: Request[Any, Any, Any],
    render: Callable[[CardView], Any],
    *,
    status_code: int = 200,
    extra_keys: tuple[tuple[str, str], ...] = (),
    refuse: Callable[[LedgerError], tuple[int, Any, str]] = ledger_refusal,
) -> IdempotentWrite | None:
    """The request's Idempotency-Key (scoped to its client) plus any keys the API implies."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    keys = extra_keys
    if key is not None:
        if not 1 <= len(key) <= IDEMPOTENCY_KEY_LENGTH_MAX or not key.isprintable():
            raise ApiError(
                "invalid_idempotency_key",
                422,
                f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} printable characters",
            )
        keys = ((f"{CLIENT_SCOPE_PREFIX}{request.user.client_id}", key), *extra_keys)
    if not keys:
        return None
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(), await request.body()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return IdempotentWrite(keys, digest.hexdigest(), status_code, render, refuse)
