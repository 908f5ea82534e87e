"""A page of history on an account with a million entries reads a page, not the account.

The rows bypass the ledger (one set-based INSERT ... SELECT generate_series, in this
test's own schema): a million entries of one account, two million of a hundred
others interleaved with them in id order (so the busy account is a third of the
table, and the primary key in id order is no shortcut), and 150 of a small account.
Transfers have many legs each (every thousand entries of the busy account share a
transfer and one cash leg) to keep the transfers table and the zero-sum trigger
cheap; every transfer's legs still sum to zero. The plan, not the time, is asserted:
the page walks ``entries_history`` and reads as many index entries as it returns,
however deep the cursor and however large the account. Measured timings are in
docs/architecture.md.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from bankflow.domain.history import ENTRY_ID_MAX, HistoryFilter
from bankflow.ledger.accounts import create_customer, find_internal_account, open_account
from bankflow.ledger.history import BALANCE_BEFORE_SQL, MONTH_SQL, history_sql
from bankflow.settings import Settings

pytestmark = pytest.mark.timeout(300)

BUSY_ENTRIES = 1_000_000
#: Entries of the busy account per transfer (and one cash leg each).
LEGS_PER_TRANSFER = 1_000
FILLER_ACCOUNTS = 100
SMALL_ENTRIES = 150
PAGE = 100
START = datetime(2024, 1, 1, tzinfo=UTC)


def _open(db: Any, settings: Settings, count: int) -> list[uuid.UUID]:
    owner = create_customer(db, "Plan Test")
    return [
        open_account(db, settings, customer_id=owner, account_type="checking", currency="EUR").id
        for _ in range(count)
    ]


def _fill(db: Any, busy: uuid.UUID, small: uuid.UUID, cash: uuid.UUID, filler: list) -> None:
    """Entries and their transfers, set-based; secondary indexes rebuilt afterwards."""
    indexes = db.execute(
        "select indexname, indexdef from pg_indexes where schemaname = current_schema() "
        "and tablename = 'entries' and indexname <> 'entries_pkey'"
    ).fetchall()
    with db.transaction():
        db.execute("set local maintenance_work_mem = '256MB'")
        db.execute("set local synchronous_commit = off")
        db.execute("set local work_mem = '64MB'")
        for name, _ in indexes:
            db.execute(f"drop index {name}")
        # The foreign-key checks (a lookup per row and key) would be most of the load's
        # time; the rows are built valid. The zero-sum trigger stays on.
        db.execute("alter table entries disable trigger all")
        db.execute("alter table entries enable trigger entries_sum_to_zero")
        batches = BUSY_ENTRIES // LEGS_PER_TRANSFER
        # Transfer ids: 'b...' for the busy account's, 'f...' for the filler's.
        db.execute(
            """
            insert into transfers (id, source, debit_account_id, credit_account_id, amount_minor,
                currency, status, category, tags, description, requested_at, posted_at)
            select (kind || lpad(to_hex(b), 31, '0'))::uuid, 'api', %(cash)s, %(busy)s,
                   100 * %(legs)s, 'EUR', 'posted',
                   case when b %% 10 = 0 then 'rent' else 'food' end, array['plan'],
                   'plan test ' || b, %(start)s, %(start)s
            from generate_series(0, %(batches)s) b cross join (values ('b'), ('f')) k(kind)
            union all
            select 'c0000000-0000-0000-0000-000000000000', 'api', %(cash)s, %(small)s, 150,
                   'EUR', 'posted', null, '{}', 'small', %(start)s, %(start)s
            """,
            {"cash": cash, "busy": busy, "small": small, "legs": LEGS_PER_TRANSFER,
             "batches": batches, "start": START},
        )  # fmt: skip
        db.execute(
            """
            insert into entries (transfer_id, account_id, amount_minor, balance_after_minor,
                posted_at)
            select transfer_id, account_id, amount_minor, balance_after_minor, posted_at
            from (
                select g, leg,
                    (case when leg = 0 then 'b' else 'f' end
                        || lpad(to_hex(g / %(legs)s), 31, '0'))::uuid as transfer_id,
                    case leg when 0 then %(busy)s
                        else (%(filler)s::uuid[])[1 + (g + leg) %% %(fillers)s] end as account_id,
                    case leg when 0 then 100 when 1 then 1 else -1 end as amount_minor,
                    case leg when 0 then 100 * g else 0 end as balance_after_minor,
                    %(start)s + g * interval '1 minute' as posted_at
                from generate_series(1, %(n)s) g cross join (values (0), (1), (2)) l(leg)
                union all
                -- The cash leg of each busy transfer: minus its busy legs (g / legs = b).
                select b * %(legs)s + %(legs)s - 1, 3,
                    ('b' || lpad(to_hex(b), 31, '0'))::uuid, %(cash)s,
                    -100 * (least(%(n)s, b * %(legs)s + %(legs)s - 1)
                            - greatest(1, b * %(legs)s) + 1),
                    -100 * (b * %(legs)s + %(legs)s - 1),
                    %(start)s + (b * %(legs)s + %(legs)s - 1) * interval '1 minute'
                from generate_series(0, %(batches)s) b
                union all
                -- The small account: one transfer of its own legs and one cash leg.
                select %(n)s + s, 0, 'c0000000-0000-0000-0000-000000000000'::uuid,
                    case when s <= %(small_n)s then %(small)s else %(cash)s end,
                    case when s <= %(small_n)s then 1 else -%(small_n)s end,
                    case when s <= %(small_n)s then s else 0 end,
                    %(start)s + (%(n)s + s) * interval '1 minute'
                from generate_series(1, %(small_n)s + 1) s
            ) legs
            """,
            {"legs": LEGS_PER_TRANSFER, "busy": busy, "filler": filler, "fillers": len(filler),
             "n": BUSY_ENTRIES, "batches": batches, "cash": cash, "small": small,
             "small_n": SMALL_ENTRIES, "start": START},
        )  # fmt: skip
        db.execute("alter table entries enable trigger all")
        for _, definition in indexes:
            db.execute(definition)
    db.execute("vacuum analyze entries")
    db.execute("vacuum analyze transfers")


def _plan(db: Any, sql: str, params: Any) -> dict[str, Any]:
    (plan,) = db.execute(f"explain (analyze, buffers, format json) {sql}", params).fetchone()
    return dict(plan[0] if isinstance(plan, list) else json.loads(plan)[0])


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found += _nodes(child)
    return found


def _page_plan(db: Any, account: uuid.UUID, before: int) -> dict[str, Any]:
    sql, params = history_sql(HistoryFilter())
    params.update(account=account, before=before, window=PAGE + 1, limit=PAGE + 1)
    return _plan(db, sql, params)


def _assert_reads_one_page(plan: dict[str, Any], returned: int) -> None:
    nodes = _nodes(plan["Plan"])
    entry_scans = [n for n in nodes if n.get("Relation Name") == "entries"]
    assert [n["Index Name"] for n in entry_scans] == ["entries_history"], entry_scans
    (scan,) = entry_scans
    assert scan["Node Type"] in ("Index Only Scan", "Index Scan")
    assert scan["Actual Rows"] == returned  # read as much as the page, not the account


def test_a_page_of_a_million_entry_account_uses_the_index(settings: Settings, db: Any) -> None:
    busy, small, *filler = _open(db, settings, 2 + FILLER_ACCOUNTS)
    cash = find_internal_account(db, "cash", "EUR")
    assert cash is not None
    started = time.monotonic()
    _fill(db, busy, small, cash.id, filler)
    print(f"\nbuilt in {time.monotonic() - started:.1f} s")  # shown with -s
    counts = dict(db.execute("select account_id, count(*) from entries group by 1").fetchall())
    assert (counts[busy], counts[small]) == (BUSY_ENTRIES, SMALL_ENTRIES)
    middle = db.execute(
        "select id from entries where account_id = %s order by id offset %s limit 1",
        (busy, BUSY_ENTRIES // 2),
    ).fetchone()[0]

    for label, account, before, rows in (
        ("busy, newest page", busy, ENTRY_ID_MAX, PAGE + 1),
        ("busy, page from the middle", busy, middle, PAGE + 1),
        ("small, newest page", small, ENTRY_ID_MAX, PAGE + 1),
    ):
        plan = _page_plan(db, account, before)
        print(f"{label}: {plan['Execution Time']:.3f} ms")
        _assert_reads_one_page(plan, rows)

    # A month long past, and the balance before it, through entries_by_time.
    month = (datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))
    for sql, params in (
        (BALANCE_BEFORE_SQL, (busy, month[0])),
        (MONTH_SQL, (busy, month[0], month[1], 50_000)),
    ):
        plan = _plan(db, sql, params)
        print(f"statement query: {plan['Execution Time']:.3f} ms")
        nodes = _nodes(plan["Plan"])
        assert not [
            n for n in nodes if n["Node Type"] == "Seq Scan" and n["Relation Name"] == "entries"
        ]
        assert {
            n["Index Name"] for n in nodes if n.get("Index Name", "").startswith("entries")
        } == {"entries_by_time"}
