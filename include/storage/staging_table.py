"""PostgreSQL side of the Spark job: schema, staging by COPY, and the ledger of staged batches.

All bulk writes are ``COPY`` (psycopg 3). A Spark batch is staged exactly once: its ledger row in
``pipeline_batch_ledger`` is written after all its partitions are staged, and a batch Spark replays after
a crash finds its ledger row and stages nothing. Publishing is ``include.publish.every_minute``'s job.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg

from include.contract.columns import BY_NAME, CANDIDATE_COLUMNS, EVENT_COLUMNS, STAGED_COLUMNS
from include.names import SCHEMA_LOCK
from include.settings import Settings
from include.storage.connections import with_arrow_connection, with_connection
from include.storage.landing import ArchivedFile
from include.storage.locks import xact_lock

SCHEMA_SQL = Path(__file__).resolve().parent / "sql" / "schema.sql"
# COPY sends a staged partition in pieces of this size (psycopg buffers each write until it is sent)
_COPY_CHUNK_BYTES = 1 << 20



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


# The Arrow type the staging COPY sends for each contract type (``include.contract.columns.SQL_TYPES``): binary
# COPY takes a column only in its own type's wire format, so each batch is cast to these first.
def _arrow_types() -> dict:
    import pyarrow as pa

    return {"text": pa.string(), "integer": pa.int32(), "numeric(12,2)": pa.decimal128(12, 2),
            "numeric(14,2)": pa.decimal128(14, 2), "timestamp with time zone": pa.timestamp("us", "UTC"),
            "boolean": pa.bool_(), "jsonb": pa.json_()}


def staging_arrow_schema():
    """The Arrow schema of a staging COPY: the staging key (query id, batch id, partition), then ``STAGED_COLUMNS``."""
    import pyarrow as pa

    types = _arrow_types()
    return pa.schema([("spark_query_id", pa.uuid()), ("spark_batch_id", pa.int64()), ("spark_partition", pa.int32())]
                     + [(name, types[BY_NAME[name].sql_type]) for name in STAGED_COLUMNS])


def copy_arrow_to_staging(
    settings: Settings, query_id: str, batch_id: int, partition: int, batches: Iterator, *, binary: bool = True
) -> tuple[int, float]:
    """COPY Arrow record batches (``STAGED_COLUMNS``) into ``staging_events`` for one Spark partition.

    The partition's earlier rows for this batch are deleted in the same transaction, so a retried Spark
    task (or a retried transaction after PostgreSQL restarted) replaces its rows instead of doubling them.
    Returns the number of rows staged and the seconds the COPY transaction took (retries included).

    The rows go as binary COPY, encoded from Arrow by ADBC's PostgreSQL driver (``adbc_driver_postgresql``):
    ~35 % less time than CSV text, which PostgreSQL has to parse (docs/performance.md). ``binary=False`` sends
    them as CSV text written by pyarrow, the path this one replaced, kept as the reference of the differential
    test (``tests/integration/test_publish_staging.py``).
    """
    import tempfile
    import time
    import uuid

    import pyarrow as pa
    import pyarrow.csv as pa_csv

    schema = staging_arrow_schema()
    # the staging key, the same on every row: binary COPY takes the query id as a uuid, CSV as its text
    query_key = pa.scalar(uuid.UUID(query_id).bytes, pa.binary(16)) if binary else pa.scalar(query_id)
    batch_key, partition_key = pa.scalar(batch_id, pa.int64()), pa.scalar(partition, pa.int32())
    # The partition's rows go to a temporary file (Arrow IPC, or the CSV text), not to memory: a retried
    # transaction sends them again, and a worker holds one Arrow batch at a time however large the partition
    # (docs/performance.md, "Memory").
    with tempfile.TemporaryFile(prefix="staging-") as spill:
        staged = 0
        writer = pa.ipc.new_stream(spill, schema) if binary else None
        for batch in batches:
            if batch.num_rows == 0:
                continue
            n = batch.num_rows
            query = pa.repeat(query_key, n)
            keyed = pa.RecordBatch.from_arrays(
                [pa.ExtensionArray.from_storage(pa.uuid(), query) if binary else query,
                 pa.repeat(batch_key, n), pa.repeat(partition_key, n)]
                + [batch.column(c) for c in STAGED_COLUMNS],
                names=schema.names,
            )
            if writer:
                writer.write_batch(keyed.cast(schema))
            else:
                pa_csv.write_csv(keyed, spill, pa_csv.WriteOptions(include_header=False))
            staged += n
        if writer:
            writer.close()
        delete = ("DELETE FROM staging_events WHERE spark_query_id = {} AND spark_batch_id = {} "
                  "AND spark_partition = {}")

        def copy_binary(conn) -> None:
            with conn.cursor() as cursor:
                cursor.execute(delete.format("$1::uuid", "$2", "$3"), (query_id, batch_id, partition))
                if staged:
                    spill.seek(0)
                    cursor.adbc_ingest("staging_events", pa.ipc.open_stream(spill), mode="append")
            conn.commit()

        def copy_csv(conn: psycopg.Connection) -> None:
            spill.seek(0)
            with conn.transaction():
                conn.execute(delete.format("%s", "%s", "%s"), (query_id, batch_id, partition))
                copy_sql = f"COPY staging_events ({', '.join(schema.names)}) FROM STDIN WITH (FORMAT csv)"
                with conn.cursor().copy(copy_sql) as copy:
                    while chunk := spill.read(_COPY_CHUNK_BYTES):
                        copy.write(chunk)

        started = time.perf_counter()
        if binary:
            with_arrow_connection(settings, copy_binary)
        else:
            with_connection(settings, copy_csv)
    return staged, time.perf_counter() - started


def prepare_staging(conn: psycopg.Connection, query_id: str, batch_id: int) -> bool:
    """Before staging a Spark batch: ``False`` if the ledger already holds it (a replay after a crash);
    otherwise drop whatever an interrupted attempt left of it and return ``True``."""
    with conn.transaction():
        if conn.execute(
            "SELECT 1 FROM pipeline_batch_ledger WHERE spark_query_id = %s AND spark_batch_id = %s",
            (query_id, batch_id),
        ).fetchone():
            return False
        conn.execute(
            "DELETE FROM staging_events WHERE spark_query_id = %s AND spark_batch_id = %s", (query_id, batch_id)
        )
    return True


def record_staged_batch(
    conn: psycopg.Connection,
    *,
    query_id: str,
    batch_id: int,
    airflow_run_id: str | None,
    input_files: int,
    started_at: datetime,
    quarantined: list[tuple[str, str, str]],
    source_files: list[str],
) -> bool:
    """Mark a batch completely staged, together with its quarantined files, in one transaction.

    ``quarantined`` lists (source_file, quarantine_path, reason). Returns ``False`` if another attempt
    recorded the batch first (nothing is written then).
    """
    with conn.transaction():
        row = conn.execute(
            """
            INSERT INTO pipeline_batch_ledger (spark_query_id, spark_batch_id, airflow_run_id, input_files,
                                               input_rows, late_rows, quarantined_files, started_at)
            SELECT %(query_id)s, %(batch_id)s, %(run_id)s, %(files)s, count(*),
                   count(*) FILTER (WHERE is_late_arrival AND parse_errors IS NULL), %(quarantined)s, %(started)s
              FROM staging_events WHERE spark_query_id = %(query_id)s AND spark_batch_id = %(batch_id)s
            ON CONFLICT DO NOTHING
            RETURNING input_rows
            """,
            {"query_id": query_id, "batch_id": batch_id, "run_id": airflow_run_id, "files": input_files,
             "quarantined": len(quarantined), "started": started_at},
        ).fetchone()
        if row is None:
            return False
        # the batch is staged: its files (quarantined ones included) need no attempt count any more
        conn.execute("DELETE FROM file_attempts WHERE source_file = ANY(%s)", (source_files,))
        with conn.cursor().copy(
            "COPY quarantined_files (source_file, quarantine_path, reason, airflow_run_id, spark_query_id,"
            " spark_batch_id) FROM STDIN"
        ) as copy:
            for source_file, quarantine_path, reason in quarantined:
                copy.write_row((source_file, quarantine_path, reason, airflow_run_id, query_id, batch_id))
    return True


def quarantined_in_batch(conn: psycopg.Connection, query_id: str, batch_id: int) -> list[tuple[str, str, str]]:
    return conn.execute(
        "SELECT source_file, quarantine_path, reason FROM quarantined_files "
        "WHERE spark_query_id = %s AND spark_batch_id = %s",
        (query_id, batch_id),
    ).fetchall()


def file_attempts(conn: psycopg.Connection, files: list[str]) -> dict[str, int]:
    """How many earlier attempts to stage each file crashed or failed (0 for files never tried)."""
    rows = conn.execute("SELECT source_file, attempts FROM file_attempts WHERE source_file = ANY(%s)", (files,))
    found = dict(rows.fetchall())
    return {f: found.get(f, 0) for f in files}


def count_attempt(conn: psycopg.Connection, files: list[str]) -> None:
    """Count an attempt for each file before staging it; a successful staging clears the count."""
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO file_attempts (source_file, attempts) SELECT unnest(%s::text[]), 1
            ON CONFLICT (source_file) DO UPDATE SET attempts = file_attempts.attempts + 1, last_attempt_at = now()
            """,
            (files,),
        )


