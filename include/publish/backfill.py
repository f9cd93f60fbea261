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

``publish_backfill`` runs its steps in one transaction, in this order, each a function below: **pin** (the
publish lock; ``check_unpublished``: ``BackfillAlreadyPublished``), **route** (``include.publish.sql``
``route_rule_failures``), **judge** each staged line (``judge_lines``: its verdict next to where it is now),
**dead-letter** the failing lines (``reopen_dead_letters``, ``add_dead_letters``) and move their stored events
out (``move_out_of_events``), **insert** the passing lines not stored (``store_passing_lines``) and resolve their
dead letters (``resolve_dead_letters``), **record** the warn-level violations (``record_violations``), **ledger**
(``mark_published``, ``clear_staged_rows``).

**Concurrency.** Every writer of the two tables takes the publish lock (``include.storage.locks.publish_lock``);
backfills and replays also hold the revalidation lock while they use ``revalidation_candidates``.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.sql import SQL, Identifier, Placeholder
from psycopg.types.json import Jsonb

from include.contract.rules import severities
from include.publish import sql
from include.results import PublishSummary, Validation, failing_rules, time_span, validity_rate
from include.settings import Settings
from include.storage.connections import with_connection
from include.storage.locks import publish_lock, revalidation_lock
from include.storage.privileges import analyze

REVALIDATION_TABLE = "revalidation_candidates"
CANDIDATES = Identifier(REVALIDATION_TABLE)
# Second DISTINCT ON key over staging_events: NULL for rows with an event_id, the row's own id otherwise, so rows
# without an event_id never collapse into one
MISSING_ID_KEY = SQL("CASE WHEN staging_events.event_id IS NULL THEN staging_events.staging_row_id END")
FAILING = SQL("verdicts.verdict IN ('rule', 'parse')")  # a line that is a dead letter now
SAME_LINE = SQL("{0}.delivery_id = verdicts.delivery_id AND {0}.source_line = verdicts.source_line")


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
        batches = lock_staged_batches(conn, airflow_run_id)
        ids = [batch_id for batch_id, *_ in batches]
        owned = sorted({delivery for _, deliveries, *_ in batches for delivery in deliveries})
        candidates = fill_candidates(conn, ids, owned)
    return PinnedBackfill([str(i) for i in ids], owned, sum(files for _, _, files, _ in batches), candidates,
                          "; ".join(sorted({reason for *_, reason in batches if reason})))


def lock_staged_batches(conn: psycopg.Connection, airflow_run_id: str) -> list[tuple]:
    """The run's staged, unpublished backfill batches, locked: (id, deliveries, input files, reason)."""
    return conn.execute(
        "SELECT backfill_batch_id, deliveries, input_files, coalesce(reason, request_key, '') FROM"
        " pipeline_backfill_ledger WHERE airflow_run_id = %s AND published_at IS NULL AND staged_at IS NOT NULL"
        " FOR UPDATE", (airflow_run_id,)).fetchall()


def fill_candidates(conn: psycopg.Connection, ids: list, owned: list[int]) -> int:
    """``revalidation_candidates``: the parsed rows of the batches ``ids``, one per event_id, none whose
    event_id is stored from a delivery not ``owned``; how many (the table analysed for the suite's scans)."""
    conn.execute(SQL("TRUNCATE {}").format(CANDIDATES))
    candidates = conn.execute(SQL("""
        INSERT INTO {candidates}
        SELECT DISTINCT ON (staging_events.event_id, {missing_id}) staging_events.*
          FROM staging_events
         WHERE staging_events.spark_query_id = ANY({ids}) AND staging_events.parse_errors IS NULL
           AND NOT EXISTS (SELECT 1 FROM ecommerce_events WHERE ecommerce_events.event_id = staging_events.event_id
                              AND NOT coalesce(ecommerce_events.delivery_id = ANY({owned}), false))
         ORDER BY staging_events.event_id, {missing_id},
                  EXISTS (SELECT 1 FROM ecommerce_events WHERE ecommerce_events.event_id = staging_events.event_id
                             AND ecommerce_events.delivery_id = staging_events.delivery_id
                             AND ecommerce_events.source_line = staging_events.source_line) DESC,
                  staging_events.delivery_id, staging_events.source_line
        """).format(candidates=CANDIDATES, missing_id=MISSING_ID_KEY, ids=Placeholder("ids"),
                    owned=Placeholder("owned")),
        {"ids": ids, "owned": owned},
    ).rowcount
    analyze(conn, REVALIDATION_TABLE)
    return candidates


