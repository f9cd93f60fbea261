"""The tables as Airflow assets (include/airflow/assets.py): which events a writer emits, what the downstream DAG
reads. Which tasks declare them: tests/dags/test_dag_integrity.py.

The events are added to the Task SDK's own outlet-event accessors (what a running task gets as
``outlet_events``). That a real scheduler runs ``ecommerce_hourly_revenue`` because rows were published is
shown in tests/integration/test_make_run.py; the events a real run records, in test_ecommerce_events_dag.py.
"""

from __future__ import annotations

import pytest

from include.airflow.assets import (
    DEAD_LETTERS_ASSET,
    EVENTS_ASSET,
    PUBLISHED,
    announce_publish,
    announce_replay,
    hours_touched,
    table_uri,
)
from include.results import PublishSummary

pytestmark = pytest.mark.unit


def emitted(announce, *args) -> dict[str, dict]:
    """asset name -> extra of the events that ``announce`` adds through the alias, as a task would."""
    from airflow.sdk.execution_time.context import OutletEventAccessors

    outlet_events = OutletEventAccessors()
    announced = announce(outlet_events, *args)
    events = {event.dest_asset_key.name: event.extra for event in outlet_events[PUBLISHED].asset_alias_events}
    assert sorted(announced) == sorted(events)
    return events


def test_the_uris_name_the_connection_and_stay_the_same_wherever_the_database_is(monkeypatch):
    """An asset is its name and URI: a URI read from POSTGRES_* changed when the database moved, and every task
    declaring the asset then failed (AirflowInactiveAssetInInletOrOutletException). Parsed again with another
    database in the environment, the assets are the same."""
    import importlib

    from airflow.sdk.definitions.asset import _sanitize_uri

    import include.airflow.assets as assets

    for asset, table in ((EVENTS_ASSET, "ecommerce_events"), (DEAD_LETTERS_ASSET, "dead_letter_events")):
        assert asset.uri == f"x-airflow-connection://ecommerce_postgres/public/{table}" and asset.name == table
        assert _sanitize_uri(asset.uri) == asset.uri  # Airflow keeps it as it is
    before = (assets.EVENTS_ASSET, assets.DEAD_LETTERS_ASSET)
    for name, value in (("POSTGRES_HOST", "db.elsewhere"), ("POSTGRES_PORT", "6432"), ("POSTGRES_DB", "shop"),
                        ("AIRFLOW_CONN_ECOMMERCE_POSTGRES", "postgres://u:p@db.elsewhere:6432/shop")):
        monkeypatch.setenv(name, value)
    try:
        moved = importlib.reload(assets)
        assert before == (moved.EVENTS_ASSET, moved.DEAD_LETTERS_ASSET)
    finally:
        monkeypatch.undo()
        importlib.reload(assets)
    assert table_uri("hourly_revenue") == "x-airflow-connection://ecommerce_postgres/public/hourly_revenue"


def every_minute(**counts) -> PublishSummary:
    return PublishSummary(path="every_minute", batches=[{"batch_id": "q/1"}, {"batch_id": "q/2"}], **counts)


def test_a_publish_announces_the_tables_it_changed_with_its_counts():
    span = ["2026-12-01T09:58:00+00:00", "2026-12-01T10:01:00+00:00"]
    both = emitted(announce_publish, every_minute(total=100, valid=90, invalid=8, duplicates=2, validity_rate=91.84,
                                                  event_time_span=span))
    assert both == {name: {"path": "every_minute", "rows": 100, "valid": 90, "dead_lettered": 8, "duplicates": 2,
                           "validity_rate": 91.84, "batch_ids": ["q/1", "q/2"], "event_time_span": span}
                    for name in ("ecommerce_events", "dead_letter_events")}
    assert emitted(announce_publish, every_minute(total=5, valid=5, event_time_span=span)).keys() == {"ecommerce_events"}
    assert emitted(announce_publish, every_minute(total=3, invalid=3)).keys() == {"dead_letter_events"}


def test_a_publish_that_wrote_nothing_announces_nothing():
    assert emitted(announce_publish, every_minute(total=40, duplicates=40)) == {}  # every row already stored
    assert emitted(announce_publish, PublishSummary(path="every_minute")) == {}   # every file quarantined


def test_a_backfill_announces_rows_that_moved_either_way_and_nothing_for_an_identical_rerun():
    span = ["2026-11-30T10:00:05+00:00", "2026-11-30T10:00:50+00:00"]
    moved_out = PublishSummary(path="backfill", total=10, valid=9, invalid=1, event_time_span=span,
                               moves={"moved_to_dead_letter": 1, "dead_letters_added": 1})
    assert emitted(announce_publish, moved_out).keys() == {"ecommerce_events", "dead_letter_events"}
    assert emitted(announce_publish, moved_out)["ecommerce_events"]["moves"] == moved_out.moves
    rerun = PublishSummary(path="backfill", total=10, valid=9, invalid=1,
                           moves={"moved_to_dead_letter": 0, "dead_letters_added": 0, "dead_letters_updated": 0})
    assert emitted(announce_publish, rerun) == {}


def replay_counts(**changes) -> dict:
    return {"dry_run": False, "candidates": 4, "published": 0, "still_failing": 0, "resolved_already_stored": 0,
            "event_time_span": None, **changes}


def test_a_replay_announces_what_it_changed_and_a_dry_run_nothing():
    span = ["2026-11-30T10:00:05+00:00", "2026-11-30T10:00:50+00:00"]
    applied = emitted(announce_replay, replay_counts(published=3, still_failing=1, event_time_span=span))
    assert applied.keys() == {"ecommerce_events", "dead_letter_events"}
    assert applied["ecommerce_events"] == {"path": "replay", "rows": 4, "valid": 3, "dead_lettered": 1,
                                           "resolved": 0, "event_time_span": span}
    assert emitted(announce_replay, replay_counts(still_failing=4)).keys() == {"dead_letter_events"}
    assert emitted(announce_replay, replay_counts(published=3, dry_run=True, event_time_span=span)) == {}


def test_the_rollup_refreshes_the_whole_utc_hours_the_events_touched():
    spans = [["2026-12-01T09:58:00+00:00", "2026-12-01T10:01:00+00:00"], None,
             ["2026-12-01T12:30:00+05:30", "2026-12-01T07:59:59.999999+00:00"]]  # 12:30+05:30 is 07:00 UTC
    assert hours_touched(spans) == ("2026-12-01T07:00:00+00:00", "2026-12-01T11:00:00+00:00")
    assert hours_touched([None]) == (None, None)  # nothing named: every hour
