"""The bodies of ``ecommerce_events``' Python tasks; dags/ecommerce_events.py wires them.

Each reads its settings when it runs (the connection ``ecommerce_postgres``, Airflow Variables for the live
thresholds: include/airflow/callbacks.py), so nothing here runs at DAG parse time.
"""

from __future__ import annotations

from include.results import PublishSummary


def detect_work(dag_run, params: dict, run_id: str) -> bool:
    """Anything to do? If not, the run ends here: no JVM for an empty minute (or a covered backfill minute)."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.airflow import backfill_runs
    from include.airflow.settings_resolution import settings_from_connection
    from include.ops.detect import detect_every_minute_work

    settings = settings_from_connection()
    try:
        run = backfill_runs.Run.of(dag_run, params)
        if backfill_runs.takes_backfill_path(run):
            return backfill_runs.detect(settings, run)
    except backfill_runs.ReprocessParamsInvalid as error:  # the same params on every retry: fail now, say why
        raise AirflowFailException(f"the Trigger form's window cannot be reprocessed: {error}") from error
    return detect_every_minute_work(settings, run_id)


def package_code() -> dict[str, str]:
    from include.airflow.packaging import build_class_archive, build_code_archive, driver_java_options

    build_class_archive()
    return {"py_files": str(build_code_archive()), "driver_java_options": driver_java_options()}


def choose_path(dag_run, params: dict) -> str:
    from include.airflow import backfill_runs

    return "backfill_ingest" if backfill_runs.takes_backfill_path(backfill_runs.Run.of(dag_run, params)) else "ingest"


def audit(run_id: str) -> dict:
    from include.airflow.settings_resolution import settings_from_connection
    from include.quality.audit import audit_staged_batches

    return audit_staged_batches(settings_from_connection(), run_id).to_xcom()


def publish(audit_result: dict, run_id: str, outlet_events) -> dict:
    from airflow.sdk.exceptions import AirflowFailException

    from include.airflow.settings_resolution import settings_from_connection
    from include.ops.circuit_breaker import record_published_run
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

        print("new column(s) in the feed, kept in rescued_data: " + ", ".join(c["name"] for c in summary.new_columns))
        alert_new_columns(settings, summary.new_columns, run_id)
    _announce(outlet_events, summary)
    return summary.to_xcom()


def rederive(dag_run, params: dict, run_id: str, outlet_events) -> dict:
    """Validate the chunk this run staged and re-derive it; then its note, and the runs it covered closed."""
    from include.airflow import backfill_runs
    from include.airflow.api import AirflowApi
    from include.airflow.settings_resolution import settings_from_connection
    from include.publish.backfill import rederive as rederive_chunk

    settings = settings_from_connection()
    summary = rederive_chunk(settings, run_id)
    print(summary.describe())
    chunk = backfill_runs.published_chunk(settings, run_id)
    if chunk is not None:
        backfill_runs.close_covered(settings, AirflowApi.from_connection(), backfill_runs.Run.of(dag_run, params),
                                    chunk, summary.moves)
    _announce(outlet_events, summary)
    return summary.to_xcom()


def quality_gate(run_id: str, ti) -> None:
    """Fail the run (the good rows are already published) when quality is below the threshold; alert. A
    backfill is judged once, on its totals, by the run that re-derived its last chunk."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.airflow.settings_resolution import settings_from_connection
    from include.ops.alerts import after_quality_gate, backfill_breach_alert, raise_alert
    from include.quality.gate import backfill_problems, breach_message, problems

    settings = settings_from_connection()
    published = [x for x in ti.xcom_pull(task_ids=["publish", "rederive"]) if x]  # the path the run took
    summary = PublishSummary.from_xcom(published[0])
    if summary.path == "backfill":
        from include.airflow.backfill_runs import published_chunk
        from include.publish.coverage import progress
        from include.storage.connections import with_connection

        chunk = published_chunk(settings, run_id)
        if chunk is None or not chunk.last:
            print("part of a backfill: it is judged once, on its totals, when its last chunk is re-derived")
            return
        done = with_connection(settings, lambda conn: progress(conn, chunk.request_key))
        found, rate = backfill_problems(done, settings.min_validity_rate)
        print(f"{chunk.request_key} re-derived whole: {done['rows']} rows, validity {rate}%")
        if found:
            raise_alert(settings, backfill_breach_alert(chunk, done, rate, found, run_id))
            raise AirflowFailException(f"{chunk.request_key}: " + "; ".join(found))
        return
    found = problems(summary, settings.min_validity_rate)
    after_quality_gate(settings, summary, found, run_id)
    if found:
        raise AirflowFailException(breach_message(summary, found, run_id))
    if summary.warnings:
        print(f"stored with warn-level violations (rule_violations): {summary.warned} row(s); "
              + "; ".join(f"{r.rule}: {r.rows}" for r in summary.warnings))
    print(f"quality ok: validity {summary.validity_rate}% (threshold {settings.min_validity_rate}%)")


def _announce(outlet_events, summary: PublishSummary) -> None:
    from include.airflow.assets import announce_publish

    announced = announce_publish(outlet_events, summary)
    print(f"asset events: {', '.join(announced)}" if announced
          else "no asset event: neither ecommerce_events nor dead_letter_events changed")
