"""Create the pipeline's PostgreSQL roles and hand them their databases: an administrator's job, done once.

    python -m scripts.database_roles     # as POSTGRES_USER (a superuser, or a role with CREATEROLE and CREATEDB)

`make run` does it on the project's own server (the local cluster, Compose's postgres), where POSTGRES_USER is
the server's administrator, as in the official postgres image. For another server, its DBA runs this once
(or the SQL it runs, docs/security.md) and then defines the connections. The roles' names and passwords are the
connections' (ecommerce_postgres_owner, ecommerce_postgres, ecommerce_postgres_reader): the connection is the
one source of truth, and a password changed there is the role's after the next start.

* the owner owns the analytics database and every object in it: the only role that runs DDL;
* the writer and the reader log in, with no superuser, CREATEDB, CREATEROLE or replication, own nothing, and
  get their privileges from the owner (include/storage/privileges.py);
* Airflow's metadata database belongs to a role of its own, which has nothing in the analytics database.

A database made before the roles (owned by the administrator, as every database of the project was) is handed
over: the database and each object in its schema public get the new owner.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class Login:
    name: str
    password: str


class RoleError(RuntimeError):
    """The roles cannot be set up as asked; the message says why."""


# Two start-ups at once (two `make once`, a scheduler and a worker) would ALTER the same roles together, and
# PostgreSQL refuses the second ("tuple concurrently updated"): the set-up takes this advisory lock first.
PROVISIONING_LOCK = 0x65636F6D726F6C65  # "ecomrole"


@contextlib.contextmanager
def administrator(admin_conninfo: str) -> Iterator[psycopg.Connection]:
    """The administrator's connection, holding the provisioning lock until the block ends."""
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (PROVISIONING_LOCK,))
        yield conn


def ensure_login(conn: psycopg.Connection, login: Login) -> None:
    """The role ``login.name`` exists, logs in with ``login.password`` and holds no privilege of its own."""
    name = sql.Identifier(login.name)
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login.name,)).fetchone():
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(name))
    conn.execute(sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
                         "PASSWORD {}").format(name, sql.Literal(login.password)))


def ensure_owned_database(conn: psycopg.Connection, database: str, owner: str) -> None:
    """Database ``database`` exists and belongs to ``owner``."""
    names = sql.Identifier(database), sql.Identifier(owner)
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(*names))
    else:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(*names))


# Every object of schema public not yet the owner's: tables (their indexes and the sequences of their serial
# columns follow), views, sequences of their own, functions. REASSIGN OWNED would be shorter, but the administrator
# that made them may be the bootstrap superuser, whose objects REASSIGN refuses to move.
_HAND_OVER = """
DO $$
DECLARE
  item record;
BEGIN
  FOR item IN
    SELECT format('ALTER %s %s OWNER TO %I',
                  CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
                                 WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, c.oid::regclass, {owner}) AS ddl
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND c.relowner <> {owner}::regrole
       AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid
                                              AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
    UNION ALL
    SELECT format('ALTER ROUTINE %s OWNER TO %I', p.oid::regprocedure, {owner})
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE n.nspname = 'public' AND p.proowner <> {owner}::regrole
  LOOP
    EXECUTE item.ddl;
  END LOOP;
END $$
"""


def hand_over(conninfo: str, owner: str) -> None:
    """As an administrator connected to the database of ``conninfo``: every object of its schema public to ``owner``."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL(_HAND_OVER).format(owner=sql.Literal(owner)))


def provision_analytics(admin_conninfo: str, database: str, owner: Login, writer: Login, reader: Login) -> None:
    """The three logins of the analytics database, ``database`` owned by ``owner`` with all it holds."""
    logins = (owner, writer, reader)
    if len({login.name for login in logins}) < 3:
        raise RoleError("the owner, the writer and the reader must be three roles: "
                        + ", ".join(login.name for login in logins))
    with administrator(admin_conninfo) as conn:
        admin = conn.execute("SELECT current_user").fetchone()[0]
        if admin in {login.name for login in logins}:
            raise RoleError(
                f"a connection logs in as {admin}, the server's administrator that makes the roles: the pipeline must "
                "write, read and own the schema as roles of their own (docs/security.md). Point the connection at "
                "its role (ecommerce_writer, ecommerce_owner, ecommerce_reader), or unset the AIRFLOW_CONN_* "
                "variable that names the administrator so start-up creates it")
        for login in logins:
            ensure_login(conn, login)
        ensure_owned_database(conn, database, owner.name)
        hand_over(psycopg.conninfo.make_conninfo(admin_conninfo, dbname=database), owner.name)


def provision_metadata(admin_conninfo: str, database: str, login: Login) -> None:
    """Airflow's metadata database ``database``, owned by its own role ``login``."""
    with administrator(admin_conninfo) as conn:
        ensure_login(conn, login)
        ensure_owned_database(conn, database, login.name)
        hand_over(psycopg.conninfo.make_conninfo(admin_conninfo, dbname=database), login.name)


def provision_with_schema(admin_conninfo: str, database: str, owner: Login, writer: Login, reader: Login) -> str:
    """``provision_analytics``, then the schema migrated and the privileges granted by the owner, as start-up does
    on the project's own server (for the tests and the bench, which make their own servers). Returns the owner's
    conninfo."""
    from include.storage.migrations.runner import upgrade_schema
    from include.storage.privileges import grant_privileges

    provision_analytics(admin_conninfo, database, owner, writer, reader)
    owner_conninfo = psycopg.conninfo.make_conninfo(admin_conninfo, dbname=database, user=owner.name,
                                                    password=owner.password)
    upgrade_schema(owner_conninfo)
    with psycopg.connect(owner_conninfo) as conn:
        grant_privileges(conn, writer.name, reader.name)
    return owner_conninfo


def logins(environ, settings=None) -> tuple[Login, Login, Login]:
    """The owner's, the writer's and the reader's login as start-up defines them from ``environ``."""
    from include.settings import Settings
    from scripts.airflow_env import connection_definitions, role_passwords

    definitions = connection_definitions(settings or Settings.from_env(environ), role_passwords(environ), environ)
    return tuple(Login(definitions[k]["login"], definitions[k]["password"]) for k in ("owner", "writer", "reader"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-file", help="a .env file (relative: to the checkout) for what the environment lacks")
    args = parser.parse_args(argv)
    if args.env_file:
        from scripts.env_file import load_env_file

        load_env_file(args.env_file)
    import os

    from include.settings import Settings

    settings = Settings.from_env()
    owner, writer, reader = logins(os.environ, settings)
    try:
        provision_analytics(settings.postgres_conninfo, settings.postgres_db, owner, writer, reader)
    except RoleError as error:
        raise SystemExit(str(error)) from None
    print(f"roles {owner.name} (owner), {writer.name} (writer), {reader.name} (reader) ready in "
          f"database {settings.postgres_db} on {settings.postgres_host}:{settings.postgres_port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
