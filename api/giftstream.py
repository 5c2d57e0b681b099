"""GiftStream's `POST /giftcard`: JSON or form fields, values possibly as strings, seed shapes."""

from __future__ import annotations

import re
import secrets
import string
import time
from datetime import date
from decimal import Decimal
from functools import partial
from typing import Any

import msgspec
from litestar import Request, Router, post
from litestar.di import Provide

from api.context import DecimalNumberResponse, origin_for, utc_now
from api.errors import GIFTSTREAM_EXCEPTION_HANDLERS, GiftStreamError, giftstream_refusal
from api.idempotency import idempotent_write, present
from api.service import CardService
from api.settings import Settings
from ledger.card import CARD_NUMBER_LENGTH_MAX, CardTerms, add_months, check_card_number
from ledger.errors import InvalidAmount, InvalidCardNumber
from ledger.money import CURRENCIES_BY_NUMERIC, to_major, to_minor
from projections.cards import CardView
from projections.config import Client, ConfigStore

INITIAL_BALANCE_MINOR_MAX = 9_999_999  # 99999.99, GiftStream's documented maximum.
GENERATED_ID_LENGTH = 32
GENERATED_ID_ALPHABET = string.ascii_letters + string.digits
CARD_TYPES = {1: "barcode", 2: "qr"}
BODY_BYTES_MAX = 16 * 1024
NO_EXPIRY = "0000-00-00 00:00:00"  # What GiftStream answers for a card without expiry.
_DATE_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}")
# The fields of GiftStream's document. Any other is refused, never ignored: a client that sends
# `balance`, `status` or `ref` must learn that it set nothing.
FIELDS = frozenset(
    {"cardType", "currencyCode", "expiry", "identifier", "initialBalance", "siteId"}
)
# cardType, currencyCode and siteId are small numbers. Python refuses to parse integers of more
# than 4,300 digits (a 500 before this bound); 18 digits still let a site id beyond any site
# answer "Site not found".
INTEGER_DIGITS_MAX = 18
_JSON_DECODER = msgspec.json.Decoder(dict[str, Any], float_hook=Decimal)


class GiftStreamData(msgspec.Struct, rename="camel"):
    card_id: str
    initial_balance: Decimal
    card_type: int
    currency_code: int
    expiry: str
    site_id: int | None
    ref: int


class GiftStreamResponse(msgspec.Struct):
    message: str
    records_updated: int
    timestamp: int
    data: GiftStreamData


class GiftCardRequest(msgspec.Struct, frozen=True):
    card_type: int
    currency_code: int
    identifier: str | None
    initial_balance_minor: int
    expiry: date | None
    site_id: int | None


def _invalid(message: str) -> GiftStreamError:
    return GiftStreamError(f"Data Invalid: {message}")


async def _fields(request: Request[Any, Any, Any]) -> dict[str, Any]:
    body = await request.body()
    if len(body) > BODY_BYTES_MAX:
        raise _invalid("Request body too large")
    if request.content_type[0] in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return dict(await request.form())
    try:
        fields = _JSON_DECODER.decode(body or b"{}")
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise _invalid("Request body must be a JSON object or form fields") from None
    # Blank values mean "not given", as in the seed's own example (`identifier=`).
    return {k: v for k, v in fields.items() if v is not None and v != ""}


def check_known_fields(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        names = ", ".join(repr(name[:32]) for name in unknown[:5])
        raise _invalid(f"Unknown field {names}. Fields are {', '.join(sorted(FIELDS))}")


def _integer(fields: dict[str, Any], name: str, label: str) -> int | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    text = str(value)
    # isdigit() alone admits digits such as "²" that int() refuses: only ASCII digits count.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | str)
        or not (text.isascii() and text.isdigit())
        or len(text) > INTEGER_DIGITS_MAX
    ):
        raise _invalid(f"Invalid {label}")
    return int(value)


