"""Least privilege, as tested against a real PostgreSQL: each role tries each action (docs/security.md,
"Least privilege").

The session's database is set up as start-up sets up the project's own server (scripts/database_roles.py,
include/storage/privileges.py): the owner runs the DDL, the writer (the pipeline, the Spark executors) has DML on
the tables and nothing else, the reader (the UI pages, analysts) reads. Airflow's metadata has a role of its own.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from scripts.database_roles import logins

pytestmark = [pytest.mark.integration, pytest.mark.db]

ALLOWED, REFUSED = "allowed", "refused"


def as_role(pipeline, login, dbname: str | None = None) -> psycopg.Connection:
    return psycopg.connect(psycopg.conninfo.make_conninfo(
        pipeline.settings.postgres_conninfo, user=login.name, password=login.password,
        **({"dbname": dbname} if dbname else {})))


def outcome(conn: psycopg.Connection, statement: str) -> str:
    """Run ``statement`` and roll it back: allowed, or refused for want of a privilege."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(statement)
        return ALLOWED
    except (errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction):
        return REFUSED


ROW = "INSERT INTO ecommerce_events SELECT * FROM ecommerce_events WHERE false"  # privileges are checked all the same
ACTIONS = {
    "SELECT ecommerce_events": "SELECT count(*) FROM ecommerce_events",
    "SELECT v_data_quality_dashboard": "SELECT count(*) FROM v_data_quality_dashboard",
    "SELECT hourly_revenue": "SELECT count(*) FROM hourly_revenue",
    "INSERT ecommerce_events": ROW,
    "UPDATE dead_letter_events": "UPDATE dead_letter_events SET status = status",
    "DELETE rule_violations": "DELETE FROM rule_violations",
    "TRUNCATE staging_events": "TRUNCATE staging_events",
    "ANALYZE staging_events (pipeline_analyze)": "SELECT pipeline_analyze('staging_events')",
    "DROP TABLE ecommerce_events": "DROP TABLE ecommerce_events CASCADE",
    "ALTER TABLE ecommerce_events": "ALTER TABLE ecommerce_events ADD COLUMN extra_column text",
    "CREATE TABLE": "CREATE TABLE role_test (id int)",
    "CREATE INDEX": "CREATE INDEX role_test_index ON ecommerce_events (user_id)",
    "DROP VIEW v_data_quality_dashboard": "DROP VIEW v_data_quality_dashboard",
}
EXPECTED = {
    # role: the actions it may take; every other one is refused
    "owner": set(ACTIONS),
    "writer": {"SELECT ecommerce_events", "SELECT v_data_quality_dashboard", "SELECT hourly_revenue",
               "INSERT ecommerce_events", "UPDATE dead_letter_events", "DELETE rule_violations",
               "TRUNCATE staging_events", "ANALYZE staging_events (pipeline_analyze)"},
    "reader": {"SELECT ecommerce_events", "SELECT v_data_quality_dashboard", "SELECT hourly_revenue"},
}


def test_each_role_may_do_what_its_job_needs_and_nothing_more(pipeline):
    owner, writer, reader = logins(pipeline.env)
    matrix = {}
    for kind, login in (("owner", owner), ("writer", writer), ("reader", reader)):
        with as_role(pipeline, login) as conn:
            matrix[kind] = {action: outcome(conn, statement) for action, statement in ACTIONS.items()}
            flags = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
                                 "FROM pg_roles WHERE rolname = current_user").fetchone()
            assert flags == (False,) * 5, (kind, flags)
    print("\n".join(f"{kind:6} {action:45} {verdict}" for kind, row in matrix.items() for action, verdict in row.items()))
    for kind, row in matrix.items():
        assert {action for action, verdict in row.items() if verdict == ALLOWED} == EXPECTED[kind], (kind, row)


def test_the_writer_lends_analyze_only_for_the_work_tables(pipeline):
    _, writer, _ = logins(pipeline.env)
    with as_role(pipeline, writer) as conn, pytest.raises(errors.RaiseException, match="not a work table"):
        conn.execute("SELECT pipeline_analyze('ecommerce_events')")


