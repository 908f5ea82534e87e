"""IBANs of our accounts: generated and checked with schwifty, never by hand."""

from __future__ import annotations

import functools
import uuid
from typing import Final

from schwifty import IBAN
from schwifty.exceptions import SchwiftyException

from bankflow.domain.errors import InvalidAccountReference, InvalidIban

#: Canonical references remembered by ``parse_account_reference``. Batch files name the
#: same accounts on many lines, and schwifty's check costs about 10 µs (measured), as
#: much as the rest of a line's ingest; 16,384 short strings are a few megabytes.
REFERENCES_CACHED_MAX: Final = 16_384
#: Characters of a refused reference quoted in its error (a file may hold megabytes).
_QUOTED_MAX: Final = 40
#: An account id as PostgreSQL prints a uuid: 8-4-4-4-12 hexadecimal digits.
_UUID_TEXT_LENGTH: Final = 36


def generate_iban(country: str, bank_code: str, account_number: int) -> str:
    """The IBAN of account ``account_number`` at our bank, with valid check digits."""
    try:
        return str(IBAN.generate(country, bank_code=bank_code, account_code=str(account_number)))
    except SchwiftyException as exc:
        raise InvalidIban(
            f"cannot make an IBAN for country {country}, bank code {bank_code}, "
            f"account {account_number}: {exc}"
        ) from exc


def normalize_iban(text: str) -> str:
    """A valid IBAN in its compact form (no spaces, upper case); refuses a bad one."""
    try:
        return str(IBAN(text))
    except SchwiftyException as exc:
        raise InvalidIban(f"{text!r} is not a valid IBAN: {exc}") from exc


def account_reference_key(reference: str) -> str:
    """The one form an account reference is looked up in: an IBAN compacted and upper
    case, an account id lower case (as PostgreSQL prints a uuid)."""
    if looks_like_iban(reference):
        return reference.replace(" ", "").upper()
    return reference.strip().lower()


def looks_like_iban(text: str) -> bool:
    """Whether ``text`` is written as an IBAN (two letters, two digits, then letters and
    digits only), valid or not. An account id ("ab12cdef-...") is not: it has dashes."""
    compact = text.replace(" ", "")
    return (
        15 <= len(compact) <= 34
        and compact.isascii()
        and compact.isalnum()
        and compact[:2].isalpha()
        and compact[2:4].isdigit()
    )


@functools.lru_cache(maxsize=REFERENCES_CACHED_MAX)
def parse_account_reference(text: str) -> str:
    """An account reference in its canonical form, or ``InvalidAccountReference``.

    The one check of every reference that enters bankflow (API bodies, batch files):
    an account id written as a UUID (``8-4-4-4-12`` hexadecimal digits, answered in
    lower case), or an IBAN that schwifty finds valid (answered compact, upper case;
    spaces and lower case as on paper are accepted). Nothing else, so a reference
    that reaches a stage is one it can look up.
    """
    if len(text) == _UUID_TEXT_LENGTH and text.count("-") == 4:
        return _account_id(text)
    try:
        return str(IBAN(text))
    except SchwiftyException as exc:
        # schwifty's messages end by quoting the whole input, which is quoted once already.
        why = _quoted(str(exc).partition(" in IBAN")[0], quote=False)
        raise InvalidAccountReference(
            f"{_quoted(text)} is neither an account id (a UUID) nor a valid IBAN: "
            f"{why[:1].lower()}{why[1:]}"
        ) from None


def _account_id(text: str) -> str:
    try:
        canonical = str(uuid.UUID(text))
    except ValueError:
        canonical = ""
    # uuid.UUID also takes braces, a urn: prefix and non-ASCII digits; only the form
    # PostgreSQL prints is an account id.
    if canonical != text.lower():
        raise InvalidAccountReference(
            f"{_quoted(text)} is not an account id: a UUID has 32 hexadecimal digits "
            "in groups of 8-4-4-4-12"
        )
    return canonical


def _quoted(text: str, *, quote: bool = True) -> str:
    short = text if len(text) <= _QUOTED_MAX else text[:_QUOTED_MAX] + "…"
    return repr(short) if quote else short
