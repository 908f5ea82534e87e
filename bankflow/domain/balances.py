"""An account's balances as clients see them: posted, pending and available.

Plain data, no I/O: the API builds it from PostgreSQL or from the Redis cache, and
the cache agent from PostgreSQL; all of them agree on one definition of
``available`` because it lives here.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from bankflow.domain.posting import INTERNAL_TYPES, AccountStatus


@dataclass(frozen=True, slots=True)
class BalanceSnapshot:
    """An account's money at one ``version`` of its row in ``accounts``.

    ``version`` grows by one with every change of the row (the poster bumps it per
    batch that moves the balance, an admin's change bumps it too), so of two
    snapshots of one account the one with the higher version is the newer.
    """

    account_id: UUID
    customer_id: UUID
    account_type: str
    currency: str
    status: str
    posted_minor: int
    pending_debit_minor: int
    pending_credit_minor: int
    overdraft_limit_minor: int
    version: int

    @property
    def pending_minor(self) -> int:
        """Two-phase transfers not posted yet, net: credits coming in minus debits going out."""
        return self.pending_credit_minor - self.pending_debit_minor

    @property
    def available_minor(self) -> int:
        """What a debit could take now, which is what the posting rules would allow.

        ``posted - pending debits + overdraft limit`` for an active account; pending
        credits do not count until they are posted. A frozen or closed account can pay
        nothing (the posting rules refuse it), so its available balance is zero. The
        bank's own accounts have no floor and no meaningful "available": they answer
        zero rather than a negative number.
        """
        if self.status != AccountStatus.ACTIVE or self.account_type in INTERNAL_TYPES:
            return 0
        return max(0, self.posted_minor - self.pending_debit_minor + self.overdraft_limit_minor)
