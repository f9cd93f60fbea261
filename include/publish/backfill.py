"""Backfills: re-derive the rows of the archived deliveries of one chunk (include/publish/coverage.py).

A covering run of a backfill, or of a window named on the Trigger form, takes the DAG's backfill path:

1. ``detect_work`` claims its chunk (include/airflow/backfill_runs.py: up to BACKFILL_CHUNK_MINUTES of history
   from the first minute not yet covered);
2. ``backfill_ingest`` runs ``spark_jobs/backfill_batch.py``: it reads exactly the deliveries claimed in the
   chunk's window and still archived (no streaming query, no checkpoint, no file moves), applies the ingest's
   parse and transforms, and COPYs the rows into ``staging_events`` under the chunk's backfill batch id;
3. ``rederive`` (``rederive`` here) validates them with the same Great Expectations suite (over
   ``revalidation_candidates``) and re-derives them (``publish_backfill``) in one transaction.

**Which rows a backfill owns.** Exactly the rows of the deliveries it re-read, matched by lineage
(``delivery_id``, ``source_line``): two deliveries of one name are two files. For each such line the new
verdict is compared with where the line is now: a line that passes and is stored stays untouched; a line that
passes and is dead-lettered moves into ``ecommerce_events`` (its dead letter becomes ``resolved``); a line that
fails and is stored moves into ``dead_letter_events`` (an earlier dead letter of the line is reopened, never
duplicated); every move is a row in ``dead_letter_moves``, with the request's reason. Rows of other files are
never touched, so a window whose files are no longer archived (ARCHIVE_RETENTION_DAYS) changes nothing. A
second identical backfill therefore changes no row.

**Concurrency.** Every writer of the two tables takes the publish lock (``include.storage.locks.publish_lock``);
backfills and replays also hold the revalidation lock while they use ``revalidation_candidates``.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from include.contract.rules import severities
from include.publish import sql
from include.results import PublishSummary, Validation, failing_rules, time_span, validity_rate
from include.settings import Settings
from include.storage.connections import with_connection
from include.storage.locks import publish_lock, revalidation_lock

# Second DISTINCT ON key over staging_events s: NULL for rows with an event_id, the row's own id otherwise,
# so rows without an event_id never collapse into one
MISSING_ID_KEY = "CASE WHEN s.event_id IS NULL THEN s.staging_row_id END"

REVALIDATION_TABLE = "revalidation_candidates"


class BackfillAlreadyPublished(RuntimeError):
    """The backfill batch of this run was published meanwhile; nothing to do."""


def is_backfill_run(run_type: object) -> bool:
    """``dag_run.run_type`` of a run created by ``airflow backfill create`` or the UI's backfill dialog."""
    return str(getattr(run_type, "value", run_type)) == "backfill"


@dataclass
class PinnedBackfill:
    """The staged, unpublished backfill batch (chunk) of one run and the candidates built from its rows."""

    backfill_batches: list[str]
    deliveries: list[int]
    input_files: int
    candidate_rows: int
    reason: str = ""


