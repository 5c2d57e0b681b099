"""Matching settlement rows to ledger entries: nearest day, each entry once, exact amounts."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from projections.reconcile import (
    LedgerEntry,
    SettlementFileError,
    SettlementRow,
    match,
    parse_settlement,
)

DAY = date(2026, 3, 10)


def entry(day: date, amount_minor: int, reference=None, key=None, currency="EUR") -> LedgerEntry:
    return LedgerEntry(day, "SHOP1", reference, key, currency, amount_minor, "sale", ("1",),
                       datetime(day.year, day.month, day.day, 12, tzinfo=UTC))  # fmt: skip


def row(line: int, day: date, reference: str, amount: str) -> SettlementRow:
    return SettlementRow(line, day, "SHOP1", reference, amount)


def test_a_key_used_on_two_days_matches_the_entry_nearest_the_rows_date():
    earlier, later = entry(date(2026, 3, 9), 100, key="k"), entry(DAY, 200, key="k")
    result = match([row(2, DAY, "k", "2.00")], [earlier, later], DAY, DAY, ("SHOP1",))
    assert [m.entry for m in result.matched] == [later]
    # The earlier entry is outside the file's days, so it is not missing from the file.
    assert (result.missing_from_file, result.ok) == ([], True)


def test_an_entry_named_twice_matches_only_the_first_row():
    sale = entry(DAY, 500, reference="T-1", key="idem-1")
    rows = [row(2, DAY, "T-1", "5.00"), row(3, DAY, "idem-1", "5.00")]
    result = match(rows, [sale], DAY, DAY, ("SHOP1",))
    assert [m.row.line for m in result.matched] == [2]
    assert [r.line for r in result.missing_from_ledger] == [3]


def test_amounts_are_read_in_the_entrys_currency_exactly():
    yen = entry(DAY, 1500, reference="T-1", currency="JPY")
    result = match([row(2, DAY, "T-1", "1500")], [yen], DAY, DAY, ("SHOP1",))
    assert (result.ok, result.matched[0].amount_minor) == (True, 1500)
    with pytest.raises(SettlementFileError, match=r"^line 2: amount 1500.5 in JPY"):
        match([row(2, DAY, "T-1", "1500.5")], [entry(DAY, 1, "T-1", currency="JPY")], DAY,
              DAY, ("SHOP1",))  # fmt: skip


def test_the_header_may_order_columns_freely_and_carry_others():
    text = "Amount,Reference,extra,Location,Date\r\n12.50,T-7,x,SHOP2,2026-03-10\r\n"
    assert parse_settlement(text.encode("utf-8-sig")) == [
        SettlementRow(2, DAY, "SHOP2", "T-7", "12.50")
    ]


def test_a_quoted_field_spanning_lines_keeps_line_numbers_right():
    text = 'date,location,reference,amount,note\n2026-03-10,SHOP1,T-1,1.00,"two\nlines"\n' \
           "2026-03-10,SHOP1,T-2,x,\n"  # fmt: skip
    with pytest.raises(SettlementFileError, match=r"^line 4: amount 'x'"):
        parse_settlement(text.encode())


def test_a_file_that_is_not_utf8_is_refused_at_its_line():
    with pytest.raises(SettlementFileError, match=r"^line 2: the file is not UTF-8"):
        parse_settlement(b"date,location,reference,amount\n2026-03-10,SH\xffP,T-1,1.00\n")
