"""Kafka header names bankflow sets, in one place."""

from __future__ import annotations

from typing import Final

EVENT_ID: Final = "bankflow-event-id"
CORRELATION_ID: Final = "bankflow-correlation-id"
#: W3C Trace Context's header, under the name its Kafka binding uses; the API puts the
#: request's trace on what it produces and the stages pass it on with the other headers.
TRACEPARENT: Final = "traceparent"

# On retried and dead-lettered messages (see docs/architecture.md).
ORIGINAL_TOPIC: Final = "bankflow-original-topic"
ORIGINAL_PARTITION: Final = "bankflow-original-partition"
ORIGINAL_OFFSET: Final = "bankflow-original-offset"
ATTEMPT: Final = "bankflow-attempt"
ERROR_CLASS: Final = "bankflow-error-class"
ERROR_MESSAGE: Final = "bankflow-error-message"
FIRST_FAILURE_AT: Final = "bankflow-first-failure-at"
NOT_BEFORE: Final = "bankflow-not-before"

# On messages that authorise moving money (``bankflow.signing``): which key signed the
# message, and the HMAC-SHA256 over its topic, key, value and bankflow headers.
KEY_ID: Final = "bankflow-key-id"
SIGNATURE: Final = "bankflow-signature"
