"""IBANs of our accounts: generated and checked with schwifty, never by hand."""

from __future__ import annotations

from schwifty import IBAN
from schwifty.exceptions import SchwiftyException

from bankflow.domain.errors import InvalidIban


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
