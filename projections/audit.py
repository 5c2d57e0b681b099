"""`audit verify`: recompute every hash of the log and every card, and compare with what is stored.

The whole check reads one REPEATABLE READ snapshot, so writes that go on meanwhile are either
entirely in it or entirely out of it, and cannot show up as false mismatches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent
from psycopg import Cursor
from psycopg.rows import DictRow

from ledger.card import Card
from ledger.integrity import GENESIS_HASH, card_hash, chain_hash
from projections.cards import CARD_COLUMN_NAMES, card_row, hold_rows, view_of

# Rows fetched per round trip; bounds the memory of one batch.
VERIFY_BATCH_ROWS = 5_000
# Mismatches kept for the report; the first one is what an auditor starts from.
MISMATCHES_MAX = 100


@dataclass(frozen=True)
class Mismatch:
    kind: str
    position: int | None
    card_id: UUID | None
    detail: str


@dataclass
class AuditReport:
    events: int = 0
    cards: int = 0
    head_position: int | None = None
    head_hash: str | None = None
    mismatches: list[Mismatch] = field(default_factory=list)
    mismatches_total: int = 0

    @property
    def ok(self) -> bool:
        return self.mismatches_total == 0

    def add(self, kind: str, position: int | None, card_id: UUID | None, detail: str) -> None:
        self.mismatches_total += 1
        if len(self.mismatches) < MISMATCHES_MAX:
            self.mismatches.append(Mismatch(kind, position, card_id, detail))


_JOINED_SQL = (
    "SELECT e.notification_id AS event_position, e.originator_id, e.originator_version,"
    " e.topic, e.state, l.position AS log_position, l.card_id, l.version, l.card_hash,"
    " l.chain_hash FROM {events} e FULL OUTER JOIN ledger_log l ON l.position = e.notification_id"
    " ORDER BY coalesce(e.notification_id, l.position)"
)


class _Chains:
    """The running state of the two chains while the log is walked in order."""

    def __init__(self, report: AuditReport) -> None:
        self.report = report
        self.chain = GENESIS_HASH
        self.cards: dict[UUID, tuple[int, bytes]] = {}

    def check(self, row: dict[str, Any]) -> None:
        position = row["event_position"] or row["log_position"]
        if row["log_position"] is None:
            self.report.add(
                "unchained_event", position, row["originator_id"], "the event has no ledger log row"
            )
            return
        card_id, version = row["card_id"], row["version"]
        if row["event_position"] is None:
            self.report.add(
                "missing_event",
                position,
                card_id,
                f"the log records version {version} of this card, the store has no such event",
            )
        elif (row["originator_id"], row["originator_version"]) != (card_id, version):
            self.report.add(
                "misplaced_event",
                position,
                card_id,
                "the event at this position is not the one the log records",
            )
        else:
            self._check_card_hash(row, position)
        stored_card_hash = bytes(row["card_hash"])
        self.cards[card_id] = (version, stored_card_hash)
        self.chain = self._check_chain(row, position, stored_card_hash)

    def _check_card_hash(self, row: dict[str, Any], position: int) -> None:
        card_id, version = row["card_id"], row["version"]
        last_version, previous = self.cards.get(card_id, (0, GENESIS_HASH))
        if version != last_version + 1:
            self.report.add(
                "version_gap",
                position,
                card_id,
                f"version {version} follows version {last_version}",
            )
        expected = card_hash(previous, card_id, version, row["topic"], bytes(row["state"]))
        if expected != bytes(row["card_hash"]):
            self.report.add(
                "altered_event",
                position,
                card_id,
                "the stored event does not hash to its recorded card hash",
            )

    def _check_chain(self, row: dict[str, Any], position: int, own: bytes) -> bytes:
        expected = chain_hash(self.chain, position, own)
        stored = bytes(row["chain_hash"])
        if expected != stored:
            self.report.add(
                "broken_chain",
                position,
                row["card_id"],
                "the chain hash does not follow from the previous event's",
            )
        return stored  # Walk on from what is stored, so one break is reported once.


def verify_ledger(ledger: Application[Any], events_table: str) -> AuditReport:
    report = AuditReport()
    chains = _Chains(report)
    cards: dict[UUID, Card | None] = {}
    datastore: Any = ledger.recorder.datastore  # type: ignore[attr-defined]
    with datastore.transaction(commit=False) as curs:
        curs.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with curs.connection.cursor(name="giftledger_verify") as rows:
            rows.execute(_JOINED_SQL.format(events=events_table))
            while batch := rows.fetchmany(VERIFY_BATCH_ROWS):
                for row in batch:
                    chains.check(row)
                    if row["event_position"] is not None:
                        failure = _replay(ledger, row, cards)
                        if failure is not None:
                            position = row["event_position"]
                            report.add("replay_failed", position, row["originator_id"], failure)
                        report.events += 1
                        report.head_position = row["event_position"]
        report.head_hash = chains.chain.hex() if report.head_position else None
        report.cards = len(cards)
        _compare_projection(curs, cards, report)
    return report


def _replay(
    ledger: Application[Any], row: dict[str, Any], cards: dict[UUID, Card | None]
) -> str | None:
    """Fold the event into its card; a card that cannot be folded is left out (as None)."""
    card_id = row["originator_id"]
    if card_id in cards and cards[card_id] is None:
        return None
    stored = StoredEvent(card_id, row["originator_version"], row["topic"], bytes(row["state"]))
    try:
        event: Any = ledger.mapper.to_domain_event(stored)
        cards[card_id] = event.mutate(cards.get(card_id))
    except Exception as exc:  # Whatever a tampered row makes the fold raise is a finding.
        cards[card_id] = None
        return f"the card cannot be rebuilt past this event: {type(exc).__name__}: {exc}"
    return None


def _compare_projection(
    curs: Cursor[DictRow], cards: dict[UUID, Card | None], report: AuditReport
) -> None:
    """Every card rebuilt from its events must equal its row and holds in the projection."""
    curs.execute("SELECT * FROM card_views")
    stored_cards = {row["card_id"]: row for row in curs.fetchall()}
    curs.execute("SELECT hold_id, card_id, client_id, amount_minor, expires_at FROM card_holds")
    stored_holds: dict[UUID, set[tuple[Any, ...]]] = {}
    for hold in curs.fetchall():
        stored_holds.setdefault(hold["card_id"], set()).add(tuple(hold.values()))
    for card_id, card in cards.items():
        row = stored_cards.pop(card_id, None)
        if card is None:  # Already reported: its events do not fold.
            continue
        view = view_of(card)
        if row is None:
            report.add("projection_missing", None, card_id, "no card_views row for this card")
            continue
        expected = card_row(view)
        actual = tuple(row[name] for name in CARD_COLUMN_NAMES)
        if expected != actual:
            differs = [
                n for n, a, b in zip(CARD_COLUMN_NAMES, expected, actual, strict=True) if a != b
            ]
            report.add(
                "projection_differs",
                None,
                card_id,
                f"card_views differs from the events in {', '.join(differs)}",
            )
        if set(hold_rows([view])) != stored_holds.pop(card_id, set()):
            report.add("projection_differs", None, card_id, "card_holds differ from the events")
    for card_id in stored_cards:
        report.add("projection_orphan", None, card_id, "a card_views row with no events")
