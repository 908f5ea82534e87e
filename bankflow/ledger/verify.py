"""``bankflow verify``: the ledger's invariants, checked straight from PostgreSQL.

Each check is one set-based query that returns the violations it finds (at most
``SAMPLE_MAX`` of them, with the total count), so a clean ledger reads as a
column of zeros and a broken one names the rows to look at.

Beyond the ledger's own arithmetic, the statuses are checked against the ledger (it
is the truth: nothing shown refused has entries, and every outcome older than the
status lag shows), and the stages' progress against bounds (``Bounds``): accepted
transfers reach the ledger or the dead-letter store, and the outbox drains.
Statuses are only checked where the tracker wrote one: a poster fed straight from
``transfers.accepted`` (tests, benchmarks) has ledger rows without statuses.
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
class Bounds:
    """How far the stages may be behind the ledger before verify calls it a violation.

    The tracker learns an outcome from the relay's event a moment after the poster
    wrote it; a transfer accepted now is posted within seconds unless a stage is down
    or retrying; the relay publishes within a second of the commit. The defaults are
    far above those delays in a healthy pipeline, and below what an operator would
    want to learn from verify before an alert told them.
    """

    #: A ledger outcome older than this must show in ``transfer_status``.
    status_lag_s: int = 60
    #: An accepted status older than this must be in the ledger or a dead letter
    #: (the retry tiers' longest delay plus the poster's backoff fit well inside).
    accepted_age_max_s: int = 900
    #: An outbox row older than this must have been sent.
    outbox_age_max_s: int = 600


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
        "every posted transfer has one debit and one credit entry of its amount",
        """select t.id::text || ' has ' || count(e.id) || ' entries'
           from transfers t left join entries e on e.transfer_id = t.id
           where t.status = 'posted'
           group by t.id
           having count(e.id) <> 2
              or sum(e.amount_minor) filter (where e.amount_minor > 0)
                 is distinct from max(t.amount_minor)""",
    ),
    Invariant(
        "entries_on_the_transfers_accounts",
        "a posted transfer's entries are its amount off its debit account and onto its "
        "credit account, both in its currency",
        """select t.id::text || ' entry ' || e.id || ' of ' || e.amount_minor || ' '
                  || a.currency || ' on ' || e.account_id::text
           from transfers t
           join entries e on e.transfer_id = t.id
           join accounts a on a.id = e.account_id
           where t.status = 'posted'
             and not (a.currency = t.currency
                      and ((e.account_id = t.debit_account_id
                            and e.amount_minor = -t.amount_minor)
                           or (e.account_id = t.credit_account_id
                               and e.amount_minor = t.amount_minor)))""",
    ),
    Invariant(
        "failed_transfers_have_no_entries",
        "a transfer the ledger did not post (failed, pending, voided) has no entries",
        """select t.id::text || ' (' || t.status || ') has ' || count(*) || ' entries'
           from transfers t join entries e on e.transfer_id = t.id
           where t.status <> 'posted'
           group by t.id, t.status""",
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
    Invariant(
        "refused_statuses_have_no_entries",
        "no transfer shown rejected (by the rules, a reviewer or the review timeout) or "
        "failed has entries in the ledger",
        """select s.transfer_id::text || ' shows ' || s.status
                  || coalesce(' (' || array_to_string(s.reasons, ',') || ')', '')
           from transfer_status s
           where s.status in ('rejected', 'failed')
             and exists (select 1 from entries e where e.transfer_id = s.transfer_id)""",
    ),
    Invariant(
        "statuses_show_the_ledger",
        "every transfer in the ledger longer than the status lag shows the ledger's outcome",
        """select t.id::text || ' is ' || t.status || ' in the ledger, shows ' || s.status
           from transfers t join transfer_status s on s.transfer_id = t.id
           where t.status in ('posted', 'failed')
             and t.created_at < now() - make_interval(secs => %(status_lag_s)s)
             and s.status <> t.status""",
    ),
    Invariant(
        "accepted_transfers_reach_the_ledger",
        "every transfer accepted longer ago than the bound is in the ledger or the "
        "dead-letter store",
        # Aged from when the status was reached (its history), not from the row's last
        # touch; a discarded letter does not account for it: nothing will post it.
        """with dead as materialized (
               select substring(encode(payload, 'escape')
                                from '"transfer_id"\\s*:\\s*"([0-9a-fA-F-]{36})"') as id
               from dead_letters where status <> 'discarded')
           select s.transfer_id::text || ' accepted at ' || h.at
           from transfer_status s
           join transfer_status_history h
             on h.transfer_id = s.transfer_id and h.status = 'accepted'
           where s.status = 'accepted'
             and h.at < now() - make_interval(secs => %(accepted_age_max_s)s)
             and not exists (select 1 from transfers t where t.id = s.transfer_id)
             and not exists (select 1 from dead d where lower(d.id) = s.transfer_id::text)""",
    ),
    Invariant(
        "outbox_is_sent",
        "no outbox row waits to be sent longer than the bound",
        """select o.id || ' (' || o.topic || ') unsent since ' || o.created_at
           from outbox o
           where o.sent_at is null
             and o.created_at < now() - make_interval(secs => %(outbox_age_max_s)s)""",
    ),
)
# A transfer id appears at most once: the primary key of ``transfers`` guarantees it, and
# ``posted_transfers_have_two_entries`` catches a transfer whose legs were written twice.


def verify(
    conn: psycopg.Connection[Any], settings: Settings, bounds: Bounds | None = None
) -> list[InvariantResult]:
    """Run every invariant in one repeatable-read snapshot, so they agree with each other.

    The outbox also carries other messages about a transfer (a reviewer's approval),
    so the event invariant counts only the ledger's posted and failed events.
    """
    bounds = bounds or Bounds()
    params = {
        "group": settings.poster_group,
        "posted_topic": settings.topic(TRANSFERS_POSTED),
        "failed_topic": settings.topic(TRANSFERS_FAILED),
        "status_lag_s": bounds.status_lag_s,
        "accepted_age_max_s": bounds.accepted_age_max_s,
        "outbox_age_max_s": bounds.outbox_age_max_s,
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
