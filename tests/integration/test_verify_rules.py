"""``bankflow verify``: a clean ledger passes, and each rule catches its violation.

Each violation is planted straight in PostgreSQL (in the test's own schema) on top of
a small clean ledger, as a bug or a hand-edit would leave it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from bankflow.ledger.accounts import open_account
from bankflow.ledger.verify import Bounds, verify
from bankflow.settings import Settings
from schemas.transfers import AcceptedTransfer
from tests.integration.test_ledger_truth import Ledger, funded_accounts
from tests.ledger_support import accepted, run_cli

pytestmark = pytest.mark.timeout(120)
#: Bounds under which everything planted an hour ago is late, and nothing else is.
STRICT = Bounds(status_lag_s=0, accepted_age_max_s=600, outbox_age_max_s=600)


@dataclass
class World:
    db: Any
    settings: Settings
    a: uuid.UUID
    b: uuid.UUID
    posted: AcceptedTransfer
    failed: AcceptedTransfer


def track(db: Any, transfer: AcceptedTransfer, status: str, age: str = "0 s") -> None:
    """A ``transfer_status`` row as the tracker would write it, ``age`` old."""
    db.execute(
        "insert into transfer_status (transfer_id, debit_account, credit_account, amount_minor, "
        "currency, status, requested_at, updated_at) "
        "values (%s, %s, %s, %s, %s, %s, now(), now() - %s::interval) "
        "on conflict (transfer_id) do update set status = excluded.status, "
        "updated_at = excluded.updated_at",
        (transfer.transfer_id, str(transfer.debit_account_id), str(transfer.credit_account_id),
         transfer.amount_minor, transfer.currency, status, age),
    )  # fmt: skip
    db.execute(  # and the status's history row, when it was reached
        "insert into transfer_status_history (transfer_id, status, at) "
        "values (%s, %s, now() - %s::interval) on conflict do nothing",
        (transfer.transfer_id, status, age),
    )


@pytest.fixture
def world(settings: Settings, db: Any) -> World:
    """A clean ledger: a funded account, one posted and one failed transfer, statuses shown,
    the outbox sent."""
    ledger = Ledger(db, settings)
    a, b = funded_accounts(db, settings, ledger)
    posted, failed = accepted(a, b, 2_500), accepted(b, a, 10**9)
    ledger.post(posted, failed)
    track(db, posted, "posted")
    track(db, failed, "failed")
    db.execute("update outbox set sent_at = now()")
    return World(db, settings, a, b, posted, failed)


def failures(world: World, bounds: Bounds = STRICT) -> dict[str, list[str]]:
    return {r.name: r.samples for r in verify(world.db, world.settings, bounds) if not r.ok}


def plant_transfer(world: World, status: str, legs: list[tuple[uuid.UUID, int]]) -> str:
    """A transfer row of ``status`` with ``legs`` as its entries (written in one statement,
    as the zero-sum trigger wants)."""
    transfer_id = uuid.uuid4()
    reason = "insufficient_funds" if status == "failed" else None
    world.db.execute(
        "insert into transfers (id, source, debit_account_id, credit_account_id, amount_minor, "
        "currency, status, reason, requested_at) values (%s, 'api', %s, %s, 700, 'EUR', %s, %s, "
        "now())",
        (transfer_id, world.a, world.b, status, reason),
    )  # fmt: skip
    world.db.execute(
        "insert into entries (transfer_id, account_id, amount_minor, balance_after_minor) "
        "select %s, account, amount, 0 from unnest(%s::uuid[], %s::bigint[]) as l(account, amount)",
        (transfer_id, [leg[0] for leg in legs], [leg[1] for leg in legs]),
    )
    return str(transfer_id)


def entries_off_its_accounts(world: World) -> str:
    other = open_account(
        world.db, world.settings, customer_id=_customer(world), account_type="checking",
        currency="EUR",
    ).id  # fmt: skip
    return plant_transfer(world, "posted", [(world.a, -700), (other, 700)])


def entries_in_another_currency(world: World) -> str:
    usd = open_account(
        world.db, world.settings, customer_id=_customer(world), account_type="checking",
        currency="USD",
    ).id  # fmt: skip
    return plant_transfer(world, "posted", [(world.a, -700), (usd, 700)])


def entries_with_the_signs_swapped(world: World) -> str:
    return plant_transfer(world, "posted", [(world.a, 700), (world.b, -700)])


def entries_of_a_failed_transfer(world: World) -> str:
    return plant_transfer(world, "failed", [(world.a, -700), (world.b, 700)])


def rejected_but_posted(world: World) -> str:
    track(world.db, world.posted, "rejected")
    return str(world.posted.transfer_id)


def failed_status_but_posted(world: World) -> str:
    track(world.db, world.posted, "failed")
    return str(world.posted.transfer_id)


def posted_but_shown_accepted(world: World) -> str:
    track(world.db, world.posted, "accepted")
    return str(world.posted.transfer_id)


def accepted_an_hour_ago_and_lost(world: World) -> str:
    lost = accepted(world.a, world.b, 100)
    track(world.db, lost, "accepted", "1 hour")
    return str(lost.transfer_id)


def unsent_for_an_hour(world: World) -> str:
    (row_id,) = world.db.execute(
        "insert into outbox (event_id, topic, payload, created_at) "
        "values (%s, 'transfers.posted', '\\x7b7d', now() - interval '1 hour') returning id",
        (uuid.uuid4(),),
    ).fetchone()
    return str(row_id)


def _customer(world: World) -> uuid.UUID:
    (customer,) = world.db.execute(
        "select customer_id from accounts where id = %s", (world.a,)
    ).fetchone()
    return uuid.UUID(str(customer))


VIOLATIONS: list[tuple[str, Callable[[World], str]]] = [
    ("entries_on_the_transfers_accounts", entries_off_its_accounts),
    ("entries_on_the_transfers_accounts", entries_in_another_currency),
    ("entries_on_the_transfers_accounts", entries_with_the_signs_swapped),
    ("failed_transfers_have_no_entries", entries_of_a_failed_transfer),
    ("refused_statuses_have_no_entries", rejected_but_posted),
    ("refused_statuses_have_no_entries", failed_status_but_posted),
    ("statuses_show_the_ledger", posted_but_shown_accepted),
    ("accepted_transfers_reach_the_ledger", accepted_an_hour_ago_and_lost),
    ("outbox_is_sent", unsent_for_an_hour),
]


def test_a_clean_ledger_passes_every_rule_through_the_command(world: World) -> None:
    assert failures(world) == {}
    result = run_cli(
        world.settings, "verify", "--json", "--status-lag-s", "0", "--accepted-age-max-s", "0",
        "--outbox-age-max-s", "0",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    names = {i["name"] for i in json.loads(result.stdout)["invariants"]}
    assert {rule for rule, _plant in VIOLATIONS} <= names


@pytest.mark.parametrize(
    ("rule", "plant"), VIOLATIONS, ids=[plant.__name__ for _rule, plant in VIOLATIONS]
)
def test_each_rule_catches_its_planted_violation(
    world: World, rule: str, plant: Callable[[World], str]
) -> None:
    offender = plant(world)
    found = failures(world)
    assert rule in found, found
    assert any(offender in sample for sample in found[rule]), found[rule]


def test_the_command_names_the_rule_and_the_first_offenders_and_fails(world: World) -> None:
    lost = [accepted_an_hour_ago_and_lost(world) for _ in range(8)]
    result = run_cli(world.settings, "verify", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    report = {i["name"]: i for i in json.loads(result.stdout)["invariants"]}
    caught = report["accepted_transfers_reach_the_ledger"]
    assert caught["violations"] == 8
    assert len(caught["samples"]) == 5 and all(s.split()[0] in lost for s in caught["samples"])


def test_the_bounds_allow_for_lag(world: World) -> None:
    """Within their bounds, a tracker behind the ledger, a transfer on its way to the
    poster and an outbox row not yet relayed are no violations."""
    posted_but_shown_accepted(world)
    accepted_an_hour_ago_and_lost(world)
    unsent_for_an_hour(world)
    assert set(failures(world)) == {
        "statuses_show_the_ledger", "accepted_transfers_reach_the_ledger", "outbox_is_sent",
    }  # fmt: skip
    assert failures(world, Bounds(3600, 7200, 7200)) == {}


def test_an_accepted_transfer_in_the_dead_letter_store_is_accounted_for(world: World) -> None:
    poisoned = accepted(world.a, world.b, 100)
    track(world.db, poisoned, "accepted", "1 hour")
    world.db.execute(
        "insert into dead_letters (original_topic, original_partition, original_offset, payload, "
        "error_class, reason) values ('transfers.accepted', 0, 7, %s, 'PoisonMessage', 'test')",
        (b"\xff\x00 not quite " + poisoned.model_dump_json().encode(),),
    )
    assert failures(world) == {}
    # Discarded, it accounts for nothing: the status says accepted, and nothing will post it.
    world.db.execute("update dead_letters set status = 'discarded'")
    assert set(failures(world)) == {"accepted_transfers_reach_the_ledger"}


def test_an_accepted_status_is_aged_from_when_it_was_reached(world: World) -> None:
    """The tracker touches a status row again on every copy of an event; the age that
    counts is the history's, not the row's last update."""
    lost = accepted(world.a, world.b, 100)
    track(world.db, lost, "accepted", "1 hour")
    world.db.execute(
        "update transfer_status set updated_at = now() where transfer_id = %s", (lost.transfer_id,)
    )
    assert set(failures(world)) == {"accepted_transfers_reach_the_ledger"}
