"""giftledger's native API: every card command, amounts in integer minor units."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Router, get, post
from litestar.di import Provide
from litestar.exceptions import ValidationException
from litestar.params import Parameter

from api.context import origin_for, unbound_origin
from api.errors import ApiError
from api.fields import AsOf, CardTypeName, LocationCode, Reason, parse_instant
from api.giftstream import generated_identifier
from api.idempotency import idempotent_write, present
from api.replica import ReadRouting
from api.service import CardService, new_hold_id
from ledger.card import CARD_NUMBER_LENGTH_MAX, CardTerms, add_months, mask_card_number
from ledger.money import AMOUNT_MINOR_MAX
from projections.audit import AuditReport
from projections.cards import CardView
from projections.config import Client, ConfigStore
from projections.history import HISTORY_PAGE_SIZE_MAX, HistoryEntry

EVENTS_PAGE_SIZE_DEFAULT = 100
# A hold lasts at most a day; the service shortens it further to its configured TTL.
HOLD_TTL_SECONDS_MAX = 86_400

AmountMinor = Annotated[int, msgspec.Meta(gt=0, le=AMOUNT_MINOR_MAX)]


class IssueRequest(msgspec.Struct, forbid_unknown_fields=True):
    card_type: CardTypeName
    amount_minor: Annotated[int, msgspec.Meta(ge=0, le=AMOUNT_MINOR_MAX)]
    number: Annotated[str, msgspec.Meta(min_length=1, max_length=CARD_NUMBER_LENGTH_MAX)] | None = (
        None
    )
    location_code: LocationCode | None = None


class AmountRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount_minor: AmountMinor
    location_code: LocationCode | None = None


class HoldRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount_minor: AmountMinor | None = None
    ttl_seconds: Annotated[int, msgspec.Meta(gt=0, le=HOLD_TTL_SECONDS_MAX)] | None = None
    location_code: LocationCode | None = None


class CaptureRequest(msgspec.Struct, forbid_unknown_fields=True):
    amount_minor: AmountMinor | None = None
    location_code: LocationCode | None = None


class BlockRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


class NoFields(msgspec.Struct, forbid_unknown_fields=True):
    """The body of a command that takes no fields: `{}`, if any."""


class Hold(msgspec.Struct):
    hold_id: str
    client_id: str
    amount_minor: int
    expires_at: datetime


class Card(msgspec.Struct):
    number: str
    ref: int
    card_type: str
    currency: str
    status: str
    original_minor: int
    balance_minor: int
    reserved_minor: int
    available_minor: int
    fixed_amount: bool
    redeem_allowed: bool
    reservations_allowed: bool
    location_code: str | None
    locked_site_id: int | None
    expires_on: date | None
    version: int
    holds: list[Hold]


class HoldResponse(msgspec.Struct):
    hold_id: str
    card: Card


class Event(msgspec.Struct):
    """One event of a card's history, with where it sits in the log and what it left behind."""

    version: int
    position: int | None
    type: str
    occurred_at: datetime | None
    actor: str | None
    location_code: str | None
    amount_minor: int | None
    balance_minor: int
    reserved_minor: int
    available_minor: int
    idempotency_key: str | None
    reference: str | None
    card_hash: str | None
    data: dict[str, Any]


class MismatchItem(msgspec.Struct):
    kind: str
    position: int | None
    card_id: str | None
    detail: str


class AuditResult(msgspec.Struct):
    ok: bool
    events: int
    cards: int
    head_position: int | None
    head_hash: str | None
    mismatches_total: int
    mismatches: list[MismatchItem]


def audit_result(report: AuditReport) -> AuditResult:
    return AuditResult(
        ok=report.ok, events=report.events, cards=report.cards,
        head_position=report.head_position, head_hash=report.head_hash,
        mismatches_total=report.mismatches_total,
        mismatches=[
            MismatchItem(m.kind, m.position, str(m.card_id) if m.card_id else None, m.detail)
            for m in report.mismatches
        ],
    )  # fmt: skip


class EventsPage(msgspec.Struct):
    events: list[Event]
    next_after_version: int | None


def native_card(view: CardView) -> Card:
    return Card(
        number=view.number, ref=view.ref, card_type=view.card_type, currency=view.currency,
        status=view.status, original_minor=view.original_minor, balance_minor=view.balance_minor,
        reserved_minor=view.reserved_minor, available_minor=view.available_minor,
        fixed_amount=view.fixed_amount, redeem_allowed=view.redeem_allowed,
        reservations_allowed=view.reservations_allowed, location_code=view.location_code,
        locked_site_id=view.locked_site_id, expires_on=view.expires_on, version=view.version,
        holds=[Hold(h.hold_id, h.client_id, h.amount_minor, h.expires_at) for h in view.holds],
    )  # fmt: skip


