"""Every Kafka topic name bankflow uses, in one place.

Names here are logical; the settings' ``topic_prefix`` is put in front of them
(``Settings.topic``) so that tests and tenants can share one cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

TRANSFERS_REQUESTED: Final = "transfers.requested"
TRANSFERS_ACCEPTED: Final = "transfers.accepted"
TRANSFERS_REJECTED: Final = "transfers.rejected"
TRANSFERS_REVIEW: Final = "transfers.review"
TRANSFERS_POSTED: Final = "transfers.posted"
TRANSFERS_FAILED: Final = "transfers.failed"
TRANSFERS_DLQ: Final = "transfers.dlq"
PAYMENTS_OUTBOUND: Final = "payments.outbound"
PAYMENTS_INBOUND: Final = "payments.inbound"

#: Retry tiers in order, with the delay each one waits before sending a message
#: back to its origin. Three tiers cover a broker blip (seconds), a database
#: failover (a minute) and a longer outage (ten minutes) before the dead-letter topic.
RETRY_TIERS_S: Final[dict[str, int]] = {"5s": 5, "1m": 60, "10m": 600}


#: A tier's name becomes part of a topic name: short, lower case, no dots.
TIER_NAME_PATTERN: Final = r"^[a-z0-9]{1,16}$"


def retry_topic(tier: str) -> str:
    """The retry topic of one tier, e.g. ``transfers.retry.5s``."""
    if not re.fullmatch(TIER_NAME_PATTERN, tier):
        raise ValueError(f"retry tier name {tier!r} must match {TIER_NAME_PATTERN}")
    return f"transfers.retry.{tier}"


def all_topics(tiers: Iterable[str] = RETRY_TIERS_S) -> tuple[str, ...]:
    """Every topic ``bankflow topics create`` makes, in the order of the flow.

    The retry tiers are configurable (``Settings.retry_tiers``), hence a function.
    """
    return (
        TRANSFERS_REQUESTED,
        TRANSFERS_ACCEPTED,
        TRANSFERS_REJECTED,
        TRANSFERS_REVIEW,
        TRANSFERS_POSTED,
        TRANSFERS_FAILED,
        *(retry_topic(tier) for tier in tiers),
        TRANSFERS_DLQ,
        PAYMENTS_OUTBOUND,
        PAYMENTS_INBOUND,
    )


#: The topics with the default retry tiers.
ALL_TOPICS: Final[tuple[str, ...]] = all_topics()
