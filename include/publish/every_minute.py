"""Publish audited batches: one PostgreSQL transaction per run, exactly once per batch.

``publish`` runs its steps in one transaction, in this order, each a function below:

1. **pin**: the publish lock, the audited batches in the temp table ``pinned_batches`` and their ledger rows
   locked (``pin_batches``); a retry after this publish committed reports what the commit wrote
   (``report_published``), and an audit no longer the latest refuses (``check_audit_is_latest``:
   ``AuditOutOfDate``);
2. **route**: each rule's failing candidates by severity (``include.publish.sql.route_rule_failures``): each
   rule's routing predicate (``include.contract.rules.routing_predicate``) must select exactly as many rows as
   Great Expectations counted as unexpected for it, or nothing is published and ``RoutingMismatch`` says which
   rule disagrees; a broken rule of severity fail stops here (``RuleFailed``);
3. **record** what the feed and the warn-level rules say: new columns (``record_new_columns``), violations of
   the rows about to be stored (``record_violations``);
4. **dead-letter**: rows that could not be typed (``staging_events.parse_errors``), kind ``parse``
   (``dead_letter_parse_errors``); candidates that break a rule, kind ``rule``, with every broken rule
   (``dead_letter_rule_failures``);
5. **insert** the other candidates into ``ecommerce_events`` (``insert_events``: an event_id stored meanwhile
   counts as a duplicate);
6. **metrics**: one ``data_quality_metrics`` row per batch, total = valid + invalid + duplicates by construction
   (``record_metrics``);
7. **ledger**: the ledger rows and the deliveries get ``published_at`` (``mark_published``); the staged rows and
   the audit's tables are cleared (``clear_staged_rows``, ``forget_audit``).
"""

from __future__ import annotations

import json

import psycopg
from psycopg.sql import SQL, Composed, Identifier

from include import faults
from include.contract.rules import severities
from include.publish import sql
from include.results import AuditResult, PublishSummary, failing_rules, time_span, validity_rate
from include.settings import Settings
from include.storage.locks import publish_lock

CANDIDATES = "audit_candidates"  # the view of the audited rows (include/quality/audit.py)
LEDGER = "pipeline_batch_ledger"
BATCH_KEY = ("spark_query_id", "spark_batch_id")
RUN_ID = Identifier(LEDGER, "airflow_run_id")  # a batch's rows carry the run that staged it


class AuditOutOfDate(RuntimeError):
    """The audited rows are no longer what the audit saw (e.g. a retry after another audit); re-run the DAG run."""


def in_pinned_batches(relation: str | None = None) -> Composed:
    """True for a row of ``relation`` (None: of the statement's one relation) in a batch this publish pinned."""
    return SQL("({}) IN (SELECT * FROM pinned_batches)").format(sql.columns(BATCH_KEY, relation))


def publish(conn: psycopg.Connection, audit: AuditResult, settings: Settings, airflow_run_id: str) -> PublishSummary:
    """Publish the batches the audit pinned and validated (the module's docstring lists the steps)."""
    severity = severities(settings)
    if not audit.batches:
        return _summary([], audit, severity)
    with conn.transaction():
        generation = publish_lock(conn)
        unpublished = pin_batches(conn, audit.batches)
        if unpublished == 0:  # a retry after this publish committed: report what the commit wrote
            return report_published(conn, audit, severity)
        check_audit_is_latest(conn, audit, unpublished)
        sql.route_rule_failures(conn, audit.validation, settings, CANDIDATES)
        new_columns = record_new_columns(conn, airflow_run_id)
        warned = record_violations(conn)
        dead_letter_parse_errors(conn)
        dead_letter_rule_failures(conn)
        # The audit left out the event_ids stored when it ran; if no writer has stored events since, none of
        # its candidates (one per event_id) can conflict, and the cheaper plain INSERT stores them.
        unchanged = audit.events_generation == generation
        if not unchanged:
            print(f"events were written since the audit (write generation {audit.events_generation} -> "
                  f"{generation}): candidates already stored count as duplicates")
        stored, spans = insert_events(conn, skip_stored=not unchanged)
        batches = record_metrics(conn, stored, count_dead_letters(conn), warned, rules_in_force(settings, severity))
        mark_published(conn, airflow_run_id)
        clear_staged_rows(conn)
        forget_audit(conn)
        faults.reached("publish_in_transaction")
    summary = _summary(batches, audit, severity)
    summary.new_columns = new_columns
    summary.event_time_span = time_span(spans)
    return summary


