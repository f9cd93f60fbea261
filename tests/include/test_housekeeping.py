"""Housekeeping (include/ops/housekeeping.py): what each step prunes, and that nothing newer, open, unpublished
or still needed is touched. The pipeline tables and Airflow's metadata are the real PostgreSQL databases."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from include.names import PUBLISH_LOCK
from include.ops.housekeeping import (
    HISTORY_RULES,
    MetadataCleanupFailed,
    delete_expired_task_logs,
    prune_airflow_metadata,
    prune_pipeline_tables,
    rotate_component_logs,
    rows_found,
)
from include.settings import ByteSize, Settings
from include.storage.locks import revalidation_lock, xact_lock

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
OLD = NOW - timedelta(days=200)    # older than every default retention
MIDDLE = NOW - timedelta(days=45)  # older than the dead-letter retention (30), newer than the history one (90)
RECENT = NOW - timedelta(days=1)


# --------------------------------------------------------------------------------------- component logs (unit)

@pytest.mark.unit
def test_a_log_above_the_limit_is_copied_then_truncated_and_its_writer_carries_on(tmp_path):
    settings = Settings(pipeline_log_dir=tmp_path, alert_file=tmp_path / "alerts.jsonl",
                        component_log_max_bytes=ByteSize(100), component_log_backups=2)
    scheduler, small = tmp_path / "scheduler.log", tmp_path / "generator.log"
    small.write_bytes(b"x" * 100)  # at the limit: stays
    writer = open(scheduler, "ab", buffering=0)  # noqa: SIM115 - as the supervisor opens it
    try:
        for generation in (b"1", b"2", b"3"):
            writer.write(generation * 150)
            result = rotate_component_logs(settings)
            assert result.deleted == {"scheduler.log": 150}
        writer.write(b"after")
    finally:
        writer.close()
    # the running writer's next line lands at the start of the truncated file, with no hole of zero bytes
    assert scheduler.read_bytes() == b"after"
    assert (tmp_path / "scheduler.log.1").read_bytes() == b"3" * 150
    assert (tmp_path / "scheduler.log.2").read_bytes() == b"2" * 150
    assert not (tmp_path / "scheduler.log.3").exists()  # two copies kept, the oldest dropped
    assert small.read_bytes() == b"x" * 100 and not (tmp_path / "generator.log.1").exists()


@pytest.mark.unit
def test_the_alert_file_is_rotated_too_and_zero_bytes_never_rotates(tmp_path):
    alerts = tmp_path / "elsewhere" / "alerts.jsonl"
    alerts.parent.mkdir()
    alerts.write_text('{"level": "WARNING"}\n' * 10)
    settings = Settings(pipeline_log_dir=tmp_path / "missing", alert_file=alerts,
                        component_log_max_bytes=ByteSize(0), component_log_backups=1)
    assert rotate_component_logs(settings).skipped and alerts.stat().st_size == 210
    rotated = rotate_component_logs(replace(settings, component_log_max_bytes=ByteSize(50)))
    assert rotated.deleted == {"alerts.jsonl": 210}
    assert alerts.stat().st_size == 0 and (alerts.parent / "alerts.jsonl.1").stat().st_size == 210


# ------------------------------------------------------------------------------------------- task logs (unit)

@pytest.mark.unit
def test_airflow_log_files_older_than_the_retention_go_with_their_empty_folders(tmp_path):
    def log_file(relative: str, written: datetime) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("log line\n")
        os.utime(path, (written.timestamp(), written.timestamp()))

    log_file("dag_id=ecommerce_events/run_id=old/task_id=ingest/attempt=1.log", OLD)
    log_file("dag_id=ecommerce_events/run_id=old/task_id=audit/attempt=1.log", NOW - timedelta(days=31))
    log_file("dag_id=ecommerce_events/run_id=new/task_id=ingest/attempt=1.log", RECENT)
    log_file("dag_processor/2026-01-01/dag.py.log", OLD)
    (tmp_path / "dag_processor" / "latest").symlink_to(tmp_path / "dag_processor" / "2026-01-01")
    settings = Settings(airflow_metadata_retention_days=30)

    assert delete_expired_task_logs(tmp_path, replace(settings, airflow_metadata_retention_days=0), NOW).skipped
    assert len([p for p in tmp_path.rglob("*.log")]) == 4

    result = delete_expired_task_logs(tmp_path, settings, NOW)
    assert result.deleted == {"files": 3, "bytes": 3 * len("log line\n")}
    remaining = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.is_dir() or p.is_symlink())
    assert remaining == ["dag_id=ecommerce_events/run_id=new/task_id=ingest/attempt=1.log", "dag_processor/latest"]
    assert not (tmp_path / "dag_id=ecommerce_events" / "run_id=old").exists()  # emptied folders removed
    assert tmp_path.is_dir()


@pytest.mark.unit
def test_the_deleted_row_counts_are_read_from_airflow_db_cleans_output():
    output = ("Checking table dag_run\nFound 3 rows meeting deletion criteria.\nPerforming Delete...\n"
              "Checking table log\nFound 0 rows meeting deletion criteria.\n")
    assert rows_found(output) == {"dag_run": 3, "log": 0}


# ------------------------------------------------------------------------------ pipeline tables (PostgreSQL)

def _fill_every_pruned_table(conn: psycopg.Connection) -> dict[str, set[str]]:
    """Old, middle-aged and recent rows in every table housekeeping prunes, each labelled; returns the labels
    that must survive the default retentions (90 days of history, 30 of resolved dead letters) at NOW."""
    q1, q2 = uuid.uuid4(), uuid.uuid4()
    for label, at in (("old-1", OLD), ("old-2", OLD), ("old-3", OLD), ("middle", MIDDLE), ("recent", RECENT)):
        conn.execute("INSERT INTO data_quality_metrics (batch_id, total_records, valid_records, recorded_at) "
                     "VALUES (%s, 1, 1, %s)", (label, at))
        conn.execute("INSERT INTO rule_violations (event_id, rule, reason, recorded_at) VALUES (%s, 'r', 'x', %s)",
                     (label, at))
        conn.execute("INSERT INTO dead_letter_moves (moved_at, direction, cause, event_id) "
                     "VALUES (%s, 'to_events', 'replay', %s)", (at, label))
        # old-3's file is still archived (a backfill may re-read it): its delivery stays whatever its age
        status = {"old-1": "expired", "old-2": "quarantined", "old-3": "archived"}.get(label, "expired")
        conn.execute("INSERT INTO deliveries (file_name, source_file, size_bytes, claimed_at, completed_by, status, path)"
                     " VALUES (%s, %s, 1, %s, 'settled', %s, '/x')", (label, label, at, status))
    ledger = [  # (query, batch, label, staged, published)
        (q1, 1, "q1 old published", OLD, OLD),
        (q1, 2, "q1 old published, newest of q1 (the checkpoint may replay it)", OLD, OLD),
        (q2, 1, "q2 old unpublished", OLD, None),
        (q2, 2, "q2 recent published", RECENT, RECENT),
    ]
    for query, batch, label, staged, published in ledger:
        conn.execute("INSERT INTO pipeline_batch_ledger (spark_query_id, spark_batch_id, airflow_run_id, input_files,"
                     " input_rows, started_at, staged_at, published_at) VALUES (%s, %s, %s, 1, 1, %s, %s, %s)",
                     (query, batch, label, staged, staged, published))
    for label, at, published in (("old published", OLD, OLD), ("old unpublished", OLD, None),
                                 ("recent published", RECENT, RECENT)):
        conn.execute("INSERT INTO pipeline_backfill_ledger (backfill_batch_id, airflow_run_id, window_start, window_end,"
                     " input_files, input_rows, source_files, started_at, staged_at, published_at)"
                     " VALUES (%s, %s, %s, %s, 1, 1, '{}', %s, %s, %s)",
                     (uuid.uuid4(), label, at, at, at, at, published))
    for label, active, at in (("old recovered", False, OLD), ("old still active", True, OLD),
                              ("recent recovered", False, RECENT)):
        conn.execute("INSERT INTO pipeline_alerts (alert_key, level, fingerprint, active, last_sent_at, updated_at)"
                     " VALUES (%s, 'WARNING', 'f', %s, %s, %s)", (label, active, at, at))
    for label, status, failed, changed in (
        ("old open", "open", OLD, None),
        ("middle resolved", "resolved", OLD, MIDDLE),
        ("middle replayed", "replayed", OLD, MIDDLE),
        ("resolved, change time unknown", "resolved", OLD, None),
        ("recent resolved", "resolved", OLD, RECENT),
        ("recent replayed", "replayed", MIDDLE, RECENT),
    ):
        conn.execute("INSERT INTO dead_letter_events (event_id, raw_data, validation_errors, failed_at, status,"
                     " status_changed_at) VALUES (%s, 'raw', 'why', %s, %s, %s)", (label, failed, status, changed))
    history = {"middle", "recent"}
    return {
        "data_quality_metrics": history, "rule_violations": history, "dead_letter_moves": history,
        "deliveries": history | {"old-3"},
        "pipeline_batch_ledger": {"q1 old published, newest of q1 (the checkpoint may replay it)",
                                  "q2 old unpublished", "q2 recent published"},
        "pipeline_backfill_ledger": {"old unpublished", "recent published"},
        "pipeline_alerts": {"old still active", "recent recovered"},
        "dead_letter_events": {"old open", "recent resolved", "recent replayed"},
    }


LABEL = {"data_quality_metrics": "batch_id", "rule_violations": "event_id", "dead_letter_moves": "event_id",
         "deliveries": "file_name", "pipeline_batch_ledger": "airflow_run_id",
         "pipeline_backfill_ledger": "airflow_run_id", "pipeline_alerts": "alert_key", "dead_letter_events": "event_id"}


def _labels(pipeline) -> dict[str, set[str]]:
    return {table: {row[0] for row in pipeline.query(f"SELECT {column} FROM {table}")} for table, column in LABEL.items()}


def _filled(pipeline) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Empty tables, then every pruned table filled: (the labels that must survive, the labels now there)."""
    pipeline.reset()
    with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
        kept = _fill_every_pruned_table(conn)
    return kept, _labels(pipeline)


