"""`make run` against an external PostgreSQL, defined the Airflow way (connections in the metastore).

A second local cluster on another port stands in for a team's own server, with a database name, administrator,
roles and passwords of its own, none of them the project's defaults. Its DBA (this test) makes the roles with
scripts/database_roles.py; the connections are imported into Airflow's metastore (`airflow connections import`),
as a team does; POSTGRES_* still name the project's server, on a port where nothing runs. `make run FEED=off`
then starts no local analytics cluster, applies the schema there as its owner, and a run stores the landed rows
there, written by its writer role.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from include.names import DAG_ID, HOURLY_REVENUE_DAG_ID, HOUSEKEEPING_DAG_ID, RETENTION_DAG_ID
from scripts.database_roles import Login, provision_analytics
from scripts.generator import EventGenerator
from scripts.local_postgres import LocalPostgres
from tests.fixtures.pipeline import PROJECT_ROOT, free_port
from tests.fixtures.ui import answers, trigger_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

ROWS = 30
PASSWORD = "external-Passw0rd-admin"
DATABASE = "shop_analytics"
CONN_IDS = ("ecommerce_postgres", "ecommerce_postgres_owner", "ecommerce_postgres_reader")


@pytest.fixture(scope="module")
def external():
    """The team's server: its own administrator, database and roles (names and passwords not the project's)."""
    root = Path(tempfile.mkdtemp(prefix="ecom-external-"))  # not under pytest's 0700 directory: the postgres user
    root.chmod(0o755)                                         # must reach its data directory
    server = LocalPostgres(root / "data", free_port(), "dba_admin", f"dba-{secrets.token_hex(8)}")
    server.ensure()
    roles = {kind: Login(f"shop_{kind}", f"{kind}-{secrets.token_hex(8)}") for kind in ("owner", "writer", "reader")}
    provision_analytics(server.conninfo(), DATABASE, roles["owner"], roles["writer"], roles["reader"])
    yield server, roles
    server.stop(mode="immediate")
    shutil.rmtree(root, ignore_errors=True)


def connections(server: LocalPostgres, roles: dict[str, Login]) -> dict[str, dict]:
    """The three connections as `airflow connections import` takes them; the writer's with an extra."""
    def postgres(login: Login, extra: dict | None = None) -> dict:
        return {"conn_type": "postgres", "host": "127.0.0.1", "port": server.port, "schema": DATABASE,
                "login": login.name, "password": login.password, "extra": json.dumps(extra or {})}
    return {"ecommerce_postgres": postgres(roles["writer"], {"sslmode": "disable", "application_name": "shop-writer"}),
            "ecommerce_postgres_owner": postgres(roles["owner"]),
            "ecommerce_postgres_reader": postgres(roles["reader"])}


def test_make_run_uses_the_external_database_of_the_connection_and_starts_no_cluster(pipeline, external,
                                                                                     tmp_path):
    server, roles = external
    pipeline.reset()
    pipeline.airflow_ready()
    pipeline.fail_unfinished_runs(DAG_ID)
    base, env = pipeline.api_server_env(AIRFLOW_ADMIN_PASSWORD=PASSWORD, PIPELINE_LOG_DIR=str(tmp_path / "logs"))
    # the connections are the metastore's, not the environment's; the metadata database is given (the session's)
    env = {key: value for key, value in env.items() if key not in {f"AIRFLOW_CONN_{c.upper()}" for c in CONN_IDS}}
    unused_port, no_cluster = free_port(), tmp_path / "no-local-cluster"
    env.update(POSTGRES_PORT=str(unused_port), PGDATA_DIR=str(no_cluster))
    imported = tmp_path / "connections.json"
    imported.write_text(json.dumps(connections(server, roles)))
    airflow = str(Path(sys.executable).parent / "airflow")
    done = subprocess.run([airflow, "connections", "import", "--overwrite", str(imported)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    generator = EventGenerator(11, invalid_ratio=0.0, duplicate_ratio=0.0, late_ratio=0.0)
    rows = generator.generate_batch(ROWS, "v3")
    ids = [row["event_id"] for row in rows]
    log = tmp_path / "run.log"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "scripts.pipeline", "run", "--no-generator"], env=env,
                                   cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT)
    writer = psycopg.conninfo.make_conninfo(server.conninfo(), dbname=DATABASE)  # as its administrator
    try:
        deadline = time.monotonic() + 300
        while not answers(f"{base}/api/v2/monitor/health"):
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(1)
        generator.write_batch(rows, "v3", pipeline.landing_dir)
        trigger_run(base, PASSWORD, DAG_ID)
        while True:
            with psycopg.connect(writer) as conn:
                stored = conn.execute("SELECT count(*) FROM ecommerce_events WHERE event_id = ANY(%s)",
                                      (ids,)).fetchone()[0]
            if stored == ROWS:
                break
            assert process.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline + 300, (stored, log.read_text()[-4000:])
            time.sleep(2)
        output = log.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
        pipeline.pause([DAG_ID, RETENTION_DAG_ID, HOUSEKEEPING_DAG_ID, HOURLY_REVENUE_DAG_ID])
        subprocess.run([airflow, "connections", "delete", *CONN_IDS[:1]], env=env, capture_output=True, timeout=120)
        for conn_id in CONN_IDS[1:]:
            subprocess.run([airflow, "connections", "delete", conn_id], env=env, capture_output=True, timeout=120)
    print(output)
    # start-up said which connections it used, and started no cluster for the external database
    assert f"connection ecommerce_postgres shop_writer@127.0.0.1:{server.port}/{DATABASE}: from Airflow's metastore" \
        in output
    assert f"points at 127.0.0.1:{server.port}/{DATABASE}, not this project's server: no local analytics cluster" \
        in output
    assert "started PostgreSQL" not in output and not no_cluster.exists()
    # the rows are there, not in the project's database; the schema is the owner's, the rows the writer's
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events WHERE event_id = ANY(%s)", (ids,)) == 0
    with psycopg.connect(writer) as conn:
        owners = {owner for (owner,) in conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")}
        assert owners == {"shop_owner"}
        assert conn.execute("SELECT DISTINCT split_part(airflow_run_id, '__', 1) FROM ecommerce_events "
                            "WHERE event_id = ANY(%s)", (ids,)).fetchall() == [("manual",)]
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'shop_writer'").fetchone()[0]
        assert superuser is False
    assert os.environ.get("AIRFLOW_CONN_ECOMMERCE_POSTGRES") is None
