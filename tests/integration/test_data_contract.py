"""The data contract through the real DAG: a nasty mix of input, and the fate of every single row.

Generated files (v1, v2, v3) with injected invalid, duplicate and late rows, a hand-made file with BOM,
CRLF, quoted multi-line Unicode, injection strings and structural damage, and three unreadable files go
through `make once`. Every input row must end stored, dead-lettered with the right reason, or counted as a
duplicate; the per-batch metrics must add up; the quality gate must fail the run only after publishing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from include.contract.versions import V3
from include.storage.deliveries import split_stored_name
from scripts.generator import EventGenerator

pytestmark = pytest.mark.integration

# generator defect -> (dead-letter kind, text the reason must contain)
EXPECTED_REASON = {
    "negative_price": ("rule", "price_in_range"),
    "price_above_max": ("rule", "price_in_range"),
    "zero_quantity": ("rule", "quantity_at_least_one"),
    "non_numeric_price": ("parse", "price 'abc' is not a valid number"),
    "unparseable_event_time": ("parse", "event_time 'not-a-date' is not a valid ISO-8601 timestamp"),
    "unknown_event_type": ("rule", "event_type_known"),
    "purchase_without_user": ("rule", "user_required_for_action"),
    "empty_event_id": ("parse", "event_id is empty"),
    "non_uuid_event_id": ("rule", "event_id_is_uuid"),
    "zero_product_id": ("rule", "product_id_positive"),
    "short_row": ("parse", "wrong number of fields"),
    "extra_field": ("parse", "wrong number of fields"),
    "oversize_field": ("parse", "oversize field"),
    "broken_quote": ("parse", "malformed CSV"),
}
INJECTIONS = ["'); DROP TABLE ecommerce_events; --", '=HYPERLINK("http://evil.example","click")']
EVENT_TIME = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
CITY = 'São Paulo, "Centro"\r\nsegunda linha ✓ 東京'


def nasty_file(landing) -> dict[int, tuple[str, str | None]]:
    """A v3 file with BOM and CRLF; returns line -> (expected fate, event_id or reason fragment)."""
    def row(**changes):
        values = {"event_id": str(uuid.uuid4()), "user_id": "42", "session_id": "s", "event_type": "purchase",
                  "product_id": "7", "category": "books", "price": "12.50", "quantity": "2",
                  "user_segment": "vip", "event_time": EVENT_TIME, "device_type": "mobile",
                  "browser": "app", "geo_country": "BR", "geo_city": "Recife", "referrer": "direct",
                  "campaign_id": ""}
        values.update(changes)
        return values

    good_city, inject_a, inject_b = row(geo_city=CITY), row(campaign_id=INJECTIONS[0]), row(geo_city=INJECTIONS[1])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(V3.columns)
    for values in (good_city, inject_a, inject_b):
        writer.writerow([values[c] for c in V3.columns])
    text = "\ufeff" + buffer.getvalue()
    # line 2 holds a two-line record, so the next records start on lines 4 and 5
    text += "short,row,only\r\n"                                             # line 6
    text += ",".join([row()[c] for c in V3.columns] + ["extra"]) + "\r\n"    # line 7
    text += ",".join(row(geo_city="x" * 5000)[c] for c in V3.columns) + "\r\n"  # line 8
    (landing / "nasty.csv").write_bytes(text.encode("utf-8"))
    return {
        2: ("stored", good_city["event_id"]), 4: ("stored", inject_a["event_id"]), 5: ("stored", inject_b["event_id"]),
        6: ("dead", "wrong number of fields: expected 16, found 3"),
        7: ("dead", "wrong number of fields: expected 16, found 17"),
        8: ("dead", "oversize field"),
    }


def test_every_row_of_a_nasty_mix_gets_exactly_one_clear_fate(pipeline):
    pipeline.reset()
    landing = pipeline.landing_dir
    generator = EventGenerator(21, invalid_ratio=0.08, duplicate_ratio=0.05, late_ratio=0.05, structural_ratio=0.03)
    generated = []  # (file name, line, tag, event_id)
    for version in ("v1", "v2", "v3", "v3"):
        rows = generator.generate_batch(250, version)
        path = generator.write_batch(rows, version, landing)
        for index, (values, tag) in enumerate(zip(rows, generator.last_report.tags)):
            generated.append((path.name, index + 2, tag, values["event_id"]))
    nasty = nasty_file(landing)
    (landing / "unknown_version.csv").write_text("id,when,what\n1,2,3\n")
    (landing / "latin1.csv").write_bytes(V3.header.encode() + b"\n" + "ç".encode("latin-1") + b"\n")
    empty = landing / "empty.csv"
    empty.write_bytes(b"")
    os.utime(empty, (time.time() - 120, time.time() - 120))  # older than the grace period for writers

    done = pipeline.once()
    output = done.stdout + done.stderr
    # more than 5% invalid: the quality gate fails the run, after the rows were published
    assert done.returncode == 1, output[-4000:]
    assert "Data quality breach: validity rate" in output

    stored = {(f.rsplit("/", 1)[-1], line): (event_id, late) for f, line, event_id, late in pipeline.query(
        "SELECT source_file, source_line, event_id, is_late_arrival FROM ecommerce_events")}
    dead = {(f.rsplit("/", 1)[-1], line): (kind, reason, raw) for f, line, kind, reason, raw in pipeline.query(
        "SELECT source_file, source_line, error_kind, validation_errors, raw_data FROM dead_letter_events")}

    copies: dict[str, list[tuple]] = {}
    for name, line, tag, event_id in generated:
        key = (name, line)
        if tag in ("valid", "late", "duplicate"):
            copies.setdefault(event_id, []).append((key, tag))
            assert key not in dead, (key, tag)
        else:
            kind, fragment = EXPECTED_REASON[tag.split(":", 1)[1]]
            assert key in dead and key not in stored, (key, tag)
            assert dead[key][0] == kind and fragment in dead[key][1], (tag, dead[key])
    duplicates = 0
    for event_id, lines in copies.items():
        # one copy of each event is stored (the first occurrence), the others are counted as duplicates
        kept = [(key, tag) for key, tag in lines if key in stored]
        assert len(kept) == 1, (event_id, lines)
        key, tag = kept[0]
        assert stored[key] == (event_id, tag == "late" or any(t == "late" for _, t in lines))
        duplicates += len(lines) - 1
    assert duplicates == sum(1 for *_, tag, _ in generated if tag == "duplicate")
    for line, (fate, detail) in nasty.items():
        key = ("nasty.csv", line)
        if fate == "stored":
            assert stored.get(key, [None])[0] == detail, dead.get(key)
        else:
            assert detail in dead[key][1], dead.get(key)
    # values and raw lines survive byte-exact, injection strings are just data
    assert pipeline.scalar("SELECT geo_city FROM ecommerce_events WHERE source_line = 2 AND source_file LIKE '%%nasty.csv'") == CITY
    assert {pipeline.scalar("SELECT campaign_id FROM ecommerce_events WHERE source_line = 4 AND source_file LIKE '%%nasty.csv'"),
            pipeline.scalar("SELECT geo_city FROM ecommerce_events WHERE source_line = 5 AND source_file LIKE '%%nasty.csv'")} == set(INJECTIONS)
    assert dead[("nasty.csv", 6)][2] == "short,row,only"
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") > 0  # the table survived the injection

    # the counts add up, per batch and overall, and the quarantined files are recorded with reasons
    rows_in = len(generated) + len(nasty)
    total, valid, invalid, dups, quarantined = pipeline.query(
        "SELECT sum(total_records), sum(valid_records), sum(invalid_records), sum(duplicate_records),"
        " sum(quarantined_files) FROM data_quality_metrics")[0]
    assert total == rows_in == len(stored) + len(dead) + duplicates
    assert (valid, invalid, dups) == (len(stored), len(dead), duplicates)
    assert pipeline.scalar("SELECT count(*) FROM data_quality_metrics "
                           "WHERE total_records <> valid_records + invalid_records + duplicate_records") == 0
    reasons = {f.rsplit("/", 1)[-1]: r for f, r in pipeline.query("SELECT source_file, reason FROM quarantined_files")}
    # Spark's scan skips zero-byte files: the DAG quarantines those before Spark runs, outside any batch
    assert quarantined == 2 and set(reasons) == {"unknown_version.csv", "latin1.csv", "empty.csv"}
    assert pipeline.scalar("SELECT sum(quarantined_files) FROM v_data_quality_dashboard") == 3
    assert "lacks the required column" in reasons["unknown_version.csv"]
    assert "not UTF-8" in reasons["latin1.csv"] and "empty file" in reasons["empty.csv"]
    assert sorted(split_stored_name(p.name)[1] for p in (pipeline.root / "quarantine").rglob("*.csv")) == sorted(reasons)
    assert list(landing.glob("*.csv")) == []
    # nothing is left behind in staging, and the Data Docs show this run
    assert pipeline.scalar("SELECT count(*) FROM staging_events") == 0
    assert pipeline.scalar("SELECT count(*) FROM pipeline_batch_ledger WHERE published_at IS NULL") == 0
    run_id = pipeline.scalar("SELECT DISTINCT airflow_run_id FROM ecommerce_events")
    docs = pipeline.settings.great_expectations_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert run_id in docs.read_text()


def test_an_evolving_feed_is_read_by_column_name_and_every_file_gets_a_fate(pipeline):
    """A producer reorders, renames the case of, trims, extends and compresses its export: every file whose
    required columns are there is stored (unknown columns rescued, once alerted); the rest is quarantined
    with a reason, and so is a file that is not a feed file at all."""
    pipeline.reset()
    landing = pipeline.landing_dir
    generator = EventGenerator(5, invalid_ratio=0.0, duplicate_ratio=0.0, late_ratio=0.0, structural_ratio=0.0)
    columns = list(V3.columns)

    def export(name: str, header: list[str], rows: list[dict], extra: dict[str, list[str]] | None = None) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        for i, row in enumerate(rows):
            values = {c.strip().lower(): row.get(c.strip().lower()) for c in header}
            writer.writerow([(extra or {}).get(c, [None] * len(rows))[i] if c in (extra or {}) else values[c.strip().lower()]
                             for c in header])
        return buffer.getvalue().encode()

    stored_ids: dict[str, set[str]] = {}

    def land(name: str, header: list[str], n: int = 8, extra=None, version="v3", compress=None) -> None:
        rows = generator.generate_batch(n, version)
        content = export(name, header, rows, extra)
        (landing / name).write_bytes(compress(content) if compress else content)
        stored_ids[name] = {r["event_id"] for r in rows}

    import bz2
    import gzip

    land("reordered.csv", list(reversed(columns)))
    land("shouting.csv", [f"  {c.upper()} " for c in V3.columns[:10]], version="v2")  # v2's columns, loudly
    no_marketing = [c for c in columns if c not in ("referrer", "campaign_id")]
    land("no_marketing.csv", no_marketing)
    land("coupons.csv", [*columns[:5], "coupon_code", *columns[5:]], extra={"coupon_code": [f"X{i}" for i in range(8)]})
    land("events.csv.gz", columns, compress=gzip.compress)
    land("events.csv.bz2", columns, compress=bz2.compress)
    (landing / "no_price.csv").write_text(",".join(c for c in columns if c != "price") + "\nx\n")
    (landing / "twice.csv").write_text(",".join([*columns, "EVENT_ID"]) + "\n")
    (landing / "broken.csv.gz").write_bytes(b"this is not gzip")
    notes = landing / "notes.txt"
    notes.write_text("meeting notes, dropped here by mistake\n")
    os.utime(notes, (time.time() - 120, time.time() - 120))  # older than the grace period for writers

    done = pipeline.once()
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    by_file = {}
    for source, event_id, version, rescued, referrer in pipeline.query(
            "SELECT source_file, event_id, schema_version, rescued_data, referrer FROM ecommerce_events"):
        by_file.setdefault(source.rsplit("/", 1)[-1], []).append((event_id, version, rescued, referrer))
    for name, ids in stored_ids.items():
        assert {row[0] for row in by_file[name]} == ids, name  # every row of every readable file, nothing else
    assert {row[1] for row in by_file["shouting.csv"]} == {"v2"}
    assert {row[1] for row in by_file["no_marketing.csv"]} == {"v3"}
    assert {row[3] for row in by_file["no_marketing.csv"]} == {None}
    assert sorted(row[2]["coupon_code"] for row in by_file["coupons.csv"]) == [f"X{i}" for i in range(8)]
    assert {row[2] is None for name in stored_ids if name != "coupons.csv" for row in by_file[name]} == {True}
    # the stored values are the same wherever the columns stood
    reordered = pipeline.query("SELECT price, user_id, event_type FROM ecommerce_events "
                               "WHERE source_file LIKE '%%reordered.csv' ORDER BY source_line")
    assert all(price is not None and event_type for price, _, event_type in reordered)

    reasons = {f.rsplit("/", 1)[-1]: r for f, r in pipeline.query("SELECT source_file, reason FROM quarantined_files")}
    assert set(reasons) == {"no_price.csv", "twice.csv", "broken.csv.gz", "notes.txt"}, reasons
    assert "lacks the required column(s) price" in reasons["no_price.csv"]
    assert "names column 'EVENT_ID' twice" in reasons["twice.csv"]
    assert "not a readable gzip file" in reasons["broken.csv.gz"]
    assert "not a feed file" in reasons["notes.txt"]
    assert [p.name for p in landing.iterdir()] == [".claimed"]  # nothing left waiting unseen
    assert list((landing / ".claimed").iterdir()) == []
    archived = sorted(split_stored_name(p.name)[1] for p in pipeline.archive_dir.rglob("*") if p.is_file())
    assert archived == sorted(stored_ids)

    # one WARNING for the new column (with file and a sample), one for the stray file
    alerts = [json.loads(line) for line in pipeline.settings.alert_file.read_text().splitlines()]
    new_column = [a for a in alerts if a["key"] == "new_column:coupon_code"]
    assert len(new_column) == 1 and new_column[0]["level"] == "WARNING"
    assert "coupons.csv" in new_column[0]["details"][0] and "'X" in new_column[0]["details"][0]
    # (the files the ingest quarantined are named by the next run's detect_work)
    [quarantined] = [a for a in alerts if a["key"].startswith("quarantined_file:")]
    assert quarantined["level"] == "WARNING" and "'notes.txt'" in quarantined["title"]
    assert "not a feed file" in quarantined["details"][0]
    assert pipeline.scalar("SELECT first_file FROM feed_columns_seen WHERE column_name = 'coupon_code'").endswith("coupons.csv")
