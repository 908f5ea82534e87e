"""Only what the validator or a review approval signed is booked (``bankflow.signing``).

Whoever can write to ``transfers.accepted`` can give a message the right shape; the
poster must tell it from one the validator decided. These tests forge the message an
attacker would want booked (the bank's cash account paying a customer a million) in
each way a signature can be wrong, and check that nothing moves, that each is a dead
letter as ``Unauthenticated``, and that the alert's metric counts them.
"""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from bankflow.bootstrap import kafka_producer
from bankflow.ledger.accounts import find_internal_account
from bankflow.settings import Settings
from bankflow.signing import Keyring, SigningKey
from schemas import headers as h
from schemas.topics import TRANSFERS_ACCEPTED, TRANSFERS_DLQ
from schemas.transfers import AcceptedTransfer, TransferSource
from tests.ledger_support import EUR, drain_in_process, open_test_accounts, signed

pytestmark = pytest.mark.timeout(180)

METRIC = "bankflow_stage_unauthenticated_messages_total"


def _million(cash: uuid.UUID, customer: uuid.UUID) -> AcceptedTransfer:
    return AcceptedTransfer(
        transfer_id=uuid.uuid4(),
        source=TransferSource.API,
        debit_account_id=cash,
        credit_account_id=customer,
        amount_minor=100_000_000,
        currency=EUR,
        requested_by="teller:nobody",
    )


def test_forged_accepted_transfers_are_not_booked_but_dead_lettered_as_unauthenticated(
    settings: Settings, topics, db
) -> None:
    topics()
    (customer,) = open_test_accounts(db, settings, 1)
    found = find_internal_account(db, "cash", EUR)
    assert found is not None
    cash = found.id
    forged = [_million(cash, customer) for _ in range(5)]
    pairs = [(str(t.debit_account_id).encode(), t.model_dump_json().encode()) for t in forged]
    stranger = Keyring(
        {"validator-stolen": SigningKey("validator-stolen", "validator", b"s" * 32)},
        {"validator": "validator-stolen"},
    )
    mine = Keyring.load(settings.signing_keys_path)
    impostor = SigningKey(mine.active["validator"], "validator", b"x" * 32)
    wrong_secret = Keyring({impostor.key_id: impostor}, {"validator": impostor.key_id})
    (key0, value0), (key1, value1), (key2, value2), (key3, value3), (key4, value4) = pairs
    messages = [
        (key0, value0, []),  # no signature at all
        (key1, value1, stranger.sign("validator", TRANSFERS_ACCEPTED, key1, value1, [])),
        (key2, value2, wrong_secret.sign("validator", TRANSFERS_ACCEPTED, key2, value2, [])),
        # A genuine signature of other bytes: the amount changed after signing.
        (key3, value3, signed(settings, TRANSFERS_ACCEPTED, key3, value3.replace(b"1", b"2"))),
        # Signed for another topic (a retry tier), replayed onto this one.
        (key4, value4, signed(settings, "transfers.retry.5s", key4, value4)),
    ]
    genuine = _million(cash, customer).model_copy(update={"amount_minor": 500})
    genuine_pair = (str(cash).encode(), genuine.model_dump_json().encode())
    by_review = signed(settings, TRANSFERS_ACCEPTED, *genuine_pair, signer="review")
    before = REGISTRY.get_sample_value(METRIC, {"stage": "poster", "topic": TRANSFERS_ACCEPTED})

    producer = kafka_producer(settings)
    topic = settings.topic(TRANSFERS_ACCEPTED)
    for key, value, headers in [*messages, (*genuine_pair, by_review)]:
        producer.produce(topic, key=key, value=value, headers=headers, partition=0)
    assert producer.flush(30) == 0

    stats = drain_in_process(settings, expected_transfers=1)
    assert stats.posted == 1 and stats.dead_letters == len(messages)
    booked = db.execute("select id from transfers").fetchall()
    assert booked == [(genuine.transfer_id,)]  # the review's approval, and nothing forged
    balance = db.execute("select balance_minor from accounts where id = %s", (customer,)).fetchone()
    assert balance == (500,)

    rows = db.execute(
        "select payload, headers from outbox where topic = %s order by id",
        (settings.topic(TRANSFERS_DLQ),),
    ).fetchall()
    assert [bytes(r[0]) for r in rows] == [value for _, value, _ in messages]
    reasons = [r[1][h.ERROR_MESSAGE] for r in rows]
    assert {r[1][h.ERROR_CLASS] for r in rows} == {"Unauthenticated"}
    assert "no signature" in reasons[0]
    assert "unknown key id 'validator-stolen'" in reasons[1]
    assert "does not match" in reasons[2] and "does not match" in reasons[3]
    assert "does not match" in reasons[4]
    after = REGISTRY.get_sample_value(METRIC, {"stage": "poster", "topic": TRANSFERS_ACCEPTED})
    assert (after or 0) - (before or 0) == len(messages)


def test_a_key_added_to_the_file_is_learnt_without_a_restart(
    settings: Settings, topics, db, tmp_path
) -> None:
    """Rotation: a signer's new key verifies at a running poster as soon as it is in the
    key file; the old key still verifies what was signed before."""
    import json

    from bankflow.signing import write_new_key

    keys = tmp_path / "signing.json"
    keys.write_text(settings.signing_keys_path.read_text())
    settings = settings.model_copy(update={"signing_keys_file": keys})
    topics()
    (a,) = open_test_accounts(db, settings, 1)
    found = find_internal_account(db, "cash", EUR)
    assert found is not None
    cash = found.id

    def transfer(amount: int) -> tuple[bytes, bytes]:
        t = _million(cash, a).model_copy(update={"amount_minor": amount})
        return str(cash).encode(), t.model_dump_json().encode()

    old = transfer(100)
    old_headers = signed(settings, TRANSFERS_ACCEPTED, *old)
    # The poster reads the key file as it is now; then the validator's key rotates.
    from consumers.poster import build

    runner = build(settings)
    write_new_key(keys, "validator")
    new = transfer(200)
    new_headers = signed(settings, TRANSFERS_ACCEPTED, *new)
    assert dict(new_headers)[h.KEY_ID] != dict(old_headers)[h.KEY_ID]
    assert len(json.loads(keys.read_text())["keys"]) == 3  # validator old and new, review
    producer = kafka_producer(settings)
    topic = settings.topic(TRANSFERS_ACCEPTED)
    for (key, value), headers in ((old, old_headers), (new, new_headers)):
        producer.produce(topic, key=key, value=value, headers=headers, partition=0)
    assert producer.flush(30) == 0
    runner.subscribe()
    try:
        for _ in range(100):
            runner.step()
            if runner.stage.stats.posted + runner.stage.stats.dead_letters >= 2:
                break
    finally:
        runner.close()
    assert runner.stage.stats.posted == 2 and runner.stage.stats.dead_letters == 0
