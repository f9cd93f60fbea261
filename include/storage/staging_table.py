"""The staging table: typed rows COPYed in by the Spark executors, and the ledgers of what was staged.

All bulk writes are ``COPY``. A Spark batch of the stream is staged exactly once: its row in
``pipeline_batch_ledger`` is written, with its deliveries marked ``staged`` (``include.storage.deliveries``),
after all its partitions are staged, and only for deliveries still ``claimed``. Every write of the ingest checks
its fence (``include.storage.locks.Fence``), so an ingest that lost its lock stops before it writes.
Publishing is ``include.publish.every_minute``'s job.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import psycopg

from include.contract.columns import BY_NAME, STAGED_COLUMNS
from include.settings import Settings
from include.storage.connections import with_arrow_connection, with_connection
from include.storage.locks import Fence

# COPY sends a staged partition in pieces of this size (psycopg buffers each write until it is sent)
_COPY_CHUNK_BYTES = 1 << 20


# The Arrow type the staging COPY sends for each contract type (``include.contract.columns.SQL_TYPES``): binary
# COPY takes a column only in its own type's wire format, so each batch is cast to these first.
def _arrow_types() -> dict:
    import pyarrow as pa

    return {"text": pa.string(), "integer": pa.int32(), "bigint": pa.int64(), "numeric(12,2)": pa.decimal128(12, 2),
            "numeric(14,2)": pa.decimal128(14, 2), "timestamp with time zone": pa.timestamp("us", "UTC"),
            "boolean": pa.bool_(), "jsonb": pa.json_()}


def staging_arrow_schema():
    """The Arrow schema of a staging COPY: the staging key (query id, batch id, partition), then ``STAGED_COLUMNS``."""
    import pyarrow as pa

    types = _arrow_types()
    return pa.schema([("spark_query_id", pa.uuid()), ("spark_batch_id", pa.int64()), ("spark_partition", pa.int32())]
                     + [(name, types[BY_NAME[name].sql_type]) for name in STAGED_COLUMNS])


def copy_arrow_to_staging(
    settings: Settings, query_id: str, batch_id: int, partition: int, batches: Iterator, *, binary: bool = True,
    fence: Fence | None = None,
) -> tuple[int, float]:
    """COPY Arrow record batches (``STAGED_COLUMNS``) into ``staging_events`` for one Spark partition.

    The partition's earlier rows for this batch are deleted in the same transaction, so a retried Spark
    task (or a retried transaction after PostgreSQL restarted) replaces its rows instead of doubling them.
    With a ``fence`` (the every-minute ingest's), the transaction first checks that its ingest still holds the
    checkpoint (``IngestLockLost`` otherwise). Returns the number of rows staged and the seconds the COPY
    transaction took (retries included).

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
                if fence:
                    fence.check_adbc(cursor)
                cursor.execute(delete.format("$1::uuid", "$2", "$3"), (query_id, batch_id, partition))
                if staged:
                    spill.seek(0)
                    cursor.adbc_ingest("staging_events", pa.ipc.open_stream(spill), mode="append")
            conn.commit()

        def copy_csv(conn: psycopg.Connection) -> None:
            spill.seek(0)
            with conn.transaction():
                if fence:
                    fence.check(conn)
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


class DeliveriesTaken(RuntimeError):
    """Deliveries of this batch were staged by another ingest meanwhile; nothing of this batch is recorded."""


def record_staged_batch(
    conn: psycopg.Connection,
    *,
    query_id: str,
    batch_id: int,
    airflow_run_id: str | None,
    started_at: datetime,
    deliveries: list[int],
    rejected: list[tuple[int, str, str, str]],
    fence: Fence | None = None,
) -> bool:
    """Mark a batch completely staged, in one transaction: its ledger row, its deliveries ``staged`` (with
    their row counts) or, for ``rejected`` (delivery id, source file, quarantine path, reason), ``quarantined``
    with their ``quarantined_files`` rows.

    Returns ``False`` if another attempt recorded the batch first (nothing is written then); raises
    ``DeliveriesTaken`` if any of ``deliveries`` is no longer ``claimed``, and ``IngestLockLost`` when the
    ``fence`` says this ingest lost its checkpoint."""
    with conn.transaction():
        if fence:
            fence.check(conn)
        claimed = {d for (d,) in conn.execute(
            "SELECT delivery_id FROM deliveries WHERE delivery_id = ANY(%s) AND status = 'claimed' FOR UPDATE",
            (deliveries,))}
        if claimed != set(deliveries):
            raise DeliveriesTaken(f"deliveries {sorted(set(deliveries) - claimed)} of batch {batch_id} are no longer "
                                  "waiting: another ingest staged them; this batch records nothing")
        conn.execute(
            "CREATE TEMP TABLE batch_rows ON COMMIT DROP AS SELECT delivery_id, count(*) AS n, "
            "count(*) FILTER (WHERE is_late_arrival AND parse_errors IS NULL) AS late "
            "FROM staging_events WHERE spark_query_id = %s AND spark_batch_id = %s GROUP BY delivery_id",
            (query_id, batch_id))
        row = conn.execute(
            """
            INSERT INTO pipeline_batch_ledger (spark_query_id, spark_batch_id, airflow_run_id, input_files,
                                               input_rows, late_rows, quarantined_files, started_at)
            SELECT %(query_id)s, %(batch_id)s, %(run_id)s, %(files)s, coalesce(sum(n), 0), coalesce(sum(late), 0),
                   %(quarantined)s, %(started)s
              FROM batch_rows
            ON CONFLICT DO NOTHING
            RETURNING input_rows
            """,
            {"query_id": query_id, "batch_id": batch_id, "run_id": airflow_run_id, "files": len(deliveries),
             "quarantined": len(rejected), "started": started_at},
        ).fetchone()
        if row is None:
            return False
        conn.execute(
            """
            UPDATE deliveries d
               SET status = CASE WHEN d.delivery_id = ANY(%(rejected)s) THEN 'quarantined' ELSE 'staged' END,
                   spark_query_id = %(query_id)s, spark_batch_id = %(batch_id)s, staged_at = now(), attempts = 0,
                   rows_staged = coalesce((SELECT n FROM batch_rows r WHERE r.delivery_id = d.delivery_id), 0)
             WHERE d.delivery_id = ANY(%(deliveries)s)
            """,
            {"rejected": [r[0] for r in rejected], "query_id": query_id, "batch_id": batch_id,
             "deliveries": deliveries})
        with conn.cursor().copy(
            "COPY quarantined_files (delivery_id, source_file, quarantine_path, reason, airflow_run_id, spark_query_id,"
            " spark_batch_id) FROM STDIN"
        ) as copy:
            for delivery_id, source_file, path, reason in rejected:
                copy.write_row((delivery_id, source_file, path, reason, airflow_run_id, query_id, batch_id))
    return True


def batch_deliveries(conn: psycopg.Connection, query_id: str, batch_id: int) -> list[int]:
    return [d for (d,) in conn.execute(
        "SELECT delivery_id FROM deliveries WHERE spark_query_id = %s AND spark_batch_id = %s", (query_id, batch_id))]


# ---------------------------------------------------------------------------- backfill chunks

def claimed_chunk(conn: psycopg.Connection, airflow_run_id: str) -> tuple[str, datetime, datetime] | None:
    """(backfill batch id, window start, window end) of the chunk ``airflow_run_id`` claimed and has not published
    (include/publish/coverage.py claims it): what the backfill's Spark job stages."""
    return conn.execute(
        "SELECT backfill_batch_id::text, window_start, window_end FROM pipeline_backfill_ledger "
        "WHERE airflow_run_id = %s AND published_at IS NULL ORDER BY started_at DESC LIMIT 1",
        (airflow_run_id,)).fetchone()


def discard_staged(conn: psycopg.Connection, backfill_batch_id: str) -> int:
    """Before a (retried) backfill ingest: drop what an earlier attempt staged of this chunk; it stays claimed."""
    with conn.transaction():
        conn.execute("UPDATE pipeline_backfill_ledger SET staged_at = NULL WHERE backfill_batch_id = %s::uuid",
                     (backfill_batch_id,))
        return conn.execute("DELETE FROM staging_events WHERE spark_query_id = %s::uuid",
                            (backfill_batch_id,)).rowcount


def record_backfill_batch(conn: psycopg.Connection, *, backfill_batch_id: str, deliveries: list[int],
                          source_files: list[str]) -> int:
    """Mark a claimed backfill chunk completely staged; returns its staged row count."""
    with conn.transaction():
        return conn.execute(
            """
            UPDATE pipeline_backfill_ledger
               SET staged_at = now(), input_files = %s, deliveries = %s, source_files = %s,
                   input_rows = (SELECT count(*) FROM staging_events WHERE spark_query_id = %s::uuid)
             WHERE backfill_batch_id = %s::uuid
            RETURNING input_rows
            """,
            (len(deliveries), deliveries, source_files, backfill_batch_id, backfill_batch_id),
        ).fetchone()[0]
