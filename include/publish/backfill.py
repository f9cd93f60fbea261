"""Backfills: re-read the archived files of one DAG run's data interval and re-derive their rows.

A backfill run of ``ecommerce_events`` (``airflow backfill create`` or the UI's backfill dialog; Airflow
gives it run_type ``backfill`` and the data interval of its schedule slot) goes through the same tasks as
an every-minute run, in batch mode:

1. ``detect_work`` lists the files that *landed* in the interval, from ARCHIVE_DIR (``archived_files``);
2. ``ingest`` runs the same Spark job with ``--run-type backfill``: it reads exactly that file list (no
   streaming query, no checkpoint, no file moves), applies the same parse and transforms, and COPYs the rows
   into ``staging_events`` under a fresh backfill batch id recorded in ``pipeline_backfill_ledger``;
3. ``audit`` validates them with the same Great Expectations suite (over ``revalidation_candidates``) and
   re-derives them (``publish_backfill``) in one transaction; ``publish`` passes the counts on.

**Which rows a backfill owns.** Exactly the rows of the files it re-read, matched by lineage
(``source_file``, ``source_line``). For each such line the new verdict is compared with where the line is
now: a line that passes and is stored stays untouched; a line that passes and is dead-lettered moves into
``ecommerce_events`` (its dead letter becomes ``resolved``); a line that fails and is stored moves into
``dead_letter_events`` (an earlier dead letter of the line is reopened, never duplicated); every move is a
row in ``dead_letter_moves``. Rows of other files are never touched, so a window whose files are no longer
archived (ARCHIVE_RETENTION_DAYS) changes nothing. A second identical backfill therefore changes no row.

**Landing time.** A file's landing time is its modification time: Spark's ``binaryFile`` source reports it
as ``modificationTime``, the ingest files it under ``ARCHIVE_DIR/YYYY-MM-DD/HH/`` by it, and the move into
the archive (a rename, or copy2 across file systems) preserves it. So a window maps to at most a few hour
folders, and the exact landing time of each file is one ``stat`` away; no table needs to be kept in sync.

**Concurrency.** Every writer of the two tables takes the transaction lock ``PUBLISH_LOCK_SQL``; backfills
and replays also hold the session lock ``REVALIDATION_LOCK`` while they use ``revalidation_candidates``.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from include.publish import every_minute
from include.publish.every_minute import PUBLISH_LOCK_SQL
from include.quality.audit import MISSING_ID_KEY
from include.settings import Settings
from include.storage.connections import open_connection, with_connection
from include.storage.staging import EVENT_COLUMNS

log = logging.getLogger(__name__)

REVALIDATION_TABLE = "revalidation_candidates"
REVALIDATION_LOCK = "ecommerce_events revalidation"
# The DAG's schedule period: the window of a run whose data interval is empty (runs made before the DAG's
# timetable carried an interval) is the period that ends at its logical date.
DEFAULT_WINDOW = timedelta(minutes=1)
_COLLISION_SUFFIX = re.compile(r"^(?P<stem>.+)__\d+$")


class BackfillAlreadyPublished(RuntimeError):
    """The backfill batch of this run was published meanwhile; nothing to do."""


@dataclass(frozen=True)
class ArchivedFile:
    path: Path          # where it is now, under ARCHIVE_DIR
    source_file: str    # its lineage name: the landing path recorded on its rows
    landed_at: datetime


def is_backfill_run(run_type: object) -> bool:
    """``dag_run.run_type`` of a run created by ``airflow backfill create`` or the UI's backfill dialog."""
    return str(getattr(run_type, "value", run_type)) == "backfill"


def window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The landing-time window [start, end) of a run's data interval (see ``DEFAULT_WINDOW``)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    return (end - DEFAULT_WINDOW, end) if start >= end else (start, end)


def landed_at(path: Path) -> datetime:
    """The landing time of a file: its mtime, at the millisecond precision Spark reports and files it by."""
    milliseconds = path.stat().st_mtime_ns // 1_000_000
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


