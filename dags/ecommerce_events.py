"""
### E-commerce events: landed CSV files → Spark → Great Expectations → PostgreSQL, every minute

Every minute this DAG claims the files that landed in `LANDING_DIR` as deliveries and loads them into the
analytics database: every input row is stored in `ecommerce_events`, dead-lettered in `dead_letter_events`
with every reason, or counted as a duplicate of an event already stored.

```
detect_work ─► package_code ─► choose_path ─┬─► ingest ─► audit ─► publish ──┬─► quality_gate
                                            └─► backfill_ingest ─► rederive ─┘
```

Every-minute (and manual) runs take `ingest → audit → publish`; runs of a backfill, and a manual run whose
**Trigger form** names a window (`window_start`, `window_end`, `reason`), take `backfill_ingest → rederive`:
one run re-derives up to `BACKFILL_CHUNK_MINUTES` of history in one Spark job and closes the backfill's other
runs it covered, each with a note naming it. A run with nothing to do ends at `detect_work`, without a JVM.

What each task does: [docs/architecture.md](docs/architecture.md). Files and producers:
[README, "Use your own feed"](README.md#use-your-own-feed). Backfills, reprocessing a window, replays:
[docs/operations.md](docs/operations.md#backfills-and-replays). Alerts: [docs/alerts.md](docs/alerts.md).
Variables (`ecommerce_max_price`, `ecommerce_min_validity_rate`, `ecommerce_rule_severity`) and connections
(`ecommerce_postgres`, `spark_default`, `slack_alerts`, `airflow_api`): [docs/configuration.md](docs/configuration.md).
The UI's **Data Quality**, **Dead letters**, **Rule violations** and **Quality dashboard** pages, and the
**Validation of this run** / **Dead letters of this run** tabs of every run, show what a run did.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import CronTriggerTimetable, Param, dag, task

from include.airflow import tasks
from include.airflow.assets import DEAD_LETTERS_ASSET, EVENTS_ASSET, PUBLISHED
from include.airflow.callbacks import (
    alert_run_failure,
    alert_task_failure,
    check_feed_freshness,
    record_pipeline_failure,
)
from include.names import DAG_ID, POSTGRES_CONN_ID, SPARK_CONN_ID

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPARK_JOBS = PROJECT_ROOT / "spark_jobs"

# The jobs read their database settings from the environment; they come from the Airflow connection, so
# neither the password nor the host is ever on the spark-submit command line. Airflow masks the password
# in the rendered template view.
_conn = "{{{{ conn.%s.{} }}}}" % POSTGRES_CONN_ID  # noqa: UP031 - braces of Jinja and format collide
SPARK_JOB_ENV = {
    "POSTGRES_HOST": _conn.format("host"),
    "POSTGRES_PORT": _conn.format("port or 5432"),
    "POSTGRES_DB": _conn.format("schema"),
    "POSTGRES_USER": _conn.format("login"),
    "POSTGRES_PASSWORD": _conn.format("password"),
    # the connection's extra (JSON): its libpq parameters (sslmode, options, ...) hold in the executors too
    "POSTGRES_EXTRA": _conn.format("extra or ''"),
    "PIPELINE_HOME": str(PROJECT_ROOT),
    # Executors run the job's Python code with this interpreter: Airflow's own unless told otherwise. On a
    # cluster it must exist on every worker with the project's requirements (docker-compose: the same image).
    "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
}

# The Trigger form: left empty, a manual run ingests what has landed; with a window, it re-derives it.
REPROCESS_PARAMS = {
    "window_start": Param(None, type=["null", "string"], format="date-time", title="Reprocess from (UTC)",
                          description="Re-derive every delivery claimed from this moment on (leave empty to ingest "
                                      "what has landed)"),
    "window_end": Param(None, type=["null", "string"], format="date-time", title="Reprocess until (UTC)",
                        description="... up to, not including, this moment"),
    "reason": Param(None, type=["null", "string"], title="Reason",
                    description="Why: kept with every row the reprocess moves (dead_letter_moves.reason)"),
}


@dag(
    dag_id=DAG_ID,
    # every minute; each run's data interval is the minute before it, which is what a backfill run re-reads
    schedule=CronTriggerTimetable("* * * * *", timezone="UTC", interval=timedelta(minutes=1)),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    doc_md=__doc__,
    params=REPROCESS_PARAMS,
    tags=["ecommerce", "spark", "ingest"],
    on_failure_callback=alert_run_failure,  # alerts: docs/alerts.md
    on_success_callback=check_feed_freshness,
    default_args={
        "owner": "data-engineering",
        "retries": 2,
        # first retry after TASK_RETRY_DELAY_SECONDS (default 20), doubling up to 5 minutes
        "retry_delay": timedelta(seconds=float(os.environ.get("TASK_RETRY_DELAY_SECONDS", "20"))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=5),
        "on_failure_callback": alert_task_failure,
    },
)
def ecommerce_events():
    @task.short_circuit
    def detect_work(run_id=None, dag_run=None, params=None) -> bool:
        """Claim what has landed; anything to do? If not, the run ends here: no JVM."""
        return tasks.detect_work(dag_run, params, run_id)

    @task(multiple_outputs=True)
    def package_code() -> dict[str, str]:
        """Zip the code Spark imports for `--py-files`; point the driver at the class-data archive."""
        return tasks.package_code()

    @task.branch
    def choose_path(dag_run=None, params=None) -> str:
        """A backfill run, or a window on the Trigger form, re-derives from the archive; any other run ingests."""
        return tasks.choose_path(dag_run, params)

    @task(on_failure_callback=record_pipeline_failure)
    def audit(run_id=None) -> dict:
        """Validate every staged, unpublished row with the Great Expectations suite; rebuild the Data Docs."""
        return tasks.audit(run_id)

    @task(on_failure_callback=record_pipeline_failure, outlets=[PUBLISHED])
    def publish(audit_result: dict, run_id=None, outlet_events=None) -> dict:
        """One transaction: good rows → `ecommerce_events`, failing rows → `dead_letter_events`, metrics."""
        return tasks.publish(audit_result, run_id, outlet_events)

    # a backfill reads both tables (the lines stored and dead-lettered before) and rewrites them
    @task(on_failure_callback=record_pipeline_failure, inlets=[EVENTS_ASSET, DEAD_LETTERS_ASSET], outlets=[PUBLISHED])
    def rederive(run_id=None, dag_run=None, params=None, outlet_events=None) -> dict:
        """Re-derive the chunk this run staged; note its progress; close the backfill runs it covered."""
        return tasks.rederive(dag_run, params, run_id, outlet_events)

    @task(trigger_rule="none_failed_min_one_success")
    def quality_gate(run_id=None, ti=None) -> None:
        """Fail the run when quality is below the threshold (a backfill: once, on its totals); alert."""
        tasks.quality_gate(run_id, ti)

    def spark_job(task_id: str, script: str, doc: str) -> SparkSubmitOperator:
        return SparkSubmitOperator(
            task_id=task_id,
            conn_id=SPARK_CONN_ID,
            application=str(SPARK_JOBS / script),
            py_files=prepared["py_files"],
            conf={"spark.driver.extraJavaOptions": prepared["driver_java_options"]},
            name=f"{DAG_ID}_{task_id}",
            application_args=["--airflow-run-id", "{{ run_id }}"],
            env_vars=SPARK_JOB_ENV,
            execution_timeout=timedelta(minutes=60 if task_id == "backfill_ingest" else 20),
            on_failure_callback=record_pipeline_failure,
            doc_md=doc,
        )

    prepared = package_code()
    path = choose_path()
    ingest = spark_job("ingest", "ingest_events.py",
                       "Stage every claimed delivery (`spark_jobs/ingest_events.py`).")
    backfill_ingest = spark_job("backfill_ingest", "backfill_batch.py",
                                "Stage the archived deliveries of this run's chunk (`spark_jobs/backfill_batch.py`).")
    audited = audit()
    backfilled = rederive()

    detect_work() >> prepared >> path >> [ingest, backfill_ingest]
    ingest >> audited
    backfill_ingest >> backfilled
    [publish(audited), backfilled] >> quality_gate()


ecommerce_events()
