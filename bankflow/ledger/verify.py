"""``bankflow verify``: the ledger's invariants, checked straight from PostgreSQL.

Each check is one query that returns the violations it finds (at most
``SAMPLE_MAX`` of them, with the total count), so a clean ledger reads as a
column of zeros and a broken one names the rows to look at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from bankflow.settings import Settings
from schemas.topics import TRANSFERS_FAILED, TRANSFERS_POSTED

#: Violations listed per invariant; the count is always the full number.
SAMPLE_MAX = 5


@dataclass(frozen=True)
class Invariant:
    name: str
    description: str
    sql: str  # returns one text column describing each violation


@dataclass
class InvariantResult:
    name: str
    description: str
    violations: int
    samples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violations == 0


INVARIANTS: tuple[Invariant, ...] = (
    Invariant(
        "entries_sum_to_zero",
        "the entries of every transfer sum to zero",
        """select transfer_id::text || ' sums to ' || sum(amount_minor)
           from entries group by transfer_id having sum(amount_minor) <> 0""",
    ),
    Invariant(
        "posted_transfers_have_two_entries",
        "every posted transfer has one debit and one credit entry; others have none",
        """select t.id::text || ' (' || t.status || ') has ' || count(e.id) || ' entries'
           from transfers t left join entries e on e.transfer_id = t.id
           group by t.id, t.status
           having (t.status = 'posted') <> (count(e.id) = 2)
              or (t.status = 'posted' and sum(e.amount_minor) filter (where e.amount_minor > 0)
                  is distinct from max(t.amount_minor))""",
    ),
    Invariant(
        "balances_sum_to_zero_per_currency",
        "per currency, all account balances sum to zero",
        """select currency || ' sums to ' || sum(balance_minor)
           from accounts group by currency having sum(balance_minor) <> 0""",
    ),
    Invariant(
        "balance_equals_entries",
        "every account's balance equals the sum of its entries",
        """select a.id::text || ' balance ' || a.balance_minor || ' entries '
                  || coalesce(e.total, 0)
           from accounts a
           left join (select account_id, sum(amount_minor) as total from entries
                      group by account_id) e on e.account_id = a.id
           where a.balance_minor <> coalesce(e.total, 0)""",
    ),
    Invariant(
        "running_balances_are_consistent",
        "each entry's balance_after is the running sum of its account's entries",
        """select id::text || ' on ' || account_id::text from (
               select id, account_id, balance_after_minor,
                      sum(amount_minor) over (partition by account_id order by id) as running
               from entries) r
           where balance_after_minor <> running""",
    ),
    Invariant(
        "one_event_per_transfer",
        "every transfer in the ledger has exactly one posted or failed event in the outbox",
        """select t.id::text || ' has ' || count(o.id) || ' events'
           from transfers t left join outbox o on o.transfer_id = t.id
             and o.topic in (%(posted_topic)s, %(failed_topic)s)
           where t.status in ('posted', 'failed')
           group by t.id having count(o.id) <> 1""",
    ),
    Invariant(
        "no_balance_below_overdraft_limit",
        "no customer account is below minus its overdraft limit",
        """select id::text || ' at ' || balance_minor || ' below -' || overdraft_limit_minor
           from accounts
           where type not in ('cash', 'settlement', 'fees', 'suspense')
             and balance_minor - pending_debit_minor < -overdraft_limit_minor""",
    ),
    Invariant(
        "offsets_cover_posted_transfers",
        "the stored consumer offsets are past the Kafka offset of every transfer in the ledger",
        """select t.id::text || ' at ' || t.kafka_topic || '[' || t.kafka_partition || ']@'
                  || t.kafka_offset || ' stored ' || coalesce(max(o.next_offset)::text, 'none')
           from transfers t
           left join consumer_offsets o on o.group_id = %(group)s
             and o.topic = t.kafka_topic and o.partition = t.kafka_partition
           where t.kafka_topic is not null
           group by t.id, t.kafka_topic, t.kafka_partition, t.kafka_offset
           having coalesce(max(o.next_offset), -1) <= t.kafka_offset""",
    ),
)
# A transfer id appears at most once: the primary key of ``transfers`` guarantees it, and
# ``posted_transfers_have_two_entries`` catches a transfer whose legs were written twice.


def verify(conn: psycopg.Connection[Any], settings: Settings) -> list[InvariantResult]:
    """Run every invariant in one repeatable-read snapshot, so they agree with each other.

    The outbox also carries other messages about a transfer (a reviewer's approval),
    so the event invariant counts only the ledger's posted and failed events.
    """
    params = {
        "group": settings.poster_group,
        "posted_topic": settings.topic(TRANSFERS_POSTED),
        "failed_topic": settings.topic(TRANSFERS_FAILED),
    }
    results = []
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read, read only")
        for invariant in INVARIANTS:
            rows = conn.execute(
                f"with v as ({invariant.sql}) select (select count(*) from v), "
                f"array(select * from v limit {SAMPLE_MAX})",
                params,
            ).fetchone()
            count, samples = rows if rows else (0, [])
            results.append(
                InvariantResult(invariant.name, invariant.description, int(count), list(samples))
            )
    return results