def pin_batches(conn: psycopg.Connection, batches: list[tuple[str, int]]) -> int:
    """Write the audited batches into ``pinned_batches`` (every later step reads it) and lock their ledger rows;
    return how many of them are still unpublished."""
    conn.execute("CREATE TEMP TABLE pinned_batches (spark_query_id uuid, spark_batch_id bigint) ON COMMIT DROP")
    with conn.cursor().copy("COPY pinned_batches FROM STDIN") as copy:
        for batch in batches:
            copy.write_row(batch)
    return len(conn.execute(SQL("SELECT 1 FROM pipeline_batch_ledger WHERE {} AND published_at IS NULL FOR UPDATE")
                            .format(in_pinned_batches())).fetchall())


def check_audit_is_latest(conn: psycopg.Connection, audit: AuditResult, unpublished: int) -> None:
    """``AuditOutOfDate`` unless every audited batch is unpublished and ``audit_candidates`` (a view of the
    batches the latest audit pinned) shows this audit's batches and rows."""
    if unpublished != len(audit.batches):
        raise AuditOutOfDate(f"{len(audit.batches) - unpublished} of the audited batches were published meanwhile")
    pinned, ours = conn.execute(SQL("SELECT count(*), count(*) FILTER (WHERE {}) FROM audit_pinned_batches")
                                .format(in_pinned_batches())).fetchone()
    if pinned != ours or ours != len(audit.batches):
        raise AuditOutOfDate(f"the latest audit pinned {pinned} batch(es), {ours} of this audit's {len(audit.batches)}")
    candidates = conn.execute(SQL("SELECT count(*) FROM {}").format(Identifier(CANDIDATES))).fetchone()[0]
    if candidates != audit.candidate_rows:
        raise AuditOutOfDate(f"audit_candidates holds {candidates} rows, the audit saw {audit.candidate_rows}")


def record_new_columns(conn: psycopg.Connection, airflow_run_id: str) -> list[dict]:
    """Names of columns the contract does not know that these batches carry and no batch carried before
    (``feed_columns_seen``), each with the first file and a sample value, for the WARNING "new column"."""
    return [
        {"name": name, "source_file": source_file, "sample": sample}
        for name, source_file, sample in conn.execute(SQL(
            "INSERT INTO feed_columns_seen (column_name, first_file, sample_value, airflow_run_id)"
            " SELECT DISTINCT ON (rescued.name) rescued.name, staging_events.source_file,"
            "        staging_events.rescued_data ->> rescued.name, %s"
            "   FROM staging_events, jsonb_object_keys(staging_events.rescued_data) AS rescued(name)"
            "  WHERE staging_events.rescued_data IS NOT NULL AND {pinned}"
            "  ORDER BY rescued.name, (staging_events.rescued_data ->> rescued.name) IS NULL,"
            "           staging_events.staging_row_id"
            " ON CONFLICT (column_name) DO NOTHING RETURNING column_name, first_file, sample_value"
        ).format(pinned=in_pinned_batches("staging_events")), (airflow_run_id,)).fetchall()
    ]


def record_violations(conn: psycopg.Connection) -> dict[tuple[str, int], int]:
    """The warn-level violations of the rows about to be stored (rows that also break a drop rule are dead
    letters, and the dead letter lists every rule they broke); per batch, how many events have one."""
    recorded = sql.record_violations(CANDIDATES, join=sql.join_using(LEDGER, *BATCH_KEY), run_id=RUN_ID,
                                     where=sql.passes_every_rule(CANDIDATES))
    return {(str(query_id), batch_id): events for query_id, batch_id, events in conn.execute(SQL(
        "WITH recorded AS ({}) SELECT spark_query_id, spark_batch_id, count(DISTINCT event_id) FROM recorded"
        " GROUP BY 1, 2").format(recorded)).fetchall()}


def dead_letter_parse_errors(conn: psycopg.Connection) -> None:
    """The pinned batches' rows that could not be typed → ``dead_letter_events``, kind ``parse``."""
    conn.execute(SQL(
        "INSERT INTO dead_letter_events (event_id, raw_data, validation_errors, error_kind, rescued_data, {lineage})"
        " SELECT staging_events.event_id, staging_events.raw_data, staging_events.parse_errors, 'parse',"
        "        staging_events.rescued_data, {values}"
        "   FROM staging_events{ledger}"
        "  WHERE staging_events.parse_errors IS NOT NULL AND {pinned}"
    ).format(lineage=sql.columns(sql.DEAD_LETTER_LINEAGE), values=sql.dead_letter_lineage("staging_events", RUN_ID),
             ledger=sql.join_using(LEDGER, *BATCH_KEY), pinned=in_pinned_batches("staging_events")))


