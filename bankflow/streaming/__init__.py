"""The one runtime every consume-process-commit stage runs on.

A stage module declares what it reads, how it turns a batch of messages into
effects and which commit strategy makes those effects and the consumer's position
move together; this package owns everything else: polling, batch bounds,
rebalances, fencing and rebuilding the transactional producer, backoff on declared
transient failures, poison containment (bisecting a batch to the message that
fails and dead-lettering it with its reason), persistent halts, signals and
shutdown, metrics and readiness. See ``docs/architecture.md`` ("The stage runtime").
"""

from bankflow.streaming.errors import StageHalted, is_transient
from bankflow.streaming.runner import StageRunner
from bankflow.streaming.service import serve
from bankflow.streaming.stage import AfterEffect, Batch, InDatabase, KafkaTransaction, Output, Stage

__all__ = [
    "AfterEffect",
    "Batch",
    "InDatabase",
    "KafkaTransaction",
    "Output",
    "Stage",
    "StageHalted",
    "StageRunner",
    "is_transient",
    "serve",
]
