"""Reads from a streaming replica, with read-your-writes for the client that wrote.

Card reads go to GIFTLEDGER_READ_DATABASE_URL when it is set. A replica trails the primary by
the time it takes to replay the WAL, so a client that has just written must not read from it
before its write is there. After each write this process notes the primary's current WAL
position for that client and returns it in the `Giftledger-Read-After` header; a read by that
client (or any read that sends the header back, e.g. through another instance) goes to the
replica only when the replica has replayed that far, and to the primary otherwise.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from projections.cards import CardReader

READ_AFTER_HEADER = "Giftledger-Read-After"
# Clients whose last write position this process remembers; the oldest are forgotten first.
FRESHNESS_CLIENTS_MAX = 100_000
_LSN_MAX_LENGTH = 32


class ReadRouting:
    def __init__(self, primary: asyncpg.Pool, replica: asyncpg.Pool | None) -> None:
        self.primary = CardReader(primary)
        self.replica = CardReader(replica) if replica is not None else None
        self._written: dict[str, str] = {}

    async def note_write(self, client_id: str) -> str:
        """Remember (and return) a WAL position at or after the client's latest write."""
        lsn = str(await self.primary.pool.fetchval("SELECT pg_current_wal_lsn()::text"))
        self._written.pop(client_id, None)
        if len(self._written) >= FRESHNESS_CLIENTS_MAX:
            self._written.pop(next(iter(self._written)))
        self._written[client_id] = lsn
        return lsn

    async def reader(self, request: Request[Any, Any, Any]) -> CardReader:
        if self.replica is None:
            return self.primary
        wanted = [request.headers.get(READ_AFTER_HEADER.lower())]
        user = request.scope.get("user")
        if user is not None:
            wanted.append(self._written.get(user.client_id))
        positions = [p for p in wanted if p and len(p) <= _LSN_MAX_LENGTH]
        if not positions:
            return self.replica
        try:
            fresh = all([
                await self.replica.pool.fetchval(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, true)", p
                )
                for p in positions
            ])  # fmt: skip
        except asyncpg.DataError:  # Not an LSN: the primary answers, always fresh.
            return self.primary
        return self.replica if fresh else self.primary


def read_your_writes_middleware(app: ASGIApp) -> ASGIApp:
    """After a write, note the client's WAL position and tell it in a header."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        routing: ReadRouting = scope["app"].state.routing
        if scope["type"] != "http" or scope["method"] == "GET" or routing.replica is None:
            await app(scope, receive, send)
            return

        async def send_noting(message: Message) -> None:
            user = scope.get("user")
            if (
                message["type"] == "http.response.start"
                and user is not None
                and message["status"] < 500
            ):
                lsn = await routing.note_write(user.client_id)
                MutableScopeHeaders.from_message(message)[READ_AFTER_HEADER] = lsn
            await send(message)

        await app(scope, receive, send_noting)

    return middleware
