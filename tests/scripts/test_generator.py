"""The event generator: realistic events, one schema version per file, atomic files, honest defect reports."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from include.contract.parser import MAX_FIELD_CHARS, FileRejected, parse_file
from include.contract.versions import (
    BROWSERS,
    CANONICAL_COLUMNS,
    CATEGORIES,
    DEVICE_TYPES,
    EVENT_TYPES,
    LOGIN_REQUIRED_EVENT_TYPES,
    MIGRATION_DEFAULTS,
    REFERRERS,
    USER_SEGMENTS,
    VERSIONS,
    match_header,
)
from scripts import generator as gen_module
from scripts.generator import (
    AWKWARD_CITIES,
    BAD_FILE_KINDS,
    INJECTION_STRINGS,
    INVALID_KINDS,
    STRUCTURAL_KINDS,
    Batch,
    EventGenerator,
    invalid_kinds_for,
    main,
    parse_version_mix,
    write_batch_file,
    write_events_csv,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 29, 10, 30, 0)
MAX_PRICE = 10000.0
FILE_NAME = re.compile(r"^events_\d{8}_\d{6}_[0-9a-f]{6}\.csv$")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def make(seed: int = 1, **kwargs: float) -> EventGenerator:
    return EventGenerator(seed, max_price=MAX_PRICE, clock=lambda: NOW, **kwargs)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


def as_text(row: dict, columns: tuple[str, ...]) -> list[str]:
    return ["" if row.get(c) is None else row[c] for c in columns]


def violations(row: dict) -> set[str]:
    """Independent check of the business rules, naming each broken one with its INVALID_KINDS name."""
    found = set()
    if not row["event_id"]:
        found.add("empty_event_id")
    else:
        try:
            uuid.UUID(row["event_id"])
        except ValueError:
            found.add("non_uuid_event_id")
    if row["event_type"] not in EVENT_TYPES:
        found.add("unknown_event_type")
    if row["event_type"] == "purchase" and not row["user_id"]:
        found.add("purchase_without_user")
    if int(row["product_id"]) <= 0:
        found.add("zero_product_id")
    try:
        price = float(row["price"])
    except ValueError:
        found.add("non_numeric_price")
    else:
        if price < 0:
            found.add("negative_price")
        elif price > MAX_PRICE:
            found.add("price_above_max")
    if row.get("quantity") is not None and int(row["quantity"]) < 1:
        found.add("zero_quantity")
    try:
        datetime.strptime(row["event_time"], "%Y-%m-%dT%H:%M:%S.%f")
    except ValueError:
        found.add("unparseable_event_time")
    return found


@pytest.fixture(scope="module")
def clean_rows() -> list[dict]:
    generator = make(seed=42)
    return [row for _ in range(5) for row in generator.generate_batch(1000, "v3")]


def test_all_event_types_and_segments_appear_and_login_rule_holds(clean_rows):
    types = Counter(row["event_type"] for row in clean_rows)
    assert set(types) == set(EVENT_TYPES)
    assert 0.45 < types["view"] / len(clean_rows) < 0.55
    assert 0.07 < types["purchase"] / len(clean_rows) < 0.13
    assert {row["user_segment"] for row in clean_rows if row["user_id"]} == set(USER_SEGMENTS)
    for row in clean_rows:
        if row["event_type"] in LOGIN_REQUIRED_EVENT_TYPES:
            assert row["user_id"], row
    anonymous = [row for row in clean_rows if not row["user_id"]]
    assert anonymous, "some visitors browse without logging in"
    assert {row["event_type"] for row in anonymous} <= {"view", "search"}
    assert all(row["user_segment"] is None for row in anonymous)


def test_users_products_and_sessions_are_consistent(clean_rows):
    segment_of, product_of, user_of_session = defaultdict(set), defaultdict(set), defaultdict(set)
    for row in clean_rows:
        if row["user_id"]:
            assert 1 <= int(row["user_id"]) <= 5000
            segment_of[row["user_id"]].add(row["user_segment"])
        product_of[row["product_id"]].add((row["category"], row["price"]))
        user_of_session[row["session_id"]].add(row["user_id"])
        uuid.UUID(row["session_id"])
    assert all(len(s) == 1 for s in segment_of.values()), "a user keeps one segment"
    assert all(len(s) == 1 for s in product_of.values()), "a product keeps its category and price"
    assert all(len(s) == 1 for s in user_of_session.values()), "a session belongs to one user"
    events_per_session = Counter(row["session_id"] for row in clean_rows)
    assert sum(n > 1 for n in events_per_session.values()) > len(events_per_session) / 2
    assert len(segment_of) > 500 and len(product_of) > 300


def test_field_values_are_well_formed(clean_rows):
    event_ids = [row["event_id"] for row in clean_rows]
    assert len(set(event_ids)) == len(event_ids)
    assert all(uuid.UUID(e).version == 4 for e in event_ids)
    assert all(violations(row) == set() for row in clean_rows)
    for row in clean_rows:
        assert row["category"] in CATEGORIES
        assert re.fullmatch(r"\d+\.\d{2}", row["price"]) and 0 < float(row["price"]) <= MAX_PRICE
        quantity = int(row["quantity"])
        assert (1 <= quantity <= 5) if row["event_type"] in ("add_to_cart", "remove_from_cart", "purchase") \
            else quantity == 1
        age = NOW - datetime.strptime(row["event_time"], "%Y-%m-%dT%H:%M:%S.%f")
        assert timedelta(0) <= age <= timedelta(seconds=10)
        assert row["device_type"] in DEVICE_TYPES and row["browser"] in BROWSERS
        assert row["referrer"] in REFERRERS
        assert re.fullmatch(r"[A-Z]{2}", row["geo_country"]) and row["geo_city"]
        assert row["campaign_id"] is None or re.fullmatch(r"CMP-\d{4}", row["campaign_id"])
    assert any(row["campaign_id"] for row in clean_rows) and any(not row["campaign_id"] for row in clean_rows)
    assert any(not row["geo_city"].isascii() for row in clean_rows), "cities from several locales"


@pytest.mark.parametrize("version_name", ["v1", "v2", "v3"])
def test_each_version_file_has_its_header_and_parses_back(tmp_path, version_name):
    version = VERSIONS[version_name]
    generator = make(invalid_ratio=0.1, duplicate_ratio=0.1, late_ratio=0.1)
    rows = generator.generate_batch(300, version_name)
    path = generator.write_batch(rows, version_name, tmp_path)
    header, data = read_csv(path)
    assert tuple(header) == version.columns
    assert match_header(header).version is version
    assert all(len(fields) == len(version.columns) for fields in data)
    assert data == [as_text(row, version.columns) for row in rows]
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\r" not in raw
    raw.decode("utf-8")


def test_awkward_text_is_quoted_and_round_trips(tmp_path):
    row = dict(make().generate_batch(1, "v3")[0], geo_city='São Paulo, "Centro"', campaign_id=None)
    path = tmp_path / "events.csv"
    write_events_csv(path, [row], "v3")
    assert '"São Paulo, ""Centro"""' in path.read_text(encoding="utf-8")
    assert read_csv(path)[1] == [as_text(row, VERSIONS["v3"].columns)]


