"""A card's history for auditors: each event with its place in the log and the balances after it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application

from ledger.card import Card, card_id_for, check_card_number, mask_card_number
from ledger.errors import CardNotFound

# Events per page of history, at most; the HTTP API and the CLI both page by this.
HISTORY_PAGE_SIZE_MAX = 500

_LOG_ROWS_SQL = (
    "SELECT version, position, idempotency_key, reference, card_hash FROM ledger_log"
    " WHERE card_id = %s AND version > %s AND version <= %s"
)


@dataclass(frozen=True)
class HistoryEntry:
    event: Any
    position: int | None
    balance_minor: int
    reserved_minor: int
    idempotency_key: str | None
    reference: str | None
    card_hash: str | None

    @property
    def available_minor(self) -> int:
        return self.balance_minor - self.reserved_minor

    @property
    def type(self) -> str:
        return type(self.event).__name__

    @property
    def amount_minor(self) -> int | None:
        return getattr(self.event, "amount_minor", None)


def card_history(
    ledger: Application[Any],
    number: str,
    after_version: int,
    limit: int,
    as_of: datetime | None = None,
) -> list[HistoryEntry]:
    """Events after `after_version` (and, with `as_of`, none that occurred later)."""
    assert 0 < limit <= HISTORY_PAGE_SIZE_MAX
    check_card_number(number)
    card_id = card_id_for(number)
    card = _card_at(ledger, card_id, number, after_version)
    events = list(ledger.events.get(card_id, gt=after_version or None, limit=limit))
    if not events and after_version == 0:
        raise CardNotFound(f"card {mask_card_number(number)} does not exist")
    log = _log_rows(ledger, card_id, after_version, after_version + limit)
    entries = []
    for event in events:
        if as_of is not None and event.occurred_at > as_of:  # type: ignore[attr-defined]
            break
        card = event.mutate(card)  # type: ignore[attr-defined]
        assert card is not None
        row = log.get(event.originator_version, {})
        entries.append(
            HistoryEntry(
                event=event,
                position=row.get("position"),
                balance_minor=card.balance_minor,
                reserved_minor=card.reserved_minor,
                idempotency_key=row.get("idempotency_key"),
                reference=row.get("reference"),
                card_hash=bytes(row["card_hash"]).hex() if row else None,
            )
        )
    return entries


def _card_at(ledger: Application[Any], card_id: UUID, number: str, version: int) -> Card | None:
    """The card as it was after `version` (snapshots make this cheap for long histories)."""
    if version == 0:
        return None
    try:
        card: Card = ledger.repository.get(card_id, version=version)
    except AggregateNotFoundError:
        raise CardNotFound(f"card {mask_card_number(number)} does not exist") from None
    return card


def _log_rows(
    ledger: Application[Any], card_id: UUID, after_version: int, last_version: int
) -> dict[int, dict[str, Any]]:
    datastore: Any = ledger.recorder.datastore  # type: ignore[attr-defined]
    with datastore.transaction(commit=False) as curs:
        curs.execute(_LOG_ROWS_SQL, (card_id, after_version, last_version))
        return {row["version"]: row for row in curs.fetchall()}
