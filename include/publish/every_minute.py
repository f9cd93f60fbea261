"""Publish audited batches: one PostgreSQL transaction per run, exactly once per batch.

For the batches an audit pinned (staged, unpublished), in one transaction:

* rows that could not be typed (``staging_events.parse_errors``) → ``dead_letter_events``, kind ``parse``;
* audit candidates that break a row rule → ``dead_letter_events``, kind ``rule``, with every broken rule;
* the other candidates → ``ecommerce_events`` (an event_id stored meanwhile counts as a duplicate);
* one ``data_quality_metrics`` row per batch (total = valid + invalid + duplicates, by construction);
* the ledger rows get ``published_at``; the staged rows are deleted.

Each rule's routing predicate (``include.contract.rules.routing_predicate``) must select exactly as many
rows as Great Expectations counted as unexpected for that rule; otherwise nothing is published and
``RoutingMismatch`` says which rule disagrees.
"""

from __future__ import annotations

import json

import psycopg

from include import faults
from include.contract.rules import severities
from include.publish import sql
from include.results import AuditResult, PublishSummary, failing_rules, time_span, validity_rate
from include.settings import Settings
from include.storage.locks import publish_lock


class AuditOutOfDate(RuntimeError):
    """The audited rows are no longer what the audit saw (e.g. a retry after another audit); re-run the DAG run."""


_PENDING = "(spark_query_id, spark_batch_id) IN (SELECT * FROM pinned_batches)"