def test_atomic_writes_leave_only_uniquely_named_files(tmp_path):
    generator = make()
    paths = [generator.write_batch(generator.generate_batch(5, "v2"), "v2", tmp_path) for _ in range(30)]
    assert len(set(paths)) == 30, "same second, still distinct names"
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)
    assert all(FILE_NAME.match(p.name) and p.name.startswith("events_20260129_103000_") for p in paths)


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def half_write(path, rows, version):
        Path(path).write_text("event_id,user_id\npartial", encoding="utf-8")
        assert Path(path).name.startswith(".") and Path(path).parent == tmp_path
        raise OSError("disk full")

    monkeypatch.setattr(gen_module, "write_events_csv", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_batch_file(make().generate_batch(3, "v1"), "v1", tmp_path, now=NOW)
    assert os.listdir(tmp_path) == []


def _write_run(seed: int, directory: Path) -> list[bytes]:
    generator = make(seed, invalid_ratio=0.1, duplicate_ratio=0.1, late_ratio=0.1)
    out = []
    for version in ("v3", "v1", "v2"):
        out.append(generator.write_batch(generator.generate_batch(50, version), version, directory).read_bytes())
    return out


def test_same_seed_and_clock_give_identical_files(tmp_path):
    first = _write_run(7, tmp_path / "a")
    assert first == _write_run(7, tmp_path / "b")
    assert first != _write_run(8, tmp_path / "c")


@pytest.mark.parametrize("version_name", ["v1", "v3"])
def test_injected_defects_match_the_report_and_the_file(tmp_path, version_name):
    generator = make(seed=5, invalid_ratio=0.1, duplicate_ratio=0.05, late_ratio=0.05)
    previous_ids: set[str] = set()
    seen_kinds: set[str] = set()
    for _ in range(3):
        rows = generator.generate_batch(200, version_name)
        report = generator.last_report
        assert report.version == version_name and len(report.tags) == len(rows) == 200
        assert sum(report.invalid.values()) == 20 and report.duplicates == 10 and report.late == 10
        assert report.counts()["valid"] == 160
        path = generator.write_batch(rows, version_name, tmp_path)
        _, data = read_csv(path)
        columns = VERSIONS[version_name].columns
        file_rows = [dict(zip(columns, fields)) for fields in data]
        earlier: set[str] = set()
        for row, tag in zip(file_rows, report.tags):
            row = {c: row.get(c) or None for c in columns}
            row.setdefault("quantity", None)
            if tag == "duplicate":
                assert row["event_id"] in earlier | previous_ids
            elif tag.startswith("invalid:"):
                assert violations(row) == {tag.split(":", 1)[1]}
                seen_kinds.add(tag.split(":", 1)[1])
            else:
                assert violations(row) == set()
                assert row["event_id"] not in earlier | previous_ids
                age = NOW - datetime.strptime(row["event_time"], "%Y-%m-%dT%H:%M:%S.%f")
                if tag == "late":
                    assert timedelta(minutes=10) < age <= timedelta(minutes=120)
                else:
                    assert age <= timedelta(seconds=10)
            if row["event_id"]:
                earlier.add(row["event_id"])
        ids = Counter(r["event_id"] for r in file_rows if r["event_id"])
        within = sum(n - 1 for n in ids.values())
        assert within + sum(1 for r in file_rows if r["event_id"] in previous_ids) >= report.duplicates
        previous_ids = set(ids)
    assert seen_kinds == set(invalid_kinds_for(version_name))
    assert ("zero_quantity" in seen_kinds) == (version_name != "v1")
    assert set(invalid_kinds_for("v3")) == set(INVALID_KINDS)


def test_version_mix_is_respected():
    generator = make(seed=3)
    mix = parse_version_mix("v1=0.1,v2=0.3,v3=0.6")
    drawn = Counter(generator.pick_version(mix).name for _ in range(4000))
    for name, share in mix.items():
        assert abs(drawn[name] / 4000 - share) < 0.03
    assert {generator.pick_version({"v2": 1.0}).name for _ in range(50)} == {"v2"}
    for bad in ("v4=1", "v1", "v1=-1", "v1=0,v2=0"):
        with pytest.raises(ValueError):
            parse_version_mix(bad)


def test_cli_writes_the_requested_number_of_files(tmp_path, caplog):
    caplog.set_level("INFO", logger="scripts.generator")
    args = ["--output-dir", str(tmp_path), "--batches", "2", "--rate-seconds", "0", "--batch-size", "10",
            "--seed", "1"]
    assert main(args) == 0
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and all(FILE_NAME.match(f.name) for f in files)
    for path in files:
        header, data = read_csv(path)
        assert len(data) == 10 and match_header(header).version
    logged = [r.getMessage() for r in caplog.records if "Generated batch" in r.getMessage()]
    assert len(logged) == 2 and all(re.search(r"10 events → events_\S+\.csv", m) for m in logged)


def test_cli_defaults_to_the_landing_dir_and_rejects_bad_ratios(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDING_DIR", str(tmp_path / "landing"))
    assert main(["--batches", "1", "--rate-seconds", "0", "--batch-size", "3", "--version-mix", "v1=1"]) == 0
    (only,) = (tmp_path / "landing").iterdir()
    assert read_csv(only)[0] == list(VERSIONS["v1"].columns)
    for bad in (["--invalid-ratio", "1.5"], ["--invalid-ratio", "0.6", "--late-ratio", "0.6"],
                ["--version-mix", "v9=1"]):
        with pytest.raises(SystemExit):
            main(["--output-dir", str(tmp_path), "--batches", "1", *bad])


def test_sigterm_stops_cleanly_after_the_current_file(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.generator", "--output-dir", str(tmp_path), "--rate-seconds", "0.2",
         "--batch-size", "50", "--seed", "9"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("events_*.csv"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    names = os.listdir(tmp_path)
    assert len(names) >= 2 and all(FILE_NAME.match(n) for n in names), names
    assert stdout.count("Generated batch") == len(names)
    assert "SIGTERM" in stdout


# ------------------------------------------------- every kind of bad input, checked with the pipeline's parser
STRUCTURAL_REASON = {
    "short_row": "wrong number of fields",
    "extra_field": "wrong number of fields",
    "oversize_field": "oversize field",
    "broken_quote": "malformed CSV",
}
BAD_FILE_REASON = {"unknown_header": "lacks the required column", "not_utf8": "not UTF-8", "empty": "empty file"}
NEW_TAGS = {"awkward", *(f"invalid:{kind}" for kind in STRUCTURAL_KINDS)}
V3_COLUMNS = VERSIONS["v3"].columns


def parsed(path: Path) -> list[dict]:
    return list(parse_file(path.read_bytes(), path.name))


def expected_record(row: dict, version_name: str) -> dict:
    """What the parser must hand back for a row the generator wrote intact: the file's columns as written
    (empty text is NULL), every other canonical column its default."""
    columns = VERSIONS[version_name].columns
    return {c: (row.get(c) or None) if c in columns else MIGRATION_DEFAULTS[c] for c in CANONICAL_COLUMNS}


def test_structural_ratio_is_separate_and_keeps_the_invalid_counts():
    mixed = make(seed=5, invalid_ratio=0.1, duplicate_ratio=0.05, late_ratio=0.05, structural_ratio=0.1)
    for _ in range(3):
        mixed.generate_batch(200, "v3")
        counts = mixed.last_report.counts()
        assert sum(n for kind, n in mixed.last_report.invalid.items() if kind in INVALID_KINDS) == 20
        assert sum(n for kind, n in mixed.last_report.invalid.items() if kind in STRUCTURAL_KINDS) == 20
        assert counts["duplicate"] == 10 and counts["late"] == 10 and counts["valid"] == 140
    assert set(STRUCTURAL_KINDS).isdisjoint(INVALID_KINDS)
    assert set(invalid_kinds_for("v3")) == set(INVALID_KINDS), "structural kinds only come with their own ratio"


@pytest.mark.parametrize("version_name", ["v1", "v2", "v3"])
def test_structural_rows_are_dead_lettered_by_the_parser(tmp_path, version_name):
    generator = make(seed=11, invalid_ratio=0.05, duplicate_ratio=0.05, late_ratio=0.05, structural_ratio=0.1)
    width = len(VERSIONS[version_name].columns)
    seen: Counter[str] = Counter()
    for _ in range(3):
        rows = generator.generate_batch(40, version_name)
        tags = generator.last_report.tags
        records = parsed(generator.write_batch(rows, version_name, tmp_path))
        assert len(records) == len(rows) == len(tags)
        for row, tag, record in zip(rows, tags, records):
            kind = tag.split(":", 1)[1] if tag.startswith("invalid:") else None
            if kind in STRUCTURAL_KINDS:
                seen[kind] += 1
                assert STRUCTURAL_REASON[kind] in record["parse_errors"], (kind, record["parse_errors"])
                assert record["event_id"] is None and record["raw_data"]
                if kind == "short_row":
                    assert f"expected {width}, found {width - 1}" in record["parse_errors"]
                elif kind == "extra_field":
                    assert f"expected {width}, found {width + 1}" in record["parse_errors"]
                elif kind == "oversize_field":
                    assert max(len(v or "") for v in row.values()) >= 2000 > MAX_FIELD_CHARS
                else:
                    assert re.search(r'(^|,)"\w\w"\w', record["raw_data"]), record["raw_data"]
            else:  # content defects are the typing/rules stage's business, not the parser's
                assert record["parse_errors"] is None and record == dict(
                    expected_record(row, version_name), schema_version=version_name, source_file=record["source_file"],
                    source_line=record["source_line"], raw_data=record["raw_data"], parse_errors=None,
                    rescued_data=None, delivery_id=None)
    assert set(seen) == set(STRUCTURAL_KINDS)
    assert max(seen.values()) - min(seen.values()) <= 1, "structural kinds rotate like the invalid ones"


@pytest.mark.parametrize("bom_crlf_ratio", [0.0, 1.0])
def test_awkward_rows_parse_back_exactly_and_tags_follow_records_not_lines(tmp_path, bom_crlf_ratio):
    generator = make(seed=3, invalid_ratio=0.05, duplicate_ratio=0.05, late_ratio=0.05, structural_ratio=0.05,
                     awkward_ratio=0.2, bom_crlf_ratio=bom_crlf_ratio)
    cities, campaigns = set(), set()
    for _ in range(3):
        rows = generator.generate_batch(60, "v3")
        tags = generator.last_report.tags
        assert generator.last_report.awkward == generator.last_report.counts()["awkward"] == 12
        path = generator.write_batch(rows, "v3", tmp_path)
        records = parsed(path)
        assert len(records) == len(rows) == len(tags)
        line = 2
        for row, tag, record in zip(rows, tags, records):
            assert record["source_line"] == line
            line += 1 + record["raw_data"].count("\n")
            if tag.startswith("invalid:") and tag.split(":", 1)[1] in STRUCTURAL_KINDS:
                continue
            assert record["parse_errors"] is None
            assert {c: record[c] for c in V3_COLUMNS} == expected_record(row, "v3")
            if tag == "awkward":
                assert record["geo_city"] in AWKWARD_CITIES and record["campaign_id"] in INJECTION_STRINGS
                cities.add(record["geo_city"])
                campaigns.add(record["campaign_id"])
        assert line - 1 > len(records) + 1, "multi-line records make lines outnumber records"
        assert read_csv(path)[1][tags.index("awkward")] == as_text(rows[tags.index("awkward")], V3_COLUMNS)
    assert cities == set(AWKWARD_CITIES) and campaigns == set(INJECTION_STRINGS)
    assert all("," in c and '"' in c and "\n" in c for c in AWKWARD_CITIES)
    assert "'); DROP TABLE ecommerce_events; --" in INJECTION_STRINGS
    assert any(s.startswith("=HYPERLINK(") for s in INJECTION_STRINGS)


@pytest.mark.parametrize("version_name", ["v1", "v2"])
def test_versions_without_free_text_get_no_awkward_rows(tmp_path, version_name):
    plain, awkward = make(seed=4, invalid_ratio=0.1), make(seed=4, invalid_ratio=0.1, awkward_ratio=0.5)
    for _ in range(3):
        rows = awkward.generate_batch(50, version_name)
        assert rows == plain.generate_batch(50, version_name)
        assert awkward.last_report == plain.last_report and "awkward" not in awkward.last_report.tags


def test_bom_crlf_files_are_valid_and_parse_like_plain_ones(tmp_path):
    generator = make(seed=6, invalid_ratio=0.1, duplicate_ratio=0.1, bom_crlf_ratio=0.5)
    flags = set()
    for version_name in ("v1", "v2", "v3") * 4:
        rows = generator.generate_batch(30, version_name)
        report = generator.last_report
        path = generator.write_batch(rows, version_name, tmp_path)
        raw = path.read_bytes()
        flags.add(report.bom_crlf)
        if report.bom_crlf:
            assert raw.startswith(b"\xef\xbb\xbf") and raw.count(b"\n") == raw.count(b"\r\n") == len(rows) + 1
            assert raw.endswith(b"\r\n")
        else:
            assert not raw.startswith(b"\xef\xbb\xbf") and b"\r" not in raw
        records = parsed(path)
        assert [record["source_line"] for record in records] == list(range(2, len(rows) + 2))
        assert all(record["parse_errors"] is None for record in records)
        assert [{c: r[c] for c in V3_COLUMNS} for r in records] == [expected_record(r, version_name) for r in rows]
        plain = write_batch_file(rows, version_name, tmp_path / "plain", now=NOW)
        assert raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n") == plain.read_bytes()
    assert flags == {True, False}


def test_bad_files_are_named_like_batches_and_rejected_whole(tmp_path, caplog):
    generator = make(seed=8, duplicate_ratio=0.2, bad_file_ratio=1.0)
    seen = set()
    for version_name in ("v1", "v2", "v3") * 4:
        rows = generator.generate_batch(50, version_name)
        report = generator.last_report
        assert isinstance(rows, Batch) and rows == [] and report.tags == () and report.bad_file in BAD_FILE_KINDS
        path = generator.write_batch(rows, version_name, tmp_path)
        assert FILE_NAME.match(path.name)
        seen.add(report.bad_file)
        raw = path.read_bytes()
        with pytest.raises(FileRejected, match=BAD_FILE_REASON[report.bad_file]):
            parsed(path)
        if report.bad_file == "empty":
            assert raw == b""
        elif report.bad_file == "not_utf8":
            assert raw.startswith(VERSIONS[version_name].header.encode() + b"\n") and b"Besan\xe7on" in raw
        else:
            assert raw.startswith(b"id,when,what\n") and raw.count(b"\n") >= 3
    assert seen == set(BAD_FILE_KINDS)
    assert all(not name.startswith(".") for name in os.listdir(tmp_path))
    # after a bad batch, a normal one may only duplicate its own rows (the bad batch's rows never landed)
    generator.bad_file_ratio = 0.0
    rows = generator.generate_batch(50, "v3")
    ids = [row["event_id"] for row, tag in zip(rows, generator.last_report.tags) if tag != "duplicate"]
    assert generator.last_report.duplicates == 10
    assert all(row["event_id"] in ids for row, tag in zip(rows, generator.last_report.tags) if tag == "duplicate")


def test_failed_bad_file_write_leaves_nothing_behind(tmp_path, monkeypatch):
    generator = make(seed=8, bad_file_ratio=1.0)
    rows = generator.generate_batch(5, "v3")

    def fail(src, dst):
        assert Path(src).name.startswith(".") and Path(src).exists()
        raise OSError("disk full")

    monkeypatch.setattr(gen_module.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        generator.write_batch(rows, "v3", tmp_path)
    assert os.listdir(tmp_path) == []


def test_new_ratios_at_zero_change_nothing(tmp_path):
    explicit = make(7, invalid_ratio=0.1, duplicate_ratio=0.1, late_ratio=0.1, structural_ratio=0.0,
                    awkward_ratio=0.0, bom_crlf_ratio=0.0, bad_file_ratio=0.0)
    files = []
    for version in ("v3", "v1", "v2"):
        path = explicit.write_batch(explicit.generate_batch(50, version), version, tmp_path / "a")
        report = explicit.last_report
        assert report.bad_file is None and not report.bom_crlf and NEW_TAGS.isdisjoint(report.tags)
        assert set(report.counts()) <= {"valid", "late", "duplicate", *(f"invalid:{k}" for k in INVALID_KINDS)}
        files.append(path.read_bytes())
    assert files == _write_run(7, tmp_path / "b")
    assert all(not f.startswith(b"\xef\xbb\xbf") and b"\r" not in f for f in files)


def test_new_ratios_are_validated():
    for bad in ({"structural_ratio": 1.5}, {"awkward_ratio": -0.1}, {"bom_crlf_ratio": 2.0},
                {"bad_file_ratio": -1.0}, {"invalid_ratio": 0.6, "structural_ratio": 0.6},
                {"late_ratio": 0.5, "awkward_ratio": 0.6}):
        with pytest.raises(ValueError):
            make(**bad)
    make(bom_crlf_ratio=1.0, bad_file_ratio=1.0, invalid_ratio=1.0)  # file-level ratios are independent


def test_cli_takes_the_new_ratios(tmp_path, caplog):
    caplog.set_level("INFO", logger="scripts.generator")
    args = ["--output-dir", str(tmp_path), "--batches", "12", "--rate-seconds", "0", "--batch-size", "40",
            "--seed", "2", "--version-mix", "v3=1", "--structural-ratio", "0.1", "--awkward-ratio", "0.1",
            "--bom-crlf-ratio", "0.5", "--bad-file-ratio", "0.3"]
    assert main(args) == 0
    logged = [r.getMessage() for r in caplog.records if "Generated batch" in r.getMessage()]
    files = sorted(tmp_path.iterdir())
    assert len(files) == len(logged) == 12 and all(FILE_NAME.match(f.name) for f in files)
    bad = [m for m in logged if re.search(r"bad file \((unknown_header|not_utf8|empty)\) → events_\S+\.csv", m)]
    assert bad and len(bad) < 12
    assert any("awkward=4" in m for m in logged) and any("BOM+CRLF" in m for m in logged)
    rejected = 0
    for path in files:
        try:
            records = parsed(path)
        except FileRejected:
            rejected += 1
            continue
        assert len(records) == 40
        assert sum(r["parse_errors"] is not None for r in records) == 4
    assert rejected == len(bad)
    for wrong in (["--structural-ratio", "1.5"], ["--awkward-ratio", "-1"], ["--bom-crlf-ratio", "2"],
                  ["--bad-file-ratio", "x"], ["--structural-ratio", "0.6", "--invalid-ratio", "0.6"]):
        with pytest.raises(SystemExit):
            main(["--output-dir", str(tmp_path), "--batches", "1", *wrong])
