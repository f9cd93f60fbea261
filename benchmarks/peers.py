"""Peers of the pipeline in `make bench`: the same files into the same PostgreSQL, by two other means.

Each peer writes into its own table shaped like ``ecommerce_events`` with its primary key (as the COPY
baseline does with ``bench_copy_events``), runs as its own process, and is timed from its start to its end.
Rows/s is **input rows** (the ``BENCH_ROWS`` generated, every line of every file) divided by those seconds:
the definition of ``pipeline_rows_per_s`` (``measure_pipeline``). Note that ``copy_rows_per_s`` divides the
rows it stores instead; the ``*_ratio_to_copy`` keys divide by it all the same, like ``ratio_to_copy``.

* **seed_style** (``benchmarks/seed_style_writer.py``): what the original system did per run, naively. A
  PySpark batch job (``local[*]``) reads the files with ``spark.read.csv`` (one read per header layout),
  casts the columns to the table's types, drops the rows that fail the typing, de-duplicates by event_id
  over all files (``dropDuplicates``) and appends with ``DataFrame.write.jdbc`` through PostgreSQL's JDBC
  driver (Debian's ``libpostgresql-jdbc-java``). No contract rules. Timed: the whole ``python`` process,
  JVM start included, which is what the seed paid per run. It must store exactly the rows the COPY baseline
  stores (``copy_rows``, ``bench.storable_csv``: typed, first per event_id; no rules either).
* **duckdb** (``python -m benchmarks.peers duckdb``): the pipeline's work in one process. DuckDB reads the
  files (``read_csv`` with ``store_rejects``: a line with the wrong number of fields or a broken quote is
  counted in ``reject_errors``, not fatal), types the columns (a value that does not cast, an empty value in
  a column the contract declares ``not_empty``, a field over the parser's 1,024 characters: not stored, as in
  the pipeline),
  keeps the first occurrence of each event_id (file order, then line), applies every row rule of
  ``include/contract/rules.py`` whose severity is not ``warn`` (``routing_predicate``'s SQL, unchanged:
  DuckDB runs it as is), and COPYs the result into PostgreSQL with psycopg (Arrow batches from DuckDB
  written as CSV by pyarrow: see ``write_csv_copy``). Timed: the whole process (read, rules, de-duplication,
  COPY). It must store exactly the storable rows that pass those rules (``rule_passing_rows``: the COPY
  baseline's table filtered in PostgreSQL by the same predicates), which is what the pipeline stores. It
  writes no dead letters, rule violations or metrics (the pipeline does); it only counts the rejected lines.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from include.contract.columns import EVENT_COLUMNS, FEED_COLUMNS, NOT_EMPTY_COLUMNS, TYPED_FEED_COLUMNS
from include.contract.rules import ROW_RULES, routing_predicate, severities, suite_parameters
from include.contract.versions import MIGRATION_DEFAULTS, HeaderMatch, UnknownSchemaVersion, match_header
from include.settings import PROJECT_ROOT, Settings

PEERS = ("seed_style", "duckdb")
TABLES = {"seed_style": "bench_seed_style_events", "duckdb": "bench_duckdb_events"}
JDBC_JAR = Path("/usr/share/java/postgresql.jar")
JDBC_PACKAGE = "libpostgresql-jdbc-java"
MAX_FIELD_CHARS = 1024  # include.contract.parser.MAX_FIELD_CHARS: a longer field makes the record unparsable
# The contract's PostgreSQL types as DuckDB spells them (text columns stay VARCHAR).
DUCKDB_TYPES = {"integer": "INTEGER", "numeric(12,2)": "DECIMAL(12,2)", "timestamp with time zone": "TIMESTAMPTZ"}


# ------------------------------------------------------------------------------------------------ shared
def create_events_table(conn: psycopg.Connection, table: str) -> None:
    """``table`` shaped like ``ecommerce_events`` with its primary key, empty (as ``measure_copy`` makes it)."""
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (LIKE ecommerce_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (event_id)")
    conn.execute("CHECKPOINT")


def rule_failure_sql(settings: Settings) -> str:
    """SQL predicate, true for a row that breaks a rule that keeps it out of ``ecommerce_events`` (severity
    ``drop``, and ``fail``, which stops the pipeline's run instead): ``routing_predicate`` of each, ORed. It is
    the publish step's own routing SQL and runs unchanged in PostgreSQL and DuckDB. A row for which it is NULL
    is routed nowhere by the pipeline, so it is stored: callers must treat NULL as false."""
    parameters, severity = suite_parameters(settings), severities(settings)
    predicates = [routing_predicate(rule, parameters) for rule in ROW_RULES if severity[rule.name] != "warn"]
    return " OR ".join(f"({p})" for p in predicates) or "false"


def rule_passing_count(conn: psycopg.Connection, table: str, settings: Settings) -> int:
    """Rows of ``table`` (shaped like ecommerce_events) that pass the rules ``rule_failure_sql`` names."""
    return conn.execute(f"SELECT count(*) FROM {table} WHERE NOT coalesce({rule_failure_sql(settings)}, false)"
                        ).fetchone()[0]


@dataclass
class HeaderGroup:
    """Files that share one header line: one read of all of them, with the same column mapping."""

    header: tuple[str, ...]
    match: HeaderMatch
    files: list[Path] = field(default_factory=list)


def header_groups(files: Sequence[Path]) -> tuple[list[HeaderGroup], list[Path]]:
    """Group ``files`` by their header line (matched onto the contract by ``versions.match_header``, as the
    parser does). Returns the groups, in order of first appearance, and the files no group can read (empty,
    not UTF-8 in the header, a header the contract rejects): the pipeline quarantines those whole."""
    groups: dict[tuple[str, ...], HeaderGroup] = {}
    unreadable = []
    for path in files:
        try:
            with open(path, encoding="utf-8-sig", newline="") as handle:
                header = next(csv.reader([handle.readline()]))
            key = tuple(header)
            if key not in groups:
                groups[key] = HeaderGroup(key, match_header(header))
            groups[key].files.append(path)
        except (StopIteration, UnicodeDecodeError, csv.Error, UnknownSchemaVersion):
            unreadable.append(path)
    return list(groups.values()), unreadable


def _file_list(path: Path) -> list[Path]:
    return [Path(line) for line in path.read_text().splitlines() if line]


# ------------------------------------------------------------------------------------------------ DuckDB
def _literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _group_select(group: HeaderGroup) -> str:
    """One group's files as canonical text records: read_csv of every field as VARCHAR by position (``_c<i>``),
    then each feed column from its field or the contract's default for files without it."""
    match = group.match
    columns = "{" + ", ".join(f"'_c{i}': 'VARCHAR'" for i in range(match.width)) + "}"
    paths = "[" + ", ".join(_literal(str(p)) for p in group.files) + "]"
    canonical = [f"{f'_c{match.positions[c]}' if c in match.positions else _literal(MIGRATION_DEFAULTS[c])} AS {c}"
                 for c in FEED_COLUMNS]
    rescued = ("to_json(struct_pack(" + ", ".join(f'"{name}" := _c{i}' for name, i in match.rescued) + "))::VARCHAR"
               if match.rescued else "NULL::VARCHAR")
    oversize = " OR ".join(f"length(_c{i}) > {MAX_FIELD_CHARS}" for i in range(match.width))
    return (
        f"SELECT {', '.join(canonical)}, {_literal(match.version.name)} AS schema_version, filename AS source_file, "
        f"{rescued} AS rescued_data, coalesce({oversize}, false) AS oversize, row_number() OVER () AS ordinal "
        f"FROM read_csv({paths}, columns = {columns}, header = true, auto_detect = false, delim = ',', "
        "quote = '\"', escape = '\"', strict_mode = true, store_rejects = true, filename = true)"
    )


def duckdb_events_sql(groups: Sequence[HeaderGroup], settings: Settings) -> str:
    """The query whose rows are exactly what is stored, in ``EVENT_COLUMNS`` order.

    * ``records``: every readable record of every file, as text (one read_csv per header layout);
    * ``lined``: the file's position in the input list and the record's line: its ordinal among the file's
      accepted records + 1 (the physical line unless a rejected or multi-line record comes before it);
    * ``typed``: the casts (``TRY_CAST``), and ``unparsable`` where the pipeline's typing fails: a non-empty
      value that does not cast, an empty ``NOT_EMPTY_COLUMNS`` value, an oversize field;
    * ``first``: the first typed occurrence of each event_id (file order, then line), like ``audit_candidates``;
    * the result: rows that break no drop/fail rule, with ``total_amount`` and ``is_late_arrival`` as the
      ingest derives them.
    """
    typed_columns = []
    failures = [f"{c} IS NULL" for c in NOT_EMPTY_COLUMNS] + ["oversize"]
    for column in FEED_COLUMNS:
        if column in TYPED_FEED_COLUMNS:
            duck_type = DUCKDB_TYPES[TYPED_FEED_COLUMNS[column]]
            typed_columns.append(f"TRY_CAST({column} AS {duck_type}) AS {column}")
            failures.append(f"({column} IS NOT NULL AND TRY_CAST({column} AS {duck_type}) IS NULL)")
        else:
            typed_columns.append(column)
    late = int(settings.late_arrival_minutes)
    derived = {
        "total_amount": "CAST(price * quantity AS DECIMAL(14,2))",
        "is_late_arrival": f"coalesce(event_time < now() - INTERVAL {late} MINUTE, false)",
        # a peer has no delivery ledger: each input file is one delivery
        "delivery_id": "CAST(file_index + 1 AS BIGINT)",
    }
    output = [derived.get(c, c) + (f" AS {c}" if c in derived else "") for c in EVENT_COLUMNS]
    return f"""
        WITH records AS ({" UNION ALL ".join(f"({_group_select(g)})" for g in groups)}),
        lined AS (
            SELECT r.*, f.file_index, r.ordinal - min(r.ordinal) OVER (PARTITION BY r.source_file) + 2 AS source_line
              FROM records r JOIN input_files f USING (source_file)),
        typed AS (
            SELECT {", ".join(typed_columns)}, schema_version, source_file, source_line::INTEGER AS source_line,
                   rescued_data, file_index, {" OR ".join(failures)} AS unparsable
              FROM lined),
        first AS (
            SELECT * FROM typed WHERE NOT unparsable
            QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY file_index, source_line) = 1),
        derived AS (SELECT *, {derived["total_amount"]} AS total_amount FROM first)
        SELECT {", ".join(output)}
          FROM derived
         WHERE NOT coalesce({rule_failure_sql(settings)}, false)
    """


def write_csv_copy(conn: psycopg.Connection, table: str, batches) -> int:
    """COPY Arrow record batches as CSV text (pyarrow's writer, no Python per row); returns the rows written.

    Chosen over binary COPY (``write_binary_copy``: ``copy.set_types`` + a Python tuple per row), which took
    about twice as long on the bench's rows, most of it building the tuples (docs/performance.md, "Peers in
    `make bench`"). psycopg has no Arrow writer of its own."""
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False)
    rows = 0
    statement = f"COPY {table} ({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT csv)"
    with conn.cursor().copy(statement) as copy:
        for batch in batches:
            if batch.num_rows:
                sink = io.BytesIO()
                pacsv.write_csv(batch, sink, options)
                copy.write(sink.getbuffer())
                rows += batch.num_rows
    return rows


