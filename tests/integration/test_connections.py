"""Start-up and Airflow's connections: a missing one is created in the metastore, an existing one (edited in the UI)
is never overridden, an environment variable wins as it does in Airflow, and an external writer's owner is never
guessed (scripts/connections.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fixtures.pipeline import PROJECT_ROOT

pytestmark = [pytest.mark.integration]

IDS = {"writer": "test_writer", "owner": "test_owner", "reader": "test_reader"}


def resolve(env: dict[str, str], definitions: dict[str, dict]) -> dict[str, dict]:
    done = subprocess.run([sys.executable, "-m", "scripts.connections"], input=json.dumps(definitions), env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def edit_in_metastore(env: dict[str, str], conn_id: str, password: str) -> None:
    """What saving the connection in *Admin -> Connections* does: the model's password (Fernet-encrypted) set."""
    script = ("import sys\nfrom airflow.models.connection import Connection\nfrom airflow.utils.session import "
              "create_session\nfrom sqlalchemy import select\nwith create_session() as session:\n"
              "    session.scalar(select(Connection).where(Connection.conn_id == sys.argv[1])).set_password(sys.argv[2])\n")
    done = subprocess.run([sys.executable, "-c", script, conn_id, password], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def definitions(host: str, port: int, password: str) -> dict[str, dict]:
    return {kind: {"conn_id": conn_id, "conn_type": "postgres", "host": host, "port": port, "schema": "db",
                   "login": f"role_{kind}", "password": password, "extra": {"sslmode": "prefer"}}
            for kind, conn_id in IDS.items()}


def test_created_when_missing_then_never_overridden_and_the_environment_wins(pipeline):
    pipeline.airflow_ready()
    env = dict(pipeline.env)
    try:
        first = resolve(env, definitions("127.0.0.1", 5999, "first"))
        assert {c["source"] for c in first.values()} == {"created"}
        assert json.loads(first["writer"]["extra"]) == {"sslmode": "prefer"}
        # as if someone edited the writer in the UI: another password; start-up's next definitions differ again
        edit_in_metastore(env, IDS["writer"], "edited-in-ui")
        second = resolve(env, definitions("127.0.0.1", 5999, "second"))
        assert {c["source"] for c in second.values()} == {"metastore"}
        assert second["writer"]["password"] == "edited-in-ui" and second["owner"]["password"] == "first"
        # an AIRFLOW_CONN_* variable shadows the metastore, in Airflow and here alike
        env["AIRFLOW_CONN_TEST_WRITER"] = json.dumps({"conn_type": "postgres", "host": "db.env", "login": "w"})
        third = resolve(env, definitions("127.0.0.1", 5999, "third"))
        assert third["writer"]["source"] == "environment" and third["writer"]["host"] == "db.env"
    finally:
        pipeline.airflow_query("DELETE FROM connection WHERE conn_id = ANY(%s) RETURNING 1", (list(IDS.values()),))


def test_beside_an_external_writer_the_owner_and_reader_are_not_guessed(pipeline):
    pipeline.airflow_ready()
    env = {**pipeline.env, "AIRFLOW_CONN_TEST_WRITER": json.dumps(
        {"conn_type": "postgres", "host": "db.elsewhere", "port": 5432, "schema": "shop", "login": "w"})}
    try:
        found = resolve(env, definitions("127.0.0.1", 5999, "x"))
        assert found["owner"]["source"] == found["reader"]["source"] == "missing"
    finally:
        pipeline.airflow_query("DELETE FROM connection WHERE conn_id = ANY(%s) RETURNING 1", (list(IDS.values()),))
