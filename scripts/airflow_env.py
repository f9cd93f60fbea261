"""The environment every local Airflow process runs with (`make run`, `make once`, the tests).

Airflow is configured entirely through AIRFLOW__* variables, so nothing outside the project is touched:
AIRFLOW_HOME is data/airflow, and the metadata database is `airflow` on the project's PostgreSQL server
(POSTGRES_HOST:POSTGRES_PORT), owned by its own role `airflow` (AIRFLOW_DB_PASSWORD). One connection is
derived here, not edited: AIRFLOW_CONN_AIRFLOW_METADATA, the metadata database's URL, for the housekeeping DAG's
`airflow db clean`.

The connections of the analytics database and of Spark are *not* exported: they live in Airflow (the
metastore, where the UI edits them, or AIRFLOW_CONN_* set by the user), and start-up creates the missing ones
from ``connection_definitions`` (scripts/pipeline.py), never overriding one that exists. Derived, like the
metadata's: AIRFLOW_CONN_AIRFLOW_API, this Airflow's REST API as the local admin, for backfills' notes.

    eval "$(.venv/bin/python -m scripts.airflow_env)"   # then use the `airflow` CLI against this setup
    eval "$(make -s env)"                                # the same, with the checkout's .env read first
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

from include.names import (
    METADATA_ROLE,
    OWNER_CONN_ID,
    OWNER_ROLE,
    POSTGRES_CONN_ID,
    READER_CONN_ID,
    READER_ROLE,
    SPARK_CONN_ID,
    WRITER_ROLE,
)
from include.settings import PROJECT_ROOT, Settings

VENV_BIN = Path(sys.executable).parent
ADMIN_USER = "admin"
METADATA_DATABASE = "airflow"

# The roles' passwords on the project's own server: the variable, else one made up once and kept in AIRFLOW_HOME
# (the connections made from them keep them too).
ROLE_PASSWORD_VARIABLES = {"owner": "POSTGRES_OWNER_PASSWORD", "writer": "POSTGRES_WRITER_PASSWORD",
                           "reader": "POSTGRES_READER_PASSWORD", "metadata": "AIRFLOW_DB_PASSWORD"}


def _persistent_secret(path: Path) -> str:
    """A random secret created once and kept in AIRFLOW_HOME, shared by all components (JWTs, sessions)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def airflow_home(environ: Mapping[str, str], default: Path | None = None) -> Path:
    return Path(environ.get("AIRFLOW_HOME") or default or PROJECT_ROOT / "data" / "airflow")


def role_passwords(environ: Mapping[str, str], home: Path | None = None) -> dict[str, str]:
    """owner / writer / reader / metadata -> password (ROLE_PASSWORD_VARIABLES, else kept in AIRFLOW_HOME)."""
    home = home or airflow_home(environ)
    return {kind: (environ.get(variable) or "").strip() or _persistent_secret(home / f".{variable.lower()}")
            for kind, variable in ROLE_PASSWORD_VARIABLES.items()}


def connection_definitions(settings: Settings, passwords: Mapping[str, str],
                           environ: Mapping[str, str] | None = None) -> dict[str, dict]:
    """The connections start-up creates when Airflow has none of that id, from POSTGRES_* and SPARK_MASTER: the
    analytics database's owner, writer and reader on POSTGRES_HOST:POSTGRES_PORT/POSTGRES_DB, and Spark."""
    environ = os.environ if environ is None else environ
    database = {"conn_type": "postgres", "host": settings.postgres_host, "port": settings.postgres_port,
                "schema": settings.postgres_db}
    if settings.postgres_extra:
        database["extra"] = json.loads(settings.postgres_extra)
    return {
        "owner": {"conn_id": OWNER_CONN_ID, **database, "login": OWNER_ROLE, "password": passwords["owner"]},
        "writer": {"conn_id": POSTGRES_CONN_ID, **database, "login": WRITER_ROLE, "password": passwords["writer"]},
        "reader": {"conn_id": READER_CONN_ID, **database, "login": READER_ROLE, "password": passwords["reader"]},
        "spark": {"conn_id": SPARK_CONN_ID, "conn_type": "spark", "host": environ.get("SPARK_MASTER") or "local[*]"},
    }


def as_environment(definitions: Mapping[str, Mapping]) -> dict[str, str]:
    """AIRFLOW_CONN_<ID> variables of ``definitions`` (for the tests and the bench, which define connections
    in the environment, as a deployment may)."""
    return {f"AIRFLOW_CONN_{d['conn_id'].upper()}": json.dumps({k: v for k, v in d.items() if k != "conn_id"})
            for d in definitions.values()}