def dead_letter_rule_failures(conn: psycopg.Connection) -> None:
    """The candidates routed to ``rule_failures`` → ``dead_letter_events``, kind ``rule``: one per row, with
    every rule it broke and its reasons, its raw line and its typed row (what a replay re-validates)."""
    conn.execute(SQL(
        "INSERT INTO dead_letter_events (event_id, raw_data, validation_errors, error_kind, failed_rules, typed_row,"
        "                                rescued_data, {lineage})"
        " SELECT {event_id}, staging_events.raw_data,"
        "        string_agg(rule_failures.reason, '; ' ORDER BY rule_failures.rule), 'rule',"
        "        array_agg(rule_failures.rule ORDER BY rule_failures.rule),"
        "        (array_agg(to_jsonb({candidates})))[1], (array_agg({rescued}))[1], {values}"
        "   FROM {candidates} JOIN rule_failures USING (staging_row_id)"
        "   JOIN staging_events USING (staging_row_id)"  # the raw line (the view shows typed columns only)
        "   JOIN pipeline_batch_ledger ON ({ledger_key}) = ({batch_key})"
        "  GROUP BY {row_id}, {event_id}, staging_events.raw_data, {values}"
    ).format(lineage=sql.columns(sql.DEAD_LETTER_LINEAGE), event_id=Identifier(CANDIDATES, "event_id"),
             candidates=Identifier(CANDIDATES), rescued=Identifier(CANDIDATES, "rescued_data"),
             values=sql.dead_letter_lineage(CANDIDATES, RUN_ID), ledger_key=sql.columns(BATCH_KEY, LEDGER),
             batch_key=sql.columns(BATCH_KEY, CANDIDATES), row_id=Identifier(CANDIDATES, "staging_row_id")))


def insert_events(conn: psycopg.Connection, *, skip_stored: bool) -> tuple[dict[tuple[str, int], tuple], list]:
    """The candidates that broke no drop rule → ``ecommerce_events``; per batch (stored, late), and the
    earliest and latest event time of each batch."""
    inserted = sql.insert_events(CANDIDATES, join=sql.join_using(LEDGER, *BATCH_KEY), run_id=RUN_ID,
                                 where=sql.passes_every_rule(CANDIDATES), skip_stored=skip_stored,
                                 returning=(*BATCH_KEY, "is_late_arrival", "event_time"))
    stored, spans = {}, []
    for query_id, batch_id, rows, late, first, last in conn.execute(SQL(
            "WITH stored AS ({}) SELECT spark_query_id, spark_batch_id, count(*),"
            " count(*) FILTER (WHERE is_late_arrival), min(event_time), max(event_time) FROM stored GROUP BY 1, 2"
    ).format(inserted)).fetchall():
        stored[(str(query_id), batch_id)] = (rows, late)
        spans += [first, last]
    return stored, spans


def count_dead_letters(conn: psycopg.Connection) -> dict[tuple[str, int], int]:
    """Per pinned batch, its dead letters (both kinds)."""
    return {(str(query_id), batch_id): rows for query_id, batch_id, rows in conn.execute(SQL(
        "SELECT spark_query_id, spark_batch_id, count(*) FROM dead_letter_events WHERE {} GROUP BY 1, 2")
        .format(in_pinned_batches())).fetchall()}


def rules_in_force(settings: Settings, severity: dict[str, str]) -> str:
    """The thresholds and severities this publish applied, as each metrics row records them (JSON)."""
    return json.dumps({"max_price": settings.max_price, "min_validity_rate": settings.min_validity_rate,
                       "severity": severity})


def record_metrics(conn: psycopg.Connection, stored: dict, invalid: dict, warned: dict, in_force: str) -> list[dict]:
    """One ``data_quality_metrics`` row per pinned batch, in the order they were staged; the rows, as the
    summary lists the batches. A batch's duplicates are its rows neither stored nor dead-lettered."""
    batches = []
    for query_id, batch_id, total, quarantined, started_at, run_id in conn.execute(SQL(
            "SELECT spark_query_id, spark_batch_id, input_rows, quarantined_files, started_at, airflow_run_id"
            " FROM pipeline_batch_ledger WHERE {} ORDER BY staged_at, spark_batch_id").format(in_pinned_batches())
    ).fetchall():
        key = (str(query_id), batch_id)
        (valid, late), bad = stored.get(key, (0, 0)), invalid.get(key, 0)
        batches.append(dict(batch_id=f"{query_id}/{batch_id}", spark_query_id=key[0], spark_batch_id=batch_id,
                            airflow_run_id=run_id, total=total, valid=valid, invalid=bad,
                            duplicates=total - valid - bad, late=late, quarantined_files=quarantined,
                            warned=warned.get(key, 0)))
        conn.execute(
            "INSERT INTO data_quality_metrics (batch_id, total_records, valid_records, validity_rate,"
            "    invalid_records, duplicate_records, late_records, quarantined_files, processing_time_ms,"
            "    throughput, airflow_run_id, spark_query_id, spark_batch_id, warned_records, rules_in_force)"
            " SELECT %(batch_id)s, %(total)s, %(valid)s, %(rate)s, %(invalid)s, %(duplicates)s, %(late)s,"
            "        %(quarantined_files)s, ms, round(%(total)s * 1000.0 / greatest(ms, 1), 2),"
            "        %(airflow_run_id)s, %(spark_query_id)s, %(spark_batch_id)s, %(warned)s, %(in_force)s"
            "   FROM (SELECT (extract(epoch FROM clock_timestamp() - %(started)s) * 1000)::bigint AS ms) elapsed",
            {**batches[-1], "rate": validity_rate(valid, bad), "started": started_at, "in_force": in_force},
        )
    return batches