def prepare_candidates(conn: psycopg.Connection, airflow_run_id: str) -> PinnedBackfill:
    """Pin this run's unpublished backfill batch(es) and fill ``revalidation_candidates`` with their rows
    that parsed, one per event_id, leaving out event_ids stored from a file this backfill does not own
    (those rows are duplicates). Where an event_id occurs on several owned lines, the line that holds it
    now wins, then the first by file and line (as the every-minute runs choose)."""
    with conn.transaction():
        batches = conn.execute(
            "SELECT backfill_batch_id, deliveries, input_files, coalesce(reason, request_key, '') "
            "FROM pipeline_backfill_ledger WHERE airflow_run_id = %s AND published_at IS NULL "
            "AND staged_at IS NOT NULL FOR UPDATE", (airflow_run_id,),
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
                                WHERE e.event_id = s.event_id AND NOT coalesce(e.delivery_id = ANY(%(owned)s), false))
             ORDER BY s.event_id, {MISSING_ID_KEY},
                      EXISTS (SELECT 1 FROM ecommerce_events e WHERE e.event_id = s.event_id
                                 AND e.delivery_id = s.delivery_id AND e.source_line = s.source_line) DESC,
                      s.delivery_id, s.source_line
            """,
            {"ids": ids, "owned": owned},
        ).rowcount
        conn.execute(f"ANALYZE {REVALIDATION_TABLE}")
    return PinnedBackfill([str(i) for i in ids], owned, sum(b[2] for b in batches), candidates,
                          "; ".join(sorted({b[3] for b in batches if b[3]})))


def publish_backfill(conn: psycopg.Connection, pinned: PinnedBackfill, validation: Validation, settings: Settings,
                     airflow_run_id: str) -> dict[str, int]:
    """Re-derive the owned lines of the pinned backfill batches in one transaction; return the counts."""
    ids = pinned.backfill_batches
    with conn.transaction():
        publish_lock(conn)
        pending = conn.execute(
            "SELECT count(*) FROM pipeline_backfill_ledger WHERE backfill_batch_id = ANY(%s::uuid[]) "
            "AND published_at IS NULL", (ids,)).fetchone()[0]
        if pending != len(ids):
            raise BackfillAlreadyPublished(f"{len(ids) - pending} of the backfill batches were published meanwhile")
        sql.route_rule_failures(conn, validation, settings, REVALIDATION_TABLE)
        # The new verdict of every staged line, next to where the line is now.
        conn.execute(
            f"""
            CREATE TEMP TABLE verdicts ON COMMIT DROP AS
            SELECT s.staging_row_id, s.event_id, s.source_file, s.source_line, s.delivery_id, s.raw_data,
                   CASE WHEN s.parse_errors IS NOT NULL THEN 'parse'
                        WHEN c.staging_row_id IS NULL THEN 'duplicate'
                        WHEN f.rules IS NOT NULL THEN 'rule'
                        ELSE 'pass' END AS verdict,
                   coalesce(f.rules, '{{}}') AS failed_rules,
                   coalesce(s.parse_errors, f.reasons) AS reasons,
                   CASE WHEN f.rules IS NOT NULL THEN to_jsonb(c) - 'raw_data' END AS typed_row,
                   (SELECT e.event_id FROM ecommerce_events e
                     WHERE e.delivery_id = s.delivery_id AND e.source_line = s.source_line LIMIT 1) AS stored_event_id,
                   (SELECT d.id FROM dead_letter_events d
                     WHERE d.delivery_id = s.delivery_id AND d.source_line = s.source_line
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
                                            typed_row, rescued_data, {sql.LEGACY_DEAD_LETTER_LINEAGE})
            SELECT v.event_id, s.raw_data, v.reasons, v.verdict, v.failed_rules, v.typed_row, s.rescued_data,
                   s.schema_version,
                   s.source_file, s.source_line, %s, s.spark_query_id, s.spark_batch_id, s.delivery_id
              FROM verdicts v JOIN staging_events s USING (staging_row_id)
             WHERE v.verdict IN ('rule', 'parse') AND v.dead_letter_id IS NULL
            """,
            (airflow_run_id,),
        ).rowcount
        # the event times of the stored lines about to leave ecommerce_events (for the asset event's span)
        leaving = conn.execute(
            """SELECT min(e.event_time), max(e.event_time) FROM ecommerce_events e JOIN verdicts v
                   ON e.delivery_id = v.delivery_id AND e.source_line = v.source_line
                WHERE v.verdict IN ('rule', 'parse')""").fetchone()
        moves = sql.legacy_record_moves("to_dead_letter", "backfill", reason=True, rows="""
            gone g JOIN LATERAL (SELECT id AS dead_letter_id, failed_rules FROM dead_letter_events d
                                  WHERE d.delivery_id = g.delivery_id AND d.source_line = g.source_line
                                  ORDER BY id DESC LIMIT 1) d ON true""")
        moved_out = conn.execute(
            f"""
            WITH gone AS (
                DELETE FROM ecommerce_events e USING verdicts v
                 WHERE v.verdict IN ('rule', 'parse') AND e.delivery_id = v.delivery_id
                   AND e.source_line = v.source_line
                RETURNING e.event_id, e.source_file, e.source_line, e.delivery_id
            )
            {moves}
            """,
            (airflow_run_id, pinned.reason or None),
        ).rowcount

        # Passing lines not stored: store them (an event_id stored meanwhile makes the line a duplicate).
        inserted = sql.legacy_insert_events(
            f"{REVALIDATION_TABLE} c JOIN verdicts v USING (staging_row_id)", run_id="%s",
            where="v.verdict = 'pass' AND v.stored_event_id IS NULL", order_by="c.delivery_id, c.source_line",
            returning="event_id, source_file, source_line, delivery_id, event_time")
        conn.execute(f"CREATE TEMP TABLE stored_now ON COMMIT DROP AS WITH stored AS ({inserted}) SELECT * FROM stored",
                     (airflow_run_id,))
        moved_in = conn.execute(
            f"""
            WITH resolved AS (
                UPDATE dead_letter_events d SET status = 'resolved', status_changed_at = now()
                  FROM stored_now s
                 WHERE d.delivery_id = s.delivery_id AND d.source_line = s.source_line AND d.status = 'open'
                RETURNING d.id AS dead_letter_id, d.event_id, d.source_file, d.source_line, d.delivery_id,
                          d.failed_rules
            )
            {sql.legacy_record_moves("to_events", "backfill", "resolved", reason=True)}
            """,
            (airflow_run_id, pinned.reason or None),
        ).rowcount
        # warn-level violations of the lines that are events now (kept or stored by this run)
        summary["violations_recorded"] = conn.execute(sql.legacy_record_violations(
            f"{REVALIDATION_TABLE} c JOIN verdicts v USING (staging_row_id)", run_id="%s",
            where="v.verdict = 'pass' AND (v.stored_event_id IS NOT NULL OR (c.delivery_id, c.source_line) IN "
                  "(SELECT delivery_id, source_line FROM stored_now))"), (airflow_run_id,)).rowcount
        inserted, *entering = conn.execute("SELECT count(*), min(event_time), max(event_time) FROM stored_now").fetchone()
        summary["event_time_span"] = time_span([*leaving, *entering])
        # dead_letters_updated/_added include the dead letters of the lines that moved out of ecommerce_events
        summary.update(moved_to_events=moved_in, moved_to_dead_letter=moved_out, events_added=inserted - moved_in)
        conn.execute(
            "UPDATE pipeline_backfill_ledger SET published_at = now(), summary = %s WHERE backfill_batch_id = ANY(%s::uuid[])",
            (Jsonb(summary), ids),
        )
        conn.execute("DELETE FROM staging_events WHERE spark_query_id = ANY(%s::uuid[])", (ids,))
        conn.execute(f"TRUNCATE {REVALIDATION_TABLE}")
    return summary


def rederive(settings: Settings, airflow_run_id: str) -> PublishSummary:
    """The ``rederive`` task of a backfill run: validate this run's staged rows with the suite, re-derive them.

    Both steps run under the revalidation lock (``revalidation_candidates`` is shared with replays), so the
    rows published are the rows validated; the write itself also takes the publish lock.
    """
    from include.quality.audit import validate

    with revalidation_lock(settings):
        pinned = with_connection(settings, lambda conn: prepare_candidates(conn, airflow_run_id))
        if not pinned.backfill_batches:
            return PublishSummary(path="backfill")
        validation = validate(settings, airflow_run_id, table=REVALIDATION_TABLE)
        counts = with_connection(settings, lambda conn: publish_backfill(conn, pinned, validation, settings,
                                                                         airflow_run_id))
    valid, invalid = counts["pass"], counts["rule"] + counts["parse"]
    severity = severities(settings)
    return PublishSummary(
        path="backfill", total=counts["rows"], valid=valid, invalid=invalid, duplicates=counts["duplicate"],
        validity_rate=validity_rate(valid, invalid), failing_rules=failing_rules(validation, severity),
        warnings=failing_rules(validation, severity, "warn"),
        table_checks=validation.table_checks, data_docs=validation.data_docs,
        moves={"input_files": pinned.input_files, **{k: v for k, v in counts.items() if k != "event_time_span"}},
        event_time_span=counts["event_time_span"],
    )