def publish_backfill(conn: psycopg.Connection, pinned: PinnedBackfill, validation: Validation, settings: Settings,
                     airflow_run_id: str) -> dict[str, int]:
    """Re-derive the owned lines of the pinned backfill batches in one transaction (the module's docstring lists
    the steps); return the counts."""
    ids, reason = pinned.backfill_batches, pinned.reason or None
    with conn.transaction():
        publish_lock(conn)
        check_unpublished(conn, ids)
        sql.route_rule_failures(conn, validation, settings, REVALIDATION_TABLE)
        summary = judge_lines(conn, ids)
        # Failing lines: (re)open their one dead letter; a stored line's event leaves ecommerce_events.
        summary["dead_letters_updated"] = reopen_dead_letters(conn, airflow_run_id)
        summary["dead_letters_added"] = add_dead_letters(conn, airflow_run_id)
        leaving = event_times_leaving(conn)
        moved_out = move_out_of_events(conn, airflow_run_id, reason)
        # Passing lines not stored: store them (an event_id stored meanwhile makes the line a duplicate).
        store_passing_lines(conn, airflow_run_id)
        moved_in = resolve_dead_letters(conn, airflow_run_id, reason)
        summary["violations_recorded"] = record_violations(conn, airflow_run_id)
        inserted, *entering = conn.execute(
            "SELECT count(*), min(event_time), max(event_time) FROM stored_now").fetchone()
        summary["event_time_span"] = time_span([*leaving, *entering])
        # dead_letters_updated/_added include the dead letters of the lines that moved out of ecommerce_events
        summary.update(moved_to_events=moved_in, moved_to_dead_letter=moved_out, events_added=inserted - moved_in)
        mark_published(conn, ids, summary)
        clear_staged_rows(conn, ids)
    return summary


def check_unpublished(conn: psycopg.Connection, ids: list[str]) -> None:
    """``BackfillAlreadyPublished`` if a pinned batch was published meanwhile (the publish lock, held from here to
    the commit, keeps every other from publishing it now)."""
    pending = conn.execute("SELECT count(*) FROM pipeline_backfill_ledger WHERE backfill_batch_id = ANY(%s::uuid[]) "
                           "AND published_at IS NULL", (ids,)).fetchone()[0]
    if pending != len(ids):
        raise BackfillAlreadyPublished(f"{len(ids) - pending} of the backfill batches were published meanwhile")