def write_binary_copy(conn: psycopg.Connection, table: str, batches) -> int:
    """COPY Arrow record batches in PostgreSQL's binary format, one ``write_row`` per row (the slower path,
    kept for the comparison in ``write_csv_copy``)."""
    from include.contract.columns import BY_NAME

    names = {"integer": "int4", "bigint": "int8", "numeric(12,2)": "numeric", "numeric(14,2)": "numeric",
             "timestamp with time zone": "timestamptz", "boolean": "bool"}
    pg_types = [names.get(BY_NAME[c].sql_type, BY_NAME[c].sql_type) for c in EVENT_COLUMNS]  # text, jsonb as is
    rows = 0
    statement = f"COPY {table} ({', '.join(EVENT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    with conn.cursor().copy(statement) as copy:
        copy.set_types(pg_types)
        jsonb = [i for i, t in enumerate(pg_types) if t == "jsonb"]  # Arrow holds JSON text, the dumper objects
        for batch in batches:
            columns = [column.to_pylist() for column in batch.columns]
            for i in jsonb:
                columns[i] = [None if v is None else json.loads(v) for v in columns[i]]
            for row in zip(*columns):
                copy.write_row(row)
            rows += batch.num_rows
    return rows


def run_duckdb(files: Sequence[Path], table: str, settings: Settings, *, write: str = "csv") -> dict:
    """The DuckDB peer's whole work: read, type, de-duplicate, rules, COPY into ``table`` (which exists)."""
    import duckdb
    import pyarrow as pa

    groups, unreadable = header_groups(files)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # the feed's naive timestamps are UTC, as the ingest reads them
    index = pa.table({"source_file": [str(p) for p in files], "file_index": list(range(len(files)))})
    con.register("input_files", index)
    result = {"unreadable_files": len(unreadable), "stored": 0, "rejected_lines": 0}
    if groups:
        reader = con.sql(duckdb_events_sql(groups, settings)).to_arrow_reader(100_000)
        writer = write_csv_copy if write == "csv" else write_binary_copy
        with psycopg.connect(settings.postgres_conninfo, autocommit=True) as conn, conn.transaction():
            result["stored"] = writer(conn, table, reader)
            # The reader has read every file now. A file with bytes that are not UTF-8 is quarantined whole by
            # the parser, while read_csv rejects just the line: take the file's rows out again, before commit.
            # (A later copy of an event_id first seen there is lost with it; the generator never makes one.)
            not_utf8 = [path for (path,) in con.execute(
                "SELECT DISTINCT s.file_path FROM reject_errors e JOIN reject_scans s USING (scan_id, file_id) "
                "WHERE e.error_type = 'INVALID ENCODING'").fetchall()]
            if not_utf8:
                result["stored"] -= conn.execute(f"DELETE FROM {table} WHERE source_file = ANY(%s)",
                                                 (not_utf8,)).rowcount
            result["unreadable_files"] += len(not_utf8)
        # a line the reader rejects may carry several errors: lines, not errors
        result["rejected_lines"] = con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT scan_id, file_id, line FROM reject_errors)").fetchone()[0]
    con.close()
    return result