def lineage_name(settings: Settings, archived: Path) -> str:
    """The landing path its rows carry as ``source_file`` (the archive keeps the name; ``x__1.csv`` is the
    second file named ``x.csv`` in one hour folder)."""
    match = _COLLISION_SUFFIX.match(archived.stem)
    name = f"{match['stem']}{archived.suffix}" if match else archived.name
    return str(settings.landing_dir / name)


def archived_files(settings: Settings, start: datetime, end: datetime) -> list[ArchivedFile]:
    """The archived CSV files that landed in [start, end), reading only the hour folders of the window."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    found = []
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour < end:
        folder = settings.archive_dir / f"{hour:%Y-%m-%d}" / f"{hour:%H}"
        for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
            moment = landed_at(path)
            if start <= moment < end:
                found.append(ArchivedFile(path, lineage_name(settings, path), moment))
        hour += timedelta(hours=1)
    return found


def detect_window(settings: Settings, interval_start: datetime, interval_end: datetime) -> bool:
    """``detect_work`` of a backfill run: does the archive hold files that landed in the run's window?"""
    start, end = window(interval_start, interval_end)
    files = archived_files(settings, start, end)
    print(f"backfill window [{start:%Y-%m-%d %H:%M:%S}, {end:%Y-%m-%d %H:%M:%S}) UTC: {len(files)} archived file(s)"
          + "".join(f"\n  {f.path} (landed {f.landed_at:%H:%M:%S.%f})" for f in files))
    if not files:
        print(f"nothing to re-read: no file landed then, or it is older than ARCHIVE_RETENTION_DAYS="
              f"{settings.archive_retention_days}; rows stored for that window stay as they are")
    return bool(files)


@contextmanager
def revalidation_lock(settings: Settings, wait_seconds: float | None = None) -> Iterator[bool]:
    """Hold the session advisory lock that owns ``revalidation_candidates`` (backfills, replays, retention).

    Waits for it (logging every 10 s) unless ``wait_seconds`` is given; yields whether it was acquired.
    The lock dies with its session, so a killed task never leaves it behind.
    """
    conn = open_connection(settings, autocommit=True)
    try:
        started = time.monotonic()
        while not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (REVALIDATION_LOCK,)).fetchone()[0]:
            waited = time.monotonic() - started
            if wait_seconds is not None and waited >= wait_seconds:
                yield False
                return
            if int(waited) % 10 == 0:
                log.info("another backfill or replay is validating; waiting (%.0f s so far)", waited)
            time.sleep(1)
        yield True
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------- staging (Spark)

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


# ------------------------------------------------------------------------------------------ audit + publish

def prepare_candidates(conn: psycopg.Connection, airflow_run_id: str) -> dict[str, Any]:
    """Pin this run's unpublished backfill batch(es) and fill ``revalidation_candidates`` with their rows
    that parsed, one per event_id, leaving out event_ids stored from a file this backfill does not own
    (those rows are duplicates). Where an event_id occurs on several owned lines, the line that holds it
    now wins, then the first by file and line (as the every-minute runs choose)."""
    with conn.transaction():
        batches = conn.execute(
            "SELECT backfill_batch_id, source_files, input_files FROM pipeline_backfill_ledger "
            "WHERE airflow_run_id = %s AND published_at IS NULL FOR UPDATE", (airflow_run_id,),
        ).fetchall()
        ids = [b[0] for b in batches]
        owned = sorted({f for b in batches for f in b[1]})
        conn.execute(f"TRUNCATE {REVALIDATION_TABLE}")
        candidates = conn.execute(
            f"""
            INSERT INTO {REVALIDATION_TABLE}
            SELECT DISTINCT ON (s.event_id, {MISSING_ID_KEY}) s.*
              FROM staging_events s
             WHERE s.spark_query_id = ANY(%(ids)s) AND s.parse_errors IS NULL
               AND NOT EXISTS (SELECT 1 FROM ecommerce_events e
                                WHERE e.event_id = s.event_id AND NOT e.source_file = ANY(%(owned)s))
             ORDER BY s.event_id, {MISSING_ID_KEY},
                      EXISTS (SELECT 1 FROM ecommerce_events e WHERE e.event_id = s.event_id
                                 AND e.source_file = s.source_file AND e.source_line = s.source_line) DESC,
                      s.source_file, s.source_line
            """,
            {"ids": ids, "owned": owned},
        ).rowcount
        conn.execute(f"ANALYZE {REVALIDATION_TABLE}")
    return {"backfill_batches": [str(i) for i in ids], "source_files": owned,
            "input_files": sum(b[2] for b in batches), "candidate_rows": candidates}


