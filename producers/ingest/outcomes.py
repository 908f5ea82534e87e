"""Following a file's requests to their terminal states, and the pain.002 status report.

``posted`` and ``failed`` come from the ledger, which has the last word; ``rejected``
and ``review`` from their topics, read from the moment the file was ingested, only
for what the ledger does not hold. A request still without a terminal state when
the wait ends is reported as ``pending``.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

from confluent_kafka import TopicPartition
from pydantic import ValidationError

from bankflow.bootstrap import db_connect, kafka_consumer
from bankflow.settings import Settings
from schemas.topics import TRANSFERS_REJECTED, TRANSFERS_REVIEW
from schemas.transfers import RejectedTransfer

#: Ledger look-ups per query, and the pause between rounds of looking.
IDS_PER_QUERY = 10_000
POLL_S = 1.0

Outcome = tuple[str, str | None]  # status, reason


def decision_positions(settings: Settings) -> list[TopicPartition]:
    """Where the rejections and holds end now: taken before a file is ingested, so every
    decision about its transfers lies at or after these offsets.

    Offsets, not a time: a start found by timestamp missed a rejection whose transaction
    was still open when it was looked up (a CI run waited two minutes for one).
    """
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}ingest-wait")
    positions = []
    try:
        for name in (TRANSFERS_REJECTED, TRANSFERS_REVIEW):
            topic = settings.topic(name)
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if metadata is None or metadata.error is not None:
                continue
            for p in metadata.partitions:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=10, cached=False
                )
                positions.append(TopicPartition(topic, p, high))
    finally:
        consumer.close()
    return positions


def follow(
    settings: Settings,
    transfer_ids: Iterable[uuid.UUID],
    positions: list[TopicPartition],
    timeout_s: float,
) -> dict[uuid.UUID, Outcome]:
    """Wait until every id is posted, failed, rejected or in review, or the time is up;
    decisions are read from ``positions`` (``decision_positions`` before the ingest).

    The ledger has the last word: an id it holds is posted or failed whatever a
    decision topic said of it (a copy of the request may have been rejected while the
    first one posted), so every id decided only on a topic is looked up in the ledger
    once more at the end.
    """
    pending = set(transfer_ids)
    outcomes: dict[uuid.UUID, Outcome] = {}
    decided: set[uuid.UUID] = set()  # a decision from a topic, nothing from the ledger yet
    consumer = kafka_consumer(settings, group_id=f"{settings.topic_prefix}ingest-wait")
    consumer.assign(positions)
    deadline = time.monotonic() + timeout_s
    try:
        with db_connect(settings, autocommit=True) as conn:
            while pending and time.monotonic() < deadline:
                for transfer_id in _read_decisions(consumer, settings, pending, outcomes):
                    decided.add(transfer_id)
                for transfer_id, outcome in _ledger(conn, pending):
                    outcomes[transfer_id] = outcome
                    pending.discard(transfer_id)
                if pending:
                    time.sleep(POLL_S)
            for transfer_id, outcome in _ledger(conn, decided):
                outcomes[transfer_id] = outcome
    finally:
        consumer.close()
    for transfer_id in pending:
        outcomes[transfer_id] = ("pending", None)
    return outcomes


def _ledger(conn: Any, transfer_ids: Iterable[uuid.UUID]) -> Iterator[tuple[uuid.UUID, Outcome]]:
    """What the ledger holds of these transfers (status, reason)."""
    ids = list(transfer_ids)
    for start in range(0, len(ids), IDS_PER_QUERY):
        for row in conn.execute(
            "select id, status, reason from transfers where id = any(%s)",
            (ids[start : start + IDS_PER_QUERY],),
        ):
            yield row[0], (row[1], row[2])


def _read_decisions(
    consumer: Any, settings: Settings, pending: set[uuid.UUID], outcomes: dict[uuid.UUID, Outcome]
) -> list[uuid.UUID]:
    """Decisions about pending ids, taken as their outcomes for now; the ids decided."""
    review = settings.topic(TRANSFERS_REVIEW)
    decided: list[uuid.UUID] = []
    for _ in range(100):  # bounded: at most 100 batches per round
        messages = consumer.consume(1000, timeout=0.2)
        if not messages:
            return decided
        for m in messages:
            if m.error() is not None:
                continue
            try:
                decision = RejectedTransfer.model_validate_json(m.value())
            except ValidationError:
                continue
            if decision.transfer_id in pending:
                status = "review" if m.topic() == review else "rejected"
                outcomes[decision.transfer_id] = (status, ",".join(decision.reasons))
                pending.discard(decision.transfer_id)
                decided.append(decision.transfer_id)
    return decided


def summarise(outcomes: dict[uuid.UUID, Outcome]) -> dict[str, Any]:
    statuses = Counter(status for status, _ in outcomes.values())
    reasons = Counter(reason for _, reason in outcomes.values() if reason)
    return {"statuses": dict(statuses), "reasons": dict(reasons)}


#: The namespace of the status report; written as the document's default namespace.
PAIN002_NS = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.03"


def _element(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    """A child of ``parent`` in the pain.002 namespace, with ``text`` if given."""
    child = ET.SubElement(parent, f"{{{PAIN002_NS}}}{tag}")
    if text is not None:
        child.text = text
    return child


def pain002(
    original_message_id: str,
    transfers: list[tuple[str, uuid.UUID]],
    outcomes: dict[uuid.UUID, Outcome],
    refused: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A pain.002.001.03 customer payment status report: accepted or rejected per transaction.

    ACCP for posted, RJCT (with the reason as a proprietary code) for rejected and
    failed, PDNG for review and for anything still pending. ``refused`` are the
    transactions refused at the edge (key, field): RJCT ``invalid_<field>``; nothing of
    them was sent. The document is built as a tree, so every text the file or the
    ledger gave us is escaped by the serializer, never by hand.
    """
    codes = {"posted": "ACCP", "rejected": "RJCT", "failed": "RJCT"}
    rows = [(key, *outcomes.get(transfer_id, ("pending", None))) for key, transfer_id in transfers]
    rows += [(key, "rejected", code) for key, code in refused]
    all_codes = {codes.get(status, "PDNG") for _, status, _ in rows}
    group = all_codes.pop() if len(all_codes) == 1 else "PART"

    document = ET.Element(f"{{{PAIN002_NS}}}Document")
    report = _element(document, "CstmrPmtStsRpt")
    header = _element(report, "GrpHdr")
    _element(header, "MsgId", f"STS-{uuid.uuid4().hex[:16]}")
    _element(header, "CreDtTm", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"))
    original = _element(report, "OrgnlGrpInfAndSts")
    _element(original, "OrgnlMsgId", original_message_id)
    _element(original, "OrgnlMsgNmId", "pain.001")
    _element(original, "GrpSts", group)

    blocks: dict[str, ET.Element] = {}
    for key, status, reason in rows:
        block_id, end_to_end = key.removeprefix("pmtinf:").split("/e2e:", 1)
        block = blocks.get(block_id)
        if block is None:
            block = blocks[block_id] = _element(report, "OrgnlPmtInfAndSts")
            _element(block, "OrgnlPmtInfId", block_id)
        code = codes.get(status, "PDNG")
        transaction = _element(block, "TxInfAndSts")
        _element(transaction, "OrgnlEndToEndId", end_to_end)
        _element(transaction, "TxSts", code)
        if code == "RJCT" and reason:
            _element(_element(_element(transaction, "StsRsnInf"), "Rsn"), "Prtry", reason)
    # default_namespace writes every tag unprefixed under one xmlns, as the standard's
    # samples do, without registering a prefix in ElementTree's process-wide table.
    text: bytes = ET.tostring(
        document, encoding="UTF-8", xml_declaration=True, default_namespace=PAIN002_NS
    )
    return text + b"\n"