# ------------------------------------------------------------------------------------------------ bench
def jdbc_jar_problem() -> str | None:
    """Why the seed-style peer cannot run (its JDBC driver is missing), with how to fix it; None if it can."""
    if JDBC_JAR.exists():
        return None
    return (f"the seed-style peer needs PostgreSQL's JDBC driver {JDBC_JAR}: install it with "
            f"`apt-get install -y {JDBC_PACKAGE}` (as root; `make bench` does it when run as root), "
            "or skip the peer with BENCH_PEERS=duckdb")


def _timed_process(bench, argv: list[str], log_name: str) -> tuple[float, dict]:
    """Run ``argv`` in the project root with the bench's environment (the password travels in it, never on
    the command line); its output goes to a log under the bench root. Returns its wall-clock seconds and the
    JSON object its last output line holds (the peer's own summary; {} if none)."""
    log = bench.root / "logs" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        started = time.monotonic()
        process = subprocess.run(argv, env=bench.env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                 timeout=3600)
        seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"{argv[1:3]} failed with exit {process.returncode}; last lines of {log}:\n"
                           + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
    lines = log.read_text(errors="replace").strip().splitlines()
    try:
        detail = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        detail = {}
    return seconds, detail if isinstance(detail, dict) else {}


def _peer_result(name: str, stored: int, expected: int, seconds: float, input_rows: int,
                 copy_rows_per_s: float) -> dict:
    assert stored == expected, f"{name} stored {stored} rows, expected {expected}"
    rate = input_rows / seconds
    return {f"{name}_rows": stored, f"{name}_seconds": round(seconds, 2), f"{name}_rows_per_s": round(rate),
            f"{name}_ratio_to_copy": round(rate / copy_rows_per_s, 3)}


