"""The replay and retention DAGs: manual-only replay with typed params that default to a dry run."""

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
