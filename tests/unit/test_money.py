"""Amounts convert between decimal and minor units exactly, and anything inexact is refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import ErrorCode, InvalidAmount, UnknownCurrency
from ledger.money import AMOUNT_MINOR_MAX, CURRENCIES, currency, to_major, to_minor


@pytest.mark.parametrize(
    ("amount", "digits", "expected"),
    [
        ("12.34", 2, 1234),
        ("1.5", 2, 150),
        ("1.50", 2, 150),
        ("0.01", 2, 1),
        (12, 2, 1200),
        (Decimal("19.99"), 2, 1999),
        (Decimal("7"), 2, 700),
        ("1E+2", 2, 10_000),
        ("1000", 0, 1000),
        (1000, 0, 1000),
        ("1.000", 0, 1),
        ("1.234", 3, 1234),
        ("0.001", 3, 1),
        (Decimal("2.5"), 3, 2500),
        ("100000000.00", 2, AMOUNT_MINOR_MAX),
    ],
)
def test_to_minor_converts_exact_amounts(amount: object, digits: int, expected: int) -> None:
    assert to_minor(amount, digits) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "digits"),
    [
        (1.5, 2),
        (1.0, 2),
        (0.1, 2),
        (True, 2),
        ("NaN", 2),
        ("sNaN", 2),
        (Decimal("NaN"), 2),
        ("Infinity", 2),
        ("-Infinity", 2),
        (Decimal("Infinity"), 2),
        ("1.234", 2),
        ("0.001", 2),
        ("1.5", 0),
        ("1.0001", 3),
        ("abc", 2),
        ("", 2),
        ("1,50", 2),
        (None, 2),
        ("0", 2),
        (0, 2),
        ("0.00", 2),
        ("-1", 2),
        ("-0.01", 2),
        (-5, 0),
        ("100000000.01", 2),
        (AMOUNT_MINOR_MAX + 1, 0),
        ("10000000.001", 3),
    ],
)
def test_to_minor_refuses_inexact_invalid_or_out_of_range(amount: object, digits: int) -> None:
    with pytest.raises(InvalidAmount) as info:
        to_minor(amount, digits)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.INVALID_AMOUNT == "invalid_amount"


@pytest.mark.parametrize("amount", ["0", "0.00", 0, Decimal("0.000")])
def test_to_minor_accepts_zero_only_when_allowed(amount: object) -> None:
    assert to_minor(amount, 2, allow_zero=True) == 0  # type: ignore[arg-type]
    with pytest.raises(InvalidAmount):
        to_minor(amount, 2)  # type: ignore[arg-type]


def test_to_minor_allow_zero_still_refuses_negative_amounts() -> None:
    with pytest.raises(InvalidAmount):
        to_minor("-0.01", 2, allow_zero=True)


def test_to_minor_honours_a_lower_maximum() -> None:
    assert to_minor("5.00", 2, maximum_minor=500) == 500
    with pytest.raises(InvalidAmount):
        to_minor("5.01", 2, maximum_minor=500)


@pytest.mark.parametrize(
    ("minor", "digits", "text"),
    [
        (1234, 2, "12.34"),
        (150, 2, "1.50"),
        (1, 2, "0.01"),
        (0, 2, "0.00"),
        (1000, 0, "1000"),
        (1, 3, "0.001"),
        (1230, 3, "1.230"),
        (AMOUNT_MINOR_MAX, 2, "100000000.00"),
    ],
)
def test_to_major_gives_the_exact_decimal_with_the_currency_decimals(
    minor: int, digits: int, text: str
) -> None:
    major = to_major(minor, digits)
    assert major == Decimal(text)
    assert str(major) == text


def test_known_currencies_carry_their_iso_minor_digits() -> None:
    assert currency("eur") == CURRENCIES["EUR"]
    assert (currency("EUR").numeric, currency("EUR").minor_digits) == (978, 2)
    assert (currency("JPY").numeric, currency("JPY").minor_digits) == (392, 0)
    assert (currency("KWD").numeric, currency("KWD").minor_digits) == (414, 3)


def test_unknown_currency_is_refused_with_its_code() -> None:
    with pytest.raises(UnknownCurrency) as info:
        currency("XXX")
    assert info.value.code == ErrorCode.UNKNOWN_CURRENCY


@given(
    minor=st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX),
    digits=st.sampled_from([0, 2, 3]),
)
def test_minor_to_major_and_back_is_the_identity(minor: int, digits: int) -> None:
    major = to_major(minor, digits)
    assert to_minor(major, digits) == minor
    assert to_minor(str(major), digits) == minor


@pytest.mark.parametrize("amount", ["9E+999999", "1E+999990", "1E+19", "-1E+999999"])
def test_to_minor_refuses_a_huge_exponent_as_invalid_amount(amount: str) -> None:
    # Before the fix these escaped as decimal.Overflow, or spent half a minute building an int.
    with pytest.raises(InvalidAmount) as info:
        to_minor(amount, 2)
    assert info.value.code == ErrorCode.INVALID_AMOUNT


@pytest.mark.parametrize("amount", ["1E-999999999", "1E-1000", "0.001"])
def test_to_minor_refuses_a_tiny_non_zero_amount_even_when_zero_is_allowed(amount: str) -> None:
    with pytest.raises(InvalidAmount):
        to_minor(amount, 2, allow_zero=True)