def _expiry(fields: dict[str, Any]) -> date | None:
    raw = fields.get("expiry")
    if raw is None or raw == "":
        return None
    try:
        if not isinstance(raw, str) or not _DATE_FORMAT.fullmatch(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise _invalid("Invalid Expiry Date. Please use format YYYY-MM-DD") from None


def _initial_balance_minor(fields: dict[str, Any]) -> int:
    raw = fields.get("initialBalance")
    if raw is None or raw == "":
        return 0
    if isinstance(raw, bool) or not isinstance(raw, int | str | Decimal):
        raise _invalid("Invalid Initial Balance")
    try:
        return to_minor(raw, 2, allow_zero=True, maximum_minor=INITIAL_BALANCE_MINOR_MAX)
    except InvalidAmount:
        raise _invalid(
            "Invalid Initial Balance. Use a number from 0 to 99999.99 with at most 2 decimals"
        ) from None


def parse_request(fields: dict[str, Any], settings: Settings) -> GiftCardRequest:
    check_known_fields(fields)
    card_type = _integer(fields, "cardType", "Card Type")
    if card_type is None:
        raise _invalid("Card Type is required")
    if card_type not in CARD_TYPES:
        raise _invalid("Invalid Card Type. Use 1 (Barcode) or 2 (QR)")
    currency_code = _integer(fields, "currencyCode", "Currency Code")
    if currency_code is None:
        raise _invalid("Currency Code is required")
    if currency_code not in settings.giftstream_currencies:
        raise _invalid("Currency Code not supported")
    identifier = fields.get("identifier")
    if identifier is not None and not isinstance(identifier, str | int):
        raise _invalid("Invalid Identifier")
    identifier = None if identifier in (None, "") else str(identifier)
    if identifier is not None:
        try:
            check_card_number(identifier)
        except InvalidCardNumber:
            raise _invalid(
                f"Identifier must be 1 to {CARD_NUMBER_LENGTH_MAX} characters,"
                " without spaces or slashes"
            ) from None
    return GiftCardRequest(
        card_type=card_type,
        currency_code=currency_code,
        identifier=identifier,
        initial_balance_minor=_initial_balance_minor(fields),
        expiry=_expiry(fields),
        site_id=_integer(fields, "siteId", "Site ID"),
    )


def generated_identifier() -> str:
    """GENERATED_ID_LENGTH characters of GENERATED_ID_ALPHABET, uniformly random: one draw from
    the operating system's generator written in that base (a draw per character, each a
    syscall, was a tenth of a sale's event-loop time)."""
    base = len(GENERATED_ID_ALPHABET)
    value = secrets.randbelow(base**GENERATED_ID_LENGTH)
    characters = []
    for _ in range(GENERATED_ID_LENGTH):
        value, digit = divmod(value, base)
        characters.append(GENERATED_ID_ALPHABET[digit])
    return "".join(characters)


async def _terms(
    parsed: GiftCardRequest, settings: Settings, config: ConfigStore, today: date
) -> CardTerms:
    currency = CURRENCIES_BY_NUMERIC[parsed.currency_code].alpha
    if parsed.expiry is not None and parsed.expiry < today:
        raise _invalid("Expiry Date is in the past")
    if settings.giftstream_card_type is None:
        # The built-in open type: any identifier, loadable, reservations allowed, no expiry.
        return CardTerms("giftstream", currency, False, True, True, parsed.expiry, parsed.site_id,
                         parsed.card_type)  # fmt: skip
    card_type = await config.card_type(settings.giftstream_card_type)
    if card_type is None:
        raise GiftStreamError("Card type for GiftStream is not configured", status=503)
    default_expiry = (
        add_months(today, card_type.validity_months) if card_type.validity_months else None
    )
    return CardTerms(
        card_type=card_type.name,
        currency=currency,
        fixed_amount=card_type.fixed_amount,
        redeem_allowed=card_type.redeem_allowed,
        reservations_allowed=card_type.reservations_allowed,
        expires_on=parsed.expiry or default_expiry,
        locked_site_id=parsed.site_id,
        presentation=parsed.card_type,
    )


@post("/giftcard", status_code=200)
async def create_giftcard(
    request: Request[Client, Any, Any], service: CardService, config: ConfigStore,
    settings: Settings,
) -> GiftStreamResponse:  # fmt: skip
    """Create or register a gift card, optionally locked to one site."""
    parsed = parse_request(await _fields(request), settings)
    location_code = None
    if parsed.site_id is not None:
        location = await config.location_by_site(parsed.site_id)
        if location is None:
            raise _invalid("Site not found")
        location_code = location.code
    origin = await origin_for(config, request.user, location_code)
    terms = await _terms(parsed, settings, config, utc_now().date())
    number = parsed.identifier or generated_identifier()
    render = partial(giftstream_response, parsed)
    idem = await idempotent_write(request, render, refuse=giftstream_refusal)
    ref = await config.next_card_ref()
    view = await service.sell(number, ref, terms, parsed.initial_balance_minor, origin, idem)
    return present(view, render)


def giftstream_response(parsed: GiftCardRequest, view: CardView) -> GiftStreamResponse:
    return GiftStreamResponse(
        message="OK",
        records_updated=1,
        timestamp=int(time.time()),
        data=GiftStreamData(
            card_id=view.number,
            initial_balance=to_major(view.original_minor, 2),
            card_type=parsed.card_type,
            currency_code=parsed.currency_code,
            expiry=view.expires_on.isoformat() if view.expires_on else NO_EXPIRY,
            site_id=view.locked_site_id,
            ref=view.ref,
        ),
    )


def giftstream_router(dependencies: dict[str, Provide]) -> Router:
    return Router(
        path="/",
        route_handlers=[create_giftcard],
        dependencies=dependencies,
        response_class=DecimalNumberResponse,
        exception_handlers=GIFTSTREAM_EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        tags=["giftstream"],
    )
