"""Who may do what in the analytics database, granted by its owner (the role of ``ecommerce_postgres_owner``).

The owner holds the DDL; the writer (``ecommerce_postgres``: the tasks and the Spark executors) gets DML on the
tables and sequences, nothing else; the reader (``ecommerce_postgres_reader``: the UI pages, analysts, whoever
reads the hourly rollup) gets SELECT. ``ALTER DEFAULT PRIVILEGES`` makes the same grants hold for every table
the owner creates later (a migration, a contract column). Applied after the schema, at every start
(idempotent). The roles themselves are made by an administrator: scripts/database_roles.py.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from include.names import SCHEMA_LOCK
from include.storage.locks import xact_lock

# The work tables a writer ANALYZEs after filling them: the planner needs their statistics (without them the
# publish's anti-join took a 9-minute plan). ANALYZE is the owner's, so the owner lends it through this function,
# for these tables only.
ANALYZED_TABLES = ("staging_events", "audit_pinned_batches", "audit_excluded_rows", "revalidation_candidates")
ANALYZE_FUNCTION = "pipeline_analyze"


def grant_privileges(conn: psycopg.Connection, writer: str, reader: str | None) -> None:
    """As the owner: DML to ``writer``, SELECT to ``reader`` (None: no reader defined), on what exists and on what
    the owner creates later."""
    w, db = sql.Identifier(writer), sql.Identifier(conn.info.dbname)
    statements = [
        # nobody but the owner creates objects (PostgreSQL 15's default for a new database; older ones granted it)
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db, w),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(w),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO {}").format(w),
        sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {}").format(w),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES "
                "TO {}").format(w),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {}").format(w),
        sql.SQL("""CREATE OR REPLACE FUNCTION {fn}(target regclass) RETURNS void
                   LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
                   BEGIN
                     IF target::text <> ALL ({tables}) THEN
                       RAISE EXCEPTION 'pipeline_analyze: % is not a work table of the pipeline', target;
                     END IF;
                     EXECUTE format('ANALYZE %s', target);
                   END $$""").format(fn=sql.Identifier(ANALYZE_FUNCTION),
                                     tables=sql.Literal(list(ANALYZED_TABLES))),
        sql.SQL("REVOKE ALL ON FUNCTION {}(regclass) FROM PUBLIC").format(sql.Identifier(ANALYZE_FUNCTION)),
        sql.SQL("GRANT EXECUTE ON FUNCTION {}(regclass) TO {}").format(sql.Identifier(ANALYZE_FUNCTION), w),
    ]
    if reader and reader != writer:
        r = sql.Identifier(reader)
        statements += [
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, r),
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(r),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(r),
            sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public "
                    "FROM {}").format(r),
            sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {}").format(r),
        ]
    with conn.transaction():
        xact_lock(conn, SCHEMA_LOCK)  # two start-ups granting at once: PostgreSQL refuses the second's GRANTs
        for statement in statements:
            conn.execute(statement)


def analyze(conn: psycopg.Connection, *tables: str) -> None:
    """ANALYZE the pipeline's work ``tables``: through the owner's ``pipeline_analyze`` where it exists (the
    writer owns no table), else directly (a database set up before the roles, or as its owner)."""
    lent = conn.execute("SELECT to_regprocedure(%s) IS NOT NULL", (f"{ANALYZE_FUNCTION}(regclass)",)).fetchone()[0]
    for table in tables:
        if lent:
            conn.execute(sql.SQL("SELECT {}(%s::regclass)").format(sql.Identifier(ANALYZE_FUNCTION)), (table,))
        else:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