def clear_attempts(conn: psycopg.Connection, files: list[str]) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM file_attempts WHERE source_file = ANY(%s)", (files,))


# ---------------------------------------------------------------------------- backfill batches

def discard_unpublished(conn: psycopg.Connection, airflow_run_id: str) -> int:
    """Before a (retried) backfill ingest: drop what an earlier attempt of this run staged but did not publish."""
    with conn.transaction():
        ids = [r[0] for r in conn.execute(
            "DELETE FROM pipeline_backfill_ledger WHERE airflow_run_id = %s AND published_at IS NULL "
            "RETURNING backfill_batch_id", (airflow_run_id,)).fetchall()]
        if ids:
            conn.execute("DELETE FROM staging_events WHERE spark_query_id = ANY(%s)", (ids,))
    return len(ids)


def record_backfill_batch(
    conn: psycopg.Connection, *, backfill_batch_id: str, airflow_run_id: str, start: datetime, end: datetime,
    files: list[ArchivedFile], started_at: datetime,
) -> int:
    """Mark a backfill batch completely staged; returns its staged row count."""
    with conn.transaction():
        return conn.execute(
            """
            INSERT INTO pipeline_backfill_ledger (backfill_batch_id, airflow_run_id, window_start, window_end,
                input_files, input_rows, source_files, started_at)
            SELECT %s, %s, %s, %s, %s, count(*), %s, %s FROM staging_events WHERE spark_query_id = %s
            RETURNING input_rows
            """,
            (backfill_batch_id, airflow_run_id, start, end, len(files), [f.source_file for f in files],
             started_at, backfill_batch_id),
        ).fetchone()[0]
