"""The schema script against a real PostgreSQL: every `make once` / `make run` applies it, also concurrently."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from include.storage.schema import apply_schema

pytestmark = [pytest.mark.integration, pytest.mark.db]


def test_the_schema_applied_by_several_processes_at_once_never_deadlocks(pipeline):
    """Two `make once` started together would deadlock here without the schema lock (ALTER TABLE and
    CREATE OR REPLACE VIEW take the tables' locks in different orders); with it one waits for the other."""

    def apply() -> None:
        with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
            apply_schema(conn)

    for _ in range(5):
        with ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(apply) for _ in range(4)]:
                future.result()
    assert pipeline.scalar("SELECT count(*) FROM information_schema.columns "
                           "WHERE table_name = 'dead_letter_events' AND column_name = 'status'") == 1


def _columns(pipeline, table: str) -> list[tuple[str, str]]:
    """(name, type) of a table's columns in order, types as format_type spells them (numeric(12,2), ...)."""
    return [(name, kind.replace(", ", ",")) for name, kind in pipeline.query(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,))]


def test_schema_sql_declares_the_column_table(pipeline):
    """schema.sql stays SQL, but its event columns are the contract file's (names and types): a column added
    to one and not the other fails here, not in a COPY at 3 a.m. Their order is free: every COPY and INSERT
    names its columns, and a column the contract file gains later is added at the end of each table."""
    from include.contract.columns import CANDIDATE_COLUMNS, COLUMNS, EVENT_COLUMNS, STAGING_KEY_COLUMNS

    declared = [(c.name, c.sql_type) for c in COLUMNS]
    staging = _columns(pipeline, "staging_events")
    assert [name for name, _ in staging[:len(STAGING_KEY_COLUMNS)]] == list(STAGING_KEY_COLUMNS)
    assert sorted(staging[len(STAGING_KEY_COLUMNS):]) == sorted(declared)

    events = [column for column in _columns(pipeline, "ecommerce_events") if column[0] in EVENT_COLUMNS]
    assert sorted(events) == sorted(column for column in declared if column[0] in EVENT_COLUMNS)
    run_lineage = {"processed_at", "airflow_run_id", "spark_query_id", "spark_batch_id"}
    assert {name for name, _ in _columns(pipeline, "ecommerce_events")} - set(EVENT_COLUMNS) == run_lineage

    assert sorted(name for name, _ in _columns(pipeline, "audit_candidates")) == sorted(CANDIDATE_COLUMNS)
    assert _columns(pipeline, "revalidation_candidates") == staging  # a staged row, raw line included


def test_the_feed_columns_ecommerce_events_requires_are_the_contracts_not_empty_ones(pipeline):
    """ecommerce_events declares NOT NULL exactly the feed columns the contract file marks ``not_empty``: the
    typing dead-letters a row that leaves one of them empty, so the publish never meets a NULL there, and no
    other feed column is one the table refuses while the contract lets a row leave it empty."""
    from include.contract.columns import FEED_COLUMNS, NOT_EMPTY_COLUMNS

    not_null = {name for (name,) in pipeline.query(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'ecommerce_events'::regclass AND attnum > 0 "
        "AND NOT attisdropped AND attnotnull")}
    assert not_null & set(FEED_COLUMNS) == set(NOT_EMPTY_COLUMNS)



def test_a_database_of_the_release_that_copied_the_candidates_gets_the_view(pipeline):
    """Before the audit validated the staged rows where they lie, ``audit_candidates`` was a table, a copy of
    every candidate row. Applying today's schema to such a database replaces the table by the view."""
    from include.contract.columns import CANDIDATE_COLUMNS

    with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
        conn.execute("DROP VIEW audit_candidates")
        conn.execute("CREATE UNLOGGED TABLE audit_candidates (LIKE staging_events)")
        conn.execute("ALTER TABLE audit_candidates DROP COLUMN raw_data, DROP COLUMN parse_errors")
        conn.commit()
        apply_schema(conn)
    assert pipeline.scalar("SELECT relkind FROM pg_class WHERE oid = 'audit_candidates'::regclass") == "v"
    assert [name for name, _ in _columns(pipeline, "audit_candidates")] == list(CANDIDATE_COLUMNS)
