"""The analytics schema: ``sql/schema.sql`` and what derives from the contract file.

``apply_schema`` creates every table, index and view that is missing (idempotent); the columns a contract file
gains are added to the tables that carry a row's contract columns (``add_contract_columns``), and the audit's
view is built from the column table (``create_audit_candidates_view``).
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from include.contract.columns import BY_NAME, CANDIDATE_COLUMNS, EVENT_COLUMNS, STAGED_COLUMNS
from include.names import SCHEMA_LOCK
from include.storage.locks import xact_lock

SCHEMA_SQL = Path(__file__).resolve().parent / "sql" / "schema.sql"


def apply_schema(conn: psycopg.Connection) -> None:
    """Create every table, index and view that is missing (idempotent).

    Every `make once` / `make run` applies it. Two of them starting together would take the tables' locks in
    different orders (ALTER TABLE, CREATE OR REPLACE VIEW) and deadlock, so one waits for the other."""
    with conn.transaction():
        xact_lock(conn, SCHEMA_LOCK)
        conn.execute(SCHEMA_SQL.read_text())
        add_contract_columns(conn)
        create_audit_candidates_view(conn)


# The tables that carry a row's contract columns (schema.sql declares today's; a column the contract file
# gains later is added by ``add_contract_columns``, at the end of each table).
CONTRACT_TABLES = {"staging_events": STAGED_COLUMNS, "revalidation_candidates": EVENT_COLUMNS,
                   "ecommerce_events": EVENT_COLUMNS}


def create_audit_candidates_view(conn: psycopg.Connection) -> None:
    """(Re)create the view ``audit_candidates``: what the every-minute audit validates and the publish routes.

    The staged rows of the batches the audit pinned (``audit_pinned_batches``) that parsed, minus the ones it
    excluded (``audit_excluded_rows``: later occurrences of an event_id, event_ids already stored): one row per
    event_id, read where it lies in ``staging_events``, typed columns only (``CANDIDATE_COLUMNS``), so no
    candidate row is copied. Built from the column table, so a column the contract file gains is in it; it is
    replaced only when its columns differ (a replace waits for every reader of the view)."""
    if _column_names(conn, "audit_candidates") == list(CANDIDATE_COLUMNS):
        return
    conn.execute("DROP VIEW IF EXISTS audit_candidates")
    conn.execute(f"""
        CREATE VIEW audit_candidates AS
        SELECT {", ".join("s." + c for c in CANDIDATE_COLUMNS)}
          FROM staging_events s
          JOIN audit_pinned_batches p ON (p.spark_query_id, p.spark_batch_id) = (s.spark_query_id, s.spark_batch_id)
         WHERE s.parse_errors IS NULL
           AND NOT EXISTS (SELECT 1 FROM audit_excluded_rows x WHERE x.staging_row_id = s.staging_row_id)""")


def _column_names(conn: psycopg.Connection, table: str) -> list[str]:
    """The columns of ``table`` (or view) in the current schema, in their order; [] if it does not exist."""
    return [name for (name,) in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = %s ORDER BY ordinal_position", (table,))]


def add_contract_columns(conn: psycopg.Connection) -> list[str]:
    """Add the columns the contract file (``include/contract/contract.yaml``) declares and a table lacks:
    a new version's columns need no DDL of their own. Returns ``table.column`` of each one added."""
    from psycopg import sql

    added = []
    for table, columns in CONTRACT_TABLES.items():
        present = set(_column_names(conn, table))
        for name in columns:
            if name not in present:
                conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    sql.Identifier(table), sql.Identifier(name), sql.SQL(BY_NAME[name].sql_type)))
                added.append(f"{table}.{name}")
    return added
