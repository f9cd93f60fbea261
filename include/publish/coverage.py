"""What a backfill re-derives, and how far it has got: requests, chunks and their ledger.

A **request** is what an operator asked for: an Airflow backfill of ``ecommerce_events`` (its whole range of
data intervals) or a window named on the Trigger form (a manual run's params). Its key names it in the ledger
(``backfill 7``, ``reprocess <run id>``) and its reason goes into every move it makes.

A **chunk** is the part one covering run re-derives at once: from the first minute not yet covered, up to
BACKFILL_CHUNK_MINUTES of history (a Trigger-form window: all of it), in one Spark job and one transaction. Its
row in ``pipeline_backfill_ledger`` is written when a run claims it (under an advisory lock on the request,
so two runs of one backfill never claim the same minutes), filled in when the Spark job has staged it, and
published with the re-derive. Every later run of the request whose minutes a published chunk holds is covered
(and, with the REST API, closed by the covering run before it even starts: include/airflow/backfill_runs.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from include.names import REVALIDATION_LOCK
from include.storage.locks import xact_lock


@dataclass(frozen=True)
class Request:
    key: str             # "backfill 7", "reprocess manual__2026-…", "run backfill__2026-…" (without the REST API)
    start: datetime      # the claim-time range asked for, [start, end)
    end: datetime
    reason: str = ""

    def describe(self) -> str:
        return f"{self.key} ({self.start:%Y-%m-%d %H:%M}–{self.end:%Y-%m-%d %H:%M} UTC)"


@dataclass(frozen=True)
class Chunk:
    backfill_batch_id: str
    airflow_run_id: str      # the covering run
    start: datetime
    end: datetime
    request_key: str
    request_start: datetime
    request_end: datetime
    reason: str
    staged: bool
    published: bool

    @property
    def last(self) -> bool:
        """Whether this chunk reaches the end of its request."""
        return self.end >= self.request_end


_CHUNK = ("backfill_batch_id::text, airflow_run_id, window_start, window_end, request_key, request_start, request_end, "
          "coalesce(reason, ''), staged_at IS NOT NULL, published_at IS NOT NULL")


def covering(conn: psycopg.Connection, request_key: str, start: datetime, end: datetime) -> Chunk | None:
    """The chunk of ``request_key`` that holds [start, end), the newest if several do."""
    row = conn.execute(
        f"SELECT {_CHUNK} FROM pipeline_backfill_ledger WHERE request_key = %s AND window_start <= %s "
        "AND window_end >= %s ORDER BY started_at DESC LIMIT 1", (request_key, start, end)).fetchone()
    return Chunk(*row) if row else None


def claim(conn: psycopg.Connection, request: Request, start: datetime, end: datetime, airflow_run_id: str,
          chunk_minutes: int | None) -> tuple[Chunk, bool]:
    """The chunk that covers [start, end) of ``request``: a chunk already claimed, or a new one claimed now for
    ``airflow_run_id``, from ``start`` to ``chunk_minutes`` later (None: to the request's end), never past the
    request's end nor into a chunk claimed later. Returns (the chunk, whether it is this run's to re-derive)."""
    with conn.transaction():
        xact_lock(conn, f"{REVALIDATION_LOCK} claim {request.key}")
        found = covering(conn, request.key, start, end)
        if found is not None:
            return found, found.airflow_run_id == airflow_run_id and not found.published
        limit = request.end if chunk_minutes is None else min(request.end, start + timedelta(minutes=chunk_minutes))
        next_claimed = conn.execute(
            "SELECT min(window_start) FROM pipeline_backfill_ledger WHERE request_key = %s AND window_start > %s",
            (request.key, start)).fetchone()[0]
        chunk_end = min(limit, next_claimed) if next_claimed else limit
        row = conn.execute(
            f"""INSERT INTO pipeline_backfill_ledger (backfill_batch_id, airflow_run_id, window_start, window_end,
                    request_key, request_start, request_end, reason, input_files, input_rows, source_files, started_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, 0, '{{}}', now()) RETURNING {_CHUNK}""",
            (str(uuid.uuid4()), airflow_run_id, start, chunk_end, request.key, request.start, request.end,
             request.reason or None)).fetchone()
    return Chunk(*row), True


def take_over(conn: psycopg.Connection, chunk: Chunk, airflow_run_id: str) -> Chunk:
    """Make an unpublished chunk whose covering run ended without publishing it this run's (its staged rows,
    if any, are dropped: this run stages it again)."""
    with conn.transaction():
        conn.execute("DELETE FROM staging_events WHERE spark_query_id = %s::uuid", (chunk.backfill_batch_id,))
        row = conn.execute(
            f"UPDATE pipeline_backfill_ledger SET airflow_run_id = %s, staged_at = NULL, started_at = now() "
            f"WHERE backfill_batch_id = %s::uuid AND published_at IS NULL RETURNING {_CHUNK}",
            (airflow_run_id, chunk.backfill_batch_id)).fetchone()
    if row is None:
        raise RuntimeError(f"chunk {chunk.backfill_batch_id} was published meanwhile")
    return Chunk(*row)


def chunk_of(conn: psycopg.Connection, airflow_run_id: str) -> Chunk | None:
    """The unpublished chunk ``airflow_run_id`` claimed (what its Spark job stages and its re-derive publishes)."""
    row = conn.execute(f"SELECT {_CHUNK} FROM pipeline_backfill_ledger WHERE airflow_run_id = %s "
                       "AND published_at IS NULL ORDER BY started_at DESC LIMIT 1", (airflow_run_id,)).fetchone()
    return Chunk(*row) if row else None


def published_by(conn: psycopg.Connection, airflow_run_id: str) -> Chunk | None:
    """The chunk ``airflow_run_id`` published last."""
    row = conn.execute(f"SELECT {_CHUNK} FROM pipeline_backfill_ledger WHERE airflow_run_id = %s "
                       "AND published_at IS NOT NULL ORDER BY published_at DESC LIMIT 1", (airflow_run_id,)).fetchone()
    return Chunk(*row) if row else None


COUNTED = ("input_files", "rows", "pass", "rule", "parse", "duplicate", "moved_to_events", "moved_to_dead_letter",
           "events_added", "dead_letters_added", "dead_letters_updated")


def progress(conn: psycopg.Connection, request_key: str) -> dict:
    """What the published chunks of ``request_key`` did, summed, and how much of the request they cover."""
    rows = conn.execute(
        "SELECT window_start, window_end, request_start, request_end, input_files, summary "
        "FROM pipeline_backfill_ledger WHERE request_key = %s AND published_at IS NOT NULL ORDER BY window_start",
        (request_key,)).fetchall()
    totals = dict.fromkeys(COUNTED, 0)
    covered = timedelta()
    for start, end, _, _, files, summary in rows:
        covered += end - start
        for key in COUNTED:
            totals[key] += files if key == "input_files" else int((summary or {}).get(key, 0))
    requested = rows[0][3] - rows[0][2] if rows else timedelta()
    return {**totals, "chunks": len(rows), "covered_minutes": int(covered.total_seconds() // 60),
            "requested_minutes": int(requested.total_seconds() // 60)}


def record_summary(conn: psycopg.Connection, backfill_batch_id: str, summary: dict) -> None:
    conn.execute("UPDATE pipeline_backfill_ledger SET summary = %s WHERE backfill_batch_id = %s::uuid",
                 (Jsonb(summary), backfill_batch_id))
