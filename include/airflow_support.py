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
