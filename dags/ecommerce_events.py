"""
### E-commerce events: landed CSV files → Spark → Great Expectations → PostgreSQL, every minute

Every minute this DAG loads the CSV event files that landed in `LANDING_DIR` into the analytics database.
Every input row gets exactly one fate: stored in `ecommerce_events`, dead-lettered in `dead_letter_events`
with every reason, or counted as a duplicate of an event already stored.

| task | what it does |
| --- | --- |
| `detect_work` | files waiting in `LANDING_DIR`, or batches staged but not yet published? If neither, the run stops here and **no JVM is started** |
| `package_code` | zips `include/` and `spark_jobs/` for `spark-submit --py-files` into `data/code`, which every Airflow worker shares (reused while the code is unchanged) |
| `ingest` | `spark-submit spark_jobs/ingest_events.py`: Structured Streaming over `LANDING_DIR` with `trigger(availableNow=True)`, checkpoint in `CHECKPOINT_DIR`, at most `MAX_FILES_PER_TRIGGER` files per batch. Detects each file's schema version from its header, upcasts to v3, types the rows (rows that cannot be typed keep their reason), COPYs them into `staging_events`, records the batch in the ledger, moves the files to `ARCHIVE_DIR/YYYY-MM-DD/HH/` (unreadable ones to `QUARANTINE_DIR`) |
| `audit` | runs the Great Expectations suite `ecommerce_events.contract` (`include/contract/rules.py`) over every staged, unpublished row; rebuilds the **Data Docs** |
| `publish` | one transaction: good rows → `ecommerce_events`, failing rows → `dead_letter_events` (raw line + every broken rule), one `data_quality_metrics` row per batch, ledger marked published |
| `quality_gate` | fails the run (after publishing) when the validity rate is below `MIN_VALIDITY_RATE` or a table-level check fails |

**Data Docs**: **Data Quality** in the navigation of this UI (`/ecommerce/data-docs/index.html`); on disk
`data/great_expectations/gx/uncommitted/data_docs/local_site/index.html` (`GREAT_EXPECTATIONS_DIR`).

**Dead letters**: **Dead letters** in the navigation of this UI: rows with reasons, counts per rule, filters
by rule / reason / time / file / run, CSV export (`/ecommerce/dead-letters?run_id=<run id>`). In SQL:
`SELECT source_file, source_line, validation_errors, raw_data FROM dead_letter_events WHERE airflow_run_id = '<run id>';`

**Connections**: `spark_default` (master; `local[*]` unless it says otherwise, e.g. `spark://host:7077` for a
standalone cluster: see docs/scaling.md) and `ecommerce_postgres`.
Only one run is active at a time (`max_active_runs=1`), so the Spark checkpoint is never shared.

**Backfills** (`airflow backfill create --dag-id ecommerce_events --from-date … --to-date …
--reprocess-behavior completed`, or *Trigger → Backfill* in the UI): each backfill run re-reads, from
`ARCHIVE_DIR`, exactly the files that landed in its data interval (one minute) in batch mode (no streaming
checkpoint, no file moves), validates them with the same suite and re-derives their rows: rows that now
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import CronTriggerTimetable, dag, task

from include.airflow.callbacks import (
    alert_run_failure,
    alert_task_failure,
    check_feed_freshness,
    record_pipeline_failure,
)

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
    # Executors run the job's Python code with this interpreter: Airflow's own unless told otherwise. On a
    # cluster it must exist on every worker with the project's requirements (docker-compose: the same image).
    "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
}


@dag(
    dag_id="ecommerce_events",
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
        """Anything to do? CSV files waiting in `LANDING_DIR`, or batches staged by an earlier run but not
        published. If not, the run ends here: no JVM for an empty minute. Zero-byte files (which Spark's
        scan skips) are quarantined here once they are 30 s old."""
        from include.airflow.callbacks import settings_from_connection
        from include.ops import circuit_breaker
        from include.publish.every_minute import backfill
        from include.storage.connections import with_connection
        from include.storage.landing import quarantine_empty_files, waiting_files

        settings = settings_from_connection()
        if dag_run is not None and backfill.is_backfill_run(dag_run.run_type):
            return backfill.detect_window(settings, data_interval_start, data_interval_end)
        breaker = circuit_breaker.breaker_from_settings(settings)

        def look(conn):
            moved = quarantine_empty_files(settings, conn, run_id)
            unpublished = conn.execute(
                "SELECT count(*) FROM pipeline_batch_ledger WHERE published_at IS NULL"
            ).fetchone()[0]
            now = datetime.now(UTC)  # the decision is pure: the same state and time give the same answer
            before, _ = circuit_breaker.transition(conn, lambda state: breaker.decide(state, now).state)
            return moved, unpublished, breaker.decide(before, now)

        moved, unpublished, decision = with_connection(settings, look)
        for path in moved:
            print(f"quarantined empty file {path}")
        waiting = waiting_files(settings.landing_dir)
        print(f"{len(waiting)} file(s) waiting in {settings.landing_dir}; {unpublished} batch(es) staged, unpublished")
        print(decision.message)
        return bool(waiting or unpublished) and decision.allowed

    @task
    def package_code() -> str:
        """Zip `include/` and `spark_jobs/` for `--py-files`; the same code gives the same zip."""
        from include.airflow.packaging import build_code_archive

        return str(build_code_archive())

    @task(on_failure_callback=record_pipeline_failure)
    def audit(run_id: str | None = None, dag_run=None) -> dict:
        """Validate every staged, unpublished row with the Great Expectations suite; rebuild the Data Docs.
        In a backfill run: validate the run's re-read rows and re-derive them (`include/publish/backfill.py`)."""
        from include.airflow.callbacks import settings_from_connection
        from include.publish.every_minute import backfill
        from include.quality.audit import prepare_candidates, validate
        from include.storage.connections import with_connection

        settings = settings_from_connection()
        if dag_run is not None and backfill.is_backfill_run(dag_run.run_type):
            return backfill.audit_and_publish(settings, run_id)
        pinned = with_connection(settings, prepare_candidates)
        if not pinned["batches"]:
            print("no staged batch waits for publishing")
            return {**pinned, "success": True, "rules": {}, "table_checks": {}}
        result = {**pinned, **validate(settings, run_id)}
        failing = {name: r["unexpected_count"] for name, r in result["rules"].items() if r["unexpected_count"]}
        print(f"audited {pinned['candidate_rows']} rows of {len(pinned['batches'])} batch(es) in "
              f"{result['validation_seconds']} s; failing rows per rule: {failing or 'none'}; "
              f"Data Docs: {result['data_docs']}")
        return result

    @task(on_failure_callback=record_pipeline_failure)
    def publish(audit_result: dict, run_id: str | None = None) -> dict:
        """One transaction: good rows → `ecommerce_events`, failing rows → `dead_letter_events`, metrics."""
        from include.airflow.callbacks import settings_from_connection
        from include.ops import circuit_breaker
        from include.publish.every_minute import publish as publish_batches
        from include.storage.connections import with_connection

        if audit_result.get("backfill"):  # published by the backfill's audit task, under its lock
            print(f"backfill re-read {audit_result.get('input_files', 0)} file(s), {audit_result['total']} rows: "
                  f"{audit_result.get('moved_to_events', 0)} moved into ecommerce_events, "
                  f"{audit_result.get('moved_to_dead_letter', 0)} into dead_letter_events (see dead_letter_moves)")
            return audit_result
        settings = settings_from_connection()
        summary = with_connection(settings, lambda conn: publish_batches(conn, audit_result, settings, run_id))
        breaker = circuit_breaker.breaker_from_settings(settings)
        with_connection(settings, lambda conn: circuit_breaker.transition(conn, breaker.on_success))
        print(f"published {len(summary['batches'])} batch(es): {summary['total']} rows -> {summary['valid']} valid, "
              f"{summary['invalid']} invalid, {summary['duplicates']} duplicates, {summary['late']} late, "
              f"{summary['quarantined_files']} file(s) quarantined; validity {summary['validity_rate']}%")
        return {**summary, "table_checks": audit_result.get("table_checks", {}), "data_docs": audit_result.get("data_docs")}

    @task
    def quality_gate(summary: dict, run_id: str | None = None) -> None:
        """Fail the run (the good rows are already published) when quality is below the threshold; alert
        (WARNING on a breach, a recovery when it clears, CRITICAL when dead letters grow too fast)."""
        from airflow.sdk.exceptions import AirflowFailException

        from include.airflow.callbacks import settings_from_connection
        from include.ops.alerts import after_quality_gate

        settings = settings_from_connection()
        threshold = settings.min_validity_rate
        problems = []
        if summary["total"] and summary["validity_rate"] < threshold:
            problems.append(f"validity rate {summary['validity_rate']}% is below MIN_VALIDITY_RATE {threshold}%")
        problems += [f"table check {name} failed (observed {check['observed_value']})"
                     for name, check in summary.get("table_checks", {}).items() if not check["success"]]
        after_quality_gate(settings, summary, problems, run_id)
        if problems:
            top = "; ".join(f"{r['rule']}: {r['rows']} rows (e.g. {', '.join(r['sample_event_ids'][:3]) or 'n/a'})"
                            for r in summary["failing_rules"][:3])
            raise AirflowFailException(
                "Data quality breach: " + "; ".join(problems)
                + f". Counts: {summary['total']} total, {summary['valid']} valid, {summary['invalid']} invalid, "
                f"{summary['duplicates']} duplicates. Top failing rules: {top or 'none'}. "
                f"Data Docs: {summary.get('data_docs')}. Dead letters: SELECT * FROM dead_letter_events "
                f"WHERE airflow_run_id = '{run_id}'"
            )
        print(f"quality ok: validity {summary['validity_rate']}% (threshold {threshold}%)")

    code_archive = package_code()
    ingest = SparkSubmitOperator(
        task_id="ingest",
        conn_id=SPARK_CONN_ID,
        application=str(SPARK_JOB),
        py_files=code_archive,
        name="ecommerce_events_ingest",
        application_args=[
            "--airflow-run-id", "{{ run_id }}",
            # a backfill run re-reads its data interval's archived files in batch mode (include/publish/backfill.py)
            "--run-type", "{{ 'backfill' if dag_run.run_type == 'backfill' else 'stream' }}",
            "--window-start", "{{ data_interval_start.isoformat() if data_interval_start else '' }}",
            "--window-end", "{{ data_interval_end.isoformat() if data_interval_end else '' }}",
        ],
        env_vars=SPARK_JOB_ENV,
        execution_timeout=timedelta(minutes=20),
        on_failure_callback=record_pipeline_failure,
        doc_md="Run the Spark ingest job (`spark_jobs/ingest_events.py`) over everything that has landed.",
    )
    audited = audit()
    detect_work() >> code_archive >> ingest >> audited
    quality_gate(publish(audited))


ecommerce_events()