def measure_peer(bench, name: str, files: Sequence[Path], input_rows: int, copy: Mapping) -> dict:
    """Time one peer over ``files`` into its own table and check what it stored (see the module docstring)."""
    table = TABLES[name]
    listing = bench.root / "peer-files.txt"
    listing.write_text("".join(f"{p}\n" for p in files))
    with bench.connect() as conn:
        create_events_table(conn, table)
    if name == "seed_style":
        argv = [sys.executable, "-m", "benchmarks.seed_style_writer", "--table", table, "--file-list", str(listing)]
        expected = copy["copy_rows"]
    else:
        argv = [sys.executable, "-m", "benchmarks.peers", "duckdb", "--table", table, "--file-list", str(listing)]
        expected = copy["rule_passing_rows"]
    seconds, detail = _timed_process(bench, argv, f"peer-{name}")
    with bench.connect() as conn:
        stored = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        conn.execute(f"DROP TABLE {table}")
        conn.execute("CHECKPOINT")
    return {**_peer_result(name, stored, expected, seconds, input_rows, copy["copy_rows_per_s"]),
            f"{name}_detail": detail}


# ------------------------------------------------------------------------------------------------ script
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    parser.add_argument("peer", choices=["duckdb"])
    parser.add_argument("--table", required=True, help="an existing table shaped like ecommerce_events")
    parser.add_argument("--file-list", type=Path, required=True, help="a file naming one input file per line")
    parser.add_argument("--write", choices=["csv", "binary"], default="csv", help="how to COPY (default csv)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    # the connection comes from the environment (POSTGRES_*), like the pipeline's
    result = run_duckdb(_file_list(args.file_list), args.table, Settings.from_env(os.environ), write=args.write)
    result["run_s"] = round(time.monotonic() - started, 2)  # the work itself: the rest is process start, imports
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
