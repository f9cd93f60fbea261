"""The peers of `make bench` (benchmarks/peers.py) store exactly the rows they must, in a real PostgreSQL.

The DuckDB peer does the pipeline's work: its rows are ``storable_csv``'s rows that pass the contract's drop
rules (evaluated by the rules' own SQL in PostgreSQL), column for column. The seed-style Spark job stores
``storable_csv``'s rows (typed, one per event_id, no rules), like the COPY baseline. Both run as the bench
runs them: one subprocess each, the connection in the environment."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest

from benchmarks.bench import marginal, storable_csv
from benchmarks.peers import TABLES, create_events_table, jdbc_jar_problem, rule_failure_sql
from include.contract.columns import EVENT_COLUMNS
from include.settings import Settings
from scripts.generator import EventGenerator

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# the line of a record and the late flag (relative to when it is stored) are not the reference's: see peers.py
NOT_COMPARED = ("source_line", "is_late_arrival")


def _corpus(directory: Path, versions: tuple[str, ...], rows: int, seed: int, **ratios: float) -> tuple[list, list]:
    generator = EventGenerator(seed, invalid_ratio=0.1, duplicate_ratio=0.05, awkward_ratio=0.02, **ratios)
    files, reports = [], []
    for version in versions:
        files.append(generator.write_batch(generator.generate_batch(rows, version), version, directory))
        reports.append(generator.last_report)
    return files, reports


def _run(pipeline, argv: list[str]) -> str:
    done = subprocess.run([sys.executable, "-m", *argv], env=pipeline.env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _stored(conn: psycopg.Connection, table: str, columns: tuple[str, ...]) -> dict[str, tuple]:
    return {row[0]: row for row in conn.execute(f"SELECT {', '.join(columns)} FROM {table}")}


def _reference(conn: psycopg.Connection, files: list[Path], columns: tuple[str, ...]) -> dict[str, tuple]:
    """``storable_csv``'s rows as PostgreSQL types them (what the COPY baseline stores), by event_id."""
    chunks, _ = storable_csv(files)
    conn.execute("CREATE TEMP TABLE reference (LIKE ecommerce_events INCLUDING DEFAULTS)")
    with conn.cursor().copy(f"COPY reference ({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT csv)") as copy:
        for chunk in chunks:
            copy.write(chunk)
    return _stored(conn, "reference", columns)


def storable_event_ids(conn: psycopg.Connection, files: Sequence[Path], settings: Settings, *,
                       rules: bool) -> set[str]:
    """The event_ids of ``bench.storable_csv(files)`` (typed, first per event_id), with ``rules`` only those
    that pass the rules (evaluated in PostgreSQL, on a temp table, like ``rule_passing_count``)."""
    chunks, _ = storable_csv(list(files))
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE storable_reference (LIKE ecommerce_events INCLUDING DEFAULTS) ON COMMIT DROP")
        statement = f"COPY storable_reference ({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT csv)"
        with conn.cursor().copy(statement) as copy:
            for chunk in chunks:
                copy.write(chunk)
        where = f"NOT coalesce({rule_failure_sql(settings)}, false)" if rules else "true"
        return {row[0] for row in conn.execute(f"SELECT event_id FROM storable_reference WHERE {where}")}


@pytest.mark.integration
@pytest.mark.db
def test_duckdb_peer_stores_the_storable_rows_that_pass_the_rules(pipeline, tmp_path):
    files, reports = _corpus(tmp_path / "files", ("v1", "v2", "v3"), 2000, 21, structural_ratio=0.03)
    listing = tmp_path / "files.txt"
    listing.write_text("".join(f"{p}\n" for p in files))
    table = TABLES["duckdb"]
    columns = tuple(c for c in EVENT_COLUMNS if c not in NOT_COMPARED)
    with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
        create_events_table(conn, table)
        try:
            out = _run(pipeline, ["benchmarks.peers", "duckdb", "--table", table, "--file-list", str(listing)])
            summary = json.loads(out.strip().splitlines()[-1])
            stored = _stored(conn, table, columns)
            expected = storable_event_ids(conn, files, pipeline.settings, rules=True)
            reference = _reference(conn, files, columns)
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    assert summary["stored"] == len(stored) == len(expected)
    assert set(stored) == expected
    assert len(expected) < len(reference), "the rules keep storable rows out"
    assert {event_id: reference[event_id] for event_id in expected} == stored, "the same values, column for column"
    # independently of the reference: the generator's valid rows (duplicates and defects left out) ...
    tags = [tag for report in reports for tag in report.tags]
    assert len(stored) == sum(tag in ("valid", "awkward", "late") for tag in tags)
    # ... and the damaged lines counted as rejects, not fatal (an oversize field is read, then not stored)
    assert summary["rejected_lines"] == sum(tag in ("invalid:short_row", "invalid:extra_field", "invalid:broken_quote")
                                            for tag in tags)


@pytest.mark.integration
def test_seed_style_writer_stores_the_storable_rows(pipeline, tmp_path):
    assert not (problem := jdbc_jar_problem()), problem  # .ci/run installs it; README, Prerequisites
    # v1 (quantity defaults to 1) and v3; duplicates of v1 rows land in the v3 file; awkward rows span lines
    files, _ = _corpus(tmp_path / "files", ("v1", "v3"), 500, 22)
    listing = tmp_path / "files.txt"
    listing.write_text("".join(f"{p}\n" for p in files))
    table = TABLES["seed_style"]
    # Spark keeps any copy of a duplicated event_id, and a v3 copy of a v1 row has more columns: compare the
    # columns every copy shares
    columns = ("event_id", "user_id", "event_type", "product_id", "price", "event_time")
    with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
        create_events_table(conn, table)
        try:
            _run(pipeline, ["benchmarks.seed_style_writer", "--table", table, "--file-list", str(listing)])
            stored = _stored(conn, table, columns)
            expected = storable_event_ids(conn, files, pipeline.settings, rules=False)
            v1_quantities = conn.execute(f"SELECT DISTINCT quantity FROM {table} WHERE schema_version = 'v1'"
                                         ).fetchall()
            reference = _reference(conn, files, columns)
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    assert set(stored) == expected
    assert stored == reference
    assert v1_quantities == [(1,)], "a v1 file's quantity is the contract's default"


@pytest.mark.unit
def test_marginal_rate_is_the_extra_rows_over_the_extra_seconds():
    result = {"rows": 1_000_000, "pipeline_seconds": 230.0, "copy_rows_per_s": 60_000,
              "marginal_backlog_rows": 200_000, "marginal_backlog_seconds": 70.0}
    assert marginal(result) == {"marginal_rows_per_s": 5000, "marginal_ratio_to_copy": 0.083}
    assert marginal({"rows": 10}) == {"marginal_rows_per_s": None, "marginal_ratio_to_copy": None}
