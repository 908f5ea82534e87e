import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bankflow.domain.errors import InvalidAmount, UnsupportedCurrency
from bankflow.domain.money import (
    AMOUNT_MINOR_MAX,
    CURRENCY_EXPONENTS,
    CURRENCY_PATTERN,
    exponent,
    format_amount,
    minor_units,
    parse_amount,
)


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.30", "EUR", 1230),
        ("12.3", "EUR", 1230),
        ("12", "EUR", 1200),
        ("0.01", "EUR", 1),
        ("1500", "JPY", 1500),
        ("100", "JPY", 100),
        ("1.234", "KWD", 1234),
        ("1.000", "KWD", 1000),
        ("1", "KWD", 1000),
        ("0.5", "KWD", 500),
        ("0.001", "KWD", 1),
        (" 7.00 ", "USD", 700),
    ],
)
def test_decimal_strings_become_minor_units(text: str, currency: str, minor: int) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "message"),
    [
        ("12.345", "EUR", "3 decimal places; EUR has 2"),
        ("1.5", "JPY", "JPY has 0"),
        ("100.00", "JPY", r"JPY has 0 \(no minor unit\): write a whole number such as 100"),
        ("1.0001", "KWD", "4 decimal places; KWD has 3"),
        ("0", "EUR", "greater than zero"),
        ("0.00", "EUR", "greater than zero"),
        ("-5", "EUR", "not a plain decimal"),
        ("1e3", "EUR", "not a plain decimal"),
        ("12,30", "EUR", "not a plain decimal"),
        ("", "EUR", "not a plain decimal"),
        ("NaN", "EUR", "not a plain decimal"),
        ("100000000000000.01", "EUR", "above the limit"),
    ],
)
def test_bad_amounts_are_refused_with_the_reason(text: str, currency: str, message: str) -> None:
    with pytest.raises(InvalidAmount, match=message):
        parse_amount(text, currency)


def test_zero_is_only_a_limit_never_an_amount() -> None:
    assert parse_amount("0.00", "EUR", allow_zero=True) == 0
    with pytest.raises(InvalidAmount, match="greater than zero"):
        parse_amount("0.00", "EUR")


def test_a_float_is_refused_outright() -> None:
    with pytest.raises(InvalidAmount, match="decimal string"):
        parse_amount(12.3, "EUR")  # type: ignore[arg-type]


def test_an_unsupported_currency_names_the_supported_ones() -> None:
    with pytest.raises(UnsupportedCurrency, match=r"'XYZ' is not supported; supported: .*EUR"):
        exponent("XYZ")


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1230, "EUR", "12.30"),
        (5, "EUR", "0.05"),
        (-5, "EUR", "-0.05"),
        (0, "EUR", "0.00"),
        (1500, "JPY", "1500"),
        (0, "JPY", "0"),
        (-100, "JPY", "-100"),
        (1234, "KWD", "1.234"),
        (1000, "KWD", "1.000"),
        (5, "KWD", "0.005"),
        (-5, "KWD", "-0.005"),
    ],
)
def test_minor_units_format_with_the_currency_exponent(
    minor: int, currency: str, text: str
) -> None:
    assert format_amount(minor, currency) == text


@given(
    st.integers(min_value=1, max_value=AMOUNT_MINOR_MAX),
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_format_then_parse_is_the_identity(minor: int, currency: str) -> None:
    assert parse_amount(format_amount(minor, currency), currency) == minor


@pytest.mark.parametrize(
    "text",
    ["1" * 5000, "0" * 4000 + "1.00", "١٢.٣٠", "12.3٠", "１２"],  # long, Arabic-Indic, fullwidth
)
def test_amounts_that_are_too_long_or_not_ascii_digits_are_refused_clearly(text: str) -> None:
    with pytest.raises(InvalidAmount) as refused:
        parse_amount(text, "EUR")
    assert len(str(refused.value)) < 200  # the message never echoes thousands of digits


def test_the_table_holds_the_currencies_of_the_bank_with_their_iso_exponents() -> None:
    assert {c: CURRENCY_EXPONENTS[c] for c in ("EUR", "USD", "GBP", "CHF", "JPY", "KWD")} == {
        "EUR": 2, "USD": 2, "GBP": 2, "CHF": 2, "JPY": 0, "KWD": 3,
    }  # fmt: skip
    pattern = re.compile(CURRENCY_PATTERN)
    assert all(pattern.match(code) for code in CURRENCY_EXPONENTS)
    assert not any(pattern.match(code) for code in ("XYZ", "eur", "EURO", "EU", ""))


def test_whole_units_scale_by_the_exponent() -> None:
    assert (minor_units(5, "EUR"), minor_units(5, "JPY"), minor_units(5, "KWD")) == (500, 5, 5000)
    with pytest.raises(UnsupportedCurrency):
        minor_units(5, "XYZ")
