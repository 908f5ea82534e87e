"""Money: an integer count of minor units with an ISO 4217 currency. Never a float.

Every decimal string that enters bankflow (API bodies, batch files, the CLI) is
parsed by ``parse_amount``, and every amount that leaves as text is formatted by
``format_amount``; nothing else converts between the two.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from bankflow.domain.errors import InvalidAmount, UnsupportedCurrency

#: The one table of the currencies bankflow can hold, each with its ISO 4217 minor-unit
#: exponent (the number of decimal places: 2 for EUR, 0 for JPY, 3 for KWD). Every
#: other check of a currency (the message schemas' pattern, ``BANKFLOW_CURRENCIES``,
#: parsing, formatting, the validator's limits) reads it; nothing keeps its own list.
#: A bank supports a deliberate list; adding one is a reviewed change, not a lookup.
CURRENCY_EXPONENTS: Final[Mapping[str, int]] = MappingProxyType({
    "EUR": 2, "USD": 2, "GBP": 2, "CHF": 2, "SEK": 2, "NOK": 2, "DKK": 2, "PLN": 2,
    "CZK": 2, "HUF": 2, "RON": 2, "CAD": 2, "AUD": 2, "JPY": 0, "KWD": 3, "BHD": 3,
})  # fmt: skip

#: A regular expression that matches exactly the codes of ``CURRENCY_EXPONENTS``, for
#: schemas that declare their check as a pattern (and publish it in their JSON schema).
CURRENCY_PATTERN: Final = f"^(?:{'|'.join(sorted(CURRENCY_EXPONENTS))})$"

#: The largest amount one transfer may carry: 10^15 minor units (10 trillion EUR) keeps
#: every sum of a day's transfers far inside PostgreSQL's bigint.
AMOUNT_MINOR_MAX: Final = 10**15

#: ASCII digits only: ``\d`` would admit other scripts' digits, which ``int`` reads.
_DECIMAL = re.compile(r"^(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?$")
#: The longest amount text read at all: far above any valid amount (16 digits, a point,
#: 3 places, leading zeros), and short enough that ``int`` never meets thousands of
#: digits (Python refuses more than 4,300) and an error message never echoes them.
AMOUNT_TEXT_MAX: Final = 64


def exponent(currency: str) -> int:
    """The number of decimal places of ``currency``; refuses a currency we do not hold."""
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise UnsupportedCurrency(
            f"currency {currency!r} is not supported; supported: "
            f"{', '.join(sorted(CURRENCY_EXPONENTS))}"
        ) from None


def parse_amount(text: str, currency: str, *, allow_zero: bool = False) -> int:
    """A positive decimal string such as ``"12.30"`` as minor units (1230 for EUR).

    ``allow_zero`` admits ``"0"`` for limits (an overdraft of nothing); amounts of
    money moved are always greater than zero.

    More decimal places than the currency has are refused, never rounded: a
    bank does not guess what a customer meant by 0.005 EUR.
    """
    if not isinstance(text, str):
        raise InvalidAmount(f"amount must be a decimal string, got {type(text).__name__}")
    if len(text) > AMOUNT_TEXT_MAX:
        raise InvalidAmount(
            f"amount {text[:20]!r}... is {len(text)} characters long; at most "
            f"{AMOUNT_TEXT_MAX} are read"
        )
    match = _DECIMAL.match(text.strip())
    if match is None:
        raise InvalidAmount(f"amount {text!r} is not a plain decimal such as 12.30")
    places = exponent(currency)
    fraction = match.group("frac") or ""
    if len(fraction) > places:
        raise InvalidAmount(_too_many_places(text, len(fraction), currency, places))
    minor = int(match.group("int") + fraction.ljust(places, "0"))
    if minor < 0 or (minor == 0 and not allow_zero):
        raise InvalidAmount(f"amount {text!r} must be greater than zero")
    if minor > AMOUNT_MINOR_MAX:
        raise InvalidAmount(f"amount {text!r} is above the limit of one transfer")
    return minor


def _too_many_places(text: str, given: int, currency: str, places: int) -> str:
    if places == 0:
        return (
            f"amount {text!r} has {given} decimal places; {currency} has 0 "
            f"(no minor unit): write a whole number such as {text.strip().split('.')[0]}"
        )
    return f"amount {text!r} has {given} decimal places; {currency} has {places}"


def minor_units(major: int, currency: str) -> int:
    """A whole number of major units (a limit such as 5,000,000) in minor units of
    ``currency``: 500,000,000 cents for EUR, 5,000,000 for JPY, 5,000,000,000 fils for KWD."""
    scale: int = 10 ** exponent(currency)  # typeshed types int ** int as Any
    return major * scale


def format_amount(minor: int, currency: str) -> str:
    """Minor units as a decimal string with the currency's exponent: 1230 EUR -> "12.30"."""
    places = exponent(currency)
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor)).rjust(places + 1, "0")
    if places == 0:
        return f"{sign}{digits}"
    return f"{sign}{digits[:-places]}.{digits[-places:]}"