def test_grants_hold_for_a_table_the_owner_creates_later(pipeline):
    """A migration (or a contract column's new table) made by the owner: ALTER DEFAULT PRIVILEGES gives the writer
    its DML and the reader its SELECT on it, with no grant of its own."""
    owner, writer, reader = logins(pipeline.env)
    with as_role(pipeline, owner) as conn:
        conn.execute("CREATE TABLE later_table (id bigserial PRIMARY KEY, note text)")
        conn.execute("CREATE VIEW v_later AS SELECT count(*) AS n FROM later_table")
        conn.commit()
    try:
        with as_role(pipeline, writer) as conn:
            assert outcome(conn, "INSERT INTO later_table (note) VALUES ('x')") == ALLOWED  # its sequence too
            assert outcome(conn, "DROP TABLE later_table") == REFUSED
        with as_role(pipeline, reader) as conn:
            assert outcome(conn, "SELECT * FROM later_table, v_later") == ALLOWED
            assert outcome(conn, "INSERT INTO later_table (note) VALUES ('x')") == REFUSED
    finally:
        with as_role(pipeline, owner) as conn:
            conn.execute("DROP TABLE later_table CASCADE")


def test_airflow_metadata_and_the_analytics_database_do_not_share_credentials(pipeline):
    """The metadata database belongs to role airflow (its own password); the pipeline's roles cannot read it and
    the airflow role cannot read the events."""
    from scripts.airflow_env import role_passwords
    from scripts.database_roles import Login

    pipeline.airflow_ready()  # `scripts.pipeline init`: the metadata role and database, migrated
    metadata = Login("airflow", role_passwords(pipeline.env)["metadata"])
    assert metadata.password not in {login.password for login in logins(pipeline.env)}
    assert "airflow:" in pipeline.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert pipeline.settings.postgres_password not in pipeline.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    owner, writer, reader = logins(pipeline.env)
    for login in (owner, writer, reader):
        with as_role(pipeline, login, dbname="airflow") as conn:
            assert outcome(conn, "SELECT count(*) FROM dag") == REFUSED, login.name
    with as_role(pipeline, metadata) as conn:
        assert outcome(conn, "SELECT count(*) FROM ecommerce_events") == REFUSED
    with as_role(pipeline, metadata, dbname="airflow") as conn:
        assert outcome(conn, "SELECT count(*) FROM dag") == ALLOWED


def test_a_connection_that_logs_in_as_the_administrator_is_refused(pipeline):
    """A deployment that defined ecommerce_postgres with the superuser (as every one did before the roles) is told
    what to change, and nothing is demoted."""
    from scripts.database_roles import Login, RoleError, provision_analytics

    owner, _, reader = logins(pipeline.env)
    admin = Login(pipeline.settings.postgres_user, pipeline.settings.postgres_password)
    with pytest.raises(RoleError, match="the server's administrator"):
        provision_analytics(pipeline.cluster.conninfo(), pipeline.settings.postgres_db, owner, admin, reader)
    assert pipeline.scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is True


def test_a_database_made_before_the_roles_is_handed_to_the_owner(pipeline):
    """Every database of the project was made by the administrator, who then owned every table: at the next start
    the database and its objects become the owner's, and the writer gets its DML, with the rows intact."""
    from psycopg import sql

    from include.storage.privileges import grant_privileges
    from scripts.database_roles import provision_analytics

    owner, writer, reader = logins(pipeline.env)
    admin = pipeline.cluster.conninfo()
    legacy = "legacy_ecommerce"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(legacy)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(legacy)))
    as_admin = psycopg.conninfo.make_conninfo(admin, dbname=legacy)
    with psycopg.connect(as_admin) as conn:
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO events (note) VALUES ('kept')")
        conn.execute("CREATE SEQUENCE standalone_sequence")
        conn.execute("CREATE VIEW v_events AS SELECT count(*) AS n FROM events")
        conn.execute("CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42'")
    try:
        provision_analytics(admin, legacy, owner, writer, reader)
        with psycopg.connect(as_admin) as conn:
            owners = dict(conn.execute(
                "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = 'public'").fetchall())
            assert set(owners.values()) == {owner.name}, owners
            assert conn.execute("SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'answer'").fetchone()[0] \
                == owner.name
            assert conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                                (legacy,)).fetchone()[0] == owner.name
        with psycopg.connect(psycopg.conninfo.make_conninfo(as_admin, user=owner.name, password=owner.password)) as conn:
            grant_privileges(conn, writer.name, reader.name)
        with psycopg.connect(psycopg.conninfo.make_conninfo(as_admin, user=writer.name, password=writer.password)) as conn:
            conn.execute("INSERT INTO events (note) VALUES ('new')")
            assert [n for (n,) in conn.execute("SELECT note FROM events ORDER BY id")] == ["kept", "new"]
            assert outcome(conn, "DROP TABLE events CASCADE") == REFUSED
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(legacy)))