def judge_lines(conn: psycopg.Connection, ids: list[str]) -> dict[str, int]:
    """``verdicts``: the new verdict of every staged line (parse, duplicate, rule, pass), next to where the line
    is now (its stored event, its newest dead letter); how many lines got each verdict."""
    conn.execute(SQL("""
        CREATE TEMP TABLE verdicts ON COMMIT DROP AS
        SELECT staging_events.staging_row_id, staging_events.event_id, staging_events.source_file,
               staging_events.source_line, staging_events.delivery_id, staging_events.raw_data,
               CASE WHEN staging_events.parse_errors IS NOT NULL THEN 'parse'
                    WHEN {candidates}.staging_row_id IS NULL THEN 'duplicate'
                    WHEN failures.rules IS NOT NULL THEN 'rule'
                    ELSE 'pass' END AS verdict,
               coalesce(failures.rules, '{{}}') AS failed_rules,
               coalesce(staging_events.parse_errors, failures.reasons) AS reasons,
               CASE WHEN failures.rules IS NOT NULL THEN to_jsonb({candidates}) - 'raw_data' END AS typed_row,
               (SELECT ecommerce_events.event_id FROM ecommerce_events
                 WHERE ecommerce_events.delivery_id = staging_events.delivery_id
                   AND ecommerce_events.source_line = staging_events.source_line LIMIT 1) AS stored_event_id,
               (SELECT dead_letter_events.id FROM dead_letter_events
                 WHERE dead_letter_events.delivery_id = staging_events.delivery_id
                   AND dead_letter_events.source_line = staging_events.source_line
                 ORDER BY dead_letter_events.id DESC LIMIT 1) AS dead_letter_id
          FROM staging_events
          LEFT JOIN {candidates} USING (staging_row_id)
          LEFT JOIN (SELECT staging_row_id, array_agg(rule ORDER BY rule) AS rules,
                            string_agg(reason, '; ' ORDER BY rule) AS reasons
                       FROM rule_failures GROUP BY 1) AS failures USING (staging_row_id)
         WHERE staging_events.spark_query_id = ANY(%s::uuid[])
        """).format(candidates=CANDIDATES), (ids,))
    counts = dict(conn.execute("SELECT verdict, count(*) FROM verdicts GROUP BY 1").fetchall())
    return {"rows": sum(counts.values()), **{k: counts.get(k, 0) for k in ("pass", "rule", "parse", "duplicate")}}


def reopen_dead_letters(conn: psycopg.Connection, airflow_run_id: str) -> int:
    """The newest dead letter of each failing line: open, with the new verdict, rules and reasons (unless it
    says that already); how many changed."""
    return conn.execute(SQL("""
        UPDATE dead_letter_events
           SET status = 'open',
               status_changed_at = CASE WHEN dead_letter_events.status <> 'open' THEN now()
                                        ELSE dead_letter_events.status_changed_at END,
               error_kind = verdicts.verdict, failed_rules = verdicts.failed_rules,
               validation_errors = verdicts.reasons, typed_row = verdicts.typed_row, airflow_run_id = %s
          FROM verdicts
         WHERE {failing} AND dead_letter_events.id = verdicts.dead_letter_id
           AND (dead_letter_events.status, dead_letter_events.error_kind, dead_letter_events.failed_rules,
                dead_letter_events.validation_errors)
               IS DISTINCT FROM ('open', verdicts.verdict, verdicts.failed_rules, verdicts.reasons)
        """).format(failing=FAILING), (airflow_run_id,)).rowcount


def add_dead_letters(conn: psycopg.Connection, airflow_run_id: str) -> int:
    """A dead letter for each failing line that has none; how many."""
    return conn.execute(SQL("""
        INSERT INTO dead_letter_events (event_id, raw_data, validation_errors, error_kind, failed_rules, typed_row,
                                        rescued_data, {lineage})
        SELECT verdicts.event_id, staging_events.raw_data, verdicts.reasons, verdicts.verdict, verdicts.failed_rules,
               verdicts.typed_row, staging_events.rescued_data, {values}
          FROM verdicts JOIN staging_events USING (staging_row_id)
         WHERE {failing} AND verdicts.dead_letter_id IS NULL
        """).format(lineage=sql.columns(sql.DEAD_LETTER_LINEAGE), failing=FAILING,
                    values=sql.dead_letter_lineage("staging_events", Placeholder())), (airflow_run_id,)).rowcount


def event_times_leaving(conn: psycopg.Connection) -> tuple:
    """The earliest and latest event_time of the stored events of the failing lines (for the asset event's span)."""
    return conn.execute(SQL(
        "SELECT min(event_time), max(event_time) FROM ecommerce_events JOIN verdicts ON {} WHERE {}"
    ).format(SAME_LINE.format(Identifier("ecommerce_events")), FAILING)).fetchone()