def publish(conn: psycopg.Connection, audit: AuditResult, settings: Settings, airflow_run_id: str) -> PublishSummary:
    """Publish the batches the audit pinned and validated."""
    batches = audit.batches
    severity = severities(settings)
    if not batches:
        return _summary([], audit, severity)
    with conn.transaction():
        generation = publish_lock(conn)
        conn.execute("CREATE TEMP TABLE pinned_batches (spark_query_id uuid, spark_batch_id bigint) ON COMMIT DROP")
        with conn.cursor().copy("COPY pinned_batches FROM STDIN") as copy:
            for batch in batches:
                copy.write_row(batch)
        unpublished = len(conn.execute(
            f"SELECT 1 FROM pipeline_batch_ledger WHERE {_PENDING} AND published_at IS NULL FOR UPDATE"
        ).fetchall())
        if unpublished == 0:  # a retry after this publish committed: report what the commit wrote
            return _already_published(conn, audit, severity)
        if unpublished != len(batches):
            raise AuditOutOfDate(f"{len(batches) - unpublished} of the audited batches were published meanwhile")
        # audit_candidates (a view) shows the batches the latest audit pinned: they must be this audit's
        pinned, ours = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE (spark_query_id, spark_batch_id) IN (SELECT * FROM pinned_batches)) "
            "FROM audit_pinned_batches").fetchone()
        if pinned != ours or ours != len(batches):
            raise AuditOutOfDate(f"the latest audit pinned {pinned} batch(es), {ours} of this audit's {len(batches)}")
        candidates = conn.execute("SELECT count(*) FROM audit_candidates").fetchone()[0]
        if candidates != audit.candidate_rows:
            raise AuditOutOfDate(f"audit_candidates holds {candidates} rows, the audit saw {audit.candidate_rows}")

        sql.route_rule_failures(conn, audit.validation, settings, "audit_candidates")
        new_columns = _record_new_columns(conn, airflow_run_id)
        # warn-level violations of the rows about to be stored (rows that also break a drop rule are dead
        # letters, and the dead letter lists every rule they broke)
        recorded = sql.record_violations(
            "audit_candidates c JOIN pipeline_batch_ledger l USING (spark_query_id, spark_batch_id)",
            run_id="l.airflow_run_id", where=sql.PASSES_EVERY_RULE)
        warned = dict(((str(q), b), n) for q, b, n in conn.execute(
            f"WITH recorded AS ({recorded}) "
            "SELECT spark_query_id, spark_batch_id, count(DISTINCT event_id) FROM recorded GROUP BY 1, 2").fetchall())
        in_force = json.dumps({"max_price": settings.max_price, "min_validity_rate": settings.min_validity_rate,
                               "severity": severity})

        lineage = sql.DEAD_LETTER_LINEAGE
        conn.execute(
            f"""
            INSERT INTO dead_letter_events (event_id, raw_data, validation_errors, error_kind, rescued_data, {lineage})
            SELECT s.event_id, s.raw_data, s.parse_errors, 'parse', s.rescued_data, s.schema_version, s.source_file,
                   s.source_line, l.airflow_run_id, s.spark_query_id, s.spark_batch_id, s.delivery_id
              FROM staging_events s JOIN pipeline_batch_ledger l USING (spark_query_id, spark_batch_id)
             WHERE s.parse_errors IS NOT NULL AND (s.spark_query_id, s.spark_batch_id) IN (SELECT * FROM pinned_batches)
            """
        )
        conn.execute(
            f"""
            INSERT INTO dead_letter_events (event_id, raw_data, validation_errors, error_kind, failed_rules,
                                            typed_row, rescued_data, {lineage})
            SELECT c.event_id, s.raw_data, string_agg(f.reason, '; ' ORDER BY f.rule), 'rule',
                   array_agg(f.rule ORDER BY f.rule), (array_agg(to_jsonb(c)))[1], (array_agg(c.rescued_data))[1],
                   c.schema_version, c.source_file, c.source_line,
                   l.airflow_run_id, c.spark_query_id, c.spark_batch_id, c.delivery_id
              FROM audit_candidates c
              JOIN rule_failures f USING (staging_row_id)
              JOIN staging_events s USING (staging_row_id)  -- the raw line (the view shows typed columns only)
              JOIN pipeline_batch_ledger l ON (l.spark_query_id, l.spark_batch_id) = (c.spark_query_id, c.spark_batch_id)
             GROUP BY c.staging_row_id, c.event_id, s.raw_data, c.schema_version, c.source_file, c.source_line,
                      l.airflow_run_id, c.spark_query_id, c.spark_batch_id, c.delivery_id
            """
        )
        # The audit left out the event_ids stored when it ran; if no writer has stored events since, none of
        # its candidates (one per event_id) can conflict, and the cheaper plain INSERT stores them.
        unchanged = audit.events_generation == generation
        inserted = sql.insert_events(
            "audit_candidates c JOIN pipeline_batch_ledger l USING (spark_query_id, spark_batch_id)",
            run_id="l.airflow_run_id", where=sql.PASSES_EVERY_RULE,
            returning="spark_query_id, spark_batch_id, is_late_arrival, event_time", skip_stored=not unchanged)
        if not unchanged:
            print(f"events were written since the audit (write generation {audit.events_generation} -> "
                  f"{generation}): candidates already stored count as duplicates")
        stored, spans = {}, []
        for q, b, n, late, first, last in conn.execute(
            f"""
            WITH stored AS ({inserted})
            SELECT spark_query_id, spark_batch_id, count(*), count(*) FILTER (WHERE is_late_arrival),
                   min(event_time), max(event_time)
              FROM stored GROUP BY 1, 2
            """
        ).fetchall():
            stored[(str(q), b)] = (n, late)
            spans += [first, last]
        invalid = {
            (str(q), b): n
            for q, b, n in conn.execute(
                f"SELECT spark_query_id, spark_batch_id, count(*) FROM dead_letter_events "
                f"WHERE {_PENDING} GROUP BY 1, 2"
            ).fetchall()
        }
        rows = []
        for query_id, batch_id, total, quarantined, started_at, run_id in conn.execute(
            f"SELECT spark_query_id, spark_batch_id, input_rows, quarantined_files, started_at, airflow_run_id "
            f"FROM pipeline_batch_ledger WHERE {_PENDING} ORDER BY staged_at, spark_batch_id"
        ).fetchall():
            key = (str(query_id), batch_id)
            valid, late = stored.get(key, (0, 0))
            bad = invalid.get(key, 0)
            rows.append({
                "batch_id": f"{query_id}/{batch_id}", "spark_query_id": str(query_id), "spark_batch_id": batch_id,
                "airflow_run_id": run_id, "total": total, "valid": valid, "invalid": bad,
                "duplicates": total - valid - bad, "late": late, "quarantined_files": quarantined,
                "warned": warned.get(key, 0),
            })
            conn.execute(
                """
                INSERT INTO data_quality_metrics (batch_id, total_records, valid_records, validity_rate,
                    invalid_records, duplicate_records, late_records, quarantined_files, processing_time_ms,
                    throughput, airflow_run_id, spark_query_id, spark_batch_id, warned_records, rules_in_force)
                SELECT %(batch_id)s, %(total)s, %(valid)s, %(rate)s, %(invalid)s, %(duplicates)s, %(late)s,
                       %(quarantined_files)s, ms, round(%(total)s * 1000.0 / greatest(ms, 1), 2),
                       %(airflow_run_id)s, %(spark_query_id)s, %(spark_batch_id)s, %(warned)s, %(in_force)s
                  FROM (SELECT (extract(epoch FROM clock_timestamp() - %(started)s) * 1000)::bigint AS ms) t
                """,
                {**rows[-1], "rate": validity_rate(valid, bad), "started": started_at, "in_force": in_force},
            )
        conn.execute(
            f"UPDATE pipeline_batch_ledger SET published_at = now(), published_by_run_id = %s WHERE {_PENDING}",
            (airflow_run_id,),
        )
        conn.execute(f"UPDATE deliveries SET published_at = now() WHERE {_PENDING}")
        clear_staged_rows(conn)
        conn.execute("TRUNCATE audit_pinned_batches, audit_excluded_rows")
        faults.reached("publish_in_transaction")
    summary = _summary(rows, audit, severity)
    summary.new_columns = new_columns
    summary.event_time_span = time_span(spans)
    return summary


