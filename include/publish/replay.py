"""Dead-letter replay: re-validate open dead letters with the current suite and publish those that now pass.

The ``ecommerce_dlq_replay`` DAG calls ``replay``. It selects the **open**, **rule**-kind dead letters that
match its filters (a broken rule, a time range of ``failed_at``, a source file), rebuilds each one's typed
row (``dead_letter_events.typed_row``, the row exactly as Spark typed it and the audit saw it) into
``revalidation_candidates``, validates that table with the same Great Expectations suite and routes it with
the same per-rule predicates (checked against GX's counts), then in one transaction:

* rows that pass now → ``ecommerce_events``; their dead letter becomes ``replayed``; a ``dead_letter_moves`` row;
* rows that still fail → stay ``open`` with ``replay_attempts`` + 1 and the reasons of the current rules;
* rows whose event_id is already stored → ``resolved`` (a duplicate of a stored event).

``dry_run`` does all of it and rolls the transaction back: the counts say what a real run would do.

**Parse-kind dead letters are not replayed here.** They never became typed rows (the line could not be
parsed or typed), so there is nothing for the suite to validate; re-typing a raw CSV line outside Spark
would be a second parser. After a parser fix, re-read their files with a backfill of the window they landed
in: the backfill re-parses the archived file with the current parser and moves the lines that now parse.
The same holds for rule-kind dead letters from before ``typed_row`` existed (counted as ``not_replayable``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import psycopg

from include.contract.rules import severities
from include.publish import sql
from include.publish.backfill import REVALIDATION_TABLE
from include.results import Validation, failing_rules, time_span
from include.settings import Settings
from include.storage.connections import with_connection
from include.storage.locks import publish_lock, revalidation_lock

log = logging.getLogger(__name__)


class _DryRun(Exception):
    """Raised inside the replay transaction to roll it back after counting."""


class SelectionChanged(RuntimeError):
    """The approved dry run no longer describes what the replay would do; nothing was changed."""


def selection(rule: str | None, failed_from: datetime | None, failed_to: datetime | None,
              source_file: str | None, up_to_id: int | None = None) -> tuple[str, dict[str, Any]]:
    """SQL predicate over ``dead_letter_events d`` for the open dead letters the operator asked for;
    ``up_to_id`` leaves out dead letters written after a dry run (the highest id it selected)."""
    clauses = ["d.status = 'open'"]
    if up_to_id is not None:
        clauses.append("d.id <= %(up_to_id)s")
    if rule:
        clauses.append("%(rule)s = ANY(d.failed_rules)")
    if failed_from:
        clauses.append("d.failed_at >= %(failed_from)s")
    if failed_to:
        clauses.append("d.failed_at < %(failed_to)s")
    if source_file:  # a full path, or just the file name
        clauses.append("(d.source_file = %(file)s OR d.source_file LIKE '%%/' || %(file)s)")
    return " AND ".join(clauses), {"rule": rule, "failed_from": failed_from, "failed_to": failed_to,
                                   "file": source_file, "up_to_id": up_to_id}


def prepare_candidates(conn: psycopg.Connection, where: str, params: dict[str, Any]) -> dict[str, int]:
    """Rebuild ``revalidation_candidates`` from the selected rule-kind dead letters (staging_row_id = the
    dead letter's id), one per event_id, leaving out event_ids already stored; count the rest."""
    with conn.transaction():
        counts = conn.execute(
            f"""
            SELECT count(*),
                   count(*) FILTER (WHERE d.error_kind = 'parse'),
                   count(*) FILTER (WHERE d.error_kind = 'rule' AND d.typed_row IS NULL),
                   max(d.id)
              FROM dead_letter_events d WHERE {where}
            """,
            params,
        ).fetchone()
        conn.execute(f"TRUNCATE {REVALIDATION_TABLE}")
        candidates = conn.execute(
            f"""
            INSERT INTO {REVALIDATION_TABLE}
            SELECT (jsonb_populate_record(NULL::{REVALIDATION_TABLE},
                        d.typed_row || jsonb_build_object('staging_row_id', d.id, 'raw_data', d.raw_data))).*
              FROM (SELECT DISTINCT ON (d.event_id) d.*
                      FROM dead_letter_events d
                     WHERE {where} AND d.error_kind = 'rule' AND d.typed_row IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM ecommerce_events e WHERE e.event_id = d.event_id)
                     ORDER BY d.event_id, d.id) d
            """,
            params,
        ).rowcount
        conn.execute(f"ANALYZE {REVALIDATION_TABLE}")
    return {"selected": counts[0], "parse_kind_skipped": counts[1], "not_replayable": counts[2],
            "candidates": candidates, "up_to_id": counts[3]}


# what a dry run shows the approver and the approved replay must then do again
APPROVED_COUNTS = ("published", "still_failing", "resolved_already_stored")


def apply(conn: psycopg.Connection, validation: Validation | None, settings: Settings, where: str,
          params: dict[str, Any], airflow_run_id: str, dry_run: bool, approved_by: str | None = None,
          expected: dict[str, int] | None = None) -> dict[str, int]:
    """Route, publish and update the dead letters in one transaction (rolled back for a dry run, and when
    the counts differ from the ``expected`` ones of the approved dry run: ``SelectionChanged``)."""
    counts: dict[str, int] = {}
    try:
        with conn.transaction():
            publish_lock(conn)
            sql.route_rule_failures(conn, validation, settings, REVALIDATION_TABLE)
            inserted = sql.legacy_insert_events(f"{REVALIDATION_TABLE} c", run_id="%s", where=sql.LEGACY_PASSES_EVERY_RULE,
                                         order_by="c.staging_row_id", returning="event_id, event_time")
            conn.execute(
                f"""
                CREATE TEMP TABLE published ON COMMIT DROP AS
                WITH stored AS ({inserted})
                SELECT c.staging_row_id AS dead_letter_id, stored.event_time
                  FROM {REVALIDATION_TABLE} c JOIN stored USING (event_id)
                """,
                (airflow_run_id,),
            )
            counts["event_time_span"] = time_span(
                conn.execute("SELECT min(event_time), max(event_time) FROM published").fetchone())
            counts["violations_recorded"] = conn.execute(sql.legacy_record_violations(
                f"{REVALIDATION_TABLE} c JOIN published p ON p.dead_letter_id = c.staging_row_id",
                run_id="%s", where="TRUE"), (airflow_run_id,)).rowcount
            counts["published"] = conn.execute(
                f"""
                WITH replayed AS (
                    UPDATE dead_letter_events d
                       SET status = 'replayed', status_changed_at = now(), last_replayed_at = now(),
                           replay_attempts = d.replay_attempts + 1
                      FROM published p WHERE d.id = p.dead_letter_id
                    RETURNING d.id AS dead_letter_id, d.event_id, d.source_file, d.source_line, d.delivery_id,
                              d.failed_rules
                )
                {sql.legacy_record_moves("to_events", "replay", "replayed", approved=True)}
                """,
                (airflow_run_id, approved_by),
            ).rowcount
            counts["resolved_already_stored"] = conn.execute(
                f"""
                UPDATE dead_letter_events d
                   SET status = 'resolved', status_changed_at = now(), last_replayed_at = now(),
                       replay_attempts = d.replay_attempts + 1
                 WHERE {where} AND d.error_kind = 'rule' AND d.typed_row IS NOT NULL
                   AND EXISTS (SELECT 1 FROM ecommerce_events e WHERE e.event_id = d.event_id)
                   AND d.id NOT IN (SELECT dead_letter_id FROM published)
                """,
                params,
            ).rowcount
            # the rows published or resolved above are no longer open, so this touches only the others
            counts["still_failing"] = conn.execute(
                f"""
                WITH f AS (SELECT staging_row_id, array_agg(rule ORDER BY rule) AS rules,
                                  string_agg(reason, '; ' ORDER BY rule) AS reasons
                             FROM rule_failures GROUP BY 1)
                UPDATE dead_letter_events d
                   SET replay_attempts = d.replay_attempts + 1, last_replayed_at = now(),
                       failed_rules = coalesce((SELECT rules FROM f WHERE f.staging_row_id = d.id), d.failed_rules),
                       validation_errors = coalesce((SELECT reasons FROM f WHERE f.staging_row_id = d.id),
                                                    d.validation_errors)
                 WHERE {where} AND d.error_kind = 'rule' AND d.typed_row IS NOT NULL
                """,
                params,
            ).rowcount
            if expected is not None and {k: counts[k] for k in APPROVED_COUNTS} != {k: expected[k] for k in APPROVED_COUNTS}:
                raise SelectionChanged(
                    "the selected dead letters changed since the dry run that was approved (approved: "
                    + ", ".join(f"{k} {expected[k]}" for k in APPROVED_COUNTS) + "; now: "
                    + ", ".join(f"{k} {counts[k]}" for k in APPROVED_COUNTS)
                    + "); nothing was changed: trigger the replay again and approve the new counts")
            if dry_run:
                raise _DryRun
    except _DryRun:
        log.info("dry run: rolled back")
    return counts


def replay(settings: Settings, airflow_run_id: str, *, rule: str | None = None, failed_from: datetime | None = None,
           failed_to: datetime | None = None, source_file: str | None = None, dry_run: bool = True,
           up_to_id: int | None = None, approved_by: str | None = None,
           expected: dict[str, int] | None = None) -> dict[str, Any]:
    """Re-validate the selected open dead letters; return the counts (what would happen, for a dry run).

    The replay DAG runs a dry run, has a person approve its counts, then replays with the dry run's
    ``up_to_id`` (no dead letter written since joins the selection), the approver, and the dry run's counts
    as ``expected``: if another writer changed the selected rows meanwhile, nothing is changed."""
    from include.quality.audit import validate

    where, params = selection(rule, failed_from, failed_to, source_file, up_to_id)
    with revalidation_lock(settings):
        prepared = with_connection(settings, lambda conn: prepare_candidates(conn, where, params))
        validation = validate(settings, airflow_run_id, table=REVALIDATION_TABLE) if prepared["candidates"] else None
        counts = with_connection(settings, lambda conn: apply(conn, validation, settings, where, params,
                                                              airflow_run_id, dry_run, approved_by, expected))
        with_connection(settings, lambda conn: conn.execute(f"TRUNCATE {REVALIDATION_TABLE}"))
    failing = {rule.rule: rule.rows for rule in failing_rules(validation, severities(settings))}
    return {
        "dry_run": dry_run,
        "filters": {"rule": rule, "failed_from": failed_from and failed_from.isoformat(),
                    "failed_to": failed_to and failed_to.isoformat(), "file": source_file},
        **prepared,
        "published": counts["published"],
        "resolved_already_stored": counts["resolved_already_stored"],
        "still_failing": counts["still_failing"],
        "failing_rows_per_rule": failing,
        "approved_by": approved_by,
        "event_time_span": None if dry_run else counts["event_time_span"],
    }
