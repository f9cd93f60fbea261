"""The landing directory before Spark: which files are feed files, and what happens to the others."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from include.storage.landing import (
    feed_suffix,
    lineage_name,
    move_file,
    quarantine_unreadable_files,
    split_name,
    waiting_files,
)


@pytest.mark.unit
def test_compressed_feed_files_keep_their_whole_suffix_through_a_name_collision(tmp_path):
    assert [feed_suffix(n) for n in ("a.csv", "a.csv.gz", "a.csv.bz2", "a.gz", "a.CSV", "a.txt")] == [
        ".csv", ".csv.gz", ".csv.bz2", None, None, None]
    assert split_name("events.csv.gz") == ("events", ".csv.gz")
    target = tmp_path / "archive" / "events.csv.gz"
    for i in range(2):
        source = tmp_path / "events.csv.gz"
        source.write_bytes(b"%d" % i)
        moved = move_file(source, target)
    assert moved.name == "events__1.csv.gz"


@pytest.mark.unit
def test_the_archive_names_map_back_to_the_landing_name():
    from include.settings import Settings

    settings = Settings.from_env({"LANDING_DIR": "/land"})
    assert lineage_name(settings, Path("/archive/2026-01-01/10/events__3.csv.gz")) == "/land/events.csv.gz"
    assert lineage_name(settings, Path("/archive/2026-01-01/10/events.csv")) == "/land/events.csv"


@pytest.mark.integration
@pytest.mark.db
def test_files_spark_would_never_read_are_quarantined_once_old_enough_and_in_flight_names_left(pipeline, tmp_path):
    settings = replace(pipeline.settings, landing_dir=tmp_path / "landing", quarantine_dir=tmp_path / "quarantine")
    settings.landing_dir.mkdir()
    old = time.time() - 120
    for name, content in [("report.xlsx", b"PK"), ("events.csv", b"h\n1\n"), ("events.csv.gz", b"\x1f\x8b"),
                          ("empty.csv", b""), (".upload.tmp", b"x"), ("_copying.csv", b""), ("fresh.json", b"{}")]:
        path = settings.landing_dir / name
        path.write_bytes(content)
        if name != "fresh.json":
            os.utime(path, (old, old))
    with psycopg.connect(settings.postgres_conninfo, autocommit=True) as conn:
        moved = quarantine_unreadable_files(settings, conn, "run-1")
        recorded = conn.execute("SELECT source_file, reason, airflow_run_id FROM quarantined_files "
                                "WHERE airflow_run_id = 'run-1'").fetchall()
        conn.execute("DELETE FROM quarantined_files WHERE airflow_run_id = 'run-1'")
    assert sorted(p.name for p, _ in moved) == ["empty.csv", "report.xlsx"]
    reasons = {Path(source).name: reason for source, reason, _ in recorded}
    assert reasons["empty.csv"].startswith("empty file") and "not a feed file" in reasons["report.xlsx"]
    assert "*.csv.gz" in reasons["report.xlsx"]
    left = sorted(p.name for p in settings.landing_dir.iterdir())
    assert left == [".upload.tmp", "_copying.csv", "events.csv", "events.csv.gz", "fresh.json"]
    assert [p.name for p in waiting_files(settings.landing_dir)] == ["events.csv", "events.csv.gz"]
