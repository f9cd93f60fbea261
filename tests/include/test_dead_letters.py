"""The dead-letter page's filters and its CSV export, which must never hand a spreadsheet a formula."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import pytest

from include.airflow import dead_letters
from include.airflow.dead_letters import DeadLetterFilter, FilterError, csv_lines, csv_safe

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", [
    "=HYPERLINK(\"http://evil.example\",\"click\")", "+1+1", "-2+3", "@SUM(A1:A2)", "\tTAB", "\rCR", "\nLF",
    "  =1+1", "\u00a0=1+1", "\uff1d1+1",
])
def test_text_a_spreadsheet_would_evaluate_gets_a_leading_apostrophe(value):
    assert csv_safe(value) == "'" + value


@pytest.mark.parametrize("value", ["6f1c…", "São Paulo, \"Centro\"", "price 'abc' is not a valid number", "a=b", ""])
def test_ordinary_text_is_left_alone(value):
    assert csv_safe(value) == value


def test_numbers_dates_lists_and_nulls_keep_their_meaning():
    assert csv_safe(-5) == -5 and csv_safe(12.5) == 12.5
    assert csv_safe(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05+00:00"
    assert csv_safe(["price_in_range", "quantity_at_least_one"]) == "price_in_range;quantity_at_least_one"
    assert csv_safe(["-x"]) == "'-x"
    assert csv_safe(None) == ""


def test_an_exported_file_read_back_has_no_cell_starting_with_a_formula_character():
    rows = [(1, '=HYPERLINK("http://evil.example","click")', "raw,line\nwith break", -3),
            (2, "@cmd", "+SUM(1)", "ok")]
    text = "".join(csv_lines(rows, header=("id", "event_id", "raw_data", "n")))
    records = list(csv.reader(io.StringIO(text)))
    assert records[0] == ["id", "event_id", "raw_data", "n"]
    assert records[1] == ["1", "'=HYPERLINK(\"http://evil.example\",\"click\")", "raw,line\nwith break", "-3"]
    assert records[2] == ["2", "'@cmd", "'+SUM(1)", "ok"]
    text_cells = [cell for record in records[1:] for cell in record[1:3]]
    assert not any(cell.lstrip().startswith(("=", "+", "-", "@", "\t", "\r")) for cell in text_cells)


def test_a_large_export_is_produced_in_chunks():
    chunks = list(csv_lines(((i, "x" * 100) for i in range(2000)), header=("id", "v")))
    assert len(chunks) > 1
    assert len(list(csv.reader(io.StringIO("".join(chunks))))) == 2001


def test_filters_come_from_query_parameters_and_go_back_unchanged():
    params = {"rule": "price_in_range", "reason": "wrong number", "from": "2026-01-31", "to": "2026-01-31T15:30",
              "file": "events_", "run_id": "manual__2026", "limit": "50"}
    dead_filter = DeadLetterFilter.from_params(params)
    assert dead_filter.failed_from == datetime(2026, 1, 31, tzinfo=UTC)
    assert dead_filter.failed_to == datetime(2026, 1, 31, 15, 30, tzinfo=UTC)
    again = DeadLetterFilter.from_params(dead_filter.query_params())
    assert again == dead_filter
    where, values = dead_filter.where()
    assert "%s" in where and "price_in_range" in values and "price_in_range" not in where  # bound, never inlined


def test_the_parse_pseudo_rule_selects_rows_that_could_not_be_typed():
    where, values = DeadLetterFilter(rule=dead_letters.PARSE).where()
    assert "error_kind = 'parse'" in where and values == []


@pytest.mark.parametrize("params, message", [
    ({"limit": "many"}, "limit"), ({"limit": "0"}, "limit"), ({"limit": "100000"}, "limit"),
    ({"from": "yesterday"}, "from"), ({"from": "2026-02-01", "to": "2026-01-01"}, "after"),
])
def test_unusable_filters_are_refused_with_a_message_naming_them(params, message):
    with pytest.raises(FilterError, match=message):
        DeadLetterFilter.from_params(params)
