"""Pure parts of accounts: available balance, history cursors and windows, the cache's
entry format, and the API's seen-version memory."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.routes.accounts import SeenVersions
from bankflow.balance_cache import decode, encode
from bankflow.domain.balances import BalanceSnapshot
from bankflow.domain.history import (
    ENTRY_ID_MAX,
    HistoryFilter,
    InvalidCursor,
    InvalidHistoryQuery,
    decode_cursor,
    encode_cursor,
    next_cursor,
    window_size,
)


def snapshot(**changes: object) -> BalanceSnapshot:
    fields: dict[str, object] = {
        "account_id": uuid.uuid4(),
        "customer_id": uuid.uuid4(),
        "account_type": "checking",
        "currency": "EUR",
        "status": "active",
        "posted_minor": 10_000,
        "pending_debit_minor": 2_000,
        "pending_credit_minor": 500,
        "overdraft_limit_minor": 5_000,
        "version": 7,
    }
    fields.update(changes)
    return BalanceSnapshot(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ available


def test_available_is_posted_minus_pending_debits_plus_overdraft() -> None:
    s = snapshot()
    assert s.available_minor == 10_000 - 2_000 + 5_000
    # Pending credits count for nothing until they are posted.
    assert snapshot(pending_credit_minor=99_999).available_minor == s.available_minor
    assert s.pending_minor == 500 - 2_000


@pytest.mark.parametrize("status", ["frozen", "closed"])
def test_an_account_that_cannot_pay_has_nothing_available(status: str) -> None:
    assert snapshot(status=status).available_minor == 0


def test_the_banks_own_accounts_show_nothing_available() -> None:
    assert snapshot(account_type="cash", posted_minor=-5_000_000).available_minor == 0


def test_a_cache_entry_round_trips() -> None:
    s = snapshot()
    assert decode(encode(s)) == s


# ------------------------------------------------------------------ cursors


@given(st.integers(min_value=1, max_value=ENTRY_ID_MAX))
def test_cursors_round_trip(entry_id: int) -> None:
    cursor = encode_cursor(entry_id)
    assert decode_cursor(cursor) == entry_id
    assert str(entry_id) not in cursor  # opaque, not the id in plain sight


@pytest.mark.parametrize(
    "cursor",
    ["", "x", "ZTE6", "ZTE6LTE", "ZTE6MA", "ZTI6MTIz", "e1:12", "ü" * 4, "A" * 65, "%%%%"],
)
def test_a_cursor_we_did_not_hand_out_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)


@given(st.text(max_size=70))
def test_decoding_any_text_gives_an_id_or_invalid_cursor(text: str) -> None:
    try:
        entry_id = decode_cursor(text)
    except InvalidCursor:
        return
    assert 0 < entry_id <= ENTRY_ID_MAX


# ------------------------------------------------------------------ windows and pages


def test_without_filters_the_window_is_the_page_plus_one() -> None:
    assert window_size(100, HistoryFilter(), 5000) == 101
    # A time range narrows the walk itself, so it is not a "selective" filter.
    assert (
        window_size(100, HistoryFilter(posted_from=datetime(2026, 1, 1, tzinfo=UTC)), 5000) == 101
    )
    assert window_size(100, HistoryFilter(tag="rent"), 5000) == 5000
    assert window_size(300, HistoryFilter(direction="in"), 200) == 301


def test_next_cursor_follows_the_last_item_the_window_end_or_ends() -> None:
    # More matches than the page: go on after the page's last item.
    assert decode_cursor(next_cursor([90, 80, 70], 2, 3, 3, 70) or "") == 80
    # A full window with few matches: go on below what was examined.
    assert decode_cursor(next_cursor([90], 2, 5000, 5000, 12) or "") == 12
    assert decode_cursor(next_cursor([], 2, 5000, 5000, 12) or "") == 12
    # The window was not full: the history ends here.
    assert next_cursor([90, 80], 2, 3, 5000, 40) is None
    assert next_cursor([], 2, 0, 3, None) is None


def test_contradicting_filters_are_refused_with_the_field() -> None:
    day = datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(InvalidHistoryQuery) as error:
        HistoryFilter(posted_from=day, posted_to=day)
    assert error.value.field == "to"
    with pytest.raises(InvalidHistoryQuery) as error:
        HistoryFilter(min_amount_minor=10, max_amount_minor=9)
    assert error.value.field == "max_amount"


# ------------------------------------------------------------------ seen versions


def test_seen_versions_only_grow_and_stay_bounded() -> None:
    seen = SeenVersions(size_max=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert seen.get(a) == -1
    seen.observe(a, 5)
    seen.observe(a, 3)  # an older version never lowers what was seen
    assert seen.get(a) == 5
    seen.observe(b, 1)
    seen.observe(a, 6)  # a is now the most recently used
    seen.observe(c, 1)  # b, the least recently used, is forgotten
    assert (seen.get(a), seen.get(b), seen.get(c)) == (6, -1, 1)


def test_seen_versions_count_a_look_as_a_use() -> None:
    seen = SeenVersions(size_max=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    seen.observe(a, 1)
    seen.observe(b, 1)
    assert seen.get(a) == 1  # a is now the most recently used
    seen.observe(c, 1)  # so b is forgotten
    assert (seen.get(a), seen.get(b), seen.get(c)) == (1, -1, 1)
