"""The replay, retention and housekeeping DAGs: manual-only replay with typed params that default to a dry run."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit




def test_replay_is_manual_with_typed_params_defaulting_to_a_dry_run(dagbag):
    dag = dagbag.dags["ecommerce_dlq_replay"]
    assert dag.schedule is None
    params = dag.params
    assert params["dry_run"] is True
    assert params.get_param("dry_run").schema["type"] == "boolean"
    assert "price_in_range" in params.get_param("rule").schema["enum"]
    for name in ("failed_from", "failed_to"):
        assert params.get_param(name).schema["format"] == "date-time"
    with pytest.raises(Exception, match="not one of|enum|is not valid"):
        params.get_param("rule").resolve("no_such_rule")


def test_archive_retention_runs_daily(dagbag):
    dag = dagbag.dags["ecommerce_archive_retention"]
    assert dag.schedule == "@daily"
    assert [t.task_id for t in dag.tasks] == ["delete_expired_archive"]


def test_the_archive_retention_task_runs_its_code(dagbag, monkeypatch):
    """The task's body, as a worker runs it (retention off, so nothing is touched and no database is needed):
    its imports resolve, and it returns what include.ops.retention decided."""
    from include.airflow import settings_resolution
    from include.settings import Settings

    monkeypatch.setattr(settings_resolution, "settings_from_connection",
                        lambda: Settings.from_env({"ARCHIVE_RETENTION_DAYS": "0"}))
    task = dagbag.dags["ecommerce_archive_retention"].get_task("delete_expired_archive")
    assert task.python_callable()["skipped"] == "retention disabled"


def test_housekeeping_runs_daily_with_one_independent_task_per_kind(dagbag):
    dag = dagbag.dags["ecommerce_housekeeping"]
    assert dag.schedule == "@daily" and dag.catchup is False and dag.max_active_runs == 1
    # one task per kind, none waiting for another: a failure of one does not hold the others back
    assert {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} == {
        "prune_airflow_metadata": [], "prune_logs": [], "prune_pipeline_tables": []}
    for setting in ("AIRFLOW_METADATA_RETENTION_DAYS", "PIPELINE_HISTORY_RETENTION_DAYS",
                    "RESOLVED_DEAD_LETTER_RETENTION_DAYS", "COMPONENT_LOG_MAX_BYTES", "COMPONENT_LOG_BACKUPS"):
        assert f"`{setting}`" in dag.doc_md, setting
