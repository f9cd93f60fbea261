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

from typing import Any

import psycopg

from include import faults
from include.contract.rules import ROW_RULES, reason_sql, routing_predicate, suite_parameters
from include.settings import Settings
from include.storage.staging import EVENT_COLUMNS


class RoutingMismatch(RuntimeError):
    """The SQL routing of a rule disagrees with Great Expectations' count; nothing was published."""


class AuditOutOfDate(RuntimeError):
    """The audited rows are no longer what the audit saw (e.g. a retry after another audit); re-run the DAG run."""


_PENDING = "(spark_query_id, spark_batch_id) IN (SELECT * FROM pinned_batches)"

# Every path that writes ecommerce_events / dead_letter_events (this publish, backfills, dead-letter replays)
# takes this transaction-level lock first, so their transactions never interleave.
PUBLISH_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('ecommerce_events publish'))"


def publish(conn: psycopg.Connection, audit: dict[str, Any], settings: Settings, airflow_run_id: str) -> dict[str, Any]:
    """Publish the batches of ``audit`` (the output of ``prepare_candidates`` merged with ``validate``)."""
    batches = [tuple(b) for b in audit["batches"]]
    if not batches:
        return _summary([], {})
    with conn.transaction():
        conn.execute(PUBLISH_LOCK_SQL)
        conn.execute("CREATE TEMP TABLE pinned_batches (spark_query_id uuid, spark_batch_id bigint) ON COMMIT DROP")
        with conn.cursor().copy("COPY pinned_batches FROM STDIN") as copy:
            for batch in batches:
                copy.write_row(batch)
        unpublished = len(conn.execute(
            f"SELECT 1 FROM pipeline_batch_ledger WHERE {_PENDING} AND published_at IS NULL FOR UPDATE"
        ).fetchall())
        if unpublished == 0:
            return {**_summary([], {}), "already_published": True}
        if unpublished != len(batches):
            raise AuditOutOfDate(f"{len(batches) - unpublished} of the audited batches were published meanwhile")
        candidates = conn.execute("SELECT count(*) FROM audit_candidates").fetchone()[0]
        if candidates != audit["candidate_rows"]:
            raise AuditOutOfDate(f"audit_candidates holds {candidates} rows, the audit saw {audit['candidate_rows']}")

        route_rule_failures(conn, audit, settings, "audit_candidates")

        lineage = "schema_version, source_file, source_line, airflow_run_id, spark_query_id, spark_batch_id"
        conn.execute(
            f"""
            INSERT INTO dead_letter_events (event_id, raw_data, validation_errors, error_kind, {lineage})
            SELECT s.event_id, s.raw_data, s.parse_errors, 'parse', s.schema_version, s.source_file, s.source_line,
                   l.airflow_run_id, s.spark_query_id, s.spark_batch_id
              FROM staging_events s JOIN pipeline_batch_ledger l USING (spark_query_id, spark_batch_id)
             WHERE s.parse_errors IS NOT NULL AND (s.spark_query_id, s.spark_batch_id) IN (SELECT * FROM pinned_batches)
            """
        )
        conn.execute(
            f"""
            INSERT INTO dead_letter_events (event_id, raw_data, validation_errors, error_kind, failed_rules,
                                            typed_row, {lineage})
            SELECT c.event_id, s.raw_data, string_agg(f.reason, '; ' ORDER BY f.rule), 'rule',
                   array_agg(f.rule ORDER BY f.rule), (array_agg(to_jsonb(c)))[1],
                   c.schema_version, c.source_file, c.source_line,
                   l.airflow_run_id, c.spark_query_id, c.spark_batch_id
              FROM audit_candidates c
              JOIN rule_failures f USING (staging_row_id)
              JOIN staging_events s USING (staging_row_id)  -- the raw line (audit_candidates has typed columns only)
              JOIN pipeline_batch_ledger l ON (l.spark_query_id, l.spark_batch_id) = (c.spark_query_id, c.spark_batch_id)
             GROUP BY c.staging_row_id, c.event_id, s.raw_data, c.schema_version, c.source_file, c.source_line,
                      l.airflow_run_id, c.spark_query_id, c.spark_batch_id
            """
        )
        columns = ", ".join(EVENT_COLUMNS)
        stored = {
            (str(q), b): (n, late)
            for q, b, n, late in conn.execute(
                f"""
                WITH stored AS (
                    INSERT INTO ecommerce_events ({columns}, airflow_run_id, spark_query_id, spark_batch_id)
                    SELECT {", ".join("c." + c for c in EVENT_COLUMNS)}, l.airflow_run_id, c.spark_query_id,
                           c.spark_batch_id
                      FROM audit_candidates c JOIN pipeline_batch_ledger l USING (spark_query_id, spark_batch_id)
                     WHERE NOT EXISTS (SELECT 1 FROM rule_failures f WHERE f.staging_row_id = c.staging_row_id)
                    ON CONFLICT (event_id) DO NOTHING
                    RETURNING spark_query_id, spark_batch_id, is_late_arrival
                )
                SELECT spark_query_id, spark_batch_id, count(*), count(*) FILTER (WHERE is_late_arrival)
                  FROM stored GROUP BY 1, 2
                """
            ).fetchall()
        }
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
            })
            conn.execute(
                """
                INSERT INTO data_quality_metrics (batch_id, total_records, valid_records, validity_rate,
                    invalid_records, duplicate_records, late_records, quarantined_files, processing_time_ms,
                    throughput, airflow_run_id, spark_query_id, spark_batch_id)
                SELECT %(batch_id)s, %(total)s, %(valid)s, %(rate)s, %(invalid)s, %(duplicates)s, %(late)s,
                       %(quarantined_files)s, ms, round(%(total)s * 1000.0 / greatest(ms, 1), 2),
                       %(airflow_run_id)s, %(spark_query_id)s, %(spark_batch_id)s
                  FROM (SELECT (extract(epoch FROM clock_timestamp() - %(started)s) * 1000)::bigint AS ms) t
                """,
                {**rows[-1], "rate": validity_rate(valid, bad), "started": started_at},
            )
        conn.execute(
            f"UPDATE pipeline_batch_ledger SET published_at = now(), published_by_run_id = %s WHERE {_PENDING}",
            (airflow_run_id,),
        )
        clear_staged_rows(conn)
        conn.execute("TRUNCATE audit_candidates")
        faults.reached("publish_in_transaction")
    return _summary(rows, audit["rules"])


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


