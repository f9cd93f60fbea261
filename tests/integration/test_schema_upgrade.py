"""The versioned schema against a real PostgreSQL: the database of the last release before versioning upgrades to
head with every row intact, a second upgrade does nothing, and a revision written with `make migration` is
applied once, whole or not at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import psycopg
import pytest

from include.settings import PROJECT_ROOT
from include.storage.migrations import SchemaError
from include.storage.migrations.runner import BASELINE, current_revision, script_directory, upgrade_schema
from tests.fixtures.release_database import (
    columns_of,
    create_release_database,
    fill_every_table,
    schema_dump,
    snapshot,
    tables,
)

pytestmark = [pytest.mark.integration, pytest.mark.db]

HEAD = script_directory().get_current_head()


def test_a_database_of_the_last_release_upgrades_to_head_with_every_row_intact(pipeline):
    with pipeline.scratch_database("release_upgrade") as release, pipeline.scratch_database("new_at_head") as new:
        create_release_database(release)
        fill_every_table(release, events=20_000)
        columns = columns_of(release)
        before = snapshot(release, columns)
        assert [table for table in tables(release) if before[table][0] == 0] == []  # rows in every table

        started = time.monotonic()
        upgrade = upgrade_schema(release)
        seconds = time.monotonic() - started
        assert (upgrade.before, upgrade.after, upgrade.adopted) == (None, HEAD, True)
        assert upgrade.applied[0] == BASELINE and upgrade.applied[-1] == HEAD
        assert snapshot(release, columns) == before
        upgrade_schema(new)
        upgraded_schema = schema_dump(release)
        assert upgraded_schema == schema_dump(new)  # an upgraded database has the schema of a new one

        again = upgrade_schema(release)
        assert (again.before, again.after, again.applied) == (HEAD, HEAD, ())
        assert snapshot(release, columns) == before and schema_dump(release) == upgraded_schema
        rows = {table: before[table][0] for table in columns}
        print(f"\nupgrade of the last release's database to {HEAD}: {seconds:.2f} s; rows kept: {rows}")


def test_a_new_database_at_the_baseline_is_the_schema_of_the_last_release(pipeline):
    with pipeline.scratch_database("release") as release, pipeline.scratch_database("baseline") as baseline:
        create_release_database(release)
        upgrade_schema(baseline, target=BASELINE)
        assert schema_dump(baseline, without_version_table=True) == schema_dump(release)


def test_the_view_a_contract_revision_writes_is_the_one_at_head(pipeline):
    """``columns.audit_candidates_view_sql`` writes the view into contract revisions: it must stay the definition
    the newest revision gave it, or a new contract column would quietly change what the audit validates."""
    from include.contract.columns import CANDIDATE_COLUMNS
    from include.storage.migrations.columns import audit_candidates_view_sql

    written = audit_candidates_view_sql(CANDIDATE_COLUMNS).replace("VIEW audit_candidates", "VIEW written_view")
    with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
        conn.execute(written)
        at_head, generated = (conn.execute("SELECT pg_get_viewdef(%s::regclass)", (name,)).fetchone()[0]
                              for name in ("audit_candidates", "written_view"))
        conn.rollback()
    assert generated == at_head


def test_a_database_a_newer_release_migrated_is_refused_untouched(pipeline):
    with pipeline.scratch_database("newer_release") as newer:
        upgrade_schema(newer)
        with psycopg.connect(newer) as conn:
            conn.execute("UPDATE pipeline_schema_version SET version_num = '9999'")
        with pytest.raises(SchemaError, match="at schema revision 9999, which this code does not have"):
            upgrade_schema(newer)
        with psycopg.connect(newer) as conn:
            assert current_revision(conn) == "9999"


RUN = textwrap.dedent("""
    import sys
    from include.storage.migrations import SchemaError
    from include.storage.migrations.authoring import write_revision
    from include.storage.migrations.runner import upgrade_schema
    if sys.argv[1] == "write":
        print(write_revision(sys.argv[2]))
    else:
        try:
            print(upgrade_schema(sys.argv[2]).describe())
        except SchemaError as error:
            sys.exit(str(error))
""")


def in_copy(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN, *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)


def test_a_revision_written_with_make_migration_is_applied_once_and_never_empty(pipeline, tmp_path):
    """The way a schema change is made (docs/schema.md): `make migration NAME=...` writes the next revision, its
    author writes the SQL, the next start applies it. Left without SQL it is refused, with nothing applied."""
    root = tmp_path / "tree"
    shutil.copytree(PROJECT_ROOT / "include", root / "include", ignore=shutil.ignore_patterns("__pycache__"))
    with pipeline.scratch_database("deployment") as deployment:
        upgrade_schema(deployment)
        written = in_copy(root, "write", "requested_by on backfills")
        assert written.returncode == 0, written.stderr[-3000:]
        revision = root / written.stdout.strip().splitlines()[-1]
        assert revision.name == f"{int(HEAD) + 1:04d}_requested_by_on_backfills.py"

        refused = in_copy(root, "upgrade", deployment)
        assert refused.returncode != 0 and "a revision without SQL" in refused.stderr, refused.stderr[-3000:]
        assert f"schema revision {int(HEAD) + 1:04d} failed" in refused.stderr
        with psycopg.connect(deployment) as conn:
            assert current_revision(conn) == HEAD

        text = revision.read_text()
        revision.write_text(text.replace("-- ALTER TABLE pipeline_backfill_ledger ADD COLUMN requested_by TEXT;",
                                         "ALTER TABLE pipeline_backfill_ledger ADD COLUMN requested_by TEXT;"))
        first, second = in_copy(root, "upgrade", deployment), in_copy(root, "upgrade", deployment)
        assert first.returncode == 0, first.stderr[-3000:]
        assert f"migrated from revision {HEAD} to {int(HEAD) + 1:04d}" in first.stdout
        assert "up to date" in second.stdout
        with psycopg.connect(deployment) as conn:
            assert conn.execute("SELECT data_type FROM information_schema.columns WHERE table_name = "
                                "'pipeline_backfill_ledger' AND column_name = 'requested_by'").fetchone() == ("text",)
