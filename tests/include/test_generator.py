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

from include import generator as gen_module
from include.generator import (
    INVALID_KINDS,
    EventGenerator,
    invalid_kinds_for,
    main,
    parse_version_mix,
    write_batch_file,
    write_events_csv,
)
from include.schema_registry import (
    BROWSERS,
    CATEGORIES,
    DEVICE_TYPES,
    EVENT_TYPES,
    LOGIN_REQUIRED_EVENT_TYPES,
    REFERRERS,
    USER_SEGMENTS,
    VERSIONS,
    detect_version,
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
    assert detect_version(header) is version
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
    caplog.set_level("INFO", logger="include.generator")
    args = ["--output-dir", str(tmp_path), "--batches", "2", "--rate-seconds", "0", "--batch-size", "10",
            "--seed", "1"]
    assert main(args) == 0
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2 and all(FILE_NAME.match(f.name) for f in files)
    for path in files:
        header, data = read_csv(path)
        assert len(data) == 10 and detect_version(header)
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
        [sys.executable, "-m", "include.generator", "--output-dir", str(tmp_path), "--rate-seconds", "0.2",
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
