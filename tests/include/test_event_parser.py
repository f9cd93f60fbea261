"""Structural parsing of landed files: every record keeps its raw text and line, damage gets a reason.

Every input here is also read by the fast path (``tests.fixtures.parser_paths.both_paths``), which must
agree with the careful parser or decline the file."""

from __future__ import annotations

import bz2
import gzip

import pytest

from include.contract.parser import MAX_FIELD_CHARS, FileRejected, parse_file
from include.contract.versions import V1, V2, V3
from tests.fixtures.parser_paths import both_paths

pytestmark = pytest.mark.unit

V2_ROW = "e1,7,s1,purchase,42,books,19.99,2,premium,2026-01-01T10:00:00"


def parse(text: str | bytes, name: str = "/landing/f.csv") -> list[dict]:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return both_paths(data, name)


@pytest.mark.parametrize("version", [V1, V2, V3])
def test_each_version_is_detected_from_its_header_and_upcast(version):
    values = {
        "event_id": "e1", "user_id": "7", "session_id": "s1", "event_type": "view", "product_id": "42",
        "category": "books", "price": "19.99", "quantity": "3", "user_segment": "vip",
        "event_time": "2026-01-01T10:00:00", "device_type": "mobile", "browser": "safari", "geo_country": "DE",
        "geo_city": "Köln", "referrer": "google", "campaign_id": "CMP-1",
    }
    line = ",".join(values[c] for c in version.columns)
    [record] = parse(f"{version.header}\n{line}\n")
    assert record["schema_version"] == version.name
    assert record["parse_errors"] is None
    for column in values:
        if column in version.columns:
            assert record[column] == values[column]
        elif column == "quantity":
            assert record[column] == "1"  # documented default: a v1 event is one item
        else:
            assert record[column] is None


def test_bom_and_crlf_are_normal_input():
    [record] = parse(f"\ufeff{V2.header}\r\n{V2_ROW}\r\n")
    assert record["schema_version"] == "v2"
    assert record["event_id"] == "e1"
    assert record["event_time"] == "2026-01-01T10:00:00"
    assert record["raw_data"] == V2_ROW


def test_quoted_commas_quotes_newlines_and_unicode_round_trip_exactly():
    city = 'São Paulo, "Centro"\r\nLinha 2 ✓ 東京'
    quoted = '"' + city.replace('"', '""') + '"'
    fields = ["e1", "7", "s1", "view", "42", "books", "1.00", "1", "new", "2026-01-01T10:00:00",
              "mobile", "app", "BR", quoted, "direct", ""]
    line = ",".join(fields)
    [record] = parse(f"{V3.header}\n{line}\n")
    assert record["parse_errors"] is None
    assert record["geo_city"] == city
    assert record["raw_data"] == line
    assert record["source_line"] == 2


def test_line_numbers_count_physical_lines_and_skip_blank_lines():
    text = f'{V2.header}\n{V2_ROW}\n\n"e2",7,s1,view,42,books,"multi\nline",1,new,t\n{V2_ROW.replace("e1", "e3")}\n'
    records = parse(text)
    assert [r["source_line"] for r in records] == [2, 4, 6]
    assert [r["event_id"] for r in records] == ["e1", "e2", "e3"]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("e1,7,s1,view,42,books,1.00,1,new", "expected 10, found 9"),
        ("e1,7,s1,view,42,books,1.00,1,new,2026-01-01T10:00:00,extra", "expected 10, found 11"),
        ('e1,7,s1,view,42,"bo"oks,1.00,1,new,t', "malformed CSV"),
    ],
)
def test_ragged_and_broken_rows_carry_a_reason_and_their_raw_line(line, reason):
    [record] = parse(f"{V2.header}\n{line}\n")
    assert reason in record["parse_errors"]
    assert record["raw_data"] == line
    assert record["event_id"] is None  # values of a damaged row are never guessed


def test_nul_byte_is_dead_lettered_and_shown_escaped():
    [record] = parse(f"{V2.header}\ne1,7,s1,view,42,bo\x00oks,1.00,1,new,t\n")
    assert "NUL byte" in record["parse_errors"]
    assert record["raw_data"] == "e1,7,s1,view,42,bo\\x00oks,1.00,1,new,t"


def test_a_broken_row_does_not_take_its_neighbours_with_it():
    text = f"{V2.header}\n{V2_ROW}\ne9,short\n{V2_ROW.replace('e1', 'e2')}\n"
    records = parse(text)
    assert [(r["event_id"], r["parse_errors"] is None) for r in records] == [("e1", True), (None, False), ("e2", True)]


def test_unterminated_quote_at_end_of_file_is_dead_lettered_not_swallowed():
    text = f'{V2.header}\n{V2_ROW}\ne2,7,s1,view,42,"books,1.00,1,new,t\n'
    records = parse(text)
    assert records[0]["parse_errors"] is None
    assert "malformed CSV" in records[1]["parse_errors"]
    assert records[1]["raw_data"].startswith("e2,7,s1,view,42,")


def test_oversize_field_is_rejected_with_its_size():
    big = "x" * (MAX_FIELD_CHARS + 1)
    [record] = parse(f"{V2.header}\ne1,7,s1,view,42,{big},1.00,1,new,t\n")
    assert f"{MAX_FIELD_CHARS + 1} characters" in record["parse_errors"]