def admin_password(airflow_home: Path, environ: Mapping[str, str]) -> str:
    """The UI login's password: AIRFLOW_ADMIN_PASSWORD, else `admin` for a local, loopback-only UI.

    Written where AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE points (Compose: a volume the
    api-server shares), else into ``airflow_home``."""
    password = environ.get("AIRFLOW_ADMIN_PASSWORD") or "admin"
    passwords_file = Path(environ.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
                          or airflow_home / "simple_auth_manager_passwords.json")
    passwords_file.parent.mkdir(parents=True, exist_ok=True)
    passwords_file.write_text(json.dumps({ADMIN_USER: password}))
    passwords_file.chmod(0o600)
    return password


def project_metadata_url(settings: Settings, environ: Mapping[str, str], home: Path | None = None) -> str:
    """The URL of Airflow's metadata database on the project's server: database `airflow` of role `airflow`.
    Airflow's metadata has credentials of its own: the analytics roles cannot read it, nor it theirs."""
    user, password = quote(METADATA_ROLE, safe=""), quote(role_passwords(environ, home)["metadata"], safe="")
    return f"postgresql+psycopg2://{user}:{password}@{settings.postgres_host}:{settings.postgres_port}/{METADATA_DATABASE}"


def airflow_api_connection(host: str, port: str, environ: Mapping[str, str]) -> str:
    """The ``airflow_api`` connection (JSON) for the api-server at ``host``:``port``, as the local admin."""
    return json.dumps({"conn_type": "http", "host": host, "port": int(port), "login": ADMIN_USER,
                       "password": environ.get("AIRFLOW_ADMIN_PASSWORD") or "admin"})


def airflow_environment(
    settings: Settings, environ: Mapping[str, str] | None = None, home_dir: Path | None = None
) -> dict[str, str]:
    """Variables to add to ``environ`` (default ``os.environ``) for a local Airflow of this project."""
    environ = dict(os.environ if environ is None else environ)
    home = airflow_home(environ, home_dir)
    api_host = environ.get("AIRFLOW_API_HOST", "127.0.0.1")
    api_port = environ.get("AIRFLOW_API_PORT", "8080")
    metadata_url = project_metadata_url(settings, environ, home)
    env = {
        "AIRFLOW_HOME": str(home),
        "PIPELINE_HOME": str(PROJECT_ROOT),
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), environ.get("PYTHONPATH", "")) if p),
        "PATH": os.pathsep.join((str(VENV_BIN), environ.get("PATH", ""))),
        "PYSPARK_PYTHON": environ.get("PYSPARK_PYTHON", sys.executable),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "simple_auth_manager_passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__API__HOST": api_host,
        "AIRFLOW__API__PORT": api_port,
        "AIRFLOW__API__BASE_URL": f"http://{api_host}:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{api_host}:{api_port}/execution/",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        # A scheduler loop that found nothing to do sleeps this long (Airflow's default: 1 s). Each hop from one
        # task to the next waits for such a loop: half the sleep halved the waits between tasks and the empty
        # minute for a little of an idle scheduler's CPU (docs/performance.md, "Figures behind choices in the code").
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
    }
    # Keep what the user configured explicitly.
    env = {key: value for key, value in env.items() if key in ("PATH", "PYTHONPATH") or key not in environ}
    for key, file_name in (("AIRFLOW__API_AUTH__JWT_SECRET", ".jwt_secret"), ("AIRFLOW__API__SECRET_KEY", ".api_secret_key")):
        if key not in environ:
            env[key] = _persistent_secret(home / file_name)
    if "AIRFLOW_CONN_AIRFLOW_API" not in environ:
        # the REST API of this Airflow, as the local admin: a backfill's covering run writes the notes of the runs
        # it covered and closes them (include/airflow/backfill_runs.py)
        env["AIRFLOW_CONN_AIRFLOW_API"] = airflow_api_connection(api_host, api_port, environ)
    if "AIRFLOW_CONN_AIRFLOW_METADATA" not in environ:
        # A task process has no metadata database in Airflow 3 (the Task SDK blanks sql_alchemy_conn, in its
        # environment too), so the one task that runs `airflow db clean` gets the URL through a connection:
        # the same URL the components use, whether built here or configured by the user.
        url = environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or metadata_url
        env["AIRFLOW_CONN_AIRFLOW_METADATA"] = json.dumps({"conn_type": "generic", "extra": {"sql_alchemy_conn": url}})
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print the local Airflow's environment as shell exports")
    parser.add_argument("--env-file", help="a .env file (relative: to the checkout) for what the environment lacks")
    args = parser.parse_args(argv)
    if args.env_file:
        from scripts.env_file import EnvFileError, load_env_file

        try:
            loaded = load_env_file(args.env_file)
        except EnvFileError as error:
            raise SystemExit(str(error)) from None
        # `eval "$(make -s env)"` must leave the shell as configured as the pipeline it talks to
        for key in sorted(loaded):
            print(f"export {key}={shlex.quote(loaded[key])}")
    for key, value in airflow_environment(Settings.from_env()).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