def mark_published(conn: psycopg.Connection, airflow_run_id: str) -> None:
    """The pinned batches' ledger rows and deliveries: published now (by ``airflow_run_id``)."""
    conn.execute(SQL("UPDATE pipeline_batch_ledger SET published_at = now(), published_by_run_id = %s WHERE {}")
                 .format(in_pinned_batches()), (airflow_run_id,))
    conn.execute(SQL("UPDATE deliveries SET published_at = now() WHERE {}").format(in_pinned_batches()))


def clear_staged_rows(conn: psycopg.Connection) -> str:
    """Remove the published batches' rows from ``staging_events`` (inside the publish transaction).

    Usually they are all it holds (a run drains the backlog): then TRUNCATE, which is instant and leaves no
    dead rows for autovacuum, where a DELETE of a million rows takes seconds. TRUNCATE needs the table to
    itself, so the lock is taken without waiting (an ingest or a backfill staging right now keeps its lock,
    and this publish never waits on it, so no deadlock); if it is busy, or holds rows of other batches, the
    published rows are deleted instead. Returns which of the two it did."""
    try:
        with conn.transaction():
            conn.execute("LOCK TABLE staging_events IN ACCESS EXCLUSIVE MODE NOWAIT")
        others = SQL("SELECT EXISTS (SELECT 1 FROM staging_events WHERE NOT {})").format(in_pinned_batches())
        alone = not conn.execute(others).fetchone()[0]
    except psycopg.errors.LockNotAvailable:
        alone = False
    if alone:
        conn.execute("TRUNCATE staging_events")
        return "truncate"
    conn.execute(SQL("DELETE FROM staging_events WHERE {}").format(in_pinned_batches()))
    return "delete"


def forget_audit(conn: psycopg.Connection) -> None:
    """Empty the audit's tables: the view ``audit_candidates`` shows nothing until the next audit."""
    conn.execute("TRUNCATE audit_pinned_batches, audit_excluded_rows")


def report_published(conn: psycopg.Connection, audit: AuditResult, severity: dict[str, str]) -> PublishSummary:
    """The summary of the pinned batches' earlier, committed publish, from its metrics rows: a retry after a
    kill between the commit and the task's end still gates the quality and announces the rows (the asset
    event of the attempt that committed was never sent)."""
    metrics = conn.execute(SQL(
        "SELECT batch_id, spark_query_id, spark_batch_id, airflow_run_id, total_records, valid_records,"
        " invalid_records, duplicate_records, late_records, quarantined_files, warned_records"
        " FROM data_quality_metrics WHERE {} ORDER BY id").format(in_pinned_batches())).fetchall()
    keys = ("batch_id", "spark_query_id", "spark_batch_id", "airflow_run_id", "total", "valid", "invalid",
            "duplicates", "late", "quarantined_files", "warned")
    batches = [dict(zip(keys, row, strict=True)) | {"spark_query_id": str(row[1])} for row in metrics]
    summary = _summary(batches, audit, severity)
    summary.already_published = True
    # no index leads from a batch to its events: a scan, paid only on this rare path
    summary.event_time_span = time_span(conn.execute(SQL(
        "SELECT min(event_time), max(event_time) FROM ecommerce_events WHERE {}").format(in_pinned_batches())
    ).fetchone())
    return summary


def _summary(batches: list[dict], audit: AuditResult, severity: dict[str, str]) -> PublishSummary:
    """The batches' counts summed, with the audit's rules, table checks and Data Docs (none without a validation)."""
    counted = ("total", "valid", "invalid", "duplicates", "late", "quarantined_files", "warned")
    totals = {key: sum(batch[key] for batch in batches) for key in counted}
    validation = audit.validation
    checks = {"table_checks": validation.table_checks, "data_docs": validation.data_docs} if validation else {}
    return PublishSummary(path="every_minute", **totals, **checks, batches=batches,
                          validity_rate=validity_rate(totals["valid"], totals["invalid"]),
                          failing_rules=failing_rules(validation, severity),
                          warnings=failing_rules(validation, severity, "warn"))
