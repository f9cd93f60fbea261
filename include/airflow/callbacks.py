"""The DAGs' callbacks: the circuit breaker's failure count and the alerts (include/ops/alerts/).

Their imports are lazy: the DAG files import this module at parse time. The settings they run with come from
include/airflow/settings_resolution.py.
"""

from __future__ import annotations

from include.airflow.settings_resolution import callback_settings as _callback_settings
from include.settings import Settings, get_settings


def record_pipeline_failure(context) -> None:
    """Task ``on_failure_callback`` (runs once retries are used up): count the failure in the circuit breaker,
    raise the ERROR alert, and a CRITICAL one when this failure opened the breaker.

    If PostgreSQL itself is unreachable the failure cannot be recorded; the next run's first task then
    fails on the same database, so no Spark job is paid for while it is down. The alert goes out anyway.
    """
    import logging
    from datetime import UTC, datetime

    from include.ops import circuit_breaker
    from include.storage.connections import with_connection

    settings = _callback_settings()
    error = context.get("exception")
    ti = context.get("ti") or context.get("task_instance")
    where = f"{getattr(ti, 'task_id', '?')}: {type(error).__name__ if error else 'failed'}: {error}"[:500]
    breaker = circuit_breaker.breaker_from_settings(settings)
    try:
        old, new = with_connection(settings, lambda conn: circuit_breaker.transition(
            conn, lambda state: breaker.on_failure(state, datetime.now(UTC), where)))
    except Exception:  # noqa: BLE001 - a callback must not hide the original failure
        logging.getLogger(__name__).exception("could not record the failure in the circuit breaker")
        alert_task_failure(context, settings)
        return
    opened = new.state == circuit_breaker.OPEN and old.state != circuit_breaker.OPEN
    if opened:
        logging.getLogger(__name__).critical("circuit breaker OPENED after %d consecutive failures: %s",
                                             new.consecutive_failures, where)
    alert_task_failure(context, settings, f"circuit breaker: {new.consecutive_failures} consecutive failed run(s), "
                       f"opens at CIRCUIT_BREAKER_THRESHOLD {settings.circuit_breaker_threshold}")
    if opened:
        from include.ops import alerts

        _, run_id = alerts.run_of(context)
        alerts.raise_alert(settings, alerts.breaker_open_alert(
            new.consecutive_failures, where, settings.circuit_breaker_cooldown_seconds, run_id,
            alerts.airflow_base_url()))


# --- alert callbacks (include/ops/alerts/); every import is lazy, none of them may raise ----------------------

def alert_task_failure(context, settings: Settings | None = None, breaker_note: str | None = None) -> None:
    """Task ``on_failure_callback``: ERROR, the task failed after its retries. A failed ``quality_gate`` is a
    data-quality breach the gate itself reported as a WARNING, so it is not an ERROR too."""
    from include.ops import alerts

    try:
        from airflow.sdk.exceptions import AirflowFailException

        ti = context.get("ti") or context.get("task_instance")
        error = context.get("exception")
        task_id = getattr(ti, "task_id", None) or "unknown task"
        if task_id == "quality_gate" and isinstance(error, AirflowFailException):
            return
        settings = settings or _callback_settings()
        _, run_id = alerts.run_of(context)
        text = f"{type(error).__name__}: {error}" if error else "failed (no exception recorded)"
        alerts.raise_alert(settings, alerts.task_failed_alert(
            task_id, alerts.redact(text, (settings.postgres_password,)), getattr(ti, "try_number", None), run_id,
            alerts.airflow_base_url(), breaker_note))
    except Exception:  # noqa: BLE001 - a callback must not hide the original failure
        alerts.log.exception("could not raise the task failure alert")


def alert_run_failure(context) -> None:
    """DAG ``on_failure_callback``: the safety net for a run that failed without a task alert (a task without
    callback, a timed-out run). Same condition as the task's alert, so it is not sent twice."""
    from include.ops import alerts

    try:
        ti = context.get("ti") or context.get("task_instance")
        task_id = getattr(ti, "task_id", None)
        if task_id == "quality_gate":
            return  # the gate's own WARNING said it
        settings = _callback_settings()
        _, run_id = alerts.run_of(context)
        reason = context.get("reason") or "failed"
        alerts.raise_alert(settings, alerts.task_failed_alert(
            task_id or "dag run", f"the DAG run failed ({reason})", getattr(ti, "try_number", None), run_id,
            alerts.airflow_base_url()))
    except Exception:  # noqa: BLE001
        alerts.log.exception("could not raise the run failure alert")


def check_feed_freshness(context) -> None:
    """DAG ``on_success_callback``: the freshness check (CRITICAL when no data arrives while FEED_EXPECTED).
    It runs after the run, outside every task, so the empty minute's `detect_work` pays nothing for it."""
    if not get_settings().feed_expected:
        return
    from include.ops import alerts

    try:
        alerts.check_freshness(_callback_settings(), alerts.run_of(context)[1])
    except Exception:  # noqa: BLE001
        alerts.log.exception("the freshness check failed")
