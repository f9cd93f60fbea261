"""Every templated field of every task renders for every kind of run, also one without a logical date.

Airflow 3 lets a manual run have no logical date (REST API `"logical_date": null`, `airflow dags trigger`
without `--logical-date`, the UI's Trigger dialog with the date cleared). Such a run has no data interval,
and Airflow then leaves `logical_date`, `ds`, `ts`, `data_interval_start`, `data_interval_end`, ... out of the
template context altogether: a template that names one of them fails with `UndefinedError` (templates are
rendered with StrictUndefined), three tries, and the run fails. The context here is built by the Task SDK's
own code (`RuntimeTaskInstance.get_template_context`), as in a real task, for each kind of run.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

pytestmark = pytest.mark.unit

LOGICAL_DATE = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
RUN_KINDS = {
    # run_type, logical date (None: the run has no data interval either)
    "manual without logical date": ("manual", None),
    "manual with logical date": ("manual", LOGICAL_DATE),
    "scheduled": ("scheduled", LOGICAL_DATE),
    "backfill": ("backfill", LOGICAL_DATE),
}


def _without_xcom(value):
    """An upstream task's XCom is not what is under test (and needs a running task): a placeholder."""
    from airflow.sdk.definitions.xcom_arg import XComArg

    if isinstance(value, XComArg):
        return "<xcom>"
    if isinstance(value, list | tuple):
        return type(value)(_without_xcom(item) for item in value)
    if isinstance(value, dict):
        return {key: _without_xcom(item) for key, item in value.items()}
    return value


def template_context(task, run_type: str, logical_date: datetime | None):
    """The context Airflow gives ``task`` in a run of this kind (the Task SDK builds it)."""
    from airflow.sdk.api.datamodels._generated import DagRun, TIRunContext
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    now = datetime.now(UTC)
    interval = (logical_date - timedelta(minutes=1), logical_date) if logical_date else (None, None)
    run = DagRun(
        dag_id=task.dag_id, run_id=f"{run_type}__{(logical_date or now).isoformat()}", logical_date=logical_date,
        data_interval_start=interval[0], data_interval_end=interval[1], run_after=logical_date or now,
        start_date=now, end_date=None, run_type=run_type, state="running", consumed_asset_events=[],
        partition_key=None,
    )
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(), task_id=task.task_id, dag_id=task.dag_id, run_id=run.run_id, try_number=1, map_index=-1,
        dag_version_id=uuid.uuid4(), task=task,
        _ti_context_from_server=TIRunContext(dag_run=run, max_tries=task.retries),
    )
    return ti.get_template_context()


def tasks_that_run(dag, run_type: str, logical_date: datetime | None) -> list:
    """The tasks a run of this kind executes: a branch task (``@task.branch``) is asked which way it goes,
    and what it does not choose is skipped, with what lies only behind it. Skipped tasks render nothing."""
    import inspect

    from airflow.sdk.bases.branch import BranchMixIn

    skipped: set[str] = set()
    for task in dag.topological_sort():
        if task.upstream_task_ids and task.upstream_task_ids <= skipped:
            skipped.add(task.task_id)
        if task.task_id in skipped or not isinstance(task, BranchMixIn):
            continue
        context = template_context(task, run_type, logical_date)
        accepts = inspect.signature(task.python_callable).parameters
        chosen = task.python_callable(**{name: value for name, value in context.items() if name in accepts})
        skipped |= task.downstream_task_ids - set([chosen] if isinstance(chosen, str) else chosen)
    return [task for task in dag.tasks if task.task_id not in skipped]


@pytest.mark.parametrize("kind", RUN_KINDS)
def test_every_template_renders_in_every_kind_of_run(dagbag, kind, monkeypatch):
    run_type, logical_date = RUN_KINDS[kind]
    # templates read the connection (the Spark job's database settings); the environment provides it here
    monkeypatch.setenv("AIRFLOW_CONN_ECOMMERCE_POSTGRES", json.dumps(
        {"conn_type": "postgres", "host": "db.example", "port": 5432, "schema": "ecommerce", "login": "spark",
         "password": "not-a-real-one"}))
    rendered, failures = [], {}
    for dag in dagbag.dags.values():
        for task in tasks_that_run(dag, run_type, logical_date):
            context = template_context(task, run_type, logical_date)
            for field in task.template_fields:
                try:
                    task.render_template(_without_xcom(getattr(task, field)), context, dag.get_template_env())
                except Exception as error:  # noqa: BLE001 - every failing field is reported, not only the first
                    failures[f"{dag.dag_id}.{task.task_id}.{field}"] = f"{type(error).__name__}: {error}"
            rendered.append(f"{dag.dag_id}.{task.task_id}")
    assert failures == {}, kind
    assert "ecommerce_events.ingest" in rendered or run_type == "backfill"


def test_backfill_runs_and_a_window_on_the_trigger_form_take_the_backfill_path():
    """The branch: runs of a backfill, and manual runs whose Trigger form names a window, re-derive from the
    archive; every other run ingests what has landed. Half a window is refused, naming what is missing."""
    from types import SimpleNamespace

    import pytest

    from include.airflow import tasks
    from include.airflow.backfill_runs import ReprocessParamsInvalid

    def run(run_type: str) -> SimpleNamespace:
        moment = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        return SimpleNamespace(dag_id="ecommerce_events", run_id=f"{run_type}__x", run_type=run_type,
                               logical_date=moment, data_interval_start=moment, data_interval_end=moment)

    window = {"window_start": "2026-02-28T14:00:00Z", "window_end": "2026-02-28T15:30:00Z", "reason": "new price"}
    assert tasks.choose_path(run("backfill"), {}) == "backfill_ingest"
    assert tasks.choose_path(run("scheduled"), {"window_start": None, "window_end": None}) == "ingest"
    assert tasks.choose_path(run("manual"), {}) == "ingest"
    assert tasks.choose_path(run("manual"), window) == "backfill_ingest"
    with pytest.raises(ReprocessParamsInvalid, match="both window_start and window_end"):
        tasks.choose_path(run("manual"), {"window_start": "2026-02-28T14:00:00Z"})


def test_a_trigger_form_window_without_a_zone_is_utc_and_a_zone_given_is_kept():
    """The UI's date-time pickers send '2026-02-28T14:00' without a zone; the form says its times are UTC."""
    from include.airflow.backfill_runs import Run

    def window(start: str, end: str) -> tuple[datetime, datetime]:
        return Run("ecommerce_events", "manual__x", "manual", None, None, None,
                   {"window_start": start, "window_end": end}).reprocess

    assert window("2026-02-28T14:00", "2026-02-28T15:30") == (datetime(2026, 2, 28, 14, 0, tzinfo=UTC),
                                                              datetime(2026, 2, 28, 15, 30, tzinfo=UTC))
    assert window("2026-02-28T14:00+01:00", "2026-02-28T15:30+01:00")[0] == datetime(2026, 2, 28, 13, 0, tzinfo=UTC)