def route_rule_failures(conn: psycopg.Connection, audit: dict[str, Any], settings: Settings) -> None:
    """The publish's rule routing (``include.publish.every_minute.route_rule_failures``) over ``revalidation_candidates``."""
    every_minute.route_rule_failures(conn, audit, settings, REVALIDATION_TABLE)
    conn.execute("CREATE INDEX ON rule_failures (staging_row_id)")


_LINEAGE = "schema_version, source_file, source_line, airflow_run_id, spark_query_id, spark_batch_id"


def publish_backfill(conn: psycopg.Connection, audit: dict[str, Any], settings: Settings,
                     airflow_run_id: str) -> dict[str, Any]:
    """Re-derive the owned lines of the pinned backfill batches in one transaction; return the counts."""
    ids = audit["backfill_batches"]
    with conn.transaction():
        conn.execute(PUBLISH_LOCK_SQL)
        pending = conn.execute(
            "SELECT count(*) FROM pipeline_backfill_ledger WHERE backfill_batch_id = ANY(%s::uuid[]) "
            "AND published_at IS NULL", (ids,)).fetchone()[0]
        if pending != len(ids):
            raise BackfillAlreadyPublished(f"{len(ids) - pending} of the backfill batches were published meanwhile")
        route_rule_failures(conn, audit, settings)
        # The new verdict of every staged line, next to where the line is now.
        conn.execute(
            f"""
            CREATE TEMP TABLE verdicts ON COMMIT DROP AS
            SELECT s.staging_row_id, s.event_id, s.source_file, s.source_line, s.raw_data,
                   CASE WHEN s.parse_errors IS NOT NULL THEN 'parse'
                        WHEN c.staging_row_id IS NULL THEN 'duplicate'
                        WHEN f.rules IS NOT NULL THEN 'rule'
                        ELSE 'pass' END AS verdict,
                   coalesce(f.rules, '{{}}') AS failed_rules,
                   coalesce(s.parse_errors, f.reasons) AS reasons,
                   CASE WHEN f.rules IS NOT NULL THEN to_jsonb(c) - 'raw_data' END AS typed_row,
                   (SELECT e.event_id FROM ecommerce_events e
                     WHERE e.source_file = s.source_file AND e.source_line = s.source_line LIMIT 1) AS stored_event_id,
                   (SELECT d.id FROM dead_letter_events d
                     WHERE d.source_file = s.source_file AND d.source_line = s.source_line
                     ORDER BY d.id DESC LIMIT 1) AS dead_letter_id
              FROM staging_events s
              LEFT JOIN {REVALIDATION_TABLE} c USING (staging_row_id)
              LEFT JOIN (SELECT staging_row_id, array_agg(rule ORDER BY rule) AS rules,
                                string_agg(reason, '; ' ORDER BY rule) AS reasons
                           FROM rule_failures GROUP BY 1) f USING (staging_row_id)
             WHERE s.spark_query_id = ANY(%s::uuid[])
            """,
            (ids,),
        )
        counts = dict(conn.execute("SELECT verdict, count(*) FROM verdicts GROUP BY 1").fetchall())
        summary = {"rows": sum(counts.values()), **{k: counts.get(k, 0) for k in ("pass", "rule", "parse", "duplicate")}}

        # Failing lines: (re)open their one dead letter; a stored line's event leaves ecommerce_events.
        summary["dead_letters_updated"] = conn.execute(
            """
            UPDATE dead_letter_events d
               SET status = 'open', status_changed_at = CASE WHEN d.status <> 'open' THEN now() ELSE d.status_changed_at END,
                   error_kind = v.verdict, failed_rules = v.failed_rules, validation_errors = v.reasons,
                   typed_row = v.typed_row, airflow_run_id = %s
              FROM verdicts v
             WHERE v.verdict IN ('rule', 'parse') AND d.id = v.dead_letter_id
               AND (d.status, d.error_kind, d.failed_rules, d.validation_errors)
                   IS DISTINCT FROM ('open', v.verdict, v.failed_rules, v.reasons)
            """,
            (airflow_run_id,),
        ).rowcount
        summary["dead_letters_added"] = conn.execute(
            f"""
            INSERT INTO dead_letter_events (event_id, raw_data, validation_errors, error_kind, failed_rules,
                                            typed_row, {_LINEAGE})
            SELECT v.event_id, s.raw_data, v.reasons, v.verdict, v.failed_rules, v.typed_row, s.schema_version,
                   s.source_file, s.source_line, %s, s.spark_query_id, s.spark_batch_id
              FROM verdicts v JOIN staging_events s USING (staging_row_id)
             WHERE v.verdict IN ('rule', 'parse') AND v.dead_letter_id IS NULL
            """,
            (airflow_run_id,),
        ).rowcount
        moved_out = conn.execute(
            """
            WITH gone AS (
                DELETE FROM ecommerce_events e USING verdicts v
                 WHERE v.verdict IN ('rule', 'parse') AND e.source_file = v.source_file
                   AND e.source_line = v.source_line
                RETURNING e.event_id, e.source_file, e.source_line
            )
            INSERT INTO dead_letter_moves (direction, cause, event_id, source_file, source_line, dead_letter_id,
                                           failed_rules, airflow_run_id)
            SELECT 'to_dead_letter', 'backfill', g.event_id, g.source_file, g.source_line, d.id, d.failed_rules, %s
              FROM gone g JOIN LATERAL (SELECT id, failed_rules FROM dead_letter_events d
                                         WHERE d.source_file = g.source_file AND d.source_line = g.source_line
                                         ORDER BY id DESC LIMIT 1) d ON true
            """,
            (airflow_run_id,),
        ).rowcount

        # Passing lines not stored: store them (an event_id stored meanwhile makes the line a duplicate).
        columns = ", ".join(EVENT_COLUMNS)
        conn.execute(
            f"""
            CREATE TEMP TABLE stored_now ON COMMIT DROP AS
            WITH stored AS (
                INSERT INTO ecommerce_events ({columns}, airflow_run_id, spark_query_id, spark_batch_id)
                SELECT {", ".join("c." + c for c in EVENT_COLUMNS)}, %s, c.spark_query_id, c.spark_batch_id
                  FROM {REVALIDATION_TABLE} c JOIN verdicts v USING (staging_row_id)
                 WHERE v.verdict = 'pass' AND v.stored_event_id IS NULL
                 ORDER BY c.source_file, c.source_line
                ON CONFLICT (event_id) DO NOTHING
                RETURNING event_id, source_file, source_line
            )
            SELECT * FROM stored
            """,
            (airflow_run_id,),
        )
        moved_in = conn.execute(
            """
            WITH resolved AS (
                UPDATE dead_letter_events d SET status = 'resolved', status_changed_at = now()
                  FROM stored_now s
                 WHERE d.source_file = s.source_file AND d.source_line = s.source_line AND d.status = 'open'
                RETURNING d.id, d.event_id, d.source_file, d.source_line, d.failed_rules
            )
            INSERT INTO dead_letter_moves (direction, cause, event_id, source_file, source_line, dead_letter_id,
                                           failed_rules, airflow_run_id)
            SELECT 'to_events', 'backfill', event_id, source_file, source_line, id, failed_rules, %s FROM resolved
            """,
            (airflow_run_id,),
        ).rowcount
        inserted = conn.execute("SELECT count(*) FROM stored_now").fetchone()[0]
        # dead_letters_updated/_added include the dead letters of the lines that moved out of ecommerce_events
        summary.update(moved_to_events=moved_in, moved_to_dead_letter=moved_out, events_added=inserted - moved_in)
        conn.execute(
            "UPDATE pipeline_backfill_ledger SET published_at = now(), summary = %s WHERE backfill_batch_id = ANY(%s::uuid[])",
            (Jsonb(summary), ids),
        )
        conn.execute("DELETE FROM staging_events WHERE spark_query_id = ANY(%s::uuid[])", (ids,))
        conn.execute(f"TRUNCATE {REVALIDATION_TABLE}")
    return summary