def move_out_of_events(conn: psycopg.Connection, airflow_run_id: str, reason: str | None) -> int:
    """Delete the stored events of the failing lines, recording each move (with the line's dead letter)."""
    moves = sql.record_moves(SQL(
        "gone JOIN LATERAL (SELECT id AS dead_letter_id, failed_rules FROM dead_letter_events"
        " WHERE dead_letter_events.delivery_id = gone.delivery_id AND dead_letter_events.source_line = gone.source_line"
        " ORDER BY id DESC LIMIT 1) AS dead_letter ON true"),
        direction="to_dead_letter", cause="backfill", run_id=Placeholder(), reason=Placeholder())
    return conn.execute(SQL("""
        WITH gone AS (
            DELETE FROM ecommerce_events USING verdicts WHERE {failing} AND {same_line}
            RETURNING ecommerce_events.event_id, ecommerce_events.source_file, ecommerce_events.source_line,
                      ecommerce_events.delivery_id
        )
        {moves}
        """).format(failing=FAILING, same_line=SAME_LINE.format(Identifier("ecommerce_events")), moves=moves),
        (airflow_run_id, reason)).rowcount


def store_passing_lines(conn: psycopg.Connection, airflow_run_id: str) -> None:
    """``stored_now``: the passing lines not stored, stored now (by file and line)."""
    inserted = sql.insert_events(
        REVALIDATION_TABLE, join=sql.join_using("verdicts", "staging_row_id"), run_id=Placeholder(),
        where=SQL("verdicts.verdict = 'pass' AND verdicts.stored_event_id IS NULL"),
        order_by=("delivery_id", "source_line"),
        returning=("event_id", "source_file", "source_line", "delivery_id", "event_time"))
    conn.execute(SQL("CREATE TEMP TABLE stored_now ON COMMIT DROP AS WITH stored AS ({}) SELECT * FROM stored")
                 .format(inserted), (airflow_run_id,))


def resolve_dead_letters(conn: psycopg.Connection, airflow_run_id: str, reason: str | None) -> int:
    """The open dead letters of the lines stored now: resolved, each move recorded; how many."""
    moves = sql.record_moves(Identifier("resolved"), direction="to_events", cause="backfill", run_id=Placeholder(),
                             reason=Placeholder())
    return conn.execute(SQL("""
        WITH resolved AS (
            UPDATE dead_letter_events SET status = 'resolved', status_changed_at = now()
              FROM stored_now
             WHERE dead_letter_events.delivery_id = stored_now.delivery_id
               AND dead_letter_events.source_line = stored_now.source_line AND dead_letter_events.status = 'open'
            RETURNING dead_letter_events.id AS dead_letter_id, dead_letter_events.event_id,
                      dead_letter_events.source_file, dead_letter_events.source_line, dead_letter_events.delivery_id,
                      dead_letter_events.failed_rules
        )
        {moves}
        """).format(moves=moves), (airflow_run_id, reason)).rowcount


def record_violations(conn: psycopg.Connection, airflow_run_id: str) -> int:
    """The warn-level violations of the lines that are events now (kept, or stored by this run); how many."""
    stored_now = SQL("({}) IN (SELECT delivery_id, source_line FROM stored_now)").format(
        sql.columns(("delivery_id", "source_line"), REVALIDATION_TABLE))
    return conn.execute(sql.record_violations(
        REVALIDATION_TABLE, join=sql.join_using("verdicts", "staging_row_id"), run_id=Placeholder(),
        where=SQL("verdicts.verdict = 'pass' AND (verdicts.stored_event_id IS NOT NULL OR {})").format(stored_now)),
        (airflow_run_id,)).rowcount


def mark_published(conn: psycopg.Connection, ids: list[str], summary: dict) -> None:
    conn.execute("UPDATE pipeline_backfill_ledger SET published_at = now(), summary = %s "
                 "WHERE backfill_batch_id = ANY(%s::uuid[])", (Jsonb(summary), ids))


def clear_staged_rows(conn: psycopg.Connection, ids: list[str]) -> None:
    """The re-derived batches' rows out of ``staging_events`` and ``revalidation_candidates``."""
    conn.execute("DELETE FROM staging_events WHERE spark_query_id = ANY(%s::uuid[])", (ids,))
    conn.execute(SQL("TRUNCATE {}").format(CANDIDATES))

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
