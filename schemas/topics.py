"""Every Kafka topic name bankflow uses, in one place.

Names here are logical; the settings' ``topic_prefix`` is put in front of them
(``Settings.topic``) so that tests and tenants can share one cluster.
"""

from __future__ import annotations

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


def retry_topic(tier: str) -> str:
    """The retry topic of one tier, e.g. ``transfers.retry.5s``."""
    if tier not in RETRY_TIERS_S:
        raise ValueError(f"unknown retry tier {tier!r}; known tiers: {', '.join(RETRY_TIERS_S)}")
    return f"transfers.retry.{tier}"


#: Every topic ``bankflow topics create`` makes, in the order of the flow.
ALL_TOPICS: Final[tuple[str, ...]] = (
    TRANSFERS_REQUESTED,
    TRANSFERS_ACCEPTED,
    TRANSFERS_REJECTED,
    TRANSFERS_REVIEW,
    TRANSFERS_POSTED,
    TRANSFERS_FAILED,
    *(retry_topic(tier) for tier in RETRY_TIERS_S),
    TRANSFERS_DLQ,
    PAYMENTS_OUTBOUND,
    PAYMENTS_INBOUND,
)