def route_rule_failures(conn: psycopg.Connection, audit: dict[str, Any], settings: Settings, table: str) -> None:
    """Fill the temp table ``rule_failures`` (row id, rule, reason) from the validated ``table`` with each rule's
    routing predicate, refusing (``RoutingMismatch``) where it disagrees with Great Expectations' count.
    Shared by the every-minute publish (``audit_candidates``) and backfills/replays (``revalidation_candidates``)."""
    parameters = suite_parameters(settings)
    predicates = {rule.name: routing_predicate(rule, parameters) for rule in ROW_RULES}
    # One scan of the whole table finds the rows that break any rule (a few percent); each rule's routing then
    # reads only those. A predicate that is NULL for a row selects it neither here nor alone.
    conn.execute(
        f"CREATE TEMP TABLE failing_candidates ON COMMIT DROP AS SELECT * FROM {table} WHERE "
        + " OR ".join(f"({predicate})" for predicate in predicates.values())
    )
    conn.execute("CREATE TEMP TABLE rule_failures (staging_row_id bigint, rule text, reason text) ON COMMIT DROP")
    for rule in ROW_RULES:
        routed = conn.execute(
            f"INSERT INTO rule_failures SELECT staging_row_id, %s, {reason_sql(rule, parameters)} "
            f"FROM failing_candidates WHERE {predicates[rule.name]}",
            (rule.name,),
        ).rowcount
        expected = audit["rules"][rule.name]["unexpected_count"]
        if routed != expected:
            raise RoutingMismatch(
                f"rule {rule.name}: routing selects {routed} rows, Great Expectations counted {expected}; "
                "nothing was written (fix routing_predicate for this expectation type)"
            )


def validity_rate(valid: int, invalid: int) -> float:
    """Share of the distinct rows of a batch that passed, in percent (duplicates are neither)."""
    return round(100.0 * valid / (valid + invalid), 2) if valid + invalid else 100.0


def _summary(batches: list[dict[str, Any]], rules: dict[str, Any]) -> dict[str, Any]:
    totals = {key: sum(b[key] for b in batches) for key in ("total", "valid", "invalid", "duplicates", "late",
                                                              "quarantined_files")}
    failing = sorted(
        ({"rule": name, "rows": r["unexpected_count"], "description": r["description"],
          "sample_event_ids": r["sample_event_ids"]} for name, r in rules.items() if r["unexpected_count"]),
        key=lambda r: -r["rows"],
    )
    return {**totals, "validity_rate": validity_rate(totals["valid"], totals["invalid"]), "batches": batches,
            "failing_rules": failing}
