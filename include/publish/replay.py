"""Dead-letter replay: re-validate open dead letters with the current suite and publish those that now pass.

The ``ecommerce_dlq_replay`` DAG calls ``replay``. It selects the **open**, **rule**-kind dead letters that
match its filters (a broken rule, a time range of ``failed_at``, a source file), rebuilds each one's typed
row (``dead_letter_events.typed_row``, the row exactly as Spark typed it and the audit saw it) into
``revalidation_candidates``, validates that table with the same Great Expectations suite and routes it with
the same per-rule predicates (checked against GX's counts), then in one transaction:

* rows that pass now → ``ecommerce_events``; their dead letter becomes ``replayed``; a ``dead_letter_moves`` row;
* rows that still fail → stay ``open`` with ``replay_attempts`` + 1 and the reasons of the current rules;
* rows whose event_id is already stored → ``resolved`` (a duplicate of a stored event).

``apply`` runs its steps in one transaction, in this order, each a function below: **route** (the publish
lock, ``include.publish.sql.route_rule_failures``), **insert** the rows that pass now (``store_passing``),
**record** their warn-level violations (``record_violations``), **move** their dead letters to ``replayed``
(``mark_replayed``), resolve the already stored (``resolve_already_stored``), count the still failing
(``note_still_failing``), then hold the counts to the approved dry run's (``check_approved``).

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
from psycopg.sql import SQL, Composed, Identifier, Placeholder

from include.contract.rules import severities
from include.publish import sql
from include.publish.backfill import REVALIDATION_TABLE
from include.results import Validation, failing_rules, time_span
from include.settings import Settings
from include.storage.connections import with_connection
from include.storage.locks import publish_lock, revalidation_lock
from include.storage.privileges import analyze

log = logging.getLogger(__name__)

CANDIDATES = Identifier(REVALIDATION_TABLE)  # a selected dead letter's typed row; staging_row_id is its id
# the rule-kind dead letters that can be re-validated: their typed row is kept
REPLAYABLE = SQL("dead_letter_events.error_kind = 'rule' AND dead_letter_events.typed_row IS NOT NULL")


class _DryRun(Exception):
    """Raised inside the replay transaction to roll it back after counting."""


class SelectionChanged(RuntimeError):
    """The approved dry run no longer describes what the replay would do; nothing was changed."""


def selection(rule: str | None, failed_from: datetime | None, failed_to: datetime | None,
              source_file: str | None, up_to_id: int | None = None) -> tuple[Composed, dict[str, Any]]:
    """SQL predicate over ``dead_letter_events`` for the open dead letters the operator asked for, and its
    parameters; ``up_to_id`` leaves out dead letters written after a dry run (the highest id it selected)."""
    def column(name: str) -> Identifier:
        return Identifier("dead_letter_events", name)

    clauses = [SQL("{} = 'open'").format(column("status"))]
    if up_to_id is not None:
        clauses.append(SQL("{} <= {}").format(column("id"), Placeholder("up_to_id")))
    if rule:
        clauses.append(SQL("{} = ANY({})").format(Placeholder("rule"), column("failed_rules")))
    if failed_from:
        clauses.append(SQL("{} >= {}").format(column("failed_at"), Placeholder("failed_from")))
    if failed_to:
        clauses.append(SQL("{} < {}").format(column("failed_at"), Placeholder("failed_to")))
    if source_file:  # a full path, or just the file name
        clauses.append(SQL("({0} = {1} OR {0} LIKE '%%/' || {1})").format(column("source_file"), Placeholder("file")))
    return SQL(" AND ").join(clauses), {"rule": rule, "failed_from": failed_from, "failed_to": failed_to,
                                        "file": source_file, "up_to_id": up_to_id}


def prepare_candidates(conn: psycopg.Connection, where: Composed, params: dict[str, Any]) -> dict[str, int]:
    """Rebuild ``revalidation_candidates`` from the selected rule-kind dead letters (staging_row_id = the
    dead letter's id), one per event_id, leaving out event_ids already stored; count the rest."""
    with conn.transaction():
        selected, parse_kind, not_replayable, up_to_id = conn.execute(SQL("""
            SELECT count(*),
                   count(*) FILTER (WHERE dead_letter_events.error_kind = 'parse'),
                   count(*) FILTER (WHERE dead_letter_events.error_kind = 'rule'
                                      AND dead_letter_events.typed_row IS NULL),
                   max(dead_letter_events.id)
              FROM dead_letter_events WHERE {where}
            """).format(where=where), params).fetchone()
        conn.execute(SQL("TRUNCATE {}").format(CANDIDATES))
        candidates = conn.execute(SQL("""
            INSERT INTO {candidates}
            SELECT (jsonb_populate_record(NULL::{candidates}, replayable.typed_row
                        || jsonb_build_object('staging_row_id', replayable.id, 'raw_data', replayable.raw_data))).*
              FROM (SELECT DISTINCT ON (dead_letter_events.event_id) dead_letter_events.*
                      FROM dead_letter_events
                     WHERE {where} AND {replayable}
                       AND NOT EXISTS (SELECT 1 FROM ecommerce_events
                                        WHERE ecommerce_events.event_id = dead_letter_events.event_id)
                     ORDER BY dead_letter_events.event_id, dead_letter_events.id) AS replayable
            """).format(candidates=CANDIDATES, where=where, replayable=REPLAYABLE), params).rowcount
        analyze(conn, REVALIDATION_TABLE)
    return {"selected": selected, "parse_kind_skipped": parse_kind, "not_replayable": not_replayable,
            "candidates": candidates, "up_to_id": up_to_id}


# what a dry run shows the approver and the approved replay must then do again
APPROVED_COUNTS = ("published", "still_failing", "resolved_already_stored")


def apply(conn: psycopg.Connection, validation: Validation | None, settings: Settings, where: Composed,
          params: dict[str, Any], airflow_run_id: str, dry_run: bool, approved_by: str | None = None,
          expected: dict[str, int] | None = None) -> dict[str, int]:
    """Route, publish and update the dead letters in one transaction (the module's docstring lists the steps;
    rolled back for a dry run, and when the counts differ from the ``expected`` ones of the approved dry run:
    ``SelectionChanged``)."""
    counts: dict[str, int] = {}
    try:
        with conn.transaction():
            publish_lock(conn)
            sql.route_rule_failures(conn, validation, settings, REVALIDATION_TABLE)
            counts["event_time_span"] = store_passing(conn, airflow_run_id)
            counts["violations_recorded"] = record_violations(conn, airflow_run_id)
            counts["published"] = mark_replayed(conn, airflow_run_id, approved_by)
            counts["resolved_already_stored"] = resolve_already_stored(conn, where, params)
            counts["still_failing"] = note_still_failing(conn, where, params)
            check_approved(counts, expected)
            if dry_run:
                raise _DryRun
    except _DryRun:
        log.info("dry run: rolled back")
    return counts


def store_passing(conn: psycopg.Connection, airflow_run_id: str) -> list[str] | None:
    """``published``: the candidates that pass now, stored (by dead letter id), with their event times; the
    span of those times."""
    inserted = sql.insert_events(REVALIDATION_TABLE, run_id=Placeholder(),
                                 where=sql.passes_every_rule(REVALIDATION_TABLE),
                                 order_by=("staging_row_id",), returning=("event_id", "event_time"))
    conn.execute(SQL("""
        CREATE TEMP TABLE published ON COMMIT DROP AS
        WITH stored AS ({inserted})
        SELECT {candidates}.staging_row_id AS dead_letter_id, stored.event_time
          FROM {candidates} JOIN stored USING (event_id)
        """).format(inserted=inserted, candidates=CANDIDATES), (airflow_run_id,))
    return time_span(conn.execute("SELECT min(event_time), max(event_time) FROM published").fetchone())


def record_violations(conn: psycopg.Connection, airflow_run_id: str) -> int:
    """The warn-level violations of the rows stored now; how many."""
    published = SQL(" JOIN published ON published.dead_letter_id = {}").format(
        Identifier(REVALIDATION_TABLE, "staging_row_id"))
    return conn.execute(sql.record_violations(REVALIDATION_TABLE, join=published, run_id=Placeholder(),
                                              where=SQL("TRUE")), (airflow_run_id,)).rowcount


def mark_replayed(conn: psycopg.Connection, airflow_run_id: str, approved_by: str | None) -> int:
    """The dead letters of the rows stored now: replayed, each move recorded with its approver; how many."""
    moves = sql.record_moves(Identifier("replayed"), direction="to_events", cause="replay", run_id=Placeholder(),
                             approved_by=Placeholder())
    return conn.execute(SQL("""
        WITH replayed AS (
            UPDATE dead_letter_events
               SET status = 'replayed', status_changed_at = now(), last_replayed_at = now(),
                   replay_attempts = dead_letter_events.replay_attempts + 1
              FROM published WHERE dead_letter_events.id = published.dead_letter_id
            RETURNING dead_letter_events.id AS dead_letter_id, dead_letter_events.event_id,
                      dead_letter_events.source_file, dead_letter_events.source_line, dead_letter_events.delivery_id,
                      dead_letter_events.failed_rules
        )
        {moves}
        """).format(moves=moves), (airflow_run_id, approved_by)).rowcount


def resolve_already_stored(conn: psycopg.Connection, where: Composed, params: dict[str, Any]) -> int:
    """The selected dead letters whose event_id is stored (not by this replay): resolved; how many."""
    return conn.execute(SQL("""
        UPDATE dead_letter_events
           SET status = 'resolved', status_changed_at = now(), last_replayed_at = now(),
               replay_attempts = dead_letter_events.replay_attempts + 1
         WHERE {where} AND {replayable}
           AND EXISTS (SELECT 1 FROM ecommerce_events WHERE ecommerce_events.event_id = dead_letter_events.event_id)
           AND dead_letter_events.id NOT IN (SELECT dead_letter_id FROM published)
        """).format(where=where, replayable=REPLAYABLE), params).rowcount


def note_still_failing(conn: psycopg.Connection, where: Composed, params: dict[str, Any]) -> int:
    """The selected dead letters still open: one more attempt, with the rules they break now and why; how many.
    (The rows published or resolved above are no longer open, so this touches only the others.)"""
    return conn.execute(SQL("""
        WITH failures AS (SELECT staging_row_id, array_agg(rule ORDER BY rule) AS rules,
                                 string_agg(reason, '; ' ORDER BY rule) AS reasons
                            FROM rule_failures GROUP BY 1)
        UPDATE dead_letter_events
           SET replay_attempts = dead_letter_events.replay_attempts + 1, last_replayed_at = now(),
               failed_rules = coalesce(
                   (SELECT rules FROM failures WHERE failures.staging_row_id = dead_letter_events.id),
                   dead_letter_events.failed_rules),
               validation_errors = coalesce(
                   (SELECT reasons FROM failures WHERE failures.staging_row_id = dead_letter_events.id),
                   dead_letter_events.validation_errors)
         WHERE {where} AND {replayable}
        """).format(where=where, replayable=REPLAYABLE), params).rowcount


def check_approved(counts: dict[str, int], expected: dict[str, int] | None) -> None:
    """``SelectionChanged`` when the counts differ from the approved dry run's (``expected``; None: no approval)."""
    def shown(values: dict[str, int]) -> str:
        return ", ".join(f"{key} {values[key]}" for key in APPROVED_COUNTS)

    if expected is not None and shown(counts) != shown(expected):
        raise SelectionChanged(f"the selected dead letters changed since the dry run that was approved (approved: "
                               f"{shown(expected)}; now: {shown(counts)}); nothing was changed: trigger the replay "
                               "again and approve the new counts")

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
        with_connection(settings, lambda conn: conn.execute(SQL("TRUNCATE {}").format(CANDIDATES)))
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