@pytest.mark.db
def test_old_history_is_pruned_and_nothing_newer_open_unpublished_or_active_is_touched(pipeline):
    assert set(LABEL) == set(HISTORY_RULES)  # every pruned table is filled below
    kept, before = _filled(pipeline)

    result = prune_pipeline_tables(pipeline.settings, NOW, batch_size=2)  # 3 old rows: several batches

    assert result.skipped is None
    assert _labels(pipeline) == kept
    assert result.deleted == {table: len(before[table]) - len(kept[table]) for table in LABEL}
    assert result.cutoffs == {"PIPELINE_HISTORY_RETENTION_DAYS": (NOW - timedelta(days=90)).isoformat(),
                              "RESOLVED_DEAD_LETTER_RETENTION_DAYS": (NOW - timedelta(days=30)).isoformat()}
    # a second run finds nothing more
    assert set(prune_pipeline_tables(pipeline.settings, NOW).deleted.values()) == {0}


@pytest.mark.db
def test_a_retention_of_zero_keeps_its_tables_whole(pipeline):
    _, before = _filled(pipeline)
    keep_all = replace(pipeline.settings, pipeline_history_retention_days=0, resolved_dead_letter_retention_days=0)
    assert prune_pipeline_tables(keep_all, NOW).skipped
    assert _labels(pipeline) == before

    # history kept, resolved dead letters pruned: only dead_letter_events changes
    result = prune_pipeline_tables(replace(keep_all, resolved_dead_letter_retention_days=30), NOW)
    assert result.deleted == {"dead_letter_events": 3}
    after = _labels(pipeline)
    assert {t: v for t, v in after.items() if t != "dead_letter_events"} == \
        {t: v for t, v in before.items() if t != "dead_letter_events"}
    assert after["dead_letter_events"] == {"old open", "recent resolved", "recent replayed"}


