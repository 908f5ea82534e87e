"""Who hands a batch file in, and whose accounts its lines may debit.

Every batch has a submitter: a user of the bank (the API's signed-in caller, the
CLI's ``--submitted-by``, the inbox folder the file was dropped in). A customer
submits for themselves; a member of staff (teller or admin) submits for one named
customer (``--on-behalf-of``) and is recorded as doing so. Either way the file's
lines may debit only that one customer's own accounts (never the bank's), and every
request of the file is ``requested_by`` ``customer:<id>`` of that customer, so the
validator checks the same rule a second time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from producers.ingest.records import SubmitterRefused

#: Staff roles that may hand in a file for a customer: the ones that move customers'
#: money over the API too (a reviewer or an auditor only reads).
STAFF_SUBMITTERS: Final = frozenset({"teller", "admin"})


@dataclass(frozen=True, slots=True)
class Submitter:
    user_id: uuid.UUID
    email: str
    role: str
    #: The customer whose accounts the file's lines may debit.
    customer_id: uuid.UUID

    @property
    def on_behalf_of(self) -> uuid.UUID | None:
        """The customer a member of staff acts for; None when customers submit their own."""
        return None if self.role == "customer" else self.customer_id

    @property
    def requested_by(self) -> str:
        """What every request of the file carries, as the validator reads it."""
        return f"customer:{self.customer_id}"

    def describe(self) -> str:
        if self.on_behalf_of is None:
            return self.email
        return f"{self.email} for customer {self.customer_id}"


def customer_submitter(user_id: uuid.UUID, email: str, customer_id: uuid.UUID) -> Submitter:
    return Submitter(user_id, email, "customer", customer_id)


def find_submitter(
    conn: psycopg.Connection[Any], email: str, on_behalf_of: str | None = None
) -> Submitter:
    """The submitter a user's email names (and the customer a member of staff acts for).

    The users are read here rather than through ``bankflow.identity.store``, which is
    async for the API: the ingest runs synchronously in the CLI, the inbox watcher and
    the API's worker threads.
    """
    row = conn.execute(
        "select id, email, role, customer_id, disabled from users where email = %s",
        (email.strip().lower(),),
    ).fetchone()
    if row is None:
        raise SubmitterRefused(f"no user has the email {email!r}")
    user_id, found_email, role, own_customer, disabled = row
    if disabled:
        raise SubmitterRefused(f"the user {found_email} is disabled")
    if role == "customer":
        if on_behalf_of is not None:
            raise SubmitterRefused("a customer submits only their own files (no --on-behalf-of)")
        return Submitter(user_id, found_email, role, own_customer)
    if role not in STAFF_SUBMITTERS:
        raise SubmitterRefused(
            f"{found_email} is a {role}; only {', '.join(sorted(STAFF_SUBMITTERS))} "
            "staff submit files for customers"
        )
    if on_behalf_of is None:
        raise SubmitterRefused(
            f"{found_email} is staff: name the customer the file is for (--on-behalf-of)"
        )
    return Submitter(user_id, found_email, role, _customer(conn, on_behalf_of))


def _customer(conn: psycopg.Connection[Any], reference: str) -> uuid.UUID:
    """A customer by a customer user's email, the customer's own email, or its id."""
    text = reference.strip().lower()
    try:
        by_id: uuid.UUID | None = uuid.UUID(text)
    except ValueError:
        by_id = None
    row = conn.execute(
        "select c.id from customers c left join users u on u.customer_id = c.id"
        " where (u.email = %s or c.email = %s or c.id = %s) and c.kind <> 'bank' limit 1",
        (text, text, by_id),
    ).fetchone()
    if row is None:
        raise SubmitterRefused(f"no customer is {reference!r}")
    customer: uuid.UUID = row[0]
    return customer
