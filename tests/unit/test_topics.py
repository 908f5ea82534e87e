import re

import pytest

from schemas.topics import ALL_TOPICS, RETRY_TIERS_S, TRANSFERS_DLQ, retry_topic

# Kafka's own rule for topic names.
KAFKA_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


def test_every_topic_is_named_once_and_is_a_legal_kafka_name() -> None:
    assert len(set(ALL_TOPICS)) == len(ALL_TOPICS)
    assert all(KAFKA_TOPIC_NAME.match(name) for name in ALL_TOPICS)


def test_each_retry_tier_has_a_topic_and_the_dead_letter_topic_exists() -> None:
    for tier in RETRY_TIERS_S:
        assert retry_topic(tier) in ALL_TOPICS
    assert TRANSFERS_DLQ in ALL_TOPICS


def test_retry_tiers_wait_longer_each_time() -> None:
    delays = list(RETRY_TIERS_S.values())
    assert delays == sorted(delays)
    assert len(set(delays)) == len(delays)


def test_a_retry_tier_name_that_cannot_be_part_of_a_topic_name_is_refused() -> None:
    with pytest.raises(ValueError, match="retry tier name 'two hours'"):
        retry_topic("two hours")


def test_settings_refuse_retry_tiers_that_do_not_wait_longer_each_time() -> None:
    from bankflow.settings import Settings

    with pytest.raises(ValueError, match="positive and increasing"):
        Settings(retry_tiers={"a": 10, "b": 5})
    with pytest.raises(ValueError, match="1 to 5 tiers"):
        Settings(retry_tiers={})
    custom = Settings(retry_tiers={"fast": 1, "slow": 3})
    assert "transfers.retry.fast" in custom.all_topics()
    assert "transfers.retry.5s" not in custom.all_topics()


def test_event_ids_are_stable_distinct_and_version_5() -> None:
    import uuid

    from schemas.transfers import event_id_for

    transfer = uuid.UUID("11111111-2222-3333-4444-555555555555")
    posted = event_id_for(transfer, "transfer.posted")
    assert posted == event_id_for(transfer, "transfer.posted")
    assert posted != event_id_for(transfer, "transfer.failed")
    assert posted != event_id_for(uuid.UUID(int=transfer.int + 1), "transfer.posted")
    assert posted.version == 5


def test_transfer_ids_for_many_keys_equal_the_one_at_a_time_derivation() -> None:
    from schemas.transfers import TransferIds, transfer_id_for

    ids = TransferIds("file:abc")
    for key in ("line:1", "line:2", "pmtinf:P1/e2e:E1", "ünïcode"):
        assert ids(key) == transfer_id_for("file:abc", key)
