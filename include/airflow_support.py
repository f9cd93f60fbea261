"""Helpers for Airflow task bodies (imported inside tasks only, never at DAG parse time)."""

from __future__ import annotations

from dataclasses import replace

from include.settings import Settings, get_settings

POSTGRES_CONN_ID = "ecommerce_postgres"


def settings_from_connection(conn_id: str = POSTGRES_CONN_ID) -> Settings:
    """Settings from the environment, with the database taken from the Airflow connection ``conn_id``."""
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    settings = get_settings()
    return replace(
        settings,
        postgres_host=connection.host or settings.postgres_host,
        postgres_port=int(connection.port or 5432),
        postgres_db=connection.schema or settings.postgres_db,
        postgres_user=connection.login or settings.postgres_user,
        postgres_password=connection.password or "",
    )


def record_pipeline_failure(context) -> None:
    """Task ``on_failure_callback`` (runs once retries are used up): count the failure in the circuit breaker.

    If PostgreSQL itself is unreachable the failure cannot be recorded; the next run's first task then
    fails on the same database, so no Spark job is paid for while it is down.
    """
    import logging
    from datetime import UTC, datetime

    from include import circuit_breaker
    from include.retry import with_connection

    settings = settings_from_connection()
    error = context.get("exception")
    ti = context.get("ti") or context.get("task_instance")
    where = f"{getattr(ti, 'task_id', '?')}: {type(error).__name__ if error else 'failed'}: {error}"[:500]
    breaker = circuit_breaker.breaker_from_settings(settings)
    try:
        old, new = with_connection(settings, lambda conn: circuit_breaker.transition(
            conn, lambda state: breaker.on_failure(state, datetime.now(UTC), where)))
    except Exception:  # noqa: BLE001 - a callback must not hide the original failure
        logging.getLogger(__name__).exception("could not record the failure in the circuit breaker")
        return
    if new.state == circuit_breaker.OPEN and old.state != circuit_breaker.OPEN:
        logging.getLogger(__name__).critical("circuit breaker OPENED after %d consecutive failures: %s",
                                             new.consecutive_failures, where)
