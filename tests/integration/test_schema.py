"""The analytics schema against a real PostgreSQL: every `make once` / `make run` migrates it to head at its start,
also several at once, and the tables hold the contract file's columns."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from include.settings import PROJECT_ROOT
from include.storage.migrations.runner import script_directory, upgrade_schema
from tests.fixtures.release_database import create_release_database

pytestmark = [pytest.mark.integration, pytest.mark.db]

START = "import sys; from include.storage.migrations.runner import upgrade_schema; print(upgrade_schema(sys.argv[1]))"


def test_starts_at_once_migrate_a_new_database_once_and_never_deadlock(pipeline):
    """Two `make once` started together would race to create the tables (and, on an existing database, take the
    tables' locks in different orders and deadlock): under the schema lock one applies the revisions and the
    others wait and find nothing to do. Processes, as the starts are: on a new database, and on one of the last
    release before versioning."""
    head = script_directory().get_current_head()
    for round_ in range(2):
        with pipeline.scratch_database(f"started_together_{round_}") as database:
            if round_ == 1:
                create_release_database(database)
            starts = [subprocess.Popen([sys.executable, "-c", START, database], cwd=PROJECT_ROOT, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}) for _ in range(4)]
            outcomes = [start.communicate(timeout=120) for start in starts]
            assert [start.returncode for start in starts] == [0] * 4, [err[-2000:] for _, err in outcomes]
            applied = sorted("applied=()" not in out for out, _ in outcomes)
            assert applied == [False, False, False, True], [out for out, _ in outcomes]
            assert all(f"after='{head}'" in out for out, _ in outcomes)


def _columns(pipeline, table: str) -> list[tuple[str, str]]:
    """(name, type) of a table's columns in order, types as format_type spells them (numeric(12,2), ...)."""
    return [(name, kind.replace(", ", ",")) for name, kind in pipeline.query(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,))]


def test_the_tables_hold_the_column_table(pipeline):
    """The revisions are SQL, but the event columns they create are the contract file's (names and types): a
    column added to one and not the other fails here, not in a COPY at 3 a.m. Their order is free: every COPY
    and INSERT names its columns, and a column the contract file gains later is added at the end of each table."""
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
    every candidate row. The baseline adopts a database of that release too: the table makes way for the view."""
    from include.contract.columns import CANDIDATE_COLUMNS

    with pipeline.scratch_database("copied_candidates") as database:
        create_release_database(database)
        with psycopg.connect(database) as conn:
            conn.execute("DROP VIEW audit_candidates")
            conn.execute("CREATE UNLOGGED TABLE audit_candidates (LIKE staging_events)")
            conn.execute("ALTER TABLE audit_candidates DROP COLUMN raw_data, DROP COLUMN parse_errors")
        assert upgrade_schema(database).adopted
        with psycopg.connect(database) as conn:
            assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'audit_candidates'::regclass").fetchone() == ("v",)
            assert [name for (name,) in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'audit_candidates'::regclass AND attnum > 0 "
                "ORDER BY attnum")] == list(CANDIDATE_COLUMNS)
