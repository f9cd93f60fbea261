"""Every DAG loads, follows the project's policies, and does no work while the scheduler parses it."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest

from include.airflow.assets import DEAD_LETTERS_ASSET, EVENTS_ASSET, PUBLISHED
from include.names import DAG_ID, HOURLY_REVENUE_DAG_ID, REPLAY_DAG_ID
from tests.fixtures.pipeline import PROJECT_ROOT

pytestmark = pytest.mark.unit

DAGS_FOLDER = PROJECT_ROOT / "dags"


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "ecommerce_events" in dagbag.dags


def test_parsing_fetches_no_connection_or_variable():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook, Variable

    with (
        mock.patch.object(BaseHook, "get_connection", side_effect=AssertionError("connection at parse time")),
        mock.patch.object(Variable, "get", side_effect=AssertionError("Variable at parse time")),
    ):
        bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}


def test_every_name_a_dag_file_imports_exists_also_inside_a_task():
    """A task imports its code when it runs, not when the DAG is parsed, so a name that moved away passes
    every parse and fails only when the scheduler runs that task (daily, for the maintenance DAGs). Every
    ``from include... import name`` of a DAG file, also inside a task body, names something that exists."""
    missing = []
    for path in sorted(DAGS_FOLDER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "include":
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: from {node.module} import {alias.name}" for alias in node.names
                            if not hasattr(module, alias.name) and not (  # nor a module of a package
                                hasattr(module, "__path__") and importlib.util.find_spec(f"{node.module}.{alias.name}"))]
    assert missing == []


def test_every_dag_has_tags_owner_docs_and_retries(dagbag):
    for dag in dagbag.dags.values():
        assert dag.tags, dag.dag_id
        assert dag.doc_md, dag.dag_id
        for task in dag.tasks:
            assert task.retries >= 2, task.task_id
            assert task.owner == "data-engineering", task.task_id


def test_every_writer_of_the_two_tables_declares_the_alias_and_the_rollup_waits_on_the_events_asset(dagbag):
    writers = {(DAG_ID, "publish"), (DAG_ID, "rederive"), (REPLAY_DAG_ID, "apply")}
    declaring = {(dag.dag_id, task.task_id) for dag in dagbag.dags.values() for task in dag.tasks if task.outlets}
    assert declaring == writers
    for dag_id, task_id in writers:
        assert dagbag.dags[dag_id].get_task(task_id).outlets == [PUBLISHED]
    # declared where they are read, so both assets exist (group ecommerce) before their first event
    assert dagbag.dags[REPLAY_DAG_ID].get_task("apply").inlets == [DEAD_LETTERS_ASSET]
    assert dagbag.dags[DAG_ID].get_task("rederive").inlets == [EVENTS_ASSET, DEAD_LETTERS_ASSET]
    rollup = dagbag.dags[HOURLY_REVENUE_DAG_ID]
    assert list(rollup.timetable.asset_condition.objects) == [EVENTS_ASSET]


def test_ecommerce_events_schedule_and_concurrency(dagbag):
    dag = dagbag.dags["ecommerce_events"]
    # every minute, and each run's data interval is that minute (what a backfill run re-reads)
    assert dag.schedule.expression == "* * * * *"
    assert dag.schedule.interval == timedelta(minutes=1)
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    ingest = dag.get_task("ingest")
    assert ingest.retry_exponential_backoff > 1
    assert ingest.max_retry_delay == timedelta(minutes=5)


def test_spark_task_submits_the_ingest_job_through_spark_default(dagbag):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    dag = dagbag.dags["ecommerce_events"]
    ingest = dag.get_task("ingest")
    assert isinstance(ingest, SparkSubmitOperator)
    assert ingest._conn_id == "spark_default"
    assert Path(ingest.application).is_file()
    assert Path(ingest.application).name == "ingest_events.py"
    # no JVM for an empty minute: the Spark task sits behind the landed-files check
    assert "detect_work" in ingest.get_flat_relative_ids(upstream=True)


def test_the_graph_reads_like_the_diagram(dagbag):
    """detect_work → package_code → choose_path, then the every-minute path or the backfill path, joining at
    quality_gate; the gate runs after whichever path ran (the other one is skipped, never failed)."""
    dag = dagbag.dags["ecommerce_events"]
    downstream = {task.task_id: sorted(task.downstream_task_ids) for task in dag.tasks}
    assert downstream == {
        # package_code also feeds both Spark tasks their code archive (py_files), a data dependency
        "detect_work": ["package_code"], "package_code": ["backfill_ingest", "choose_path", "ingest"],
        "choose_path": ["backfill_ingest", "ingest"],
        "ingest": ["audit"], "audit": ["publish"], "publish": ["quality_gate"],
        "backfill_ingest": ["rederive"], "rederive": ["quality_gate"],
        "quality_gate": [],
    }
    assert dag.get_task("quality_gate").trigger_rule == "none_failed_min_one_success"
    backfill = dag.get_task("backfill_ingest")
    assert Path(backfill.application).name == "backfill_batch.py" and Path(backfill.application).is_file()


def test_the_every_minute_ingest_needs_no_data_interval(dagbag):
    """A manual run without a logical date has no data interval; only the backfill path reads one."""
    ingest = dagbag.dags["ecommerce_events"].get_task("ingest")
    assert not any("data_interval" in str(arg) for arg in ingest.application_args)


def test_no_secret_reaches_the_spark_command_line(dagbag):
    for task_id in ("ingest", "backfill_ingest"):
        job = dagbag.dags["ecommerce_events"].get_task(task_id)
        assert "{{" in job.env_vars["POSTGRES_PASSWORD"]  # rendered from the connection at run time only
        assert not any("password" in str(arg).lower() for arg in job.application_args)


def test_airflow_loads_the_project_plugin_without_errors():
    from airflow import plugins_manager

    names = {info["name"] for info in plugins_manager.get_plugin_info()}
    assert "ecommerce_pipeline" in names
    assert plugins_manager.get_import_errors() == {}
