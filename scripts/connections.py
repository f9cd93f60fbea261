"""The connections of the analytics database and of Spark, as Airflow has them: created when missing, never
overridden, and where each one comes from. Start-up runs it (scripts/pipeline.py) in a process configured like
the Airflow components, once the metadata database is migrated:

    python -m scripts.connections < definitions.json    # prints the resolved connections as JSON

For each definition (scripts/airflow_env.py ``connection_definitions``, made from POSTGRES_* and SPARK_MASTER):

* ``AIRFLOW_CONN_<ID>`` is set: Airflow reads that one (an environment variable shadows the metastore);
* the metastore has it (made by an earlier start, or in the UI, *Admin -> Connections*): that one, as edited;
* neither: it is created in the metastore from the definition, and from then on it is the one to edit.
"""

from __future__ import annotations

import json
import os
import sys

ENVIRONMENT, METASTORE, CREATED = "environment", "metastore", "created"


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
MISSING = "missing"


def same_server(a: dict, b: dict) -> bool:
    """Do two connections (host, port) name the same server? localhost, 127.0.0.1 and ::1 are one."""
    def where(c: dict) -> tuple[str, int]:
        host = (c.get("host") or "localhost").lower()
        return ("localhost" if host in LOCAL_HOSTS else host), int(c.get("port") or 5432)
    return where(a) == where(b)


def resolve(definitions: dict[str, dict]) -> dict[str, dict]:
    """kind -> the connection Airflow has for each definition (its fields and ``source``), creating the missing.

    The owner's and the reader's are created only beside a writer on the server the definitions name (the
    project's own): for a database elsewhere their logins are its DBA's to choose, and a missing one is reported
    (``source`` ``missing``), not guessed."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    resolved: dict[str, dict] = {}
    order = sorted(definitions, key=lambda kind: kind != "writer")  # the writer first: the others follow it
    for kind in order:
        definition = definitions[kind]
        conn_id = definition["conn_id"]
        variable = f"AIRFLOW_CONN_{conn_id.upper()}"
        if os.environ.get(variable):
            connection, source = Connection.get_connection_from_secrets(conn_id), ENVIRONMENT
            resolved[kind] = _fields(connection, source, variable)
            continue
        with create_session() as session:
            connection = session.scalar(select(Connection).where(Connection.conn_id == conn_id))
            source = METASTORE
            if connection is None and kind in ("owner", "reader") and not same_server(resolved["writer"], definition):
                resolved[kind] = {"conn_id": conn_id, "source": MISSING, "variable": variable}
                continue
            if connection is None:
                extra = definition.get("extra")
                connection = Connection(
                    conn_id=conn_id, conn_type=definition["conn_type"], host=definition.get("host"),
                    port=definition.get("port"), schema=definition.get("schema"), login=definition.get("login"),
                    password=definition.get("password"), extra=json.dumps(extra) if extra else None)
                session.add(connection)
                source = CREATED
            resolved[kind] = _fields(connection, source, variable)
    return resolved


def _fields(connection, source: str, variable: str) -> dict:
    return {"conn_id": connection.conn_id, "conn_type": connection.conn_type, "host": connection.host or "",
            "port": connection.port, "schema": connection.schema or "", "login": connection.login or "",
            "password": connection.password or "", "extra": connection.extra or "", "source": source,
            "variable": variable}


def main() -> int:
    json.dump(resolve(json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
