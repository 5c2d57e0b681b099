"""Resico's Gift Card API, at its exact paths: an adapter over the card service."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post, route
from litestar.di import Provide
from litestar.exceptions import PermissionDeniedException

from api.authz import ALLOW_ONLY
from api.context import DecimalNumberResponse, origin_for, unbound_origin
from api.errors import ApiError
from api.fields import LocationCode, TransactionNo
from api.idempotency import SALE_SCOPE_PREFIX, idempotent_write, present
from api.replica import ReadRouting
from api.service import CardService, new_hold_id
from ledger.card import CardTerms, add_months, mask_card_number
from ledger.money import currency, to_major, to_minor
from projections.cards import CardView
from projections.config import Client, ConfigStore


class ResicoCard(msgspec.Struct, rename="camel"):
    id: int
    gift_card_no: str
    original_balance: Decimal
    current_balance: Decimal
    reserved_balance: Decimal
    available_balance: Decimal
    fixed_amount: bool
    redeem_allowed: bool
    location_code: str | None
    status: str
    expiry_date: date | None
    currency: str


# Each body takes exactly the fields of Resico's document (and the optional use location): an
# unknown field such as `balance`, `status` or `id` is refused with 422, never ignored, so no
# client can believe it set one.
class SellRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    amount: Decimal
    transaction_no: TransactionNo
    location_code: LocationCode


class UseRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    amount: Decimal
    # Not in Resico's document: lets a terminal say where it pays, for site-locked cards.
    location_code: LocationCode | None = None


class ReserveRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    location_code: LocationCode
    amount: Decimal | None = None


def resico_card(view: CardView) -> ResicoCard:
    digits = currency(view.currency).minor_digits
    return ResicoCard(
        id=view.ref,
        gift_card_no=view.number,
        original_balance=to_major(view.original_minor, digits),
        current_balance=to_major(view.balance_minor, digits),
        reserved_balance=to_major(view.reserved_minor, digits),
        available_balance=to_major(view.available_minor, digits),
        fixed_amount=view.fixed_amount,
        redeem_allowed=view.redeem_allowed,
        location_code=view.location_code,
        status=view.status,
        expiry_date=view.expires_on,
        currency=view.currency,
    )


def _amount_minor(amount: Decimal, view_currency: str) -> int:
    return to_minor(amount, currency(view_currency).minor_digits)


@get("/cards/{card_id:str}")
async def get_card(
    card_id: str, request: Request[Client, Any, Any], routing: ReadRouting
) -> ResicoCard:
    """Get card info."""
    reader = await routing.reader(request)
    return resico_card(await reader.require(card_id))


@post("/cards/{card_id:str}", status_code=200)
async def sell_card(
    card_id: str, data: SellRequest, request: Request[Client, Any, Any],
    service: CardService, config: ConfigStore,
) -> ResicoCard:  # fmt: skip
    """Sell (create) a card; its card type is the one whose prefix and length fit the number."""
    client = request.user
    origin = await origin_for(config, client, data.location_code)
    card_type = await config.card_type_for_number(card_id)
    if card_type is None:
        masked = mask_card_number(card_id)
        raise ApiError("no_matching_card_type", 422, f"no card type fits the number {masked}")
    amount_minor = _amount_minor(data.amount, card_type.currency)
    terms = CardTerms(
        card_type=card_type.name,
        currency=card_type.currency,
        fixed_amount=card_type.fixed_amount,
        redeem_allowed=card_type.redeem_allowed,
        reservations_allowed=card_type.reservations_allowed,
        expires_on=add_months(origin.occurred_at.date(), card_type.validity_months),
    )
    # A sale is also deduplicated on (locationCode, transactionNo), as a POS retries it.
    sale_key = (f"{SALE_SCOPE_PREFIX}{data.location_code}", data.transaction_no)
    idem = await idempotent_write(request, resico_card, extra_keys=(sale_key,))
    ref = await config.next_card_ref()
    return present(await service.sell(card_id, ref, terms, amount_minor, origin, idem), resico_card)


@post(
    "/transactions/{consumer_key:str}/cards/{card_id:str}",
    status_code=200,
)
async def use_card(
    consumer_key: str, card_id: str, data: UseRequest, request: Request[Client, Any, Any],
    service: CardService, config: ConfigStore,
) -> ResicoCard:  # fmt: skip
    """Use a card for payment. The caller's own hold on the card is captured first."""
    client = request.user
    if consumer_key != client.consumer_key:
        raise PermissionDeniedException("the consumer key is not this client's")
    origin = await origin_for(config, client, data.location_code)
    idem = await idempotent_write(request, resico_card)
    # The amount is converted in the card's own currency by the writer, which holds the card.
    return present(await service.redeem(card_id, data.amount, origin, idem), resico_card)


@post("/reserve/{card_id:str}", status_code=200)
async def reserve_card(
    card_id: str, data: ReserveRequest, request: Request[Client, Any, Any],
    service: CardService, config: ConfigStore,
) -> ResicoCard:  # fmt: skip
    """Hold the whole available balance for the caller, or `amount` of it."""
    origin = await origin_for(config, request.user, data.location_code)
    idem = await idempotent_write(request, resico_card)
    outcome = await service.reserve(card_id, data.amount, None, origin, new_hold_id(), idem)
    return present(outcome, resico_card)


@get("/cancelreserve/{card_id:str}")
async def cancel_reserve(
    card_id: str, request: Request[Client, Any, Any], service: CardService, config: ConfigStore
) -> ResicoCard:
    """Release the caller's hold on the card. Only the caller's own hold is touched."""
    origin = await unbound_origin(config, request.user)
    return present(await service.cancel_reservation(card_id, origin), resico_card)


@route("/cards/{card_id:str}", http_method="OPTIONS", include_in_schema=False,
       sync_to_thread=False, opt={ALLOW_ONLY: True})  # fmt: skip
def card_options(card_id: str) -> Response[None]:
    """Litestar 2.25 answers OPTIONS with the methods of the first handler registered on a path,
    so its own answer here left out POST; registered first, this one replaces it."""
    return Response(None, status_code=204, headers={"Allow": "GET, OPTIONS, POST"})


def resico_router(dependencies: dict[str, Provide]) -> Router:
    return Router(
        path="/api/giftcards/v1",
        route_handlers=[card_options, get_card, sell_card, use_card, reserve_card, cancel_reserve],
        dependencies=dependencies,
        response_class=DecimalNumberResponse,
        tags=["resico"],
    )