_EVENT_META = {"originator_id", "originator_version", "timestamp", "occurred_at", "actor",
               "location_code", "amount_minor", "originator_topic"}  # fmt: skip


def native_event(entry: HistoryEntry) -> Event:
    attrs = dict(entry.event.__dict__)
    return Event(
        version=entry.event.originator_version,
        position=entry.position,
        type=entry.type,
        occurred_at=attrs.get("occurred_at"),
        actor=attrs.get("actor"),
        location_code=attrs.get("location_code"),
        amount_minor=entry.amount_minor,
        balance_minor=entry.balance_minor,
        reserved_minor=entry.reserved_minor,
        available_minor=entry.available_minor,
        idempotency_key=entry.idempotency_key,
        reference=entry.reference,
        card_hash=entry.card_hash,
        data={k: v for k, v in attrs.items() if k not in _EVENT_META},
    )


@post("/cards")
async def issue_card(
    data: IssueRequest, request: Request[Client, Any, Any], service: CardService,
    config: ConfigStore,
) -> Card:  # fmt: skip
    """Issue a card of a named card type; without a number, one is generated."""
    card_type = await config.card_type(data.card_type)
    if card_type is None:
        raise ApiError("unknown_card_type", 422, f"card type {data.card_type!r} does not exist")
    origin = await origin_for(config, request.user, data.location_code)
    number = data.number or generated_identifier()
    if data.number is not None and not card_type.matches(number):
        masked = mask_card_number(number)
        raise ApiError("no_matching_card_type", 422, f"{masked} does not fit {card_type.name}")
    terms = CardTerms(
        card_type=card_type.name,
        currency=card_type.currency,
        fixed_amount=card_type.fixed_amount,
        redeem_allowed=card_type.redeem_allowed,
        reservations_allowed=card_type.reservations_allowed,
        expires_on=add_months(origin.occurred_at.date(), card_type.validity_months)
        if card_type.validity_months
        else None,
    )
    ref = await config.next_card_ref()
    idem = await idempotent_write(request, native_card, status_code=201)
    return present(
        await service.sell(number, ref, terms, data.amount_minor, origin, idem), native_card
    )


@get("/cards/{number:str}")
async def get_card(
    number: str, request: Request[Client, Any, Any], routing: ReadRouting, service: CardService,
    as_of: AsOf = None,
) -> Card:  # fmt: skip
    """The card with its balance, reserved and available amounts, and holds.

    With `as_of` (ISO 8601 with a time zone), the card as it was then, computed from its events;
    that is time travel, an auditor's read, and needs the audit:read scope (see api/authz.py).
    """
    if as_of is not None:
        return native_card(await service.card_as_of(number, parse_instant("as_of", as_of)))
    reader = await routing.reader(request)
    return native_card(await reader.require(number))


@post("/cards/{number:str}/redeem", status_code=200)
async def redeem(
    number: str, data: AmountRequest, request: Request[Client, Any, Any],
    service: CardService, config: ConfigStore,
) -> Card:  # fmt: skip
    origin = await origin_for(config, request.user, data.location_code)
    idem = await idempotent_write(request, native_card)
    return present(await service.redeem(number, data.amount_minor, origin, idem), native_card)


@post("/cards/{number:str}/holds")
async def hold(
    number: str, data: HoldRequest, request: Request[Client, Any, Any],
    service: CardService, config: ConfigStore,
) -> HoldResponse:  # fmt: skip
    """Hold an amount (or all that is available) for at most the configured hold TTL."""
    origin = await origin_for(config, request.user, data.location_code)
    hold_id = new_hold_id()

    def render(view: CardView) -> HoldResponse:
        return HoldResponse(hold_id=hold_id, card=native_card(view))

    idem = await idempotent_write(request, render, status_code=201)
    outcome = await service.reserve(
        number, data.amount_minor, data.ttl_seconds, origin, hold_id, idem
    )
    return present(outcome, render)


