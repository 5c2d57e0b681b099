"""Money: integer minor units beside an ISO 4217 currency, parsed exactly, never via float."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

from ledger.errors import InvalidAmount, UnknownCurrency

# The largest amount a single command may move, and the largest balance a card may hold:
# 100 million major units keeps every sum far inside a signed 64-bit column.
AMOUNT_MINOR_MAX = 10_000_000_000
BALANCE_MINOR_MAX = 10_000_000_000
# Digits before the decimal point worth scaling at all; anything larger is refused outright.
AMOUNT_DIGITS_MAX = 18


_AMOUNT_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")


class Currency(NamedTuple):
    alpha: str
    numeric: int
    minor_digits: int


# The currencies giftledger knows. Adding one is a one-line change; the numeric code and the
# number of minor digits come from ISO 4217.
CURRENCIES: dict[str, Currency] = {
    c.alpha: c
    for c in (
        Currency("EUR", 978, 2),
        Currency("GBP", 826, 2),
        Currency("USD", 840, 2),
        Currency("CHF", 756, 2),
        Currency("SEK", 752, 2),
        Currency("NOK", 578, 2),
        Currency("DKK", 208, 2),
        Currency("PLN", 985, 2),
        Currency("CZK", 203, 2),
        Currency("HUF", 348, 2),
        Currency("CAD", 124, 2),
        Currency("AUD", 36, 2),
        Currency("JPY", 392, 0),
        Currency("KWD", 414, 3),
    )
}
CURRENCIES_BY_NUMERIC: dict[int, Currency] = {c.numeric: c for c in CURRENCIES.values()}


def currency(alpha: str) -> Currency:
    try:
        return CURRENCIES[alpha.upper()]
    except KeyError:
        raise UnknownCurrency(f"unknown currency {alpha!r}") from None


def to_minor(
    amount: Decimal | int | str,
    minor_digits: int,
    *,
    allow_zero: bool = False,
    maximum_minor: int = AMOUNT_MINOR_MAX,
) -> int:
    """Convert a decimal amount to minor units exactly, or refuse it.

    The amount must be finite, positive (or zero when allowed), have no more decimals than the
    currency has minor digits, and not exceed the maximum. Trailing zeros are fine: 1.50 and 1.5
    are the same exact value.
    """
    if isinstance(amount, bool | float):  # A float has already lost exactness.
        raise InvalidAmount("amount must be a decimal number")
    # Decimal() alone would take " 1.5 ", "1_000", "+5" and non-ASCII digits; text must be a
    # plain JSON-style number.
    if isinstance(amount, str) and not _AMOUNT_TEXT.fullmatch(amount):
        raise InvalidAmount(f"amount {amount!r} is not a decimal number")
    try:
        value = Decimal(amount)
    except (InvalidOperation, ValueError, TypeError):
        raise InvalidAmount(f"amount {amount!r} is not a decimal number") from None
    if not value.is_finite():
        raise InvalidAmount("amount must be a finite number")
    # Decide on the magnitude first, so that scaling can neither overflow (1e999999) nor
    # underflow a tiny non-zero amount (1e-999999) to zero.
    if value and value.adjusted() > AMOUNT_DIGITS_MAX:
        raise InvalidAmount("amount is too large")
    if value and value.adjusted() < -minor_digits:
        raise InvalidAmount(f"amount has more than {minor_digits} decimals")
    scaled = value.scaleb(minor_digits) if value else Decimal(0)
    if scaled != scaled.to_integral_value():
        raise InvalidAmount(f"amount has more than {minor_digits} decimals")
    minor = int(scaled)
    if minor < 0 or (minor == 0 and not allow_zero):
        raise InvalidAmount("amount must be greater than 0")
    if minor > maximum_minor:
        raise InvalidAmount("amount is too large")
    return minor


def to_major(amount_minor: int, minor_digits: int) -> Decimal:
    """The exact decimal for a minor-unit amount, with exactly the currency's decimals."""
    return Decimal(amount_minor).scaleb(-minor_digits).quantize(Decimal(1).scaleb(-minor_digits))
