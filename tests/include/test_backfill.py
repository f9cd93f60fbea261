"""How a backfill window maps to archived files: by landing time (mtime), through the hour folders."""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from include.publish.backfill import is_backfill_run
from include.settings import Settings
from include.storage.landing import archive_path, archived_files, lineage_name, window

pytestmark = pytest.mark.unit


def archive(settings: Settings, name: str, landed: datetime):
    path = archive_path(settings.archive_dir, settings.landing_dir / name, landed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("event_id\n")
    os.utime(path, (landed.timestamp(), landed.timestamp()))
    return path


def test_a_window_selects_exactly_the_files_that_landed_in_it_across_an_hour_boundary(tmp_path):
    settings = replace(Settings(), archive_dir=tmp_path / "archive", landing_dir=tmp_path / "landing")
    t = datetime(2026, 11, 24, 1, 59, tzinfo=UTC)
    archive(settings, "before.csv", t - timedelta(milliseconds=1))
    archive(settings, "first.csv", t)                                   # start is inclusive
    archive(settings, "next_hour.csv", t + timedelta(seconds=30))       # 02:00:30, another hour folder
    archive(settings, "at_end.csv", t + timedelta(minutes=2))           # end is exclusive
    archive(settings, "later.csv", t + timedelta(hours=3))

    found = archived_files(settings, t, t + timedelta(minutes=2))

    assert [f.source_file for f in found] == [str(settings.landing_dir / "first.csv"),
                                              str(settings.landing_dir / "next_hour.csv")]
    assert [f.landed_at for f in found] == [t, t + timedelta(seconds=30)]


def test_lineage_name_undoes_the_archive_collision_suffix(tmp_path):
    settings = replace(Settings(), landing_dir=tmp_path / "landing")
    assert lineage_name(settings, tmp_path / "a" / "events_1__2.csv") == str(settings.landing_dir / "events_1.csv")
    assert lineage_name(settings, tmp_path / "a" / "events_1.csv") == str(settings.landing_dir / "events_1.csv")


def test_an_empty_data_interval_means_the_minute_before_the_logical_date():
    end = datetime(2026, 11, 24, 2, 3, tzinfo=UTC)
    assert window(end, end) == (end - timedelta(minutes=1), end)
    assert window(end - timedelta(minutes=5), end) == (end - timedelta(minutes=5), end)


def test_backfill_runs_are_recognised_by_run_type():
    from airflow.utils.types import DagRunType

    assert is_backfill_run(DagRunType.BACKFILL_JOB) and is_backfill_run("backfill")
    assert not is_backfill_run(DagRunType.SCHEDULED) and not is_backfill_run("manual")