@post("/cards/{number:str}/holds/{hold_id:str}/capture", status_code=200)
async def capture(
    number: str, hold_id: str, data: CaptureRequest, request: Request[Client, Any, Any],
    service: CardService, config: ConfigStore,
) -> Card:  # fmt: skip
    origin = await origin_for(config, request.user, data.location_code)
    idem = await idempotent_write(request, native_card)
    outcome = await service.capture(number, hold_id, data.amount_minor, origin, idem)
    return present(outcome, native_card)


@post("/cards/{number:str}/holds/{hold_id:str}/void", status_code=200)
async def void(
    number: str, hold_id: str, request: Request[Client, Any, Any], service: CardService,
    config: ConfigStore,
) -> Card:  # fmt: skip
    origin = await unbound_origin(config, request.user)
    idem = await idempotent_write(request, native_card)
    return present(await service.void(number, hold_id, origin, idem), native_card)


@post("/cards/{number:str}/load", status_code=200)
async def load(
    number: str, data: AmountRequest, request: Request[Client, Any, Any],
    service: CardService, config: ConfigStore,
) -> Card:  # fmt: skip
    origin = await origin_for(config, request.user, data.location_code)
    idem = await idempotent_write(request, native_card)
    return present(await service.load(number, data.amount_minor, origin, idem), native_card)


@post("/cards/{number:str}/refund", status_code=200)
async def refund(
    number: str, data: AmountRequest, request: Request[Client, Any, Any],
    service: CardService, config: ConfigStore,
) -> Card:  # fmt: skip
    origin = await origin_for(config, request.user, data.location_code)
    idem = await idempotent_write(request, native_card)
    return present(await service.refund(number, data.amount_minor, origin, idem), native_card)


@post("/cards/{number:str}/block", status_code=200)
async def block(
    number: str, data: BlockRequest, request: Request[Client, Any, Any],
    service: CardService, config: ConfigStore,
) -> Card:  # fmt: skip
    origin = await unbound_origin(config, request.user)
    idem = await idempotent_write(request, native_card)
    return present(await service.block(number, data.reason, origin, idem), native_card)


@post("/cards/{number:str}/unblock", status_code=200)
async def unblock(
    number: str, request: Request[Client, Any, Any], service: CardService, config: ConfigStore
) -> Card:
    origin = await unbound_origin(config, request.user)
    idem = await idempotent_write(request, native_card)
    return present(await service.unblock(number, origin, idem), native_card)


@get("/cards/{number:str}/events")
async def card_events(
    number: str,
    service: CardService,
    after_version: Annotated[int, Parameter(ge=0)] = 0,
    limit: Annotated[int, Parameter(gt=0, le=HISTORY_PAGE_SIZE_MAX)] = EVENTS_PAGE_SIZE_DEFAULT,
) -> EventsPage:
    """The card's history in order, a page at a time: pass `next_after_version` back as
    `after_version` to continue. Each event carries its log position, the balances after it,
    the Idempotency-Key and POS reference of the request behind it, and its chained hash."""
    history = await service.history(number, after_version, limit)
    events = [native_event(entry) for entry in history]
    next_after = events[-1].version if len(events) == limit else None
    return EventsPage(events=events, next_after_version=next_after)


@get("/audit/verify")
async def audit_verify(service: CardService) -> AuditResult:
    """Recompute every hash of the log and every card, and compare with what is stored.

    This reads the whole log; it answers 200 with `ok: false` and the first mismatches when
    anything was altered, removed or inserted behind the service's back.
    """
    return audit_result(await service.verify())


async def decode_body_strictly(request: Request[Any, Any, Any]) -> None:
    """Refuse bodies whose JSON types are wrong, before Litestar's lenient conversion.

    Litestar converts request data with `strict=False`, which would turn "10" or 10.0 into the
    integer 10. The native API takes amounts as exact JSON integers only, so each body is first
    decoded strictly into the handler's own `data` type.
    """
    parameter = request.route_handler.parsed_fn_signature.parameters.get("data")
    body = await request.body()
    if parameter is None and not body.strip():
        return
    # A command without fields (void, unblock) takes no body or `{}`: any field is refused.
    body_type = NoFields if parameter is None else parameter.annotation
    try:
        msgspec.json.decode(body, type=body_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationException(detail=str(exc)) from None


def native_router(dependencies: dict[str, Provide]) -> Router:
    return Router(
        path="/v1",
        before_request=decode_body_strictly,
        route_handlers=[
            issue_card,
            get_card,
            redeem,
            hold,
            capture,
            void,
            load,
            refund,
            block,
            unblock,
            card_events,
            audit_verify,
        ],
        dependencies=dependencies,
        tags=["native"],
    )