@pytest.mark.parametrize("payload", ["'); DROP TABLE ecommerce_events; --", "=HYPERLINK(\"http://x\",\"y\")", "@SUM(1+1)"])
def test_injection_strings_are_data_kept_verbatim(payload):
    quoted = '"' + payload.replace('"', '""') + '"'
    [record] = parse(f"{V2.header}\ne1,7,s1,view,42,{quoted},1.00,1,new,t\n")
    assert record["category"] == payload


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"id,when,what\n1,2,3\n", "lacks the required column.s. event_id, user_id, event_type"),
        (V2.header.encode() + b"\n" + "e1,7,s1,view,42,b\u00f6oks,1,1,new,t\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_unreadable_files_are_rejected_whole(content, reason):
    with pytest.raises(FileRejected, match=reason):
        parse(content)


def test_header_only_file_has_no_records():
    assert parse(f"{V1.header}\n") == []


def test_columns_are_matched_by_name_whatever_their_order_case_or_blanks():
    [plain] = parse(f"{V2.header}\n{V2_ROW}\n")
    columns, values = V2.header.split(","), V2_ROW.split(",")
    order = [9, 3, 0, 8, 1, 7, 2, 6, 4, 5]
    header = ",".join(f" {columns[i].upper()}  " for i in order)
    [shuffled] = parse(f"\ufeff{header}\r\n{','.join(values[i] for i in order)}\r\n")
    assert {k: v for k, v in shuffled.items() if k != "raw_data"} == {k: v for k, v in plain.items() if k != "raw_data"}
    assert shuffled["schema_version"] == "v2"


def test_the_version_is_the_newest_the_known_columns_identify_and_missing_optional_columns_are_null():
    header = [c for c in V3.columns if c not in ("referrer", "campaign_id", "quantity")]
    values = {c: f"{c}-x" for c in header} | {"price": "9.5", "user_id": "1", "product_id": "2"}
    [record] = parse(",".join(header) + "\n" + ",".join(values[c] for c in header) + "\n")
    assert record["schema_version"] == "v3" and record["parse_errors"] is None
    assert record["referrer"] is None and record["campaign_id"] is None
    assert record["quantity"] == "1"  # the upcast default, whichever version the file is
    assert record["device_type"] == "device_type-x"


def test_unknown_columns_are_rescued_per_row_as_json():
    import json

    text = f"{V1.header},Coupon Code ,\ne1,7,view,42,1.50,2026-01-01T10:00:00,X10,\ne2,7,view,42,1.50,2026-01-01T10:00:00,,z\n"
    first, second = parse(text)
    assert json.loads(first["rescued_data"]) == {"Coupon Code": "X10", "_column_8": None}
    assert json.loads(second["rescued_data"]) == {"Coupon Code": None, "_column_8": "z"}
    assert first["schema_version"] == "v1" and first["event_id"] == "e1" and first["price"] == "1.50"
    [plain] = parse(f"{V1.header}\ne1,7,view,42,1.50,2026-01-01T10:00:00\n")
    assert plain["rescued_data"] is None


@pytest.mark.parametrize(("header", "reason"), [
    ("event_id,user_id,event_type,product_id,event_time", "lacks the required column(s) price"),
    ("event_id,user_id,event_type,product_id,price,event_time,Event_ID", "names column 'Event_ID' twice"),
])
def test_a_header_the_contract_cannot_read_rejects_the_file_with_a_reason(header, reason):
    with pytest.raises(FileRejected) as rejected:
        parse(f"{header}\n1,2,3,4,5,6,7\n")
    assert reason in str(rejected.value)


@pytest.mark.parametrize(("suffix", "module"), [(".csv.gz", "gzip"), (".csv.bz2", "bz2")])
def test_compressed_files_are_read_like_plain_ones_and_damaged_ones_rejected(suffix, module):
    import importlib

    text = f"{V2.header}\n{V2_ROW}\n"
    packed = importlib.import_module(module).compress(text.encode())
    assert parse(packed, f"/landing/f{suffix}") == [dict(r, source_file=f"/landing/f{suffix}") for r in parse(text)]
    with pytest.raises(FileRejected, match=f"not a readable {'gzip' if module == 'gzip' else 'bzip2'} file"):
        parse(packed[: len(packed) // 2], f"/landing/f{suffix}")


@pytest.mark.parametrize("suffix, compress", [(".csv.gz", gzip.compress), (".csv.bz2", bz2.compress)])
def test_a_compressed_file_is_expanded_only_up_to_its_bound(suffix, compress):
    """A file that expands past MAX_DECOMPRESSED_BYTES is refused as soon as it passes it (a bomb costs the
    bound, not its full size); members written one after another are all read; a cut stream is refused."""
    from include.contract.parser import decompress

    body = b"event_id,user_id,event_type,product_id,price,event_time\n" + b"0" * 5_000_000
    assert decompress(compress(body) + compress(b"more"), "f" + suffix, 6_000_000) == body + b"more"
    with pytest.raises(FileRejected, match="expands past MAX_DECOMPRESSED_BYTES=1000000 bytes"):
        list(parse_file(compress(body), "/l/bomb" + suffix, max_decompressed_bytes=1_000_000))
    with pytest.raises(FileRejected, match="ends before its end marker"):
        decompress(compress(body)[:-20], "f" + suffix, 6_000_000)


def test_an_oversized_record_keeps_a_bounded_prefix_its_length_and_a_hash():
    import hashlib

    from include.contract.parser import MAX_RAW_CHARS

    line = "e1,1,view,1," + "x" * 100_000 + ",2026-01-01T00:00:00"
    [record] = parse_file(f"{V1.header}\n{line}\n".encode(), "/l/a.csv")
    assert "oversize field" in record["parse_errors"]
    assert record["raw_data"].startswith(line[:MAX_RAW_CHARS])
    assert record["raw_data"].endswith(f"[cut: {len(line)} characters in all, "
                                       f"sha256 {hashlib.sha256(line.encode()).hexdigest()}]")
    assert len(record["raw_data"]) < MAX_RAW_CHARS + 150
