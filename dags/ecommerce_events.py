"""
### E-commerce events: landed CSV files → Spark → Great Expectations → PostgreSQL, every minute

Every minute this DAG loads the CSV event files that landed in `LANDING_DIR` into the analytics database.
Every input row gets exactly one fate: stored in `ecommerce_events`, dead-lettered in `dead_letter_events`
with every reason, or counted as a duplicate of an event already stored.

```
detect_work ─► package_code ─► choose_path ─┬─► ingest ─► audit ─► publish ──┬─► quality_gate
                                            └─► backfill_ingest ─► rederive ─┘
```

The Graph view shows which path a run took: every-minute (and manual) runs take `ingest → audit → publish`,
runs made by a backfill take `backfill_ingest → rederive`; the other path is skipped.

| task | what it does |
| --- | --- |
| `detect_work` | claims every complete file of `LANDING_DIR` as a delivery (renamed into `LANDING_DIR/.claimed/`, a row in `deliveries`; a name delivered again is a new delivery), quarantines what cannot be read (links, directories, empty, oversized, not a feed file), warns about files waiting longer than `LANDING_STUCK_MINUTES` (README "Use your own feed"). No delivery waiting and no batch staged but unpublished (a backfill run: no archived delivery in its window): the run stops here and **no JVM is started** |
| `package_code` | zips the code Spark needs (`spark_jobs/`, `include/contract`, `include/storage`, settings) for `spark-submit --py-files` into `data/code`, which every Airflow worker shares (reused while the code is unchanged), and points the Spark driver at its class-data archive (written once per machine, Java and Spark version into `~/.cache/ecommerce-pipeline`; it halves the JVM's start) |
| `choose_path` | the every-minute path, or the backfill path for a run created by a backfill |
| `ingest` | `spark-submit spark_jobs/ingest_events.py`: claims what completed since `detect_work`, then Structured Streaming over the delivery ledger (offsets are delivery ids) with `trigger(availableNow=True)`, checkpoint in `CHECKPOINT_DIR`, micro-batches of at most `MAX_FILES_PER_TRIGGER` files and about `MAX_BYTES_PER_TRIGGER` bytes. Reads each delivery as claimed, matches its columns by name (any order or case; unknown columns kept per row in `rescued_data`), upcasts to v3, types the rows (rows that cannot be typed keep their reason), COPYs them into `staging_events`, records the batch in the ledger, moves the files to `ARCHIVE_DIR/YYYY-MM-DD/HH/<id>__<name>` (unreadable ones to `QUARANTINE_DIR`) |
| `audit` | runs the Great Expectations suite `ecommerce_events.contract` (`include/contract/rules.py`) over every staged, unpublished row; rebuilds the **Data Docs** |
| `publish` | one transaction: good rows → `ecommerce_events`, failing rows → `dead_letter_events` (raw line + every broken rule), one `data_quality_metrics` row per batch (with the thresholds and severities in force), ledger marked published; violations of `warn` rules → `rule_violations` (the rows are stored); a broken `fail` rule fails the task before anything is written (the batch stays staged); a column name the feed never carried before raises one WARNING; then one **asset event** per table it changed (`ecommerce_events`, `dead_letter_events`; none when it stored nothing), with the counts as `extra` (README "Assets") |
| `backfill_ingest` | `spark-submit spark_jobs/backfill_batch.py`: re-reads from `ARCHIVE_DIR` exactly the deliveries claimed in the run's data interval (batch mode: no checkpoint, no file moves) and stages their rows |
| `rederive` | validates the re-read rows with the same suite and re-derives them in one transaction (`include/publish/backfill.py`); asset events like `publish` |
| `quality_gate` | fails the run (after publishing) when the validity rate is below `MIN_VALIDITY_RATE` or a table-level check fails |

**Data Docs**: **Data Quality** in the navigation of this UI (`/ecommerce/data-docs/index.html`); on disk
`data/great_expectations/gx/uncommitted/data_docs/local_site/index.html` (`GREAT_EXPECTATIONS_DIR`).

**This run's pages**: the tabs **Validation of this run** (its Data Docs validation page) and **Dead letters
of this run** of every run's page; the alerts link to them.

**Dead letters**: **Dead letters** in the navigation of this UI: rows with reasons, counts per rule, filters
by rule / reason / time / file / run, CSV export (`/ecommerce/dead-letters?run_id=<run id>`). In SQL:
`SELECT source_file, source_line, validation_errors, raw_data FROM dead_letter_events WHERE airflow_run_id = '<run id>';`

**Variables** (*Admin → Variables*, read when each task runs, no restart): `ecommerce_max_price`,
`ecommerce_min_validity_rate`, `ecommerce_rule_severity` (JSON, e.g. `{"category_known": "drop"}`; each
rule is `warn`: stored and recorded in `rule_violations`, `drop`: dead-lettered, or `fail`: the run stops
before publishing). Unset, the environment applies; a bad value fails `detect_work`, naming the Variable.

**Connections**: `spark_default` (master; `local[*]` unless it says otherwise, e.g. `spark://host:7077` for a
standalone cluster: see docs/scaling.md) and `ecommerce_postgres`.
Only one run is active at a time (`max_active_runs=1`), so the Spark checkpoint is never shared.

**Backfills** (`airflow backfill create --dag-id ecommerce_events --from-date … --to-date …
--reprocess-behavior completed`, or *Trigger → Backfill* in the UI): each backfill run re-reads, from
`ARCHIVE_DIR`, exactly the files that landed in its data interval (one minute) in batch mode (no streaming
checkpoint, no file moves; the `backfill_ingest → rederive` path), validates them with the same suite and
re-derives their rows: rows that now
pass move from `dead_letter_events` into `ecommerce_events` and back, each move recorded in
`dead_letter_moves`; an identical second backfill changes nothing. Dead letters are re-validated by the
`ecommerce_dlq_replay` DAG. See README "Backfills and replays".

**Alerts** (WARNING quality breach, ERROR task failed after retries, CRITICAL breaker open / no fresh data while
`FEED_EXPECTED` / dead letters growing): task log, `ALERT_FILE` and Slack connection `slack_alerts`, once per
condition until it changes, `ALERT_COOLDOWN_MINUTES` pass, or it recovers. See README "Alerts".

**Operating it**: trigger a run to process what has landed now. A failed run retries with exponential
backoff; a retry or the next run publishes whatever an earlier run staged, and never twice.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import CronTriggerTimetable, dag, task

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


@dag(
    dag_id=DAG_ID,
    # every minute; each run's data interval is the minute before it, which is what a backfill run re-reads
    schedule=CronTriggerTimetable("* * * * *", timezone="UTC", interval=timedelta(minutes=1)),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=30),
    doc_md=__doc__,
    tags=["ecommerce", "spark", "ingest"],
    on_failure_callback=alert_run_failure,  # alerts: README "Alerts"
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
    def detect_work(run_id: str | None = None, dag_run=None, data_interval_start=None, data_interval_end=None) -> bool:
        """Anything to do? If not, the run ends here: no JVM for an empty minute."""
        from include.airflow.settings_resolution import settings_from_connection
        from include.ops.detect import detect_every_minute_work
        from include.publish.backfill import detect_window, is_backfill_run

        settings = settings_from_connection()
        if is_backfill_run(dag_run.run_type):
            return detect_window(settings, data_interval_start, data_interval_end)
        return detect_every_minute_work(settings, run_id)

    @task(multiple_outputs=True)
    def package_code() -> dict[str, str]:
        """Zip the code Spark imports for `--py-files` (the same code gives the same zip), and point the
        Spark driver at the class-data archive that halves its start (written once per Java and Spark)."""
        from include.airflow.packaging import build_class_archive, build_code_archive, driver_java_options

        build_class_archive()
        return {"py_files": str(build_code_archive()), "driver_java_options": driver_java_options()}

    @task.branch
    def choose_path(dag_run=None) -> str:
        """A run created by a backfill re-reads its window from the archive; every other run ingests LANDING_DIR."""
        from include.publish.backfill import is_backfill_run

        return "backfill_ingest" if is_backfill_run(dag_run.run_type) else "ingest"

    @task(on_failure_callback=record_pipeline_failure)
    def audit(run_id: str | None = None) -> dict:
        """Validate every staged, unpublished row with the Great Expectations suite; rebuild the Data Docs."""
        from include.airflow.settings_resolution import settings_from_connection
        from include.quality.audit import audit_staged_batches

        return audit_staged_batches(settings_from_connection(), run_id).to_xcom()

    @task(on_failure_callback=record_pipeline_failure, outlets=[PUBLISHED])
    def publish(audit_result: dict, run_id: str | None = None, outlet_events=None) -> dict:
        """One transaction: good rows → `ecommerce_events`, failing rows → `dead_letter_events`, metrics."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.airflow.settings_resolution import settings_from_connection
        from include.ops.detect import record_published_run
        from include.publish.every_minute import publish as publish_batches
        from include.publish.sql import RuleFailed
        from include.results import AuditResult
        from include.storage.connections import with_connection

        settings = settings_from_connection()
        audited = AuditResult.from_xcom(audit_result)
        try:
            summary = with_connection(settings, lambda conn: publish_batches(conn, audited, settings, run_id))
        except RuleFailed as error:  # the same data breaks it on every retry: fail now, publish nothing
            raise AirflowFailException(str(error)) from error
        record_published_run(settings)
        print(summary.describe())
        if summary.new_columns:
            from include.ops.alerts import alert_new_columns

            print("new column(s) in the feed, kept in rescued_data: "
                  + ", ".join(c["name"] for c in summary.new_columns))
            alert_new_columns(settings, summary.new_columns, run_id)
        _announce(outlet_events, summary)
        return summary.to_xcom()

    # a backfill reads both tables (the lines stored and dead-lettered before) and rewrites them
    @task(on_failure_callback=record_pipeline_failure, inlets=[EVENTS_ASSET, DEAD_LETTERS_ASSET], outlets=[PUBLISHED])
    def rederive(run_id: str | None = None, outlet_events=None) -> dict:
        """Validate the backfill's re-read rows with the suite and re-derive them (`include/publish/backfill.py`)."""
        from include.airflow.settings_resolution import settings_from_connection
        from include.publish.backfill import rederive as rederive_window

        summary = rederive_window(settings_from_connection(), run_id)
        print(summary.describe())
        _announce(outlet_events, summary)
        return summary.to_xcom()

    @task(trigger_rule="none_failed_min_one_success")
    def quality_gate(run_id: str | None = None, ti=None) -> None:
        """Fail the run (the good rows are already published) when quality is below the threshold; alert
        (WARNING on a breach, a recovery when it clears, CRITICAL when dead letters grow too fast)."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.airflow.settings_resolution import settings_from_connection
        from include.ops.alerts import after_quality_gate
        from include.quality.gate import breach_message, problems
        from include.results import PublishSummary

        settings = settings_from_connection()
        published = [x for x in ti.xcom_pull(task_ids=["publish", "rederive"]) if x]  # the path the run took
        summary = PublishSummary.from_xcom(published[0])
        found = problems(summary, settings.min_validity_rate)
        after_quality_gate(settings, summary, found, run_id)
        if found:
            raise AirflowFailException(breach_message(summary, found, run_id))
        if summary.warnings:
            print(f"stored with warn-level violations (rule_violations): {summary.warned} row(s); "
                  + "; ".join(f"{r.rule}: {r.rows}" for r in summary.warnings))
        print(f"quality ok: validity {summary.validity_rate}% (threshold {settings.min_validity_rate}%)")

    def _announce(outlet_events, summary) -> None:
        from include.airflow.assets import announce_publish

        announced = announce_publish(outlet_events, summary)
        print(f"asset events: {', '.join(announced)}" if announced
              else "no asset event: neither ecommerce_events nor dead_letter_events changed")

    def spark_job(task_id: str, script: str, arguments: list[str], doc: str) -> SparkSubmitOperator:
        return SparkSubmitOperator(
            task_id=task_id,
            conn_id=SPARK_CONN_ID,
            application=str(SPARK_JOBS / script),
            py_files=prepared["py_files"],
            conf={"spark.driver.extraJavaOptions": prepared["driver_java_options"]},
            name=f"{DAG_ID}_{task_id}",
            application_args=["--airflow-run-id", "{{ run_id }}", *arguments],
            env_vars=SPARK_JOB_ENV,
            execution_timeout=timedelta(minutes=20),
            on_failure_callback=record_pipeline_failure,
            doc_md=doc,
        )

    prepared = package_code()
    path = choose_path()
    ingest = spark_job("ingest", "ingest_events.py", [],
                       "Stage everything that has landed in `LANDING_DIR` (`spark_jobs/ingest_events.py`).")
    # Only backfill runs take this path, and they always have a data interval.
    backfill_ingest = spark_job(
        "backfill_ingest", "backfill_batch.py",
        ["--window-start", "{{ data_interval_start.isoformat() }}", "--window-end", "{{ data_interval_end.isoformat() }}"],
        "Stage the archived files that landed in this run's data interval (`spark_jobs/backfill_batch.py`).",
    )
    audited = audit()
    backfilled = rederive()

    detect_work() >> prepared >> path >> [ingest, backfill_ingest]
    ingest >> audited
    backfill_ingest >> backfilled
    [publish(audited), backfilled] >> quality_gate()


ecommerce_events()
