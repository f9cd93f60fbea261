"""
### E-commerce events: landed CSV files → Spark → PostgreSQL, every minute

Every minute this DAG picks up the CSV event files that landed in `LANDING_DIR` and loads them into the
analytics database.

| task | what it does |
| --- | --- |
| `detect_landed_files` | counts `*.csv` files in `LANDING_DIR`; with none, the run stops here and **no JVM is started** |
| `package_code` | zips `include/` and `spark_jobs/` for `spark-submit --py-files` (reused while the code is unchanged) |
| `ingest` | `spark-submit spark_jobs/ingest_events.py`: a Structured Streaming query with `trigger(availableNow=True)` over `LANDING_DIR`, checkpointed in `CHECKPOINT_DIR`, at most `MAX_FILES_PER_TRIGGER` files per batch; rows are COPYed to staging and published once per batch (ledger), files move to `ARCHIVE_DIR/YYYY-MM-DD/HH/` |

**Where rows go** (database of the `ecommerce_postgres` connection): good events → `ecommerce_events`;
rows that cannot be parsed or typed → `dead_letter_events` with the raw line and the reason; one row per
batch → `data_quality_metrics` (total = valid + invalid + duplicates); unreadable files →
`quarantined_files` and `QUARANTINE_DIR`.

**Connections**: `spark_default` (master; `local[*]` unless it says otherwise) and `ecommerce_postgres`.
Only one run is active at a time (`max_active_runs=1`), so the Spark checkpoint is never shared.

**Operating it**: trigger a run from the UI to process what has landed right now; a failed run retries
with exponential backoff, and a re-run never loads a batch twice (see the README, "Guarantees").
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import dag, task

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPARK_JOB = PROJECT_ROOT / "spark_jobs" / "ingest_events.py"
POSTGRES_CONN_ID = "ecommerce_postgres"
SPARK_CONN_ID = "spark_default"

# The job reads its database settings from the environment; they come from the Airflow connection, so
# neither the password nor the host is ever on the spark-submit command line. Airflow masks the password
# in the rendered template view.
_conn = "{{{{ conn.%s.{} }}}}" % POSTGRES_CONN_ID  # noqa: UP031 - braces of Jinja and format collide
SPARK_JOB_ENV = {
    "POSTGRES_HOST": _conn.format("host"),
    "POSTGRES_PORT": _conn.format("port or 5432"),
    "POSTGRES_DB": _conn.format("schema"),
    "POSTGRES_USER": _conn.format("login"),
    "POSTGRES_PASSWORD": _conn.format("password"),
    "PIPELINE_HOME": str(PROJECT_ROOT),
    # Executors run the job's Python code with the same interpreter as Airflow unless told otherwise.
    "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
}


@dag(
    dag_id="ecommerce_events",
    schedule="* * * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    doc_md=__doc__,
    tags=["ecommerce", "spark", "ingest"],
    default_args={
        "owner": "data-engineering",
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=5),
    },
)
def ecommerce_events():
    @task.short_circuit
    def detect_landed_files() -> int:
        """Count the CSV files waiting in `LANDING_DIR`. Zero skips the Spark task: no JVM for an empty minute."""
        from include.settings import get_settings

        landing_dir = get_settings().landing_dir
        waiting = [p for p in landing_dir.glob("*.csv") if not p.name.startswith((".", "_"))]
        print(f"{len(waiting)} file(s) waiting in {landing_dir}")
        return len(waiting)

    @task
    def package_code() -> str:
        """Zip `include/` and `spark_jobs/` for `--py-files`; the same code gives the same zip."""
        from include.packaging import build_code_archive

        return str(build_code_archive())

    code_archive = package_code()
    ingest = SparkSubmitOperator(
        task_id="ingest",
        conn_id=SPARK_CONN_ID,
        application=str(SPARK_JOB),
        py_files=code_archive,
        name="ecommerce_events_ingest",
        application_args=["--airflow-run-id", "{{ run_id }}"],
        env_vars=SPARK_JOB_ENV,
        execution_timeout=timedelta(minutes=20),
        doc_md="Run the Spark ingest job (`spark_jobs/ingest_events.py`) over everything that has landed.",
    )
    detect_landed_files() >> code_archive >> ingest


ecommerce_events()
