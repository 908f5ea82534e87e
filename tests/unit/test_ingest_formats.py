"""Parsing batch files: CSV, JSON Lines and pain.001, with plain bytes."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.ingest.pain001 import check_totals, parse_pain001, read_pain001
from producers.ingest.records import BatchLine, FileRefused, LineError
from producers.ingest.run import to_request
from producers.ingest.tabular import parse_csv, parse_jsonl
from schemas.transfers import TransferIds, TransferRequest

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "iso20022"
HEADER = b"debit_account,credit_account,amount,currency,description,category,tags,reference\n"
#: Account references as files give them: an account id, and IBANs (valid check digits).
PAYER = "0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6f"
PAYEE = "DE89370400440532013000"
SHOP = "DE60999900000000000017"


def refs(template: bytes) -> bytes:
    """``template`` with A and B standing for a payer and a payee reference."""
    return template.replace(b"A,", PAYER.encode() + b",").replace(
        b",B,", b"," + PAYEE.encode() + b","
    )


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
        + refs(b'A,B,12.30,eur,"rent, March",home,a;b,R-1\n')
        + refs(b'A,B,5,EUR,"two\nlines",,,\n')
        + f"{PAYER.upper()},{SHOP.lower()},7.00,EUR,,,,\n".encode()
    )
    lines, errors = parse(data)
    assert errors == []
    assert [(ln.line, ln.debit_account, ln.amount, ln.currency) for ln in lines] == [
        (2, PAYER, "12.30", "EUR"),
        (3, PAYER, "5", "EUR"),
        (5, PAYER, "7.00", "EUR"),
    ]
    # References are handed on in canonical form: ids lower case, IBANs compact, upper case.
    assert [ln.credit_account for ln in lines] == [PAYEE, PAYEE, SHOP]
    assert lines[0].description == "rent, March" and lines[0].tags == ["a", "b"]
    assert lines[1].description == "two\nlines"


def test_bad_csv_lines_are_reported_and_the_good_ones_go_on() -> None:
    data = (
        HEADER
        + refs(b"A,B,1.00,EUR,,,,\n")
        + refs(b"A,,1.00,EUR,,,,\n")  # missing credit account
        + refs(b"A,B,1.00,EUR,,,,,extra\n")  # too many columns
        + refs(b"A,B,1.00,EUR,caf\xe9,,,\n")  # not UTF-8
        + refs(b"A,B,2.00,EUR,,,,\n")
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
        f'{{"debit_account": "{PAYER}", "credit_account": "{PAYEE}", "amount": "3.50",'
        ' "currency": "EUR", "tags": ["x", "y"]}\n'
        "not json\n"
        f'{{"debit_account": "{PAYER}", "credit_account": "{PAYEE}", "amount": "1",'
        ' "currency": "EUR", "colour": "red"}\n'
        f'{{"debit_account": "{PAYER}", "amount": "1", "currency": "EUR"}}\n'
    ).encode()
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


#: Transactions whose creditor is a Swiss postal account (``Othr/Id`` such as
#: 01-39139-1): neither an account id nor an IBAN, so a bad line naming the field.
POSTAL_ACCOUNT_LINES = {"pain.001.001.03.ch.02.xml": [1, 2]}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_sample_transaction_is_found_with_its_exact_amount(name: str) -> None:
    with (SAMPLES / name).open("rb") as stream:
        assert check_totals(stream) == len(EXPECTED[name])
        found = list(read_pain001(stream))
        stream.seek(0)
        items = list(parse_pain001(stream))
    # Every transaction, postal-account creditors too, with its exact amount and currency
    # (shared/samples/README.md); then the edge's reference rule judges each line.
    assert [(ln.amount, ln.currency) for ln in found] == EXPECTED[name]
    assert len(items) == len(EXPECTED[name])
    postal = POSTAL_ACCOUNT_LINES.get(name, [])
    lines = [i for i in items if isinstance(i, BatchLine)]
    errors = [i for i in items if isinstance(i, LineError)]
    assert [(e.line, e.field) for e in errors] == [(n, "credit_account") for n in postal]
    assert all("neither an account id (a UUID) nor a valid IBAN" in e.reason for e in errors)
    good = [amount for n, amount in enumerate(EXPECTED[name], start=1) if n not in postal]
    assert [(ln.amount, ln.currency) for ln in lines] == good
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


#: Account references no format may pass on: a well-formed-looking id that is not a
#: UUID (it once reached PostgreSQL's ::uuid cast), an IBAN with wrong check digits,
#: an id with braces, and plain words.
BAD_REFERENCES = [
    "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz",
    "DE89370400440532013001",
    "{0b7e6c1e-4a0f-4e43-9a57-1a2f3c4d5e6f}",
    "A1",
]


@pytest.mark.parametrize("bad", BAD_REFERENCES)
@pytest.mark.parametrize("field", ["debit_account", "credit_account"])
def test_a_bad_reference_in_csv_or_json_lines_is_a_bad_line_naming_its_field(
    bad: str, field: str
) -> None:
    good = {"debit_account": PAYER, "credit_account": PAYEE, "amount": "1.00", "currency": "EUR"}
    row = {**good, field: bad}
    csv_data = (
        b"debit_account,credit_account,amount,currency\n"
        + ",".join(row.values()).encode() + b"\n"
        + ",".join(good.values()).encode() + b"\n"
    )  # fmt: skip
    jsonl_data = orjson.dumps(row) + b"\n" + orjson.dumps(good) + b"\n"
    for data, parser, bad_line, good_line in (
        (csv_data, parse_csv, 2, 3),
        (jsonl_data, parse_jsonl, 1, 2),
    ):
        lines, errors = parse(data, parser)
        assert [(e.line, e.field) for e in errors] == [(bad_line, field)]
        assert (
            "neither an account id" in errors[0].reason or "not an account id" in errors[0].reason
        )
        assert [ln.line for ln in lines] == [good_line]


def pain001(replace: list[tuple[bytes, bytes]]) -> io.BytesIO:
    data = (SAMPLES / "pain.001.001.03.xml").read_bytes()
    for old, new in replace:
        assert old in data
        data = data.replace(old, new, 1)
    return io.BytesIO(data)


@pytest.mark.parametrize(
    ("old", "field"),
    [
        (b"<IBAN>DE87200500001234567890</IBAN>", "debit_account"),
        (b"<IBAN>DE21500500009876543210</IBAN>", "credit_account"),
    ],
)
def test_a_bad_reference_in_pain001_is_a_bad_transaction_naming_its_field(
    old: bytes, field: str
) -> None:
    stream = pain001([(old, b"<IBAN>zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz</IBAN>")])
    assert check_totals(stream) == 2
    items = list(parse_pain001(stream))
    errors = [i for i in items if isinstance(i, LineError)]
    assert (errors[0].line, errors[0].field) == (1, field)
    # The debtor IBAN is the block's, so a bad one costs every transaction of the block.
    assert len(errors) == (2 if field == "debit_account" else 1)


def test_a_pain001_without_a_group_header_is_refused_with_the_reason() -> None:
    data = (SAMPLES / "pain.001.001.03.xml").read_bytes()
    start, end = data.index(b"<GrpHdr>"), data.index(b"</GrpHdr>") + len(b"</GrpHdr>")
    with pytest.raises(FileRefused, match=r"no group header \(GrpHdr\)"):
        check_totals(io.BytesIO(data[:start] + data[end:]))


HUGE_AMOUNT = "9" * 5_000


def test_a_5000_digit_amount_is_a_bad_line_in_every_format() -> None:
    csv_data = refs(b"A,B," + HUGE_AMOUNT.encode() + b",EUR,,,,\n") + refs(b"A,B,1.00,EUR,,,,\n")
    lines, errors = parse(HEADER + csv_data)
    assert [(e.line, e.field, e.reason) for e in errors] == [
        (2, "amount", "longer than 32 characters")
    ]
    assert [ln.line for ln in lines] == [3]

    record = {"debit_account": PAYER, "credit_account": PAYEE, "currency": "EUR"}
    jsonl = orjson.dumps({**record, "amount": HUGE_AMOUNT}) + b"\n"
    number = f'{{"debit_account": "{PAYER}", "credit_account": "{PAYEE}", "currency": "EUR", '
    jsonl += (number + f'"amount": {HUGE_AMOUNT}}}\n').encode()  # as a JSON number
    lines, errors = parse(jsonl, parse_jsonl)
    assert lines == []
    assert [(e.line, e.field) for e in errors] == [(1, "amount"), (2, "line")]

    stream = pain001([(b">6543.14<", f">{HUGE_AMOUNT}<".encode())])
    # The block's CtrlSum no longer adds up: the file is refused, with a short reason.
    with pytest.raises(FileRefused, match="CtrlSum") as refused:
        check_totals(stream)
    assert len(str(refused.value)) < 200
    items = list(parse_pain001(stream))
    assert [(i.line, i.field) for i in items if isinstance(i, LineError)] == [(1, "amount")]


@pytest.mark.parametrize("ctrl_sum", ["sNaN", "NaN", "Infinity", "1E+999999999", "9" * 5_000])
def test_a_ctrl_sum_that_is_no_plain_decimal_refuses_the_file(ctrl_sum: str) -> None:
    stream = pain001([(b"<CtrlSum>6655.86</CtrlSum>", f"<CtrlSum>{ctrl_sum}</CtrlSum>".encode())])
    with pytest.raises(FileRefused, match=r"CtrlSum of payment information .* not a plain decimal"):
        check_totals(stream)


@pytest.mark.parametrize("amount", ["sNaN", "-Infinity", "1E+999999999", "twelve"])
def test_an_amount_that_is_no_plain_decimal_never_breaks_the_totals(amount: str) -> None:
    stream = pain001([(b">112.72<", f">{amount}<".encode())])
    with pytest.raises(FileRefused, match="CtrlSum of payment information"):
        check_totals(stream)  # counted as 0, so the block's CtrlSum no longer adds up
    assert len(list(parse_pain001(stream))) == 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_csv_and_json_lines_parsers_never_raise_on_any_bytes(data: bytes) -> None:
    for parser, prefix in ((parse_csv, HEADER), (parse_jsonl, b"")):
        for item in parser(io.BytesIO(prefix + data)):
            assert isinstance(item, BatchLine | LineError)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.sampled_from([b"6543.14", b"DE21500500009876543210", b"2"]))
def test_the_pain001_parser_never_raises_but_refuses(text: str, old: bytes) -> None:
    """Any text in place of an amount, an IBAN or a count: lines, errors or a refusal."""
    from xml.sax.saxutils import escape

    stream = pain001([(old, escape(text).encode())])
    try:
        check_totals(stream)
        items = list(parse_pain001(stream))
    except FileRefused:
        return
    assert all(isinstance(item, BatchLine | LineError) for item in items)


def test_the_pain002_report_escapes_what_the_file_and_the_ledger_gave() -> None:
    """Ids and reasons with markup characters come back as the same text, in a
    well-formed pain.002 document."""
    import uuid

    from defusedxml.ElementTree import fromstring

    from producers.ingest.outcomes import PAIN002_NS, pain002

    nasty = """<Tx id="1" & 'two'>]]>"""
    posted, failed = uuid.uuid4(), uuid.uuid4()
    document = pain002(
        f"MSG {nasty}",
        [(f"pmtinf:{nasty}/e2e:{nasty}-1", posted), (f"pmtinf:{nasty}/e2e:{nasty}-2", failed)],
        {posted: ("posted", None), failed: ("failed", f"reason {nasty}")},
    )
    assert document.startswith(b"<?xml ")
    root = fromstring(document)
    ns = {"p": PAIN002_NS}
    assert root.tag == f"{{{PAIN002_NS}}}Document"
    assert root.findtext("p:CstmrPmtStsRpt/p:OrgnlGrpInfAndSts/p:OrgnlMsgId", namespaces=ns) == (
        f"MSG {nasty}"
    )
    assert root.findtext("p:CstmrPmtStsRpt/p:OrgnlGrpInfAndSts/p:GrpSts", namespaces=ns) == "PART"
    blocks = root.findall("p:CstmrPmtStsRpt/p:OrgnlPmtInfAndSts", ns)
    assert [b.findtext("p:OrgnlPmtInfId", namespaces=ns) for b in blocks] == [nasty]
    transactions = [
        (
            t.findtext("p:OrgnlEndToEndId", namespaces=ns),
            t.findtext("p:TxSts", namespaces=ns),
            t.findtext("p:StsRsnInf/p:Rsn/p:Prtry", namespaces=ns),
        )
        for t in blocks[0].findall("p:TxInfAndSts", ns)
    ]
    assert transactions == [
        (f"{nasty}-1", "ACCP", None),
        (f"{nasty}-2", "RJCT", f"reason {nasty}"),
    ]


class _Debits:
    """A ``DebitResolver`` without a database: every line debits one account."""

    def debit(self, line: BatchLine) -> tuple[str, str]:
        return PAYER, "customer:c0ffee00-0000-4000-8000-000000000000"


def batch_amount(amount: str, currency: str) -> int | LineError:
    """What ingest makes of one CSV line's amount: minor units, or the line's error."""
    (line,), _ = parse(refs(HEADER + f"A,B,{amount},{currency},x,,,\n".encode()))
    debits: Any = _Debits()
    made = to_request(line, TransferIds("test"), debits, None, "2026-11-27T12:00:00Z")
    if isinstance(made, LineError):
        return made
    value = orjson.loads(made[2])
    TransferRequest.model_validate(value)  # what ingest writes stays the contract
    assert value["currency"] == currency
    return value["amount_minor"]


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("1.00", "EUR", 100),
        ("12.5", "EUR", 1250),
        ("100", "JPY", 100),
        ("1.000", "KWD", 1000),
        ("1.5", "KWD", 1500),
        ("0.001", "KWD", 1),
    ],
)
def test_a_batch_amount_is_read_with_its_currency_exponent(
    amount: str, currency: str, minor: int
) -> None:
    assert batch_amount(amount, currency) == minor


@pytest.mark.parametrize(
    ("amount", "currency", "field", "message"),
    [
        ("100.00", "JPY", "amount", "JPY has 0 (no minor unit): write a whole number such as 100"),
        ("1.5", "JPY", "amount", "JPY has 0"),
        ("1.0001", "KWD", "amount", "KWD has 3"),
        ("1.000", "EUR", "amount", "EUR has 2"),
        ("1.00", "XYZ", "currency", "'XYZ' is not supported"),
    ],
)
def test_a_batch_amount_the_currency_cannot_hold_is_a_bad_line_naming_its_field(
    amount: str, currency: str, field: str, message: str
) -> None:
    error = batch_amount(amount, currency)
    assert isinstance(error, LineError)
    assert error.field == field and message in error.reason
