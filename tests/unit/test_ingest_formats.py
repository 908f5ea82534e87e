"""Parsing batch files: CSV, JSON Lines and pain.001, with plain bytes."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest

from producers.ingest.pain001 import check_totals, parse_pain001
from producers.ingest.records import BatchLine, FileRefused, LineError
from producers.ingest.tabular import parse_csv, parse_jsonl

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "iso20022"
HEADER = b"debit_account,credit_account,amount,currency,description,category,tags,reference\n"


def parse(data: bytes, parser=parse_csv) -> tuple[list[BatchLine], list[LineError]]:
    items = list(parser(io.BytesIO(data)))
    return (
        [i for i in items if isinstance(i, BatchLine)],
        [i for i in items if isinstance(i, LineError)],
    )


def test_csv_lines_keep_their_fields_and_physical_line_numbers() -> None:
    data = (
        b"\xef\xbb\xbf"
        + HEADER
        + b'A1,B1,12.30,eur,"rent, March",home,a;b,R-1\n'
        + b'A2,B2,5,EUR,"two\nlines",,,\n'
        + b"A3,B3,7.00,EUR,,,,\n"
    )
    lines, errors = parse(data)
    assert errors == []
    assert [(ln.line, ln.debit_account, ln.amount, ln.currency) for ln in lines] == [
        (2, "A1", "12.30", "EUR"),
        (3, "A2", "5", "EUR"),
        (5, "A3", "7.00", "EUR"),
    ]
    assert lines[0].description == "rent, March" and lines[0].tags == ["a", "b"]
    assert lines[1].description == "two\nlines"


def test_bad_csv_lines_are_reported_and_the_good_ones_go_on() -> None:
    data = (
        HEADER
        + b"A1,B1,1.00,EUR,,,,\n"
        + b"A2,,1.00,EUR,,,,\n"  # missing credit account
        + b"A3,B3,1.00,EUR,,,,,extra\n"  # too many columns
        + b"A4,B4,1.00,EUR,caf\xe9,,,\n"  # not UTF-8
        + b"A5,B5,2.00,EUR,,,,\n"
    )
    lines, errors = parse(data)
    assert [ln.line for ln in lines] == [2, 6]
    assert [(e.line, e.field) for e in errors] == [(3, "credit_account"), (4, "line"), (5, "line")]
    assert "expected 8 columns, got 9" in errors[1].reason
    assert "not UTF-8" in errors[2].reason


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"debit_account,credit_account,amount\n", r"missing \['currency'\]"),
        (b"debit_account,credit_account,amount,currency,colour\n", r"unknown \['colour'\]"),
        (b"A,B,1,EUR\n", r"unknown \['A', 'B', '1', 'EUR'\]"),
    ],
)
def test_a_bad_header_refuses_the_file_and_lists_what_was_expected(header, message) -> None:
    with pytest.raises(FileRefused, match=message):
        parse(header + b"A,B,1,EUR\n")


def test_an_empty_file_is_refused() -> None:
    with pytest.raises(FileRefused, match="empty"):
        parse(b"")


def test_json_lines_use_the_same_fields() -> None:
    data = (
        b'{"debit_account": "A1", "credit_account": "B1", "amount": "3.50", "currency": "EUR",'
        b' "tags": ["x", "y"]}\n'
        b"not json\n"
        b'{"debit_account": "A1", "credit_account": "B1", "amount": "1", "currency": "EUR",'
        b' "colour": "red"}\n'
        b'{"debit_account": "A1", "amount": "1", "currency": "EUR"}\n'
    )
    lines, errors = parse(data, parse_jsonl)
    assert [(ln.line, ln.amount, ln.tags) for ln in lines] == [(1, "3.50", ["x", "y"])]
    assert [(e.line, e.field) for e in errors] == [
        (2, "line"),
        (3, "colour"),
        (4, "credit_account"),
    ]


EXPECTED = {
    "pain.001.001.03.xml": [("6543.14", "EUR"), ("112.72", "EUR")],
    "pain.001.001.09.xml": [("6543.14", "EUR"), ("112.72", "EUR")],
    "pain.001.002.03.xml": [("6543.14", "EUR"), ("112.72", "EUR")],
    "pain.001.003.03.xml": [("6543.14", "EUR"), ("112.72", "EUR")],
    "pain.001.001.03.ch.02.xml": [("3949.75", "CHF"), ("8479.25", "CHF"), ("3421.00", "EUR")],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_sample_transaction_is_found_with_its_exact_amount(name: str) -> None:
    with (SAMPLES / name).open("rb") as stream:
        assert check_totals(stream) == len(EXPECTED[name])
        lines = list(parse_pain001(stream))
    assert [(ln.amount, ln.currency) for ln in lines] == EXPECTED[name]
    assert all(ln.debit_account and ln.credit_account for ln in lines)
    assert len({ln.key for ln in lines}) == len(lines)


def swiss(replace: tuple[bytes, bytes]) -> io.BytesIO:
    data = (SAMPLES / "pain.001.001.03.ch.02.xml").read_bytes()
    assert replace[0] in data
    return io.BytesIO(data.replace(*replace, 1))


def test_the_swiss_group_ctrlsum_is_checked_across_its_blocks_and_currencies() -> None:
    total = Decimal("3949.75") + Decimal("8479.25") + Decimal("3421.00")
    assert str(total) == "15850.00"  # what the sample's group header declares
    with pytest.raises(FileRefused, match=r"CtrlSum of the group header says 15850\.01"):
        check_totals(swiss((b"<CtrlSum>15850.00</CtrlSum>", b"<CtrlSum>15850.01</CtrlSum>")))
    with pytest.raises(FileRefused, match="NbOfTxs of the group header says 4, the file holds 3"):
        check_totals(swiss((b"<NbOfTxs>3</NbOfTxs>", b"<NbOfTxs>4</NbOfTxs>")))


def test_external_entities_are_refused_and_no_file_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<Document><CstmrCdtTrfInitn><GrpHdr><MsgId>&x;</MsgId></GrpHdr>"
        "</CstmrCdtTrfInitn></Document>"
    ).encode()
    with pytest.raises(FileRefused, match="unsafe XML") as refused:
        check_totals(io.BytesIO(xxe))
    assert "TOP-SECRET" not in str(refused.value)


def test_a_billion_laughs_is_refused_before_any_expansion() -> None:
    lol = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + b"".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode()
            for i in range(1, 10)
        )
        + b"]><Document>&lol9;</Document>"
    )
    with pytest.raises(FileRefused, match="unsafe XML"):
        check_totals(io.BytesIO(lol))
