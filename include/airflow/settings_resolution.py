"""The settings a task, a callback or the UI runs with: the environment's, with the database taken from an
Airflow connection and the live thresholds from Airflow Variables.

Airflow connections are the one source of truth for the databases (DESIGN "Promises" 8): ``ecommerce_postgres``
(the writer the pipeline and the Spark executors use), ``ecommerce_postgres_reader`` (the UI pages) and, at
start-up, ``ecommerce_postgres_owner`` (the schema). Every field of the connection is honoured, its extra's
libpq parameters (``sslmode``, ``options``, ...) too. Imported inside tasks only, never at DAG parse time.
"""

from __future__ import annotations

import json
from dataclasses import replace

from include.names import METADATA_CONN_ID, POSTGRES_CONN_ID
from include.settings import Settings, get_settings

# Settings an operator changes in the UI (Admin -> Variables) without a restart: read when a task runs, over
# the environment, for that run only (docs/configuration.md, "Live settings").
LIVE_VARIABLES = {"max_price": "ecommerce_max_price", "min_validity_rate": "ecommerce_min_validity_rate",
                  "rule_severity": "ecommerce_rule_severity"}


def with_connection_fields(settings: Settings, *, host: str | None, port: int | str | None, schema: str | None,
                           login: str | None, password: str | None, extra: str | dict | None) -> Settings:
    """``settings`` whose database is the one these connection fields name (an Airflow connection's: the
    ``schema`` field is the database). A field left empty keeps the environment's value, except the password
    and the extra, which are the connection's (empty: none)."""
    if isinstance(extra, dict):
        extra = json.dumps(extra)
    return replace(
        settings,
        postgres_host=host or settings.postgres_host,
        postgres_port=int(port or 5432),
        postgres_db=schema or settings.postgres_db,
        postgres_user=login or settings.postgres_user,
        postgres_password=password or "",
        postgres_extra=extra or "",
    )


def settings_from_connection(conn_id: str = POSTGRES_CONN_ID, live: bool = True) -> Settings:
    """Settings from the environment, with the database taken from the Airflow connection ``conn_id`` and
    (``live``) the thresholds and rule severities from the Airflow Variables in ``LIVE_VARIABLES`` when set."""
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection(conn_id)
    settings = with_connection_fields(
        get_settings(), host=connection.host, port=connection.port, schema=connection.schema,
        login=connection.login, password=connection.password, extra=connection.extra)
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


def callback_settings() -> Settings:
    """The settings of an alert callback: the connection's database, else (no connection) the environment's,
    so alerts still reach the log and the file."""
    try:
        return settings_from_connection(live=False)
    except Exception:  # noqa: BLE001 - a callback must not raise
        return get_settings()