@pytest.mark.db
def test_pruning_skips_while_a_backfill_or_replay_runs_and_waits_for_a_publish(pipeline):
    _, before = _filled(pipeline)
    with revalidation_lock(pipeline.settings) as acquired:
        assert acquired
        result = prune_pipeline_tables(pipeline.settings, NOW, lock_wait_seconds=0)
    assert result.skipped == "a backfill or replay is running" and result.deleted == {}
    assert _labels(pipeline) == before

    # a publish holds the publish lock: housekeeping deletes nothing until its transaction ends
    pruned = {}
    with psycopg.connect(pipeline.settings.postgres_conninfo) as publish, publish.transaction():
        xact_lock(publish, PUBLISH_LOCK)
        worker = threading.Thread(target=lambda: pruned.update(prune_pipeline_tables(pipeline.settings, NOW).deleted))
        worker.start()
        time.sleep(1.5)
        assert worker.is_alive() and _labels(pipeline) == before
    worker.join(timeout=30)
    assert not worker.is_alive() and pruned["data_quality_metrics"] == 3


# ------------------------------------------------------------------------ Airflow metadata (real metadata DB)

@pytest.mark.integration
def test_airflow_metadata_older_than_the_retention_is_pruned_through_airflow_db_clean(pipeline):
    pipeline.airflow_ready()
    now = datetime.now(UTC)
    airflow_db = psycopg.conninfo.make_conninfo(pipeline.settings.postgres_conninfo, dbname="airflow")
    runs = [  # (dag_id, run_id, run_type, started)
        ("hk_probe", "old_scheduled_1", "scheduled", now - timedelta(days=60)),
        ("hk_probe", "old_scheduled_2", "scheduled", now - timedelta(days=59)),
        ("hk_probe", "old_manual", "manual", now - timedelta(days=58)),
        ("hk_probe", "recent_scheduled", "scheduled", now - timedelta(days=2)),
        # a DAG that has not run for two months keeps its latest scheduled run (the scheduler continues from it)
        ("hk_idle", "old_scheduled_latest", "scheduled", now - timedelta(days=60)),
    ]
    with psycopg.connect(airflow_db) as conn:
        conn.execute("DELETE FROM dag_run WHERE dag_id IN ('hk_probe', 'hk_idle')")
        conn.execute("DELETE FROM log WHERE event LIKE 'hk_probe%%'")
        for dag_id, run_id, run_type, started in runs:
            conn.execute("INSERT INTO dag_run (dag_id, run_id, run_type, state, start_date, end_date, run_after,"
                         " clear_number, span_status) VALUES (%s, %s, %s, 'success', %s, %s, %s, 0, 'ended')",
                         (dag_id, run_id, run_type, started, started, started))
        for event, at in (("hk_probe old", now - timedelta(days=40)), ("hk_probe recent", now - timedelta(hours=1))):
            conn.execute("INSERT INTO log (dttm, dag_id, event) VALUES (%s, 'hk_probe', %s)", (at, event))

    # as in a task process: the Task SDK has blanked the configured URL, the connection airflow_metadata has it
    task_env = {**pipeline.env, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///",
                "AIRFLOW__CORE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///"}
    url = json.loads(pipeline.env["AIRFLOW_CONN_AIRFLOW_METADATA"])["extra"]["sql_alchemy_conn"]
    settings = replace(pipeline.settings, airflow_metadata_retention_days=30)
    assert prune_airflow_metadata(replace(settings, airflow_metadata_retention_days=0), url, now, task_env).skipped
    with pytest.raises(MetadataCleanupFailed, match="exited with"):  # what the blanked URL alone gives
        prune_airflow_metadata(settings, None, now, task_env)
    result = prune_airflow_metadata(settings, url, now, task_env)

    with psycopg.connect(airflow_db) as conn:
        left = {row[0] for row in conn.execute(
            "SELECT run_id FROM dag_run WHERE dag_id IN ('hk_probe', 'hk_idle')").fetchall()}
        events = {row[0] for row in conn.execute("SELECT event FROM log WHERE event LIKE 'hk_probe%%'").fetchall()}
    assert left == {"recent_scheduled", "old_scheduled_latest"}
    assert events == {"hk_probe recent"}
    assert result.deleted["dag_run"] >= 3 and result.deleted["log"] >= 1
    assert {"task_instance", "xcom", "job", "asset_event"} <= set(result.deleted)
