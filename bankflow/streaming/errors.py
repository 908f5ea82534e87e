"""Which failures the runtime waits out, and which it contains.

Only *declared* transient dependency failures are retried in place: a dependency
that did not answer (PostgreSQL's connection classes 08, 53 and 57, a Redis
connection or timeout, a Kafka error librdkafka calls retriable, or a
``BankflowError`` whose class says ``transient``). Everything else raised while a
message is processed is about that message: bad bytes, a wrong shape, a value
PostgreSQL refuses (SQLSTATE classes 22 and 23), a bug that one input triggers.
Such a message is poison and goes to the dead-letter store; the partition flows on.
"""

from __future__ import annotations

import psycopg
import redis
from confluent_kafka import KafkaError, KafkaException

from bankflow.errors import BankflowError

#: SQLSTATE classes that say the server or the connection is in trouble, not the data:
#: 08 connection exception, 53 insufficient resources, 57 operator intervention
#: (admin shutdown, cannot connect now), 40 transaction rollback (serialization
#: failure, deadlock: the same statement may succeed when tried again).
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "40"})


class StageHalted(BankflowError):
    """A stage stopped on purpose: going on would dead-letter good messages.

    The runtime records the halt (it survives a restart), stops consuming, shows it in
    readiness, metrics and ``bankflow status``, and resumes only when an operator
    clears it (``bankflow halt clear STAGE``).
    """


class PositionMoved(BankflowError):
    """The stored position of a partition is not where this instance started its batch
    (another instance owns the partition now): the runtime reloads the stored positions
    and reads again from there, without counting an outage."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a dependency's failure that the same work may outlive."""
    if isinstance(error, BankflowError):
        return error.transient
    if isinstance(error, psycopg.Error):
        sqlstate = error.sqlstate or ""
        if sqlstate:
            return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES
        # No SQLSTATE: the client lost the connection (OperationalError) or used a
        # closed one (InterfaceError); no data was judged.
        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)
    if isinstance(error, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
        return True
    if isinstance(error, KafkaException) and error.args:
        inner = error.args[0]
        return isinstance(inner, KafkaError) and bool(inner.retriable())
    return isinstance(error, ConnectionError | TimeoutError)
