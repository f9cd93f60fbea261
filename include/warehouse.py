"""PostgreSQL side of the pipeline: schema, staging by COPY, and the idempotent publish of a batch.

All bulk writes are ``COPY`` (psycopg 3); the publish is set-based SQL in one transaction together with the
ledger row that makes it idempotent: a batch whose (query id, batch id) is in ``pipeline_batch_ledger`` is
never published again, whatever Spark replays after a crash.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

SCHEMA_SQL = Path(__file__).resolve().parent / "sql" / "schema.sql"

# Columns the Spark job stages, in COPY order (the staging key columns are prepended by the job).
STAGED_COLUMNS: tuple[str, ...] = (
    "event_id", "user_id", "session_id", "event_type", "product_id", "category", "price", "quantity",
    "total_amount", "user_segment", "event_time", "device_type", "browser", "geo_country", "geo_city",
    "referrer", "campaign_id", "is_late_arrival", "schema_version", "source_file", "source_line",
    "raw_data", "parse_errors",
)
_EVENT_COLUMNS = tuple(c for c in STAGED_COLUMNS if c not in ("raw_data", "parse_errors"))


def apply_schema(conn: psycopg.Connection) -> None:
    """Create every table, index and view that is missing (idempotent)."""
    with conn.transaction():
        conn.execute(SCHEMA_SQL.read_text())


def copy_arrow_to_staging(
    conninfo: str, query_id: str, batch_id: int, partition: int, batches: Iterator
) -> int:
    """COPY Arrow record batches (``STAGED_COLUMNS``) into ``staging_events`` for one Spark partition.

    The partition's earlier rows for this batch are deleted in the same transaction, so a retried Spark
    task replaces its rows instead of doubling them. Returns the number of rows staged.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    columns = ("spark_query_id", "spark_batch_id", "spark_partition") + STAGED_COLUMNS
    copy_sql = f"COPY staging_events ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)"
    staged = 0
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute(
            "DELETE FROM staging_events WHERE spark_query_id = %s AND spark_batch_id = %s AND spark_partition = %s",
            (query_id, batch_id, partition),
        )
        with conn.cursor().copy(copy_sql) as copy:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                n = batch.num_rows
                keyed = pa.RecordBatch.from_arrays(
                    [pa.array([query_id] * n), pa.array([batch_id] * n, pa.int64()), pa.array([partition] * n)]
                    + [batch.column(c) for c in STAGED_COLUMNS],
                    names=list(columns),
                )
                buffer = io.BytesIO()
                pa_csv.write_csv(keyed, buffer, pa_csv.WriteOptions(include_header=False))
                copy.write(buffer.getvalue())
                staged += n
    return staged


def batch_is_published(conn: psycopg.Connection, query_id: str, batch_id: int) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pipeline_batch_ledger WHERE spark_query_id = %s AND spark_batch_id = %s",
        (query_id, batch_id),
    ).fetchone()
    return row is not None


@dataclass(frozen=True)
class BatchOutcome:
    total: int
    valid: int
    invalid: int
    duplicates: int
    late: int
    quarantined_files: int
    processing_time_ms: int

    @property
    def validity_rate(self) -> float:
        return round(100.0 * self.valid / self.total, 2) if self.total else 100.0


def publish_staged_batch(
    conn: psycopg.Connection,
    *,
    query_id: str,
    batch_id: int,
    airflow_run_id: str | None,
    input_files: int,
    quarantined: list[tuple[str, str, str]],
    started: float,
) -> BatchOutcome | None:
    """Move one staged batch into the analytics tables, in one transaction, exactly once.

    Rows with ``parse_errors`` go to ``dead_letter_events``; the others to ``ecommerce_events``, the first
    occurrence of each event_id winning; later occurrences (in this batch or already stored) count as
    duplicates. ``quarantined`` lists (source_file, quarantine_path, reason) of unreadable files. Returns
    ``None`` if the ledger shows the batch was already published.
    """
    key = {"query_id": query_id, "batch_id": batch_id, "run_id": airflow_run_id}
    with conn.transaction():
        claimed = conn.execute(
            """
            INSERT INTO pipeline_batch_ledger (spark_query_id, spark_batch_id, airflow_run_id, input_files, input_rows)
            SELECT %(query_id)s, %(batch_id)s, %(run_id)s, %(files)s,
                   (SELECT count(*) FROM staging_events
                     WHERE spark_query_id = %(query_id)s AND spark_batch_id = %(batch_id)s)
            ON CONFLICT DO NOTHING
            RETURNING input_rows
            """,
            {**key, "files": input_files},
        ).fetchone()
        if claimed is None:
            _drop_staged(conn, query_id, batch_id)
            return None
        total = claimed[0]
        invalid = conn.execute(
            """
            INSERT INTO dead_letter_events (event_id, raw_data, validation_errors, schema_version, source_file,
                                            source_line, airflow_run_id, spark_query_id, spark_batch_id)
            SELECT event_id, raw_data, parse_errors, schema_version, source_file, source_line,
                   %(run_id)s, spark_query_id, spark_batch_id
              FROM staging_events
             WHERE spark_query_id = %(query_id)s AND spark_batch_id = %(batch_id)s AND parse_errors IS NOT NULL
            """,
            key,
        ).rowcount
        columns = ", ".join(_EVENT_COLUMNS)
        inserted = conn.execute(
            f"""
            INSERT INTO ecommerce_events ({columns}, airflow_run_id, spark_query_id, spark_batch_id)
            SELECT DISTINCT ON (event_id) {columns}, %(run_id)s, spark_query_id, spark_batch_id
              FROM staging_events
             WHERE spark_query_id = %(query_id)s AND spark_batch_id = %(batch_id)s AND parse_errors IS NULL
             ORDER BY event_id, source_file, source_line
            ON CONFLICT (event_id) DO NOTHING
            RETURNING is_late_arrival
            """,
            key,
        ).fetchall()
        valid = len(inserted)
        late = sum(1 for (is_late,) in inserted if is_late)
        for source_file, quarantine_path, reason in quarantined:
            conn.execute(
                """
                INSERT INTO quarantined_files (source_file, quarantine_path, reason, airflow_run_id,
                                               spark_query_id, spark_batch_id)
                VALUES (%s, %s, %s, %s, %s, %s)
                """,
                (source_file, quarantine_path, reason, airflow_run_id, query_id, batch_id),
            )
        outcome = BatchOutcome(
            total=total,
            valid=valid,
            invalid=invalid,
            duplicates=total - valid - invalid,
            late=late,
            quarantined_files=len(quarantined),
            processing_time_ms=int((time.monotonic() - started) * 1000),
        )
        seconds = max(outcome.processing_time_ms, 1) / 1000
        conn.execute(
            """
            INSERT INTO data_quality_metrics (batch_id, total_records, valid_records, validity_rate,
                invalid_records, duplicate_records, late_records, quarantined_files, processing_time_ms,
                throughput, airflow_run_id, spark_query_id, spark_batch_id)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            """,
            (
                f"{query_id}/{batch_id}", outcome.total, outcome.valid, outcome.validity_rate, outcome.invalid,
                outcome.duplicates, outcome.late, outcome.quarantined_files, outcome.processing_time_ms,
                round(outcome.total / seconds, 2), airflow_run_id, query_id, batch_id,
            ),
        )
        _drop_staged(conn, query_id, batch_id)
    return outcome


def _drop_staged(conn: psycopg.Connection, query_id: str, batch_id: int) -> None:
    conn.execute(
        "DELETE FROM staging_events WHERE spark_query_id = %s AND spark_batch_id = %s", (query_id, batch_id)
    )
