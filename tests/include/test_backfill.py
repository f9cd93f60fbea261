"""How a backfill run's data interval maps to a window of claim times, and which runs are backfill runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from include.publish.backfill import is_backfill_run
from include.storage.deliveries import window

pytestmark = pytest.mark.unit


def test_an_empty_data_interval_means_the_minute_before_the_logical_date():
    end = datetime(2026, 11, 24, 2, 3, tzinfo=UTC)
    assert window(end, end) == (end - timedelta(minutes=1), end)
    assert window(end - timedelta(minutes=5), end) == (end - timedelta(minutes=5), end)


def test_backfill_runs_are_recognised_by_run_type():
    from airflow.utils.types import DagRunType

    assert is_backfill_run(DagRunType.BACKFILL_JOB) and is_backfill_run("backfill")
    assert not is_backfill_run(DagRunType.SCHEDULED) and not is_backfill_run("manual")