def _already_published(conn: psycopg.Connection, audit: AuditResult, severity: dict[str, str]) -> PublishSummary:
    """The summary of the pinned batches' earlier, committed publish, from its metrics rows: a retry after a
    kill between the commit and the task's end still gates the quality and announces the rows (the asset
    event of the attempt that committed was never sent)."""
    rows = [
        {"batch_id": batch_id, "spark_query_id": str(query_id), "spark_batch_id": spark_batch_id,
         "airflow_run_id": run_id, "total": total, "valid": valid, "invalid": invalid, "duplicates": duplicates,
         "late": late, "quarantined_files": quarantined, "warned": warned}
        for batch_id, query_id, spark_batch_id, run_id, total, valid, invalid, duplicates, late, quarantined, warned
        in conn.execute(
            f"""SELECT batch_id, spark_query_id, spark_batch_id, airflow_run_id, total_records, valid_records,
                       invalid_records, duplicate_records, late_records, quarantined_files, warned_records
                  FROM data_quality_metrics WHERE {_PENDING} ORDER BY id""").fetchall()
    ]
    summary = _summary(rows, audit, severity)
    summary.already_published = True
    # no index leads from a batch to its events: a scan, paid only on this rare path
    summary.event_time_span = time_span(conn.execute(
        f"SELECT min(event_time), max(event_time) FROM ecommerce_events WHERE {_PENDING}").fetchone())
    return summary


def _record_new_columns(conn: psycopg.Connection, airflow_run_id: str) -> list[dict]:
    """Names of columns the contract does not know that these batches carry and no batch carried before
    (``feed_columns_seen``), each with the first file and a sample value, for the WARNING "new column"."""
    return [
        {"name": name, "source_file": source_file, "sample": sample}
        for name, source_file, sample in conn.execute(
            f"""
            INSERT INTO feed_columns_seen (column_name, first_file, sample_value, airflow_run_id)
            SELECT DISTINCT ON (k.name) k.name, s.source_file, s.rescued_data ->> k.name, %s
              FROM staging_events s, jsonb_object_keys(s.rescued_data) AS k(name)
             WHERE s.rescued_data IS NOT NULL AND {_PENDING}
             ORDER BY k.name, (s.rescued_data ->> k.name) IS NULL, s.staging_row_id
            ON CONFLICT (column_name) DO NOTHING
            RETURNING column_name, first_file, sample_value
            """,
            (airflow_run_id,),
        ).fetchall()
    ]


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
        alone = not conn.execute(f"SELECT EXISTS (SELECT 1 FROM staging_events WHERE NOT {_PENDING})").fetchone()[0]
    except psycopg.errors.LockNotAvailable:
        alone = False
    if alone:
        conn.execute("TRUNCATE staging_events")
        return "truncate"
    conn.execute(f"DELETE FROM staging_events WHERE {_PENDING}")
    return "delete"


def _summary(batches: list[dict], audit: AuditResult, severity: dict[str, str]) -> PublishSummary:
    totals = {key: sum(b[key] for b in batches) for key in ("total", "valid", "invalid", "duplicates", "late",
                                                              "quarantined_files", "warned")}
    validation = audit.validation
    return PublishSummary(
        path="every_minute", **totals, validity_rate=validity_rate(totals["valid"], totals["invalid"]),
        failing_rules=failing_rules(validation, severity), warnings=failing_rules(validation, severity, "warn"),
        table_checks=validation.table_checks if validation else {},
        data_docs=validation.data_docs if validation else None, batches=batches,
    )