def audit_and_publish(settings: Settings, airflow_run_id: str) -> dict[str, Any]:
    """The ``audit`` task of a backfill run: validate this run's staged rows with the suite, re-derive them.

    Both steps run under the revalidation lock (``revalidation_candidates`` is shared with replays), so the
    rows published are the rows validated; the write itself also takes the publish lock.
    """
    from include.quality.audit import validate

    with revalidation_lock(settings):
        pinned = with_connection(settings, lambda conn: prepare_candidates(conn, airflow_run_id))
        if not pinned["backfill_batches"]:
            return {"backfill": True, **pinned, **_gate_fields({}, {"rows": 0, "pass": 0, "rule": 0, "parse": 0,
                                                                   "duplicate": 0})}
        result = {**pinned, **validate(settings, airflow_run_id, table=REVALIDATION_TABLE)}
        summary = with_connection(settings, lambda conn: publish_backfill(conn, result, settings, airflow_run_id))
    return {"backfill": True, **pinned, **summary, **_gate_fields(result, summary),
            "data_docs": result.get("data_docs")}


def _gate_fields(result: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """What the ``quality_gate`` task reads, in the shape of an every-minute run's publish summary."""
    from include.publish.every_minute import validity_rate

    valid, invalid = summary["pass"], summary["rule"] + summary["parse"]
    rules = result.get("rules", {})
    failing = sorted(
        ({"rule": name, "rows": r["unexpected_count"], "description": r["description"],
          "sample_event_ids": r["sample_event_ids"]} for name, r in rules.items() if r["unexpected_count"]),
        key=lambda r: -r["rows"],
    )
    return {"total": summary["rows"], "valid": valid, "invalid": invalid, "duplicates": summary["duplicate"],
            "validity_rate": validity_rate(valid, invalid), "failing_rules": failing,
            "table_checks": result.get("table_checks", {})}


# ----------------------------------------------------------------------------------------------- retention

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HOUR = re.compile(r"^\d{2}$")


def delete_expired_archive(settings: Settings, now: datetime | None = None,
                           lock_wait_seconds: float = 60) -> dict[str, Any]:
    """Delete archived files older than ARCHIVE_RETENTION_DAYS (0 keeps everything).

    Safe by construction: only whole ``YYYY-MM-DD/HH`` hour folders of the archive layout whose hour ended
    before the cut-off are touched (nothing else under ARCHIVE_DIR, nothing in the landing or quarantine
    directories); archived files are published by definition (a file is archived only after its batch is in
    the ledger); and the deletion holds the revalidation lock, so it never pulls a file from under a
    running backfill (it skips this time if one is running).
    """
    days = settings.archive_retention_days
    if days <= 0:
        return {"retention_days": days, "deleted_files": 0, "deleted_folders": 0, "skipped": "retention disabled"}
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    files = folders = 0
    with revalidation_lock(settings, wait_seconds=lock_wait_seconds) as acquired:
        if not acquired:
            return {"retention_days": days, "deleted_files": 0, "deleted_folders": 0,
                    "skipped": "a backfill or replay is running"}
        for day in sorted(p for p in settings.archive_dir.glob("*") if p.is_dir() and _DAY.match(p.name)):
            for hour in sorted(p for p in day.glob("*") if p.is_dir() and _HOUR.match(p.name)):
                ends = datetime.strptime(f"{day.name} {hour.name}", "%Y-%m-%d %H").replace(tzinfo=UTC) + timedelta(hours=1)
                if ends > cutoff:
                    continue
                files += sum(1 for p in hour.rglob("*") if p.is_file())
                shutil.rmtree(hour)
                folders += 1
            if not any(day.iterdir()):
                day.rmdir()
    return {"retention_days": days, "cutoff": cutoff.isoformat(), "deleted_files": files, "deleted_folders": folders}
