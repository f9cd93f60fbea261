"""Helpers for Airflow task bodies (imported inside tasks only, never at DAG parse time)."""

from __future__ import annotations

from dataclasses import replace

from include.names import METADATA_CONN_ID, POSTGRES_CONN_ID
from include.settings import Settings, get_settings

# Settings an operator changes in the UI (Admin -> Variables) without a restart: read when a task runs, over
# the environment, for that run only (README "Live settings").
LIVE_VARIABLES = {"max_price": "ecommerce_max_price", "min_validity_rate": "ecommerce_min_validity_rate",
                  "rule_severity": "ecommerce_rule_severity"}


def settings_from_connection(conn_id: str = POSTGRES_CONN_ID, live: bool = True) -> Settings:
    """Settings from the environment, with the database taken from the Airflow connection ``conn_id`` and
    (``live``) the thresholds and rule severities from the Airflow Variables in ``LIVE_VARIABLES`` when set."""
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    settings = get_settings()
    settings = replace(
        settings,
        postgres_host=connection.host or settings.postgres_host,
        postgres_port=int(connection.port or 5432),
        postgres_db=connection.schema or settings.postgres_db,
        postgres_user=connection.login or settings.postgres_user,
        postgres_password=connection.password or "",
    )
    if not live:
        return settings
    from airflow.sdk.exceptions import AirflowFailException

    from include.settings import SettingsError

    try:
        return with_live_variables(settings)
    except SettingsError as error:  # a retry would read the same value: fail the task now, saying which one
        raise AirflowFailException(str(error)) from error


def metadata_database_url(conn_id: str = METADATA_CONN_ID) -> str:
    """The SQLAlchemy URL of Airflow's metadata database, from the connection ``conn_id`` (extra
    ``sql_alchemy_conn``): a task cannot read it from the configuration, the Task SDK blanks it there."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

    try:
        url = BaseHook.get_connection(conn_id).extra_dejson.get("sql_alchemy_conn")
    except AirflowNotFoundException as error:
        raise AirflowFailException(
            f"connection {conn_id!r} is not defined: set AIRFLOW_CONN_{conn_id.upper()} to "
            '{"conn_type": "generic", "extra": {"sql_alchemy_conn": "<the metadata database URL>"}}') from error
    if not url:
        raise AirflowFailException(f"connection {conn_id!r} has no extra 'sql_alchemy_conn' (the metadata database URL)")
    return url


def with_live_variables(settings: Settings, lookup=None) -> Settings:
    """``settings`` with the Airflow Variables of ``LIVE_VARIABLES`` that are set. A bad value raises
    ``SettingsError`` naming the Variable: a typo never silently falls back to a default."""
    from dataclasses import fields

    from include.contract.rules import severities
    from include.settings import SettingsError

    if lookup is None:
        from airflow.sdk import Variable

        def lookup(key: str) -> str | None:
            return Variable.get(key, default=None)

    kinds = {f.name: type(f.default) for f in fields(Settings)}
    for name, variable in LIVE_VARIABLES.items():
        raw = lookup(variable)
        if raw is None or not str(raw).strip():
            continue
        try:
            value = kinds[name](str(raw).strip())
        except ValueError:
            raise SettingsError(f"Airflow Variable {variable}={raw!r} is not a valid {kinds[name].__name__}") from None
        candidate = replace(settings, **{name: value})
        try:
            candidate.validate()
            severities(candidate, source=f"Airflow Variable {variable}")
        except SettingsError as error:
            raise SettingsError(f"Airflow Variable {variable}={raw!r}: {error}") from None
        settings = candidate
    return settings


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

def _callback_settings() -> Settings:
    try:
        return settings_from_connection(live=False)
    except Exception:  # noqa: BLE001 - no database connection: alerts still reach the log and the file
        return get_settings()


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
